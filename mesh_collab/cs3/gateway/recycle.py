"""The recycle bin: deleted resources, kept per space until restored, purged or expired.

A Delete moves the resource (a file, or a folder with everything below it) from
``<root>/files`` to ``<root>/trash/<key>``, and its node records from ``nodes`` to
``recycle_nodes``. Ids, arbitrary metadata, versions and shares stay: a restore gives the
resource back under its old resource ids, with its history, as EOS and decomposedfs do
(``eos recycle restore --restore-versions``; decomposedfs trashes the node, revisions
included). Locks are dropped. While an item is in the bin its ids resolve to nothing, so its
shares give no access; they work again once it is restored, and go when it is purged.

The bin belongs to the space (home) the resource was deleted from, whoever deleted it: a
grantee's delete inside a shared folder lands in the owner's bin, as on EOS, where a deleted
entry goes to the recycle bin of the file's owner. Only the owner lists, restores and
purges it (:class:`RecycleOps`, mixed into :class:`~mesh_collab.cs3.gateway.storage.Storage`).

Retention: an item older than ``max_age`` is purged (checked at every delete and listing),
and the items of one space together stay under ``max_bytes``. Only the owner's own deletes
make room, by purging the oldest items (the newest always stays, whatever its size): a
grantee's delete that would not fit is refused instead, so that no grantee can push the
owner's earlier deletions out of the bin. The versions an item keeps are not counted in its
size.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat as stat_mod
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from cs3.storage.provider.v1beta1 import resources_pb2 as res

from .content import _lstat
from .db import MetaDB
from .locks import LockRules, LockTable
from .namespace import Namespace, Node
from .shares import ShareStore
from .status import (
    ALREADY_EXISTS,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    GatewayError,
)
from .users import UserRecord
from .versions import VersionStore, remove_trees

#: Default retention, ownCloud's (``trashbin_retention_obligation`` "auto": 30 days).
DEFAULT_MAX_AGE = 30 * 86400.0
#: Default budget of one space's bin, in bytes.
DEFAULT_MAX_BYTES = 4 * 2**30


@dataclass(frozen=True, slots=True)
class RecycleEntry:
    """One item of a space's recycle bin.

    Attributes:
        key: the item's key (``RecycleItem.key``).
        space: the username whose home the item was deleted from.
        rel: where it was, relative to ``<root>/files``.
        is_dir: whether it is a container.
        size: bytes of its files when it was deleted.
        deleted: when, in seconds since the epoch.
        deleted_by: the opaque id of the user who deleted it.
    """

    key: str
    space: str
    rel: str
    is_dir: bool
    size: int
    deleted: float
    deleted_by: str

    @property
    def path(self) -> str:
        """The absolute CS3 path the item was deleted from."""
        return "/" + self.rel

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RecycleEntry:
        return cls(
            key=str(row["key"]), space=str(row["space"]), rel=str(row["path"]),
            is_dir=row["type"] == res.RESOURCE_TYPE_CONTAINER, size=int(row["size"]),
            deleted=float(row["deleted"]), deleted_by=str(row["deleted_by"]),
        )


class RecycleBin:
    """The ``recycle`` tables and ``<root>/trash``.

    Args:
        root: the folder holding trashed items (on the filesystem of ``<root>/files``).
        db: the metadata database.
        namespace: node records.
        versions: the versions of trashed nodes, dropped on purge.
        shares: the shares of trashed nodes, dropped on purge.
        max_age: seconds an item is kept; None keeps items until purged.
        max_bytes: bytes of items one space keeps; None for no limit.
        log: the logger.
    """

    def __init__(
        self, root: Path, *, db: MetaDB, namespace: Namespace, versions: VersionStore,
        shares: ShareStore, max_age: float | None = DEFAULT_MAX_AGE,
        max_bytes: int | None = DEFAULT_MAX_BYTES, log: logging.Logger,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._db = db
        self._ns = namespace
        self._versions = versions
        self._shares = shares
        self._log = log

    def trash(self, node: Node, st: os.stat_result, *, size: int, deleted_by: str) -> str:
        """Move an existing ``node`` (and what is below it) into the bin; return the key.

        Blocking only for a rename inside one filesystem: it runs on the loop, so the disk
        and the records change together for every other request.
        """
        key = uuid.uuid4().hex
        kind = res.RESOURCE_TYPE_CONTAINER if stat_mod.S_ISDIR(st.st_mode) else (
            res.RESOURCE_TYPE_FILE
        )
        dst = self.root / key
        os.rename(node.disk, dst)
        try:
            with self._db.transaction():
                records = self._ns.detach(node)
                self._db.execute(
                    "INSERT INTO recycle (key, space, path, type, size, deleted, deleted_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, node.home_user, node.rel, kind, size, time.time(), deleted_by),
                )
                for node_id, below, gen in records:
                    self._db.execute(
                        "INSERT INTO recycle_nodes (id, key, rel, gen) VALUES (?, ?, ?, ?)",
                        (node_id, key, below, gen),
                    )
        except BaseException:
            os.rename(dst, node.disk)
            raise
        return key

    def list(self, space: str) -> list[RecycleEntry]:
        """Return the items of a space's bin, most recently deleted first."""
        rows = self._db.all(
            "SELECT * FROM recycle WHERE space = ? ORDER BY deleted DESC, key", (space,)
        )
        return [RecycleEntry.from_row(r) for r in rows]

    def get(self, space: str, key: str) -> RecycleEntry:
        """Return one item of a space's bin.

        Raises:
            GatewayError: NOT_FOUND if the space's bin has no such key.
        """
        row = self._db.one("SELECT * FROM recycle WHERE key = ? AND space = ?", (key, space))
        if row is None:
            raise GatewayError(NOT_FOUND, "recycle item not found")
        return RecycleEntry.from_row(row)

    def restore(self, entry: RecycleEntry, target: Node) -> None:
        """Put an item back at ``target`` (free, with an existing parent) under its old ids.

        Blocking only for a rename, like :meth:`trash`.
        """
        records = [
            (str(r["id"]), str(r["rel"]), str(r["gen"]))
            for r in self._db.all(
                "SELECT id, rel, gen FROM recycle_nodes WHERE key = ?", (entry.key,)
            )
        ]
        src = self.root / entry.key
        os.rename(src, target.disk)
        try:
            with self._db.transaction():
                self._ns.attach(target, records)
                self._db.execute("DELETE FROM recycle_nodes WHERE key = ?", (entry.key,))
                self._db.execute("DELETE FROM recycle WHERE key = ?", (entry.key,))
        except BaseException:
            os.rename(target.disk, src)
            raise

    async def purge(self, entries: list[RecycleEntry]) -> None:
        """Remove items for good: their files, versions, metadata and shares."""
        if not entries:
            return
        trees: list[Path] = []
        with self._db.transaction():
            for entry in entries:
                ids = [
                    str(r["id"]) for r in self._db.all(
                        "SELECT id FROM recycle_nodes WHERE key = ?", (entry.key,)
                    )
                ]
                for node_id in ids:
                    self._db.execute("DELETE FROM xattrs WHERE node_id = ?", (node_id,))
                self._shares.drop_for_nodes(ids)
                trees.extend(self._versions.drop(ids))
                self._db.execute("DELETE FROM recycle_nodes WHERE key = ?", (entry.key,))
                self._db.execute("DELETE FROM recycle WHERE key = ?", (entry.key,))
                trees.append(self.root / entry.key)
        await anyio.to_thread.run_sync(_remove, trees)

    def check_room(self, space: str, size: int) -> None:
        """Refuse an item of ``size`` bytes that would take ``space``'s bin over its budget.

        Raises:
            GatewayError: RESOURCE_EXHAUSTED.
        """
        if self.max_bytes is None:
            return
        row = self._db.one("SELECT COALESCE(SUM(size), 0) AS used FROM recycle WHERE space = ?",
                           (space,))
        used = int(row["used"]) if row is not None else 0
        if used + size > self.max_bytes:
            raise GatewayError(RESOURCE_EXHAUSTED, "the owner's recycle bin is full")

    async def expire(self, now: float) -> None:
        """Purge the items older than ``max_age``, in every space."""
        if self.max_age is None:
            return
        rows = self._db.all("SELECT * FROM recycle WHERE deleted < ?", (now - self.max_age,))
        if rows:
            self._log.info("op=ExpireRecycle items=%d", len(rows))
            await self.purge([RecycleEntry.from_row(r) for r in rows])

    async def make_room(self, space: str) -> None:
        """Purge ``space``'s oldest items until the rest fit in ``max_bytes``; the newest
        item stays whatever its size."""
        if self.max_bytes is None:
            return
        kept = 0
        evicted = []
        for i, entry in enumerate(self.list(space)):  # newest first
            kept += entry.size
            if i and kept > self.max_bytes:
                evicted.append(entry)
        if evicted:
            self._log.info("op=ExpireRecycle space=%s items=%d over=max_bytes", space,
                           len(evicted))
            await self.purge(evicted)


class RecycleOps:
    """The recycle bin RPCs' checks; mixed into :class:`~mesh_collab.cs3.gateway.storage.Storage`.

    A space's bin is its owner's: a home is never shared, so no grant reaches the space root
    whose ``list_recycle``, ``restore_recycle_item`` and ``purge_recycle`` are asked.
    """

    ns: Namespace
    rules: LockRules
    locks: LockTable
    recycle: RecycleBin
    _commit_lock: anyio.Lock

    def require(self, user: UserRecord, node: Node, perm: str) -> res.ResourcePermissions:
        raise NotImplementedError

    def bin_of(self, user: UserRecord, node: Node, perm: str) -> str:
        """Return the space ``node`` is in (its owner's username) if ``user`` may ``perm``
        its bin.

        Raises:
            GatewayError: PERMISSION_DENIED otherwise.
        """
        home = self.ns.node("/".join(node.parts[:2]))
        self.require(user, home, perm)
        return home.home_user

    async def list_recycle(self, user: UserRecord, node: Node) -> list[RecycleEntry]:
        """ListRecycle: the bin of ``node``'s space, most recently deleted first."""
        space = self.bin_of(user, node, "list_recycle")
        await self.recycle.expire(time.time())
        return self.recycle.list(space)

    async def restore_recycle_item(
        self, user: UserRecord, node: Node, key: str, target: Node | None, lock_id: str
    ) -> Node:
        """RestoreRecycleItem: back to where it was, or to ``target``, with its old ids.

        Raises:
            GatewayError: NOT_FOUND (key, or the target's parent), ALREADY_EXISTS (target
                taken), PERMISSION_DENIED (not the owner, or a target in another space).
        """
        space = self.bin_of(user, node, "restore_recycle_item")
        entry = self.recycle.get(space, key)
        dst = target or self.ns.node(entry.rel)
        if dst.home_user != space:
            raise GatewayError(PERMISSION_DENIED, "cross-space restores are forbidden")
        if dst.is_home:
            raise GatewayError(ALREADY_EXISTS, "restore target already exists")
        async with self._commit_lock:  # no upload creates the target meanwhile
            entry = self.recycle.get(space, key)  # purged while we waited?
            if _lstat(dst) is not None:
                raise GatewayError(ALREADY_EXISTS, "restore target already exists")
            parent_st = _lstat(self.ns.node(dst.parent_rel))
            if parent_st is None or not stat_mod.S_ISDIR(parent_st.st_mode):
                raise GatewayError(NOT_FOUND, "parent of the restore target not found")
            # Edge checks the lock of the restore target, which does not exist yet.
            self.rules.check_op(self.locks, None, lock_id, time.time())
            self.recycle.restore(entry, dst)
        return dst

    async def purge_recycle(self, user: UserRecord, node: Node, key: str) -> int:
        """PurgeRecycle: one item by key, or the whole bin when ``key`` is empty (as Reva's
        storage provider reads it). Returns how many items went.

        Raises:
            GatewayError: NOT_FOUND for an unknown key, PERMISSION_DENIED (not the owner).
        """
        space = self.bin_of(user, node, "purge_recycle")
        entries = [self.recycle.get(space, key)] if key else self.recycle.list(space)
        await self.recycle.purge(entries)
        return len(entries)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            remove_trees([path])
        else:
            path.unlink(missing_ok=True)


def tree_size(path: Path) -> int:
    """Bytes of the regular files at or below ``path`` (not following links). Blocking."""
    st = os.lstat(path)
    if not stat_mod.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total

