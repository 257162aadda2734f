"""Two nodes of one site behind one gateway: the Reva lock decides the primary.

Both nodes are real ``jupyter server`` processes. The second finds the room's primary through
the lock id and links to it; when the primary is killed, the second takes the lock once it
expires; a primary that was frozen and comes back finds its lease lost, stops writing and
links to the new primary.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from mesh_collab import notebook
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from tests.data import NOTEBOOKS as DATA
from tests.helpers import MeshNode, mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import TOKEN, jupyter_process
from tests.nodepeer import node_peer

pytestmark = pytest.mark.timeout(180)
NOWHERE = "http://127.0.0.1:9/"


def node_args(gateway: EmbeddedGateway, peers: Path, node: MeshNode) -> tuple[str, ...]:
    return (
        f"--MeshCollabApp.gateway={gateway.grpc_address}",
        "--MeshCollabApp.site=site-a",
        "--MeshCollabApp.lock_expiry=3",
        "--MeshCollabApp.checkpoint_quiet_period=0.2",
        "--MeshCollabApp.checkpoint_max_interval=1",
        f"--MeshCollabApp.peers=@{peers}",
        *node.args,
    )


ENV = {"MESH_COLLAB_CS3_USERNAME": "einstein", "MESH_COLLAB_CS3_PASSWORD": "relativity"}


async def open_room(url: str, path: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.put(
            f"{url}api/collaboration/session/{quote(path)}",
            json={"format": "json", "type": "notebook"},
            headers={"Authorization": f"token {TOKEN}"},
        )
    assert response.status_code == 201, response.text
    return f"json:notebook:{response.json()['fileId']}"


def ws(url: str) -> str:
    return url.replace("http://", "ws://") + "api/collaboration/room"


async def eventually(check: Any) -> Any:
    """Poll storage (no change events there) until ``check()`` is truthy."""
    with anyio.fail_after(30):
        while not (result := await check()):  # noqa: ASYNC110 - storage has no events
            await anyio.sleep(0.1)
    return result


async def holder(einstein: Session, rid: Any) -> str:
    lock = await einstein.locks.get(rid)
    return lock.lock_id if lock is not None else ""


class Site:
    """Site A's two nodes (node1, node2) and its mesh directory."""

    def __init__(self, gateway: EmbeddedGateway, tmp_path: Path) -> None:
        self.gateway = gateway
        self.peers = tmp_path / "mesh.json"
        self.nodes = [mesh_node(tmp_path, "site-a", f"node{i}") for i in (1, 2)]
        for node in self.nodes:
            node.key  # noqa: B018 - made here, before the node reads it

    def args(self, i: int) -> tuple[str, ...]:
        """The command line of node ``i`` (1 or 2)."""
        return node_args(self.gateway, self.peers, self.nodes[i - 1])

    def write(self, url1: str, url2: str = NOWHERE) -> None:
        """List both nodes (a node not started yet at an address nobody answers): the
        other node of the site is found there by the id the lock names."""
        write_mesh(self.peers, mesh_site("site-a", self.gateway.domain,
                                         (self.nodes[0], url1), (self.nodes[1], url2)))


@pytest.fixture
async def setup(gateway: EmbeddedGateway, einstein: Session, tmp_path: Path) -> Any:
    info = await einstein.files.write(
        "/home/einstein/f.ipynb", (DATA / "Running_Code.ipynb").read_bytes()
    )
    return info, Site(gateway, tmp_path)


async def test_kill_9_of_the_primary_then_failover_after_lock_expiry(
    setup: Any, einstein: Session, tmp_path: Path, jupyter_env: Path
) -> None:
    info, site = setup
    async with jupyter_process(tmp_path, jupyter_env, name="node1", env=ENV,
                               args=site.args(1)) as n1:
        site.write(n1.url)
        room = await open_room(n1.url, "f.ipynb")
        async with node_peer(ws(n1.url), room, {"token": TOKEN}) as p1:
            await eventually(lambda: _held_by(einstein, info.id, "node1"))
            async with jupyter_process(
                tmp_path, jupyter_env, name="node2", env=ENV, args=site.args(2)
            ) as n2:
                site.write(n1.url, n2.url)
                await open_room(n2.url, "f.ipynb")
                async with node_peer(ws(n2.url), room, {"token": TOKEN}) as p2:
                    await p1.send(op="append", cell=0, text=" #from-1")
                    await p2.until(lambda d: d["cells"][0].endswith(" #from-1"))
                    await p2.send(op="append", cell=1, text=" #from-2")
                    await p1.until(lambda d: d["cells"][1].endswith(" #from-2"))

                    os.kill(n1.process.pid, signal.SIGKILL)
                    await n1.process.wait()
                    await p2.send(op="append", cell=2, text=" #while-1-is-dead")
                    await eventually(lambda: _held_by(einstein, info.id, "node2"))

                    async def saved() -> bool:
                        nb = notebook.from_bytes(await einstein.files.read(info.id))
                        sources = [c["source"] for c in nb["cells"]]
                        return sources[2].endswith(" #while-1-is-dead") and sources[0].endswith(
                            " #from-1"
                        )

                    await eventually(saved)
                    nb = notebook.from_bytes(await einstein.files.read(info.id))
                    assert len(nb["cells"]) == 28
                    # The new primary took in the dead one's last checkpoint: nothing twice.
                    tokens = (" #from-1", " #from-2", " #while-1-is-dead")
                    assert_once(tokens, "".join(c["source"] for c in nb["cells"]))
                    assert_once(tokens, "".join((await p2.dump())["cells"]))


def assert_once(tokens: Any, text: str) -> None:
    """Every token is in ``text`` exactly once (not merely there: a duplicate fails)."""
    counts = {token: text.count(token) for token in tokens}
    assert all(n == 1 for n in counts.values()), counts


async def test_a_linked_secondary_never_merges_the_primarys_checkpoints_again(
    setup: Any, einstein: Session, tmp_path: Path, jupyter_env: Path
) -> None:
    """Two nodes of a site linked over many file polls and checkpoints: every token typed on
    either node is in both nodes' documents and in the file exactly once."""
    info, site = setup
    poll = ("--MeshCollabApp.file_poll_interval=0.3",)
    async with jupyter_process(tmp_path, jupyter_env, name="node1", env=ENV,
                               args=(*site.args(1), *poll)) as n1:
        site.write(n1.url)
        room = await open_room(n1.url, "f.ipynb")
        async with node_peer(ws(n1.url), room, {"token": TOKEN}) as p1:
            await eventually(lambda: _held_by(einstein, info.id, "node1"))
            async with jupyter_process(
                tmp_path, jupyter_env, name="node2", env=ENV, args=site.args(2)
            ) as n2:
                site.write(n1.url, n2.url)
                await open_room(n2.url, "f.ipynb")
                async with node_peer(ws(n2.url), room, {"token": TOKEN}) as p2:
                    tokens: list[str] = []
                    for i in range(6):  # each round: a checkpoint, several polls of node 2
                        for peer, cell in ((p1, 0), (p2, 1)):
                            token = f" tk-{cell}-{i}"
                            tokens.append(token)
                            await peer.send(op="append", cell=cell, text=token)

                        async def checkpointed() -> bool:
                            data = (await einstein.files.read(info.id)).decode()
                            return all(t in data for t in tokens)

                        await eventually(checkpointed)
                    for peer in (p1, p2):
                        state = await peer.until(
                            lambda d: all(t in "".join(d["cells"]) for t in tokens))
                        assert_once(tokens, "".join(state["cells"]))
                    nb = notebook.from_bytes(await einstein.files.read(info.id))
                    assert_once(tokens, "".join(c["source"] for c in nb["cells"]))
                    assert len(nb["cells"]) == 28


async def _held_by(einstein: Session, rid: Any, node_id: str) -> str:
    """The lock id, if node ``node_id`` holds the lock (``mesh_collab:<site>:<node id>:
    <epoch>``)."""
    lock_id = await holder(einstein, rid)
    parts = lock_id.split(":")
    return lock_id if len(parts) == 4 and parts[2] == node_id else ""


async def test_returning_primary_sees_its_lease_lost_and_links_to_the_new_one(
    setup: Any, einstein: Session, tmp_path: Path, jupyter_env: Path
) -> None:
    info, site = setup
    async with jupyter_process(tmp_path, jupyter_env, name="node1", env=ENV,
                               args=site.args(1)) as n1:
        site.write(n1.url)
        room = await open_room(n1.url, "f.ipynb")
        async with node_peer(ws(n1.url), room, {"token": TOKEN}) as p1:
            await eventually(lambda: _held_by(einstein, info.id, "node1"))
            async with jupyter_process(
                tmp_path, jupyter_env, name="node2", env=ENV, args=site.args(2)
            ) as n2:
                site.write(n1.url, n2.url)
                await open_room(n2.url, "f.ipynb")
                async with node_peer(ws(n2.url), room, {"token": TOKEN}) as p2:
                    os.kill(n1.process.pid, signal.SIGSTOP)
                    try:
                        await eventually(lambda: _held_by(einstein, info.id, "node2"))
                        await p2.send(op="append", cell=3, text=" #while-1-was-frozen")
                    finally:
                        os.kill(n1.process.pid, signal.SIGCONT)
                    # Back, node 1 finds its lease gone, stops writing and links to node 2.
                    state = await p1.until(lambda d: any(
                        s.get("mesh", {}).get("lock") == "linked" for s in d["awareness"]
                    ))
                    (status,) = [s["mesh"] for s in state["awareness"] if "mesh" in s]
                    assert status["holder"] == n2.url  # where the directory lists node2
                    await p1.until(lambda d: d["cells"][3].endswith(" #while-1-was-frozen"))
                    await p1.send(op="append", cell=4, text=" #1-is-back")
                    await p2.until(lambda d: d["cells"][4].endswith(" #1-is-back"))
                    assert await _held_by(einstein, info.id, "node2")
