"""Run CPU-heavy pure functions off the event loop.

Turning a document state into ``.ipynb`` bytes (every checkpoint) takes ~0.4 s for a 5 MB
notebook. A worker thread keeps the loop running only between the GIL's switch intervals:
pycrdt's and json's long C calls hold it, and the loop stalled 100+ ms (benchmarks/README.md,
scenario 7). So large inputs go to a worker process (anyio's process pool, started on first
use, kept while busy); small ones, where a process hop costs more than it saves, to a thread.

The function and its arguments must pickle: a module-level function of a module the worker
can import, taking and returning bytes or plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_process
import anyio.to_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Inputs of at least this many bytes go to a worker process (a 256 KB notebook state
#: builds its file in ~15 ms, under the loop's stall budget even in a thread).
PROCESS_THRESHOLD = 256 * 1024

_process_broken = False


async def run(fn: Callable[[bytes], T], data: bytes) -> T:
    """``fn(data)`` in a worker process if ``data`` is large, else in a worker thread.

    If worker processes cannot be started here, it says so once and uses threads from then
    on (slower for the loop, same results).
    """
    global _process_broken
    if len(data) >= PROCESS_THRESHOLD and not _process_broken:
        try:
            return await anyio.to_process.run_sync(fn, data)
        except anyio.BrokenWorkerProcess as exc:
            _process_broken = True
            log.warning("worker processes unavailable, using threads: %s", exc)
        except OSError as exc:
            _process_broken = True
            log.warning("worker processes cannot start, using threads: %s", exc)
    return await anyio.to_thread.run_sync(fn, data)
