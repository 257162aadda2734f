"""Helpers the tests share: identities, waiting on documents and storage, and in-process
clients of a room (pycrdt Docs synced by pycrdt's own Provider over memory channels)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from jupyter_ydoc import YNotebook
from pycrdt import Doc, Provider, Text

from mesh_collab.channel import MemoryChannel, memory_channel_pair
from mesh_collab.cs3.client import Session
from mesh_collab.federation import keys
from mesh_collab.federation.handshake import LocalNode
from mesh_collab.rooms import Identity, Room
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import Commit, UpdateLog

EINSTEIN = Identity("einstein", "Albert Einstein", site="site-a", user_id="site-a/einstein")
MARIE = Identity("marie", "Marie Curie", site="site-a", user_id="site-a/marie")


async def until(predicate: Callable[[], Any], *docs: Doc) -> None:
    """Wait until ``predicate()`` holds, re-checking whenever one of ``docs`` changes."""
    changed = anyio.Event()

    def poke(_event: object) -> None:
        changed.set()

    subs = [(d, d.observe(poke)) for d in docs]
    try:
        with anyio.fail_after(10):
            while not predicate():
                await changed.wait()
                changed = anyio.Event()
    finally:
        for d, s in subs:
            d.unobserve(s)


async def eventually(check: Callable[[], Any], *, every: float = 0.05, within: float = 10) -> Any:
    """Poll what has no change events (storage, a process) until ``check()`` is truthy."""
    with anyio.fail_after(within):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(every)


def append(ycell: Any, text: str) -> None:
    """Type ``text`` at the end of a cell (in place: assigning to the key would replace it)."""
    source = ycell["source"]
    source += text


class Client:
    """A notebook client of a document room (see :func:`client`)."""

    def __init__(self) -> None:
        self.doc = Doc()
        self.nb = YNotebook(ydoc=self.doc)

    def source(self, index: int) -> str:
        return str(self.nb.ycells[index]["source"])


class Peer:
    """A client of a room: a pycrdt Doc synced by pycrdt's own Provider over a channel."""

    def __init__(self, channel: MemoryChannel) -> None:
        self.channel = channel
        self.doc = Doc()
        self.text = self.doc.get("source", type=Text)


@asynccontextmanager
async def peer(
    room: Room, tg: anyio.abc.TaskGroup, identity: Identity, *, writable: bool = True
) -> AsyncIterator[Peer]:
    server_end, client_end = memory_channel_pair(identity.username)
    tg.start_soon(partial(room.serve, server_end, identity, writable=writable))
    p = Peer(client_end)
    async with Provider(p.doc, client_end) as provider:
        with anyio.fail_after(5):
            await provider.synced.wait()
        yield p
    await client_end.close()


@asynccontextmanager
async def client(
    server: CollabServer, tg: Any, rid: Any, session: Session, who: Identity, *,
    writable: bool = True, doc: Doc | None = None,
) -> AsyncIterator[Client]:
    server_end, client_end = memory_channel_pair(who.username)
    tg.start_soon(partial(server.serve_document, rid, session, server_end, who, writable=writable))
    c = Client()
    if doc is not None:
        c.doc, c.nb = doc, YNotebook(ydoc=doc)
    async with Provider(c.doc, client_end) as provider:
        with anyio.fail_after(10):
            await provider.synced.wait()
        yield c
    await client_end.close()


class GatedLog(UpdateLog):
    """A real update log whose commits wait until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = anyio.Event()
        self.waiting = anyio.Event()

    def start_append(self, room: str, updates: list[bytes]) -> Commit:
        self.waiting.set()
        gate, commit = self.gate, super().start_append(room, updates)

        class Gated(Commit):
            async def wait(self) -> None:
                await gate.wait()
                await commit.wait()

        return Gated()


def non_reading_client(
    room: Room, tg: anyio.abc.TaskGroup, identity: Identity, *, writable: bool = True
) -> tuple[MemoryChannel, anyio.abc.ObjectReceiveStream[bytes]]:
    """A client of ``room`` that does not read: the room's sends to it block, as on a socket
    whose reader stopped. Returns its end (to send from) and what the room sent it, unread
    until the test reads it."""
    server_end, client_end = memory_channel_pair(identity.username)
    stuck, unread = anyio.create_memory_object_stream[bytes](0)
    server_end._send = stuck
    tg.start_soon(partial(room.serve, server_end, identity, writable=writable))
    return client_end, unread


async def demo_sites(process: anyio.abc.Process) -> list[dict[str, str]]:
    """The sites of the JSON line ``mesh-collab demo`` prints once both sites run."""
    assert process.stdout is not None
    buffer = b""
    with anyio.fail_after(180):
        while True:
            buffer += await process.stdout.receive()
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith('{"sites"'):
                    return list(json.loads(line)["sites"])


@dataclass(frozen=True)
class MeshNode:
    """A node's identity in a test mesh: its site, id and key file (made on first use, as
    the node itself makes it)."""

    site: str
    id: str
    key_file: Path

    @property
    def traits(self) -> dict[str, str]:
        """The MeshCollabApp traits that give a node this identity."""
        return {"node_id": self.id, "node_key": str(self.key_file)}

    @property
    def args(self) -> tuple[str, ...]:
        """The same, as command-line arguments."""
        return tuple(f"--MeshCollabApp.{k}={v}" for k, v in self.traits.items())

    @property
    def key(self) -> Any:
        return keys.load_or_create(self.key_file)

    def entry(self, url: str) -> dict[str, str]:
        """This node's entry in the directory, reached at ``url``."""
        return {"id": self.id, "url": url, "key": keys.public_text(self.key)}

    def local(self) -> LocalNode:
        return LocalNode(self.site, self.id, lambda: self.key)


def mesh_node(tmp_path: Path, site: str, name: str = "") -> MeshNode:
    """A fresh node identity of ``site`` (id ``name`` or ``<site>-node``)."""
    node_id = name or f"{site}-node"
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700, exist_ok=True)
    return MeshNode(site, node_id, folder / f"{node_id}.pem")


def mesh_site(site: str, domain: str, *nodes: tuple[MeshNode, str]) -> dict[str, Any]:
    """A site's directory entry: its OCM domain and its (node, url) pairs."""
    return {"site": site, "domain": domain, "nodes": [node.entry(url) for node, url in nodes]}


def write_mesh(path: Path, *sites: dict[str, Any]) -> Path:
    """Write a mesh directory file; returns its path."""
    path.write_text(json.dumps(list(sites)))
    return path
