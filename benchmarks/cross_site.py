"""Benchmark: keystroke latency across sites, next to the raw relay floor of the same run.

Two sites run as ``mesh-collab demo`` runs them (an embedded CS3 gateway and a JupyterLab
node each, the nodes linked by the federation protocol, the notebook at site A shared with
marie at site B over OCM). One client at site A (einstein) types 20 keystrokes per second
into the shared notebook; the latency is measured at

* ``site A -> site B``: clients of marie at site B (client -> node A -> node B -> client);
* ``site A -> site A``: one more client of einstein at site A (one node, for reference);
* ``floor``: the bare pycrdt relay of ``_floor_server.py`` with one typist and as many
  receivers as the path it is compared with
  (one loopback websocket relay, no persistence or checks: the best any server scores here).

Latency is defined as in ``fanout.py``. The paths run one after the other, each with its
own receivers (1 at site B, 1 at site A, then 10 at site B), and each in turn with the floor:
the floor's typist types to as many receivers at the same rate, half a keystroke apart, so
that every path and the floor it is compared with see the machine as it is during the same
seconds (the floor relay and the demo run side by side throughout). All clients live in this
process.

    .venv/bin/python benchmarks/cross_site.py            # 30 s of typing per path
    .venv/bin/python benchmarks/cross_site.py --quick    # 2 s; 1 at site B
"""

# Reading the demo's stdout and writing small files from async code is set-up, on purpose.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp

RATE = 20.0  # keystrokes per second
CELL = 1  # the code cell of the demo's welcome.ipynb


@contextlib.asynccontextmanager
async def demo(root: Path) -> AsyncIterator[list[dict[str, str]]]:
    """Run ``mesh-collab demo``; yield its sites (the JSON line it prints)."""
    log = (root / "demo.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "demo",
        "--root", str(root / "demo"), stdout=asyncio.subprocess.PIPE, stderr=log,
    )
    try:
        assert proc.stdout is not None
        sites: list[dict[str, str]] = []
        while not sites:
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
            if not line:
                raise RuntimeError(f"the demo exited:\n{(root / 'demo.log').read_text()[-3000:]}")
            if line.startswith(b'{"sites"'):
                sites = json.loads(line)["sites"]
        yield sites
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def joined(http: aiohttp.ClientSession, url: str, n: int) -> list[h.YClient]:
    clients = [h.YClient(http, url) for _ in range(n)]
    for client in clients:
        await client.connect()
        await client.wait_synced()
    return clients


def row(path: str, n: int, latencies: list[float], expected: int) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "path": path,
        "receivers": n,
        "p50_ms": h.percentile(ms, 50),
        "p99_ms": h.percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "samples": len(ms),
        "missing": expected - len(ms),
    }


async def across(base: Path, receivers_b: list[int], seconds: float,
                 warmup: float) -> list[dict[str, Any]]:
    """Measure each path with the floor typed in turn with it (half a keystroke apart)."""
    rows: list[dict[str, Any]] = []
    async with h.floor_server(base / "floor") as relay, demo(base) as (site_a, site_b), \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await relay.put_notebook("floor.ipynb", (h.NOTEBOOKS / "Running_Code.ipynb").read_bytes())
        assert relay.http is not None
        floor_url = await relay.open_session("floor.ipynb")
        (floor_typist,) = await joined(relay.http, floor_url, 1)
        url_a, url_b = [await h.open_session(http, s["url"], s["token"], s["notebook"])
                        for s in (site_a, site_b)]
        (typist,) = await joined(http, url_a, 1)
        # Warm the link up (first frames, lazily opened rooms) before measuring.
        warm = [*await joined(http, url_a, 1), *await joined(http, url_b, 1)]
        await h.type_and_measure(typist, warm, rate=RATE, seconds=1.0, warmup=0.2, cell=CELL)
        await asyncio.gather(*(c.close() for c in warm))

        async def measure(path: str, url: str, n: int) -> None:
            # One path at a time (the receivers share this process with the typists), each
            # in turn with the floor: both see the machine as it is during the same seconds.
            receivers = await joined(http, url, n)
            floor_receivers = await joined(relay.http, floor_url, n)
            start = time.perf_counter() + 0.05
            floor_typing, typing = await asyncio.gather(
                h.type_and_measure(floor_typist, floor_receivers, rate=RATE, seconds=seconds,
                                   warmup=warmup, start=start),
                h.type_and_measure(typist, receivers, rate=RATE, seconds=seconds,
                                   warmup=warmup, cell=CELL, start=start + 0.5 / RATE),
            )
            floor_row = row("floor, in turn with the next row", n, floor_typing.all,
                            floor_typing.expected)
            path_row = row(path, n, typing.all, typing.expected)
            for r in (floor_row, path_row):
                r["p99_vs_floor"] = r["p99_ms"] / floor_row["p99_ms"]
            rows.extend([floor_row, path_row])
            print(f"  {path}, {n} receiving: p50 {path_row['p50_ms']:.2f} ms, "
                  f"p99 {path_row['p99_ms']:.2f} ms; floor in turn with it: p50 "
                  f"{floor_row['p50_ms']:.2f} ms, p99 {floor_row['p99_ms']:.2f} ms "
                  f"({path_row['p99_vs_floor']:.2f}x)", flush=True)
            await asyncio.gather(*(c.close() for c in [*receivers, *floor_receivers]))

        await measure("site A -> site B (two nodes)", url_b, receivers_b[0])
        await measure("site A -> site A (one node)", url_a, 1)
        for n in receivers_b[1:]:
            await measure("site A -> site B (two nodes)", url_b, n)
        await asyncio.gather(typist.close(), floor_typist.close())
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--seconds", type=float, default=None, help="typing time per run")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 30.0)
    warmup = 0.5 if args.quick else 1.0
    receivers_b = [1] if args.quick else [1, 10]
    with h.workdir() as base:
        rows = await across(base, receivers_b, seconds, warmup)
    h.print_table(f"Keystroke latency across sites ({RATE:.0f} keys/s)", rows)
    h.write_results("cross_site", args, {"seconds": seconds, "warmup": warmup, "rate": RATE,
                                         "receivers_at_b": receivers_b}, rows)


if __name__ == "__main__":
    asyncio.run(main())
