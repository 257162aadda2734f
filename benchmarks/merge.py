"""Benchmark: merging a changed notebook into a live room, against the size of the change.

An outside change (a file written by another application, a version restored) reaches the
live room as a merge: the change between the room's state and the new content is computed
(the cell alignment and the text diff of :mod:`mesh_collab.seqdiff`) and applied as a
concurrent edit. The diff is bounded and runs off the event loop; this measures both.

In-process: ``CollabServer`` and ``DocumentRoom`` with a durable ``UpdateLog``, against
``mesh-collab gateway`` as its own process (real gRPC and HTTP on loopback). For each size,
a notebook (Running_Code.ipynb) is written twice, each time with one cell's source replaced
by ``size`` bytes of two alternating lines in another random order (the worst case of
difflib, which the diff used before; similar enough to be diffed as an edit of the cell).
The room opens the current file, takes the lock, and restores the first version through
the room (``restore_version``: read, parse, diff, apply, the same path as an outside
change). A probe task sleeping 1 ms records the largest event-loop stall meanwhile; the
merge time is reported with its growth per size step against n log n.

(Not applicable to jupyter-collaboration, which replaces the whole document on an outside
change and has no version restore through the room.)

    .venv/bin/python benchmarks/merge.py           # 1 KB .. 5 MB
    .venv/bin/python benchmarks/merge.py --quick   # 1 KB .. 100 KB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from typing import Any

import _harness as h
import anyio

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.documents import DocumentRoom, RoomSettings
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog

SIZES = [1_000, 10_000, 100_000, 1_000_000, 5_000_000]
QUICK_SIZES = SIZES[:3]
SETTINGS = RoomSettings(
    site="site-a", node_id="bench", lock_expiry=60, quiet_period=3600, max_interval=3600,
    poll_interval=3600,
)


def changed(original: bytes, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    nb = json.loads(original)
    nb["cells"][1]["source"] = "".join(rng.choice(("a = 1\n", "b = 2\n")) for _ in
                                       range(size // 6))
    return json.dumps(nb).encode()


async def measure(server: CollabServer, session: Session, probe: h.LagProbe, size: int,
                  original: bytes) -> dict[str, Any]:
    path = f"{h.HOME}/merge-{size}.ipynb"
    new = changed(original, size, seed=2)
    await session.files.write(path, new)
    info = await session.files.write(path, changed(original, size, seed=1))
    version = next(v for v in await session.versions.list(info.id) if v.size == len(new))
    nb: DocumentRoom = await server.open(info.id, session)
    with anyio.fail_after(30):
        # The lock is taken by the room's own task, which signals nothing: poll it.
        while not nb.editable:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    await anyio.sleep(0.05)
    probe.reset()
    begin = time.perf_counter()
    stats = await nb.restore_version(session, version.key)
    took = time.perf_counter() - begin
    await anyio.sleep(0.01)  # let the probe wake up once after the merge
    source = str(nb.ynotebook.ycells[1]["source"])
    if source != json.loads(new)["cells"][1]["source"]:
        raise RuntimeError(f"size {size}: the merge did not bring the change in")
    return {
        "change_KB": size / 1000,
        "merge_ms": took * 1000,
        "max_stall_ms": probe.max_lag * 1000,
        "cells_kept_edited_inserted_deleted": (
            f"{stats.kept}/{stats.edited}/{stats.inserted}/{stats.deleted}"),
        "time_ratio_per_nlogn": float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    original = (h.NOTEBOOKS / "Running_Code.ipynb").read_bytes()
    rows: list[dict[str, Any]] = []
    with h.workdir() as base:
        gw, addresses = h.gateway(base / "gateway")
        try:
            async with (
                CS3Client(addresses["grpc"]) as cs3,
                UpdateLog(base / "node" / "updates.sqlite") as log,
                CollabServer(updatelog=log, settings=SETTINGS, cleanup_delay=3600) as server,
                anyio.create_task_group() as tg,
            ):
                session = await cs3.login(h.USER, h.PASSWORD)
                probe = h.LagProbe()
                tg.start_soon(probe.run)
                await measure(server, session, probe, 500, original)  # warm-up, not counted
                for size in sizes:
                    row = await measure(server, session, probe, size, original)
                    if rows:
                        # Growth against n log n between size steps: 1.0 is n log n.
                        prev = rows[-1]
                        nlogn = (size * math.log(size)) / (
                            prev["change_KB"] * 1000 * math.log(prev["change_KB"] * 1000))
                        row["time_ratio_per_nlogn"] = (
                            row["merge_ms"] / max(prev["merge_ms"], 1e-3) / nlogn)
                    rows.append(row)
                    print(f"  {size / 1000:.0f} KB: merge {row['merge_ms']:.0f} ms, "
                          f"max stall {row['max_stall_ms']:.1f} ms", flush=True)
                tg.cancel_scope.cancel()
        finally:
            gw.terminate()
            gw.wait(timeout=10)
    h.print_table("Merging a changed notebook into a live room, and the largest loop stall",
                  rows)
    h.write_results("merge", args, {"sizes": sizes}, rows)


if __name__ == "__main__":
    asyncio.run(main())
