"""Drive the real Yjs peer of ``tests/node/peer.mjs`` (npm yjs + y-websocket) from a test."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

PEER = Path(__file__).parent / "node" / "peer.mjs"


class NodePeer:
    """One Node.js process holding a Yjs document synced with a room."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    async def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(command) + "\n").encode())

    async def _next_event(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event = json.loads(line)
        self.events.append(event)
        return event

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next event (or one already seen) that satisfies ``predicate``."""
        for event in self.events:
            if predicate(event):
                self.events.remove(event)
                return event
        with anyio.fail_after(20):
            while True:
                event = await self._next_event()
                if predicate(event):
                    self.events.remove(event)
                    return event

    async def dump(self) -> dict[str, Any]:
        await self.send(op="dump")
        return await self.wait_for(lambda e: e["event"] == "dump")

    async def until(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Dump the peer's document after each change until ``check(dump)`` holds."""
        with anyio.fail_after(20):
            while True:
                state = await self.dump()
                if check(state):
                    return state
                await self.wait_for(lambda e: e["event"] in ("update", "awareness"))


@asynccontextmanager
async def node_peer(
    base: str,
    room: str,
    params: dict[str, str],
    headers: dict[str, str] | None = None,
    *,
    synced: bool = True,
) -> AsyncIterator[NodePeer]:
    """Start a Node peer on ``base``/``room`` (and wait until it has synced)."""
    node = shutil.which("node")
    if node is None or not (PEER.parent / "node_modules").is_dir():
        pytest.fail("node and tests/node/node_modules are needed: run ./dev.sh setup")
    args = [node, str(PEER), base, room, json.dumps(params), json.dumps(headers or {})]
    async with await anyio.open_process(args) as process:
        peer = NodePeer(process)
        try:
            if synced:
                await peer.wait_for(lambda e: e["event"] == "synced")
            yield peer
        finally:
            process.kill()
