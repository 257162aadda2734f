"""DocumentRoom: one open document (a notebook or a text file) on this node, from load to
last checkpoint.

It ties a :class:`~mesh_collab.rooms.Room` to the file in CS3; what differs between a
notebook and a text file is the room's :class:`~mesh_collab.kinds.DocumentKind`:

* **Load**, keeping the lineage: from the node's update log if it has the room (a restart),
  else from the CRDT state checkpointed beside the notebook, else from the ``.ipynb``
  (a new lineage). When the file changed since the state was taken, the file is merged in.
* **Save requests** (the frontend's Ctrl+S, see :attr:`Room.on_save`): the primary
  checkpoints at once; a replica forwards the request to the primary; a room that may not
  write answers "skipped".
* **Lock**: while open, the room holds the file's Reva lock through a
  :class:`~mesh_collab.cs3.locks.LockLease` (app ``mesh_collab``, a lock id naming the node
  and an epoch). A file locked by another application opens read-only, says who holds it,
  and becomes editable when the lock goes. A lock lost underneath us stops all writing.
* **Checkpoints** to CS3 under the lock (see :mod:`mesh_collab.checkpoint`), when the last
  client leaves and at shutdown, each one a CS3 version.
* **External changes**: the file's etag is polled; a change made behind our back is merged
  into the live document (cell by cell, character by character), never replayed over it.
  After every checkpoint and merge the document's ``state`` map carries the file's new
  ``hash`` (its etag), as jupyter-collaboration's does: the frontend then knows the file on
  disk is the one it shows, and Ctrl+S asks no "File Changed" question.

The room's state travels to clients as the node's awareness state ``mesh`` (see
:meth:`Room.set_status`): ``{"lock": "held" | "other" | "lost" | "none", "holder": ...,
"editable": bool, "checkpoint": <unix time>, "site": ...}``.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jupyter_ydoc import YNotebook
from pycrdt import Doc, Map

from mesh_collab import errors, metrics, notebook, offload
from mesh_collab.checkpoint import Checkpointer
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.locks import LockLease
from mesh_collab.cs3.models import Lock
from mesh_collab.cs3.store import CS3DocumentStore, StoredDocument, sha256
from mesh_collab.federation.directory import MeshDirectory, Node, Site
from mesh_collab.federation.handshake import LocalNode
from mesh_collab.federation.link import PeerLink
from mesh_collab.kinds import NOTEBOOK, DocumentKind, merged_change
from mesh_collab.origins import Origin, StorageOrigin
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Room
from mesh_collab.updatelog import UpdateLog

APP_NAME = "mesh_collab"
#: The origin of the edit that clears the frontends' "dirty" flag after a checkpoint.
SAVED = StorageOrigin("saved")
#: The origin of a version restored through the room.
RESTORE = StorageOrigin("restore")
#: The origin of a checkpoint another node of the lineage wrote (its CRDT state, applied).
MATE = StorageOrigin("checkpoint")
#: Compact the local log once this many updates accumulated (checked every COMPACT_CHECK s).
COMPACT_EVERY = 1000
COMPACT_CHECK = 5.0
#: Merges of states of at least this many bytes run in a worker process: in a thread, the
#: diff's long calls held the GIL, and the loop stalled 80 ms on a 100 KB change.
MERGE_IN_PROCESS = 32 * 1024
#: Seconds a closing room waits for its first lock attempt before its last checkpoint.
LAST_LOCK_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Federation:
    """How this node reaches other nodes: the mesh directory, and who this node is."""

    site: str
    node_id: str
    directory_source: Callable[[], MeshDirectory]
    key_source: Callable[[], Ed25519PrivateKey]
    #: How https nodes are verified (None: the system's trust store).
    ssl: ssl_module.SSLContext | None = None

    @property
    def directory(self) -> MeshDirectory:
        """The mesh directory (read again each time: it may come from a file)."""
        return self.directory_source()

    @property
    def local(self) -> LocalNode:
        """This node, as it signs its handshakes."""
        return LocalNode(self.site, self.node_id, self.key_source)

    def node_of(self, lock_id: str) -> Node | None:
        """The other node of our own site that a mesh_collab lock id names, as the
        directory lists it (None if it names none: the lock id only says which node; where
        that node is comes from the directory, never from the storage).

        Lock ids read ``mesh_collab:<site>:<node id>:<epoch>``.
        """
        parts = lock_id.split(":")
        if len(parts) != 4 or parts[0] != APP_NAME or parts[1] != self.site:
            return None
        if parts[2] == self.node_id:
            return None
        try:
            return self.directory.node(self.site, parts[2])
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """How a notebook room behaves; every time is in seconds."""

    site: str = "site-a"
    node_id: str = "node"
    lock_expiry: float = 60.0
    quiet_period: float = 2.0
    max_interval: float = 30.0
    poll_interval: float = 5.0
    max_message_size: int = 16 * 2**20
    max_notebook_size: int = 64 * 2**20
    #: How long a replica of another site's notebook waits for its first sync.
    link_timeout: float = 15.0


class DocumentRoom(anyio.AsyncContextManagerMixin):
    """One open document.

    Usage::

        async with DocumentRoom(rid, session, updatelog=log, settings=settings) as nb:
            await nb.room.serve(channel, identity, writable=nb.editable and can_write)
    """

    def __init__(
        self,
        resource_id: ResourceId,
        session: Session,
        *,
        updatelog: UpdateLog,
        settings: RoomSettings,
        epoch: int = 0,
        federation: Federation | None = None,
        home: Site | None = None,
        kind: DocumentKind = NOTEBOOK,
        log: logging.Logger | None = None,
    ) -> None:
        self.resource_id = resource_id
        self.kind = kind
        self.federation = federation
        #: The site that owns the notebook when it is not ours (an OCM share): we never
        #: write it, we link to that site's node.
        self.home = home
        self.name = f"{kind.room_prefix}{resource_id}"
        self.updatelog = updatelog
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.store = CS3DocumentStore(
            resource_id, parse=kind.parse, max_size=settings.max_notebook_size
        )
        # The node id tells this node's runs apart from every other node's, and is how the
        # other nodes of the site find this primary in the mesh directory.
        self.lock_id = f"{APP_NAME}:{settings.site}:{settings.node_id}:{epoch or int(time.time())}"
        self.lineage = ""
        self.room: Room = None  # type: ignore[assignment]  # set on entry
        self._sessions: dict[str, Session] = {}
        #: Users' CS3 tokens, to introduce them to the primary of the site (never sent to
        #: another site).
        self._tokens: dict[str, str] = {}
        self._opener = session
        self._writer: Session | None = None
        self._lease: LockLease | None = None
        self._known_etag = ""
        self._known_sha = ""
        # The base of the next three-way merge lives in the update log, not in memory (it is
        # as large as the document); here only while the log cannot store it.
        self._unstored_base: bytes | None = None
        self._compacted_at = 0
        self._lock_state = "none"
        self._holder = ""
        self._lease_wanted = anyio.Event()
        #: Held while the file is written (checkpoint) or looked at (poll, catch-up).
        self._storage_lock = anyio.Lock()
        self._link: PeerLink | None = None
        self._link_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        self.checkpointer = Checkpointer(
            self._checkpoint,
            quiet_period=settings.quiet_period,
            max_interval=settings.max_interval,
            on_saved=self._on_saved,
            log=self.log,
        )
        self.checkpointer.set_enabled(False)  # until the lock is ours
        #: Set once the first lock attempt has an answer (held, or somebody else's).
        self._lock_decided = anyio.Event()

    # --- public --------------------------------------------------------------------------

    @property
    def editable(self) -> bool:
        """Whether edits are accepted now (we hold the lock, or nobody else does)."""
        return self._lock_state == "held"

    @property
    def lock_state(self) -> str:
        """The lock state: "held", "other", "lost", "linked", "remote", "unreachable" or
        "none" (see :meth:`_hold_lock`)."""
        return self._lock_state

    @property
    def link(self) -> PeerLink | None:
        """The link to the node that holds the lock or owns the notebook, if any."""
        return self._link

    @property
    def ynotebook(self) -> YNotebook:
        """The live notebook (a view on the room's current document; notebooks only)."""
        return YNotebook(ydoc=self.room.doc)

    def add_writer(self, username: str, session: Session) -> None:
        """Offer a user's session for writing (a user with write access joined)."""
        self._sessions[username] = session
        self._writer = session
        if self._lock_state in ("none", "lost"):
            self._lease_wanted.set()

    async def remember_user(self, username: str, session: Session) -> None:
        """Keep a user's current CS3 token, to introduce them to the primary of the site
        (which checks with it what they may do; federation/protocol.py)."""
        if len(self._tokens) < 4096 or username in self._tokens:
            try:
                self._tokens[username] = await session.tokens.token()
            except errors.StorageError:
                pass  # no token, no introduction: the primary refuses their edits

    def _introduction(self, username: str) -> dict[str, str]:
        token = self._tokens.get(username)
        return {"token": token} if token else {}

    async def edit(self, fn: Any, origin: Origin) -> Any:
        """Edit the live notebook in the room (see :meth:`Room.edit`)."""
        return await self.room.edit(fn, origin)

    async def restore_version(self, session: Session, key: str) -> notebook.MergeStats:
        """Bring back a CS3 version through the live room: collaborators see it happen, cells
        that did not change keep their identity, and the next checkpoint stores the result as
        a new version (nothing is overwritten behind anyone's back).

        Raises:
            NotFound: no such version.
            ValueError: the version is not of this document's kind.
            PermissionDenied: the user may not edit this document.
        """
        info = await session.files.stat(self.resource_id)
        if not info.writable:
            raise errors.PermissionDenied("viewers cannot restore", op="restore", ref=self.name)
        version = await self.store.parsed(await session.versions.read(self.resource_id, key))
        result = await self._merge_from(self.room.doc.get_update(), version, RESTORE)
        assert result is not None  # no fence: always applied
        _, stats = result
        self.log.info("version restored through the room room=%s stats=%s", self.name, stats)
        return stats

    # --- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[DocumentRoom]:
        if self.home is not None:
            async with self._remote() as nb:
                yield nb
            return
        doc, pending = await self._load()
        async with self._new_room(doc) as room:
            self.room = room
            room.add_listener(self._on_updates)
            if pending is not None:
                await self._absorb(pending)
                del pending  # the file's bytes: not kept for the room's life
            self._publish()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.checkpointer.run)
                tg.start_soon(self._hold_lock)
                tg.start_soon(self._watch_file)
                tg.start_soon(self._compact_regularly)
                try:
                    yield self
                finally:
                    with anyio.move_on_after(30, shield=True):
                        await room.flush()
                        if self.checkpointer.dirty and self._writer is not None:
                            # Users who leave before the first lock is taken: their edits
                            # go into this checkpoint, not only into the log.
                            with anyio.move_on_after(LAST_LOCK_WAIT):
                                await self._lock_decided.wait()
                        await self.checkpointer.flush()
                        await self._compact_now()
                    tg.cancel_scope.cancel()

    def _new_room(self, doc: Doc) -> Room:
        room = Room(
            self.name,
            doc=doc,
            updatelog=self.updatelog,
            max_message_size=self.settings.max_message_size,
            log=self.log,
        )
        room.on_save = self._save_requested
        return room

    async def _save_requested(self) -> str:
        """Answer a save request (the frontend's Ctrl+S): "success" once what the room
        holds is checkpointed (a CS3 version, unless it was already), "skipped" while the
        room may not write, "failed" when storage refuses."""
        state = self._lock_state
        if state in ("linked", "remote"):
            return await self.room.forward_save()  # the primary writes
        if state != "held":
            return "failed" if state == "unreachable" else "skipped"
        await self.room.flush()  # everything received before the request is in the document
        return "success" if await self.checkpointer.flush() else "failed"

    @asynccontextmanager
    async def _remote(self) -> AsyncGenerator[DocumentRoom]:
        """A notebook another site owns: serve it from our replica, linked to its home node.

        The home node holds the lock and checkpoints; this node never writes the file. With
        the home unreachable, users keep editing here and the link merges on its return.
        """
        assert self.home is not None
        if self.federation is None:
            raise errors.Unimplemented("no mesh directory to reach the notebook's home site")
        logged = await self.updatelog.load(self.name)
        doc = Doc()
        if logged is not None:
            for update in logged.updates:
                doc.apply_update(update)
            self.lineage = logged.lineage
        home_unreachable = False
        async with self._new_room(doc) as room:
            self.room = room
            self._lock_state = "remote"
            async with anyio.create_task_group() as tg:
                self._tg = tg
                entry = self.home.entry
                if entry is None:
                    raise errors.Unimplemented("the mesh directory lists no node of the "
                                               "notebook's home site")
                link = self._ensure_link(self.home, entry)
                with anyio.move_on_after(self.settings.link_timeout):
                    await link.synced.wait()
                if not link.synced.is_set() and logged is None:
                    # Nothing to serve: raised below, outside the task groups (inside, it
                    # would reach the caller wrapped in an exception group).
                    home_unreachable = True
                    tg.cancel_scope.cancel()
                else:
                    if logged is None:
                        self.lineage = link.lineage
                        await self.updatelog.reset(self.name, self.lineage, room.doc.get_update())
                    tg.start_soon(self._compact_regularly)
                    try:
                        yield self
                    finally:
                        with anyio.move_on_after(5, shield=True):
                            await room.flush()
                            await self._compact_now()
                        tg.cancel_scope.cancel()
        if home_unreachable:
            raise errors.StorageUnavailable(
                "the notebook's home site is unreachable", op="link", ref=self.name
            )

    def _ensure_link(self, site: Site, node: Node) -> PeerLink:
        """Keep a link to ``node`` of ``site`` running (replacing a link to another node)."""
        assert self.federation is not None and self._tg is not None
        if self._link is not None and self._link.node == node and self._link.remote == site:
            return self._link
        self._stop_link()
        link = PeerLink(
            self.room, self.resource_id, remote=site, node=node, local=self.federation.local,
            introduce=self._introduction if site.name == self.settings.site else None,
            on_state=self._on_link_state, kind=self.kind.name, log=self.log,
            lineage=lambda: self.lineage, ssl=self.federation.ssl,
        )
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await link.run()

        self._link, self._link_scope = link, scope
        self._tg.start_soon(run)
        return link

    def _stop_link(self) -> None:
        if self._link_scope is not None:
            self._link_scope.cancel()
        self._link, self._link_scope = None, None

    def _on_link_state(self, state: str) -> None:
        self._publish()

    def _on_updates(self, updates: list[tuple[bytes, Origin | None]]) -> None:
        # Clearing the frontend's "dirty" flag after a save is not a change to save.
        if any(origin != SAVED for _, origin in updates):
            self.checkpointer.changed()

    async def _load(self) -> tuple[Doc, StoredDocument | None]:
        """Build the document, keeping the lineage; return it and the file to take in
        (see :meth:`_absorb`) once the room runs, if the file is not what the document holds.
        """
        logged = await self.updatelog.load(self.name)
        stored = await self.store.load(self._opener)
        if logged is not None:
            doc = Doc()
            for update in logged.updates:
                doc.apply_update(update)
            self.lineage = logged.lineage
            base = logged.base
            if base is None:
                base = doc.get_update()
                await self._set_base(base)
            self.log.info("room loaded from the local log room=%s", self.name)
            self._known_sha = sha256(await offload.run(self.kind.file_of_state, base))
            return doc, stored
        doc = await self._doc_from(stored)
        base = doc.get_update()
        await self.updatelog.reset(self.name, self.lineage, base)
        await self._set_base(base)
        if stored.state is None or stored.state_matches:
            # Built from this very file, or from the state of exactly these bytes.
            self._known_etag, self._known_sha = stored.info.etag, stored.sha256
            return doc, None
        # Changed outside since the state was taken: merged by the lock holder.
        self._known_sha = stored.state_sha256 or ""
        return doc, stored

    async def _doc_from(self, stored: StoredDocument) -> Doc:
        if stored.state is not None and stored.lineage:
            doc = Doc()
            doc.apply_update(stored.state)
            self.lineage = stored.lineage
            self.log.info("room loaded from the checkpointed crdt state room=%s", self.name)
            return doc
        # Deterministic: every node that builds a history from these same bytes builds the
        # same items (client id 0, content-derived cell ids) and the same lineage id, so two
        # nodes that both had to start from the file still merge without duplicates. Edits
        # then go through a document with its own random client id.
        doc = Doc()
        doc.apply_update(await offload.run(self.kind.seed_state, stored.data))
        self.lineage = f"file-{stored.sha256[:32]}"
        self.log.info("room loaded from the file (new lineage) room=%s", self.name)
        return doc

    async def _absorb(self, stored: StoredDocument) -> None:
        """Take in the file as storage holds it now, by its provenance.

        * The bytes this room last wrote or read: nothing to do.
        * A checkpoint of this lineage (by another node of the mesh, or by this node before
          a restart): the file's metadata names our lineage and the file's bytes are those
          its CRDT state was taken of. Its state is applied as a CRDT update, which is
          idempotent: what the room already holds is not inserted again.
        * Changed outside mesh_collab after a checkpoint of this lineage (the bytes differ
          from the recorded checksum): that state is applied, then the change from it to
          the file is merged in (three-way, with that state as the base).
        * Anything else (another lineage, or no CRDT state beside the file): the change from
          this room's base to the file is merged in.

        Raises:
            ValueError: the file is not of the document's kind (a partial write).
            StorageError: the file cannot be read.
        """
        if stored.sha256 != self._known_sha:
            mate = stored.state is not None and stored.lineage == self.lineage
            if mate:
                assert stored.state is not None
                state = stored.state
                await self.room.edit(lambda doc: doc.apply_update(state), MATE)
                metrics.COUNTS.absorbed["checkpoint"] += 1
            if mate and stored.state_matches:
                await self._set_base(stored.state)  # type: ignore[arg-type]
                self.log.info("applied a checkpoint of the lineage room=%s", self.name)
            else:
                if not self._holds_lock():
                    # Only the lock holder merges a change made outside (two nodes merging
                    # it would insert it twice). Not marked as known: the holder, or this
                    # room once it holds the lock, takes it in.
                    self.log.info("file changed outside, left to the lock holder room=%s",
                                  self.name)
                    return
                base = stored.state if mate else await self._get_base()
                assert base is not None
                parsed = await self.store.parsed(stored.data)
                result = await self._merge_from(
                    base, parsed, StorageOrigin("external"), fence=self._holds_lock
                )
                if result is None:
                    self.log.info("lock lost during the merge, left to the new holder room=%s",
                                  self.name)
                    return
                merged, stats = result
                await self._set_base(merged)
                metrics.COUNTS.absorbed["external"] += 1
                self.log.info("merged the file's changes room=%s stats=%s", self.name, stats)
        self._known_etag, self._known_sha = stored.info.etag, stored.sha256
        # The file on disk is what the room shows now: tell the frontends, whose next save
        # would otherwise see a newer file than theirs.
        await self.room.edit(partial(_mark_saved, etag=stored.info.etag), SAVED)

    async def _set_base(self, state: bytes) -> None:
        """Remember the document state that matches the file in storage."""
        try:
            await self.updatelog.set_base(self.name, state)
        except errors.LocalStoreError as exc:
            self.log.error("base kept in memory room=%s error=%s", self.name, exc)
            self._unstored_base = state
        else:
            self._unstored_base = None

    async def _get_base(self) -> bytes:
        if self._unstored_base is not None:
            return self._unstored_base
        try:
            base = await self.updatelog.base(self.name)
        except errors.LocalStoreError as exc:
            self.log.error("base unreadable room=%s error=%s", self.name, exc)
            base = None
        # Without a base, the live document stands in: the merge then keeps every live edit
        # and takes the file's changes where they do not overlap.
        return base if base is not None else self.room.doc.get_update()

    async def _merge_from(
        self, state: bytes, nb: Any, origin: Origin, *, fence: Callable[[], bool] | None = None
    ) -> tuple[bytes, notebook.MergeStats] | None:
        """Edit the live document by the change that turns ``state`` into ``nb``.

        The change is computed on a fork of ``state``, off the event loop (a large change
        costs seconds of CPU), and applied to the live document as a concurrent edit.
        Returns the fork's new state and the merge statistics; None, with nothing applied,
        when ``fence`` says no at the moment the change would be applied (the lock was lost
        while the merge was computed: the process may have been frozen meanwhile).
        """
        changes, merged, stats = await offload.run(
            merged_change, state, self.kind.name, nb, threshold=MERGE_IN_PROCESS
        )

        def apply(doc: Doc) -> bool:
            if fence is not None and not fence():
                return False
            for update in changes:
                doc.apply_update(update)
            return True

        if changes and not await self.room.edit(apply, origin):
            return None
        return merged, stats

    def _holds_lock(self) -> bool:
        """Whether this room holds the Reva lock now, by its own clock (a frozen process
        wakes up with an expired lease)."""
        lease = self._lease
        return self._lock_state == "held" and lease is not None and lease.held

    # --- lock --------------------------------------------------------------------------------

    def _publish(self) -> None:
        link = self._link.state if self._link is not None else ""
        self.room.set_status(
            lock=self._lock_state,
            holder=self._holder,
            editable=self.room.accept_edits,
            checkpoint=self.checkpointer.last_saved,
            site=self.settings.site,
            primary=(self.home.name if self.home else self._holder)
            if self._lock_state in ("remote", "linked") else self.settings.site,
            link=link,
            # "offline, changes will merge": edits stay here until the link is back.
            offline=bool(self._link is not None and link != "online"),
        )

    def _set_lock_state(self, state: str, holder: str = "") -> None:
        self._lock_state, self._holder = state, holder
        if state != "none":
            self._lock_decided.set()
        self.checkpointer.set_enabled(state == "held")
        # Linked to another node of the mesh (it holds the lock): edit here, it writes.
        # Storage unreachable: edit here, write when it is back.
        self.room.accept_edits = state in ("held", "none", "linked", "unreachable")
        if state != "linked":
            self._stop_link()
        self._publish()

    async def _hold_lock(self) -> None:
        """Hold the Reva lock while the room is open; wait while someone else holds it."""
        if self._writer is None and self._opener is not None:
            self._writer = self._opener
        retry = min(5.0, self.settings.lock_expiry / 3)
        while True:
            session = self._writer
            if session is None:
                await self._lease_wanted.wait()
                self._lease_wanted = anyio.Event()
                continue
            try:
                async with session.locks.lease(
                    self.resource_id,
                    lock_id=self.lock_id,
                    app_name=APP_NAME,
                    expiry=self.settings.lock_expiry,
                ) as lease:
                    self._lease = lease
                    self._set_lock_state("held")
                    try:
                        await self._catch_up()
                    except (errors.StorageError, ValueError) as exc:
                        # The file poll takes it in later; raised here, it would end the
                        # lease's task group and the room with it.
                        self.log.warning("cannot take in the file yet room=%s error=%s",
                                         self.name, exc)
                    await lease.lost.wait()
                    if isinstance(lease.lost_reason, errors.LockConflict | errors.NotFound):
                        self._set_lock_state("lost")
                    else:
                        # Storage unreachable past the expiry: nobody may have taken the
                        # lock. Keep accepting edits (into the log), stop writing, and take
                        # the lock again when storage answers.
                        self._set_lock_state("unreachable")
                    metrics.COUNTS.lock_losses[self._lock_state] += 1
                    self._lease = None
            except errors.LockConflict:
                lock = await self._current_lock(session)
                if lock is not None and self._is_previous_incarnation(lock.lock_id):
                    # Our own node before a restart (kill -9): release its lock and take it.
                    self.log.info("taking over the lock of this node's previous run %s",
                                  self.name)
                    try:
                        await session.locks.unlock(self.resource_id, lock)
                    except errors.StorageError as exc:
                        self.log.warning("cannot release the previous lock: %s", exc)
                    else:
                        continue
                node = self.federation.node_of(lock.lock_id) if (
                    self.federation and lock is not None and lock.app_name == APP_NAME
                ) else None
                site = self.federation.directory.site(self.settings.site) if (
                    node is not None and self.federation is not None
                ) else None
                if node is not None and site is not None:
                    # Another mesh_collab node of this site is the primary: link to it, and
                    # take over if its lock expires (it is gone).
                    self._ensure_link(site, node)
                    if self._lock_state != "linked" or self._holder != node.url:
                        self.log.info("linking to the primary room=%s node=%s", self.name,
                                      node.id)
                        self._set_lock_state("linked", node.url)
                else:
                    holder = _holder_name(lock)
                    if self._lock_state != "other" or holder != self._holder:
                        self.log.info("file locked by another holder room=%s", self.name)
                        self._set_lock_state("other", holder)
            except errors.PermissionDenied:
                # This user may not lock (a viewer): wait for a user with write access.
                self._writer = None
                continue
            except errors.StorageError as exc:
                self.log.warning("cannot take the lock room=%s error=%s", self.name, exc)
            self._lease = None
            with anyio.move_on_after(retry):
                await self._lease_wanted.wait()
            self._lease_wanted = anyio.Event()

    def _is_previous_incarnation(self, lock_id: str) -> bool:
        """Whether a lock id names this very node (site and node id) with another epoch."""
        prefix = f"{APP_NAME}:{self.settings.site}:{self.settings.node_id}:"
        return lock_id.startswith(prefix) and lock_id != self.lock_id

    async def _current_lock(self, session: Session) -> Lock | None:
        try:
            return await session.locks.get(self.resource_id)
        except errors.StorageError:
            return None

    async def _catch_up(self) -> None:
        """After (re)taking the lock: merge what others wrote meanwhile, then save soon."""
        await self._check_file()
        if self.checkpointer.dirty:
            self.checkpointer.changed()

    # --- storage -----------------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        # One look at storage at a time: a poll between our upload and the bookkeeping after
        # it would take our own checkpoint for somebody else's change, and merge it again.
        async with self._storage_lock:
            await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> None:
        lease, session = self._lease, self._writer
        if lease is None or session is None or not lease.held:
            raise errors.LockConflict("not holding the lock", op="checkpoint", ref=self.name)
        doc = self.room.doc
        state = doc.get_update()
        # Building a large .ipynb takes hundreds of milliseconds: not on the event loop.
        data = await offload.run(self.kind.file_of_state, state)
        try:
            info, digest = await self.store.save(
                session, data, state=state, lineage=self.lineage, lock=lease.lock,
                if_match=self._known_etag,
            )
        except errors.LockConflict:
            raise
        except errors.Conflict:
            # Changed behind our back: merge it, and save again at the next turn.
            await self._check_file_locked()
            raise
        self._known_etag, self._known_sha = info.etag, digest
        await self._set_base(state)
        # Tell the frontends the file is saved (its "dirty" dot) and what is on disk now (its
        # hash), as jupyter-collaboration does after a save.
        await self.room.edit(partial(_mark_saved, etag=info.etag), SAVED)

    def _on_saved(self) -> None:
        self._publish()  # with the checkpointer's new save time

    async def _compact_regularly(self) -> None:
        """Fold the room's log into one state whenever it holds many updates, whatever the
        room's role: a replica or a linked secondary never checkpoints, and its log must not
        grow without bound either (nor its reopen replay every keystroke)."""
        while True:
            await anyio.sleep(COMPACT_CHECK)
            if self.room.stats.updates - self._compacted_at >= COMPACT_EVERY:
                await self._compact_now()

    async def _compact_now(self) -> None:
        updates = self.room.stats.updates
        if updates == self._compacted_at or not self.lineage:
            return
        try:
            await self.room.compact(self.lineage)
        except errors.MeshCollabError as exc:
            self.log.warning("cannot compact the log room=%s error=%s", self.name, exc)
            return
        self._compacted_at = updates

    async def _watch_file(self) -> None:
        """Look at the file every poll interval while this room is the primary (the one
        writer: the others learn every change through it)."""
        while True:
            await anyio.sleep(self.settings.poll_interval)
            if self._lock_state != "held":
                continue
            try:
                await self._check_file()
            except (errors.StorageError, ValueError) as exc:
                self.log.warning("cannot take in the file room=%s error=%s", self.name, exc)

    async def _check_file(self) -> None:
        async with self._storage_lock:
            await self._check_file_locked()

    async def _check_file_locked(self) -> None:
        session = self._writer or self._opener
        info = await self.store.stat(session)
        if info.etag == self._known_etag:
            return
        lease = self._lease
        if lease is not None and not await lease.confirm():
            # Taken (or removed) since our last refresh: the file is the new holder's to
            # take in. Two holders merging the same outside change would insert it twice.
            return
        try:
            await self._absorb(await self.store.load(session))
        except ValueError as exc:
            raise errors.Conflict(f"the file cannot be merged now: {exc}",
                                  op="merge", ref=self.name) from exc


def _mark_saved(doc: Doc, *, etag: str) -> None:
    # jupyter_ydoc's "state" map; building a YNotebook inside a transaction would subscribe
    # observers there, which pycrdt refuses. The frontend reloads the file's model (its
    # last_modified) when "hash" changes.
    state = doc.get("state", type=Map)
    if state.get("dirty") is not False:
        state["dirty"] = False
    if etag and state.get("hash") != etag:
        state["hash"] = etag


def _holder_name(lock: Lock | None) -> str:
    """Who holds a lock, for people: the application, else the user."""
    if lock is None:
        return ""
    return lock.app_name or (lock.user.opaque_id if lock.user else "") or "unknown"
