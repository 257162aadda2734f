"""Experiment: where the checkpoint's event-loop stall goes if the CPU-bound part moves off the
loop (not a benchmark; supports the finding in benchmarks/README.md, scenario 7).

It builds the document of the generated 5 MB notebook, then turns its encoded state into the
``.ipynb`` bytes as ``NotebookRoom._checkpoint`` does (``notebook.file_of_state``), three
ways, with a 1 ms sleep probe on the loop:

* inline, on the event loop;
* in a worker thread (``anyio.to_thread.run_sync``);
* in a worker process (``concurrent.futures.ProcessPoolExecutor``; the node uses anyio's
  process pool through ``mesh_collab.offload`` for large states).

    .venv/bin/python benchmarks/experiments/checkpoint_offload.py
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import time
from pathlib import Path

import anyio
from jupyter_ydoc import YNotebook
from pycrdt import Doc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _harness as h

from mesh_collab import notebook

file_bytes = notebook.file_of_state


async def main() -> None:
    doc = Doc()
    notebook.load(YNotebook(ydoc=doc), notebook.from_bytes(h.notebook_5mb()))
    state = doc.get_update()
    probe = h.LagProbe()
    pool = concurrent.futures.ProcessPoolExecutor(1)
    pool.submit(len, b"").result()  # start the worker before measuring
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.run)
        for label, run in (
            ("inline", lambda: asyncio.sleep(0, file_bytes(state))),
            ("thread", lambda: anyio.to_thread.run_sync(file_bytes, state)),
            ("process", lambda: asyncio.get_running_loop().run_in_executor(
                pool, file_bytes, state)),
        ):
            for _ in range(3):
                await anyio.sleep(0.05)
                probe.reset()
                start = time.perf_counter()
                data = await run()
                took = time.perf_counter() - start
                await anyio.sleep(0.01)
                print(f"{label:8s} {took * 1000:7.1f} ms  max stall {probe.max_lag * 1000:6.1f} ms"
                      f"  ({len(data):,} bytes)")
        tg.cancel_scope.cancel()
    pool.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
