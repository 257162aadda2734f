"""Experiment: what a mesh_collab notebook room keeps on the Python heap (tracemalloc).

Not a benchmark; supports finding 6 of benchmarks/README.md. Opens 40 rooms of the 100-cell
notebook of memory.py in-process (CollabServer + UpdateLog, the gateway as a process) and
prints the heap growth per room by allocation site.

    .venv/bin/python benchmarks/experiments/room_memory.py
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _harness as h

from mesh_collab.cs3.client import CS3Client
from mesh_collab.documents import RoomSettings
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog

ROOMS = 40


async def main() -> None:
    data = h.generated_notebook(100, 85_000, seed=100)
    with h.workdir() as base:
        gw, addresses = h.gateway(base / "gateway")
        try:
            async with (
                CS3Client(addresses["grpc"]) as cs3,
                UpdateLog(base / "updates.sqlite") as log,
                CollabServer(updatelog=log, settings=RoomSettings(), cleanup_delay=3600) as server,
            ):
                session = await cs3.login(h.USER, h.PASSWORD)
                infos = [await session.files.write(f"{h.HOME}/m{i}.ipynb", data)
                         for i in range(ROOMS + 1)]
                await server.open(infos[-1].id, session)  # first room: imports, caches
                await anyio.sleep(1)
                gc.collect()
                tracemalloc.start(12)
                before = tracemalloc.take_snapshot()
                for info in infos[:ROOMS]:
                    await server.open(info.id, session)
                await anyio.sleep(2)
                gc.collect()
                stats = tracemalloc.take_snapshot().compare_to(before, "traceback")
                total = sum(st.size_diff for st in stats)
                print(f"python heap growth per room: {total / ROOMS / 1024:.0f} KiB")
                for st in stats[:6]:
                    print(f"{st.size_diff / ROOMS / 1024:7.1f} KiB/room")
                    for line in st.traceback.format()[-12:]:
                        if "mesh_collab" in line or "site-packages" not in line:
                            print("      ", line.strip())
        finally:
            gw.terminate()
            gw.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
