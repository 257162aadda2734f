"""Nothing outside ``<root>/files`` (or another user's home) is reachable, by any route."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from gateway_helpers import OK, Session, share

from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.gateway.namespace import Namespace, Node


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.txt").write_bytes(b"top secret")
    return secret


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/einstein/../marie", c.CODE_INVALID_ARGUMENT),
        ("/home/einstein/../../../etc/passwd", c.CODE_INVALID_ARGUMENT),
        ("/home/einstein/a\x00b", c.CODE_INVALID_ARGUMENT),
        ("/home/einstein/..\\..\\etc", c.CODE_INVALID_ARGUMENT),
        ("home/einstein", c.CODE_INVALID_ARGUMENT),
        ("/etc/passwd", c.CODE_PERMISSION_DENIED),
        ("/", c.CODE_PERMISSION_DENIED),
        ("/home", c.CODE_PERMISSION_DENIED),
        ("/home/marie", c.CODE_PERMISSION_DENIED),
        ("/home/nobody/x", c.CODE_PERMISSION_DENIED),
        ("/home/einstein/" + "x" * 300, c.CODE_INVALID_ARGUMENT),
        ("/home/einstein/missing", c.CODE_NOT_FOUND),
        ("//home//einstein/./", OK),
    ],
)
async def test_absolute_path_tricks(einstein: Session, path: str, expected: int) -> None:
    assert (await einstein.stat(path)).status.code == expected
    code, _, _ = await einstein.put(path.rstrip("/") + "/new.txt", b"x")
    if expected != OK:
        assert code != OK


async def test_malformed_references(einstein: Session) -> None:
    home = (await einstein.stat(einstein.home)).info.id
    cases = [
        res.Reference(),
        res.Reference(resource_id=res.ResourceId()),
        res.Reference(resource_id=res.ResourceId(storage_id=home.storage_id)),
        res.Reference(resource_id=home, path="sub/x"),
        res.Reference(resource_id=home, path="/etc/passwd"),
        res.Reference(resource_id=home, path="./../marie"),
        res.Reference(resource_id=home, path="./a/../../x"),
    ]
    for ref in cases:
        resp = await einstein.call("Stat", sp.StatRequest(ref=ref))
        assert resp.status.code == c.CODE_INVALID_ARGUMENT, ref
    unknown = res.ResourceId(storage_id=home.storage_id, opaque_id="no-such-id")
    resp = await einstein.call("Stat", sp.StatRequest(ref=res.Reference(resource_id=unknown)))
    assert resp.status.code == c.CODE_NOT_FOUND
    other = res.ResourceId(storage_id="other-storage", opaque_id=home.opaque_id)
    resp = await einstein.call("Stat", sp.StatRequest(ref=res.Reference(resource_id=other)))
    assert resp.status.code == c.CODE_NOT_FOUND


async def test_id_refs_to_other_users_files(einstein: Session, marie: Session) -> None:
    assert (await marie.put("/home/marie/private.txt", b"mine"))[2] == 200
    rid = (await marie.stat("/home/marie/private.txt")).info.id
    home_rid = (await marie.stat("/home/marie")).info.id
    ref = res.Reference(resource_id=rid)
    assert (await einstein.call("Stat", sp.StatRequest(ref=ref))).status.code == (
        c.CODE_PERMISSION_DENIED
    )
    assert (await einstein.get(ref))[0] == -c.CODE_PERMISSION_DENIED
    rel = res.Reference(resource_id=home_rid, path="./private.txt")
    assert (await einstein.call("Stat", sp.StatRequest(ref=rel))).status.code == (
        c.CODE_PERMISSION_DENIED
    )
    delete = await einstein.call("Delete", sp.DeleteRequest(ref=ref))
    assert delete.status.code == c.CODE_PERMISSION_DENIED
    assert (await marie.get("/home/marie/private.txt")) == (200, b"mine")


async def test_symlinks_are_not_followed(
    gateway: EmbeddedGateway, einstein: Session, marie: Session, outside: Path
) -> None:
    home = gateway.root / "files" / "home" / "einstein"
    os.symlink(outside, home / "escape")
    os.symlink(outside / "secret.txt", home / "secret.txt")
    os.symlink(gateway.root / "files" / "home" / "marie", home / "marie")
    for path in ("/home/einstein/escape", "/home/einstein/escape/secret.txt",
                 "/home/einstein/secret.txt", "/home/einstein/marie"):
        assert (await einstein.stat(path)).status.code == c.CODE_PERMISSION_DENIED, path
        assert (await einstein.get(path))[0] == -c.CODE_PERMISSION_DENIED
        code, _, _ = await einstein.put(path + "/x", b"x")
        assert code == c.CODE_PERMISSION_DENIED
    listing = await einstein.call(
        "ListContainer", sp.ListContainerRequest(ref=res.Reference(path=einstein.home)))
    assert listing.status.code == OK
    assert [i.name for i in listing.infos] == []
    assert (outside / "secret.txt").read_bytes() == b"top secret"


async def test_symlink_swapped_in_after_initiate(
    gateway: EmbeddedGateway, einstein: Session, outside: Path
) -> None:
    (gateway.root / "files/home/einstein/dir").mkdir()
    init = await einstein.call("InitiateFileUpload", sp.InitiateFileUploadRequest(
        ref=res.Reference(path="/home/einstein/dir/x.txt")))
    assert init.status.code == OK
    (gateway.root / "files/home/einstein/dir").rmdir()
    os.symlink(outside, gateway.root / "files/home/einstein/dir")
    async with einstein.http.put(init.protocols[0].upload_endpoint, data=b"evil") as put:
        assert put.status == 403
    assert not (outside / "x.txt").exists()


async def test_transfer_tokens(gateway: EmbeddedGateway, einstein: Session) -> None:
    assert (await einstein.put("/home/einstein/f.txt", b"data"))[2] == 200
    down = await einstein.call("InitiateFileDownload", sp.InitiateFileDownloadRequest(
        ref=res.Reference(path="/home/einstein/f.txt")))
    up = await einstein.call("InitiateFileUpload", sp.InitiateFileUploadRequest(
        ref=res.Reference(path="/home/einstein/f.txt")))
    base = f"{gateway.http_url}/datagateway"
    dtoken, utoken = down.protocols[0].token, up.protocols[0].token
    http = einstein.http
    # Token in the path or in X-Reva-Transfer.
    async with http.get(f"{base}/{dtoken}") as r:
        assert (r.status, await r.read()) == (200, b"data")
    async with http.get(base, headers={"X-Reva-Transfer": dtoken}) as r:
        assert r.status == 200
    # Missing, garbage, forged, wrong operation, access token as transfer token.
    forged = jwt.encode({"op": "download", "node": "x", "aud": "reva-datagateway",
                         "iat": int(time.time()), "exp": int(time.time()) + 60}, "g" * 64,
                        algorithm="HS256")
    for url, headers in [
        (base, {}), (f"{base}/garbage", {}), (f"{base}/{forged}", {}),
        (f"{base}/{utoken}", {}), (f"{base}/{einstein.token}", {}),
        (f"{base}/x", {"X-Reva-Transfer": "garbage"}),
    ]:
        async with http.get(url, headers=headers) as r:
            assert r.status == 403, url
    async with http.put(f"{base}/{dtoken}", data=b"evil") as r:
        assert r.status == 403
    # Expired, correctly signed.
    db = sqlite3.connect(gateway.root / "meta.sqlite")
    secret = db.execute("SELECT value FROM settings WHERE key='secret:transfer'").fetchone()[0]
    db.close()
    claims = jwt.decode(dtoken, secret, algorithms=["HS256"], audience="reva-datagateway")
    claims.update(iat=int(time.time()) - 700, exp=int(time.time()) - 100)
    expired = jwt.encode(claims, secret, algorithm="HS256")
    async with http.get(f"{base}/{expired}") as r:
        assert r.status == 403
    # A valid token may not be bent to another path: the path is inside the signature.
    async with http.get(f"{base}/{dtoken}/../../meta.sqlite") as r:
        assert r.status in (403, 404)


async def test_shared_folder_scope(einstein: Session, marie: Session) -> None:
    for path in ("/home/einstein/proj", "/home/einstein/private"):
        resp = await einstein.call("CreateContainer", sp.CreateContainerRequest(
            ref=res.Reference(path=path)))
        assert resp.status.code == OK
    assert (await einstein.put("/home/einstein/proj/a.txt", b"a"))[2] == 200
    assert (await einstein.put("/home/einstein/private/b.txt", b"b"))[2] == 200
    await share(einstein, "/home/einstein/proj", "marie", editor=False)
    assert await marie.get("/home/einstein/proj/a.txt") == (200, b"a")
    assert (await marie.stat("/home/einstein/private/b.txt")).status.code == (
        c.CODE_PERMISSION_DENIED
    )
    proj = (await marie.stat("/home/einstein/proj")).info.id
    rel = res.Reference(resource_id=proj, path="./a.txt")
    assert (await marie.get(rel)) == (200, b"a")
    code, _, _ = await marie.put("/home/einstein/proj/new.txt", b"x")
    assert code == c.CODE_PERMISSION_DENIED  # viewer


def swap_after(monkeypatch: pytest.MonkeyPatch, method: str, rel: str, swap: Any) -> None:
    """Run ``swap()`` once, right after ``Namespace.<method>`` resolved ``rel``: a symlink
    put in place after the symlink check passed, before the gateway acts on the path."""
    original = getattr(Namespace, method)
    pending = [swap]

    def resolved_then_swapped(self: Namespace, *args: Any) -> Node:
        node: Node = original(self, *args)
        if node.rel == rel and pending:
            pending.pop()()
        return node

    monkeypatch.setattr(Namespace, method, resolved_then_swapped)


async def test_a_file_swapped_for_a_symlink_after_the_check_is_not_statted(
    gateway: EmbeddedGateway, einstein: Session, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = gateway.root / "files/home/einstein"
    assert (await einstein.put("/home/einstein/notes.txt", b"mine"))[2] == 200

    def swap() -> None:
        (home / "notes.txt").unlink()
        os.symlink(outside / "secret.txt", home / "notes.txt")

    swap_after(monkeypatch, "resolve", "home/einstein/notes.txt", swap)
    stat = await einstein.stat("/home/einstein/notes.txt")
    assert stat.status.code == c.CODE_PERMISSION_DENIED
    assert (home / "notes.txt").is_symlink()  # the swap did happen


async def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_listed(
    gateway: EmbeddedGateway, einstein: Session, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = gateway.root / "files/home/einstein"
    (home / "dir").mkdir()

    def swap() -> None:
        (home / "dir").rmdir()
        os.symlink(outside, home / "dir")

    swap_after(monkeypatch, "resolve", "home/einstein/dir", swap)
    listing = await einstein.call(
        "ListContainer", sp.ListContainerRequest(ref=res.Reference(path="/home/einstein/dir")))
    assert listing.status.code == c.CODE_PERMISSION_DENIED
    assert not listing.infos


async def test_a_home_swapped_for_a_symlink_after_the_check_is_not_counted(
    gateway: EmbeddedGateway, einstein: Session, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = gateway.root / "files/home/einstein"

    def swap() -> None:
        home.rename(home.with_name("einstein.real"))
        os.symlink(outside, home)

    # GetQuota resolves the home, then counts the folder the check let through.
    swap_after(monkeypatch, "node", "home/einstein", swap)
    quota = await einstein.call("GetQuota", gw.GetQuotaRequest())
    assert quota.status.code == c.CODE_PERMISSION_DENIED
    assert quota.used_bytes == 0
