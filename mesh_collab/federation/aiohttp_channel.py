"""An aiohttp client websocket as a :class:`~mesh_collab.channel.Channel`.

The node end of a link (``federation/link.py``) is served into the local room directly:
the room reads the socket and writes to it, with no pump task or queue in between (each
would cost every relayed keystroke a turn of the event loop). Pings and pongs stay inside
aiohttp; anything but a binary message ends the channel.
"""

from __future__ import annotations

import aiohttp

from mesh_collab import metrics
from mesh_collab.channel import ChannelClosed
from mesh_collab.close_codes import CloseCode


class AiohttpChannel:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        if self._ws.closed:
            raise ChannelClosed(self._path)
        try:
            await self._ws.send_bytes(message)
        except (ConnectionResetError, aiohttp.ClientError) as exc:
            raise ChannelClosed(self._path) from exc

    def send_nowait(self, message: bytes) -> bool:
        if self._ws.closed:
            raise ChannelClosed(self._path)
        return False  # aiohttp sends only from a coroutine: the room's writer task sends

    async def recv(self) -> bytes:
        msg = await self._ws.receive()
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise ChannelClosed(self._path)  # a close, an error, or text (not the protocol)
        return msg.data  # type: ignore[no-any-return]

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        # Application codes end at 4999; anything beyond is a normal close on the wire.
        code = code if code < 5000 else CloseCode.NORMAL
        if not self._ws.closed:
            metrics.connection_closed(code)
        await self._ws.close(code=code, message=reason[:120].encode())
