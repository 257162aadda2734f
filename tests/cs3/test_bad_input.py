"""Bad input to the embedded gateway gets a clear CS3 or HTTP status, never a traceback.

Each case asserts the answer a client gets, and for path tricks also that nothing outside the
gateway's root was read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import httpx
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc
from cs3.rpc.v1beta1 import code_pb2
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as sr
from cs3.types.v1beta1 import types_pb2

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.gateway import EmbeddedGateway


@pytest.fixture(params=["eos", "edge"])
async def gw(request: pytest.FixtureRequest, gateway_factory) -> EmbeddedGateway:
    return await gateway_factory(lock_profile=request.param, max_upload_size=64 * 1024)


@pytest.fixture
async def client(gw: EmbeddedGateway, cs3_client_factory) -> CS3Client:
    return await cs3_client_factory(gw.grpc_address)


@pytest.fixture
async def einstein(client: CS3Client) -> Session:
    return await client.login("einstein", "relativity")


@pytest.fixture
async def stub(gw: EmbeddedGateway):
    async with grpc.aio.insecure_channel(gw.grpc_address) as channel:
        yield gateway_api_pb2_grpc.GatewayAPIStub(channel)


async def token_of(session: Session) -> tuple[tuple[str, str]]:
    return (("x-access-token", await session.tokens.token()),)


# --- tokens -------------------------------------------------------------------------------


async def test_missing_token_is_grpc_unauthenticated(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Stat(sp.StatRequest(ref=sr.Reference(path="/home/einstein")), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 4000])
async def test_invalid_token_is_grpc_permission_denied(stub, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Stat(
            sp.StatRequest(ref=sr.Reference(path="/home/einstein")),
            metadata=(("x-access-token", token),),
            timeout=5,
        )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_oversized_token_is_refused_by_grpc(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Stat(
            sp.StatRequest(ref=sr.Reference(path="/home/einstein")),
            metadata=(("x-access-token", "x" * 20000),),
            timeout=5,
        )
    # gRPC's own metadata limit (8 KiB by default) answers before any handler runs.
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


# --- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param(sr.Reference(), id="empty"),
        pytest.param(sr.Reference(path="home/einstein"), id="relative-without-id"),
        pytest.param(sr.Reference(path="/home/einstein/\x00x"), id="nul-byte"),
        pytest.param(
            sr.Reference(resource_id=sr.ResourceId(storage_id="s"), path="."),
            id="id-without-opaque-id",
        ),
    ],
)
async def test_malformed_references_are_invalid_argument(stub, einstein, ref) -> None:
    res = await stub.Stat(sp.StatRequest(ref=ref), metadata=await token_of(einstein), timeout=5)
    assert res.status.code == code_pb2.CODE_INVALID_ARGUMENT, res.status


@pytest.mark.parametrize("rel", ["sub/x", "/abs", "../x", "x/./y"])
async def test_relative_path_must_start_with_dot_slash(stub, einstein: Session, rel: str) -> None:
    home = await einstein.files.stat("/home/einstein")
    rid = sr.ResourceId(
        storage_id=home.id.storage_id, space_id=home.id.space_id, opaque_id=home.id.opaque_id
    )
    res = await stub.Stat(
        sp.StatRequest(ref=sr.Reference(resource_id=rid, path=rel)),
        metadata=await token_of(einstein),
        timeout=5,
    )
    assert res.status.code == code_pb2.CODE_INVALID_ARGUMENT, res.status


async def test_unknown_resource_id_is_not_found(stub, einstein) -> None:
    rid = sr.ResourceId(storage_id="nope", space_id="nope", opaque_id="nope")
    res = await stub.Stat(
        sp.StatRequest(ref=sr.Reference(resource_id=rid, path=".")),
        metadata=await token_of(einstein),
        timeout=5,
    )
    assert res.status.code == code_pb2.CODE_NOT_FOUND


# --- escaping the root --------------------------------------------------------------------


ESCAPES = [
    "/home/einstein/../marie/x.ipynb",
    "/home/einstein/../../etc/passwd",
    "/home/einstein/../../../../../../etc/passwd",
    "/../../etc/passwd",
    "//etc/passwd",
    "/etc/passwd",
    "/home/einstein/..",
    "/home/einstein/./../../meta.sqlite",
]


@pytest.mark.parametrize("path", ESCAPES)
async def test_paths_cannot_leave_the_users_storage(
    gw: EmbeddedGateway, einstein: Session, path: str, tmp_path: Path
) -> None:
    outside_before = sorted(os.listdir(tmp_path))
    for call in (
        einstein.files.stat(path),
        einstein.files.read(path),
        einstein.files.write(path, b"escaped"),
        einstein.files.mkdir(path),
        einstein.files.delete(path),
    ):
        with pytest.raises((errors.PermissionDenied, errors.NotFound, errors.InvalidArgument,
                            errors.AlreadyExists)):
            await call
    assert sorted(os.listdir(tmp_path)) == outside_before
    assert not Path("/etc/passwd-escaped").exists()


async def test_relative_reference_cannot_climb_out(einstein: Session) -> None:
    home = await einstein.files.stat("/home/einstein")
    for rel in ("./../marie", "./../../etc/passwd", "./sub/../../../x"):
        with pytest.raises((errors.PermissionDenied, errors.NotFound, errors.InvalidArgument)):
            await einstein.files.read((home.id, rel))


async def test_symlink_out_of_the_root_is_not_followed(
    gw: EmbeddedGateway, einstein: Session, tmp_path: Path
) -> None:
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("must not leak")
    await einstein.files.write("/home/einstein/placeholder.txt", b"x")
    home_dir = next(p.parent for p in Path(gw.root).rglob("placeholder.txt"))
    (home_dir / "link.txt").symlink_to(secret)
    with pytest.raises((errors.PermissionDenied, errors.NotFound, errors.InvalidArgument)):
        await einstein.files.read("/home/einstein/link.txt")
    with pytest.raises((errors.PermissionDenied, errors.NotFound, errors.InvalidArgument)):
        await einstein.files.write("/home/einstein/link.txt", b"overwrite")
    assert secret.read_text() == "must not leak"


# --- data transfers -----------------------------------------------------------------------


async def initiate_upload(stub, einstein: Session, path: str, size: int) -> tuple[str, str]:
    req = sp.InitiateFileUploadRequest(
        ref=sr.Reference(path=path),
        opaque=types_pb2.Opaque(
            map={"Upload-Length": types_pb2.OpaqueEntry(decoder="plain", value=str(size).encode())}
        ),
    )
    res = await stub.InitiateFileUpload(req, metadata=await token_of(einstein), timeout=5)
    assert res.status.code == code_pb2.CODE_OK
    proto = next(p for p in res.protocols if p.protocol == "simple")
    return proto.upload_endpoint, proto.token


async def test_missing_or_forged_transfer_token_is_403(
    gw: EmbeddedGateway, stub, einstein: Session
) -> None:
    endpoint, token = await initiate_upload(stub, einstein, "/home/einstein/t.txt", 3)
    base = endpoint.rsplit("/", 1)[0]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with httpx.AsyncClient() as http:
        for url, headers in (
            (base + "/", {}),
            (base + "/not-a-token", {}),
            (base + "/x", {"X-Reva-Transfer": forged}),
            (base + "/x", {"X-Reva-Transfer": ""}),
        ):
            response = await http.put(url, headers=headers, content=b"abc")
            assert response.status_code == 403, (url, response.status_code)
        # The genuine token works, via the header or the last path segment.
        ok = await http.put(endpoint, headers={"X-Reva-Transfer": token}, content=b"abc")
        assert ok.status_code == 200
    with pytest.raises(errors.NotFound):
        await einstein.files.stat("/home/einstein/x")
    assert await einstein.files.read("/home/einstein/t.txt") == b"abc"


async def test_download_token_does_not_allow_upload(stub, einstein: Session) -> None:
    await einstein.files.write("/home/einstein/d.txt", b"keep")
    res = await stub.InitiateFileDownload(
        sp.InitiateFileDownloadRequest(ref=sr.Reference(path="/home/einstein/d.txt")),
        metadata=await token_of(einstein),
        timeout=5,
    )
    proto = res.protocols[0]
    async with httpx.AsyncClient() as http:
        response = await http.put(
            proto.download_endpoint, headers={"X-Reva-Transfer": proto.token}, content=b"evil"
        )
    assert 400 <= response.status_code < 500
    assert await einstein.files.read("/home/einstein/d.txt") == b"keep"


async def test_oversized_uploads_are_refused(stub, einstein: Session) -> None:
    # Announced too large: refused at InitiateFileUpload.
    with pytest.raises(errors.QuotaExceeded):
        await einstein.files.write("/home/einstein/big.bin", b"x" * (64 * 1024 + 1))
    # Announced small, sent large: refused by the data endpoint.
    endpoint, token = await initiate_upload(stub, einstein, "/home/einstein/big.bin", 10)
    async with httpx.AsyncClient() as http:
        response = await http.put(
            endpoint, headers={"X-Reva-Transfer": token}, content=b"x" * (64 * 1024 + 1)
        )
    assert response.status_code == 413
    with pytest.raises(errors.NotFound):
        await einstein.files.stat("/home/einstein/big.bin")


async def test_zero_byte_upload(stub, einstein: Session) -> None:
    info = await einstein.files.write("/home/einstein/empty.txt", b"")
    assert info.size == 0
    assert await einstein.files.read("/home/einstein/empty.txt") == b""


async def test_http_endpoints_answer_garbage_without_5xx(gw: EmbeddedGateway) -> None:
    async with httpx.AsyncClient() as http:
        for method, path, body in (
            ("GET", "/datagateway/", None),
            ("GET", "/datagateway/..%2F..%2Fmeta.sqlite", None),
            ("GET", "/remote.php/dav/ocm/..%2F..%2Fmeta.sqlite", None),
            ("GET", "/remote.php/dav/ocm/no-such-secret", None),
            ("POST", "/ocm/shares", b"not json"),
            ("POST", "/ocm/shares", b"{}"),
            ("POST", "/ocm/shares", b'{"shareWith": 7}'),
            ("DELETE", "/datagateway/x", None),
            ("GET", "/no/such/route", None),
        ):
            response = await http.request(method, gw.http_url + path, content=body)
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
