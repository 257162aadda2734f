"""CollabServer: the rooms of one node.

It opens a document's room on first use (one load per resource, however many clients ask at
once), serves clients into it, and closes it ``cleanup_delay`` seconds after its last client
left, after a final checkpoint. It also serves awareness-only rooms (JupyterLab's global
awareness), which keep nothing.

Usage::

    async with UpdateLog(path) as log, CollabServer(updatelog=log, settings=settings) as server:
        await server.serve_document(rid, session, channel, identity, writable=True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from mesh_collab import notebook, offload, protocol
from mesh_collab.channel import Channel, ChannelClosed
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.documents import DocumentRoom, Federation, RoomSettings
from mesh_collab.errors import MeshCollabError, RoomClosed, single_cause
from mesh_collab.federation.directory import Site
from mesh_collab.federation.protocol import PROTOCOL_VERSION
from mesh_collab.kinds import NOTEBOOK, DocumentKind
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Identity, Peer, Room
from mesh_collab.updatelog import UpdateLog

_EMPTY_NOTEBOOK = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


class _Entry:
    def __init__(self, kind: DocumentKind) -> None:
        self.kind = kind
        self.ready = anyio.Event()
        self.room: DocumentRoom | None = None
        self.error: BaseException | None = None
        self.users = 0
        self.activity = anyio.Event()
        self.stop = anyio.Event()
        #: Set once the room decided to close (it is taking its final checkpoint).
        self.closing = False
        self.closed = anyio.Event()


class CollabServer(anyio.AsyncContextManagerMixin):
    """The rooms of one node.

    Args:
        updatelog: the node's durable update log.
        settings: how notebook rooms behave.
        cleanup_delay: seconds a room stays open after its last client left.
        start_worker: start the worker process of large notebooks (``offload.py``) now,
            in the background, rather than when the first one opens (which would then wait
            ~1.2 s for it).
    """

    def __init__(
        self,
        *,
        updatelog: UpdateLog,
        settings: RoomSettings,
        cleanup_delay: float = 60.0,
        federation: Federation | None = None,
        log: logging.Logger | None = None,
        start_worker: bool = False,
    ) -> None:
        self.federation = federation
        self.start_worker = start_worker
        self.updatelog = updatelog
        self.settings = settings
        self.cleanup_delay = cleanup_delay
        self.log = log or logging.getLogger(__name__)
        self.epoch = int(time.time())
        self._rooms: dict[ResourceId, _Entry] = {}
        self._awareness_rooms: dict[str, Room] = {}
        self._awareness_opening = anyio.Lock()
        self._stopping = anyio.Event()
        self._tg: TaskGroup | None = None
        self.started = anyio.Event()

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[CollabServer]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.start_worker:
                tg.start_soon(offload.prestart, notebook.seed_state, _EMPTY_NOTEBOOK)
            self.started.set()
            try:
                yield self
            finally:
                # Close every room: each does its final checkpoint and releases its lock.
                for entry in list(self._rooms.values()):
                    entry.stop.set()
                self._stopping.set()
                self._tg = None

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, channel: Channel | None = None
    ) -> None:
        """Run ``fn(*args)`` in the server's task group (a connection served for a
        transport whose callbacks cannot await it, like tornado's ``open``).

        This is the boundary of one connection: whatever ``fn`` raises (an error of
        mesh_collab, an exception group, a defect) is logged once and closes ``channel``
        (4500 for anything but an error of mesh_collab); it never reaches the server's task
        group, so one connection never stops the node.

        Raises:
            RoomClosed: the server is not running.
        """
        if self._tg is None:
            raise RoomClosed("the server is not running")

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:  # the per-connection boundary
                cause = single_cause(exc)
                if isinstance(cause, ChannelClosed):
                    return  # the other end went away: a normal end
                if isinstance(cause, MeshCollabError):
                    self.log.warning("connection ended with an error: %s", cause)
                else:
                    self.log.exception("connection failed")
                if channel is not None:
                    with anyio.move_on_after(5, shield=True):
                        try:
                            await channel.close(CloseCode.LOAD_FAILED, "internal error")
                        except Exception:  # already gone
                            pass

        self._tg.start_soon(guarded)

    @property
    def rooms(self) -> dict[ResourceId, DocumentRoom]:
        """The open rooms (of every kind)."""
        return {rid: e.room for rid, e in self._rooms.items() if e.room is not None}

    @property
    def awareness_rooms(self) -> dict[str, Room]:
        """The open awareness-only rooms (JupyterLab's global awareness)."""
        return dict(self._awareness_rooms)

    async def open(
        self,
        resource_id: ResourceId,
        session: Session,
        *,
        home: Site | None = None,
        kind: DocumentKind = NOTEBOOK,
    ) -> DocumentRoom:
        """Return the room of a document, opening it with ``session`` if needed.

        ``home`` names the site that owns a document shared with us over OCM: the room then
        links to that site's node instead of reading and locking the file. One file has one
        room, of one kind: while it is open as a notebook it cannot be opened as text.

        Raises:
            ValueError: the file's content is not of that kind (or it is open as another).
            StorageError: it cannot be read.
            RoomClosed: the server is stopping.
        """
        entry = self._rooms.get(resource_id)
        while entry is not None and entry.closing:
            # Taking its last checkpoint: it would stop serving at once. Open it anew.
            await entry.closed.wait()
            entry = self._rooms.get(resource_id)
        if entry is not None and entry.kind is not kind:
            raise ValueError(
                f"the file is open as a {entry.kind.name} here; close it there to open it "
                f"as a {kind.name}"
            )
        if entry is None:
            if self._tg is None:
                raise RoomClosed("the server is not running")
            entry = self._rooms[resource_id] = _Entry(kind)
            try:
                await self._tg.start(self._run_room, resource_id, session, home, entry)
            except BaseException as exc:
                # A room's task group wraps what its opening raised: callers answer the cause
                # (a storage error is a 503, a bad file a 415), not a group.
                cause = single_cause(exc)
                entry.error = cause
                entry.ready.set()
                self._rooms.pop(resource_id, None)
                if cause is exc or not isinstance(cause, Exception):
                    raise
                raise cause from exc
        await entry.ready.wait()
        if entry.room is None:
            raise entry.error or RoomClosed(str(resource_id))
        return entry.room

    async def serve_document(
        self,
        resource_id: ResourceId,
        session: Session,
        channel: Channel,
        identity: Identity,
        *,
        writable: bool,
        kind: DocumentKind = NOTEBOOK,
    ) -> None:
        """Serve one client in a document's room until its channel closes."""
        nb = await self.open(resource_id, session, kind=kind)
        entry = self._rooms[resource_id]
        entry.users += 1
        entry.activity.set()
        if writable:
            nb.add_writer(identity.username, session)
        try:
            await nb.room.serve(channel, identity, writable=writable)
        finally:
            entry.users -= 1
            entry.activity.set()

    @asynccontextmanager
    async def open_direct(
        self, resource_id: ResourceId, session: Session, *, home: Site | None = None
    ) -> AsyncGenerator[DocumentRoom]:
        """Hold a notebook's room open without a connection, for code that edits its
        document in process (a kernel writing outputs): while held, the room counts as in
        use, as a connected client does, and closes ``cleanup_delay`` after the last holder
        or client left.

        Raises:
            as :meth:`open`.
        """
        while True:
            nb = await self.open(resource_id, session, home=home)
            entry = self._rooms.get(resource_id)
            if entry is None or entry.room is not nb:
                continue  # closed meanwhile: open it anew
            if not entry.closing:
                break
            # Handed out while it closes: its document would stop being served at once.
            # Wait until it is gone, then open it anew.
            await entry.closed.wait()
        entry.users += 1
        entry.activity.set()
        try:
            yield nb
        finally:
            entry.users -= 1
            entry.activity.set()

    async def serve_peer(
        self,
        resource_id: ResourceId,
        session: Session,
        channel: Channel,
        identity: Identity,
        peer: Peer,
        kind: DocumentKind = NOTEBOOK,
    ) -> None:
        """Serve a link from another node into a document's room (see federation/protocol)."""
        nb = await self.open(resource_id, session, kind=kind)
        entry = self._rooms[resource_id]
        entry.users += 1
        entry.activity.set()
        try:
            welcome = {
                "type": "welcome",
                "version": PROTOCOL_VERSION,
                "site": self.settings.site,
                "node": self.federation.node_url if self.federation else "",
                "lineage": nb.lineage,
            }
            try:
                await channel.send(protocol.control(welcome))
            except ChannelClosed:
                return  # the linking node gave up waiting: it links again
            await nb.room.serve(channel, identity, writable=True, peer=peer)
        finally:
            entry.users -= 1
            entry.activity.set()

    async def serve_awareness(self, name: str, channel: Channel, identity: Identity) -> None:
        """Serve a client in an awareness-only room (nothing is stored)."""
        async with self._awareness_opening:  # two first clients: one room
            room = self._awareness_rooms.get(name)
            if room is None:
                if self._tg is None:
                    raise RoomClosed("the server is not running")
                room = await self._tg.start(self._run_awareness_room, name)
        await room.serve(channel, identity, writable=True)

    async def _run_awareness_room(self, name: str, *, task_status: TaskStatus[Room]) -> None:
        async with Room(name, log=self.log) as room:
            self._awareness_rooms[name] = room
            task_status.started(room)
            try:
                await self._stopping.wait()  # closing the room closes its connections
            finally:
                self._awareness_rooms.pop(name, None)

    async def _run_room(
        self,
        resource_id: ResourceId,
        session: Session,
        home: Site | None,
        entry: _Entry,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        started = False
        try:
            async with DocumentRoom(
                resource_id,
                session,
                updatelog=self.updatelog,
                settings=self.settings,
                epoch=self.epoch,
                federation=self.federation,
                home=home,
                kind=entry.kind,
                log=self.log,
            ) as nb:
                entry.room = nb
                entry.ready.set()
                task_status.started()
                started = True
                await self._until_idle(entry)
                entry.closing = True
        except Exception:
            if not started:
                raise
            # The per-room boundary: a failing room must not take the node down.
            self.log.exception("room failed room=%s", resource_id)
        finally:
            entry.room = None
            if self._rooms.get(resource_id) is entry:
                del self._rooms[resource_id]
            self.log.info("room closed room=%s", resource_id)
            entry.closed.set()

    async def _until_idle(self, entry: _Entry) -> None:
        while not entry.stop.is_set():
            if entry.users > 0:
                entry.activity = anyio.Event()
                await _first(entry.activity, entry.stop)
                continue
            # Nobody left: save now, and close unless someone comes back soon.
            assert entry.room is not None
            entry.activity = anyio.Event()  # before the flush: a join during it counts
            await entry.room.checkpointer.flush()
            if entry.users > 0 or entry.activity.is_set():
                continue
            with anyio.move_on_after(self.cleanup_delay):
                await _first(entry.activity, entry.stop)
                continue
            if entry.users > 0:
                continue
            entry.closing = True  # from here on, open() waits for the room to go
            return


async def _first(*events: anyio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:

            async def wait(e: anyio.Event = event) -> None:
                await e.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait)
