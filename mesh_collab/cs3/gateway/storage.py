"""The storage provider of the embedded gateway: files, metadata, locks and versions.

Every method takes the authenticated :class:`~mesh_collab.cs3.gateway.users.UserRecord`
and a resolved :class:`~mesh_collab.cs3.gateway.namespace.Node`, checks permissions, the
lock profile's rules and existence, in Reva's order, and raises
:class:`~mesh_collab.cs3.gateway.status.GatewayError` to refuse. Metadata calls are short
and run on the event loop; file content is moved on worker threads.

Access: a user owns their home (all permissions); elsewhere they hold the union of the
permissions of the shares granted to them on the node or any container above it.
Anything else is PERMISSION_DENIED, also for id-based references.

What a grantee may not do, whatever the share's permissions, as in Reva and ownCloud: move
the root of a share, or move anything out of the shared folder (only moves inside it), and
delete the root of a share (they decline it instead). A delete, by anybody, goes to the
recycle bin of the space it was made in (:mod:`~mesh_collab.cs3.gateway.recycle`), which
only the space's owner lists, restores and purges; a write keeps the replaced content as a
version unless the owner asked otherwise (``X-Disable-Versioning``, honoured for the owner
only).

Locks (rules in :mod:`~mesh_collab.cs3.gateway.locks`): a user without write permission on
a file sees that it is locked, by which application and user, and until when, but not the
lock's id (:data:`HIDDEN_LOCK_ID` instead, in Stat, ListContainer and GetLock): the id is
what a write through the lock presents, and an application's lock id may carry more (a
WOPI lock id names its session).

Cost of reading: ListContainer reads the folder on a worker thread, without following
links, and builds the ``ResourceInfo`` of the requested page only (the whole folder without
``page_size``), a batch of entries at a time with a few queries per batch; other requests
run between two batches. GetQuota counts a home's bytes at most every
:data:`QUOTA_MAX_AGE` seconds (:class:`HomeUsage`).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import shutil
import stat as stat_mod
import time
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2

from .content import ContentOps, _existing, _lstat
from .db import MetaDB
from .locks import Caller, LockRules, LockTable, StoredLock
from .namespace import Namespace, Node
from .recycle import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, RecycleBin, RecycleOps, tree_size
from .shares import ShareStore
from .status import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    GatewayError,
)
from .users import UserDirectory, UserRecord, default_opaque_id
from .versions import VersionStore

FOLDER_MIME = "httpd/unix-directory"
# Keys EOS refuses in SetArbitraryMetadata (master eosfs: reserved lock attributes).
RESERVED_KEYS = frozenset({"reva.lockpayload", "app.lock", "sys.reva.lockpayload", "sys.app.lock"})
_MAX_KEY = 255
_MAX_VALUE = 64 * 1024
ALL_PERMISSIONS = res.ResourcePermissions(
    **{f.name: True for f in res.ResourcePermissions.DESCRIPTOR.fields}
)
mimetypes.add_type("application/x-ipynb+json", ".ipynb")
#: The lock id users without write permission see (Stat, ListContainer, GetLock).
HIDDEN_LOCK_ID = "hidden"
#: Seconds a home's used bytes (GetQuota) are answered from its last count.
QUOTA_MAX_AGE = 30.0
# Homes counted at once: each count walks a whole home on a worker thread.
_QUOTA_WALKS = 2
# ListContainer entries given their ResourceInfo between two turns of the event loop.
_LIST_BATCH = 256
# Node ids per query of many rows (SQLite's default limit of variables is 999 before 3.32).
_QUERY_BATCH = 500


class HomeUsage:
    """Bytes used in each home, counted at most once per ``max_age`` seconds.

    A count walks the whole home (no links followed) on a worker thread; a caller that comes
    while one runs waits for it instead of starting another, and at most
    ``_QUOTA_WALKS`` homes are counted at once. In between, the last count is answered: a
    write shows in ``used`` within ``max_age`` seconds.

    Args:
        namespace: the namespace the homes are in.
        max_age: seconds a count is answered for.
    """

    def __init__(self, namespace: Namespace, *, max_age: float = QUOTA_MAX_AGE) -> None:
        self._ns = namespace
        self._max_age = max_age
        self._limiter = anyio.CapacityLimiter(_QUOTA_WALKS)
        self._counts: dict[str, tuple[float, int]] = {}
        self._running: dict[str, anyio.Event] = {}

    async def used(self, home: Node) -> int:
        """Return the bytes used in ``home``.

        Raises:
            GatewayError: NOT_FOUND without such a home; PERMISSION_DENIED through a link.
        """
        while True:
            counted = self._counts.get(home.rel)
            if counted is not None and time.monotonic() - counted[0] < self._max_age:
                return counted[1]
            running = self._running.get(home.rel)
            if running is None:
                break
            await running.wait()
        done = self._running[home.rel] = anyio.Event()
        try:
            used = await anyio.to_thread.run_sync(
                self._ns.used_bytes, home, limiter=self._limiter
            )
            self._counts[home.rel] = (time.monotonic(), used)
        finally:
            del self._running[home.rel]
            done.set()
        return used


class Storage(ContentOps, RecycleOps):
    """Files under ``<root>/files`` with Reva's semantics.

    Args:
        root: the gateway root folder.
        db: the metadata database.
        namespace: path and id resolution.
        rules: the lock profile.
        users: the user directory (owners of homes).
        shares: the share store (access of non-owners).
        idp: the gateway's domain, idp of users unknown to the directory.
        log: the logger.
        recycle_max_age: seconds a deleted resource stays in the recycle bin (None: until
            purged).
        recycle_max_bytes: bytes one space's recycle bin keeps (None: no limit); the
            owner's deletes purge the oldest items, a grantee's that does not fit is refused.
    """

    def __init__(
        self, *, root: Path, db: MetaDB, namespace: Namespace, rules: LockRules,
        users: UserDirectory, shares: ShareStore, idp: str, log: logging.Logger,
        recycle_max_age: float | None = DEFAULT_MAX_AGE,
        recycle_max_bytes: int | None = DEFAULT_MAX_BYTES,
    ) -> None:
        self.ns = namespace
        self.rules = rules
        self.locks = LockTable(db)
        self.versions = VersionStore(root / "versions", db)
        self.recycle = RecycleBin(
            root / "trash", db=db, namespace=namespace, versions=self.versions, shares=shares,
            max_age=recycle_max_age, max_bytes=recycle_max_bytes, log=log,
        )
        self.shares = shares
        self.users = users
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.usage = HomeUsage(namespace)
        self._db = db
        self._idp = idp
        self._log = log
        self._commit_lock = anyio.Lock()

    # ---- access ---------------------------------------------------------------------------

    def ensure_home(self, user: UserRecord) -> None:
        """Create the user's home container on first login."""
        node = self.ns.resolve_path(f"/home/{user.username}")
        node.disk.mkdir(exist_ok=True)
        self.ns.ensure_id(node)

    def permissions(self, user: UserRecord, node: Node) -> res.ResourcePermissions | None:
        """Return what ``user`` may do to ``node``, or None for no access at all."""
        if node.home_user == user.username:
            return ALL_PERMISSIONS
        grants = self.shares.grants(user.opaque_id, self.ns.ids_of_ancestors(node))
        if not grants:
            return None
        return _merged(grants)

    def require(self, user: UserRecord, node: Node, perm: str) -> res.ResourcePermissions:
        """Return the user's permissions on ``node`` if they include ``perm``.

        Raises:
            GatewayError: PERMISSION_DENIED otherwise.
        """
        perms = self.permissions(user, node)
        if perms is None or not getattr(perms, perm):
            raise GatewayError(PERMISSION_DENIED, f"permission denied: {perm}")
        return perms

    def owns(self, opaque_id: str, node: Node) -> bool:
        """Whether the user with this opaque id owns the home that holds ``node``."""
        rec = self.users.by_opaque_id(opaque_id)
        return rec is not None and rec.username == node.home_user

    def inside_share(
        self, user: UserRecord, node: Node, perm: str, *, dst: Node | None = None
    ) -> bool:
        """Whether a share to ``user`` of a container strictly above ``node`` grants ``perm``
        (and, given ``dst``, also holds ``dst`` strictly below it)."""
        ancestors = self.ns.ancestors(node)
        for node_id, perms in self.shares.grants_by_node(user.opaque_id, list(ancestors)):
            root = ancestors[node_id]
            if root == node.rel or not getattr(perms, perm):
                continue
            if dst is None or dst.rel.startswith(root + "/"):
                return True
        return False

    # ---- reading ------------------------------------------------------------------------

    def stat(self, user: UserRecord, node: Node, keys: list[str]) -> res.ResourceInfo:
        """Stat (spec §1.4): NOT_FOUND if missing."""
        perms = self.require(user, node, "stat")
        st = self._existing(node, "path not found when statting")
        return self.info(node, st, keys, perms)

    async def list_container(
        self, user: UserRecord, node: Node, keys: list[str], *, start: int = 0,
        limit: int = 0,
    ) -> tuple[list[res.ResourceInfo], int]:
        """ListContainer: children sorted by name; symlinks and unreachable names skipped.

        Args:
            start: offset of the first child to describe.
            limit: how many children to describe at most (0: all from ``start``).

        Returns:
            The ``ResourceInfo`` of the children in ``[start, start + limit)``, and how many
            children the folder has.

        Raises:
            GatewayError: PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION (not a folder).
        """
        perms = self.require(user, node, "list_container")
        st = self._existing(node, "path not found when listing container")
        if not stat_mod.S_ISDIR(st.st_mode):
            raise GatewayError(FAILED_PRECONDITION, "not a container")
        children = await anyio.to_thread.run_sync(self.ns.children, node)
        page = [
            (self.ns.listed(node, name), child_st)
            for name, child_st in (children[start:start + limit] if limit > 0
                                   else children[start:])
        ]
        infos: list[res.ResourceInfo] = []
        for first in range(0, len(page), _LIST_BATCH):
            if first:
                await anyio.lowlevel.checkpoint()  # let other requests run between batches
            infos.extend(
                self._child_infos(user, node, page[first:first + _LIST_BATCH], keys, perms)
            )
        return infos, len(children)

    def info(
        self, node: Node, st: os.stat_result, keys: list[str], perms: res.ResourcePermissions
    ) -> res.ResourceInfo:
        """Build the ``ResourceInfo`` of an existing node."""
        node_id = self.ns.ensure_id(node)
        parent_id = None
        if not node.is_home:
            parent = self.ns.node(node.parent_rel)
            parent_id = self.ns.resource_id(parent, self.ns.ensure_id(parent))
        return self._build_info(
            node, st, node_id, self.ns.gen_of(node_id), perms=perms, keys=keys,
            metadata=self._metadata(node_id, keys),
            lock=self.rules.stat_lock(self.locks, node_id, time.time()),
            owner=self.owner_of(node), parent_id=parent_id,
        )

    def _child_infos(
        self, user: UserRecord, parent: Node, entries: list[tuple[Node, os.stat_result]],
        keys: list[str], parent_perms: res.ResourcePermissions,
    ) -> list[res.ResourceInfo]:
        """The ``ResourceInfo`` of some children of ``parent``: one query per kind of fact
        (ids, metadata, locks, shares) for all of them."""
        records = self.ns.records([child for child, _ in entries])
        node_ids = [records[child.rel][0] for child, _ in entries]
        metadata = self._metadata_of(node_ids, keys)
        locks = self.rules.stat_locks(self.locks, node_ids, time.time())
        own_grants: dict[str, list[res.ResourcePermissions]] = {}
        if parent_perms is not ALL_PERMISSIONS:
            # A child's permissions: its parent's, plus what shares of the child itself add.
            for node_id, grant in self.shares.grants_by_node(user.opaque_id, node_ids):
                own_grants.setdefault(node_id, []).append(grant)
        owner = self.owner_of(parent)
        parent_id = self.ns.resource_id(parent, self.ns.ensure_id(parent))
        return [
            self._build_info(
                child, st, node_id, records[child.rel][1], keys=keys,
                perms=_merged([parent_perms, *own_grants[node_id]])
                if node_id in own_grants else parent_perms,
                metadata=metadata.get(node_id, {}), lock=locks.get(node_id), owner=owner,
                parent_id=parent_id,
            )
            for (child, st), node_id in zip(entries, node_ids, strict=True)
        ]

    def _build_info(
        self, node: Node, st: os.stat_result, node_id: str, gen: str, *, keys: list[str],
        perms: res.ResourcePermissions, metadata: dict[str, str], lock: StoredLock | None,
        owner: user_res.UserId, parent_id: res.ResourceId | None,
    ) -> res.ResourceInfo:
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        info = res.ResourceInfo(
            type=res.RESOURCE_TYPE_CONTAINER if is_dir else res.RESOURCE_TYPE_FILE,
            id=self.ns.resource_id(node, node_id),
            etag=_etag(node_id, gen, st),
            mime_type=FOLDER_MIME if is_dir else _mime(node.name),
            mtime=types_pb2.Timestamp(
                seconds=st.st_mtime_ns // 10**9, nanos=st.st_mtime_ns % 10**9
            ),
            path=node.path,
            name=node.name,
            size=0 if is_dir else st.st_size,
            owner=owner,
            permission_set=perms,
        )
        if parent_id is not None:
            info.parent_id.CopyFrom(parent_id)
        for key, value in metadata.items():
            info.arbitrary_metadata.metadata[key] = value
        lock = _shown(lock, perms)
        if lock is not None:
            info.lock.CopyFrom(lock.to_proto())
        if not keys or "*" in keys or "lockdiscovery" in keys:
            entry = self.rules.lock_opaque(lock)
            if entry is not None:
                info.opaque.map["lock"].CopyFrom(entry)
        return info

    def etag(self, node_id: str, st: os.stat_result) -> str:
        """Return the quoted etag of a node: it changes on every write."""
        return _etag(node_id, self.ns.gen_of(node_id), st)

    def owner_of(self, node: Node) -> user_res.UserId:
        """Return the ``UserId`` owning the home that holds ``node``."""
        rec = self.users.by_username(node.home_user)
        if rec is not None:
            return rec.user_id()
        return user_res.UserId(
            idp=self._idp, opaque_id=default_opaque_id(node.home_user),
            type=user_res.USER_TYPE_PRIMARY,
        )

    def get_path(self, user: UserRecord, rid: res.ResourceId) -> str:
        """GetPath: the absolute path of a resource id."""
        node = self.ns.resolve_id(rid)
        self.require(user, node, "get_path")
        return node.path

    async def quota(self, user: UserRecord, node: Node) -> tuple[int, int]:
        """GetQuota: (total, used) bytes; total is the free disk plus what the home uses.

        ``used`` is at most :data:`QUOTA_MAX_AGE` seconds old (:class:`HomeUsage`).
        """
        self.require(user, node, "get_quota")
        home = self.ns.node("/".join(node.parts[:2]))
        used = await self.usage.used(home)
        free = shutil.disk_usage(self.ns.files_root).free
        return free + used, used

    # ---- namespace changes ------------------------------------------------------------

    def create_container(self, user: UserRecord, node: Node, lock_id: str) -> None:
        """CreateContainer: ALREADY_EXISTS, NOT_FOUND parent; edge checks the parent lock."""
        if node.is_home:
            raise GatewayError(ALREADY_EXISTS, "home already exists")
        parent = self.ns.node(node.parent_rel)
        self.require(user, parent, "create_container")
        if _lstat(node) is not None:
            raise GatewayError(ALREADY_EXISTS, "container already exists")
        parent_st = _existing(parent, "path not found when creating container")
        if not stat_mod.S_ISDIR(parent_st.st_mode):
            raise GatewayError(NOT_FOUND, "path not found when creating container")
        self.rules.check_op(self.locks, self.ns.ensure_id(parent), lock_id, time.time())
        node.disk.mkdir()
        self.ns.new_id(node)

    def touch_file(self, user: UserRecord, node: Node, lock_id: str) -> None:
        """TouchFile: create an empty file; ALREADY_EXISTS if present."""
        if node.is_home:
            raise GatewayError(ALREADY_EXISTS, "home already exists")
        parent = self.ns.node(node.parent_rel)
        self.require(user, parent, "initiate_file_upload")
        if _lstat(node) is not None:
            raise GatewayError(ALREADY_EXISTS, "file already exists")
        parent_st = _existing(parent, "path not found when touching file")
        if not stat_mod.S_ISDIR(parent_st.st_mode):
            raise GatewayError(NOT_FOUND, "path not found when touching file")
        self.rules.check_op(self.locks, None, lock_id, time.time())
        with open(node.disk, "xb"):
            pass
        self.ns.new_id(node)

    async def delete(self, user: UserRecord, node: Node, lock_id: str) -> str:
        """Delete into the recycle bin of the node's space (a container with its content);
        ids, metadata, versions and shares are kept there. Returns the recycle key.

        Raises:
            GatewayError: PERMISSION_DENIED for a home, without the permission, or for the
                grantee of a share deleting its root; NOT_FOUND; the profile's lock codes;
                RESOURCE_EXHAUSTED for a grantee's delete that the owner's bin has no room
                for.
        """
        if node.is_home:
            raise GatewayError(PERMISSION_DENIED, "cannot delete a home")
        self.require(user, node, "delete")
        _existing(node, "path not found when deleting")
        owner = node.home_user == user.username
        if not owner and not self.inside_share(user, node, "delete"):
            raise GatewayError(
                PERMISSION_DENIED, "the root of a share cannot be deleted by its grantee"
            )
        self.rules.check_op(self.locks, self.ns.ensure_id(node), lock_id, time.time())
        size = await anyio.to_thread.run_sync(_size, node.disk)
        async with self._commit_lock:  # no upload replaces the node while it is moved away
            st = _existing(node, "path not found when deleting")
            if not owner:
                self.recycle.check_room(node.home_user, size)
            key = self.recycle.trash(node, st, size=size, deleted_by=user.opaque_id)
        await self.recycle.expire(time.time())
        if owner:
            await self.recycle.make_room(node.home_user)
        return key

    def move(self, user: UserRecord, src: Node, dst: Node, lock_id: str) -> None:
        """Move: ids are kept; ALREADY_EXISTS if the destination exists (no overwrite).

        Only within one space; a grantee moves only inside a shared folder, never its root
        (Reva's sharesstorageprovider refuses moving a share's root or between shares).
        """
        if src.is_home or dst.is_home:
            raise GatewayError(PERMISSION_DENIED, "cannot move a home")
        self.require(user, src, "move")
        dst_parent = self.ns.node(dst.parent_rel)
        self.require(user, dst_parent, "move")
        _existing(src, "path not found when moving")
        if src.home_user != dst.home_user:
            raise GatewayError(PERMISSION_DENIED, "cannot move across spaces")
        if src.home_user != user.username and not self.inside_share(user, src, "move", dst=dst):
            raise GatewayError(
                PERMISSION_DENIED, "cannot move the root of a share, nor out of a share"
            )
        if src.rel == dst.rel:
            return
        if dst.rel.startswith(src.rel + "/"):
            raise GatewayError(INVALID_ARGUMENT, "cannot move a container into itself")
        parent_st = _existing(dst_parent, "destination parent not found")
        if not stat_mod.S_ISDIR(parent_st.st_mode):
            raise GatewayError(NOT_FOUND, "destination parent not found")
        if _lstat(dst) is not None:
            raise GatewayError(ALREADY_EXISTS, "destination already exists")
        # Edge checks the source's lock only (decomposedfs Move).
        self.rules.check_op(self.locks, self.ns.ensure_id(src), lock_id, time.time())
        os.rename(src.disk, dst.disk)
        self.ns.rename(src, dst)

    def set_metadata(
        self, user: UserRecord, node: Node, metadata: dict[str, str], lock_id: str
    ) -> None:
        """SetArbitraryMetadata: empty or reserved keys and empty values are refused."""
        for key, value in metadata.items():
            _check_key(key)
            if not value or len(value) > _MAX_VALUE:
                raise GatewayError(INVALID_ARGUMENT, f"bad value for metadata key {key!r}")
        self.require(user, node, "initiate_file_upload")
        _existing(node, "path not found when setting metadata")
        node_id = self.ns.ensure_id(node)
        self.rules.check_op(self.locks, node_id, lock_id, time.time())
        with self._db.transaction():
            for key, value in metadata.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO xattrs (node_id, key, value) VALUES (?, ?, ?)",
                    (node_id, key, value),
                )

    def unset_metadata(
        self, user: UserRecord, node: Node, keys: list[str], lock_id: str
    ) -> None:
        """UnsetArbitraryMetadata: absent keys are ignored."""
        for key in keys:
            _check_key(key)
        self.require(user, node, "initiate_file_upload")
        _existing(node, "path not found when unsetting metadata")
        node_id = self.ns.ensure_id(node)
        self.rules.check_op(self.locks, node_id, lock_id, time.time())
        with self._db.transaction():
            for key in keys:
                self._db.execute(
                    "DELETE FROM xattrs WHERE node_id = ? AND key = ?", (node_id, key)
                )

    # ---- locks ---------------------------------------------------------------------------

    def lock_target(
        self, user: UserRecord, node: Node, perm: str
    ) -> tuple[str, res.ResourcePermissions]:
        """Check access for a lock call; return the id of the node and the user's rights.

        Raises:
            GatewayError: PERMISSION_DENIED without ``perm``; NOT_FOUND.
        """
        perms = self.require(user, node, perm)
        self._existing(node, "path not found")
        return self.ns.ensure_id(node), perms

    def set_lock(self, user: UserRecord, node: Node, lock: res.Lock) -> None:
        """SetLock (needs write permission); the expiry is capped (``MAX_LOCK_EXPIRY``)."""
        node_id, _ = self.lock_target(user, node, "initiate_file_upload")
        self.rules.set_lock(self.locks, node_id, lock, _caller(user, node), time.time())

    def get_lock(self, user: UserRecord, node: Node) -> StoredLock:
        """GetLock (needs read permission); without write permission the lock's id is
        :data:`HIDDEN_LOCK_ID`."""
        node_id, perms = self.lock_target(user, node, "stat")
        lock = self.rules.get_lock(self.locks, node_id, time.time())
        shown = _shown(lock, perms)
        assert shown is not None
        return shown

    def refresh_lock(
        self, user: UserRecord, node: Node, lock: res.Lock, existing_lock_id: str
    ) -> None:
        """RefreshLock (needs write permission): the lock's user only."""
        node_id, _ = self.lock_target(user, node, "initiate_file_upload")
        self.rules.refresh_lock(
            self.locks, node_id, lock, existing_lock_id, _caller(user, node), time.time()
        )

    def unlock(self, user: UserRecord, node: Node, lock: res.Lock) -> None:
        """Unlock (needs write permission): the lock's user, or the file's owner."""
        node_id, _ = self.lock_target(user, node, "initiate_file_upload")
        self.rules.unlock(self.locks, node_id, lock, _caller(user, node), time.time())

    # ---- helpers --------------------------------------------------------------------------

    def _existing(self, node: Node, message: str) -> os.stat_result:
        """The ``lstat`` of an existing node, taken without following a link on the way.

        Raises:
            GatewayError: NOT_FOUND (``message``); PERMISSION_DENIED through a link.
        """
        st = self.ns.lstat(node)
        if st is None:
            raise GatewayError(NOT_FOUND, message)
        return st

    def _metadata(self, node_id: str, keys: list[str]) -> dict[str, str]:
        return self._metadata_of([node_id], keys).get(node_id, {})

    def _metadata_of(self, node_ids: list[str], keys: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        every = not keys or "*" in keys
        for first in range(0, len(node_ids), _QUERY_BATCH):
            chunk = node_ids[first:first + _QUERY_BATCH]
            marks = ",".join("?" * len(chunk))
            rows = self._db.all(
                f"SELECT node_id, key, value FROM xattrs WHERE node_id IN ({marks})", chunk
            )
            for row in rows:
                key = str(row["key"])
                if every or key in keys:
                    found.setdefault(str(row["node_id"]), {})[key] = str(row["value"])
        return found


def _caller(user: UserRecord, node: Node) -> Caller:
    return Caller(opaque_id=user.opaque_id, idp=user.idp,
                  owns_file=node.home_user == user.username)


def _shown(lock: StoredLock | None, perms: res.ResourcePermissions) -> StoredLock | None:
    """The lock as a user with ``perms`` may see it: without write permission, its id is
    hidden (the rest says who holds it and until when)."""
    if lock is None or perms.initiate_file_upload:
        return lock
    return replace(lock, lock_id=HIDDEN_LOCK_ID)


def _merged(grants: list[res.ResourcePermissions]) -> res.ResourcePermissions:
    merged = res.ResourcePermissions()
    for grant in grants:
        for field in res.ResourcePermissions.DESCRIPTOR.fields:
            if getattr(grant, field.name):
                setattr(merged, field.name, True)
    return merged


def _etag(node_id: str, gen: str, st: os.stat_result) -> str:
    seed = f"{node_id}:{gen}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
    return '"' + hashlib.md5(seed.encode(), usedforsecurity=False).hexdigest() + '"'


def _check_key(key: str) -> None:
    if not key or len(key) > _MAX_KEY or "\x00" in key:
        raise GatewayError(INVALID_ARGUMENT, "empty or malformed metadata key")
    if key in RESERVED_KEYS:
        raise GatewayError(INVALID_ARGUMENT, f"metadata key {key!r} is reserved")


def _mime(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def _size(path: Path) -> int:
    try:
        return tree_size(path)
    except OSError:  # gone meanwhile: the caller's own checks answer for it
        return 0

