"""Two sites, each a CS3 gateway and a Jupyter node: einstein at site A and marie at site B
co-edit einstein's notebook, shared with marie over OCM. Real Yjs peers (Node) on each node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.models import Role, UserId
from mesh_collab.federation.directory import MeshDirectory
from mesh_collab.federation.handshake import link_headers
from mesh_collab.federation.protocol import PATH
from tests.data import NOTEBOOKS as DATA
from tests.data import TRACES
from tests.helpers import MeshNode, mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.nodepeer import node_peer
from tests.reliability.yclient import YClient


def identities(tmp: Path) -> dict[str, MeshNode]:
    """The nodes' identities: site A's "a1" (and "a2", when it runs), site B's "b1"."""
    return {name: mesh_node(tmp, f"site-{name[0]}", name) for name in ("a1", "a2", "b1")}


class Mesh:
    def __init__(self, a: Node, b: Node, rid: str, einstein: Session, tmp: Path) -> None:
        self.a, self.b, self.rid, self.einstein, self.tmp = a, b, rid, einstein, tmp
        self.domains = ("", "")
        self.gateways: tuple[Any, ...] = ()
        self.peers_file = tmp / "mesh.json"
        self.ids = identities(tmp)
        #: Other nodes of site A, listed with a1.
        self.more_a: list[tuple[MeshNode, str]] = []

    def write_directory(self, a_url: str | None = None) -> None:
        """Write the mesh directory; ``a_url`` is how site B reaches site A's node."""
        write_mesh(
            self.peers_file,
            mesh_site("site-a", self.domains[0], (self.ids["a1"], a_url or self.a.url),
                      *self.more_a),
            mesh_site("site-b", self.domains[1], (self.ids["b1"], self.b.url)),
        )

    def headers(self, rid: str | None = None, **changes: str) -> dict[str, str]:
        """A genuine handshake of site B's node for a room of site A's node (some of its
        headers replaced by ``changes``)."""
        site = MeshDirectory.from_config(json.loads(self.peers_file.read_text())).site("site-a")
        assert site is not None and site.entry is not None
        headers, _ = link_headers(self.ids["b1"].local(), site, site.entry, rid or self.rid,
                                  "notebook")
        return {**headers, **changes}

    @property
    def room(self) -> str:
        return f"json:notebook:{self.rid}"


def ws_base(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "api/collaboration/room"


async def session_of(node: Node, path: str) -> dict[str, Any]:
    response = await node.api(
        "PUT", f"collaboration/session/{quote(path)}",
        body={"format": "json", "type": "notebook"},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def two_sites(
    gateway_factory: Any,
    cs3_client_factory: Any,
    node_factory: NodeFactory,
    tmp_path: Path,
    *,
    role: Role = Role.EDITOR,
    write_directory: bool = True,
    **traits: Any,
) -> Mesh:
    gw_a = await gateway_factory(site="site-a")
    gw_b = await gateway_factory(site="site-b")
    # Each gateway shares with (and takes shares from) the other only.
    gw_a.trusted_providers, gw_b.trusted_providers = [gw_b.domain], [gw_a.domain]
    einstein = await (await cs3_client_factory(gw_a.grpc_address)).login("einstein", "relativity")
    marie_b: CS3Client = await cs3_client_factory(gw_b.grpc_address)
    marie = await marie_b.login("marie", "radioactivity")
    info = await einstein.files.write(
        "/home/einstein/shared.ipynb", (DATA / "Running_Code.ipynb").read_bytes()
    )
    await einstein.ocm.create(info.id, UserId(idp=gw_b.domain, opaque_id="marie"), role)
    (received,) = await marie.ocm.received()
    await marie.ocm.accept(received.id)
    peers_file = tmp_path / "mesh.json"
    ids = identities(tmp_path)
    a = await node_factory(gw_a, site="site-a", peers=f"@{peers_file}", **ids["a1"].traits,
                           **traits)
    b = await node_factory(
        gw_b, site="site-b", cs3_username="marie", cs3_password="radioactivity",
        peers=f"@{peers_file}", **ids["b1"].traits, **traits,
    )
    mesh = Mesh(a, b, str(info.id), einstein, tmp_path)
    mesh.domains = (gw_a.domain, gw_b.domain)
    mesh.gateways = (gw_a, gw_b)
    mesh.peers_file = peers_file
    if write_directory:
        mesh.write_directory()
    return mesh


@pytest.fixture
async def mesh(gateway_factory, cs3_client_factory, node_factory, tmp_path) -> Mesh:
    return await two_sites(gateway_factory, cs3_client_factory, node_factory, tmp_path)


async def test_live_edits_and_presence_cross_both_ways(mesh: Mesh) -> None:
    s_a = await session_of(mesh.a, "shared.ipynb")
    s_b = await session_of(mesh.b, "Shared with me/shared.ipynb")
    assert s_a["fileId"] == s_b["fileId"] == mesh.rid  # one room key at both sites
    async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as a, node_peer(
        ws_base(mesh.b), mesh.room, {"token": TOKEN}
    ) as b:
        assert len((await b.dump())["cells"]) == 28
        await a.send(op="append", cell=0, text=" # from site A")
        await b.until(lambda d: d["cells"][0].endswith(" # from site A"))
        await b.send(op="append", cell=1, text=" # from site B")
        await a.until(lambda d: d["cells"][1].endswith(" # from site B"))
        await b.send(op="cursor", cell=1, index=2)
        seen = await a.until(lambda d: any(
            s.get("user", {}).get("site") == "site-b" and "cursors" in s for s in d["awareness"]
        ))
        (marie_state,) = [s for s in seen["awareness"] if "cursors" in s]
        assert marie_state["user"]["username"] == "marie"
    # The home node (site A) checkpoints; site B never writes einstein's file.
    for _ in range(200):
        from mesh_collab import notebook

        nb = notebook.from_bytes(await mesh.einstein.files.read(mesh.rid))
        if nb["cells"][1]["source"].endswith(" # from site B"):
            break
        await anyio.sleep(0.1)  # storage has no change events: poll it
    assert nb["cells"][1]["source"].endswith(" # from site B")
    assert nb["cells"][0]["source"].endswith(" # from site A")


async def test_remote_viewer_is_read_only_at_the_home_site(
    gateway_factory, cs3_client_factory, node_factory, tmp_path
) -> None:
    mesh = await two_sites(
        gateway_factory, cs3_client_factory, node_factory, tmp_path, role=Role.VIEWER
    )
    await session_of(mesh.b, "Shared with me/shared.ipynb")
    async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as a, node_peer(
        ws_base(mesh.b), mesh.room, {"token": TOKEN}
    ) as b:
        await a.send(op="append", cell=0, text=" # einstein")
        await b.until(lambda d: d["cells"][0].endswith(" # einstein"))
        await b.send(op="append", cell=2, text=" # marie tries")
        await a.send(op="append", cell=3, text=" # einstein again")
        await b.until(lambda d: d["cells"][3].endswith(" # einstein again"))
        assert not (await a.dump())["cells"][2].endswith(" # marie tries")


async def link(node: Node, rid: str, headers: dict[str, str]) -> tuple[int | None, str]:
    url = node.url.replace("http://", "ws://") + PATH.lstrip("/") + quote(rid, safe="$!")
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        msg = await ws.receive()
        return ws.close_code, str(msg.data)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        pytest.param(None, CloseCode.UNAUTHORIZED, id="no-credentials"),
        pytest.param({"Authorization": "MeshSig d3Jvbmc="}, CloseCode.UNAUTHORIZED,
                     id="wrong-signature"),
        pytest.param({"X-Mesh-Site": "site-z"}, CloseCode.UNAUTHORIZED, id="unknown-site"),
        pytest.param({"X-Mesh-Node": "b2"}, CloseCode.UNAUTHORIZED, id="unknown-node"),
        pytest.param({"Authorization": "MeshPeer secret-of-site-b-secret-of-site-b-",
                      "X-Mesh-Protocol": "1"}, CloseCode.PROTOCOL_VERSION, id="old-protocol"),
        pytest.param({"X-Mesh-Protocol": "99"}, CloseCode.PROTOCOL_VERSION, id="other-version"),
    ],
)
async def test_wrong_peers_are_refused(
    mesh: Mesh, changes: dict[str, str] | None, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    # No credentials at all: only the protocol version of the handshake.
    headers = {"X-Mesh-Protocol": "2"} if changes is None else mesh.headers(**changes)
    close_code, _ = await link(mesh.a, mesh.rid, headers)
    assert close_code == code
    signature = headers.get("Authorization", "").partition(" ")[2]
    assert not signature or signature not in caplog.text


async def test_peer_for_a_notebook_not_shared_with_its_site_is_refused(mesh: Mesh) -> None:
    other = await mesh.einstein.files.write(
        "/home/einstein/private.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    close_code, _ = await link(mesh.a, str(other.id), mesh.headers(str(other.id)))
    assert close_code == CloseCode.FORBIDDEN


async def test_home_site_enforces_a_remote_viewer_even_if_the_other_node_does_not(
    gateway_factory, cs3_client_factory, node_factory, tmp_path
) -> None:
    """A misbehaving site B node forwards its viewer's edit: site A still refuses it."""
    from pycrdt import Doc, Text

    from mesh_collab import protocol

    mesh = await two_sites(
        gateway_factory, cs3_client_factory, node_factory, tmp_path, role=Role.VIEWER
    )
    url = mesh.a.url.replace("http://", "ws://") + PATH.lstrip("/") + quote(mesh.rid, safe="$!")
    headers = mesh.headers()  # site B's genuine node key: the node is who it says
    forged = Doc()
    forged.get("intruder", type=Text).insert(0, "written by a viewer")
    async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as a:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            welcome = protocol.parse((await ws.receive()).data)
            assert protocol.decode_control(welcome.payload)["type"] == "welcome"
            await next_awareness(ws)  # the room's greeting: presence of everybody
            # It introduces its user marie (a viewer by her OCM share) and forwards her edit.
            await ws.send_bytes(protocol.control({"type": "user", "user": "marie"}))
            await ws.send_bytes(protocol.control({"type": "author", "user": "marie"}))
            await ws.send_bytes(protocol.update(forged.get_update()))
            await ws.send_bytes(protocol.sync_step2(forged.get_update()))
            # The room handles one connection's frames in order: once it answers this query,
            # it has processed (and refused) the forged ones.
            await ws.send_bytes(b"\x03")
            await next_awareness(ws)
            await a.send(op="append", cell=0, text=" # marker")
            await a.until(lambda d: d["cells"][0].endswith(" # marker"))
        async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as fresh:
            state = await fresh.dump()
            assert state["cells"][0].endswith(" # marker")
    nodes_doc = mesh.a.state.server.rooms
    (room,) = nodes_doc.values()
    assert "intruder" not in room.room.doc.keys() or str(
        room.room.doc.get("intruder", type=Text)
    ) == ""


async def next_awareness(ws: aiohttp.ClientWebSocketResponse) -> None:
    from mesh_collab import protocol

    with anyio.fail_after(10):
        while protocol.parse((await ws.receive()).data).kind is not protocol.Kind.AWARENESS:
            pass


async def test_partition_cut_delay_blackhole_then_heal(
    gateway_factory, cs3_client_factory, node_factory, tmp_path
) -> None:
    """Both sides edit through a link that is cut, slowed and blackholed; after healing both
    hold the same notebook, every edit exactly once, no duplicated cells."""
    from urllib.parse import urlsplit

    from tests.tcpproxy import Mode, tcp_proxy

    mesh = await two_sites(
        gateway_factory, cs3_client_factory, node_factory, tmp_path, write_directory=False
    )
    a_port = urlsplit(mesh.a.url).port
    assert a_port is not None
    async with tcp_proxy("127.0.0.1", a_port) as proxy:
        mesh.write_directory(a_url=f"http://127.0.0.1:{proxy.port}/")
        await session_of(mesh.b, "Shared with me/shared.ipynb")
        async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as a, node_peer(
            ws_base(mesh.b), mesh.room, {"token": TOKEN}
        ) as b:
            expected_a, expected_b = [], []

            async def both_type(tag: str) -> None:
                text_a, text_b = f" A-{tag}", f" B-{tag}"
                expected_a.append(text_a)
                expected_b.append(text_b)
                await a.send(op="append", cell=4, text=text_a)
                await b.send(op="append", cell=5, text=text_b)

            await both_type("online")
            await b.until(lambda d: d["cells"][4].endswith(" A-online"))
            for mode in (Mode.CUT, Mode.DELAY, Mode.BLACKHOLE):
                proxy.set(mode, delay=0.3)
                await both_type(mode.value)
                source = f"# cell from A during {mode.value}"
                await a.send(op="insert_cell", index=6, source=source)
                # Each side keeps working on its own; the outage is the thing tested.
                await anyio.sleep(1.5)
                proxy.set(Mode.PASS)
                await b.until(lambda d, m=mode.value: d["cells"][4].endswith(f" A-{m}"))
                await a.until(lambda d, m=mode.value: d["cells"][5].endswith(f" B-{m}"))
            final_a = await a.dump()
            final_b = await b.until(lambda d: d["cells"] == final_a["cells"])
            cells = final_b["cells"]
            assert len(cells) == 28 + 3  # three inserted cells, nothing duplicated
            assert cells[4].endswith("".join(expected_a))
            assert cells[5].endswith("".join(expected_b))
            for text in expected_a + expected_b:
                assert "".join(cells).count(text) == 1
        assert proxy.connections >= 2  # the link really reconnected


def replay_offline(trace: dict[str, Any]) -> list[tuple[int, bytes, dict[int, int]]]:
    """Each txn of a concurrent trace as (agent, Yjs update, state it needs), computed on one
    document per agent that holds exactly the txn's causal past (positions refer to it)."""
    from pycrdt import Doc, Text

    from mesh_collab.protocol import decode_state_vector

    txns = trace["txns"]
    docs = [Doc(client_id=1000 + a) for a in range(trace["numAgents"])]
    texts = [d.get("trace", type=Text) for d in docs]
    applied: list[set[int]] = [set() for _ in docs]
    updates: list[bytes] = []
    after: list[dict[int, int]] = []
    out = []
    for i, txn in enumerate(txns):
        agent = txn["agent"]
        doc, text, done = docs[agent], texts[agent], applied[agent]
        missing, stack = [], list(txn["parents"])
        while stack:
            p = stack.pop()
            if p in done:
                continue
            done.add(p)
            missing.append(p)
            stack.extend(txns[p]["parents"])
        for p in sorted(missing):
            doc.apply_update(updates[p])
        needs: dict[int, int] = {}
        for p in txn["parents"]:
            for client, clock in after[p].items():
                needs[client] = max(needs.get(client, 0), clock)
        before = doc.get_state()
        with doc.transaction():
            for pos, delete, insert in txn["patches"]:
                if delete:
                    del text[pos : pos + delete]
                if insert:
                    text.insert(pos, insert)
        done.add(i)
        updates.append(doc.get_update(before))
        after.append(decode_state_vector(doc.get_state()))
        out.append((agent, updates[-1], needs))
    return out


async def test_friendsforever_trace_typed_through_two_sites(mesh: Mesh) -> None:
    """The two agents of a real concurrent editing session type through two sites; both
    sites end with the trace's endContent."""
    import gzip

    from pycrdt import Text

    from mesh_collab.protocol import decode_state_vector
    from tests.wschannel import synced_doc

    trace = json.loads(gzip.open(TRACES / "friendsforever.json.gz").read())
    txns = await anyio.to_thread.run_sync(replay_offline, trace)
    await session_of(mesh.b, "Shared with me/shared.ipynb")
    url_a, url_b = (
        n.url.replace("http://", "ws://") + f"api/collaboration/room/{mesh.room}?token={TOKEN}"
        for n in (mesh.a, mesh.b)
    )
    async with synced_doc(url_a) as doc_a, synced_doc(url_b) as doc_b:
        docs = [doc_a, doc_b]
        changed = [anyio.Event(), anyio.Event()]

        def watch(k: int) -> Any:
            def poke(_event: object) -> None:
                changed[k].set()
            return poke

        for k, d in enumerate(docs):
            d.observe(watch(k))
        for agent, update, needs in txns:
            doc = docs[agent]
            with anyio.fail_after(20):
                while True:
                    have = decode_state_vector(doc.get_state())
                    if all(have.get(c, 0) >= n for c, n in needs.items()):
                        break
                    changed[agent] = anyio.Event()
                    await changed[agent].wait()
            doc.apply_update(update)
        end = trace["endContent"]
        for k, d in enumerate(docs):
            with anyio.fail_after(60):
                while str(d.get("trace", type=Text)) != end:
                    changed[k] = anyio.Event()
                    await changed[k].wait()


async def test_three_nodes_two_sites_converge(
    gateway_factory, cs3_client_factory, node_factory, tmp_path
) -> None:
    """Site A runs two nodes behind one gateway, site B one: the second node of site A links
    to the primary found through the lock, site B links to site A; all three converge."""
    mesh = await two_sites(
        gateway_factory, cs3_client_factory, node_factory, tmp_path, write_directory=False
    )
    a2 = await node_factory(mesh.gateways[0], site="site-a", peers=f"@{mesh.peers_file}",
                            **mesh.ids["a2"].traits)
    # Both nodes of site A, with their real addresses: A2 finds the primary that the lock
    # names (by its node id) here.
    mesh.more_a = [(mesh.ids["a2"], a2.url)]
    mesh.write_directory()
    await session_of(mesh.a, "shared.ipynb")  # node A1 opens first: it takes the lock
    async with node_peer(ws_base(mesh.a), mesh.room, {"token": TOKEN}) as p1:
        lock = await mesh.einstein.locks.get(mesh.rid)
        assert lock is not None and lock.lock_id.split(":")[:3] == ["mesh_collab", "site-a", "a1"]
        await session_of(a2, "shared.ipynb")
        await session_of(mesh.b, "Shared with me/shared.ipynb")
        async with node_peer(ws_base(a2), mesh.room, {"token": TOKEN}) as p2, node_peer(
            ws_base(mesh.b), mesh.room, {"token": TOKEN}
        ) as p3:
            for k, peer in enumerate((p1, p2, p3)):
                await peer.send(op="append", cell=k, text=f" #node{k + 1}")
            for peer in (p1, p2, p3):
                await peer.until(lambda d: all(
                    d["cells"][k].endswith(f" #node{k + 1}") for k in range(3)
                ))
            states = [(await p.dump())["cells"] for p in (p1, p2, p3)]
            assert states[0] == states[1] == states[2] and len(states[0]) == 28
            status = [s["mesh"] for s in (await p2.dump())["awareness"] if "mesh" in s]
            # The holder as the directory lists it.
            assert status[0]["lock"] == "linked" and status[0]["holder"] == mesh.a.url
            # A second round after the primary checkpointed the first: every token on every
            # node and in the file exactly once (a checkpoint taken in twice would not be).
            tokens = [f" #node{k + 1}" for k in range(3)] + [f" #again{k + 1}" for k in range(3)]

            async def saved_with(some: list[str]) -> None:
                with anyio.fail_after(30):
                    while True:
                        data = (await mesh.einstein.files.read(mesh.rid)).decode()
                        if all(t in data for t in some):
                            return
                        await anyio.sleep(0.2)  # storage has no change events

            await saved_with(tokens[:3])
            for k, peer in enumerate((p1, p2, p3)):
                await peer.send(op="append", cell=k, text=tokens[3 + k])
            await saved_with(tokens)
            for peer in (p1, p2, p3):
                state = await peer.until(lambda d: all(t in "".join(d["cells"]) for t in tokens))
                text = "".join(state["cells"])
                assert {t: text.count(t) for t in tokens} == dict.fromkeys(tokens, 1)
            saved = "".join(
                "".join(c["source"]) for c in json.loads(
                    await mesh.einstein.files.read(mesh.rid))["cells"])
            assert {t: saved.count(t) for t in tokens} == dict.fromkeys(tokens, 1)


async def test_ctrl_s_at_the_replica_is_forwarded_to_the_home_node(
    gateway_factory, cs3_client_factory, node_factory, tmp_path
) -> None:
    """marie presses Ctrl+S at site B: site A (the primary, holding the lock) checkpoints
    what she typed, and her save is answered "success" only once it is in einstein's file."""
    # No timer would save within the test: only the save request can.
    mesh = await two_sites(
        gateway_factory, cs3_client_factory, node_factory, tmp_path,
        checkpoint_quiet_period=600, checkpoint_max_interval=900,
    )
    s_b = await session_of(mesh.b, "Shared with me/shared.ipynb")
    url = f"{ws_base(mesh.b)}/{mesh.room}?sessionId={s_b['sessionId']}"
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        marie = await tg.start(
            YClient(url, headers={"Authorization": f"token {TOKEN}"}).run, http
        )
        await marie.synced.wait()
        source = marie.nb.ycells[0]["source"]
        source += " # saved from site B"
        assert (await marie.save(3)) == {"type": "save", "responseTo": 3, "status": "success"}
        from mesh_collab import notebook

        saved = notebook.from_bytes(await mesh.einstein.files.read(mesh.rid))
        assert saved["cells"][0]["source"].endswith(" # saved from site B")
        await marie.close()
