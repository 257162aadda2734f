"""Checkpointer: when a document's changes are saved."""

from __future__ import annotations

import time

import anyio

from mesh_collab.checkpoint import Checkpointer


async def test_each_change_moves_the_save_to_a_quiet_period_after_it() -> None:
    starts: list[float] = []

    async def save() -> None:
        starts.append(time.monotonic())

    checkpointer = Checkpointer(save, quiet_period=0.3, max_interval=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(checkpointer.run)
        checkpointer.changed()
        for _ in range(4):  # someone types on, each keystroke within the quiet period
            await anyio.sleep(0.1)
            checkpointer.changed()
        last = time.monotonic()
        with anyio.fail_after(5):
            await checkpointer.saved.wait()
        tg.cancel_scope.cancel()
    assert len(starts) == 1
    assert starts[0] >= last + 0.29  # not 0.3 s after the first change
    assert not checkpointer.dirty
