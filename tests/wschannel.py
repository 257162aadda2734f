"""A websocket (aiohttp client) as a pycrdt Channel: Python protocol peers for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
from pycrdt import Doc, Provider

from mesh_collab.channel import ChannelClosed
from mesh_collab.federation.aiohttp_channel import AiohttpChannel


class WebsocketChannel(AiohttpChannel):
    """The node's own aiohttp channel, iterable as pycrdt's ``Provider`` reads it."""

    def __aiter__(self) -> WebsocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None


@asynccontextmanager
async def synced_doc(url: str, doc: Doc | None = None) -> AsyncIterator[Doc]:
    """A pycrdt Doc synced with the room at ``url`` (a ws:// URL with its query)."""
    doc = doc or Doc()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        async with Provider(doc, WebsocketChannel(ws, url)) as provider:
            with anyio.fail_after(20):
                await provider.synced.wait()
            yield doc
