"""Documents (notebooks, text files) and their CRDT state in CS3 storage.

A checkpoint writes two things:

* the CRDT state of the document (its *lineage*) in one of two hidden sidecar files beside
  it, named after the file's opaque id (a rename does not lose them):
  ``.~mesh_collab.<opaque_id>.a.ystate`` and ``...b.ystate``, the one the last checkpoint
  did not use. A sidecar starts with a small header that gives the sha256 of the file
  content it is the state of, and the lineage id;
* then the file itself, a valid ``.ipynb`` or the text as typed (so every other tool sees a
  normal file, and CS3 keeps each checkpoint as a version), under our lock and only if the
  etag is still the one we last saw;
* then the file's CS3 arbitrary metadata says what the last checkpoint wrote:

  ============================  =============================================
  ``mesh_collab.lineage``       the lineage id of the CRDT history
  ``mesh_collab.sha256``        sha256 of the file bytes of the last checkpoint
  ``mesh_collab.slot``          its sidecar, ``a`` or ``b``
  ============================  =============================================

A reader finds the state of the file's very bytes by the sha256 in the sidecars' headers,
whatever point of a
checkpoint the writer has reached (or died at): a checkpoint is never mistaken for a change
made outside, which a merge would insert a second time. When no sidecar is of these bytes
(someone changed the file outside mesh_collab), the last checkpoint's state is the base of
the three-way merge. Two slots, not one file per checkpoint: nothing is deleted (a delete
would fill the recycle bin at every checkpoint), and the slot being written is never the
one that holds the state of the file as it is. Sidecars are only ever looked up by these
names beside the file, never by a pointer that storage data could aim elsewhere, and are
read up to a size cap. Where the
writer may not create files beside the document (a single-file share), the sidecar is
skipped with a warning; the node's local update log still holds the lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_collab import errors, offload
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import FileInfo, Lock
from mesh_collab.resources import ResourceId

log = logging.getLogger(__name__)

META_LINEAGE = "mesh_collab.lineage"
META_SHA = "mesh_collab.sha256"
META_SLOT = "mesh_collab.slot"
SLOTS = ("a", "b")
SIDECAR_PREFIX = ".~mesh_collab."
_SIDECAR_MAGIC = b"mesh_collab.ystate.1\n"


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as read from storage, with its CRDT state when one was checkpointed."""

    info: FileInfo
    data: bytes  # the file's bytes, unparsed
    sha256: str
    state: bytes | None = None
    lineage: str | None = None
    state_sha256: str | None = None

    @property
    def state_matches(self) -> bool:
        """Whether the stored state is of exactly this file content."""
        return self.state is not None and self.state_sha256 == self.sha256


class CS3DocumentStore:
    """Reads and checkpoints one document, by resource id.

    Every method takes the session to act with, so that a room can use whichever of its
    users currently has write access.

    Args:
        parse: checks and parses the file's bytes (the document kind's); it runs off the
            event loop (0.27 s for a 5 MB notebook) and raises ValueError for bad content.
        max_size: larger files are refused (bytes).
    """

    def __init__(
        self,
        resource_id: ResourceId,
        *,
        parse: Callable[[bytes], Any],
        max_size: int = 64 * 2**20,
    ) -> None:
        self.resource_id = resource_id
        self.parse = parse
        self.max_size = max_size

    async def stat(self, session: Session) -> FileInfo:
        """Stat the file.

        Raises:
            StorageError: the mapped subclass.
        """
        return await session.files.stat(self.resource_id)

    async def read(self, session: Session) -> tuple[FileInfo, Any, str]:
        """Read and parse the file: ``(info, parsed content, sha256 of its bytes)``.

        Raises:
            ValueError: the content is not of the document's kind (or too large).
            StorageError: the mapped subclass.
        """
        info, data = await self.read_bytes(session)
        return info, await self.parsed(data), sha256(data)

    async def parsed(self, data: bytes) -> Any:
        """Parse file bytes with the kind's parser, off the event loop.

        Raises:
            ValueError: the content is not of the document's kind.
        """
        return await offload.run(self.parse, data)

    async def read_bytes(self, session: Session) -> tuple[FileInfo, bytes]:
        """Read the file's bytes, unparsed: ``(info, data)``.

        Raises:
            ValueError: a folder, or too large.
            StorageError: the mapped subclass.
        """
        info = await session.files.stat(self.resource_id)
        if info.is_dir:
            raise ValueError("a folder is not a document")
        if info.size > self.max_size:
            raise ValueError(f"file too large: {info.size} bytes > {self.max_size}")
        return info, await session.files.read(self.resource_id)

    async def load(self, session: Session) -> StoredDocument:
        """Read the file's bytes and, when there is one, its checkpointed CRDT state: the
        state of exactly these bytes, else that of the last checkpoint.

        Raises:
            ValueError: a folder, or too large.
            StorageError: the file cannot be read.
        """
        info, data = await self.read_bytes(session)
        digest = sha256(data)
        states = [await self._read_sidecar(session, info, slot) for slot in SLOTS]
        exact = [found for found in states if found and found[2] == digest]
        last = [found for found in states if found and found[2] == info.metadata.get(META_SHA)]
        found = (exact or last or [None])[0]
        return StoredDocument(
            info=info,
            data=data,
            sha256=digest,
            state=found[1] if found else None,
            lineage=found[0] if found else None,
            state_sha256=found[2] if found else None,
        )

    async def _read_sidecar(self, session: Session, info: FileInfo, slot: str
                            ) -> tuple[str, bytes, str] | None:
        """``(lineage, state, sha256 of the content it is the state of)`` of a sidecar, or
        None when there is none (or it is unreadable or too large)."""
        path = _sidecar_path(info, slot)
        try:
            stat = await session.files.stat(path)
            if stat.size > 4 * self.max_size:
                raise ValueError(f"sidecar too large: {stat.size} bytes")
            lineage, state, of = _parse_sidecar(await session.files.read(path))
        except errors.NotFound:
            return None
        except (errors.PermissionDenied, ValueError) as exc:
            log.warning("crdt state unreadable ref=%s error=%s", self.resource_id, exc)
            return None
        return lineage, state, of

    async def save(
        self,
        session: Session,
        data: bytes,
        *,
        state: bytes,
        lineage: str,
        lock: Lock | None,
        if_match: str,
    ) -> tuple[FileInfo, str]:
        """Checkpoint: write the file (a new CS3 version) and its CRDT state.

        Args:
            data: the file's bytes (the kind's ``file_of_state``).
            lock: the lock we hold (sent with every write), or None when we hold none.
            if_match: the etag we last saw; the write fails if the file changed since.

        Returns:
            ``(info after the write, sha256 of the written bytes)``.

        Raises:
            Conflict: the file changed behind our back (merge it, then retry).
            LockConflict: our lock is gone.
            StorageError: any other failure.
        """
        digest = sha256(data)
        before = await session.files.stat(self.resource_id)
        if if_match and before.etag != if_match:
            raise errors.Conflict("etag mismatch", op="checkpoint", ref=str(self.resource_id),
                                  code="etag")
        lock_id = lock.lock_id if lock else ""
        slot = "b" if before.metadata.get(META_SLOT) == "a" else "a"
        try:
            # The state first: a reader who meets the new file finds the state of its bytes.
            await session.files.write(_sidecar_path(before, slot),
                                      _sidecar_bytes(digest, lineage, state),
                                      disable_versioning=True)
        except (errors.PermissionDenied, errors.QuotaExceeded) as exc:
            log.warning("crdt state not stored beside ref=%s error=%s", self.resource_id, exc)
        # After a failed upload the slot is used again next time, unless the upload reached
        # storage (an answer lost on the way back): then it holds the file's state.
        info = await session.files.write(self.resource_id, data, lock=lock, if_match=if_match)
        try:
            await session.files.set_metadata(
                self.resource_id, {META_LINEAGE: lineage, META_SHA: digest, META_SLOT: slot},
                lock_id=lock_id,
            )
        except (errors.PermissionDenied, errors.QuotaExceeded) as exc:
            log.warning("checkpoint metadata not stored ref=%s error=%s", self.resource_id, exc)
        # Metadata writes may change the etag: learn the one we will compare against, unless
        # the content changed too (another writer came after our upload): then keep our
        # upload's, so that the next look at the file sees that write as a change.
        after = await session.files.stat(self.resource_id)
        if (after.size, after.mtime) == (info.size, info.mtime):
            info = after
        return info, digest


def _sidecar_path(info: FileInfo, slot: str) -> str:
    folder = posixpath.dirname(info.path)
    return posixpath.join(folder, f"{SIDECAR_PREFIX}{info.id.opaque_id}.{slot}.ystate")


def _sidecar_bytes(digest: str, lineage: str, state: bytes) -> bytes:
    header = json.dumps({"sha256": digest, "lineage": lineage}).encode()
    return _SIDECAR_MAGIC + len(header).to_bytes(4, "big") + header + state


def _parse_sidecar(data: bytes) -> tuple[str, bytes, str]:
    """``(lineage, state, sha256 of the content it is the state of)``.

    Raises:
        ValueError: not a sidecar.
    """
    if not data.startswith(_SIDECAR_MAGIC):
        raise ValueError("not a mesh_collab state file")
    at = len(_SIDECAR_MAGIC)
    size = int.from_bytes(data[at : at + 4], "big")
    try:
        header = json.loads(data[at + 4 : at + 4 + size])
        lineage, digest = header["lineage"], header["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad state file header: {exc}") from None
    if not isinstance(lineage, str) or not lineage or not isinstance(digest, str):
        raise ValueError("bad state file header")
    return lineage, data[at + 4 + size :], digest
