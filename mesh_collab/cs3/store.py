"""Documents (notebooks, text files) and their CRDT state in CS3 storage.

A checkpoint writes two things:

* the file itself, a valid ``.ipynb`` or the text as typed (so every other tool sees a
  normal file, and CS3 keeps each checkpoint as a version), under our lock and only if the
  etag is still the one we last saw;
* the CRDT state of the document (its *lineage*) in a hidden sidecar file beside it, named
  after the file's opaque id so that a rename does not lose it:
  ``.~mesh_collab.<opaque_id>.ystate``. The file's CS3 arbitrary metadata points to the
  sidecar and says which file content the state matches:

  ============================  =============================================
  ``mesh_collab.state``         resource id of the sidecar
  ``mesh_collab.lineage``       the lineage id of the CRDT history
  ``mesh_collab.sha256``        sha256 of the file bytes the state matches
  ============================  =============================================

Any node, at any site, can then recover the lineage: load the state, and if the file's
sha256 differs (someone changed it outside mesh_collab), merge the file into it. Where the
writer may not create files beside the document (a single-file share), the sidecar is
skipped with a warning; the node's local update log still holds the lineage.
"""

from __future__ import annotations

import hashlib
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

META_STATE = "mesh_collab.state"
META_LINEAGE = "mesh_collab.lineage"
META_SHA = "mesh_collab.sha256"
SIDECAR_PREFIX = ".~mesh_collab."


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
        """Read the file's bytes and, when there is one, its checkpointed CRDT state.

        Raises:
            ValueError: a folder, or too large.
            StorageError: the file cannot be read.
        """
        info, data = await self.read_bytes(session)
        state = None
        pointer = info.metadata.get(META_STATE)
        if pointer:
            try:
                state = await session.files.read(ResourceId.parse(pointer))
            except (errors.NotFound, errors.PermissionDenied, ValueError) as exc:
                log.warning("crdt state unreadable ref=%s error=%s", self.resource_id, exc)
        return StoredDocument(
            info=info,
            data=data,
            sha256=sha256(data),
            state=state,
            lineage=info.metadata.get(META_LINEAGE) if state is not None else None,
            state_sha256=info.metadata.get(META_SHA) if state is not None else None,
        )

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
        info = await session.files.write(self.resource_id, data, lock=lock, if_match=if_match)
        lock_id = lock.lock_id if lock else ""
        try:
            sidecar = await self._write_sidecar(session, info, state)
            await session.files.set_metadata(
                self.resource_id,
                {META_STATE: str(sidecar.id), META_LINEAGE: lineage, META_SHA: digest},
                lock_id=lock_id,
            )
        except (errors.PermissionDenied, errors.QuotaExceeded) as exc:
            log.warning("crdt state not stored beside ref=%s error=%s", self.resource_id, exc)
        # Metadata writes may change the etag: learn the one we will compare against, unless
        # the content changed too (another writer came after our upload): then keep our
        # upload's, so that the next look at the file sees that write as a change.
        after = await session.files.stat(self.resource_id)
        if (after.size, after.mtime) == (info.size, info.mtime):
            info = after
        return info, digest

    async def _write_sidecar(self, session: Session, info: FileInfo, state: bytes) -> FileInfo:
        folder = posixpath.dirname(info.path)
        path = posixpath.join(folder, f"{SIDECAR_PREFIX}{info.id.opaque_id}.ystate")
        return await session.files.write(path, state, disable_versioning=True)
