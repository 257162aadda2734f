"""Two histories of one document never sync: a link whose welcome names another lineage is
refused with close code 4409, and nothing of either history reaches the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from pycrdt import Array, Doc

from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.federation.directory import MeshDirectory
from mesh_collab.federation.link import PeerLink
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Room
from tests.data import NOTEBOOKS as DATA
from tests.helpers import mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import NodeFactory

NOWHERE = "http://127.0.0.1:9/"


async def linked_state(link: PeerLink, *states: str) -> None:
    changed = anyio.Event()
    link.on_state = lambda _state: changed.set()
    with anyio.fail_after(20):
        while link.state not in states:
            await changed.wait()
            changed = anyio.Event()


async def test_a_link_to_another_lineage_is_refused_and_nothing_syncs(
    node_factory: NodeFactory, gateway: Any, einstein: Session, tmp_path: Path
) -> None:
    info = await einstein.files.write(
        "/home/einstein/lineage.ipynb", (DATA / "notebook3.ipynb").read_bytes()
    )
    # The node under test (the primary of site A) and a second node of site A, played by
    # the test's PeerLink with its own key.
    home = mesh_node(tmp_path, "site-a", "home")
    other = mesh_node(tmp_path, "site-a", "other")
    peers = tmp_path / "mesh.json"
    node = await node_factory(gateway, site="site-a", peers=f"@{peers}", **home.traits)
    entry = mesh_site("site-a", gateway.domain, (home, node.url), (other, NOWHERE))
    write_mesh(peers, entry)
    site = MeshDirectory.from_config([entry]).site("site-a")
    assert site is not None and site.entry is not None
    rid = ResourceId.parse(str(info.id))

    async def link_with(lineage: str) -> tuple[PeerLink, Room]:
        room = Room("json:notebook:" + str(rid), doc=Doc())
        link = PeerLink(room, rid, remote=site, node=site.entry, local=other.local(),
                        lineage=lambda: lineage)
        return link, room

    async with anyio.create_task_group() as tg:
        link, room = await link_with("some-other-history")
        async with room:
            tg.start_soon(link.run)
            await linked_state(link, "refused", "online")
            assert link.state == "refused"
            assert link.close_code == CloseCode.LINEAGE_MISMATCH
            assert link.lineage and link.lineage != "some-other-history"
            assert not room.doc.get("cells", type=Array).to_py()
            tg.cancel_scope.cancel()
    # The same link with no lineage of its own yet (a new replica) syncs.
    async with anyio.create_task_group() as tg:
        link, room = await link_with("")
        async with room:
            tg.start_soon(link.run)
            with anyio.fail_after(20):
                await link.synced.wait()
            assert len(room.doc.get("cells", type=Array)) > 0
            tg.cancel_scope.cancel()
