"""offload: large inputs run in a worker process, small ones in a thread, same results."""

from __future__ import annotations

import os

import anyio
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from mesh_collab import notebook, offload
from tests.data import NOTEBOOKS as DATA
from tests.processes import pool_workers


def pid_of(_data: bytes) -> int:
    return os.getpid()


def state_of(name: str) -> bytes:
    doc = Doc()
    notebook.load(YNotebook(ydoc=doc), notebook.from_bytes((DATA / name).read_bytes()))
    return doc.get_update()


async def test_a_large_state_is_encoded_in_another_process_with_the_same_bytes() -> None:
    state = state_of("02_end_to_end_machine_learning_project.ipynb")
    assert len(state) >= offload.PROCESS_THRESHOLD
    assert await offload.run(pid_of, state) != os.getpid()
    assert await offload.run(notebook.file_of_state, state) == notebook.file_of_state(state)


async def test_a_new_lineage_built_in_another_process_is_the_same_history() -> None:
    """Every node starting from the same file must build the same items: the worker's
    document and one built here merge without duplicates."""
    data = (DATA / "02_end_to_end_machine_learning_project.ipynb").read_bytes()
    assert len(data) >= offload.PROCESS_THRESHOLD
    there, here = await offload.run(notebook.seed_state, data), notebook.seed_state(data)
    a, b = Doc(), Doc()
    a.apply_update(there)
    b.apply_update(here)
    assert a.get_state() == b.get_state()  # the same items: client 0, the same clocks
    a.apply_update(here)  # merging them adds nothing
    assert a.get_state() == b.get_state()
    expected = notebook.from_bytes(data)
    assert notebook.to_notebook(YNotebook(ydoc=a))["cells"] == expected["cells"]


async def test_a_small_state_stays_in_this_process() -> None:
    state = state_of("Running_Code.ipynb")
    assert len(state) < offload.PROCESS_THRESHOLD
    assert await offload.run(pid_of, state) == os.getpid()
    assert await offload.run(notebook.file_of_state, state) == notebook.file_of_state(state)


async def test_without_worker_processes_it_falls_back_to_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def cannot_start(*args: object, **kwargs: object) -> None:
        raise OSError("fork refused")

    monkeypatch.setattr(offload.anyio.to_process, "run_sync", cannot_start)
    monkeypatch.setattr(offload, "_process_broken", False)
    large = b"x" * offload.PROCESS_THRESHOLD
    assert await offload.run(pid_of, large) == os.getpid()
    assert "worker processes cannot start" in caplog.text
    assert await offload.run(pid_of, large) == os.getpid()  # and says it only once
    assert caplog.text.count("worker processes") == 1


async def test_a_prestarted_worker_serves_the_first_large_input() -> None:
    before = pool_workers()
    await offload.prestart(pid_of, b"")
    started = pool_workers() - before
    assert len(started) == 1  # and running: prestart returned after its call
    large = b"x" * offload.PROCESS_THRESHOLD
    assert await offload.run(pid_of, large) in started
    assert pool_workers() - before == started  # no second process


async def test_a_large_input_during_the_prestart_waits_for_its_worker() -> None:
    before = pool_workers()
    large = b"x" * offload.PROCESS_THRESHOLD
    async with anyio.create_task_group() as tg:
        tg.start_soon(offload.prestart, pid_of, b"")
        await anyio.wait_all_tasks_blocked()  # the prestart is starting its process
        pid = await offload.run(pid_of, large)
    assert pool_workers() - before == {pid}  # one process, not a second one beside it
