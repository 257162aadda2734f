"""Run CPU-heavy pure functions off the event loop.

Turning a document state into ``.ipynb`` bytes (every checkpoint) takes ~0.4 s for a 5 MB
notebook. A worker thread keeps the loop running only between the GIL's switch intervals:
pycrdt's and json's long C calls hold it, and the loop stalled 100+ ms (benchmarks/README.md,
scenario 7). So large inputs go to a worker process (anyio's process pool, started on first
use or by :func:`prestart`, then kept); small ones, where a process hop costs more than it
saves, to a thread.

The function and its arguments must pickle: a module-level function of a module the worker
can import, taking and returning bytes or plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar, cast

import anyio
import anyio.to_process
import anyio.to_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Inputs of at least this many bytes go to a worker process (a 256 KB notebook state
#: builds its file in ~15 ms, under the loop's stall budget even in a thread).
PROCESS_THRESHOLD = 256 * 1024

_process_broken = False
_prestarting: anyio.Event | None = None  # while prestart() starts a worker: set once it is up


async def run(
    fn: Callable[..., T], data: bytes, *args: object, threshold: int = PROCESS_THRESHOLD
) -> T:
    """``fn(data, *args)`` in a worker process if ``data`` has at least ``threshold``
    bytes, else in a worker thread (``args`` must pickle too).

    If worker processes cannot be started here, it says so once and uses threads from then
    on (slower for the loop, same results).
    """
    if len(data) >= threshold:
        if _prestarting is not None:
            await _prestarting.wait()  # rather than start a second worker beside it
        done, result = await _in_process(fn, data, *args)
        if done:
            return cast(T, result)
    return await anyio.to_thread.run_sync(fn, data, *args)


async def prestart(fn: Callable[[bytes], object], data: bytes) -> None:
    """Start a worker process now by running ``fn(data)`` in it (its imports, its first
    call), so that the first large input does not wait for the start (~1.2 s for the notebook
    functions, 0.8 s of it nbformat's import). The pool always reuses its most recently used
    worker, however long it idled (anyio retires only the others, after 5 minutes idle), so
    the worker started here stays."""
    global _prestarting
    _prestarting = started = anyio.Event()
    try:
        await _in_process(fn, data)
    finally:
        _prestarting = None
        started.set()


async def _in_process(
    fn: Callable[..., T], data: bytes, *args: object
) -> tuple[bool, T | None]:
    """``(True, fn(data, *args))`` from a worker process, or ``(False, None)`` if there is
    none."""
    global _process_broken
    if _process_broken:
        return False, None
    try:
        return True, await anyio.to_process.run_sync(fn, data, *args)
    except anyio.BrokenWorkerProcess as exc:
        _process_broken = True
        log.warning("worker processes unavailable, using threads: %s", exc)
    except OSError as exc:
        _process_broken = True
        log.warning("worker processes cannot start, using threads: %s", exc)
    return False, None
