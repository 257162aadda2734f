"""A TCP proxy for fault injection between two nodes: pass, delay, cut or blackhole."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"          # every chunk waits `delay` seconds
    CUT = "cut"              # open connections are closed, new ones refused
    BLACKHOLE = "blackhole"  # connections stay open, nothing gets through


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, with a switchable fault mode."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.PASS
        self.delay = 0.0
        self.port = 0
        self.connections = 0
        self._scopes: set[anyio.CancelScope] = set()
        self._flowing = anyio.Event()
        self._flowing.set()

    def set(self, mode: Mode, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        if mode is Mode.BLACKHOLE:
            if self._flowing.is_set():
                self._flowing = anyio.Event()
        else:
            self._flowing.set()
        if mode is Mode.CUT:
            for scope in list(self._scopes):
                scope.cancel()

    async def _pipe(self, src: SocketStream, dst: SocketStream) -> None:
        async for chunk in src:
            # Held as a dead network would hold it; delivered when healed (TCP retransmits).
            await self._flowing.wait()
            if self.mode is Mode.DELAY:
                await anyio.sleep(self.delay)  # the injected latency itself
            await dst.send(chunk)

    async def _serve(self, client: SocketStream) -> None:
        if self.mode is Mode.CUT:
            await client.aclose()
            return
        self.connections += 1
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client, await anyio.connect_tcp(*self.target) as upstream:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pipe, client, upstream)
                        tg.start_soon(self._pipe, upstream, client)
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass  # either side went away: the connection ends
            finally:
                self._scopes.discard(scope)


@asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
