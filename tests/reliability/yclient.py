"""A small y-websocket client over aiohttp, for fault, hostile-input and load tests.

It speaks the protocol with :mod:`mesh_collab.protocol` (the node's own encoder, which other
tests check against real Yjs peers) and keeps, apart from its document, exactly what it
*received from the node*: every update frame (sync step 2 and update) and every awareness
entry. The crash test needs that record: the durability rule is about what a client has seen.

A client's own edits go out as update frames at the next :meth:`YClient.flush` (the tests
call it after typing; a received message triggers one too). It never reconnects by itself:
a test brings a client back after a node restart by running a new ``YClient`` on the same
document, as a y-websocket provider would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from mesh_collab import protocol


@dataclass
class Closed:
    """How the node closed the websocket."""

    code: int | None
    reason: str


@dataclass
class YClient:
    """One websocket client of a notebook room (see the module docstring)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    doc: Doc = field(default_factory=Doc)
    #: Every update the node sent (step 2 and update frames), in arrival order.
    received: list[bytes] = field(default_factory=list)
    #: client id -> latest awareness state the node sent (None: gone).
    awareness: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    closed: Closed | None = None
    synced: anyio.Event = field(default_factory=anyio.Event)
    errors: list[str] = field(default_factory=list)
    sent_frames: int = 0
    #: Answers to our save requests (decoded JSON), in arrival order.
    save_replies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = anyio.Event()
        self._remote = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: list[bytes] = []
        # Frames go out in order: the node refuses an update whose dependencies it lacks.
        self._send_lock = anyio.Lock()
        self._sub = self.doc.observe(self._on_local)
        self.on_update: Callable[[bytes], None] | None = None
        #: Called after every message from the node (see :func:`until_all`).
        self.listeners: list[Callable[[], None]] = []

    @property
    def nb(self) -> YNotebook:
        return YNotebook(ydoc=self.doc)

    def source(self, index: int) -> str:
        return str(self.nb.ycells[index]["source"])

    def _on_local(self, event: Any) -> None:
        if not self._remote and len(event.update) > 2:
            self._pending.append(protocol.update(event.update))

    async def run(self, session: aiohttp.ClientSession, *, task_status: Any) -> None:
        """Connect, report readiness through ``task_status``, serve until closed."""
        try:
            ws = await session.ws_connect(self.url, headers=self.headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            self.closed = Closed(exc.status, "handshake refused")
            task_status.started(self)
            return
        self._ws = ws
        task_status.started(self)
        try:
            try:
                await ws.send_bytes(protocol.sync_step1(self.doc.get_state()))
            except (aiohttp.ClientError, ConnectionError):
                pass  # closed by the node at once: its close frame is read below
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._handle(msg.data)
                    await self.flush()
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    self.closed = Closed(msg.data, msg.extra or "")
                    break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    self.errors.append(str(ws.exception()))
                elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.errors.append(repr(exc))
        finally:
            self._ws = None
            self.doc.unobserve(self._sub)
            if self.closed is None:
                self.closed = Closed(ws.close_code, "")
            self._changed.set()
            for listener in list(self.listeners):
                listener()

    def _handle(self, data: bytes) -> None:
        if data[:1] == b"\x02":  # a raw message: the answer to a save request
            self.save_replies.append(protocol.decode_save_reply(data))
            self._changed.set()
            return
        frame = protocol.parse(data)
        if frame.kind is protocol.Kind.SYNC_STEP1:
            self._pending.insert(0, protocol.sync_step2(self.doc.get_update(frame.payload)))
        elif frame.kind in (protocol.Kind.SYNC_STEP2, protocol.Kind.UPDATE):
            self.received.append(frame.payload)
            self._remote = True
            try:
                self.doc.apply_update(frame.payload)
            finally:
                self._remote = False
            if self.on_update is not None:
                self.on_update(frame.payload)
            if frame.kind is protocol.Kind.SYNC_STEP2:
                self.synced.set()
        elif frame.kind is protocol.Kind.AWARENESS:
            for entry in protocol.decode_awareness(frame.payload):
                self.awareness[entry.client_id] = entry.state
        self._changed.set()
        for listener in list(self.listeners):
            listener()

    async def flush(self) -> None:
        """Send our pending frames: edits made since the last flush, a sync step 2."""
        async with self._send_lock:
            ws = self._ws
            pending, self._pending = self._pending, []
            if ws is None or ws.closed:
                return  # a later connection's sync step 2 carries these edits
            try:
                for frame in pending:
                    await ws.send_bytes(frame)
                    self.sent_frames += 1
            except (aiohttp.ClientError, ConnectionError):
                # The node went away mid-send (killed): the edits stay in our document, and
                # the next connection's resync (sync step 2) carries them.
                return

    async def send_raw(self, data: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(data)

    async def save(self, request_id: int) -> dict[str, Any]:
        """Ask the node to save, as the frontend's Ctrl+S does; return its answer."""
        await self.flush()
        await self.send_raw(protocol.save_request(request_id))
        return await self.until(  # type: ignore[no-any-return]
            lambda: next((r for r in self.save_replies if r.get("responseTo") == request_id),
                         None),
            timeout=30,
        )

    async def set_awareness(self, client_id: int, clock: int, state: dict[str, Any]) -> None:
        await self.send_raw(
            protocol.encode_awareness([protocol.AwarenessEntry(client_id, clock, state)])
        )

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def until(self, check: Callable[[], Any], timeout: float = 20) -> Any:  # noqa: ASYNC109
        """Wait until ``check()`` is truthy, re-checking after each message from the node."""
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if result:
                    return result
                if self.closed is not None and self._ws is None:
                    result = check()
                    if result:
                        return result
                    raise AssertionError(f"connection closed: {self.closed}")
                self._changed = anyio.Event()
                await self._changed.wait()

    def mesh_status(self) -> dict[str, Any] | None:
        """The room's status, as the node publishes it (its own awareness state)."""
        for state in self.awareness.values():
            if state and "mesh" in state:
                return state["mesh"]  # type: ignore[no-any-return]
        return None




async def until_all(
    clients: list[YClient], check: Callable[[], Any], timeout: float = 20  # noqa: ASYNC109
) -> Any:
    """Wait until ``check()`` is truthy, re-checking after any message to any of ``clients``."""
    changed = anyio.Event()

    def poke() -> None:
        changed.set()

    for c in clients:
        c.listeners.append(poke)
    try:
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if result:
                    return result
                await changed.wait()
                changed = anyio.Event()
    finally:
        for c in clients:
            c.listeners.remove(poke)
