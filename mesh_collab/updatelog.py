"""The node's local update log: every update is durable here before anyone else sees it.

One SQLite database per node, in WAL mode with ``synchronous=FULL``. Appends from all rooms
are group-committed: while one commit is being written, new appends gather into the next
batch, so a burst of updates costs one fsync per batch rather than one per update (the
measured floor: 2.4k single-row commits/s versus 40k-150k rows/s batched).

Compaction applies a room's log to a document and stores the encoded state (the room does this
from its live document), replacing the rows it covers in one transaction. It never uses
``merge_updates`` (superlinear) nor pycrdt-store's squash (which loses history in 0.1.5).

Each room also keeps its *lineage*: an id naming the CRDT history the updates belong to.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from mesh_collab.errors import LocalStoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    room TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
class _Batch:
    rows: list[tuple[str, bytes]] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


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
            await log.append("json:notebook:<id>", [update])   # durable on return

    Args:
        path: the SQLite file (created if missing).
        durable: fsync every commit (``synchronous=FULL``). False gives ``NORMAL``: commits
            survive a crash of the process but not of the machine.
    """

    def __init__(self, path: Path, *, durable: bool = True, log: logging.Logger | None = None):
        self.path = Path(path)
        self.durable = durable
        self.log = log or logging.getLogger(__name__)
        self._db: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._batch = _Batch()
        self._wake = anyio.Event()
        self.commits = 0
        self.rows_written = 0

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        db.executescript(_SCHEMA)
        return db

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[UpdateLog]:
        try:
            self._db = await self._run(self._open)
        except sqlite3.Error as exc:
            raise LocalStoreError(f"cannot open the update log {self.path}: {exc}") from exc
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer)
                try:
                    yield self
                finally:
                    # Let the last batch reach the disk before stopping the writer.
                    with anyio.CancelScope(shield=True):
                        if self._batch.rows:
                            await self._batch.done.wait()
                    tg.cancel_scope.cancel()
        finally:
            db, self._db = self._db, None
            if db is not None:
                with anyio.CancelScope(shield=True):
                    await self._run(db.close)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("UpdateLog is not open: use `async with UpdateLog(...)`")
        return self._db

    def _write_rows(self, rows: list[tuple[str, bytes]]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO updates (room, data) VALUES (?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, self._batch = self._batch, _Batch()
            if not batch.rows:
                batch.done.set()
                continue
            try:
                with anyio.CancelScope(shield=True):
                    await self._run(self._write_rows, batch.rows)
            except sqlite3.Error as exc:
                self.log.exception("update log write failed rows=%d", len(batch.rows))
                batch.error = exc
            else:
                self.commits += 1
                self.rows_written += len(batch.rows)
            batch.done.set()

    async def append(self, room: str, updates: list[bytes]) -> None:
        """Append updates of a room; returns once they are committed (with other rooms' ones).

        Raises:
            LocalStoreError: the commit failed (the updates are not stored).
        """
        if not updates:
            return
        batch = self._batch
        batch.rows.extend((room, u) for u in updates)
        self._wake.set()
        await batch.done.wait()
        if batch.error is not None:
            raise LocalStoreError(f"update log write failed: {batch.error}") from batch.error

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
        update) and when a room starts a lineage (loaded from a checkpoint).

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
                db.execute(
                    "INSERT INTO rooms (room, lineage) VALUES (?, ?) "
                    "ON CONFLICT (room) DO UPDATE SET lineage = excluded.lineage",
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

    async def count(self, room: str) -> int:
        """The number of rows the log holds for a room (a compaction signal)."""
        query = "SELECT COUNT(*) FROM updates WHERE room = ?"
        row = await self._run(lambda: self.db.execute(query, (room,)).fetchone())
        return int(row[0])
