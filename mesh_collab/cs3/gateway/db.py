"""The gateway's metadata database: one SQLite file in WAL mode.

Everything that is not file content lives here: node ids, arbitrary metadata, locks,
versions, the recycle bin, shares, OCM shares and the JWT secrets, so the file (and its -wal
and -shm) has mode 0600. All calls are short and run on the event loop's thread (one connection,
``check_same_thread`` on); only file content is moved on worker threads. Writes that must
be atomic (SetLock races, share creation) run in :meth:`MetaDB.transaction`, which opens
``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- posix path relative to <root>/files
    gen TEXT NOT NULL               -- changes on every write through the gateway (etag input)
);
CREATE TABLE IF NOT EXISTS xattrs (
    node_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (node_id, key)
);
CREATE TABLE IF NOT EXISTS locks (
    node_id TEXT PRIMARY KEY,
    lock_id TEXT NOT NULL,
    type INTEGER NOT NULL,
    user_idp TEXT NOT NULL DEFAULT '',
    user_opaque TEXT NOT NULL DEFAULT '',
    app_name TEXT NOT NULL DEFAULT '',
    expiration REAL,                -- unix seconds, NULL = never
    creation REAL NOT NULL,
    setter TEXT NOT NULL            -- opaque id of the user who called SetLock
);
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    etag TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_node ON versions (node_id, seq);
CREATE TABLE IF NOT EXISTS recycle (
    key TEXT PRIMARY KEY,
    space TEXT NOT NULL,            -- username of the home the resource was deleted from
    path TEXT NOT NULL,             -- where it was: posix path relative to <root>/files
    type INTEGER NOT NULL,          -- ResourceType (file or container)
    size INTEGER NOT NULL,          -- bytes of its files when deleted
    deleted REAL NOT NULL,          -- unix seconds
    deleted_by TEXT NOT NULL        -- opaque id of the user who deleted it
);
CREATE INDEX IF NOT EXISTS recycle_space ON recycle (space, deleted);
CREATE TABLE IF NOT EXISTS recycle_nodes (
    id TEXT PRIMARY KEY,            -- a node id, given back on restore
    key TEXT NOT NULL,              -- the recycle item holding the node
    rel TEXT NOT NULL,              -- its path below the item's root ('' for the root)
    gen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recycle_nodes_key ON recycle_nodes (key);
CREATE TABLE IF NOT EXISTS shares (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    creator TEXT NOT NULL,
    grantee TEXT NOT NULL,
    permissions BLOB NOT NULL,      -- serialised ResourcePermissions
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    expiration REAL,
    state INTEGER NOT NULL,
    hidden INTEGER NOT NULL DEFAULT 0,
    UNIQUE (node_id, grantee)
);
CREATE TABLE IF NOT EXISTS ocm_sent (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    grantee_idp TEXT NOT NULL,
    grantee_opaque TEXT NOT NULL,
    secret TEXT NOT NULL UNIQUE,
    writable INTEGER NOT NULL,
    name TEXT NOT NULL,
    recipient_name TEXT NOT NULL,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    UNIQUE (node_id, grantee_idp, grantee_opaque)
);
CREATE TABLE IF NOT EXISTS ocm_received (
    id TEXT PRIMARY KEY,
    grantee TEXT NOT NULL,
    name TEXT NOT NULL,
    remote_share_id TEXT NOT NULL,
    owner_idp TEXT NOT NULL,
    owner_opaque TEXT NOT NULL,
    creator_idp TEXT NOT NULL,
    creator_opaque TEXT NOT NULL,
    uri TEXT NOT NULL,
    secret TEXT NOT NULL,
    permissions TEXT NOT NULL,      -- JSON list, e.g. ["read", "write"]
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    owner_site TEXT NOT NULL,
    state INTEGER NOT NULL,
    hidden INTEGER NOT NULL DEFAULT 0,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    UNIQUE (grantee, owner_idp, remote_share_id)
);
"""


class MetaDB:
    """The SQLite metadata database of one gateway root.

    Usage::

        db = MetaDB(root / "meta.sqlite")
        with db.transaction():
            db.execute("INSERT INTO nodes ...")
        db.close()
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        private_file(path)
        # isolation_level=None: autocommit, transactions are explicit (BEGIN IMMEDIATE).
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._conn.execute(
            "INSERT OR IGNORE INTO settings (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction (re-entrant)."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        """Execute one statement."""
        return self._conn.execute(sql, params)

    def one(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> sqlite3.Row | None:
        """Return the first row of a query, or None."""
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> list[sqlite3.Row]:
        """Return every row of a query."""
        return list(self._conn.execute(sql, params).fetchall())

    def secret(self, name: str) -> str:
        """Return the named secret, generating and storing it on first use."""
        with self.transaction():
            row = self.one("SELECT value FROM settings WHERE key = ?", (f"secret:{name}",))
            if row is not None:
                return str(row["value"])
            value = secrets.token_urlsafe(48)
            self.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)", (f"secret:{name}", value)
            )
            return value


def private_file(path: Path) -> None:
    """Create the SQLite file ``path`` with mode 0600, or set that mode on it and its -wal
    and -shm files. SQLite creates -wal and -shm with the mode of the database file, so none
    is ever readable by others, whatever the umask."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        try:
            os.chmod(path.with_name(name), 0o600)
        except FileNotFoundError:
            pass  # -wal and -shm exist only while the database is open
