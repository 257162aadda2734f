"""/api/contents on CS3: the user's home, "Shared with me", checkpoints as versions, errors."""

from __future__ import annotations

import base64
import copy
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tornado.web import HTTPError

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.models import Lock, Role, UserId
from mesh_collab.jupyter.contents import checkpoint_id, http_error, version_key
from mesh_collab.jupyter.fileids import path_for, resource_id_for
from mesh_collab.pytest_plugin import in_own_task
from tests.data import NOTEBOOKS

Node = Any
NodeFactory = Any


def _normal(nb: dict[str, Any]) -> dict[str, Any]:
    """A notebook as nbformat reads it, without the notary's per-cell ``trusted`` marks."""
    node = nbformat.from_dict(copy.deepcopy(nb))
    for cell in node.cells:
        cell.metadata.pop("trusted", None)
    return json.loads(nbformat.writes(node))  # type: ignore[no-any-return]


@pytest.fixture
async def marie_node(node_factory: NodeFactory, gateway: EmbeddedGateway) -> Node:
    return await node_factory(gateway, cs3_username="marie", cs3_password="radioactivity")


async def share_with_marie(
    einstein: Session, marie: Session, path: str, content: bytes, role: Role
) -> None:
    info = await einstein.files.write(path, content)
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, role)
    await marie.shares.accept(share.id)


# ---- listing, get, save -------------------------------------------------------------------


async def test_root_lists_einsteins_home(node: Node, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/hello.txt", b"hi")
    await einstein.files.write("/home/einstein/.hidden", b"secret")
    await einstein.files.mkdir("/home/einstein/work")
    response = await node.contents("GET")
    assert response.status_code == 200
    model = response.json()
    assert model["type"] == "directory" and model["path"] == ""
    entries = {m["name"]: m for m in model["content"]}
    assert set(entries) == {"hello.txt", "work", "Shared with me"}
    assert entries["hello.txt"]["type"] == "file" and entries["hello.txt"]["size"] == 2
    assert entries["hello.txt"]["writable"] is True
    assert entries["hello.txt"]["mimetype"] == "text/plain"
    assert entries["work"]["type"] == "directory"
    assert entries["Shared with me"]["writable"] is False
    assert (await node.contents("GET", ".hidden")).status_code == 404

    text = (await node.contents("GET", "hello.txt")).json()
    assert (text["content"], text["format"]) == ("hi", "text")


@pytest.mark.parametrize("name", ["Running_Code.ipynb", "LHCb_OpenData_Spark.ipynb"])
async def test_notebook_round_trip(node: Node, einstein: Session, name: str) -> None:
    original = json.loads((NOTEBOOKS / name).read_text())
    saved = await node.contents(
        "PUT", f"nb/{name}", body={"type": "notebook", "format": "json", "content": original}
    )
    assert saved.status_code == 404  # the folder does not exist yet
    assert (await node.contents("PUT", "nb", body={"type": "directory"})).status_code == 201
    saved = await node.contents(
        "PUT", f"nb/{name}", body={"type": "notebook", "format": "json", "content": original}
    )
    assert saved.status_code == 201, saved.text
    model = saved.json()
    assert model["type"] == "notebook" and model["path"] == f"nb/{name}"
    assert model["content"] is None and model["writable"] is True

    got = (await node.contents("GET", f"nb/{name}")).json()
    assert got["format"] == "json" and got["mimetype"] is None
    assert _normal(got["content"]) == _normal(nbformat.reads(json.dumps(original), 4))
    stored = await einstein.files.read(f"/home/einstein/nb/{name}")
    assert _normal(json.loads(stored)) == _normal(got["content"])

    hashed = (
        await node.contents("GET", f"nb/{name}", params={"hash": "1", "content": "0"})
    ).json()
    info = await einstein.files.stat(f"/home/einstein/nb/{name}")
    assert hashed["hash"] == info.etag and hashed["hash_algorithm"] == "etag"
    assert hashed["size"] == info.size


async def test_files_text_base64_and_types(node: Node, einstein: Session) -> None:
    raw = bytes(range(256))
    put = await node.contents(
        "PUT",
        "blob.bin",
        body={"type": "file", "format": "base64", "content": base64.b64encode(raw).decode()},
    )
    assert put.status_code == 201
    assert await einstein.files.read("/home/einstein/blob.bin") == raw
    got = (await node.contents("GET", "blob.bin")).json()
    assert got["format"] == "base64" and base64.b64decode(got["content"]) == raw
    assert (await node.contents("GET", "blob.bin", params={"format": "text"})).status_code == 400
    assert (
        await node.contents("GET", "blob.bin", params={"type": "directory"})
    ).status_code == 400
    assert (await node.contents("GET", "", params={"type": "file"})).status_code == 400


async def test_last_modified_moves_forward(node: Node) -> None:
    stamps = []
    for i in range(3):
        body = {"type": "file", "format": "text", "content": f"v{i}"}
        model = (await node.contents("PUT", "t.txt", body=body)).json()
        stamps.append(datetime.fromisoformat(model["last_modified"].replace("Z", "+00:00")))
    assert stamps[0] < stamps[1] < stamps[2]


async def test_new_untitled_copy_delete(node: Node, einstein: Session) -> None:
    new = await node.contents("POST", "", body={"type": "notebook"})
    assert new.status_code == 201 and new.json()["name"] == "Untitled.ipynb"
    folder = await node.contents("POST", "", body={"type": "directory"})
    assert folder.json()["name"] == "Untitled Folder"
    copied = await node.contents("POST", "", body={"copy_from": "Untitled.ipynb"})
    assert copied.status_code == 201 and copied.json()["name"] == "Untitled-Copy1.ipynb"
    assert (await node.contents("DELETE", "Untitled-Copy1.ipynb")).status_code == 204
    with pytest.raises(errors.NotFound):
        await einstein.files.stat("/home/einstein/Untitled-Copy1.ipynb")
    assert (await node.contents("DELETE", "Untitled-Copy1.ipynb")).status_code == 404


async def test_rename_keeps_the_resource_id(node: Node, einstein: Session) -> None:
    body = {"type": "notebook", "content": nbformat.v4.new_notebook()}
    assert (await node.contents("PUT", "a.ipynb", body=body)).status_code == 201
    before = await resource_id_for(einstein, "a.ipynb")
    response = await node.contents("PATCH", "a.ipynb", body={"path": "renamed.ipynb"})
    assert response.status_code == 200 and response.json()["path"] == "renamed.ipynb"
    assert await resource_id_for(einstein, "renamed.ipynb") == before
    assert await path_for(einstein, before) == "renamed.ipynb"
    assert (await node.contents("GET", "a.ipynb")).status_code == 404
    # renaming onto an existing file is refused
    assert (await node.contents("PUT", "b.ipynb", body=body)).status_code == 201
    clash = await node.contents("PATCH", "renamed.ipynb", body={"path": "b.ipynb"})
    assert clash.status_code == 409


# ---- shares -------------------------------------------------------------------------------


async def test_viewer_share_is_read_only(
    marie_node: Node, einstein: Session, marie: Session
) -> None:
    nb = nbformat.writes(nbformat.v4.new_notebook()).encode()
    await share_with_marie(einstein, marie, "/home/einstein/view.ipynb", nb, Role.VIEWER)
    folder = (await marie_node.contents("GET", "Shared with me")).json()
    assert folder["writable"] is False and folder["type"] == "directory"
    (entry,) = folder["content"]
    assert entry["path"] == "Shared with me/view.ipynb"
    assert entry["type"] == "notebook" and entry["writable"] is False
    got = await marie_node.contents("GET", "Shared with me/view.ipynb")
    assert got.status_code == 200 and got.json()["writable"] is False
    refused = await marie_node.contents(
        "PUT",
        "Shared with me/view.ipynb",
        body={"type": "notebook", "content": got.json()["content"]},
    )
    assert refused.status_code == 403
    assert "'Shared with me/view.ipynb'" in refused.json()["message"]
    # the virtual folder itself refuses new entries, deletes and renames
    new = await marie_node.contents(
        "PUT", "Shared with me/new.txt", body={"type": "file", "format": "text", "content": ""}
    )
    assert new.status_code == 403
    assert (await marie_node.contents("DELETE", "Shared with me/view.ipynb")).status_code == 403
    moved = await marie_node.contents(
        "PATCH", "Shared with me/view.ipynb", body={"path": "mine.ipynb"}
    )
    assert moved.status_code == 403


async def test_editor_share_is_writable(
    marie_node: Node, einstein: Session, marie: Session
) -> None:
    await share_with_marie(einstein, marie, "/home/einstein/edit.txt", b"v1", Role.EDITOR)
    got = (await marie_node.contents("GET", "Shared with me/edit.txt")).json()
    assert got["writable"] is True and got["content"] == "v1"
    saved = await marie_node.contents(
        "PUT", "Shared with me/edit.txt", body={"type": "file", "format": "text", "content": "v2"}
    )
    assert saved.status_code == 200, saved.text
    assert await einstein.files.read("/home/einstein/edit.txt") == b"v2"


async def test_shared_folder_is_browsable(
    marie_node: Node, einstein: Session, marie: Session
) -> None:
    await einstein.files.mkdir("/home/einstein/proj")
    await einstein.files.write("/home/einstein/proj/inner.txt", b"inside")
    info = await einstein.files.stat("/home/einstein/proj")
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    listing = (await marie_node.contents("GET", "Shared with me/proj")).json()
    assert [m["path"] for m in listing["content"]] == ["Shared with me/proj/inner.txt"]
    got = (await marie_node.contents("GET", "Shared with me/proj/inner.txt")).json()
    assert got["content"] == "inside"
    rid = await resource_id_for(einstein, "proj/inner.txt")
    assert await resource_id_for(marie, "Shared with me/proj/inner.txt") == rid
    assert await path_for(marie, rid) == "Shared with me/proj/inner.txt"


async def test_two_paths_one_resource_id(einstein: Session, marie: Session) -> None:
    await share_with_marie(einstein, marie, "/home/einstein/both.ipynb", b"{}", Role.VIEWER)
    owner = await resource_id_for(einstein, "both.ipynb")
    recipient = await resource_id_for(marie, "Shared with me/both.ipynb")
    assert owner == recipient == (await einstein.files.stat("/home/einstein/both.ipynb")).id
    assert await path_for(einstein, owner) == "both.ipynb"
    assert await path_for(marie, owner) == "Shared with me/both.ipynb"
    with pytest.raises(errors.NotFound):
        await resource_id_for(marie, "Shared with me")
    with pytest.raises(errors.NotFound):
        await resource_id_for(marie, "Shared with me/nothing-such.ipynb")


async def test_ocm_share_from_another_site(
    caplog: pytest.LogCaptureFixture,
    gateway: EmbeddedGateway,
    gateway_factory: Any,
    cs3_client_factory: Any,
    node_factory: NodeFactory,
    einstein: Session,
) -> None:
    site_b = await gateway_factory(site="site-b")
    gateway.trusted_providers, site_b.trusted_providers = [site_b.domain], [gateway.domain]
    marie_b = await (await cs3_client_factory(site_b.grpc_address)).login("marie", "radioactivity")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print('from site a')"))
    info = await einstein.files.write("/home/einstein/remote.ipynb", nbformat.writes(nb).encode())
    await einstein.ocm.create(info.id, UserId(idp=site_b.domain, opaque_id="marie"), Role.EDITOR)
    (received,) = await marie_b.ocm.received()
    await marie_b.ocm.accept(received.id)

    node_b = await node_factory(
        site_b, site="site-b", cs3_username="marie", cs3_password="radioactivity"
    )
    caplog.set_level(logging.DEBUG, logger="httpx")
    folder = (await node_b.contents("GET", "Shared with me")).json()
    (entry,) = folder["content"]
    assert entry["path"] == "Shared with me/remote.ipynb" and entry["type"] == "notebook"
    assert entry["writable"] is True  # an editor share: edited through the live room
    got = (
        await node_b.contents("GET", "Shared with me/remote.ipynb", params={"hash": "1"})
    ).json()
    assert got["content"]["cells"][0]["source"] == "print('from site a')"
    assert got["hash"] and got["hash_algorithm"] == "etag"
    refused = await node_b.contents(
        "PUT", "Shared with me/remote.ipynb", body={"type": "notebook", "content": got["content"]}
    )
    assert refused.status_code == 403 and "another site" in refused.json()["message"]
    # the room key is the owner's resource id, at both sites
    assert await resource_id_for(marie_b, "Shared with me/remote.ipynb") == info.id
    assert await path_for(marie_b, info.id) == "Shared with me/remote.ipynb"
    assert (
        await node_b.api("GET", "contents/Shared%20with%20me/remote.ipynb/checkpoints")
    ).json() == []
    # The WebDAV URI carries the share's secret: it is masked in httpx's request log.
    assert "/dav/ocm/<redacted>" in caplog.text
    assert received.shared_secret not in caplog.text


# ---- checkpoints --------------------------------------------------------------------------


async def test_checkpoints_are_versions(node: Node, einstein: Session) -> None:
    path = "cp.ipynb"
    first = nbformat.v4.new_notebook()
    first.cells.append(nbformat.v4.new_markdown_cell("first"))
    second = nbformat.v4.new_notebook()
    second.cells.append(nbformat.v4.new_markdown_cell("second"))
    await node.contents("PUT", path, body={"type": "notebook", "content": first})
    none_yet = await node.contents("POST", path, "/checkpoints")
    assert none_yet.status_code == 201 and none_yet.json()["id"] == "current"
    await node.contents("PUT", path, body={"type": "notebook", "content": second})

    listed = (await node.contents("GET", path, "/checkpoints")).json()
    versions = await einstein.versions.list(f"/home/einstein/{path}")
    assert [c["id"] for c in listed] == [checkpoint_id(v.key) for v in versions]
    assert len(listed) == 1
    created = await node.contents("POST", path, "/checkpoints")
    assert created.status_code == 201 and created.json()["id"] == listed[0]["id"]

    restored = await node.contents("POST", path, f"/checkpoints/{listed[0]['id']}")
    assert restored.status_code == 204, restored.text
    got = (await node.contents("GET", path)).json()
    assert got["content"]["cells"][0]["source"] == "first"
    # the replaced content became a version in turn
    assert len((await node.contents("GET", path, "/checkpoints")).json()) == 2
    deleted = await node.contents("DELETE", path, f"/checkpoints/{listed[0]['id']}")
    assert deleted.status_code == 405
    unknown = await node.contents("POST", path, "/checkpoints/nonsense")
    assert unknown.status_code == 404


def test_checkpoint_ids_round_trip() -> None:
    for key in ("1700000000123.abcd1234", "v1", "a/b:c=="):
        cid = checkpoint_id(key)
        assert all(ch.isalnum() or ch in "_-" for ch in cid)
        assert version_key(cid) == key


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.NotFound(), 404),
        (errors.PermissionDenied(), 403),
        (errors.Unauthenticated(), 401),
        (errors.LockConflict(), 409),
        (errors.AlreadyExists(), 409),
        (errors.Conflict(), 409),
        (errors.InvalidArgument(), 400),
        (errors.QuotaExceeded(), 413),
        (errors.Unimplemented(), 501),
        (errors.StorageUnavailable(), 503),
        (errors.StorageInternal("disk on fire"), 500),
        (errors.StorageError(), 500),
    ],
)
def test_http_error_mapping(exc: errors.StorageError, status: int) -> None:
    mapped = http_error(exc, "dir/nb.ipynb")
    assert isinstance(mapped, HTTPError) and mapped.status_code == status
    assert "'dir/nb.ipynb'" in (mapped.log_message or "")


def test_lock_conflict_names_the_holder() -> None:
    mapped = http_error(errors.LockConflict(), "nb.ipynb", holder="'office' (user 'marie')")
    assert mapped.status_code == 409 and "'office' (user 'marie')" in (mapped.log_message or "")


async def test_errors_over_http(
    node_factory: NodeFactory, gateway: EmbeddedGateway, einstein: Session
) -> None:
    node = await node_factory(gateway, max_notebook_size=2000)
    assert (await node.contents("GET", "missing.ipynb")).status_code == 404

    info = await einstein.files.write("/home/einstein/locked.txt", b"x")
    await einstein.locks.set(info.id, Lock(lock_id="other-lock", app_name="office-suite"))
    locked = await node.contents(
        "PUT", "locked.txt", body={"type": "file", "format": "text", "content": "y"}
    )
    assert locked.status_code == 409
    assert (
        "office-suite" in locked.json()["message"] and "other-lock" not in locked.json()["message"]
    )

    big = nbformat.v4.new_notebook()
    big.cells.append(nbformat.v4.new_markdown_cell("x" * 5000))
    too_big = await node.contents("PUT", "big.ipynb", body={"type": "notebook", "content": big})
    assert too_big.status_code == 413

    chunked = await node.contents(
        "PUT", "c.txt", body={"type": "file", "format": "text", "content": "a", "chunk": 1}
    )
    assert chunked.status_code == 400 and "Chunked" in chunked.json()["message"]
    assert (
        await node.contents("PUT", "x.txt", body={"type": "file", "content": "a"})
    ).status_code == 400
    bad_nb = await einstein.files.write("/home/einstein/bad.ipynb", b"{not json")
    assert bad_nb.size
    assert (await node.contents("GET", "bad.ipynb")).status_code == 400


async def test_unreachable_storage_is_503(node_factory: NodeFactory, tmp_path: Path) -> None:
    hosted = in_own_task(EmbeddedGateway(root=tmp_path / "gone", site="site-gone"))
    gw = await hosted.__aenter__()
    try:
        node = await node_factory(gw, rpc_timeout=2.0)
        assert (await node.contents("GET")).status_code == 200
    finally:
        await hosted.__aexit__(None, None, None)
    response = await node.contents("GET")
    assert response.status_code == 503, response.text


def _nested(depth: int) -> bytes:
    """A notebook whose metadata holds JSON nested ``depth`` deep."""
    return (b'{"cells": [], "metadata": {"x": ' + b"[" * depth + b"]" * depth
            + b'}, "nbformat": 4, "nbformat_minor": 5}')


@pytest.mark.parametrize("depth", [100_000, 600])
async def test_a_deeply_nested_notebook_is_refused_not_an_internal_error(
    node: Node, einstein: Session, depth: int
) -> None:
    """JSON nested too deeply for the parsers (100,000 deep: 195 KB) answers what any other
    file that is not a notebook answers: 400 from the contents API, 415 from the
    collaboration session; never 500."""
    await einstein.files.write("/home/einstein/deep.ipynb", _nested(depth))
    got = await node.contents("GET", "deep.ipynb")
    assert got.status_code == 400, got.text
    session = await node.api(
        "PUT", "collaboration/session/deep.ipynb", body={"format": "json", "type": "notebook"}
    )
    assert session.status_code == 415, session.text
    put = await node.contents(
        "PUT", "deep-copy.ipynb", content=b'{"type": "notebook", "content": ' + _nested(depth)
        + b"}",
    )
    assert put.status_code == 400, put.text
    # The node serves on.
    assert (await node.contents("GET")).status_code == 200
