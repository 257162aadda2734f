"""A websocket (aiohttp client) as a pycrdt Channel: Python protocol peers for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
from pycrdt import Doc, Provider


class WebsocketChannel:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        await self._ws.send_bytes(message)

    async def recv(self) -> bytes:
        msg = await self._ws.receive()
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise StopAsyncIteration
        return bytes(msg.data)

    def __aiter__(self) -> WebsocketChannel:
        return self

    async def __anext__(self) -> bytes:
        return await self.recv()


@asynccontextmanager
async def synced_doc(url: str, doc: Doc | None = None) -> AsyncIterator[Doc]:
    """A pycrdt Doc synced with the room at ``url`` (a ws:// URL with its query)."""
    doc = doc or Doc()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        async with Provider(doc, WebsocketChannel(ws, url)) as provider:
            with anyio.fail_after(20):
                await provider.synced.wait()
            yield doc
