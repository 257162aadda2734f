"""Versions: every overwrite keeps the replaced content, restorable (contract suite)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role, UserId
from mesh_collab.pytest_plugin import Site


async def test_each_overwrite_keeps_a_version(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/v.ipynb"
    for content in (b"v1", b"v2", b"v3"):
        await einstein.files.write(path, content)
    versions = await einstein.versions.list(path)
    assert len(versions) == 2
    assert [await einstein.versions.read(path, v.key) for v in versions] == [b"v2", b"v1"]
    assert versions[0].mtime >= versions[1].mtime


async def test_restore_makes_a_version_current_and_keeps_history(
    einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/v.ipynb"
    first = await einstein.files.write(path, b"v1")
    await einstein.files.write(path, b"v2")
    (old,) = await einstein.versions.list(path)
    await einstein.versions.restore(path, old.key)
    assert await einstein.files.read(path) == b"v1"
    info = await einstein.files.stat(path)
    assert info.id == first.id
    versions = await einstein.versions.list(path)
    contents = [await einstein.versions.read(path, v.key) for v in versions]
    assert b"v2" in contents  # the replaced content was kept


async def test_unknown_version_is_not_found(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/v.ipynb"
    await einstein.files.write(path, b"v1")
    assert await einstein.versions.list(path) == []
    with pytest.raises(errors.NotFound):
        await einstein.versions.restore(path, "no-such-version")
    with pytest.raises(errors.NotFound):
        await einstein.versions.read(path, "no-such-version")


async def test_only_the_owner_may_write_without_keeping_a_version(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    if not site.embedded:
        pytest.skip("the embedded gateway's rule: X-Disable-Versioning is the owner's only")
    folder = f"{workdir}/proj"
    await einstein.files.mkdir(folder)
    nb = await einstein.files.write(f"{folder}/nb.ipynb", b"by einstein")
    info = await einstein.files.stat(folder)
    assert marie.user is not None
    await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    # The owner's sidecar beside a notebook keeps no history (mesh_collab's own writes).
    sidecar = f"{folder}/.~mesh_collab.x.a.ystate"
    await einstein.files.write(sidecar, b"s1", disable_versioning=True)
    await einstein.files.write(sidecar, b"s2", disable_versioning=True)
    assert await einstein.versions.list(sidecar) == []

    # A grantee's write keeps the replaced content, whatever the grantee asks.
    await marie.files.write(nb.id, b"by marie", disable_versioning=True)
    (kept,) = await einstein.versions.list(nb.id)
    assert await einstein.versions.read(nb.id, kept.key) == b"by einstein"
    await marie.files.write((info.id, "./.~mesh_collab.x.a.ystate"), b"s3",
                            disable_versioning=True)
    (kept,) = await einstein.versions.list(sidecar)
    assert await einstein.versions.read(sidecar, kept.key) == b"s2"


async def test_an_ocm_recipients_write_keeps_a_version(
    gateway_factory: Any, cs3_client_factory: Any
) -> None:
    a = await gateway_factory(site="site-a")
    b = await gateway_factory(site="site-b")
    einstein = await (await cs3_client_factory(a.grpc_address)).login("einstein", "relativity")
    marie = await (await cs3_client_factory(b.grpc_address)).login("marie", "radioactivity")
    nb = await einstein.files.write("/home/einstein/shared.ipynb", b"by einstein")
    await einstein.ocm.create(nb.id, UserId(idp=b.domain, opaque_id="marie"), Role.EDITOR)
    (received,) = await marie.ocm.received()
    async with httpx.AsyncClient() as http:
        put = await http.put(received.webdav_uri, content=b"by marie", headers={
            "Authorization": f"Bearer {received.shared_secret}", "X-Disable-Versioning": "true",
        })
    assert put.status_code == 204, put.text
    assert await einstein.files.read(nb.id) == b"by marie"
    (kept,) = await einstein.versions.list(nb.id)
    assert await einstein.versions.read(nb.id, kept.key) == b"by einstein"
