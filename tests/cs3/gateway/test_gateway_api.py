"""Auth, users, namespace and share RPCs of the embedded gateway."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import grpc
import jwt
import pytest
from cs3.auth.registry.v1beta1 import registry_api_pb2
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as collab_api
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as collab_res
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from gateway_helpers import OK, Session, connect, share
from google.protobuf import field_mask_pb2

from mesh_collab.cs3.gateway import EmbeddedGateway


def ref(path: str) -> res.Reference:
    return res.Reference(path=path)


@pytest.mark.parametrize(
    ("kind", "client_id", "secret", "expected"),
    [
        ("basic", "einstein", "relativity", OK),
        ("basic", "einstein", "wrong", c.CODE_PERMISSION_DENIED),
        ("basic", "nobody", "x", c.CODE_PERMISSION_DENIED),
        ("kerberos", "einstein", "relativity", c.CODE_INTERNAL),
        ("bearer", "", "not-a-jwt", c.CODE_PERMISSION_DENIED),
    ],
)
async def test_authenticate(
    gateway: EmbeddedGateway, kind: str, client_id: str, secret: str, expected: int
) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
        stub = gw_grpc.GatewayAPIStub(channel)
        resp = await stub.Authenticate(gw.AuthenticateRequest(
            type=kind, client_id=client_id, client_secret=secret))
        assert resp.status.code == expected
        if expected == OK:
            claims = jwt.decode(resp.token, options={"verify_signature": False})
            assert claims["aud"] == "reva" and claims["exp"] > time.time()
            assert claims["user"]["username"] == "einstein"
            assert resp.user.display_name == "Albert Einstein"


async def test_bearer_exchange_and_whoami(einstein: Session) -> None:
    resp = await einstein.stub.Authenticate(gw.AuthenticateRequest(
        type="bearer", client_secret=einstein.token))
    assert resp.status.code == OK and resp.user.username == "einstein"
    who = await einstein.call("WhoAmI", gw.WhoAmIRequest(token=resp.token))
    assert who.user.username == "einstein"
    types = await einstein.stub.ListAuthProviders(registry_api_pb2.ListAuthProvidersRequest())
    assert list(types.types) == ["basic", "bearer"]


async def test_interceptor(gateway: EmbeddedGateway, einstein: Session) -> None:
    stat = sp.StatRequest(ref=ref("/home/einstein"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await einstein.stub.Stat(stat)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await einstein.stub.Stat(stat, metadata=[("x-access-token", "")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    db = sqlite3.connect(gateway.root / "meta.sqlite")
    secret = db.execute("SELECT value FROM settings WHERE key='secret:jwt'").fetchone()[0]
    db.close()
    claims = jwt.decode(einstein.token, secret, algorithms=["HS256"], audience="reva")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, secret, algorithm="HS256")
    forged = jwt.encode(claims, "f" * 64, algorithm="HS256")
    for token in ("garbage", expired, forged):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await einstein.stub.Stat(stat, metadata=[("x-access-token", token)])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Unprotected user look-ups need no token (cs3client relies on it).
    user = await einstein.stub.GetUserByClaim(
        user_api.GetUserByClaimRequest(claim="mail", value="MARIE@example.org"))
    assert user.status.code == OK and user.user.username == "marie"
    # Unimplemented methods answer a CS3 status.
    spaces = await einstein.call("CreateSymlink", sp.CreateSymlinkRequest())
    assert spaces.status.code == c.CODE_UNIMPLEMENTED


async def test_users(einstein: Session) -> None:
    stub = einstein.stub
    marie = (await stub.GetUserByClaim(
        user_api.GetUserByClaimRequest(claim="username", value="marie"))).user
    got = await stub.GetUser(user_api.GetUserRequest(user_id=marie.id))
    assert got.user.display_name == "Marie Curie"
    missing = await stub.GetUser(user_api.GetUserRequest(
        user_id=user_res.UserId(opaque_id="nope")))
    assert missing.status.code == c.CODE_NOT_FOUND
    groups = await stub.GetUserGroups(user_api.GetUserGroupsRequest(user_id=marie.id))
    assert "physics-lovers" in groups.groups
    query = user_api.Filter(type=user_api.Filter.TYPE_QUERY, query="CURIE")
    found = await einstein.call("FindUsers", user_api.FindUsersRequest(filters=[query]))
    assert [u.username for u in found.users] == ["marie"]
    everyone = await einstein.call("FindUsers", user_api.FindUsersRequest(filters=[
        user_api.Filter(type=user_api.Filter.TYPE_QUERY, query="")]))
    assert [u.username for u in everyone.users] == ["einstein", "marie", "richard"]
    bad = await einstein.call("FindUsers", user_api.FindUsersRequest())
    assert bad.status.code == c.CODE_INVALID_ARGUMENT


async def test_namespace_ops(gateway: EmbeddedGateway, einstein: Session) -> None:
    call = einstein.call
    mk = await call("CreateContainer", sp.CreateContainerRequest(ref=ref("/home/einstein/d")))
    assert mk.status.code == OK
    again = await call("CreateContainer", sp.CreateContainerRequest(ref=ref("/home/einstein/d")))
    assert again.status.code == c.CODE_ALREADY_EXISTS
    orphan = await call("CreateContainer",
                        sp.CreateContainerRequest(ref=ref("/home/einstein/x/y")))
    assert orphan.status.code == c.CODE_NOT_FOUND
    touch = await call("TouchFile", sp.TouchFileRequest(ref=ref("/home/einstein/d/t.txt")))
    assert touch.status.code == OK
    again = await call("TouchFile", sp.TouchFileRequest(ref=ref("/home/einstein/d/t.txt")))
    assert again.status.code == c.CODE_ALREADY_EXISTS
    rid = (await einstein.stat("/home/einstein/d/t.txt")).info.id
    # Move keeps the id; moving a folder keeps its children's ids.
    mv = await call("Move", sp.MoveRequest(source=ref("/home/einstein/d"),
                                           destination=ref("/home/einstein/e")))
    assert mv.status.code == OK
    moved = (await einstein.stat("/home/einstein/e/t.txt")).info
    assert moved.id == rid and moved.path == "/home/einstein/e/t.txt"
    path = await call("GetPath", sp.GetPathRequest(resource_id=rid))
    assert path.path == "/home/einstein/e/t.txt"
    missing = await call("Move", sp.MoveRequest(source=ref("/home/einstein/nope"),
                                                destination=ref("/home/einstein/z")))
    assert missing.status.code == c.CODE_NOT_FOUND
    assert (await einstein.put("/home/einstein/other.txt", b"o"))[2] == 200
    clash = await call("Move", sp.MoveRequest(source=ref("/home/einstein/other.txt"),
                                              destination=ref("/home/einstein/e/t.txt")))
    assert clash.status.code == c.CODE_ALREADY_EXISTS
    into_self = await call("Move", sp.MoveRequest(source=ref("/home/einstein/e"),
                                                  destination=ref("/home/einstein/e/sub")))
    assert into_self.status.code == c.CODE_INVALID_ARGUMENT
    rm = await call("Delete", sp.DeleteRequest(ref=ref("/home/einstein/e")))
    assert rm.status.code == OK
    gone = await call("Stat", sp.StatRequest(ref=res.Reference(resource_id=rid)))
    assert gone.status.code == c.CODE_NOT_FOUND
    rm = await call("Delete", sp.DeleteRequest(ref=ref("/home/einstein/e")))
    assert rm.status.code == c.CODE_NOT_FOUND
    home = await call("Delete", sp.DeleteRequest(ref=ref("/home/einstein")))
    assert home.status.code == c.CODE_PERMISSION_DENIED
    assert (await call("GetHome", sp.GetHomeRequest())).path == "/home/einstein"
    quota = await call("GetQuota", gw.GetQuotaRequest())
    assert quota.status.code == OK and quota.used_bytes == 1


async def test_metadata(einstein: Session) -> None:
    assert (await einstein.put("/home/einstein/f", b"x"))[2] == 200

    async def setmd(md: dict[str, str]) -> int:
        resp = await einstein.call("SetArbitraryMetadata", sp.SetArbitraryMetadataRequest(
            ref=ref("/home/einstein/f"), arbitrary_metadata=res.ArbitraryMetadata(metadata=md)))
        return int(resp.status.code)

    assert await setmd({"a": "1", "b": "2"}) == OK
    for bad in ({"": "x"}, {"k": ""}, {"reva.lockpayload": "x"}, {"app.lock": "x"}):
        assert await setmd(bad) == c.CODE_INVALID_ARGUMENT
    assert dict((await einstein.stat("/home/einstein/f")).info.arbitrary_metadata.metadata) == {
        "a": "1", "b": "2"}
    only = await einstein.stat("/home/einstein/f", arbitrary_metadata_keys=["b"])
    assert dict(only.info.arbitrary_metadata.metadata) == {"b": "2"}
    unset = await einstein.call("UnsetArbitraryMetadata", sp.UnsetArbitraryMetadataRequest(
        ref=ref("/home/einstein/f"), arbitrary_metadata_keys=["a"]))
    assert unset.status.code == OK
    assert dict((await einstein.stat("/home/einstein/f")).info.arbitrary_metadata.metadata) == {
        "b": "2"}


async def test_hand_placed_files_and_restart(tmp_path: Path) -> None:
    root = tmp_path / "gw"
    (root / "files/home/einstein/seed").mkdir(parents=True)
    (root / "files/home/einstein/seed/nb.ipynb").write_bytes(b"{}")
    async with EmbeddedGateway(root=root) as gateway, connect(gateway) as s:
        listing = await s.call("ListContainer", sp.ListContainerRequest(
            ref=ref("/home/einstein/seed")))
        assert [i.name for i in listing.infos] == ["nb.ipynb"]
        rid = listing.infos[0].id
        home = (await s.stat("/home/einstein")).info.id
        assert home.opaque_id == home.space_id
        token = s.token
    async with EmbeddedGateway(root=root) as gateway, \
            grpc.aio.insecure_channel(gateway.grpc_address) as channel:
        stub = gw_grpc.GatewayAPIStub(channel)
        again = await stub.Stat(sp.StatRequest(ref=ref("/home/einstein/seed/nb.ipynb")),
                                metadata=[("x-access-token", token)])
        assert again.status.code == OK and again.info.id == rid


async def test_shares(einstein: Session, marie: Session) -> None:
    assert (await einstein.put("/home/einstein/nb.ipynb", b"{}"))[2] == 200
    created = await share(einstein, "/home/einstein/nb.ipynb", "marie", editor=False)
    info = (await einstein.stat("/home/einstein/nb.ipynb")).info
    dup = await einstein.call("CreateShare", collab_api.CreateShareRequest(
        resource_info=info, grant=collab_res.ShareGrant(
            grantee=created.grantee, permissions=created.permissions)))
    assert dup.status.code == c.CODE_ALREADY_EXISTS
    existing = await einstein.call("ListExistingShares", collab_api.ListSharesRequest(
        filters=[collab_res.Filter(type=collab_res.Filter.TYPE_RESOURCE_ID,
                                   resource_id=info.id)]))
    assert [i.share.id for i in existing.share_infos] == [created.id]
    assert existing.share_infos[0].resource_info.id == info.id
    received = await marie.call("ListExistingReceivedShares",
                                collab_api.ListReceivedSharesRequest())
    (rs,) = received.share_infos
    assert rs.received_share.state == collab_res.SHARE_STATE_PENDING
    assert rs.received_share.mount_point.path == "nb.ipynb"
    assert rs.resource_info.id == info.id
    assert await marie.get(res.Reference(resource_id=info.id)) == (200, b"{}")
    assert (await marie.put("/home/einstein/nb.ipynb", b"x"))[0] == c.CODE_PERMISSION_DENIED
    rs.received_share.state = collab_res.SHARE_STATE_ACCEPTED
    upd = await marie.call("UpdateReceivedShare", collab_api.UpdateReceivedShareRequest(
        share=rs.received_share, update_mask=field_mask_pb2.FieldMask(paths=["state"])))
    assert upd.status.code == OK and upd.share.state == collab_res.SHARE_STATE_ACCEPTED
    bad = await marie.call("UpdateReceivedShare", collab_api.UpdateReceivedShareRequest())
    assert bad.status.code == c.CODE_INVALID_ARGUMENT
    editor = created.permissions
    editor.permissions.initiate_file_upload = True
    share_ref = collab_res.ShareReference(id=created.id)
    upd = await einstein.call("UpdateShare", collab_api.UpdateShareRequest(
        ref=share_ref, field=collab_api.UpdateShareRequest.UpdateField(permissions=editor)))
    assert upd.status.code == OK
    assert (await marie.put("/home/einstein/nb.ipynb", b"by marie"))[2] == 200
    steal = await marie.call("RemoveShare", collab_api.RemoveShareRequest(ref=share_ref))
    assert steal.status.code == c.CODE_NOT_FOUND
    rm = await einstein.call("RemoveShare", collab_api.RemoveShareRequest(ref=share_ref))
    assert rm.status.code == OK
    assert (await marie.get(res.Reference(resource_id=info.id)))[0] == -c.CODE_PERMISSION_DENIED


async def test_quota_counts_a_home_once_for_many_calls(
    gateway: EmbeddedGateway, einstein: Session
) -> None:
    assert (await einstein.put("/home/einstein/a.txt", b"12345"))[2] == 200
    first = await einstein.call("GetQuota", gw.GetQuotaRequest())
    assert first.status.code == OK and first.used_bytes == 5
    # A file put into the home by hand: the calls that follow are answered from the last
    # count of the home (at most QUOTA_MAX_AGE seconds old), not by walking it again.
    (gateway.root / "files/home/einstein/by-hand.bin").write_bytes(b"x" * 1000)
    answers: list[int] = []

    async def ask() -> None:
        answers.append((await einstein.call("GetQuota", gw.GetQuotaRequest())).used_bytes)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(ask)
    assert answers == [5] * 20


async def test_a_large_listing_lets_other_requests_through(
    gateway: EmbeddedGateway, einstein: Session
) -> None:
    folder = gateway.root / "files/home/einstein/big"
    folder.mkdir()
    names = [f"n{i:05d}.txt" for i in range(5000)]
    for name in names:
        (folder / name).write_bytes(b"x")
    request = sp.ListContainerRequest(ref=ref("/home/einstein/big"))
    # The listing is sent first; GetHome, sent after it, is answered while the 5,000
    # entries are still being read and described (the folder is read on a worker thread,
    # entries described in batches with turns of the event loop in between).
    listing = einstein.stub.ListContainer(request, metadata=einstein.md, timeout=60)
    home = await einstein.call("GetHome", sp.GetHomeRequest())
    assert home.path == "/home/einstein"
    assert not listing.done()
    everything = await listing
    assert everything.status.code == OK
    assert [i.name for i in everything.infos] == names
    # Paged, only the page's entries are described; the pages add up to the whole.
    paged, token = [], ""
    while True:
        page = await einstein.call("ListContainer", sp.ListContainerRequest(
            ref=ref("/home/einstein/big"), page_size=2000, page_token=token))
        assert page.status.code == OK
        paged.extend(page.infos)
        token = page.next_page_token
        if not token:
            break
    assert paged == list(everything.infos)
