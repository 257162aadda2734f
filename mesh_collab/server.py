"""CollabServer: the rooms of one node.

It opens a document's room on first use (one load per resource, however many clients ask at
once), serves clients into it, and closes it ``cleanup_delay`` seconds after its last client
left, after a final checkpoint. It also serves awareness-only rooms (JupyterLab's global
awareness), which keep nothing: one per user, so that nobody sees who else is online nor
what they have open (collaborators meet in the rooms of the documents they share).

One user's share of the node is bounded: at most ``max_connections_per_user`` browser
connections and ``max_rooms_per_user`` open documents. A document counts for the users
connected to it, or, while nobody is, for the last user who opened or left it, until it
closes; when a user at the limit opens another, one that counts for them alone and that
nobody uses closes at once (after its final checkpoint) to make room. Beyond that the user is
refused (close code ``USER_LIMIT``, :class:`~mesh_collab.errors.UserLimitExceeded`); nobody
else is. Links from other nodes and in-process holders count for nobody.

Usage::

    async with UpdateLog(path) as log, CollabServer(updatelog=log, settings=settings) as server:
        await server.serve_document(rid, session, channel, identity, writable=True)
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
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
from mesh_collab.errors import (
    MeshCollabError,
    RoomClosed,
    StorageError,
    UserLimitExceeded,
    single_cause,
)
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
        #: Browser connections to the room, by user name.
        self.holders: Counter[str] = Counter()
        #: The user who last opened or left the room: it counts for them while nobody is
        #: connected.
        self.last = ""


class CollabServer(anyio.AsyncContextManagerMixin):
    """The rooms of one node.

    Args:
        updatelog: the node's durable update log.
        settings: how notebook rooms behave.
        cleanup_delay: seconds a room stays open after its last client left.
        start_worker: start the worker process of large notebooks (``offload.py``) now,
            in the background, rather than when the first one opens (which would then wait
            ~1.2 s for it).
        max_connections_per_user: browser connections one user may have (0: no limit).
        max_rooms_per_user: documents one user may hold open (0: no limit).
        rights_check_interval: seconds between two looks at a connected user's rights on
            the document (see :meth:`serve_document`).
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
        max_connections_per_user: int = 64,
        max_rooms_per_user: int = 32,
        rights_check_interval: float = 5.0,
    ) -> None:
        self.rights_check_interval = rights_check_interval
        self.max_connections_per_user = max_connections_per_user
        self.max_rooms_per_user = max_rooms_per_user
        self._user_connections: Counter[str] = Counter()
        self.federation = federation
        self.start_worker = start_worker
        self.updatelog = updatelog
        self.settings = settings
        self.cleanup_delay = cleanup_delay
        self.log = log or logging.getLogger(__name__)
        self.epoch = int(time.time())
        self._rooms: dict[ResourceId, _Entry] = {}
        self._awareness_rooms: dict[_PresenceKey, _Presence] = {}
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
    def awareness_rooms(self) -> dict[tuple[str, str, str], Room]:
        """The open awareness-only rooms (JupyterLab's global awareness), by (name, site,
        user name)."""
        return {key: p.room for key, p in self._awareness_rooms.items() if p.room is not None}

    async def open(
        self,
        resource_id: ResourceId,
        session: Session,
        *,
        home: Site | None = None,
        kind: DocumentKind = NOTEBOOK,
        user: str = "",
    ) -> DocumentRoom:
        """Return the room of a document, opening it with ``session`` if needed.

        ``home`` names the site that owns a document shared with us over OCM: the room then
        links to that site's node instead of reading and locking the file. One file has one
        room, of one kind: while it is open as a notebook it cannot be opened as text.
        ``user`` is the user it is opened for, whom it counts for (``max_rooms_per_user``);
        "" (in-process code, links from other nodes) for nobody.

        Raises:
            ValueError: the file's content is not of that kind (or it is open as another).
            StorageError: it cannot be read.
            UserLimitExceeded: ``user`` holds as many rooms as one user may.
            RoomClosed: the server is stopping.
        """
        while True:
            entry = self._rooms.get(resource_id)
            while entry is not None and entry.closing:
                # Taking its last checkpoint: it would stop serving at once. Open it anew.
                await entry.closed.wait()
                entry = self._rooms.get(resource_id)
            if self._may_hold(user, entry):
                break
            await self._make_room(user)
        if entry is not None and entry.kind is not kind:
            raise ValueError(
                f"the file is open as a {entry.kind.name} here; close it there to open it "
                f"as a {kind.name}"
            )
        if entry is None:
            if self._tg is None:
                raise RoomClosed("the server is not running")
            entry = self._rooms[resource_id] = _Entry(kind)
            entry.last = user
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
        elif user:
            entry.last = user
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
        rights: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> None:
        """Serve one client in a document's room until its channel closes (at once, with
        ``USER_LIMIT``, when its user has as many connections or rooms as one user may).

        ``rights`` says what the user may do with the document now: None (no access any
        more), False (read only) or True (write); it raises StorageError when storage cannot
        tell. It is asked every ``rights_check_interval`` seconds: a user who lost access,
        or an editor who became a viewer, is closed with 1003 and a reason that JupyterLab
        shows (a downgraded editor may reload, and reopens the document read-only).
        """
        user = identity.username
        if not await self._admit(user, channel):
            return
        try:
            try:
                nb = await self.open(resource_id, session, kind=kind, user=user)
            except UserLimitExceeded as exc:
                await self._refuse(user, channel, str(exc))
                return
            entry = self._rooms[resource_id]
            entry.users += 1
            entry.holders[user] += 1
            entry.activity.set()
            if writable:
                nb.add_writer(identity.username, session)
            await nb.remember_user(identity.username, session)
            try:
                async with anyio.create_task_group() as tg:
                    if rights is not None:
                        tg.start_soon(self._follow_rights, rights, channel, identity, writable)
                    await nb.room.serve(channel, identity, writable=writable)
                    tg.cancel_scope.cancel()
            finally:
                entry.users -= 1
                entry.holders[user] -= 1
                if not entry.holders[user]:
                    del entry.holders[user]
                entry.last = user
                entry.activity.set()
        finally:
            self._release(user)

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
        *,
        proof: str = "",
    ) -> None:
        """Serve a link from another node into a document's room (see federation/protocol);
        ``proof`` is our signature of its handshake, for its welcome."""
        nb = await self.open(resource_id, session, kind=kind)
        entry = self._rooms[resource_id]
        entry.users += 1
        entry.activity.set()
        try:
            welcome = {
                "type": "welcome",
                "version": PROTOCOL_VERSION,
                "site": self.settings.site,
                "node": self.settings.node_id,
                "lineage": nb.lineage,
                "proof": proof,
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
        """Serve a client in its user's awareness-only room ``name`` (nothing is stored).

        Each user has a room of their own under each name: the windows of one user see one
        another there, and nobody else. JupyterLab publishes there who is online and which
        file each window shows (``current``); another user's presence is only in the rooms of
        documents both have open. A room closes when its last client leaves.
        """
        if not await self._admit(identity.username, channel):
            return
        key: _PresenceKey = (name, identity.site, identity.username)
        try:
            async with self._awareness_opening:  # two first clients: one room
                presence = self._awareness_rooms.get(key)
                if presence is None:
                    if self._tg is None:
                        raise RoomClosed("the server is not running")
                    presence = _Presence()
                    await self._tg.start(self._run_awareness_room, key, presence)
                    self._awareness_rooms[key] = presence
                presence.clients += 1
            try:
                if presence.room is None:
                    raise RoomClosed("the server is stopping")
                await presence.room.serve(channel, identity, writable=True)
            finally:
                presence.clients -= 1
                if not presence.clients:
                    # Out of the registry before anything awaits: a client coming now opens
                    # a new room rather than joining this closing one.
                    if self._awareness_rooms.get(key) is presence:
                        del self._awareness_rooms[key]
                    presence.stop.set()
        finally:
            self._release(identity.username)

    # --- one user's share of the node ------------------------------------------------------

    async def _follow_rights(
        self,
        rights: Callable[[], Awaitable[bool | None]],
        channel: Channel,
        identity: Identity,
        writable: bool,
    ) -> None:
        """Close ``channel`` once its user may no longer do what it was opened for."""
        while True:
            await anyio.sleep(self.rights_check_interval)
            try:
                now = await rights()
            except StorageError:
                continue  # storage cannot tell now: what was granted stands until it can
            if now is None:
                text, reloadable = "Your access to this document was removed.", False
            elif writable and not now:
                text = "Your edit rights were removed: reload to open it read-only."
                reloadable = True
            else:
                continue
            self.log.info("rights changed, connection closed user=%s access=%s",
                          identity.username, "none" if now is None else "read")
            # The stock frontend shows ``errorReason`` in a dialog for 1003 (a close reason
            # holds at most 123 bytes).
            reason = json.dumps({"reason": "rights", "reloadable": reloadable,
                                 "errorReason": text}, separators=(",", ":"))
            await channel.close(CloseCode.UNKNOWN_SESSION, reason)
            return

    async def _admit(self, user: str, channel: Channel) -> bool:
        """Count one more connection of ``user``; False (``channel`` closed) when they have
        as many as one user may."""
        limit = self.max_connections_per_user
        if limit and self._user_connections[user] >= limit:
            reason = f"{user} has {limit} connections to this node, the most one user may"
            await self._refuse(user, channel, reason)
            return False
        self._user_connections[user] += 1
        return True

    def _release(self, user: str) -> None:
        self._user_connections[user] -= 1
        if not self._user_connections[user]:
            del self._user_connections[user]

    async def _refuse(self, user: str, channel: Channel, reason: str) -> None:
        self.log.info("connection refused user=%s reason=%s", user, reason)
        await channel.close(CloseCode.USER_LIMIT, reason[:120])

    def _held(self, user: str) -> list[_Entry]:
        """The rooms that count for ``user``: connected to, or last opened or left by them
        while nobody is connected."""
        return [
            e for e in self._rooms.values()
            if e.holders[user] or (not e.holders and e.last == user)
        ]

    def _may_hold(self, user: str, entry: _Entry | None) -> bool:
        """Whether ``user`` may open ``entry`` (None: a room not open yet)."""
        limit = self.max_rooms_per_user
        if not user or not limit:
            return True
        held = self._held(user)
        return len(held) < limit or entry in held

    async def _make_room(self, user: str) -> None:
        """Close one room that counts for ``user`` alone and that nobody uses (after its
        final checkpoint), so that they may open another.

        Raises:
            UserLimitExceeded: every room of theirs is in use.
        """
        held = self._held(user)
        idle = [e for e in held if e.users == 0 and e.room is not None and not e.closing]
        if not idle:
            raise UserLimitExceeded(
                f"{user} has {len(held)} documents open on this node, the most one user may"
            )
        entry = idle[0]  # the one opened first
        entry.closing = True  # from here on, open() waits for it to go
        entry.stop.set()
        await entry.closed.wait()

    async def _run_awareness_room(
        self, key: _PresenceKey, presence: _Presence, *, task_status: TaskStatus[None]
    ) -> None:
        name, _, user = key
        try:
            async with Room(f"{name}:{user}", max_message_size=self.settings.max_message_size,
                            log=self.log) as room:
                presence.room = room
                task_status.started()
                # Closing the room closes its connections.
                await _first(self._stopping, presence.stop)
        finally:
            presence.room = None
            if self._awareness_rooms.get(key) is presence:
                del self._awareness_rooms[key]

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


#: An awareness-only room's key: its name, and the site and name of its user.
_PresenceKey = tuple[str, str, str]


class _Presence:
    """One user's awareness-only room, while it has clients."""

    def __init__(self) -> None:
        self.room: Room | None = None
        #: Clients being served in it: the room closes when the last one leaves.
        self.clients = 0
        self.stop = anyio.Event()
