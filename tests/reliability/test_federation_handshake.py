"""Hostile input to the federation endpoint: random handshakes and frames from would-be peers.

Whatever a stranger sends, the node answers with a documented close code, never lets an
unauthenticated link into a room, and keeps serving its own users.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from pycrdt import Doc

from mesh_collab import protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.federation.directory import MeshDirectory, Site
from mesh_collab.federation.handshake import link_headers
from mesh_collab.federation.protocol import PATH
from tests.data import NOTEBOOKS as DATA
from tests.helpers import MeshNode, mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.nodepeer import node_peer

NOWHERE = "http://127.0.0.1:9/"
DOCUMENTED = {
    CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN, CloseCode.PROTOCOL_VERSION,
    CloseCode.BAD_REQUEST, CloseCode.NOT_FOUND, CloseCode.RESET_CONNECTION,
    CloseCode.MESSAGE_TOO_BIG,
}


@dataclass
class Home:
    """The node under test (site A's "home") and the identities of two other nodes, held
    by the test: "other" of site A (admitted) and "b1" of site B (the notebook is not
    shared with site B)."""

    node: Node
    rid: str
    site: Site
    other: MeshNode
    stranger: MeshNode

    def genuine(self, me: MeshNode) -> dict[str, str]:
        """A fresh, correctly signed handshake of ``me`` for the notebook's room."""
        assert self.site.entry is not None
        headers, _ = link_headers(me.local(), self.site, self.site.entry, self.rid, "notebook")
        return headers


@pytest.fixture
async def home(node_factory: NodeFactory, gateway: Any, einstein: Session,
               tmp_path: Path) -> Home:
    info = await einstein.files.write(
        "/home/einstein/target.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    me = mesh_node(tmp_path, "site-a", "home")
    other = mesh_node(tmp_path, "site-a", "other")
    stranger = mesh_node(tmp_path, "site-b", "b1")
    peers = tmp_path / "mesh.json"
    node = await node_factory(gateway, site="site-a", peers=f"@{peers}", **me.traits)
    sites = [mesh_site("site-a", gateway.domain, (me, node.url), (other, NOWHERE)),
             mesh_site("site-b", "site-b.example", (stranger, NOWHERE))]
    write_mesh(peers, *sites)
    site = MeshDirectory.from_config(sites).site("site-a")
    assert site is not None
    return Home(node, str(info.id), site, other, stranger)


def hostile_handshakes(rng: random.Random, n: int, home: Home) -> list[dict[str, str]]:
    """Handshakes none of which may be admitted: each field drawn from plausible and
    absurd values, the signature (when real) always of another handshake."""
    template = home.genuine(home.other)  # signed for its own nonce, never reused below
    signature = template["Authorization"].partition(" ")[2]
    now = int(time.time())
    sites = ["site-b", "site-a", "", "site-z", "x" * 300, "../site-b"]
    nodes = ["other", "home", "b1", "", "ghost", "http://127.0.0.1:9/", "x" * 300]
    targets = ["home", "other", "", "b1", "x" * 300]
    schemes = ["MeshSig", "MeshPeer", "Bearer", "meshsig", "", "MeshSig  "]
    signatures = [
        signature, signature[:-4], "", "wrong", "x" * 2000, "the-old-shared-secret",
        base64.b64encode(rng.randbytes(64)).decode(),
    ]
    times = [str(now), str(now - 600), str(now + 3600), "", "0", "-1", "nan", "inf", "1e309",
             "x"]
    nonces = ["", "n", "x" * 5000, base64.urlsafe_b64encode(rng.randbytes(16)).decode()]
    versions = ["2", "1", "0", "", "2.0", "-1", "99999999999999999999"]
    fields = {
        "X-Mesh-Site": sites, "X-Mesh-Node": nodes, "X-Mesh-To": targets,
        "X-Mesh-Time": times, "X-Mesh-Nonce": nonces, "X-Mesh-Protocol": versions,
    }
    out = []
    for _ in range(n):
        headers = {}
        for name, values in fields.items():
            if rng.random() < 0.9:
                headers[name] = rng.choice(values)
        if rng.random() < 0.9:
            headers["Authorization"] = f"{rng.choice(schemes)} {rng.choice(signatures)}".strip()
        out.append(headers)
    return out


def tampered(home: Home) -> list[tuple[dict[str, str], int]]:
    """Genuine handshakes with one field changed, and the close code each gets."""
    other = home.genuine(home.other)["Authorization"]  # a signature of another handshake
    return [({**home.genuine(home.other), name: value}, code) for name, value, code in [
        ("X-Mesh-Node", "ghost", CloseCode.UNAUTHORIZED),
        ("X-Mesh-Node", "home", CloseCode.UNAUTHORIZED),
        ("X-Mesh-To", "other", CloseCode.UNAUTHORIZED),
        ("X-Mesh-Site", "site-b", CloseCode.UNAUTHORIZED),
        ("X-Mesh-Time", str(int(time.time()) - 600), CloseCode.UNAUTHORIZED),
        ("X-Mesh-Nonce", "another-nonce", CloseCode.UNAUTHORIZED),
        ("Authorization", other, CloseCode.UNAUTHORIZED),
        ("Authorization", other.replace("MeshSig", "MeshPeer"), CloseCode.UNAUTHORIZED),
        ("X-Mesh-Protocol", "1", CloseCode.PROTOCOL_VERSION),
    ]]


async def attempt(node: Node, target: str, headers: dict[str, str], junk: bytes, *,
                  may_enter: bool) -> int | None:
    url = node.url.replace("http://", "ws://") + PATH.lstrip("/") + target
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                first = await ws.receive()
                if first.type == aiohttp.WSMsgType.BINARY:
                    # Admitted: only a genuine same-site handshake gets here.
                    assert may_enter, (headers, target)
                    await ws.send_bytes(junk)
                    # Junk is closed at once; a well-formed frame is simply served. The
                    # answer to a sync request after it tells which (frames are taken in
                    # order): then we hang up.
                    await ws.send_bytes(protocol.sync_step1(Doc().get_state()))
                    with anyio.fail_after(10):
                        while (message := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                            if protocol.parse(message.data).kind is protocol.Kind.SYNC_STEP2:
                                await ws.close()
                                return CloseCode.NORMAL
                return ws.close_code
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_random_handshakes_and_frames_get_documented_answers(home: Home) -> None:
    node, rid = home.node, home.rid
    rng = random.Random(7)
    junk_frames = [
        b"", b"\x64", b"\x64\x05{\"ty", protocol.control({"type": "author", "user": "x" * 10}),
        bytes(rng.getrandbits(8) for _ in range(64)), b"\x00\x02\x10abc", b"\x07" * 100,
        protocol.control({"type": "user", "user": "einstein", "token": "not-a-token"}),
    ]
    answers: dict[Any, int] = {}
    async with node_peer(
        node.url.replace("http://", "ws://") + "api/collaboration/room",
        f"json:notebook:{rid}", {"token": TOKEN},
    ) as user:
        rooms = [quote(rid, safe="$!"), "not-an-id", "a$b!c", "%00", "x" * 500]
        for i, headers in enumerate(hostile_handshakes(rng, 80, home)):
            # Half of them at the notebook's room, the others at every kind of bad room id.
            target = rooms[0] if i % 2 == 0 else rooms[1 + (i // 2) % (len(rooms) - 1)]
            code = await attempt(node, target, headers, b"", may_enter=False)
            answers[code] = answers.get(code, 0) + 1
            assert code in DOCUMENTED, (headers, target, code)
        for headers, expected in tampered(home):
            assert await attempt(node, rooms[0], headers, b"", may_enter=False) == expected, (
                headers)
        # Genuine same-site peers: admitted, then sending junk (or a well-formed frame, which
        # is served); a replay of their handshake is refused.
        for junk in junk_frames:
            headers = home.genuine(home.other)  # signed just before use: valid for a minute
            code = await attempt(node, rooms[0], headers, junk, may_enter=True)
            answers[code] = answers.get(code, 0) + 1
            assert code in DOCUMENTED or code == CloseCode.NORMAL, (junk, code)
            assert await attempt(node, rooms[0], headers, b"", may_enter=False) == (
                CloseCode.UNAUTHORIZED)
        # A genuine node of site B, which holds no share of the notebook.
        headers = home.genuine(home.stranger)
        assert await attempt(node, rooms[0], headers, b"", may_enter=False) == (
            CloseCode.FORBIDDEN)
        # The node's own user was never disturbed, and no stranger's byte reached the room.
        await user.send(op="append", cell=0, text=" # still here")
        state = await user.until(lambda d: d["cells"][0].endswith(" # still here"))
        assert len(state["cells"]) == 2
    assert answers.get(CloseCode.UNAUTHORIZED, 0) > 0
    assert answers.get(CloseCode.RESET_CONNECTION, 0) > 0  # admitted peers sending junk
