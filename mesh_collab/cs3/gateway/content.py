"""Uploads, downloads and versions: the content half of :class:`~.storage.Storage`.

Writes are atomic: the body goes to a temp file in ``<root>/tmp`` (same filesystem), then
replaces the target with ``os.replace``; the node id stays the same. The replaced content
becomes a version unless versioning is disabled for that write.
"""

from __future__ import annotations

import os
import shutil
import stat as stat_mod
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from cs3.storage.provider.v1beta1 import resources_pb2 as res

from .locks import LockRules, LockTable
from .namespace import Namespace, Node
from .status import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    GatewayError,
)
from .users import UserRecord
from .versions import Version, VersionStore, preserve


@dataclass(frozen=True, slots=True)
class Conditions:
    """The options of a conditional upload (``InitiateFileUploadRequest.options``)."""

    if_not_exist: bool = False
    if_match: str = ""
    if_unmodified_since: float | None = None


class ContentOps:
    """Content operations; mixed into :class:`~mesh_collab.cs3.gateway.storage.Storage`."""

    ns: Namespace
    rules: LockRules
    locks: LockTable
    versions: VersionStore
    tmp: Path
    _commit_lock: anyio.Lock

    def require(self, user: UserRecord, node: Node, perm: str) -> res.ResourcePermissions:
        raise NotImplementedError

    def etag(self, node_id: str, st: os.stat_result) -> str:
        raise NotImplementedError

    def upload_target(
        self, user: UserRecord, node: Node
    ) -> tuple[str | None, os.stat_result | None]:
        """Check an upload to ``node``: returns (id, stat) of the existing file or (None, None).

        Raises:
            GatewayError: PERMISSION_DENIED, NOT_FOUND (parent), INVALID_ARGUMENT (container).
        """
        if node.is_home:
            raise GatewayError(INVALID_ARGUMENT, "cannot upload over a container")
        st = _lstat(node)
        self.require(user, node if st is not None else self.ns.node(node.parent_rel),
                     "initiate_file_upload")
        if st is None:
            parent_st = _lstat(self.ns.node(node.parent_rel))
            if parent_st is None or not stat_mod.S_ISDIR(parent_st.st_mode):
                raise GatewayError(NOT_FOUND, "parent container not found")
            return None, None
        if stat_mod.S_ISDIR(st.st_mode):
            raise GatewayError(INVALID_ARGUMENT, "cannot upload over a container")
        return self.ns.ensure_id(node), st

    def check_conditions(
        self, node_id: str | None, st: os.stat_result | None, cond: Conditions,
        *, http: int | None = None,
    ) -> None:
        """Conditional upload checks (edge semantics; honoured in both profiles).

        Raises:
            GatewayError: ALREADY_EXISTS (if_not_exist), FAILED_PRECONDITION (if_match,
                if_unmodified_since), with ``http`` set for the data path.
        """
        if cond.if_not_exist and st is not None:
            raise GatewayError(ALREADY_EXISTS, "file already exists", http=http)
        if cond.if_match and (
            node_id is None or st is None or self.etag(node_id, st) != cond.if_match
        ):
            raise GatewayError(FAILED_PRECONDITION, "etag mismatch", http=http)
        if cond.if_unmodified_since is not None and st is not None and (
            st.st_mtime > cond.if_unmodified_since
        ):
            raise GatewayError(FAILED_PRECONDITION, "resource has been modified", http=http)

    async def new_temp(self) -> Path:
        """Create an empty temp file next to the files (same filesystem, atomic rename)."""
        fd, name = await anyio.to_thread.run_sync(
            lambda: tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        )
        os.close(fd)
        return Path(name)

    async def commit(
        self, node: Node, tmp: Path, *, uploader: str, lock_id: str | None, holder: str,
        versioning: bool, conditions: Conditions | None = None, webdav: bool = False,
    ) -> str:
        """Atomically replace (or create) ``node`` with the content of ``tmp``.

        The replaced content becomes a version unless ``versioning`` is False. ``lock_id``
        None skips the lock check (restores). Returns the node id (kept on overwrite).

        Raises:
            GatewayError: with ``http`` set: 404 (parent gone), 409/412/423 (lock), 412
                (conditions).
        """
        async with self._commit_lock:
            st = _lstat(node)
            if st is None:
                parent_st = _lstat(self.ns.node(node.parent_rel))
                if parent_st is None or not stat_mod.S_ISDIR(parent_st.st_mode):
                    raise GatewayError(NOT_FOUND, "parent container not found", http=404)
            elif stat_mod.S_ISDIR(st.st_mode):
                raise GatewayError(INVALID_ARGUMENT, "cannot upload over a container", http=409)
            node_id = self.ns.ensure_id(node) if st is not None else None
            if conditions:
                self.check_conditions(node_id, st, conditions, http=412)
            if lock_id is not None:
                refusal = self.rules.check_put(
                    self.locks, node_id, lock_id=lock_id, holder=holder, uploader=uploader,
                    now=time.time(), webdav=webdav,
                )
                if refusal is not None:
                    raise GatewayError(FAILED_PRECONDITION, "lock mismatch", http=refusal)
            if node_id is not None and st is not None and versioning:
                key, dst = self.versions.new_key(node_id)
                await anyio.to_thread.run_sync(preserve, node.disk, dst)
                self.versions.record(
                    node_id, key, size=st.st_size, mtime=int(st.st_mtime),
                    etag=self.etag(node_id, st),
                )
            await anyio.to_thread.run_sync(os.replace, tmp, node.disk)
            if node_id is None:
                return self.ns.new_id(node)
            self.ns.bump(node_id)
            return node_id

    def download_target(self, user: UserRecord, node: Node, version_key: str) -> str:
        """Check a download of ``node`` (or of one of its versions); return the node id."""
        self.require(user, node, "initiate_file_download")
        st = _existing(node, "path not found when downloading")
        if stat_mod.S_ISDIR(st.st_mode):
            raise GatewayError(INVALID_ARGUMENT, "cannot download a container")
        node_id = self.ns.ensure_id(node)
        if version_key and self.versions.get(node_id, version_key) is None:
            raise GatewayError(NOT_FOUND, "version not found")
        return node_id

    def list_versions(self, user: UserRecord, node: Node) -> list[Version]:
        """ListFileVersions: newest first; empty list when none."""
        self.require(user, node, "list_file_versions")
        st = _existing(node, "path not found when listing versions")
        if stat_mod.S_ISDIR(st.st_mode):
            return []
        return self.versions.list(self.ns.ensure_id(node))

    async def restore_version(
        self, user: UserRecord, node: Node, key: str, lock_id: str
    ) -> None:
        """RestoreFileVersion: the version becomes current, the replaced content a version."""
        self.require(user, node, "restore_file_version")
        _existing(node, "path not found when restoring version")
        node_id = self.ns.ensure_id(node)
        version = self.versions.get(node_id, key)
        if version is None:
            raise GatewayError(NOT_FOUND, "version not found")
        # decomposedfs RestoreRevision runs CheckLock; master ignores the lock id.
        self.rules.check_op(self.locks, node_id, lock_id, time.time())
        tmp = await self.new_temp()
        try:
            await anyio.to_thread.run_sync(shutil.copyfile, version.path, tmp)
            await self.commit(node, tmp, uploader=user.opaque_id, lock_id=None, holder="",
                              versioning=True)
        finally:
            tmp.unlink(missing_ok=True)



def _lstat(node: Node) -> os.stat_result | None:
    try:
        return os.lstat(node.disk)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _existing(node: Node, message: str) -> os.stat_result:
    st = _lstat(node)
    if st is None:
        raise GatewayError(NOT_FOUND, message)
    return st
