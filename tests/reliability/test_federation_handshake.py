"""Hostile input to the federation endpoint: random handshakes and frames from would-be peers.

Whatever a stranger sends, the node answers with a documented close code, never lets an
unauthenticated link into a room, and keeps serving its own users.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

from mesh_collab import protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.federation.protocol import PATH
from tests.data import NOTEBOOKS as DATA
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.nodepeer import node_peer

SECRET = "the-secret-of-site-b-is-long-enough"
SECRET_A = "secret-of-site-a-long-enough"
VALID = {("site-a", SECRET_A), ("site-b", SECRET)}
DOCUMENTED = {
    CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN, CloseCode.PROTOCOL_VERSION,
    CloseCode.BAD_REQUEST, CloseCode.NOT_FOUND, CloseCode.RESET_CONNECTION,
    CloseCode.MESSAGE_TOO_BIG,
}


@pytest.fixture
async def home(node_factory: NodeFactory, gateway: Any, einstein: Session, tmp_path: Path) -> Any:
    info = await einstein.files.write(
        "/home/einstein/target.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    peers = tmp_path / "mesh.json"
    peers.write_text(json.dumps([
        {"site": "site-a", "url": "http://127.0.0.1:9/", "domain": gateway.domain,
         "secret": SECRET_A},
        {"site": "site-b", "url": "http://127.0.0.1:9/", "domain": "site-b.example",
         "secret": SECRET},
    ]))
    node = await node_factory(gateway, site="site-a", peers=f"@{peers}")
    return node, str(info.id)


def hostile_handshakes(rng: random.Random, n: int) -> list[dict[str, str]]:
    sites = ["site-b", "site-a", "", "site-z", "x" * 300, "site-b\x00", "../site-b"]
    secrets = [SECRET, SECRET_A, "", "wrong", SECRET[:-1], SECRET + "x", "x" * 2000]
    schemes = ["MeshPeer", "Bearer", "meshpeer", "", "MeshPeer  "]
    versions = ["1", "0", "2", "", "1.0", "-1", "99999999999999999999"]
    out = []
    for _ in range(n):
        headers = {}
        if rng.random() < 0.9:
            headers["X-Mesh-Site"] = rng.choice(sites).replace("\x00", "")
        if rng.random() < 0.9:
            headers["Authorization"] = f"{rng.choice(schemes)} {rng.choice(secrets)}".strip()
        if rng.random() < 0.9:
            headers["X-Mesh-Protocol"] = rng.choice(versions)
        out.append(headers)
    return out


async def attempt(node: Node, rid: str, headers: dict[str, str], junk: bytes) -> int | None:
    url = node.url.replace("http://", "ws://") + PATH.lstrip("/") + rid
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                first = await ws.receive()
                if first.type == aiohttp.WSMsgType.BINARY:
                    # Admitted: only a genuine peer (its site's secret, version 1) gets here.
                    site = headers.get("X-Mesh-Site", "")
                    secret = headers.get("Authorization", "").partition(" ")[2]
                    assert (site, secret) in VALID and headers.get("X-Mesh-Protocol") == "1"
                    await ws.send_bytes(junk)
                    # Junk is closed at once; a well-formed frame is simply served: hang up.
                    with anyio.move_on_after(3):
                        while (await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                            pass
                    if not ws.closed:
                        await ws.close()
                return ws.close_code
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_random_handshakes_and_frames_get_documented_answers(home: Any) -> None:
    node, rid = home
    rng = random.Random(7)
    junk_frames = [
        b"", b"\x64", b"\x64\x05{\"ty", protocol.control({"type": "author", "user": "x" * 10}),
        bytes(rng.getrandbits(8) for _ in range(64)), b"\x00\x02\x10abc", b"\x07" * 100,
    ]
    answers: dict[Any, int] = {}
    async with node_peer(
        node.url.replace("http://", "ws://") + "api/collaboration/room",
        f"json:notebook:{rid}", {"token": TOKEN},
    ) as user:
        handshakes = hostile_handshakes(rng, 60)
        # Some genuine same-site peers too: admitted, then sending junk.
        handshakes += [{"X-Mesh-Site": "site-a", "Authorization": f"MeshPeer {SECRET_A}",
                        "X-Mesh-Protocol": "1"}] * 7
        for i, headers in enumerate(handshakes):
            rooms = [quote(rid, safe="$!"), "not-an-id", "a$b!c", "%00", "x" * 500]
            target = rooms[i % len(rooms)]
            code = await attempt(node, target, headers, junk_frames[i % len(junk_frames)])
            answers[code] = answers.get(code, 0) + 1
            assert code in DOCUMENTED or code == CloseCode.NORMAL, (headers, target, code)
        # The node's own user was never disturbed, and no stranger's byte reached the room.
        await user.send(op="append", cell=0, text=" # still here")
        state = await user.until(lambda d: d["cells"][0].endswith(" # still here"))
        assert len(state["cells"]) == 2
    assert answers.get(CloseCode.UNAUTHORIZED, 0) > 0
    assert answers.get(CloseCode.RESET_CONNECTION, 0) > 0  # admitted peers sending junk
