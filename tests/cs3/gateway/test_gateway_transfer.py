"""Uploads, downloads and versions through the data gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2
from gateway_helpers import OK, Session, connect

from mesh_collab.cs3.gateway import EmbeddedGateway

F = "/home/einstein/nb.ipynb"
REF = res.Reference(path=F)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Session]:
    async with EmbeddedGateway(root=tmp_path / "gw", max_upload_size=1000) as gw, \
            connect(gw) as session:
        yield session


async def test_roundtrip_headers_and_ids(einstein: Session) -> None:
    code, put, http = await einstein.put(F, b'{"cells": []}')
    assert (code, http) == (OK, 200)
    info = (await einstein.stat(F)).info
    assert put.headers["ETag"] == info.etag
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert put.headers["OC-FileId"] == (
        f"{info.id.storage_id}${info.id.space_id}!{info.id.opaque_id}"
    )
    assert info.mime_type == "application/x-ipynb+json"
    assert info.owner.opaque_id == einstein.user.id.opaque_id
    assert info.parent_id.opaque_id == info.id.space_id
    assert await einstein.get(F) == (200, b'{"cells": []}')
    assert await einstein.get(res.Reference(resource_id=info.id)) == (200, b'{"cells": []}')
    # Overwrite: same id, new etag.
    assert (await einstein.put(F, b"v2"))[2] == 200
    info2 = (await einstein.stat(F)).info
    assert info2.id == info.id and info2.etag != info.etag
    # Delete + re-create: new id.
    assert (await einstein.call("Delete", sp.DeleteRequest(ref=REF))).status.code == OK
    assert (await einstein.put(F, b"v3"))[2] == 200
    assert (await einstein.stat(F)).info.id.opaque_id != info.id.opaque_id


async def test_zero_byte_upload(einstein: Session) -> None:
    assert (await einstein.put(F, b"content"))[2] == 200
    assert (await einstein.put(F, b""))[:3:2] == (OK, 200)
    assert await einstein.get(F) == (200, b"")
    assert (await einstein.stat(F)).info.size == 0


async def test_oversized_upload(small: Session) -> None:
    code, _, _ = await small.put(F, b"x" * 10, opaque={"Upload-Length": "1001"})
    assert code == c.CODE_RESOURCE_EXHAUSTED
    code, _, http = await small.put(F, b"x" * 1001, opaque={"Upload-Length": "10"})
    assert (code, http) == (OK, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 100

    init = await small.call("InitiateFileUpload", sp.InitiateFileUploadRequest(ref=REF))
    async with small.http.put(init.protocols[0].upload_endpoint, data=chunks()) as put:
        assert put.status == 413  # chunked, no length announced
    assert (await small.stat(F)).status.code == c.CODE_NOT_FOUND
    assert (await small.put(F, b"x" * 1000))[2] == 200


async def test_upload_errors(einstein: Session) -> None:
    code, _, _ = await einstein.put("/home/einstein/no/such/dir/f.txt", b"x")
    assert code == c.CODE_NOT_FOUND
    code, _, _ = await einstein.put(einstein.home, b"x")
    assert code == c.CODE_INVALID_ARGUMENT
    code, _, _ = await einstein.put(F, b"x", opaque={"Upload-Length": "ten"})
    assert code == c.CODE_INVALID_ARGUMENT


async def test_conditional_uploads(einstein: Session) -> None:
    assert (await einstein.put(F, b"v1"))[2] == 200
    etag = (await einstein.stat(F)).info.etag
    assert (await einstein.put(F, b"x", if_not_exist=True))[0] == c.CODE_ALREADY_EXISTS
    assert (await einstein.put(F, b"x", if_match='"nope"'))[0] == c.CODE_FAILED_PRECONDITION
    assert (await einstein.put(F, b"x", if_match=etag.strip('"')))[0] == (
        c.CODE_FAILED_PRECONDITION
    )
    past = types_pb2.Timestamp(seconds=1)
    assert (await einstein.put(F, b"x", if_unmodified_since=past))[0] == (
        c.CODE_FAILED_PRECONDITION
    )
    # The condition is checked again at PUT time (412), e.g. after a concurrent write.
    init = await einstein.call("InitiateFileUpload", sp.InitiateFileUploadRequest(
        ref=REF, if_match=etag))
    assert init.status.code == OK
    assert (await einstein.put(F, b"v2", if_match=etag))[2] == 200
    async with einstein.http.put(init.protocols[0].upload_endpoint, data=b"late") as put:
        assert put.status == 412
    assert await einstein.get(F) == (200, b"v2")


async def test_range_download(einstein: Session) -> None:
    assert (await einstein.put(F, b"0123456789"))[2] == 200
    init = await einstein.call("InitiateFileDownload", sp.InitiateFileDownloadRequest(ref=REF))
    url = init.protocols[0].download_endpoint
    async with einstein.http.get(url, headers={"Range": "bytes=2-4"}) as got:
        assert (got.status, await got.read()) == (206, b"234")
    async with einstein.http.head(url) as got:
        assert got.status == 200 and got.headers["Content-Length"] == "10"


async def test_versions(einstein: Session) -> None:
    for body in (b"v1", b"v2", b"v3"):
        assert (await einstein.put(F, body))[2] == 200
    assert (await einstein.put(F, b"v4", headers={"X-Disable-Versioning": "true"}))[2] == 200
    listed = await einstein.call("ListFileVersions", sp.ListFileVersionsRequest(ref=REF))
    assert listed.status.code == OK
    keys = [v.key for v in listed.versions]
    assert len(keys) == 2  # v1 and v2 kept; v3 was replaced without versioning
    assert [await einstein.get(F, version_key=k) for k in keys] == [(200, b"v2"), (200, b"v1")]
    assert listed.versions[0].size == 2 and listed.versions[0].etag.startswith('"')
    assert (await einstein.get(F, version_key="nope"))[0] == -c.CODE_NOT_FOUND
    restore = await einstein.call("RestoreFileVersion", sp.RestoreFileVersionRequest(
        ref=REF, key=keys[1]))
    assert restore.status.code == OK
    assert await einstein.get(F) == (200, b"v1")
    after = await einstein.call("ListFileVersions", sp.ListFileVersionsRequest(ref=REF))
    assert await einstein.get(F, version_key=after.versions[0].key) == (200, b"v4")
    bad = await einstein.call("RestoreFileVersion", sp.RestoreFileVersionRequest(
        ref=REF, key="nope"))
    assert bad.status.code == c.CODE_NOT_FOUND
    paged = await einstein.call("ListFileVersions", sp.ListFileVersionsRequest(
        ref=REF, page_size=2))
    assert len(paged.versions) == 2 and paged.next_page_token == "2"
