"""Room: one live CRDT document with its connected clients.

A room owns a pycrdt ``Doc`` and serves any number of channels (browser websockets, peer
links, in-process tests) with the y-websocket protocol. A room's work happens in two tasks:

- the *loop* takes every message that arrived (a batch), applies it to the document, and
  hands the batch's document updates and replies to
- the *committer*, which appends the updates to the node's durable log and waits for the
  commit (group commit: one write for the whole batch), and only then relays them to the
  other clients.

A keystroke alone skips both hand-offs (two turns of the event loop on its path): when the
loop is waiting with nothing queued and the message is not part of a burst, it is handled
where it arrived (the loop's work, done for it: nothing can come between), and when its
commit is written at once and no earlier batch waits for the committer, it is relayed there
too.

So an update is on disk before any client has seen it, and a client that received an update
can trust that a node crash will not take it back. The loop applies batch n + 1 while batch n
commits; batches are committed and relayed strictly in order.

Links to other nodes are the exception: the loop sends them a batch at once, while it
commits, because the other node makes each update durable itself before its own clients see
it. A crash of this node before the commit then loses nothing the mesh cannot give back (the
other node and the author both hold the update, and resync on reconnect), and an edit
crosses two sites with one commit on its path instead of two.

Consecutive document updates of one client in a batch are merged (``pycrdt.merge_updates``)
and applied as one: one transaction, one log row and one frame per receiver instead of one
per keystroke when a client sends faster than the room commits.

Presence (awareness) is handled by the room itself, not by pycrdt's ``Awareness``: each
client's state is stamped with the identity the node authenticated (name, CS3 user, site,
role), which a client cannot forge; a newcomer receives every state at once; a leaving
client's state is removed for everybody at once. Presence is bounded: a browser's connection
owns at most 4 client ids and 128 KiB of it (beyond, it is closed with
``AWARENESS_TOO_LARGE``), the room holds at most 4 MiB of it in all, what a newcomer
receives first (beyond, a new or grown state is dropped and its connection served on), and
a connection has at most one unsent answer to its presence queries.

Usage::

    async with Room("json:notebook:<id>", updatelog=log) as room:
        await room.serve(channel, identity, writable=True)   # until the channel closes
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pycrdt import Doc, get_update, merge_updates

from mesh_collab import metrics, protocol
from mesh_collab.channel import Channel, ChannelClosed, PushChannel
from mesh_collab.close_codes import CloseCode
from mesh_collab.errors import LocalStoreError, ProtocolError, RoomClosed
from mesh_collab.origins import ClientOrigin, Origin
from mesh_collab.updatelog import Commit, UpdateLog

_ids = itertools.count(1)

#: Most updates merged into one. ``merge_updates`` is superlinear: measured on a real trace,
#: 0.75 us per update for runs of 128, 1.9 us for 512 (applying them one by one: 2.2 us).
_MAX_MERGE = 128
#: A message that comes within this many seconds of the room's previous one is part of a
#: burst: it waits for the loop, which merges what gathered (see :meth:`Room._receive`).
_BURST = 0.001
#: Seconds a save request forwarded to the primary waits for its answer.
FORWARDED_SAVE_TIMEOUT = 30.0
#: Seconds before updates whose commit failed are written again (if nothing else came).
COMMIT_RETRY = 1.0
#: Seconds between renewals of the node's own awareness state. Yjs clients drop a remote
#: state that was not renewed for 30 s (y-protocols' outdatedTimeout), as they renew their
#: own every 15 s.
STATUS_RENEWAL = 15.0
#: A presence color: a CSS hex color (#rgb, #rgba, #rrggbb, #rrggbbaa). Anything else is
#: dropped, whether a browser sends it in its awareness or a user sets it in /api/me.
_COLOR = re.compile(r"#[0-9a-fA-F]{3,8}")


def valid_color(value: object) -> bool:
    """Whether ``value`` is a presence color the node passes on (a CSS hex color)."""
    return isinstance(value, str) and _COLOR.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is behind a connection, as the node authenticated them."""

    username: str
    display_name: str = ""
    site: str = ""
    user_id: str = ""
    color: str = ""

    def awareness_user(self, *, writable: bool, color: object = None) -> dict[str, Any]:
        """The ``user`` field the node puts into this client's awareness state."""
        name = self.display_name or self.username
        initials = "".join(part[0] for part in name.split()[:2]).upper() or "?"
        return {
            "username": self.username,
            "name": name,
            # The stock frontend labels remote cursors with display_name: show the site.
            "display_name": f"{name} · {self.site}" if self.site else name,
            "initials": initials,
            "color": next((c for c in (self.color, color) if valid_color(c)), None),
            "avatar_url": None,
            "site": self.site,
            "cs3_user": self.user_id,
            "role": "editor" if writable else "viewer",
        }


#: Decides what a user a linking node introduces may do in the room: "editor", "viewer",
#: or None (nothing: their updates and presence are dropped).
Admit = Callable[[str, Mapping[str, Any]], Awaitable[str | None]]
#: Users one link may introduce (each costs the serving node a check).
MAX_PEER_USERS = 256


@dataclass(eq=False)
class Peer:
    """What makes a connection a link to another node rather than a browser.

    The side that serves a link (the document's home, or the primary of the site) gets an
    ``admit``: the link acts only for the users it introduced and ``admit`` allowed
    (federation/protocol.py). The linking side (a replica) takes the home's document as it
    comes (no ``admit``), and introduces its own users with what ``introduce`` gives.

    Attributes:
        site: the other node's site; every presence it relays is stamped with it.
        admit: checks a user the other node introduces (None: a trusted home).
        introduce: the fields we send when introducing a user of ours to the other node
            (None: we introduce nobody).
        roles: the introduced users and what ``admit`` said ("editor", "viewer", "").
    """

    site: str
    admit: Admit | None = None
    introduce: Callable[[str], Mapping[str, str]] | None = None
    roles: dict[str, str] = field(default_factory=dict)
    #: Our users introduced to the other node so far.
    introduced: set[str] = field(default_factory=set)

    def can_write(self, user: str) -> bool:
        """Whether an update this user made on the other node may be applied here."""
        return self.admit is None or self.roles.get(user) == "editor"

    def may_see(self, user: str) -> bool:
        """Whether this user's presence, relayed by the other node, is shown here."""
        return self.admit is None or self.roles.get(user) in ("editor", "viewer")

    @property
    def may_sync(self) -> bool:
        """Whether a resync (sync step 2, not one user's) may be applied: some user the
        link acts for may edit."""
        return self.admit is None or "editor" in self.roles.values()


@dataclass(eq=False)
class Connection:
    """One client of a room (a browser, or a link to another node when ``peer`` is set)."""

    channel: Channel
    identity: Identity
    writable: bool
    outbox: MemoryObjectSendStream[bytes]
    id: int = field(default_factory=lambda: next(_ids))
    awareness_ids: set[int] = field(default_factory=set)
    #: Bytes of the presence states it owns (encoded as relayed).
    awareness_bytes: int = 0
    #: The answer to its presence query (or the greeting) while not yet sent: a repeated
    #: query gets no second one (the presence updates queued after it keep it current).
    presence_pending: bytes | None = None
    #: A state of it was dropped because the room's presence is full (logged once).
    presence_dropped: bool = False
    close_code: int | None = None
    close_reason: str = ""
    refused_updates: int = 0
    scope: anyio.CancelScope | None = None
    peer: Peer | None = None
    #: The user the other node says made the updates it sends next (peers only).
    author: str = ""
    #: The author we last announced to this peer.
    announced: str = ""
    #: Set once the other side answered our sync request (its sync step 2 was processed).
    synced: anyio.Event | None = None
    #: Messages in the outbox or being sent by the writer task, and their bytes.
    queued: int = 0
    queued_bytes: int = 0
    #: The answer to its sync step 1 while not yet sent: a repeated request gets no second
    #: one (the queued answer and the updates queued after it bring it up to date), so a
    #: client that asks and never reads cannot fill the node's memory with copies.
    reply_pending: bytes | None = None
    #: Set once we answered its sync step 1 (sent it our state). Before that it gets no
    #: document update: one would refer to items it does not have yet, and the answer
    #: carries every update applied until then anyway.
    answered: bool = False
    #: A save request of this connection is being answered (at most one at a time).
    saving: bool = False

    @property
    def author_name(self) -> str:
        """Who makes the updates arriving on this connection."""
        return self.author if self.peer is not None else self.identity.username

    @property
    def origin(self) -> ClientOrigin:
        return ClientOrigin(self.id)

    def kill(self, code: int, reason: str) -> None:
        """Close this connection with ``code`` (callable from the room loop: never waits)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.end()

    def end(self) -> None:
        """Stop serving this connection; :meth:`Room.serve` then closes its channel."""
        self.outbox.close()
        if self.scope is not None:
            self.scope.cancel()


@dataclass(frozen=True, slots=True)
class _Out:
    """A message to send (to clients after the commit, to other nodes at once): to
    ``target``, or to all but ``exclude``."""

    message: bytes
    target: Connection | None = None
    exclude: Connection | None = None
    author: str = ""
    local_only: bool = False
    #: A document update (held back from connections whose sync step 1 is not answered).
    update: bool = False


@dataclass(frozen=True, slots=True)
class _Msg:
    conn: Connection
    frame: protocol.Frame


@dataclass(frozen=True, slots=True)
class _Join:
    conn: Connection


@dataclass(frozen=True, slots=True)
class _Leave:
    conn: Connection


@dataclass(eq=False)
class _Edit:
    fn: Callable[[Doc], Any]
    origin: Origin
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Forwarded:
    """A save request this room forwarded to the node it is linked to."""

    id: int
    status: str = "failed"
    done: anyio.Event = field(default_factory=anyio.Event)


def _save_answer(conn: Connection, request_id: int, status: str) -> bytes:
    """The answer to a save request, in the asker's language: a browser's raw JSON reply, or
    a control message to another node."""
    if conn.peer is None:
        return protocol.save_reply(request_id, status)
    return protocol.control({"type": "saved", "id": request_id, "status": status})


def _request_id(message: dict[str, Any]) -> int:
    value = message.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ProtocolError("a save request needs an integer id")
    return value


@dataclass(eq=False)
class _Compact:
    lineage: str
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch:
    """What the loop hands the committer: a batch's updates and everything it sends."""

    updates: list[tuple[bytes, Origin | None]]
    commit: Commit | None
    outgoing: list[_Out]
    edits: list[_Edit]
    #: Messages of earlier batches whose commit failed, relayed with this one once stored.
    held: list[_Out] = field(default_factory=list)
    relayed: anyio.Event = field(default_factory=anyio.Event)
    arrived: float = 0.0  # time.monotonic() when its oldest message came in (metrics)


async def _send(stream: MemoryObjectSendStream[Any], item: Any) -> None:
    """Hand ``item`` over without yielding to the event loop when the stream has room (an
    ``await send`` costs a loop iteration either way, ~0.1 ms on every keystroke's path)."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


def _is_update(item: Any) -> bool:
    return isinstance(item, _Msg) and item.frame.kind is protocol.Kind.UPDATE


@dataclass(frozen=True, slots=True)
class RoomStats:
    """Counters of a room, for tests, benchmarks and logs."""

    clients: int
    updates: int
    batches: int


class Room(anyio.AsyncContextManagerMixin):
    """One live document and its clients.

    Args:
        name: the room name, e.g. ``"json:notebook:<resource id>"``.
        doc: the document to serve (loaded by the caller); a new empty one if None.
        updatelog: the node's durable log; None keeps updates in memory only (awareness-only
            rooms, tests).
        max_message_size: frames larger than this close their connection (bytes).
        outbox_size: messages queued for one client before it counts as too slow.
        outbox_bytes: bytes queued for one client before it counts as too slow (one message
            larger than this is still sent to a client with nothing queued).
        max_awareness_ids: presence client ids one browser's connection may own (a browser
            uses one per document); one more closes it with ``AWARENESS_TOO_LARGE``.
        max_awareness_bytes: bytes of presence one browser's connection may hold (a cursor
            and a user: about 1 KB); more closes it with ``AWARENESS_TOO_LARGE``.
        max_room_awareness_bytes: bytes of presence the room holds in all, what a newcomer
            receives first (links to other nodes carry their site's users and count only
            here). A state that would grow it past this is dropped, and logged once per
            connection, which stays open.
        log: the logger.
    """

    def __init__(
        self,
        name: str,
        *,
        doc: Doc | None = None,
        updatelog: UpdateLog | None = None,
        max_message_size: int = 16 * 2**20,
        outbox_size: int = 4096,
        outbox_bytes: int = 64 * 2**20,
        max_awareness_ids: int = 4,
        max_awareness_bytes: int = 128 * 2**10,
        max_room_awareness_bytes: int = 4 * 2**20,
        log: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.updatelog = updatelog
        self.max_message_size = max_message_size
        self.outbox_size = outbox_size
        self.outbox_bytes = outbox_bytes
        self.max_awareness_ids = max_awareness_ids
        self.max_awareness_bytes = max_awareness_bytes
        self.max_room_awareness_bytes = max_room_awareness_bytes
        self.log = log or logging.getLogger(__name__)
        self._doc = doc if doc is not None else Doc()
        self._subscription = self._doc.observe(self._on_transaction)
        self._connections: dict[int, Connection] = {}
        # Awareness: client id -> (clock, state, encoded state); owner: client id ->
        # connection id; the bytes of every encoded state; the frame of all states (for
        # clients, for links), built once after each change.
        self._awareness: dict[int, tuple[int, dict[str, Any], bytes]] = {}
        self._owner: dict[int, int] = {}
        self._awareness_bytes = 0
        self._presence_frames: dict[bool, bytes] = {}
        self._status: dict[str, Any] = {}
        self._status_clock = 0
        self._inbox_send, self._inbox = anyio.create_memory_object_stream[Any](1024)
        self._origin: Origin | None = None
        self._pending_updates: list[tuple[bytes, Origin | None]] = []
        self._outgoing: list[_Out] = []
        # Updates whose commit failed, and what their batches were to send: written again
        # with the next commit, relayed only once stored (durable before relayed).
        self._unstored: list[tuple[bytes, Origin | None]] = []
        self._held: list[_Out] = []
        self._retry_scheduled = False
        self._tainted = False
        #: Users of this node who edited the document since the room opened.
        self._authors: set[str] = set()
        self._listeners: list[Callable[[list[tuple[bytes, Origin | None]]], None]] = []
        self.closing = False
        #: Set when the room loop stopped: a waiter whose item it never took is told.
        self._stopped = anyio.Event()
        self._accept_edits = True
        self._updates = 0
        self._batches = 0
        self._committing = 0  # batches handed to the committer, not relayed yet
        self._last_message = 0.0  # time.monotonic() when the last message came in
        self._arrived = 0.0  # time.monotonic() of the oldest message not in a batch yet
        # One batch may wait while another commits: the loop applies while the log writes.
        self._to_commit, self._batches_to_commit = anyio.create_memory_object_stream[_Batch](1)
        self.empty = anyio.Event()
        #: Answers a save request (a browser's Ctrl+S, or another node's forwarded one):
        #: returns "success", "skipped" or "failed". None: every request is "skipped".
        self.on_save: Callable[[], Awaitable[str]] | None = None
        self._tg: TaskGroup | None = None
        self._save_ids = itertools.count(1)
        self._forwarded: dict[int, _Forwarded] = {}

    # --- public API ----------------------------------------------------------------------

    @property
    def doc(self) -> Doc:
        """The live document. It may be replaced (after a bad update was purged): read it
        from the room each time rather than keeping it."""
        return self._doc

    @property
    def clients(self) -> list[Connection]:
        """The connected clients."""
        return list(self._connections.values())

    @property
    def stats(self) -> RoomStats:
        return RoomStats(len(self._connections), self._updates, self._batches)

    @property
    def awareness_bytes(self) -> int:
        """Bytes of presence states the room holds (at most ``max_room_awareness_bytes``)."""
        return self._awareness_bytes

    def add_listener(
        self, fn: Callable[[list[tuple[bytes, Origin | None]]], None]
    ) -> Callable[[], None]:
        """Call ``fn(updates)`` after every batch of durable changes; returns an unsubscriber.

        ``updates`` is a list of ``(update, origin)``. The listener runs in the room loop:
        it must be quick and must not await.
        """
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def set_status(self, **fields: Any) -> None:
        """Publish room state (lock, primary, read-only, last checkpoint) to every client.

        It travels as the node's own awareness state under the key ``"mesh"``; the stock
        JupyterLab frontend ignores states without a ``user``, mesh_collab's shows them.
        """
        self._status.update(fields)
        self._status_clock += 1
        self._broadcast_status()
        self._wake()

    def _wake(self) -> None:
        """Make the loop run a batch soon (to flush messages queued outside it)."""
        try:
            self._inbox_send.send_nowait(_Edit(lambda doc: None, origin=None))  # type: ignore[arg-type]
        except anyio.WouldBlock:
            pass  # a full inbox runs a batch anyway
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the room is closed: nobody to tell

    @property
    def accept_edits(self) -> bool:
        """Whether document updates from clients are applied (False while another
        application holds the file's lock). Refused updates are dropped, not queued; when
        edits are accepted again, every writer is asked for what it has (a sync step 1), so
        edits typed meanwhile arrive then."""
        return self._accept_edits

    @accept_edits.setter
    def accept_edits(self, value: bool) -> None:
        if value and not self._accept_edits:
            self._outgoing.extend(
                _Out(protocol.sync_step1(self._doc.get_state()), target=conn)
                for conn in self._connections.values()
                if conn.writable
            )
            self._wake()
        self._accept_edits = value

    @property
    def status(self) -> dict[str, Any]:
        return dict(self._status)

    async def edit(self, fn: Callable[[Doc], Any], origin: Origin) -> Any:
        """Run ``fn(doc)`` in one transaction in the room loop; its changes are logged and
        relayed like a client's. Returns what ``fn`` returned.

        Raises:
            RoomClosed: the room is closing.
            Exception: whatever ``fn`` raised (the transaction is still committed).
        """
        if self.closing:
            raise RoomClosed(self.name)
        edit = _Edit(fn, origin)
        if not await self._submit(edit, edit.done):
            raise RoomClosed(self.name)
        if edit.error is not None:
            raise edit.error
        return edit.result

    async def forward_save(self) -> str:
        """Ask the node this room is linked to (the primary) to save, once everything queued
        here so far has reached it; return its answer ("failed" when no link answers within
        :data:`FORWARDED_SAVE_TIMEOUT` seconds)."""
        await self.flush()
        links = [conn for conn in self._connections.values() if conn.peer is not None]
        if not links:
            return "failed"
        request = _Forwarded(next(self._save_ids))
        self._forwarded[request.id] = request
        try:
            for conn in links:
                self._deliver(conn, protocol.control({"type": "save", "id": request.id}))
            with anyio.move_on_after(FORWARDED_SAVE_TIMEOUT):
                await request.done.wait()
        finally:
            del self._forwarded[request.id]
        return request.status

    async def _answer_save(self, conn: Connection, request_id: int) -> None:
        """Run a save request and answer it on the connection that asked."""
        status = "skipped"
        if self.on_save is not None and conn.writable and self._peer_allows(
            conn, protocol.Kind.SYNC_STEP2
        ):
            try:
                status = await self.on_save()
            except Exception:
                # A failed save is answered, not raised: the room and the client carry on.
                self.log.exception("save request failed room=%s", self.name)
                status = "failed"
        conn.saving = False
        self._deliver(conn, _save_answer(conn, request_id, status))

    async def serve(
        self,
        channel: Channel,
        identity: Identity,
        *,
        writable: bool = True,
        peer: Peer | None = None,
        synced: anyio.Event | None = None,
    ) -> None:
        """Serve one client until its channel closes (or the room closes it).

        A viewer (``writable=False``) receives everything but its document updates are
        dropped: they never reach the document, the log, storage or anyone else. With
        ``peer``, the channel is a link to another node (see :class:`Peer`). ``synced`` is
        set once the other side's answer to our first sync request has been processed.
        """
        if self.closing:
            await channel.close(CloseCode.GOING_AWAY, "room closing")
            return
        outbox_send, outbox = anyio.create_memory_object_stream[bytes](self.outbox_size)
        conn = Connection(channel, identity, writable, outbox_send, peer=peer, synced=synced)
        try:
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                await self._inbox_send.send(_Join(conn))
                tg.start_soon(self._write, conn, outbox)
                tg.start_soon(self._read, conn)
        finally:
            conn.outbox.close()
            with anyio.move_on_after(5, shield=True):
                try:
                    await self._inbox_send.send(_Leave(conn))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the room loop is gone: there is nobody left to tell
                await channel.close(conn.close_code or CloseCode.NORMAL, conn.close_reason)

    async def _write(self, conn: Connection, outbox: MemoryObjectReceiveStream[bytes]) -> None:
        async with outbox:
            try:
                async for message in outbox:
                    await conn.channel.send(message)
                    conn.queued -= 1
                    conn.queued_bytes -= len(message)
                    self._sent(conn, message)
            except ChannelClosed:
                pass  # the client went away; the connection ends below
        conn.end()

    # --- the loop --------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Room]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._loop)
            tg.start_soon(self._renew_status)
            try:
                yield self
            finally:
                self.closing = True
                for conn in list(self._connections.values()):
                    conn.kill(CloseCode.GOING_AWAY, "room closed")
                with anyio.move_on_after(5, shield=True):
                    await self.flush()
                tg.cancel_scope.cancel()
        self._doc.unobserve(self._subscription)

    async def _renew_status(self) -> None:
        """Re-send the node's awareness state before clients take it for gone."""
        while True:
            await anyio.sleep(STATUS_RENEWAL)
            if self._status and self._connections:
                self._status_clock += 1
                self._broadcast_status()
                self._wake()

    async def compact(self, lineage: str) -> None:
        """Replace the room's rows in the update log by one encoded state of the document.

        It runs in the room loop between two batches, once every update applied so far is
        committed, so no update can slip between the state and the deletion of the rows it
        covers.

        Raises:
            LocalStoreError: the log could not be compacted (it keeps its rows).
            RoomClosed: the room loop stopped first.
        """
        if self.updatelog is None:
            return
        item = _Compact(lineage)
        if not await self._submit(item, item.done):
            raise RoomClosed(self.name)
        if item.error is not None:
            raise item.error

    async def _compact(self, item: _Compact) -> None:
        assert self.updatelog is not None
        try:
            await self.updatelog.reset(self.name, item.lineage, self._doc.get_update())
        except LocalStoreError as exc:
            item.error = exc
        item.done.set()

    async def flush(self) -> None:
        """Wait until every message queued so far is processed, durable and relayed.

        Returns at once when the room's loop has already stopped (nothing more will run).
        """
        barrier = _Edit(lambda doc: None, origin=None)  # type: ignore[arg-type]
        await self._submit(barrier, barrier.done)

    async def _read(self, conn: Connection) -> None:
        try:
            await self._read_frames(conn)
        finally:
            conn.end()

    async def _read_frames(self, conn: Connection) -> None:
        receive = partial(self._receive, conn)
        try:
            if isinstance(conn.channel, PushChannel):
                await conn.channel.pump(receive)
                return
            while conn.close_code is None:
                pending = receive(await conn.channel.recv())
                if pending is not None:
                    await pending
        except ChannelClosed:
            return

    def _receive(self, conn: Connection, message: bytes) -> Awaitable[None] | None:
        """Check one incoming message and hand it to the loop; an awaitable when the loop's
        inbox is full (the caller awaits it before reading the next message)."""
        if conn.close_code is not None:
            return None  # closing: what follows is dropped
        metrics.COUNTS.received_bytes += len(message)
        if len(message) > self.max_message_size:
            conn.kill(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return None
        try:
            frame = protocol.parse(message)
        except ProtocolError as exc:
            self.log.info("closing client room=%s reason=%s", self.name, exc)
            conn.kill(CloseCode.RESET_CONNECTION, str(exc)[:120])
            return None
        if conn.peer is not None and conn.peer.admit is not None and (
            frame.kind is protocol.Kind.CONTROL
        ):
            try:
                message = protocol.decode_control(frame.payload)
            except ProtocolError as exc:
                conn.kill(CloseCode.RESET_CONNECTION, str(exc)[:120])
                return None
            if message["type"] == "user":
                return self._admit(conn, message)
        item = _Msg(conn, frame)
        now = time.monotonic()
        alone, self._last_message = now - self._last_message > _BURST, now
        metrics.COUNTS.received[frame.kind] += 1
        self._arrived = self._arrived or now
        if alone and self._idle():
            # Do the loop's work here and now, a turn of the event loop sooner: the loop
            # waits, and nothing can come between (the committer holds nothing either). Not
            # in a burst, where the loop's merging of what gathered is worth more.
            done = self._process([item])
            if not self._finished_at_once(done):
                self._committing += 1
                self._to_commit.send_nowait(done)
            return None
        try:
            self._inbox_send.send_nowait(item)
        except anyio.WouldBlock:
            return self._send_later(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            conn.end()  # the room's loop is gone: the room is closing
        return None

    async def _send_later(self, item: _Msg) -> None:
        try:
            await self._inbox_send.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            item.conn.end()

    async def _loop(self) -> None:
        try:
            await self._run_loop()
        finally:
            self._stopped.set()

    async def _submit(self, item: Any, done: anyio.Event) -> bool:
        """Queue ``item`` for the room loop and wait until it is handled: True, or False
        when the loop stopped first (the item will never be handled)."""
        try:
            await self._inbox_send.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        if not done.is_set():
            async with anyio.create_task_group() as tg:

                async def wait(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(wait, done)
                tg.start_soon(wait, self._stopped)
        return done.is_set()

    async def _run_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._committer, self._batches_to_commit)
            async with self._inbox, self._to_commit:
                while True:
                    first = await self._inbox.receive()
                    batch = [first]
                    while len(batch) < 512:
                        try:
                            batch.append(self._inbox.receive_nowait())
                        except anyio.WouldBlock:
                            break
                    done = self._process(batch)
                    if not self._finished_at_once(done):
                        self._committing += 1
                        try:
                            await _send(self._to_commit, done)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            # The committer was cancelled first: the room is closing. (anyio
                            # cancels a task only while it waits, and it had just woken.)
                            return
                    compacts = [item for item in batch if isinstance(item, _Compact)]
                    if compacts:
                        # Between two batches, with every update so far committed: the
                        # state then covers exactly the rows it replaces.
                        await done.relayed.wait()
                        for item in compacts:
                            await self._compact(item)

    def _idle(self) -> bool:
        """The loop waits for its next message, with nothing queued before it and nothing
        in the committer's hands."""
        inbox = self._inbox.statistics()
        return (inbox.tasks_waiting_receive > 0 and inbox.current_buffer_used == 0
                and not self._committing)

    def _process(self, batch: list[Any]) -> _Batch:
        """Handle a batch, relay it to the links, and start its commit."""
        self._handle_batch(batch)
        if self._tainted:
            self._purge()
        self._relay(self._outgoing, peers=True)
        updates = self._unstored + self._pending_updates
        commit = (self.updatelog.start_append(self.name, [u for u, _ in updates])
                  if updates and self.updatelog is not None else None)
        done = _Batch(
            updates, commit, self._outgoing, [item for item in batch if isinstance(item, _Edit)],
            held=self._held,
        )
        self._pending_updates, self._outgoing = [], []
        self._unstored, self._held = [], []
        done.arrived, self._arrived = self._arrived, 0.0
        return done

    def _finished_at_once(self, done: _Batch) -> bool:
        """Relay ``done`` now if its commit is written and no earlier batch waits for the
        committer; else it is the committer's."""
        if self._committing or (done.commit is not None and not done.commit.done.is_set()):
            return False
        self._finish(done)
        return True

    async def _committer(self, batches: MemoryObjectReceiveStream[_Batch]) -> None:
        async with batches:
            async for batch in batches:
                if batch.commit is not None:
                    with contextlib.suppress(LocalStoreError):  # _finish reports it
                        await batch.commit.wait()
                self._committing -= 1
                self._finish(batch)

    def _handle_batch(self, batch: list[Any]) -> None:
        """Handle a batch in order; a run of one client's updates is applied as one."""
        i = 0
        while i < len(batch):
            item = batch[i]
            j = i + 1
            if _is_update(item):
                while (j < len(batch) and j - i < _MAX_MERGE and _is_update(batch[j])
                       and batch[j].conn is item.conn):
                    j += 1
            if j - i > 1:
                self._handle_updates(item.conn, [msg.frame.payload for msg in batch[i:j]])
            else:
                self._handle(item)
            i = j

    def _handle_updates(self, conn: Connection, updates: list[bytes]) -> None:
        if conn.id not in self._connections:
            return
        if not (conn.writable and self._accept_edits
                and self._peer_allows(conn, protocol.Kind.UPDATE)):
            conn.refused_updates += len(updates)  # refused without being decoded
            return
        try:
            merged = merge_updates(*updates)
        except ValueError:
            # One of them is undecodable: handle them one by one, which names the culprit
            # and keeps what came before it.
            for update in updates:
                self._handle(_Msg(conn, protocol.Frame(protocol.Kind.UPDATE, update)))
            return
        self._handle(_Msg(conn, protocol.Frame(protocol.Kind.UPDATE, merged)))

    def _handle(self, item: Any) -> None:
        if isinstance(item, _Msg):
            if item.conn.id in self._connections:
                try:
                    self._handle_frame(item.conn, item.frame)
                except ProtocolError as exc:
                    self.log.info("closing client room=%s reason=%s", self.name, exc)
                    item.conn.kill(CloseCode.RESET_CONNECTION, str(exc)[:120])
                except Exception:
                    # The per-connection boundary: whatever one client's message breaks,
                    # only that client is dropped; the room serves everyone else.
                    self.log.exception("message failed room=%s", self.name)
                    item.conn.kill(CloseCode.RESET_CONNECTION, "message could not be handled")
        elif isinstance(item, _Join):
            self._join(item.conn)
        elif isinstance(item, _Leave):
            self._leave(item.conn)
        elif isinstance(item, _Edit):
            if item.origin is None:
                return  # a barrier
            self._origin = item.origin
            try:
                with self._doc.transaction(origin=item.origin):
                    item.result = item.fn(self._doc)
            except Exception as exc:  # handed back to the caller of edit()
                item.error = exc
            finally:
                self._origin = None

    def _finish(self, batch: _Batch) -> None:
        """Relay a batch whose commit has ended; tell the listeners and the editors."""
        updates = batch.updates
        if batch.commit is not None and batch.commit.error is not None:
            # Not durable: relay nothing of it (a client that saw an update must find it
            # after a crash). The document and the next checkpoint hold the updates; the
            # next commit writes them again, and its success relays them.
            self.log.error("update log failed room=%s updates=%d", self.name, len(updates))
            self._unstored[:0] = updates
            self._held[:0] = batch.held + batch.outgoing
            self._schedule_retry()
        else:
            self._relay(batch.held, peers=False)
            self._relay(batch.outgoing, peers=False)
        self._batches += 1
        self._updates += len(updates)
        metrics.relayed(batch.arrived, len(updates))
        if updates:
            for listener in list(self._listeners):
                listener(updates)
        for edit in batch.edits:
            edit.done.set()
        batch.relayed.set()

    def _schedule_retry(self) -> None:
        """Commit the unstored updates again soon, even if nothing else comes."""
        if self._retry_scheduled or self._tg is None:
            return
        self._retry_scheduled = True

        async def retry() -> None:
            await anyio.sleep(COMMIT_RETRY)
            self._retry_scheduled = False
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError,
                                     anyio.ClosedResourceError):
                self._inbox_send.send_nowait(_Edit(lambda doc: None, origin=None))  # type: ignore[arg-type]

        self._tg.start_soon(retry)

    def _relay(self, outgoing: list[_Out], *, peers: bool) -> None:
        """Queue ``outgoing`` for the links to other nodes (``peers``) or for the clients."""
        for out in outgoing:
            if peers and out.local_only:
                continue
            targets = [out.target] if out.target is not None else self._connections.values()
            for conn in list(targets):
                if (conn.peer is not None) != peers:
                    continue
                if conn is out.exclude or conn.close_code is not None:
                    continue
                if out.update and not conn.answered:
                    continue  # its sync answer, still to come, carries this update
                if peers and out.author and out.author != conn.announced:
                    # Tell the other node whose edit follows: it checks that user's rights.
                    conn.announced = out.author
                    self._introduce(conn, out.author, at_once=True)
                    self._deliver(conn, protocol.control({"type": "author", "user": out.author}))
                self._deliver(conn, out.message)

    def _deliver(self, conn: Connection, message: bytes) -> None:
        """Send ``message`` at once when nothing is queued before it and the channel takes it
        (a task switch less per receiver on every keystroke); else queue it for the writer."""
        metrics.COUNTS.sent_bytes += len(message)
        try:
            if conn.queued == 0 and conn.channel.send_nowait(message):
                self._sent(conn, message)
                return
        except ChannelClosed:
            return  # the connection is ending
        if conn.queued and conn.queued_bytes + len(message) > self.outbox_bytes:
            conn.kill(CloseCode.TOO_SLOW, "client too slow")
            return
        try:
            conn.outbox.send_nowait(message)
            conn.queued += 1
            conn.queued_bytes += len(message)
        except anyio.WouldBlock:
            conn.kill(CloseCode.TOO_SLOW, "client too slow")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the connection is ending

    @staticmethod
    def _sent(conn: Connection, message: bytes) -> None:
        """``message`` left for ``conn``: a pending answer of it is pending no more."""
        if message is conn.reply_pending:
            conn.reply_pending = None
        elif message is conn.presence_pending:
            conn.presence_pending = None

    # --- document sync ---------------------------------------------------------------------

    def _on_transaction(self, event: Any) -> None:
        update = event.update
        if len(update) <= 2:  # b"\x00\x00": nothing changed
            return
        origin = self._origin
        self._pending_updates.append((update, origin))
        exclude = None
        author = ""
        if isinstance(origin, ClientOrigin):
            exclude = self._connections.get(origin.connection)
            author = exclude.author_name if exclude is not None else ""
            if exclude is not None and exclude.peer is None and len(self._authors) < 4096:
                self._authors.add(author)  # introduced to links that come later
        self._outgoing.append(
            _Out(protocol.update(update), exclude=exclude, author=author, update=True)
        )
        if origin is None:
            # Not the loop's own transaction (each of those has an origin): code that edits
            # the document directly, on the event loop's thread but outside the loop, like
            # jupyter-server-nbmodel writing a kernel's outputs (jupyter/ydoc_compat.py).
            # Queued above like any update; wake the loop so that its next batch commits
            # it to the log, then relays it, promptly.
            self._wake()

    def _broadcast(self, exclude: Connection | None, message: bytes) -> None:
        self._outgoing.append(_Out(message, exclude=exclude))

    def _send(self, conn: Connection, message: bytes) -> None:
        self._outgoing.append(_Out(message, target=conn))

    def _handle_frame(self, conn: Connection, frame: protocol.Frame) -> None:
        kind = frame.kind
        if kind is protocol.Kind.SYNC_STEP1:
            if conn.reply_pending is not None:
                return
            try:
                missing = self._doc.get_update(frame.payload)
            except ValueError as exc:
                raise ProtocolError("bad state vector") from exc
            # Ahead of the updates still to be relayed: it covers them, and they may refer to
            # items only it brings.
            conn.reply_pending = reply = protocol.sync_step2(missing)
            self._outgoing.insert(0, _Out(reply, target=conn))
            conn.answered = True
            if conn.peer is not None:
                metrics.COUNTS.resync_bytes["sent"] += len(missing)
        elif kind in (protocol.Kind.SYNC_STEP2, protocol.Kind.UPDATE):
            if kind is protocol.Kind.SYNC_STEP2 and conn.synced is not None:
                conn.synced.set()
            if kind is protocol.Kind.SYNC_STEP2 and conn.peer is not None:
                metrics.COUNTS.resync_bytes["received"] += len(frame.payload)
            if not (conn.writable and self._accept_edits and self._peer_allows(conn, kind)):
                conn.refused_updates += 1
                return
            self._apply(conn, frame.payload)
        elif kind is protocol.Kind.AWARENESS:
            self._awareness_update(conn, protocol.decode_awareness(frame.payload))
        elif kind is protocol.Kind.QUERY_AWARENESS:
            self._answer_presence(conn)
        elif kind is protocol.Kind.SAVE:
            if conn.peer is not None:
                raise ProtocolError("save requests between nodes are control messages")
            self._start_save(conn, frame.request_id)
        elif kind is protocol.Kind.CONTROL:
            if conn.peer is None:
                raise ProtocolError("control messages are for node links only")
            message = protocol.decode_control(frame.payload)
            if message["type"] == "author":
                conn.author = str(message.get("user", ""))[:256]
            elif message["type"] == "save":
                self._start_save(conn, _request_id(message))
            elif message["type"] == "saved":
                forwarded = self._forwarded.get(_request_id(message))
                if forwarded is not None:
                    forwarded.status = str(message.get("status", "failed"))[:16]
                    forwarded.done.set()

    def _start_save(self, conn: Connection, request_id: int) -> None:
        if self._tg is None or self.closing or conn.saving:
            # One save at a time per connection ("skipped": one is in progress), so that a
            # flood of requests costs nothing but their answers.
            self._send(conn, _save_answer(conn, request_id, "skipped"))
            return
        conn.saving = True
        self._tg.start_soon(self._answer_save, conn, request_id)

    @staticmethod
    def _peer_allows(conn: Connection, kind: protocol.Kind) -> bool:
        """A link's update is applied only if its author may edit (checked on this node)."""
        if conn.peer is None:
            return True
        if kind is protocol.Kind.UPDATE and conn.author:
            return conn.peer.can_write(conn.author)
        return conn.peer.may_sync

    def _apply(self, conn: Connection, update: bytes) -> None:
        self._origin = conn.origin
        try:
            with self._doc.transaction(origin=conn.origin):
                self._doc.apply_update(update)
        except ValueError as exc:
            raise ProtocolError("undecodable update") from exc
        finally:
            self._origin = None
        # Structs whose dependencies the document lacks stay pending inside it, and would
        # surface later; refuse them and purge them from the document.
        left = get_update(update, self._doc.get_state())
        if protocol.update_struct_count(left) > 0:
            self._tainted = True
            raise ProtocolError("update refers to unknown items")

    def _purge(self) -> None:
        """Replace the document by a copy without pending structs."""
        self._tainted = False
        clean = Doc()
        clean.apply_update(self._doc.get_update())
        self._doc.unobserve(self._subscription)
        self._doc = clean
        self._subscription = clean.observe(self._on_transaction)
        self._presence_frames.clear()  # the node's own state has the new client id
        self.log.warning("purged unknown items from room=%s", self.name)

    # --- presence --------------------------------------------------------------------------

    def _status_entries(self) -> list[protocol.AwarenessEntry]:
        state = {"mesh": self._status}
        return [protocol.AwarenessEntry(self._doc.client_id, self._status_clock, state)]

    def _status_frame(self) -> bytes:
        return protocol.encode_awareness(self._status_entries())

    def _broadcast_status(self) -> None:
        # The node's own state is for its own clients: another node has its own.
        self._presence_frames.clear()
        self._outgoing.append(_Out(self._status_frame(), local_only=True))

    def _all_awareness(self, *, for_peer: bool = False) -> bytes:
        """Every state in one frame: built once after a change, then the same bytes for
        every newcomer and query (one copy in memory, however many outboxes hold it)."""
        frame = self._presence_frames.get(for_peer)
        if frame is None:
            entries = [(cid, clock, raw) for cid, (clock, _, raw) in self._awareness.items()]
            if self._status and not for_peer:
                (status,) = self._status_entries()
                entries.append(
                    (status.client_id, status.clock, protocol.encode_state(status.state))
                )
            frame = self._presence_frames[for_peer] = protocol.encode_awareness_states(entries)
        return frame

    def _answer_presence(self, conn: Connection) -> None:
        """Send ``conn`` every state, unless an answer is already on its way to it (then the
        updates queued behind that one bring it up to date): a client that queries without
        reading costs one answer, not one per query."""
        if conn.presence_pending is None:
            conn.presence_pending = frame = self._all_awareness(for_peer=conn.peer is not None)
            self._send(conn, frame)

    def _join(self, conn: Connection) -> None:
        if self.closing:
            conn.kill(CloseCode.GOING_AWAY, "room closing")
            return
        self._connections[conn.id] = conn
        if conn.peer is None:
            for other in self._connections.values():
                if other.peer is not None:
                    self._introduce(other, conn.identity.username)
        else:
            # Before anything of theirs: the other node decides what each may do.
            for user in {c.identity.username for c in self._connections.values()
                         if c.peer is None} | self._authors:
                self._introduce(conn, user)
        # Ask for what the client has and we lack (its offline edits), and give it every
        # collaborator's presence at once rather than at their next heartbeat.
        self._send(conn, protocol.sync_step1(self._doc.get_state()))
        self._answer_presence(conn)
        self.empty = anyio.Event()

    def _introduce(self, conn: Connection, user: str, *, at_once: bool = False) -> None:
        """Introduce a user of ours to a link's other node, once (federation/protocol.py)."""
        peer = conn.peer
        if peer is None or peer.introduce is None or user in peer.introduced or not user:
            return
        peer.introduced.add(user)
        message = protocol.control({"type": "user", "user": user, **peer.introduce(user)})
        if at_once:
            self._deliver(conn, message)
        else:
            self._send(conn, message)

    async def _admit(self, conn: Connection, message: Mapping[str, Any]) -> None:
        """Decide what a user the other node introduces may do here (the link's reading
        waits meanwhile: nothing of theirs is taken before)."""
        peer = conn.peer
        assert peer is not None and peer.admit is not None
        user = message.get("user")
        if not isinstance(user, str) or not user or len(user) > 256:
            conn.kill(CloseCode.BAD_REQUEST, "bad user introduction")
            return
        if user in peer.roles:
            return
        if len(peer.roles) >= MAX_PEER_USERS:
            conn.kill(CloseCode.USER_LIMIT, "too many users on one link")
            return
        could_sync = peer.may_sync
        try:
            role = await peer.admit(user, message)
        except Exception:
            # The per-introduction boundary: a failed check admits nobody, the link goes on.
            self.log.exception("user check failed room=%s site=%s", self.name, peer.site)
            role = None
        peer.roles[user] = role or ""
        self.log.info("link user room=%s site=%s user=%s role=%s", self.name, peer.site,
                      user, role or "none")
        if peer.may_sync and not could_sync:
            # What it sent before it acted for an editor was refused: ask for it again.
            self._send(conn, protocol.sync_step1(self._doc.get_state()))
            self._wake()

    def _forget(self, cid: int) -> tuple[int, int]:
        """Remove client ``cid``'s state; return its clock and size."""
        clock, _, raw = self._awareness.pop(cid)
        del self._owner[cid]
        self._awareness_bytes -= len(raw)
        self._presence_frames.clear()
        return clock, len(raw)

    def _leave(self, conn: Connection) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        gone = [
            (cid, self._forget(cid)[0] + 1, b"null")
            for cid in conn.awareness_ids
            if self._owner.get(cid) == conn.id
        ]
        if gone:
            self._broadcast(conn, protocol.encode_awareness_states(gone))
        if not self._connections:
            self.empty.set()

    def _stamp(self, conn: Connection, state: dict[str, Any]) -> dict[str, Any] | None:
        """The state as relayed: the user the node authenticated (a link's users, stamped
        with its site); None to ignore it."""
        state = dict(state)
        claimed = state.get("user")
        if conn.peer is not None and conn.peer.admit is None:
            # From the document's home: its users and those it relays, as it stamped them.
            if not isinstance(claimed, dict):
                return None
            user = {**claimed, "site": conn.peer.site, "avatar_url": None}
            if "color" in user and not valid_color(user["color"]):
                user["color"] = None
            state["user"] = user
        elif conn.peer is not None:
            # A linking node speaks only for users it introduced; we label them ourselves.
            name = claimed.get("username") if isinstance(claimed, dict) else None
            if not isinstance(name, str) or not conn.peer.may_see(name):
                return None
            assert isinstance(claimed, dict)
            shown = claimed.get("name")
            identity = Identity(name, display_name=str(shown)[:128] if shown else "",
                                site=conn.peer.site)
            state["user"] = identity.awareness_user(
                writable=conn.peer.can_write(name), color=claimed.get("color"))
        else:
            color = claimed.get("color") if isinstance(claimed, dict) else None
            state["user"] = conn.identity.awareness_user(writable=conn.writable, color=color)
        return state

    def _awareness_update(self, conn: Connection, entries: list[protocol.AwarenessEntry]) -> None:
        accepted: list[tuple[int, int, bytes]] = []
        for entry in entries:
            cid = entry.client_id
            owner = self._owner.get(cid)
            if cid == self._doc.client_id or (owner is not None and owner != conn.id):
                continue  # nobody speaks for the node or for another connection's client
            if entry.state is None:
                if cid in self._awareness:
                    conn.awareness_bytes -= self._forget(cid)[1]
                    conn.awareness_ids.discard(cid)
                    accepted.append((cid, entry.clock, b"null"))
                continue
            state = self._stamp(conn, entry.state)
            if state is None:
                continue
            raw = protocol.encode_state(state)
            held = self._awareness.get(cid)
            growth = len(raw) - (len(held[2]) if held is not None else 0)
            if conn.peer is None and (
                (held is None and len(conn.awareness_ids) >= self.max_awareness_ids)
                or conn.awareness_bytes + growth > self.max_awareness_bytes
            ):
                # No browser needs this much: refuse it all, and say so. Its states leave
                # with it.
                self.log.info(
                    "closing client room=%s user=%s reason=presence over budget ids=%d "
                    "bytes=%d", self.name, conn.identity.username, len(conn.awareness_ids),
                    conn.awareness_bytes + max(growth, 0),
                )
                conn.kill(CloseCode.AWARENESS_TOO_LARGE, "presence over the connection's budget")
                return
            if growth > 0 and self._awareness_bytes + growth > self.max_room_awareness_bytes:
                if not conn.presence_dropped:
                    conn.presence_dropped = True
                    self.log.warning(
                        "presence dropped room=%s user=%s: the room holds %d bytes of it",
                        self.name, conn.identity.username, self._awareness_bytes,
                    )
                continue
            self._awareness[cid] = (entry.clock, state, raw)
            self._owner[cid] = conn.id
            self._awareness_bytes += growth
            self._presence_frames.clear()
            conn.awareness_ids.add(cid)
            conn.awareness_bytes += growth
            accepted.append((cid, entry.clock, raw))
        if accepted:
            self._broadcast(conn, protocol.encode_awareness_states(accepted))
