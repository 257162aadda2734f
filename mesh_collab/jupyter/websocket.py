"""A tornado websocket as a :class:`~mesh_collab.channel.Channel`.

Tornado delivers messages by callback (``on_message``). A room takes them from that callback
(:meth:`TornadoChannel.pump`); other readers use ``await channel.recv()``, with a bounded
queue in between. Either way, when a client sends faster than its reader processes, tornado
stops reading its socket (``on_message`` returns an awaitable, which tornado awaits before it
reads the next frame), which pushes back on that client alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from mesh_collab import metrics
from mesh_collab.channel import ChannelClosed, Receiver
from mesh_collab.close_codes import CloseCode


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class TornadoChannel:
    """Adapts the handler it is mixed into (see :class:`ChannelHandler`)."""

    def __init__(self, handler: WebSocketHandler, path: str, *, queue_size: int = 256) -> None:
        self._handler = handler
        self._path = path
        # None marks the end of the stream.
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.closed = asyncio.Event()
        self._unsent: asyncio.Future[None] | None = None  # the last send_nowait's write
        self._receiver: Receiver | None = None  # set while pump() runs

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        if self.closed.is_set():
            raise ChannelClosed(self._path)
        try:
            await self._handler.write_message(message, binary=True)
        except WebSocketClosedError as exc:
            raise ChannelClosed(self._path) from exc

    def send_nowait(self, message: bytes) -> bool:
        if self.closed.is_set():
            raise ChannelClosed(self._path)
        if self._unsent is not None and not self._unsent.done():
            return False  # the socket has not taken the last one yet: the caller queues
        try:
            self._unsent = self._handler.write_message(message, binary=True)
        except WebSocketClosedError as exc:
            raise ChannelClosed(self._path) from exc
        # A write that fails later is a closed socket, which recv reports.
        self._unsent.add_done_callback(_retrieve)
        return True

    async def pump(self, receiver: Receiver) -> None:
        while not self._queue.empty():  # what came before the receiver, in order
            message = self._queue.get_nowait()
            if message is None:
                raise ChannelClosed(self._path)
            pending = receiver(message)
            if pending is not None:
                await pending
        self._receiver = receiver
        try:
            await self.closed.wait()
        finally:
            self._receiver = None
        raise ChannelClosed(self._path)

    async def recv(self) -> bytes:
        message = await self._queue.get()
        if message is None:
            raise ChannelClosed(self._path)
        return message

    def __aiter__(self) -> TornadoChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if not self.closed.is_set():
            self._handler.close(code, reason[:120])
            metrics.connection_closed(code)
            self.mark_closed()

    def deliver(self, message: bytes | str) -> Awaitable[None] | None:
        """Called by the handler's ``on_message`` for each incoming message; the handler
        returns the result to tornado. None when the pump's receiver or the queue took the
        message; else an awaitable that tornado awaits before it reads the next one (tornado
        wraps every awaitable in a task: one per message, if ``on_message`` were a coroutine)."""
        if isinstance(message, str):
            message = message.encode()
        if self._receiver is not None:
            return self._receiver(message)
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            return self._queue.put(message)
        return None

    def mark_closed(self) -> None:
        """Called when the socket closed: ends ``pump`` and a pending ``recv``."""
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            # The room stops reading this client anyway: drop one message for the marker.
            self._queue.get_nowait()
            self._queue.put_nowait(None)
