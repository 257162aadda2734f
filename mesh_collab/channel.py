"""Channel: one bidirectional stream of binary messages (a websocket, a test pipe).

The core speaks only to channels; transports (tornado websockets, federation links) adapt
to this protocol.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mesh_collab.close_codes import CloseCode


class ChannelClosed(Exception):
    """Raised by :meth:`Channel.recv` and :meth:`Channel.send` once the channel is closed."""


class Channel(Protocol):
    """A message stream to one peer."""

    @property
    def path(self) -> str:
        """What the channel is connected to, for logs (never includes credentials)."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one message.

        Raises:
            ChannelClosed: the channel is closed.
        """
        ...

    def send_nowait(self, message: bytes) -> bool:
        """Send one message now if the channel takes it without waiting (everything sent
        before has left); return False, having sent nothing, otherwise.

        Raises:
            ChannelClosed: the channel is closed.
        """
        ...

    async def recv(self) -> bytes:
        """Receive one message.

        Raises:
            ChannelClosed: the channel is closed.
        """
        ...

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the channel with a websocket close code and a reason."""
        ...


Receiver = Callable[[bytes], Awaitable[None] | None]


@runtime_checkable
class PushChannel(Channel, Protocol):
    """A channel whose transport delivers messages by callback (tornado's ``on_message``).

    Its reader can have the messages handed to it as they arrive instead of reading them with
    :meth:`recv`: one turn of the event loop less per message.
    """

    async def pump(self, receiver: Receiver) -> None:
        """Hand every incoming message to ``receiver`` (the ones already received first),
        until the channel closes. When ``receiver`` returns an awaitable, the next message is
        read only once it is done (back-pressure on the sender).
        """
        ...


class MemoryChannel:
    """One end of an in-process channel pair (see :func:`memory_channel_pair`)."""

    def __init__(
        self,
        path: str,
        send: MemoryObjectSendStream[bytes],
        receive: MemoryObjectReceiveStream[bytes],
    ) -> None:
        self._path = path
        self._send = send
        self._receive = receive
        self.peer: MemoryChannel | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = anyio.Event()

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        try:
            await self._send.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ChannelClosed(self._path) from exc

    def send_nowait(self, message: bytes) -> bool:
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ChannelClosed(self._path) from exc
        return True

    async def recv(self) -> bytes:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ChannelClosed(self._path) from exc

    def __aiter__(self) -> MemoryChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    async def shutdown(self) -> None:
        """Stop sending, like a client that closes after its last frame: the other end
        reads every frame sent so far, then sees the channel closed."""
        self._send.close()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self.closed.is_set():
            return
        for end in (self, self.peer):
            if end is not None and not end.closed.is_set():
                end.close_code, end.close_reason = code, reason
                end.closed.set()
                end._send.close()
                end._receive.close()


def memory_channel_pair(path: str = "memory") -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected in-process channels: what one sends, the other receives."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](math.inf)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](math.inf)
    a = MemoryChannel(path, a_send, a_receive)
    b = MemoryChannel(path, b_send, b_receive)
    a.peer, b.peer = b, a
    return a, b
