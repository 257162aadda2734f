"""Trust between nodes, from the security review's probes (C1, C2, M3).

- a lock id planted in storage never makes a node contact an address, nor present anything;
- a forged, replayed, expired, misdirected or wrong-site handshake is refused with 4401;
- a link acts only for the users it introduces, each with the rights the storage gives them:
  a viewer's resync and edits change nothing, an editor's are applied exactly once;
- a key rotation (new key in the directory, old one removed) loses no edit;
- a wss link is verified against the mesh CA: a certificate of another CA is refused.
Everything runs over real sockets against a real node and the embedded gateway.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from mesh_collab import protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Lock, Role
from mesh_collab.federation.directory import MeshDirectory
from mesh_collab.federation.handshake import check_welcome, link_headers
from mesh_collab.federation.protocol import PATH
from mesh_collab.tls import LocalCA
from tests.data import NOTEBOOKS as DATA
from tests.helpers import MeshNode, append, eventually, mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import Node, NodeFactory

NOWHERE = "http://127.0.0.1:9/"


class Listener:
    """A TCP port that counts who connects to it (and what they send first)."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port = 0

    async def serve(self, task_status: Any) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()

        async def handle(stream: Any) -> None:
            self.connections += 1
            async with stream:
                with anyio.move_on_after(2):
                    self.received += await stream.receive(4096)

        await listener.serve(handle)


@pytest.fixture
async def mesh(node_factory: NodeFactory, gateway: Any, einstein: Session, marie: Session,
               tmp_path: Path) -> Any:
    """Site A's node (einstein's), and the identity of a second node of site A and of a
    site-B node, both held by the test. The notebook is shared with marie as a viewer."""
    info = await einstein.files.write(
        "/home/einstein/trust.ipynb", (DATA / "notebook3.ipynb").read_bytes())
    share = await einstein.shares.create(info.id, (await marie.whoami()).id, Role.VIEWER)
    await marie.shares.accept(share.id)
    home = mesh_node(tmp_path, "site-a", "home")
    other = mesh_node(tmp_path, "site-a", "other")
    stranger = mesh_node(tmp_path, "site-b", "b1")
    peers = tmp_path / "mesh.json"
    node = await node_factory(gateway, site="site-a", peers=f"@{peers}", **home.traits)

    def write(*, other_key: MeshNode | None = None) -> None:
        write_mesh(peers,
                   mesh_site("site-a", gateway.domain, (home, node.url),
                             (other_key or other, NOWHERE)),
                   mesh_site("site-b", "site-b.example", (stranger, NOWHERE)))

    write()
    return Mesh(node, home, other, stranger, info.id, peers, write)


class Mesh:
    def __init__(self, node: Node, home: MeshNode, other: MeshNode, stranger: MeshNode,
                 rid: Any, peers: Path, write: Any) -> None:
        self.node, self.home, self.other, self.stranger = node, home, other, stranger
        self.rid, self.peers, self.write = rid, peers, write

    @property
    def directory(self) -> MeshDirectory:
        return MeshDirectory.from_config(json.loads(self.peers.read_text()))

    @property
    def url(self) -> str:
        base = self.node.url.replace("http://", "ws://").rstrip("/")
        return f"{base}{PATH}{quote(str(self.rid), safe='$!')}"

    def headers(self, me: MeshNode, **changes: str) -> tuple[dict[str, str], str]:
        site = self.directory.site("site-a")
        assert site is not None and site.entry is not None
        headers, nonce = link_headers(me.local(), site, site.entry, str(self.rid), "notebook")
        return {**headers, **changes}, nonce

    def document(self) -> YNotebook:
        rooms = self.node.state.server._rooms
        return YNotebook(ydoc=rooms[self.rid].room.room.doc)


async def close_code(url: str, headers: dict[str, str]) -> int | None:
    """The close code a link request gets (None if it got a welcome)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        first = await ws.receive(timeout=10)
        if first.type == aiohttp.WSMsgType.BINARY:
            return None
        return ws.close_code


class Link:
    """A hand-driven link from a node identity the test holds: it speaks the federation
    protocol frame by frame, keeping a replica of the room's document."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws, self.welcome = ws, welcome
        self.doc = Doc()
        self.asked = 0  # sync step 1 received from the home node

    async def send(self, message: bytes) -> None:
        await self.ws.send_bytes(message)

    async def introduce(self, user: str, **fields: str) -> None:
        await self.send(protocol.control({"type": "user", "user": user, **fields}))

    async def sync(self) -> None:
        """Ask for the home's document and wait for it: everything sent before is handled."""
        await self.send(protocol.sync_step1(self.doc.get_state()))
        while True:
            frame = await self.frame()
            if frame.kind is protocol.Kind.SYNC_STEP2:
                self.doc.apply_update(frame.payload)
                return

    async def frame(self) -> protocol.Frame:
        """The next frame from the home node (its sync requests are counted)."""
        message = await self.ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.BINARY, (message.type, self.ws.close_code)
        frame = protocol.parse(message.data)
        if frame.kind is protocol.Kind.SYNC_STEP1:
            self.asked += 1
        return frame

    async def asked_for(self, times: int) -> None:
        """Wait until the home node asked ``times`` times for what we have (it asks once
        when the link opens, and again when it admits the link's first editor)."""
        while self.asked < times:
            frame = await self.frame()
            if frame.kind is protocol.Kind.SYNC_STEP2:
                self.doc.apply_update(frame.payload)

    def edit(self, text: str) -> bytes:
        """Type ``text`` into the first cell of the replica; returns the update."""
        before = self.doc.get_state()
        append(YNotebook(ydoc=self.doc).ycells[0], text)
        return self.doc.get_update(before)


@asynccontextmanager
async def link(mesh: Mesh, me: MeshNode) -> AsyncIterator[Link]:
    headers, nonce = mesh.headers(me)
    async with aiohttp.ClientSession() as http, http.ws_connect(mesh.url, headers=headers) as ws:
        first = await ws.receive(timeout=10)
        assert first.type == aiohttp.WSMsgType.BINARY, ws.close_code
        welcome = protocol.decode_control(protocol.parse(first.data).payload)
        site = mesh.directory.site("site-a")
        assert site is not None and site.entry is not None
        assert check_welcome(welcome, local=me.local(), site=site, node=site.entry,
                             resource=str(mesh.rid), nonce=nonce)
        yield Link(ws, welcome)


def text_of(nb: YNotebook) -> str:
    return str(nb.ycells[0]["source"])


# --- C1: addresses never come from storage ---------------------------------------------------


@pytest.mark.parametrize("lock_id", [
    "mesh_collab:site-a:http://127.0.0.1:{port}/:1",  # the review's probe (the old format)
    "mesh_collab:site-a:nobody:1:http://127.0.0.1:{port}/",
    "mesh_collab:site-a:nobody:1",  # a node id the directory does not list
])
async def test_a_planted_lock_id_never_makes_the_node_contact_an_address(
    mesh: Mesh, einstein: Session, lock_id: str
) -> None:
    listener = Listener()
    async with anyio.create_task_group() as tg:
        await tg.start(listener.serve)
        # An editor planted it (any writer can SetLock through a CS3 client).
        await einstein.locks.set(mesh.rid, Lock(
            lock_id=lock_id.format(port=listener.port), app_name="mesh_collab",
            expiration=time.time() + 120))
        response = await mesh.node.api("PUT", "collaboration/session/trust.ipynb",
                                       body={"format": "json", "type": "notebook"})
        assert response.status_code == 201, response.text
        rooms = mesh.node.state.server._rooms
        # The room took the lock for somebody else's: it serves, and does not write.
        await eventually(lambda: _lock_state(rooms, mesh.rid, "other"))
        tg.cancel_scope.cancel()
    assert listener.connections == 0
    assert b"MeshPeer" not in listener.received and b"MeshSig" not in listener.received


async def _lock_state(rooms: Any, rid: Any, wanted: str) -> bool:
    entry = rooms.get(rid)
    return entry is not None and entry.room is not None and entry.room._lock_state == wanted


# --- C2: handshakes ---------------------------------------------------------------------------


async def test_a_genuine_handshake_is_welcomed_and_the_welcome_is_signed(mesh: Mesh) -> None:
    async with link(mesh, mesh.other) as peer:
        assert peer.welcome["node"] == "home" and peer.welcome["site"] == "site-a"


@pytest.mark.parametrize("attack", [
    "forged", "replayed", "expired", "for another node", "site-b posing as site-a",
    "old shared secret", "no signature", "unknown node",
])
async def test_a_bad_handshake_is_refused_with_4401(mesh: Mesh, attack: str,
                                                    tmp_path: Path) -> None:
    me = mesh.other
    if attack == "forged":
        # Signed by a key the directory does not list for that node.
        impostor = MeshNode("site-a", "other", tmp_path / "impostor.pem")
        headers, _ = mesh.headers(impostor)
    elif attack == "replayed":
        headers, _ = mesh.headers(me)
        assert await close_code(mesh.url, headers) is None  # the genuine first use
    elif attack == "expired":
        stale = MeshNode("site-a", "other", me.key_file)
        real_time = time.time
        try:
            time.time = lambda: real_time() - 600  # type: ignore[assignment]
            headers, _ = mesh.headers(stale)
        finally:
            time.time = real_time  # type: ignore[assignment]
    elif attack == "for another node":
        headers, _ = mesh.headers(me, **{"X-Mesh-To": "other"})
    elif attack == "site-b posing as site-a":
        # Site B's genuine node key, claiming to be a node of site A.
        headers, _ = mesh.headers(MeshNode("site-a", "b1", mesh.stranger.key_file))
    elif attack == "old shared secret":
        headers = {"Authorization": "MeshPeer 015c4f", "X-Mesh-Site": "site-a",
                   "X-Mesh-Node": "http://127.0.0.1:9/", "X-Mesh-Protocol": "2"}
    elif attack == "no signature":
        headers, _ = mesh.headers(me, Authorization="")
    else:
        headers, _ = mesh.headers(MeshNode("site-a", "ghost", tmp_path / "ghost.pem"))
    assert await close_code(mesh.url, headers) == CloseCode.UNAUTHORIZED


async def test_a_handshake_of_another_protocol_version_gets_4426(mesh: Mesh) -> None:
    headers, _ = mesh.headers(mesh.other, **{"X-Mesh-Protocol": "1"})
    assert await close_code(mesh.url, headers) == CloseCode.PROTOCOL_VERSION


async def test_a_site_that_holds_no_share_is_refused_with_4403(mesh: Mesh) -> None:
    site = mesh.directory.site("site-a")
    assert site is not None and site.entry is not None
    headers, _ = link_headers(mesh.stranger.local(), site, site.entry, str(mesh.rid),
                              "notebook")
    assert await close_code(mesh.url, headers) == CloseCode.FORBIDDEN


# --- least privilege: a link acts only for the users it introduces ----------------------------


async def test_a_link_acts_only_for_users_it_introduces_with_their_own_rights(
    mesh: Mesh, einstein: Session, marie: Session
) -> None:
    async with link(mesh, mesh.other) as peer:
        await peer.sync()
        before = text_of(mesh.document())
        update = peer.edit(" WRITTEN BY A VIEWER")
        # Nobody introduced: a resync and an edit change nothing.
        await peer.send(protocol.sync_step2(update))
        await peer.send(protocol.control({"type": "author", "user": "einstein"}))
        await peer.send(protocol.update(update))
        await peer.sync()
        assert text_of(mesh.document()) == before
        # Marie, with her own token: a viewer. Her edit and a resync are dropped.
        await peer.introduce("marie", token=await marie.tokens.token())
        await peer.send(protocol.control({"type": "author", "user": "marie"}))
        await peer.send(protocol.update(update))
        await peer.send(protocol.sync_step2(update))
        # Einstein's name with marie's token: not einstein.
        await peer.introduce("einstein", token=await marie.tokens.token())
        await peer.send(protocol.control({"type": "author", "user": "einstein"}))
        await peer.send(protocol.update(update))
        await peer.sync()
        assert text_of(mesh.document()) == before
    # A link of a node that serves einstein (his token): his edit is applied, once.
    async with link(mesh, mesh.other) as peer:
        await peer.sync()
        await peer.introduce("einstein", token=await einstein.tokens.token())
        update = peer.edit(" BY EINSTEIN")
        await peer.send(protocol.control({"type": "author", "user": "einstein"}))
        await peer.send(protocol.update(update))
        await peer.sync()
        text = text_of(mesh.document())
        assert text.count(" BY EINSTEIN") == 1 and "VIEWER" not in text


async def test_a_resync_refused_before_an_editor_came_is_asked_for_again(
    mesh: Mesh, einstein: Session
) -> None:
    async with link(mesh, mesh.other) as peer:
        await peer.sync()
        update = peer.edit(" OFFLINE EDIT")
        await peer.send(protocol.sync_step2(update))  # before any introduction: refused
        await peer.sync()
        assert " OFFLINE EDIT" not in text_of(mesh.document())
        await peer.introduce("einstein", token=await einstein.tokens.token())
        await peer.asked_for(2)  # the home asks for what it refused
        await peer.send(protocol.sync_step2(peer.doc.get_update(
            protocol_state(mesh.document()))))
        await peer.sync()
        assert text_of(mesh.document()).count(" OFFLINE EDIT") == 1


def protocol_state(nb: YNotebook) -> bytes:
    return nb.ydoc.get_state()


async def test_presence_of_a_link_is_relabelled_by_the_home_node(
    mesh: Mesh, einstein: Session
) -> None:
    async with link(mesh, mesh.other) as peer:
        await peer.introduce("einstein", token=await einstein.tokens.token())
        forged = {"user": {"username": "einstein", "name": "Albert Einstein",
                           "display_name": "Boss · site-z", "role": "owner",
                           "avatar_url": "http://tracker.example/pixel.png",
                           "cs3_user": "anyone"}}
        stranger = {"user": {"username": "nobody", "name": "Not Introduced"}}
        await peer.send(protocol.encode_awareness_states([
            (4242, 1, protocol.encode_state(forged)), (4343, 1, protocol.encode_state(stranger)),
        ]))
        await peer.sync()
        states = mesh.node.state.server._rooms[mesh.rid].room.room._awareness
        users = {cid: json.loads(raw)["user"] for cid, (_, _, raw) in states.items()
                 if cid in (4242, 4343)}
        assert set(users) == {4242}
        shown = users[4242]
        assert shown["display_name"] == "Albert Einstein · site-a"
        assert shown["avatar_url"] is None and shown["role"] == "editor"
        assert shown["cs3_user"] == ""


# --- key rotation -----------------------------------------------------------------------------


async def test_a_key_rotation_loses_no_edit(mesh: Mesh, einstein: Session,
                                            tmp_path: Path) -> None:
    new = MeshNode("site-a", "other", tmp_path / "other-rotated.pem")
    async with link(mesh, mesh.other) as peer:
        await peer.sync()
        await peer.introduce("einstein", token=await einstein.tokens.token())
        update = peer.edit(" BEFORE ROTATION")
        await peer.send(protocol.control({"type": "author", "user": "einstein"}))
        await peer.send(protocol.update(update))
        await peer.sync()
        replica = peer.doc
    # The operator puts the new key in the directory and removes the old one.
    mesh.write(other_key=new)
    headers, _ = mesh.headers(mesh.other)
    assert await close_code(mesh.url, headers) == CloseCode.UNAUTHORIZED  # the old key
    async with link(mesh, new) as peer:
        peer.doc = replica  # the same node, with what it typed meanwhile
        update = peer.edit(" AFTER ROTATION")
        await peer.introduce("einstein", token=await einstein.tokens.token())
        await peer.sync()
        await peer.send(protocol.sync_step2(replica.get_update(
            mesh.document().ydoc.get_state())))
        await peer.sync()
    text = text_of(mesh.document())
    assert text.count(" BEFORE ROTATION") == 1 and text.count(" AFTER ROTATION") == 1


# --- C2: links over TLS -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_wss_link_is_verified_against_the_mesh_ca(
    node_factory: NodeFactory, gateway: Any, einstein: Session, tmp_path: Path
) -> None:
    ca, impostor_ca = LocalCA.create(tmp_path / "ca"), LocalCA.create(tmp_path / "impostor")
    served = ca.issue("home")
    home, other = mesh_node(tmp_path, "site-a", "home"), mesh_node(tmp_path, "site-a", "other")
    port = _free_port()
    peers = tmp_path / "mesh.json"
    await node_factory(gateway, site="site-a", peers=f"@{peers}", federation_port=port,
                       federation_certfile=str(served.cert),
                       federation_keyfile=str(served.key), **home.traits)
    write_mesh(peers, mesh_site("site-a", gateway.domain, (home, f"https://127.0.0.1:{port}/"),
                                (other, NOWHERE)))
    site = MeshDirectory.from_config(json.loads(peers.read_text())).site("site-a")
    assert site is not None and site.entry is not None
    rid = str((await einstein.files.write(
        "/home/einstein/tls.ipynb", (DATA / "notebook3.ipynb").read_bytes())).id)
    url = f"wss://127.0.0.1:{port}{PATH}{quote(rid, safe='$!')}"
    async with aiohttp.ClientSession() as http:
        headers, nonce = link_headers(other.local(), site, site.entry, rid, "notebook")
        trusted = ssl.create_default_context(cafile=ca.ca_file)
        async with http.ws_connect(url, headers=headers, ssl=trusted) as ws:
            first = await ws.receive(timeout=10)
            assert first.type == aiohttp.WSMsgType.BINARY, ws.close_code
            welcome = protocol.decode_control(protocol.parse(first.data).payload)
            assert check_welcome(welcome, local=other.local(), site=site, node=site.entry,
                                 resource=rid, nonce=nonce)
        # A node that trusts another CA (or a man in the middle with another certificate)
        # does not get as far as sending its handshake.
        headers, _ = link_headers(other.local(), site, site.entry, rid, "notebook")
        untrusted = ssl.create_default_context(cafile=impostor_ca.ca_file)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.ws_connect(url, headers=headers, ssl=untrusted):
                pass
