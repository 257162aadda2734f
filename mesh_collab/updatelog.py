"""The node's local update log: every update is in it before any client sees it.

One SQLite database per node, in WAL mode. Appends from all rooms are group-committed: while
one commit is being written, new appends gather into the next batch, so a burst of updates
costs one commit rather than one per update (the measured floor: 2.4k single-row commits/s
versus 40k-150k rows/s batched).

Two steps make an update durable, and only the first is on the path of a keystroke:

* **written**: the commit is in the WAL file (``synchronous=NORMAL``). It survives a crash or
  ``kill -9`` of the node: the operating system holds it. A room relays an update only once
  it is written.
* **synced**: the WAL is flushed to the disk (fsync) by a second thread, 2 ms after the
  commit, or once the previous flush is ``sync_interval`` seconds old (so that a burst of
  commits costs one fsync per interval), all commits since the last flush at once. It
  survives a power loss. An update that a power loss takes from the node before its flush is
  still held by the client that typed it and every client and node that received it, which
  give it back when they resync. The same thread checkpoints the WAL into the database every
  ``_CHECKPOINT_EVERY`` write transactions, so that the writer never does.

  Not more often: the first commit after a complete checkpoint restarts the WAL, and SQLite
  flushes the new WAL header on the way (0.5-1.1 ms on that keystroke's path here). A
  checkpoint every second put that on every twentieth keystroke at 20 keys/s.

  A flush follows a commit rather than a clock: a flush that overlaps a commit delays it
  (0.2-2 ms here), and a clock ticking at a multiple of someone's typing rhythm would overlap
  every other keystroke.

``sync_interval=0`` flushes every commit before it counts as written (``synchronous=FULL``):
one fsync on the path of every keystroke (0.3-2 ms here), for a node whose clients cannot be
trusted to come back.

Compaction applies a room's log to a document and stores the encoded state (the room does this
from its live document), replacing the rows it covers in one transaction. It never uses
``merge_updates`` (superlinear) nor pycrdt-store's squash (which loses history in 0.1.5).

Each room also keeps its *lineage*: an id naming the CRDT history the updates belong to.

One thread runs the SQLite operations in order (loads, compactions, and commits in a burst);
a finished one hands its result straight back to the event loop. A commit that comes alone
(the thread idle, the last commit more than ``_BURST`` ago: someone typing) is written on the
event loop itself: without the fsync it takes ~0.04 ms, where the two thread hand-offs cost
0.2 ms at the median and 1 ms at p99 on this VM. In a burst, commits go through the thread
so that appends gather behind the one being written (a room merges and relays what gathered
as one: 3x the rate of one commit per update).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from mesh_collab import metrics
from mesh_collab.errors import LocalStoreError

# ``seq`` is the rowid: a new row gets one more than the largest there, so a room's rows keep
# their order (AUTOINCREMENT would write its counter's page too, at every commit).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    room TEXT NOT NULL,
    seq INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_room ON updates (room, seq);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    lineage TEXT NOT NULL,
    base BLOB
);
"""


@dataclass
class Commit:
    """Appends that are committed together (see :meth:`UpdateLog.start_append`)."""

    rows: list[tuple[str, bytes]] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
    started: float = 0.0  # time.monotonic() when its write started (metrics)

    async def wait(self) -> None:
        """Return once the rows are written (see the module's docstring).

        Raises:
            LocalStoreError: the commit failed (the rows are not stored).
        """
        await self.done.wait()
        if self.error is not None:
            raise LocalStoreError(f"update log write failed: {self.error}") from self.error


_Done = Callable[[Any, BaseException | None], None]

# A commit within this many seconds of the previous one is part of a burst.
_BURST = 0.001
# A flush starts at least this long after the commit: once the room relayed it (a flush
# running while the room relays costs the keystroke 0.4 ms at the median here).
_AFTER_RELAY = 0.002
# After a failed flush, the next one waits this long (a failing disk is not hammered).
_RETRY = 1.0
# The flush thread checkpoints the WAL into the database after this many write transactions
# (each writes one page or more: SQLite's own automatic checkpoints come every 1000 pages).
_CHECKPOINT_EVERY = 1000


class _Worker:
    """The thread that runs the log's SQLite operations, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.busy = 0  # jobs submitted whose result has not come back yet
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Done, asyncio.AbstractEventLoop]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, done, loop = job
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed back to the caller on the loop
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def submit(self, fn: Callable[[], Any], done: _Done) -> None:
        """Run ``fn()`` in the thread; then ``done(result, error)`` on this event loop."""

        def report(result: Any, error: BaseException | None) -> None:
            self.busy -= 1
            done(result, error)

        self.busy += 1
        self._jobs.put((fn, report, asyncio.get_running_loop()))

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the thread. It runs to its end even if the caller is cancelled."""
        future = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.submit(fn, done)
        return await asyncio.shield(future)

    def stop(self) -> None:
        self._jobs.put(None)


@dataclass(frozen=True, slots=True)
class RoomLog:
    """What the log holds for a room: its lineage, its updates (oldest first), and the state
    of the document as it was when last written to or read from storage (the *base* of the
    next three-way merge of an external change)."""

    lineage: str
    updates: list[bytes]
    base: bytes | None = None


class UpdateLog(anyio.AsyncContextManagerMixin):
    """A durable, group-committed log of document updates, keyed by room.

    Usage::

        async with UpdateLog(data_dir / "updates.sqlite") as log:
            await log.append("json:notebook:<id>", [update])   # written on return
            await log.sync()                                   # and on the disk

    Args:
        path: the SQLite file (created if missing).
        sync_interval: least time, in seconds, between the starts of two flushes to the
            disk. 0 flushes each commit before it counts as written.
    """

    def __init__(
        self,
        path: Path,
        *,
        sync_interval: float = 0.01,
        log: logging.Logger | None = None,
    ):
        self.path = Path(path)
        self.sync_interval = sync_interval
        self.log = log or logging.getLogger(__name__)
        self._db: sqlite3.Connection | None = None
        self._worker: _Worker | None = None
        self._syncer: _Worker | None = None
        self._sync_planned = False  # a flush is waiting for its time, or running
        self._sync_timer: asyncio.TimerHandle | None = None
        self._checkpointer: sqlite3.Connection | None = None  # the sync thread's own
        self._not_before = 0.0  # time.monotonic() before which no flush starts
        self._checkpointed_writes = 0  # self._writes when the last checkpoint started
        self._folder_synced = False  # the WAL's directory entry is on the disk
        self._last_commit = 0.0  # time.monotonic() when the last commit was started
        self._batch = Commit()  # appends gathering for the next commit
        self._committing: Commit | None = None  # the commit being written
        self.commits = 0
        self.rows_written = 0
        self.syncs = 0
        self._writes = 0  # write transactions ended (commits, resets, bases)
        self._synced_writes = 0  # of which known to be on the disk

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._worker is None:
            raise RuntimeError("UpdateLog is not open: use `async with UpdateLog(...)`")
        return await self._worker.run(lambda: fn(*args))

    def _open(self) -> sqlite3.Connection:
        # Every document the node served is in it, in clear: 0700 folder, 0600 files (SQLite
        # gives -wal and -shm the mode of the database file).
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for name in (self.path.name, f"{self.path.name}-wal", f"{self.path.name}-shm"):
            try:
                os.chmod(self.path.with_name(name), 0o600)
            except FileNotFoundError:
                pass  # -wal and -shm exist only while the log is open
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        if self.sync_interval == 0:
            db.execute("PRAGMA synchronous=FULL")
        else:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the sync thread checkpoints
        db.executescript(_SCHEMA)
        return db

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[UpdateLog]:
        self._worker = _Worker(f"updatelog {self.path.name}")
        self._syncer = _Worker(f"updatelog sync {self.path.name}")
        try:
            try:
                self._db = await self._run(self._open)
            except sqlite3.Error as exc:
                raise LocalStoreError(f"cannot open the update log {self.path}: {exc}") from exc
            try:
                yield self
            finally:
                # Let the last batches reach the disk before closing.
                with anyio.CancelScope(shield=True):
                    try:
                        await self.sync()
                    except LocalStoreError:
                        pass  # logged where it failed
        finally:
            if self._sync_timer is not None:
                self._sync_timer.cancel()
            with anyio.CancelScope(shield=True):
                await self._syncer.run(self._close_checkpointer)
            db, self._db = self._db, None
            if db is not None:
                with anyio.CancelScope(shield=True):
                    await self._run(db.close)
            self._worker.stop()
            self._syncer.stop()
            self._worker = self._syncer = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("UpdateLog is not open: use `async with UpdateLog(...)`")
        return self._db

    def _write_rows(self, rows: list[tuple[str, bytes]]) -> None:
        db = self.db
        if len(rows) == 1:
            # A statement outside a transaction is one: two statements fewer per keystroke.
            db.execute("INSERT INTO updates (room, data) VALUES (?, ?)", rows[0])
            return
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO updates (room, data) VALUES (?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _commit_next(self) -> None:
        """Start writing the gathered appends, unless a commit is being written (then its
        end starts the next one): group commit."""
        if self._committing is not None or not self._batch.rows or self._worker is None:
            return
        batch, self._batch = self._batch, Commit()
        now = time.monotonic()
        alone, self._last_commit = now - self._last_commit > _BURST, now
        batch.started = now
        if self.sync_interval and alone and not self._worker.busy:
            # A commit alone: nothing else uses the connection, and the commit does not fsync.
            try:
                self._write_rows(batch.rows)
            except Exception as exc:  # handed to the appenders by Commit.wait
                self._committed(batch, exc)
            else:
                self._committed(batch, None)
            return
        self._committing = batch

        def done(_result: object, error: BaseException | None) -> None:
            self._committed(batch, error)
            self._committing = None
            self._commit_next()

        self._worker.submit(lambda: self._write_rows(batch.rows), done)

    def _committed(self, batch: Commit, error: BaseException | None) -> None:
        if error is not None:
            self.log.error("update log write failed rows=%d error=%s", len(batch.rows), error)
            batch.error = error
        else:
            self.commits += 1
            self.rows_written += len(batch.rows)
            metrics.COMMIT_DURATION.observe(time.monotonic() - batch.started)
            self._written()
        batch.done.set()

    def _flush(self) -> None:
        """fsync the WAL (and, the first time, its folder), from the sync thread; then
        checkpoint the WAL into the database if ``_CHECKPOINT_EVERY`` writes came since the
        last checkpoint.

        Linux flushes a file's dirty pages whichever descriptor asks, so this flushes what the
        SQLite connection wrote.

        Raises:
            OSError: the flush failed (a failed checkpoint is only logged: the WAL holds
                everything, and the next one copies it).
        """
        names = [f"{self.path}-wal"] if self._folder_synced else [f"{self.path}-wal",
                                                                   str(self.path.parent)]
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                return  # no WAL yet: nothing was written since the last checkpoint
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._folder_synced = True
        writes = self._writes  # counted on the event loop; a late count only delays this
        if self.sync_interval and writes - self._checkpointed_writes >= _CHECKPOINT_EVERY:
            self._checkpointed_writes = writes
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(self.path, isolation_level=None)
                # PASSIVE: copies what no reader needs, never waits for the writer.
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                self.log.warning("update log checkpoint failed error=%s", exc)

    def _close_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    @property
    def unsynced(self) -> int:
        """Write transactions not known to be on the disk yet."""
        return self._writes - self._synced_writes

    def _written(self) -> None:
        """Count a write transaction that ended, and plan the flush that covers it."""
        self._writes += 1
        if self.sync_interval == 0:
            self._synced_writes = self._writes  # SQLite flushed it (synchronous=FULL)
        else:
            self._plan_sync()

    def _plan_sync(self) -> None:
        """Flush soon, or once the last flush is ``sync_interval`` old, unless a flush is
        already planned or running (it, or the one after it, covers this write)."""
        if self._sync_planned:
            return
        self._sync_planned = True
        loop = asyncio.get_running_loop()
        wait = max(self._not_before - time.monotonic(), _AFTER_RELAY)
        self._sync_timer = loop.call_later(wait, self._start_sync)

    def _start_sync(self) -> None:
        self._sync_timer = None
        self._not_before = time.monotonic() + self.sync_interval
        if self._syncer is None:
            return
        covered = self._writes

        def done(_result: object, error: BaseException | None) -> None:
            self._sync_planned = False
            if error is not None:
                self.log.error("update log flush failed error=%s", error)
                self._not_before = time.monotonic() + _RETRY
            else:
                self._synced(covered)
            if self.unsynced:
                self._plan_sync()

        self._syncer.submit(self._flush, done)

    async def sync(self) -> None:
        """Return once every append made so far is on the disk (survives a power loss).

        Raises:
            LocalStoreError: a commit or the flush failed.
        """
        for batch in (self._committing, self._batch):
            if batch is not None and batch.rows:
                await batch.wait()
        if not self.unsynced or self._syncer is None:
            return
        covered = self._writes
        try:
            await self._syncer.run(self._flush)
        except OSError as exc:
            raise LocalStoreError(f"cannot flush the update log: {exc}") from exc
        self._synced(covered)

    def _synced(self, covered: int) -> None:
        self.syncs += 1
        self._synced_writes = max(self._synced_writes, covered)

    async def append(self, room: str, updates: list[bytes]) -> None:
        """Append updates of a room; returns once they are written (with other rooms' ones).

        Raises:
            LocalStoreError: the commit failed (the updates are not stored).
        """
        if updates:
            await self.start_append(room, updates).wait()

    def start_append(self, room: str, updates: list[bytes]) -> Commit:
        """Queue updates of a room for the next commit, and start it if none is being written
        (so the write runs while the caller goes on); ``await commit.wait()`` for the result."""
        commit = self._batch
        commit.rows.extend((room, u) for u in updates)
        self._commit_next()
        return commit

    async def load(self, room: str) -> RoomLog | None:
        """Return the room's lineage and updates, or None if the log never saw it.

        Raises:
            LocalStoreError: the log cannot be read.
        """

        def read() -> RoomLog | None:
            row = self.db.execute(
                "SELECT lineage, base FROM rooms WHERE room = ?", (room,)
            ).fetchone()
            if row is None:
                return None
            data = self.db.execute(
                "SELECT data FROM updates WHERE room = ? ORDER BY seq", (room,)
            ).fetchall()
            return RoomLog(lineage=row[0], updates=[d[0] for d in data], base=row[1])

        try:
            return await self._run(read)
        except sqlite3.Error as exc:
            raise LocalStoreError(f"cannot read the update log: {exc}") from exc

    async def reset(self, room: str, lineage: str, state: bytes) -> None:
        """Replace everything the log holds for a room by one state, under ``lineage``.

        Used at compaction (the state of the live document, which covers every committed
        update) and when a room starts a lineage (loaded from a checkpoint). The base
        (:meth:`set_base`) is kept under the same lineage and dropped under another: a merge
        base of one history is meaningless in another.

        Raises:
            LocalStoreError: the write failed; the previous content is kept.
        """
        # Appends still in flight belong to the state being written: wait for them first.
        if self._batch.rows:
            await self._batch.done.wait()

        def write() -> None:
            db = self.db
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM updates WHERE room = ?", (room,))
                db.execute("INSERT INTO updates (room, data) VALUES (?, ?)", (room, state))
                # The base belongs to its lineage: a new lineage starts without one.
                db.execute(
                    "INSERT INTO rooms (room, lineage) VALUES (?, ?) "
                    "ON CONFLICT (room) DO UPDATE SET lineage = excluded.lineage, "
                    "base = CASE WHEN rooms.lineage = excluded.lineage THEN rooms.base END",
                    (room, lineage),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        try:
            await self._run(write)
        except sqlite3.Error as exc:
            raise LocalStoreError(f"cannot compact the update log: {exc}") from exc
        self._written()

    async def set_base(self, room: str, base: bytes) -> None:
        """Remember the document state that matches the file in storage.

        Raises:
            LocalStoreError: the write failed.
        """
        query = "UPDATE rooms SET base = ? WHERE room = ?"
        try:
            await self._run(lambda: self.db.execute(query, (base, room)))
        except sqlite3.Error as exc:
            raise LocalStoreError(f"cannot store the base state: {exc}") from exc
        self._written()

    async def base(self, room: str) -> bytes | None:
        """The base state stored by :meth:`set_base`, or None.

        Raises:
            LocalStoreError: the log cannot be read.
        """
        query = "SELECT base FROM rooms WHERE room = ?"
        try:
            row = await self._run(lambda: self.db.execute(query, (room,)).fetchone())
        except sqlite3.Error as exc:
            raise LocalStoreError(f"cannot read the update log: {exc}") from exc
        return None if row is None else row[0]

    async def count(self, room: str) -> int:
        """The number of rows the log holds for a room (a compaction signal)."""
        query = "SELECT COUNT(*) FROM updates WHERE room = ?"
        row = await self._run(lambda: self.db.execute(query, (room,)).fetchone())
        return int(row[0])
