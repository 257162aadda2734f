"""Benchmark: the async CS3 client against the embedded gateway, over real gRPC and HTTP.

The gateway runs as its own process (``mesh-collab gateway``), as it would in production,
so client and server do not share an event loop. Prints a table and writes a JSON file to
``benchmarks/results/``.

    ./dev.sh bench                      # full run
    ./dev.sh bench --quick              # smoke size (CI)
    ./dev.sh bench --profile edge       # the edge lock profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.models import Lock

RESULTS = Path(__file__).parent / "results"


async def rate(fn: Callable[[], Awaitable[object]], seconds: float, concurrency: int = 1) -> float:
    """Calls per second of ``fn``, run by ``concurrency`` tasks for ``seconds``."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await fn()
            count += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return count / (time.perf_counter() - start)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    """Median seconds of ``repeat`` sequential calls of ``fn``."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def run(session: Session, seconds: float, quick: bool) -> dict[str, float]:
    home = "/home/einstein"
    results: dict[str, float] = {}
    await session.files.write(f"{home}/bench.ipynb", b"{}")
    results["stat_per_s"] = await rate(lambda: session.files.stat(f"{home}/bench.ipynb"), seconds)
    results["stat_per_s_16_concurrent"] = await rate(
        lambda: session.files.stat(f"{home}/bench.ipynb"), seconds, concurrency=16
    )
    counter = iter(range(10**9))

    async def lock_cycle() -> None:
        lock = Lock(lock_id=f"bench-{next(counter)}", app_name="mesh_collab",
                    expiration=float(int(time.time() + 60)))
        await session.locks.set(f"{home}/bench.ipynb", lock)
        await session.locks.unlock(f"{home}/bench.ipynb", lock)

    results["lock_set_unlock_per_s"] = await rate(lock_cycle, seconds)
    sizes = {"1KB": 1024, "1MB": 2**20}
    if not quick:
        sizes["10MB"] = 10 * 2**20
    for label, size in sizes.items():
        body = os.urandom(size)
        path = f"{home}/bench-{label}.bin"
        repeat = 20 if size <= 2**20 else 5
        up = await timed(
            partial(session.files.write, path, body, disable_versioning=True), repeat
        )
        down = await timed(partial(session.files.read, path), repeat)
        results[f"upload_{label}_ms"] = up * 1000
        results[f"download_{label}_ms"] = down * 1000
        results[f"upload_{label}_MBps"] = size / up / 2**20
        results[f"download_{label}_MBps"] = size / down / 2**20
    return results


def start_gateway(root: str, profile: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "gateway",
         "--root", root, "--port", "0", "--lock-profile", profile, "--demo-users"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the gateway did not start")
    return proc, json.loads(line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size, for CI")
    parser.add_argument("--profile", choices=["eos", "edge"], default="eos")
    parser.add_argument("--seconds", type=float, default=None, help="duration of rate tests")
    args = parser.parse_args()
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    with tempfile.TemporaryDirectory() as root:
        proc, addresses = start_gateway(root, args.profile)
        try:
            async with CS3Client(addresses["grpc"]) as cs3:
                session = await cs3.login("einstein", "relativity")
                results = await run(session, seconds, args.quick)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "profile": args.profile,
        "quick": args.quick,
    }
    width = max(map(len, results))
    print(f"{'metric':<{width}}  value")
    for name, value in results.items():
        print(f"{name:<{width}}  {value:,.1f}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    size = "quick" if args.quick else "full"
    out = RESULTS / f"cs3_gateway-{args.profile}-{size}-{stamp}.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    anyio.run(main)
