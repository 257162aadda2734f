"""The storage provider of the embedded gateway: files, metadata, locks and versions.

Every method takes the authenticated :class:`~mesh_collab.cs3.gateway.users.UserRecord`
and a resolved :class:`~mesh_collab.cs3.gateway.namespace.Node`, checks permissions, the
lock profile's rules and existence, in Reva's order, and raises
:class:`~mesh_collab.cs3.gateway.status.GatewayError` to refuse. Metadata calls are short
and run on the event loop; file content is moved on worker threads.

Access: a user owns their home (all permissions); elsewhere they hold the union of the
permissions of the shares granted to them on the node or any container above it.
Anything else is PERMISSION_DENIED, also for id-based references.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import shutil
import stat as stat_mod
import time
from pathlib import Path

import anyio
import anyio.to_thread
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2

from .content import ContentOps, _existing, _lstat
from .db import MetaDB
from .locks import Caller, LockRules, LockTable, StoredLock
from .namespace import Namespace, Node
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
from .versions import VersionStore, remove_trees

FOLDER_MIME = "httpd/unix-directory"
# Keys EOS refuses in SetArbitraryMetadata (master eosfs: reserved lock attributes).
RESERVED_KEYS = frozenset({"reva.lockpayload", "app.lock", "sys.reva.lockpayload", "sys.app.lock"})
_MAX_KEY = 255
_MAX_VALUE = 64 * 1024
ALL_PERMISSIONS = res.ResourcePermissions(
    **{f.name: True for f in res.ResourcePermissions.DESCRIPTOR.fields}
)
mimetypes.add_type("application/x-ipynb+json", ".ipynb")


class Storage(ContentOps):
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
    """

    def __init__(
        self, *, root: Path, db: MetaDB, namespace: Namespace, rules: LockRules,
        users: UserDirectory, shares: ShareStore, idp: str, log: logging.Logger,
    ) -> None:
        self.ns = namespace
        self.rules = rules
        self.locks = LockTable(db)
        self.versions = VersionStore(root / "versions", db)
        self.shares = shares
        self.users = users
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
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
        merged = res.ResourcePermissions()
        for grant in grants:
            for field in res.ResourcePermissions.DESCRIPTOR.fields:
                if getattr(grant, field.name):
                    setattr(merged, field.name, True)
        return merged

    def require(self, user: UserRecord, node: Node, perm: str) -> res.ResourcePermissions:
        """Return the user's permissions on ``node`` if they include ``perm``.

        Raises:
            GatewayError: PERMISSION_DENIED otherwise.
        """
        perms = self.permissions(user, node)
        if perms is None or not getattr(perms, perm):
            raise GatewayError(PERMISSION_DENIED, f"permission denied: {perm}")
        return perms

    # ---- reading ------------------------------------------------------------------------

    def stat(self, user: UserRecord, node: Node, keys: list[str]) -> res.ResourceInfo:
        """Stat (spec §1.4): NOT_FOUND if missing."""
        perms = self.require(user, node, "stat")
        st = _existing(node, "path not found when statting")
        return self.info(node, st, keys, perms)

    def list_container(
        self, user: UserRecord, node: Node, keys: list[str]
    ) -> list[res.ResourceInfo]:
        """ListContainer: children sorted by name; symlinks and unreachable names skipped."""
        perms = self.require(user, node, "list_container")
        st = _existing(node, "path not found when listing container")
        if not stat_mod.S_ISDIR(st.st_mode):
            raise GatewayError(FAILED_PRECONDITION, "not a container")
        infos = []
        for name in sorted(os.listdir(node.disk)):
            try:
                child = self.ns.child(node, name)
            except GatewayError:
                continue  # a symlink, or a name no reference could address
            child_st = _lstat(child)
            if child_st is None or not (
                stat_mod.S_ISDIR(child_st.st_mode) or stat_mod.S_ISREG(child_st.st_mode)
            ):
                continue
            infos.append(self.info(child, child_st, keys, self._child_perms(user, child, perms)))
        return infos

    def info(
        self, node: Node, st: os.stat_result, keys: list[str], perms: res.ResourcePermissions
    ) -> res.ResourceInfo:
        """Build the ``ResourceInfo`` of an existing node."""
        node_id = self.ns.ensure_id(node)
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        info = res.ResourceInfo(
            type=res.RESOURCE_TYPE_CONTAINER if is_dir else res.RESOURCE_TYPE_FILE,
            id=self.ns.resource_id(node, node_id),
            etag=self.etag(node_id, st),
            mime_type=FOLDER_MIME if is_dir else _mime(node.name),
            mtime=types_pb2.Timestamp(
                seconds=st.st_mtime_ns // 10**9, nanos=st.st_mtime_ns % 10**9
            ),
            path=node.path,
            name=node.name,
            size=0 if is_dir else st.st_size,
            owner=self.owner_of(node),
            permission_set=perms,
        )
        if not node.is_home:
            parent = self.ns.node(node.parent_rel)
            info.parent_id.CopyFrom(self.ns.resource_id(parent, self.ns.ensure_id(parent)))
        for key, value in self._metadata(node_id, keys).items():
            info.arbitrary_metadata.metadata[key] = value
        lock = self.rules.stat_lock(self.locks, node_id, time.time())
        if lock is not None:
            info.lock.CopyFrom(lock.to_proto())
        if not keys or "*" in keys or "lockdiscovery" in keys:
            entry = self.rules.lock_opaque(lock)
            if entry is not None:
                info.opaque.map["lock"].CopyFrom(entry)
        return info

    def etag(self, node_id: str, st: os.stat_result) -> str:
        """Return the quoted etag of a node: it changes on every write."""
        seed = f"{node_id}:{self.ns.gen_of(node_id)}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        return '"' + hashlib.md5(seed.encode(), usedforsecurity=False).hexdigest() + '"'

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
        """GetQuota: (total, used) bytes; total is the free disk plus what the home uses."""
        self.require(user, node, "get_quota")
        home = self.ns.node("/".join(node.parts[:2]))
        used = await anyio.to_thread.run_sync(_tree_size, home.disk)
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

    async def delete(self, user: UserRecord, node: Node, lock_id: str) -> None:
        """Delete: recursive for containers; forgets ids, locks, versions and shares."""
        if node.is_home:
            raise GatewayError(PERMISSION_DENIED, "cannot delete a home")
        self.require(user, node, "delete")
        st = _existing(node, "path not found when deleting")
        self.rules.check_op(self.locks, self.ns.ensure_id(node), lock_id, time.time())
        if stat_mod.S_ISDIR(st.st_mode):
            await anyio.to_thread.run_sync(shutil.rmtree, node.disk)
        else:
            node.disk.unlink()
        with self._db.transaction():
            ids = self.ns.forget(node)
            self.shares.drop_for_nodes(ids)
            trees = self.versions.drop(ids)
        await anyio.to_thread.run_sync(remove_trees, trees)

    def move(self, user: UserRecord, src: Node, dst: Node, lock_id: str) -> None:
        """Move: ids are kept; ALREADY_EXISTS if the destination exists (no overwrite)."""
        if src.is_home or dst.is_home:
            raise GatewayError(PERMISSION_DENIED, "cannot move a home")
        self.require(user, src, "move")
        dst_parent = self.ns.node(dst.parent_rel)
        self.require(user, dst_parent, "move")
        _existing(src, "path not found when moving")
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

    def lock_target(self, user: UserRecord, node: Node, perm: str) -> str:
        """Check access for a lock call and return the id of the (file) node."""
        self.require(user, node, perm)
        _existing(node, "path not found")
        return self.ns.ensure_id(node)

    def set_lock(self, user: UserRecord, node: Node, lock: res.Lock) -> None:
        """SetLock (needs write permission)."""
        node_id = self.lock_target(user, node, "initiate_file_upload")
        self.rules.set_lock(self.locks, node_id, lock, _caller(user), time.time())

    def get_lock(self, user: UserRecord, node: Node) -> StoredLock:
        """GetLock (needs read permission)."""
        node_id = self.lock_target(user, node, "stat")
        return self.rules.get_lock(self.locks, node_id, time.time())

    def refresh_lock(
        self, user: UserRecord, node: Node, lock: res.Lock, existing_lock_id: str
    ) -> None:
        """RefreshLock (needs write permission)."""
        node_id = self.lock_target(user, node, "initiate_file_upload")
        self.rules.refresh_lock(
            self.locks, node_id, lock, existing_lock_id, _caller(user), time.time()
        )

    def unlock(self, user: UserRecord, node: Node, lock: res.Lock) -> None:
        """Unlock (needs write permission)."""
        node_id = self.lock_target(user, node, "initiate_file_upload")
        self.rules.unlock(self.locks, node_id, lock, _caller(user), time.time())

    # ---- helpers --------------------------------------------------------------------------

    def _child_perms(
        self, user: UserRecord, child: Node, parent_perms: res.ResourcePermissions
    ) -> res.ResourcePermissions:
        if parent_perms is ALL_PERMISSIONS:
            return parent_perms
        return self.permissions(user, child) or parent_perms

    def _metadata(self, node_id: str, keys: list[str]) -> dict[str, str]:
        rows = self._db.all("SELECT key, value FROM xattrs WHERE node_id = ?", (node_id,))
        found = {str(r["key"]): str(r["value"]) for r in rows}
        if not keys or "*" in keys:
            return found
        return {k: v for k, v in found.items() if k in keys}


def _caller(user: UserRecord) -> Caller:
    return Caller(opaque_id=user.opaque_id, idp=user.idp)


def _check_key(key: str) -> None:
    if not key or len(key) > _MAX_KEY or "\x00" in key:
        raise GatewayError(INVALID_ARGUMENT, "empty or malformed metadata key")
    if key in RESERVED_KEYS:
        raise GatewayError(INVALID_ARGUMENT, f"metadata key {key!r} is reserved")


def _mime(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total

