"""UpdateLog: durable appends, group commit, flushes, failures, compaction, lineage."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text

from mesh_collab import updatelog
from mesh_collab.errors import LocalStoreError
from mesh_collab.updatelog import UpdateLog


def typed(n: int) -> tuple[list[bytes], str]:
    """``n`` one-character updates and the text they make."""
    doc = Doc()
    text = doc.get("source", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += str(i % 10)
    return updates, str(text)


def replayed(updates: list[bytes]) -> str:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("source", type=Text))


async def test_appends_are_there_after_reopening_in_order(tmp_path: Path) -> None:
    updates, text = typed(50)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        await log.reset("r", "lineage-1", b"\x00\x00")
        for update in updates:
            await log.append("r", [update])
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        stored = await log.load("r")
    assert stored is not None and stored.lineage == "lineage-1"
    assert stored.updates[1:] == updates
    assert replayed(stored.updates) == text


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    updates, text = typed(400)
    async with UpdateLog(tmp_path / "u.sqlite", sync_interval=0) as log, \
            anyio.create_task_group() as tg:
        for i, update in enumerate(updates):
            tg.start_soon(log.append, f"room-{i % 4}", [update])
    assert log.rows_written == 400
    assert log.commits < 400 / 4  # group commit: many appends per fsync
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        counts = [await log.count(f"room-{i}") for i in range(4)]
    assert counts == [100] * 4


async def test_a_failed_commit_is_an_error_for_its_appenders_only(tmp_path: Path) -> None:
    updates, _ = typed(3)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        await log.append("r", [updates[0]])
        await log._run(lambda: log.db.execute("ALTER TABLE updates RENAME TO hidden"))
        with pytest.raises(LocalStoreError, match="update log write failed"):
            await log.append("r", [updates[1]])
        await log._run(lambda: log.db.execute("ALTER TABLE hidden RENAME TO updates"))
        await log.append("r", [updates[2]])  # the log goes on
        assert await log.count("r") == 2


async def test_a_cancelled_append_still_lands(tmp_path: Path) -> None:
    updates, _ = typed(1)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await log.append("r", updates)
        await log.append("other", updates)  # orders after the cancelled one
        assert await log.count("r") == 1


async def test_reset_replaces_the_rows_by_one_state(tmp_path: Path) -> None:
    updates, text = typed(30)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        await log.reset("r", "old", b"\x00\x00")
        await log.append("r", updates)
        doc = Doc()
        for update in updates:
            doc.apply_update(update)
        await log.reset("r", "new", doc.get_update())
        stored = await log.load("r")
    assert stored is not None and stored.lineage == "new" and len(stored.updates) == 1
    assert replayed(stored.updates) == text


async def test_the_base_state_is_kept_per_room(tmp_path: Path) -> None:
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        assert await log.base("r") is None
        await log.reset("r", "lineage", b"\x00\x00")
        assert await log.base("r") is None
        await log.set_base("r", b"state-1")
        await log.reset("r", "lineage", b"\x00\x00")  # compaction keeps the base
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        assert await log.base("r") == b"state-1"
        assert await log.base("other") is None


async def test_a_new_lineage_starts_without_the_old_base(tmp_path: Path) -> None:
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        await log.reset("r", "lineage-1", b"\x00\x00")
        await log.set_base("r", b"state-of-lineage-1")
        await log.reset("r", "lineage-2", b"\x00\x00")
        assert await log.base("r") is None
        stored = await log.load("r")
        assert stored is not None and stored.lineage == "lineage-2" and stored.base is None


class GatedFsync:
    """``os.fsync`` that records which files it flushed and waits for ``open`` first."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.files: list[str] = []
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        self.files.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.set()
        assert self.open.wait(10), "the test never opened the gate"
        self._fsync(fd)


@pytest.fixture
def fsync(monkeypatch: pytest.MonkeyPatch) -> GatedFsync:
    gated = GatedFsync()
    monkeypatch.setattr(os, "fsync", gated)
    return gated


async def test_appends_do_not_wait_for_the_disk_flush_that_follows_them(
    tmp_path: Path, fsync: GatedFsync
) -> None:
    updates, _ = typed(3)
    async with UpdateLog(tmp_path / "u.sqlite", sync_interval=0.01) as log:
        await log.append("r", updates[:1])
        # Nobody asks: the flush is planned by the commit, and it is stuck on the disk ...
        assert await anyio.to_thread.run_sync(fsync.entered.wait, 10)
        assert fsync.files[0] == str(tmp_path / "u.sqlite-wal")
        # ... while appends go on being written.
        await log.append("r", updates[1:2])
        await log.append("r", updates[2:])
        assert log.unsynced >= 2
        fsync.open.set()
        await log.sync()
        assert log.unsynced == 0
        assert await log.count("r") == 3


async def test_closing_flushes_what_was_written(tmp_path: Path, fsync: GatedFsync) -> None:
    updates, _ = typed(1)
    fsync.open.set()
    async with UpdateLog(tmp_path / "u.sqlite", sync_interval=3600) as log:
        await log.append("r", updates)
        await log.sync()
        flushes = len(fsync.files)
        await log.append("r", updates)
        assert log.unsynced == 1  # the next flush is an hour away
    assert len(fsync.files) > flushes
    assert str(tmp_path / "u.sqlite-wal") in fsync.files
    assert log.unsynced == 0


async def test_sync_interval_0_flushes_each_commit_before_it_counts(
    tmp_path: Path, fsync: GatedFsync
) -> None:
    updates, _ = typed(5)
    async with UpdateLog(tmp_path / "u.sqlite", sync_interval=0) as log:
        for update in updates:
            await log.append("r", [update])
            assert log.unsynced == 0
        synchronous = await log._run(lambda: log.db.execute("PRAGMA synchronous").fetchone())
        assert synchronous == (2,)  # FULL: SQLite flushes the WAL at every commit
    assert fsync.files == []  # nothing left for the flush thread


async def test_a_commit_is_written_at_once_unless_the_log_thread_is_busy(tmp_path: Path) -> None:
    updates, _ = typed(3)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        first = log.start_append("r", updates[:1])
        assert first.done.is_set()  # written on the event loop: nothing else was running
        busy = threading.Event()
        assert log._worker is not None
        log._worker.submit(lambda: busy.wait(10), lambda _result, _error: None)
        second = log.start_append("r", updates[1:2])
        third = log.start_append("r", updates[2:])
        assert not second.done.is_set() and not third.done.is_set()  # they wait their turn
        busy.set()
        await third.wait()
        assert second.done.is_set()
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        query = "SELECT data FROM updates WHERE room = 'r' ORDER BY seq"
        rows = await log._run(lambda: log.db.execute(query).fetchall())
    assert [row[0] for row in rows] == updates  # in the order they were appended


def rows_in_database_file(path: Path, tmp: Path) -> int:
    """The rows the database file itself holds, without its WAL: the checkpointed ones."""
    copy = tmp / "alone.sqlite"
    copy.write_bytes(path.read_bytes())
    db = sqlite3.connect(copy)
    try:
        return int(db.execute("SELECT count(*) FROM updates").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not even the table was checkpointed
    finally:
        db.close()
        copy.unlink()


async def test_the_wal_is_checkpointed_every_so_many_writes_not_more_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first commit after a checkpoint pays for restarting the WAL, so not at every flush;
    # the WAL must not grow without end either.
    monkeypatch.setattr(updatelog, "_CHECKPOINT_EVERY", 3)
    path = tmp_path / "u.sqlite"
    updates, _ = typed(5)
    async with UpdateLog(path) as log:
        for update in updates[:2]:
            await log.append("r", [update])
            await log.sync()
        assert rows_in_database_file(path, tmp_path) == 0
        await log.append("r", [updates[2]])
        await log.sync()
        assert rows_in_database_file(path, tmp_path) == 3
        for update in updates[3:]:
            await log.append("r", [update])
            await log.sync()
        assert rows_in_database_file(path, tmp_path) == 3
        assert await log.count("r") == 5


async def test_a_failing_disk_flush_is_an_error_and_the_writes_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    updates, text = typed(2)
    failed, recovered = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        failed.set()
        if not recovered.is_set():
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        await log.append("r", updates[:1])
        assert await anyio.to_thread.run_sync(failed.wait, 10)  # the planned flush failed
        await log.append("r", updates[1:])  # writing goes on
        with pytest.raises(LocalStoreError, match="cannot flush the update log"):
            await log.sync()
        assert log.unsynced >= 1
        failures = [r for r in caplog.records if "update log flush failed" in r.message]
        assert failures  # said once, without a traceback; retried a second later, not at once
        assert all("Input/output error" in r.message and r.exc_info is None for r in failures)
        recovered.set()
        await log.sync()
        assert log.unsynced == 0
    async with UpdateLog(tmp_path / "u.sqlite") as log:
        query = "SELECT data FROM updates WHERE room = 'r' ORDER BY seq"
        rows = await log._run(lambda: log.db.execute(query).fetchall())
    assert replayed([row[0] for row in rows]) == text
