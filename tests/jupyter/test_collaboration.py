"""The stock frontend's collaboration API, served by mesh_collab, with real Yjs peers
(npm yjs + y-websocket in Node) against a real Jupyter server and the embedded gateway."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest

from mesh_collab import notebook
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.data import NOTEBOOKS as DATA
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.nodepeer import node_peer


def ws_base(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "api/collaboration/room"


async def open_session(node: Node, path: str, http: httpx.AsyncClient | None = None) -> dict:
    response = await node.api(
        "PUT",
        f"collaboration/session/{quote(path)}",
        body={"format": "json", "type": "notebook"},
        http=http,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_session_file_id_is_the_cs3_resource_id(node: Node, einstein: Session) -> None:
    info = await einstein.files.write(
        "/home/einstein/nb.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    session = await open_session(node, "nb.ipynb")
    assert session["fileId"] == str(info.id)
    assert session["sessionId"]
    # A rename keeps the id (the room).
    await einstein.files.move("/home/einstein/nb.ipynb", "/home/einstein/renamed.ipynb")
    assert (await open_session(node, "renamed.ipynb"))["fileId"] == str(info.id)


async def test_node_peer_edits_and_the_checkpoint_reaches_cs3(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    node = await node_factory(gateway, checkpoint_quiet_period=0.2, checkpoint_max_interval=1)
    info = await einstein.files.write(
        "/home/einstein/run.ipynb", (DATA / "Running_Code.ipynb").read_bytes()
    )
    s = await open_session(node, "run.ipynb")
    room = f"json:notebook:{s['fileId']}"
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with (
        node_peer(ws_base(node), room, params) as a,
        node_peer(ws_base(node), room, params) as b,
    ):
        first = await a.dump()
        assert len(first["cells"]) == 28
        await a.send(op="append", cell=0, text=" # from node A")
        await b.until(lambda d: d["cells"][0].endswith(" # from node A"))
        await a.send(op="cursor", cell=0, index=3)
        state = await b.until(lambda d: any("cursors" in s for s in d["awareness"]))
        (peer_a,) = [s for s in state["awareness"] if "cursors" in s]
        # The node stamps the identity it authenticated; the peer's claim is overwritten.
        assert peer_a["user"]["username"] == "einstein"
        assert peer_a["user"]["site"] == "site-a"
    for _ in range(200):
        nb = notebook.from_bytes(await einstein.files.read(info.id))
        if nb["cells"][0]["source"].endswith(" # from node A"):
            break
        import anyio

        await anyio.sleep(0.1)  # storage has no change events: poll it
    assert nb["cells"][0]["source"].endswith(" # from node A")
    assert len(nb["cells"]) == 28


async def test_bad_rooms_are_closed_with_their_code(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/plain.txt", b"not a notebook")
    txt = await einstein.files.stat("/home/einstein/plain.txt")
    params = {"token": TOKEN}
    cases = [
        ("json:notebook:not-a-resource-id", CloseCode.BAD_REQUEST),
        ("text:file:whatever", CloseCode.BAD_REQUEST),
        (f"json:notebook:{txt.id.storage_id}${txt.id.space_id}!missing", CloseCode.NOT_FOUND),
        (f"json:notebook:{txt.id}", CloseCode.UNSUPPORTED_DOCUMENT),
    ]
    for room, code in cases:
        async with node_peer(ws_base(node), room, params, synced=False) as peer:
            closed = await peer.wait_for(lambda e: e["event"] == "closed")
            assert closed["code"] == code, (room, closed)


async def test_stale_session_is_told_to_reload(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/s.ipynb", (DATA / "notebook3.ipynb").read_bytes())
    s = await open_session(node, "s.ipynb")
    params = {"sessionId": "another-lineage", "token": TOKEN}
    async with node_peer(
        ws_base(node), f"json:notebook:{s['fileId']}", params, synced=False
    ) as peer:
        closed = await peer.wait_for(lambda e: e["event"] == "closed")
    assert closed["code"] == CloseCode.UNKNOWN_SESSION
    assert json.loads(closed["reason"])["reloadable"] is True


async def test_unauthenticated_websocket_is_refused(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/a.ipynb", (DATA / "notebook3.ipynb").read_bytes())
    s = await open_session(node, "a.ipynb")
    async with node_peer(ws_base(node), f"json:notebook:{s['fileId']}", {}, synced=False) as p:
        closed = await p.wait_for(
            lambda e: e["event"] in ("closed", "status") and e.get("status") != "connecting"
        )
    assert closed["event"] == "closed" or closed.get("status") == "disconnected"


async def test_viewer_in_a_multi_user_node_is_read_only(
    node_factory: NodeFactory, gateway, einstein: Session, marie: Session
) -> None:
    node = await node_factory(gateway, auth_mode="multi-user")
    info = await einstein.files.write(
        "/home/einstein/shared.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.VIEWER)
    await marie.shares.accept(share.id)
    cookies = {}
    for user, password in (("einstein", "relativity"), ("marie", "radioactivity")):
        http = httpx.AsyncClient(timeout=30)
        response = await node.login(http, user, password)
        assert response.status_code in (302, 303), response.text
        cookies[user] = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        await http.aclose()
    room = f"json:notebook:{info.id}"
    async with (
        node_peer(ws_base(node), room, {}, {"Cookie": cookies["einstein"]}) as e,
        node_peer(ws_base(node), room, {}, {"Cookie": cookies["marie"]}) as m,
    ):
        await e.send(op="append", cell=0, text="# einstein")
        await m.until(lambda d: d["cells"][0].endswith("# einstein"))
        await m.send(op="append", cell=1, text="# marie")
        await e.send(op="append", cell=1, text="# einstein again")
        await m.until(lambda d: "# einstein again" in d["cells"][1])
        state = await e.dump()
        assert "# marie" not in state["cells"][1]
        viewer_states = await e.until(
            lambda d: any(s.get("user", {}).get("username") == "marie" for s in d["awareness"])
        )
        (marie_state,) = [
            s for s in viewer_states["awareness"] if s.get("user", {}).get("username") == "marie"
        ]
        assert marie_state["user"]["role"] == "viewer"


@pytest.mark.parametrize("path", ["missing.ipynb"])
async def test_session_for_a_missing_notebook_is_404(node: Node, path: str) -> None:
    response = await node.api(
        "PUT", f"collaboration/session/{path}", body={"format": "json", "type": "notebook"}
    )
    assert response.status_code == 404


async def test_a_file_written_behind_the_room_is_merged_at_the_configured_poll(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    node = await node_factory(gateway, file_poll_interval=0.3)
    info = await einstein.files.write(
        "/home/einstein/ext.ipynb", (DATA / "Running_Code.ipynb").read_bytes()
    )
    s = await open_session(node, "ext.ipynb")
    server = node.state.server
    assert server is not None and server.settings.poll_interval == 0.3
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with node_peer(ws_base(node), f"json:notebook:{s['fileId']}", params) as a:
        await a.send(op="append", cell=5, text="\n# unsaved live edit")
        await a.until(lambda d: d["cells"][5].endswith("# unsaved live edit"))
        # A tool that shares the room's lock (e.g. a sync client of the same owner) writes.
        disk = json.loads((DATA / "Running_Code.ipynb").read_bytes())
        disk["cells"][2]["source"] = "EXTERNAL " + "".join(disk["cells"][2]["source"])
        (room,) = server.rooms.values()
        await einstein.files.write(info.id, notebook.to_bytes(disk), lock=room._lease.lock)
        state = await a.until(lambda d: d["cells"][2].startswith("EXTERNAL "))
        assert state["cells"][5].endswith("# unsaved live edit")
