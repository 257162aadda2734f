"""Files, versions and the recycle bin: metadata RPCs plus content transfers through the
data gateway.

A write is ``InitiateFileUpload`` then an HTTP ``PUT`` to the returned endpoint; a read is
``InitiateFileDownload`` then ``GET`` (spec §1.5). When the caller holds a lock, the lock id
travels three ways, because the two Reva lineages read it in different places (spec §2.4.5):
in ``InitiateFileUploadRequest.lock_id`` (edge), as ``X-Lock-Id`` on the PUT (the cs3apis
data-path rule), and the holder as ``X-Lock-Holder`` (master/EOS enforces the app name).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as sr
from cs3.types.v1beta1 import types_pb2

from mesh_collab import errors
from mesh_collab.cs3.models import (
    FileInfo,
    Lock,
    RecycleItem,
    Ref,
    Version,
    describe,
    reference,
)

if TYPE_CHECKING:
    from mesh_collab.cs3.client import Session

log = logging.getLogger(__name__)

#: Transfer protocols we can speak, in order of preference (cs3client picks the same).
_PROTOCOLS = ("simple", "spaces")


def _plain(**entries: str) -> types_pb2.Opaque:
    entry = types_pb2.OpaqueEntry
    return types_pb2.Opaque(
        map={k: entry(decoder="plain", value=v.encode()) for k, v in entries.items()}
    )


class Files:
    """File operations of one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def stat(self, ref: Ref) -> FileInfo:
        """Return what the storage knows of ``ref``.

        Raises:
            NotFound: no such resource.
            PermissionDenied: the user may not see it.
        """
        res = await self._session.call(
            "Stat", sp.StatRequest(ref=reference(ref)), ref=describe(ref)
        )
        return FileInfo.from_proto(res.info)

    async def list(self, ref: Ref) -> list[FileInfo]:
        """List a container, following page tokens.

        Raises:
            NotFound: no such container.
        """
        infos: list[FileInfo] = []
        token = ""
        while True:
            req = sp.ListContainerRequest(ref=reference(ref), page_token=token)
            res = await self._session.call("ListContainer", req, ref=describe(ref))
            infos.extend(FileInfo.from_proto(i) for i in res.infos)
            token = res.next_page_token
            if not token:
                return infos

    async def mkdir(self, ref: Ref) -> None:
        """Create a container.

        Raises:
            AlreadyExists: it exists.
            NotFound: its parent does not exist.
        """
        req = sp.CreateContainerRequest(ref=reference(ref))
        await self._session.call("CreateContainer", req, ref=describe(ref))

    async def delete(self, ref: Ref, *, lock_id: str = "") -> None:
        """Delete a file or a container with its content.

        The storage keeps it in the recycle bin of the space it was in (the owner's, also
        when a grantee deletes inside a shared folder): see :meth:`list_recycle`.

        Raises:
            PermissionDenied: not allowed, e.g. the grantee of a share deleting its root.
            NotFound: no such resource.
            LockConflict: locked by someone else (edge; master allows it).
        """
        req = sp.DeleteRequest(ref=reference(ref), lock_id=lock_id)
        await self._session.call("Delete", req, ref=describe(ref), lock_id=lock_id)

    async def move(self, source: Ref, destination: Ref, *, lock_id: str = "") -> None:
        """Move or rename; the resource id stays the same.

        Raises:
            NotFound: no such source.
            PermissionDenied: not allowed, e.g. a grantee moving a share's root or moving
                something out of a shared folder.
            LockConflict: the source is locked by someone else (edge).
        """
        req = sp.MoveRequest(
            source=reference(source), destination=reference(destination), lock_id=lock_id
        )
        await self._session.call("Move", req, ref=describe(source), lock_id=lock_id)

    async def set_metadata(self, ref: Ref, metadata: dict[str, str], *, lock_id: str = "") -> None:
        """Set arbitrary metadata (extended attributes) on a resource.

        Raises:
            InvalidArgument: an empty or reserved key or value.
            LockConflict: locked by someone else (edge).
        """
        req = sp.SetArbitraryMetadataRequest(
            ref=reference(ref),
            arbitrary_metadata=sr.ArbitraryMetadata(metadata=metadata),
            lock_id=lock_id,
        )
        await self._session.call("SetArbitraryMetadata", req, ref=describe(ref), lock_id=lock_id)

    async def unset_metadata(self, ref: Ref, keys: list[str], *, lock_id: str = "") -> None:
        """Remove arbitrary metadata keys from a resource.

        Raises:
            LockConflict: locked by someone else (edge).
        """
        req = sp.UnsetArbitraryMetadataRequest(
            ref=reference(ref), arbitrary_metadata_keys=keys, lock_id=lock_id
        )
        await self._session.call(
            "UnsetArbitraryMetadata", req, ref=describe(ref), lock_id=lock_id
        )

    async def read(
        self,
        ref: Ref,
        *,
        version_key: str = "",
        start: int = 0,
        end: int | None = None,
    ) -> bytes:
        """Download the content of a file, or of one of its versions, or a byte range of it.

        Args:
            version_key: read this version instead of the current content.
            start: first byte to read (0 or more).
            end: byte after the last one to read; None reads to the end of the file. A range
                travels as an HTTP ``Range`` request (Reva's data gateway answers 206); a range
                past the end of the file gives what is left of it, possibly nothing.

        Raises:
            NotFound: no such file or version.
            PermissionDenied: the user may not read it.
            ValueError: a negative ``start``, or ``end`` before ``start``.
        """
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range start={start!r} end={end!r}")
        if end is not None and end == start:
            return b""
        req = sp.InitiateFileDownloadRequest(ref=reference(ref))
        if version_key:
            # Reva master copies the opaque version_key into the transfer token.
            req.opaque.CopyFrom(_plain(version_key=version_key))
        res = await self._session.call("InitiateFileDownload", req, ref=describe(ref))
        endpoint, transfer_token = _pick(res.protocols, "download_endpoint", ref)
        headers = {}
        if start or end is not None:
            last = "" if end is None else str(end - 1)  # HTTP ranges include their last byte
            headers["Range"] = f"bytes={start}-{last}"
        response = await self._session.client.transfer(
            "GET",
            endpoint,
            transfer_token=transfer_token,
            token=await self._session.tokens.token(),
            headers=headers,
            ref=describe(ref),
            accept=(416,) if headers else (),
        )
        if response.status_code == 416:  # the range starts at or past the end of the file
            return b""
        if headers and response.status_code == 200:
            # A data server that ignores Range sends the whole file: cut the range out.
            return response.content[start:end]
        return response.content

    async def write(
        self,
        ref: Ref,
        content: bytes,
        *,
        lock: Lock | None = None,
        if_match: str = "",
        disable_versioning: bool = False,
    ) -> FileInfo:
        """Upload ``content`` as the new content of a file (created if missing).

        Args:
            lock: the lock the caller holds on the file; its id and app name are sent.
                Pass None when holding no lock: edge refuses a lock id on an unlocked file.
            if_match: only write when the file still has this (quoted) etag. Reva master
                ignores ``if_match``, so the etag is also compared after a Stat here; the
                lock is what makes that check safe (spec §2.4.6).
            disable_versioning: ask the storage not to keep the replaced content. The
                embedded gateway honours it for the file's owner only; a grantee's write
                keeps a version all the same.

        Returns:
            The file's metadata after the write (its new etag).

        Raises:
            LockConflict: someone else holds the lock, or ours was lost.
            Conflict: the etag no longer matches ``if_match``.
            QuotaExceeded: the content is over the storage's size limit.
        """
        name = describe(ref)
        lock_id = lock.lock_id if lock else ""
        if if_match:
            current = await self.stat(ref)
            if current.etag != if_match:
                raise errors.Conflict(
                    "etag mismatch", op="InitiateFileUpload", ref=name, code="etag"
                )
        req = sp.InitiateFileUploadRequest(
            ref=reference(ref), opaque=_plain(**{"Upload-Length": str(len(content))}),
            lock_id=lock_id,
        )
        if if_match:
            req.if_match = if_match
        res = await self._session.call("InitiateFileUpload", req, ref=name, lock_id=lock_id)
        endpoint, transfer_token = _pick(res.protocols, "upload_endpoint", ref)
        headers = {"Upload-Length": str(len(content))}
        if lock is not None:
            headers["X-Lock-Id"] = lock.lock_id
            if lock.app_name:
                headers["X-Lock-Holder"] = lock.app_name
        if disable_versioning:
            headers["X-Disable-Versioning"] = "true"
        response = await self._session.client.transfer(
            "PUT",
            endpoint,
            transfer_token=transfer_token,
            token=await self._session.tokens.token(),
            headers=headers,
            content=content,
            ref=name,
            lock_id=lock_id,
        )
        info = await self.stat(ref)
        uploaded = response.headers.get("OC-ETag") or response.headers.get("ETag") or ""
        if uploaded and _bare_etag(uploaded) != _bare_etag(info.etag):
            # Someone wrote the file between our upload and this Stat: report the etag of
            # *our* upload, so that a caller comparing etags sees the later write as a change
            # instead of taking it for its own.
            info = dataclasses.replace(info, etag=uploaded)
        return info


    # ---- recycle bin ----------------------------------------------------------------------

    async def list_recycle(self, space: Ref, *, key: str = "") -> list[RecycleItem]:
        """List the recycle bin of a space, following page tokens.

        Args:
            space: the space (a home path such as ``/home/einstein``, or any resource in
                it): only its owner may list its bin.
            key: list only this item.

        Raises:
            PermissionDenied: the caller does not own the space.
        """
        items: list[RecycleItem] = []
        token = ""
        while True:
            req = sp.ListRecycleRequest(ref=reference(space), key=key, page_token=token)
            res = await self._session.call("ListRecycle", req, ref=describe(space))
            items.extend(RecycleItem.from_proto(i) for i in res.recycle_items)
            token = res.next_page_token
            if not token:
                return items

    async def restore_recycle_item(
        self, space: Ref, key: str, *, to: Ref | None = None, lock_id: str = ""
    ) -> None:
        """Restore item ``key`` of a space's bin, with its resource ids and versions.

        Args:
            space: the space whose bin holds the item.
            key: the item's key (:attr:`RecycleItem.key`).
            to: where to restore it; None for where it was deleted from.

        Raises:
            NotFound: no such item, or the target's parent does not exist.
            AlreadyExists: the target is taken.
            PermissionDenied: the caller does not own the space, or ``to`` is elsewhere.
        """
        req = sp.RestoreRecycleItemRequest(ref=reference(space), key=key, lock_id=lock_id)
        if to is not None:
            req.restore_ref.CopyFrom(reference(to))
        await self._session.call(
            "RestoreRecycleItem", req, ref=f"{describe(space)}#{key}", lock_id=lock_id
        )

    async def purge_recycle(self, space: Ref, key: str) -> None:
        """Remove item ``key`` from a space's bin for good (its versions with it).

        Raises:
            NotFound: no such item.
            PermissionDenied: the caller does not own the space.
            ValueError: an empty key (use :meth:`empty_recycle` to purge everything).
        """
        if not key:
            raise ValueError("purge_recycle needs a key: empty_recycle purges the whole bin")
        req = sp.PurgeRecycleRequest(ref=reference(space), key=key)
        await self._session.call("PurgeRecycle", req, ref=f"{describe(space)}#{key}")

    async def empty_recycle(self, space: Ref) -> None:
        """Remove every item of a space's bin for good (an empty key, as Reva reads it).

        Raises:
            PermissionDenied: the caller does not own the space.
        """
        req = sp.PurgeRecycleRequest(ref=reference(space))
        await self._session.call("PurgeRecycle", req, ref=describe(space))


def _bare_etag(etag: str) -> str:
    """An etag without the weak marker and quotes (servers differ in how they send it)."""
    return etag.removeprefix("W/").strip('"')


def _pick(protocols: object, field: str, ref: Ref) -> tuple[str, str]:
    """Return (endpoint, transfer token) of the first protocol we speak."""
    for proto in protocols:  # type: ignore[attr-defined]
        if proto.protocol in _PROTOCOLS:
            return getattr(proto, field), proto.token
    raise errors.Unimplemented(
        "no simple or spaces transfer protocol offered", op="transfer", ref=describe(ref)
    )


class Versions:
    """The version history of files: every overwrite keeps the replaced content."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def list(self, ref: Ref) -> list[Version]:
        """Return the versions of a file, newest first.

        Raises:
            NotFound: no such file.
        """
        versions: list[Version] = []
        token = ""
        while True:
            req = sp.ListFileVersionsRequest(ref=reference(ref), page_token=token)
            res = await self._session.call("ListFileVersions", req, ref=describe(ref))
            versions.extend(Version.from_proto(v) for v in res.versions)
            token = res.next_page_token
            if not token:
                break
        versions.sort(key=lambda v: v.mtime, reverse=True)
        return versions

    async def read(self, ref: Ref, key: str) -> bytes:
        """Download the content of version ``key``.

        Raises:
            NotFound: no such file or version.
        """
        return await self._session.files.read(ref, version_key=key)

    async def restore(self, ref: Ref, key: str, *, lock_id: str = "") -> None:
        """Make version ``key`` the current content (the replaced content becomes a version).

        Raises:
            NotFound: no such file or version.
            LockConflict: locked by someone else (edge).
        """
        req = sp.RestoreFileVersionRequest(ref=reference(ref), key=key, lock_id=lock_id)
        await self._session.call("RestoreFileVersion", req, ref=describe(ref), lock_id=lock_id)
