"""Benchmark: checkpointing a notebook to the embedded CS3 gateway, and the event-loop stall.

In-process: mesh_collab's ``CollabServer`` and ``DocumentRoom`` with a durable
``UpdateLog``, against ``mesh-collab gateway`` running as its own process (real gRPC and
HTTP on loopback). For each notebook the room is opened and its lock taken; then, 5 times,
one keystroke is typed and a checkpoint is forced (``checkpointer.flush()``, what the
quiet period, the maximum interval and the last leave trigger). A probe task sleeping 1 ms
in a loop records how late it wakes up: the largest lateness while a checkpoint runs is
the longest event-loop stall every client of the node would have felt.

(Not applicable to jupyter-collaboration, which saves to local disk through the contents
manager and has no CS3 checkpoint.)

    .venv/bin/python benchmarks/checkpoint.py              # Running_Code, 1.3 MB, 5 MB
    .venv/bin/python benchmarks/checkpoint.py --quick      # Running_Code, 1.3 MB
    .venv/bin/python benchmarks/checkpoint.py --profile    # also a pyinstrument profile of
                                                           # one more (uncounted) checkpoint
                                                           # of the largest notebook
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import _harness as h
import anyio
from pycrdt import Array, Doc

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.documents import DocumentRoom, RoomSettings
from mesh_collab.origins import ClientOrigin
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog

REPEAT = 5
SETTINGS = RoomSettings(
    site="site-a", node_id="bench", lock_expiry=60, quiet_period=3600, max_interval=3600,
    poll_interval=3600,
)


def type_key(doc: Doc) -> None:
    source = doc.get("cells", type=Array)[0]["source"]
    source.insert(len(source), "x")


async def measure(
    server: CollabServer, session: Session, probe: h.LagProbe, label: str, data: bytes,
    profile_to: Path | None,
) -> dict[str, Any]:
    info = await session.files.write(f"{h.HOME}/ckpt-{label}", data)
    probe.reset()
    start = time.perf_counter()
    nb: DocumentRoom = await server.open(info.id, session)
    with anyio.fail_after(30):
        # The lock is taken by the room's own task, which signals nothing: poll it.
        while not nb.editable:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    open_s, open_stall = time.perf_counter() - start, probe.max_lag
    durations, stalls = [], []
    # With a profile, one more checkpoint runs under the profiler; it is not counted.
    for i in range(REPEAT + (profile_to is not None)):
        await nb.edit(type_key, ClientOrigin(0))
        await anyio.sleep(0.05)
        profiler = None
        if profile_to is not None and i == REPEAT:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
        probe.reset()
        begin = time.perf_counter()
        saved = await nb.checkpointer.flush()
        took = time.perf_counter() - begin
        await anyio.sleep(0.01)  # let the probe wake up once after the checkpoint
        if i < REPEAT:
            durations.append(took)
            stalls.append(probe.max_lag)
        if profiler is not None:
            profiler.stop()
            assert profile_to is not None
            profile_to.write_text(profiler.output_text(  # noqa: ASYNC240 - once, afterunicode=False, color=False,
                                                      show_all=False))
            print(f"  profile written to {profile_to}")
        if not saved:
            raise RuntimeError(f"{label}: checkpoint failed")
    return {
        "notebook": label,
        "file_KB": len(data) / 1000,
        "state_KB": len(nb.room.doc.get_update()) / 1000,
        "checkpoint_ms_median": statistics.median(durations) * 1000,
        "checkpoint_ms_max": max(durations) * 1000,
        "max_stall_ms": max(stalls) * 1000,
        "median_stall_ms": statistics.median(stalls) * 1000,
        "open_ms": open_s * 1000,
        "open_max_stall_ms": open_stall * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--profile", action="store_true",
                        help="profile the last checkpoint of the largest notebook")
    args = parser.parse_args()
    docs = [("Running_Code.ipynb", (h.NOTEBOOKS / "Running_Code.ipynb").read_bytes()),
            ("02_end_to_end_machine_learning_project.ipynb",
             (h.NOTEBOOKS / "02_end_to_end_machine_learning_project.ipynb").read_bytes())]
    if not args.quick:
        docs.append(("generated-5MB-1000cells.ipynb", h.notebook_5mb()))
    rows = []
    out_dir = Path(args.out) if args.out else h.RESULTS
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
                await measure(server, session, probe, "warm-up.ipynb",
                              (h.NOTEBOOKS / "notebook3.ipynb").read_bytes(), None)
                for i, (label, data) in enumerate(docs):
                    last = i == len(docs) - 1
                    profile_to = (out_dir / "checkpoint-profile.txt"
                                  if args.profile and last else None)
                    row = await measure(server, session, probe, label, data, profile_to)
                    rows.append(row)
                    print(f"  {label}: checkpoint {row['checkpoint_ms_median']:.0f} ms, "
                          f"max stall {row['max_stall_ms']:.1f} ms", flush=True)
                tg.cancel_scope.cancel()
        finally:
            gw.terminate()
            gw.wait(timeout=10)
    h.print_table("Checkpoint to the embedded CS3 gateway, and the largest event-loop stall",
                  rows)
    h.write_results("checkpoint", args, {"repeat": REPEAT}, rows)


if __name__ == "__main__":
    asyncio.run(main())
