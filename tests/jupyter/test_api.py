"""The REST API of the JupyterLab extension (``/api/mesh/*``, mesh_collab/jupyter/api.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import httpx
from pycrdt import Text

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role, ShareState
from tests.helpers import mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import Node, NodeFactory


def nb(*sources: str) -> bytes:
    return json.dumps(
        {
            "cells": [
                {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                 "outputs": [], "source": src}
                for i, src in enumerate(sources)
            ],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    ).encode()


async def mesh(
    node: Node, method: str, route: str, body: Any = None, **query: str
) -> httpx.Response:
    suffix = f"?{urlencode(query)}" if query else ""
    return await node.api(method, f"mesh/{route}{suffix}", body=body)


def message(response: httpx.Response) -> str:
    return str(response.json()["message"])


async def test_users_search_this_site(node: Node) -> None:
    found = await mesh(node, "GET", "users", q="mar")
    assert found.status_code == 200, found.text
    assert [u["username"] for u in found.json()["users"]] == ["marie"]
    assert found.json()["users"][0]["site"] == "site-a"
    mine = await mesh(node, "GET", "users", q="einst")
    assert mine.json()["users"] == []  # not yourself
    short = await mesh(node, "GET", "users", q="m")
    assert short.status_code == 400
    assert "at least 2 characters" in message(short)


async def test_local_share_list_and_revoke(node: Node, einstein: Session, marie: Session) -> None:
    await einstein.files.write("/home/einstein/a.ipynb", nb("x = 1"))
    created = await mesh(node, "POST", "shares", {"path": "a.ipynb", "grantee": "marie",
                                                  "role": "editor"})
    assert created.status_code == 201, created.text
    share = created.json()
    assert (share["kind"], share["grantee"], share["site"], share["role"]) == (
        "local", "marie", "site-a", "editor")
    again = await mesh(node, "POST", "shares", {"path": "a.ipynb", "grantee": "marie"})
    assert again.status_code == 409
    assert "already shared with 'marie'" in message(again)
    listed = (await mesh(node, "GET", "shares", path="a.ipynb")).json()["shares"]
    assert [s["id"] for s in listed] == [share["id"]]
    (received,) = await marie.shares.received()
    assert received.state is ShareState.PENDING
    by_me = (await mesh(node, "GET", "shared-by-me")).json()["shares"]
    assert [(s["path"], s["grantee"], s["role"]) for s in by_me] == [
        ("a.ipynb", "marie", "editor")]
    gone = await mesh(node, "DELETE", "shares", id=share["id"], kind="local")
    assert gone.status_code == 204
    assert (await mesh(node, "GET", "shares", path="a.ipynb")).json()["shares"] == []
    assert await marie.shares.received() == []


async def test_share_errors_are_readable(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/a.ipynb", nb("x = 1"))
    nobody = await mesh(node, "POST", "shares", {"path": "a.ipynb", "grantee": "bob"})
    assert nobody.status_code == 404
    assert message(nobody) == "no user 'bob' at site-a"
    missing = await mesh(node, "POST", "shares", {"path": "nope.ipynb", "grantee": "marie"})
    assert missing.status_code == 404
    assert "'nope.ipynb'" in message(missing)
    no_site = await mesh(node, "POST", "shares", {"path": "a.ipynb", "grantee": "marie@site-z"})
    assert no_site.status_code == 400
    assert message(no_site) == "no site 'site-z' in the mesh"
    bad_role = await mesh(node, "POST", "shares", {"path": "a.ipynb", "grantee": "marie",
                                                   "role": "owner"})
    assert bad_role.status_code == 400
    assert "viewer or editor" in message(bad_role)
    not_json = await node.api("POST", "mesh/shares", content=b"{")
    assert not_json.status_code == 400
    assert "not JSON" in not_json.json()["message"]
    revoke = await mesh(node, "DELETE", "shares", id="no-such-share", kind="local")
    assert revoke.status_code == 404
    assert "no-such-share" in message(revoke)


async def test_received_accept_and_decline(
    gateway: Any, node_factory: NodeFactory, einstein: Session, marie: Session
) -> None:
    a = await einstein.files.write("/home/einstein/a.ipynb", nb("x = 1"))
    b = await einstein.files.write("/home/einstein/b.ipynb", nb("y = 2"))
    assert marie.user is not None
    await einstein.shares.create(a.id, marie.user.id, Role.VIEWER)
    await einstein.shares.create(b.id, marie.user.id, Role.EDITOR)
    node = await node_factory(gateway, cs3_username="marie", cs3_password="radioactivity")
    shares = (await mesh(node, "GET", "received")).json()["shares"]
    assert sorted((s["name"], s["owner"], s["role"], s["state"], s["kind"]) for s in shares) == [
        ("a.ipynb", "einstein", "viewer", "pending", "local"),
        ("b.ipynb", "einstein", "editor", "pending", "local"),
    ]
    ids = {s["name"]: s["id"] for s in shares}
    ok = await mesh(node, "POST", "received", {"id": ids["a.ipynb"], "kind": "local",
                                               "action": "accept"})
    assert ok.json()["state"] == "accepted"
    await mesh(node, "POST", "received", {"id": ids["b.ipynb"], "kind": "local",
                                          "action": "decline"})
    after = (await mesh(node, "GET", "received")).json()["shares"]
    states = {s["name"]: s["state"] for s in after}
    assert states == {"a.ipynb": "accepted", "b.ipynb": "declined"}
    listing = await node.contents("GET", "Shared with me")
    assert [c["name"] for c in listing.json()["content"]] == ["a.ipynb"]
    # The viewer's own role, which awareness does not tell its own browser.
    status = (await mesh(node, "GET", "status", path="Shared with me/a.ipynb")).json()
    assert (status["role"], status["writable"], status["owner"], status["remote"]) == (
        "viewer", False, "einstein", False)
    bad = await mesh(node, "POST", "received", {"id": ids["a.ipynb"], "action": "maybe"})
    assert bad.status_code == 400
    assert "accept or decline" in message(bad)
    own = await mesh(node, "POST", "shares", {"path": "Shared with me/a.ipynb",
                                              "grantee": "richard"})
    assert own.status_code == 400
    assert "only your own files" in message(own)


async def test_ocm_share_to_another_site(
    gateway_factory: Any, cs3_client_factory: Any, node_factory: NodeFactory, tmp_path: Path
) -> None:
    gw_a = await gateway_factory(site="site-a")
    gw_b = await gateway_factory(site="site-b")
    gw_a.trusted_providers, gw_b.trusted_providers = [gw_b.domain], [gw_a.domain]
    nowhere = "http://127.0.0.1:9/"  # no linking in this test
    id_a, id_b = mesh_node(tmp_path, "site-a"), mesh_node(tmp_path, "site-b")
    peers = write_mesh(tmp_path / "mesh.json", mesh_site("site-a", gw_a.domain, (id_a, nowhere)),
                       mesh_site("site-b", gw_b.domain, (id_b, nowhere)))
    einstein = await (await cs3_client_factory(gw_a.grpc_address)).login("einstein", "relativity")
    await einstein.files.write("/home/einstein/a.ipynb", nb("x = 1"))
    node_a = await node_factory(gw_a, site="site-a", peers=f"@{peers}", **id_a.traits)
    node_b = await node_factory(gw_b, site="site-b", cs3_username="marie",
                                cs3_password="radioactivity", peers=f"@{peers}", **id_b.traits)
    sites = (await mesh(node_a, "GET", "sites")).json()
    assert sites["site"] == "site-a"
    assert [(s["name"], s["local"]) for s in sites["sites"]] == [
        ("site-a", True), ("site-b", False)]
    # Names and domains only: not where the nodes are, nor their keys.
    assert all(set(s) == {"name", "domain", "local"} for s in sites["sites"])
    assert nowhere not in json.dumps(sites) and "ed25519:" not in json.dumps(sites)
    created = await mesh(node_a, "POST", "shares", {"path": "a.ipynb", "grantee": "marie@site-b",
                                                    "role": "editor"})
    assert created.status_code == 201, created.text
    assert (created.json()["kind"], created.json()["site"]) == ("ocm", "site-b")
    listed = (await mesh(node_a, "GET", "shares", path="a.ipynb")).json()["shares"]
    assert [(s["kind"], s["grantee"], s["site"], s["role"]) for s in listed] == [
        ("ocm", "marie", "site-b", "editor")]
    by_me = (await mesh(node_a, "GET", "shared-by-me")).json()["shares"]
    assert [(s["path"], s["grantee"], s["site"], s["kind"]) for s in by_me] == [
        ("a.ipynb", "marie", "site-b", "ocm")]
    (received,) = (await mesh(node_b, "GET", "received")).json()["shares"]
    assert (received["name"], received["owner"], received["site"], received["state"],
            received["kind"]) == ("a.ipynb", "einstein", "site-a", "pending", "ocm")
    accepted = await mesh(node_b, "POST", "received", {"id": received["id"], "kind": "ocm",
                                                       "action": "accept"})
    assert accepted.status_code == 200, accepted.text
    status = (await mesh(node_b, "GET", "status", path="Shared with me/a.ipynb")).json()
    assert (status["role"], status["home"], status["remote"]) == ("editor", "site-a", True)
    versions = await mesh(node_b, "GET", "versions", path="Shared with me/a.ipynb")
    assert versions.status_code == 400
    assert "kept by its owner's site" in message(versions)
    revoked = await mesh(node_a, "DELETE", "shares", id=listed[0]["id"], kind="ocm")
    assert revoked.status_code == 204
    assert (await mesh(node_a, "GET", "shares", path="a.ipynb")).json()["shares"] == []


async def test_versions_and_restore_through_the_live_room(
    node: Node, einstein: Session, marie: Session, gateway: Any, node_factory: NodeFactory
) -> None:
    await einstein.files.write("/home/einstein/h.ipynb", nb("first = 1"))
    info = await einstein.files.write("/home/einstein/h.ipynb", nb("second = 2"))
    listed = await mesh(node, "GET", "versions", path="h.ipynb")
    assert listed.status_code == 200, listed.text
    (version,) = listed.json()["versions"]
    assert listed.json()["writable"] is True
    # A collaborator has the notebook open: the room is live.
    session = await node.api("PUT", f"collaboration/session/{quote('h.ipynb')}",
                             body={"format": "json", "type": "notebook"})
    assert session.status_code == 201, session.text
    room = node.state.server.rooms[info.id]
    assert room.ynotebook.get_cell(0)["source"] == "second = 2"
    restored = await mesh(node, "POST", "restore", {"path": "h.ipynb", "key": version["key"]})
    assert restored.status_code == 200, restored.text
    assert restored.json()["edited"] == 1
    # Restored in the live room (what every collaborator sees), then checkpointed from it.
    assert room.ynotebook.get_cell(0)["source"] == "first = 1"
    with anyio.fail_after(20):
        while b"first = 1" not in await einstein.files.read(info.id):  # noqa: ASYNC110
            await anyio.sleep(0.1)  # storage has no change events: poll it
    bad = await mesh(node, "POST", "restore", {"path": "h.ipynb", "key": "no-such-version"})
    assert bad.status_code == 404
    assert "'h.ipynb'" in message(bad)
    # A viewer lists the versions but may not restore.
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.VIEWER)
    await marie.shares.accept(share.id)
    viewer = await node_factory(gateway, cs3_username="marie", cs3_password="radioactivity")
    seen = (await mesh(viewer, "GET", "versions", path="Shared with me/h.ipynb")).json()
    assert seen["writable"] is False and len(seen["versions"]) >= 1
    refused = await mesh(viewer, "POST", "restore",
                         {"path": "Shared with me/h.ipynb", "key": version["key"]})
    assert refused.status_code == 403
    assert message(refused) == "viewers cannot restore versions of 'Shared with me/h.ipynb'"


async def test_api_needs_authentication(node: Node) -> None:
    async with httpx.AsyncClient() as anonymous:
        response = await anonymous.get(f"{node.url}api/mesh/received")
    assert response.status_code == 403


async def test_status_of_own_notebook(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/own.ipynb", nb("x = 1"))
    status = (await mesh(node, "GET", "status", path="own.ipynb")).json()
    assert (status["role"], status["site"], status["home"], status["owner"]) == (
        "editor", "site-a", "site-a", "einstein")
    missing = await mesh(node, "GET", "status", path="nope.ipynb")
    assert missing.status_code == 404
    assert "'nope.ipynb'" in message(missing)


async def test_a_text_file_version_is_restored_through_its_live_room(
    node: Node, einstein: Session
) -> None:
    await einstein.files.write("/home/einstein/notes.md", b"# first draft\n")
    info = await einstein.files.write("/home/einstein/notes.md", b"# second draft\n")
    (version,) = (await mesh(node, "GET", "versions", path="notes.md")).json()["versions"]
    session = await node.api("PUT", f"collaboration/session/{quote('notes.md')}",
                             body={"format": "text", "type": "file"})
    assert session.status_code == 201, session.text
    room = node.state.server.rooms[info.id]
    assert room.kind.name == "file"
    restored = await mesh(node, "POST", "restore", {"path": "notes.md", "key": version["key"]})
    assert restored.status_code == 200, restored.text
    assert str(room.room.doc.get("source", type=Text)) == "# first draft\n"
    with anyio.fail_after(20):
        while await einstein.files.read(info.id) != b"# first draft\n":  # noqa: ASYNC110
            await anyio.sleep(0.1)  # storage has no change events: poll it
