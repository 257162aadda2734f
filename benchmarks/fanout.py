"""Benchmark: fan-out latency, mesh_collab next to the stock jupyter-collaboration server.

N clients join one notebook room (a copy of ``Running_Code.ipynb``, a fresh room per N);
one of them types 20 keystrokes per second at the end of the first cell. For every keystroke
and every other client, the latency is the time from just before the typist's transaction
to the moment the receiving client read the frame that brought it (keystroke k is in when
the cell's text has grown by k characters). Both servers run as their own processes in the
same run; all clients live in this process.

    .venv/bin/python benchmarks/fanout.py            # N = 2, 10, 50, 200; 15 s of typing each
    .venv/bin/python benchmarks/fanout.py --quick    # N = 2, 10; 2 s each
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import _harness as h

RATE = 20.0  # keystrokes per second


async def run_n(
    server: h.Server, n: int, seconds: float, warmup: float, tag: str = ""
) -> dict[str, Any]:
    name = f"fanout-{n}{tag}.ipynb"
    await server.put_notebook(name, (h.NOTEBOOKS / "Running_Code.ipynb").read_bytes())
    url = await server.open_session(name)
    assert server.http is not None
    clients = [h.YClient(server.http, url) for _ in range(n)]
    gate = asyncio.Semaphore(16)

    async def join(client: h.YClient) -> None:
        async with gate:
            await client.connect()
            await client.wait_synced()

    await asyncio.gather(*(join(c) for c in clients))
    typist, receivers = clients[0], clients[1:]
    cpu0 = server.cpu_seconds()
    typing = await h.type_and_measure(typist, receivers, rate=RATE, seconds=seconds,
                                      warmup=warmup)
    cpu = server.cpu_seconds() - cpu0
    rss = server.rss()
    closes = [c.close_code for c in clients if c.closed.is_set()]
    await asyncio.gather(*(c.close() for c in clients))
    ms = [x * 1000 for x in typing.all]
    return {
        "server": server.kind,
        "N": n,
        "p50_ms": h.percentile(ms, 50),
        "p99_ms": h.percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "samples": len(ms),
        "missing": typing.expected - len(ms),
        "server_cpu_%": 100 * cpu / typing.seconds,
        "server_rss_MiB": rss / 2**20,
        "closed_early": len(closes),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--n", default="", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=None, help="typing time per N")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the bare pycrdt relay (the measurement floor)")
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")] if args.n else ([2, 10] if args.quick
                                                             else [2, 10, 50, 200])
    seconds = args.seconds or (2.0 if args.quick else 15.0)
    warmup = 0.5 if args.quick else 1.0
    kinds = args.servers.split(",")
    if not args.no_floor:
        kinds.append(h.FLOOR)
    rows: list[dict[str, Any]] = []
    with h.workdir() as base:
        async with h.servers(kinds, base) as start:
            for kind in kinds:
                async with start(kind) as server:
                    # Warm the server up (first room, first fsync, imports) before measuring.
                    await run_n(server, 2, 1.0, 0.2, tag="-warmup")
                    for n in ns:
                        row = await run_n(server, n, seconds, warmup)
                        rows.append(row)
                        print(f"  {kind} N={n}: p50 {row['p50_ms']:.2f} ms, "
                              f"p99 {row['p99_ms']:.2f} ms", flush=True)
    rows.sort(key=lambda r: (r["N"], r["server"]))
    h.print_table(f"Fan-out latency, keystroke to every other client ({RATE:.0f} keys/s)", rows)
    config = {"n": ns, "seconds": seconds, "warmup": warmup, "rate": RATE,
              "notebook": "Running_Code.ipynb"}
    h.write_results("fanout", args, config, rows)


if __name__ == "__main__":
    asyncio.run(main())
