"""OCM between two embedded gateways (spec §1.9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.ocm.provider.v1beta1 import provider_api_pb2 as prov_api
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm_api
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_res
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from gateway_helpers import (
    OK,
    Session,
    connect,
    lock,
    post_share,
    share_body,
    signer_of,
    trust_each_other,
)
from google.protobuf import field_mask_pb2

from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.resources import ResourceId

NB = "/home/einstein/nb.ipynb"


@pytest.fixture
async def two_sites(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedGateway, EmbeddedGateway]]:
    async with EmbeddedGateway(root=tmp_path / "a", site="site-a") as a, \
            EmbeddedGateway(root=tmp_path / "b", site="site-b") as b:
        trust_each_other(a, b)
        yield a, b


async def create_share(s: Session, b: EmbeddedGateway, grantee: str, *,
                       write: bool = False) -> ocm_api.CreateOCMShareResponse:
    info = await s.call("GetInfoByDomain", prov_api.GetInfoByDomainRequest(domain=b.domain))
    assert info.status.code == OK, info.status
    rid = (await s.stat(NB)).info.id
    perms = res.ResourcePermissions(stat=True, initiate_file_download=True,
                                    initiate_file_upload=write)
    return await s.call("CreateOCMShare", ocm_api.CreateOCMShareRequest(
        resource_id=rid,
        grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=user_res.UserId(
            idp=b.domain, opaque_id=grantee, type=user_res.USER_TYPE_FEDERATED)),
        recipient_mesh_provider=info.provider_info,
        access_methods=[ocm_res.AccessMethod(
            webdav_options=ocm_res.WebDAVAccessMethod(permissions=perms))],
    ))


async def test_share_across_sites(two_sites: tuple[EmbeddedGateway, EmbeddedGateway]) -> None:
    a, b = two_sites
    async with connect(a, "einstein") as einstein, connect(b, "marie") as marie:
        assert (await einstein.put(NB, b'{"cells": []}'))[2] == 200
        rid = (await einstein.stat(NB)).info.id
        info = await einstein.call("GetInfoByDomain",
                                   prov_api.GetInfoByDomainRequest(domain=b.domain))
        services = {s.endpoint.type.name: s.endpoint.path for s in info.provider_info.services}
        assert services["OCM"] == f"{b.http_url}/ocm"
        assert services["Webdav"] == f"{b.http_url}/remote.php/dav/ocm"
        providers = await einstein.stub.ListAllProviders(prov_api.ListAllProvidersRequest())
        assert [p.domain for p in providers.providers] == [b.domain]

        created = await create_share(einstein, b, "marie")
        assert created.status.code == OK, created.status
        assert created.recipient_display_name == "Marie Curie"
        dup = await create_share(einstein, b, "marie")
        assert dup.status.code == c.CODE_ALREADY_EXISTS
        sent = await einstein.call("ListOCMShares", ocm_api.ListOCMSharesRequest())
        assert [s.id for s in sent.shares] == [created.share.id]

        listed = await marie.call("ListReceivedOCMShares", ocm_api.ListReceivedOCMSharesRequest())
        (share,) = listed.shares
        assert share.state == ocm_res.SHARE_STATE_PENDING
        assert share.name == "nb.ipynb"
        assert share.owner.idp == a.domain and share.owner.opaque_id == "einstein"
        assert share.opaque.map["resource_id"].value.decode() == str(
            ResourceId(rid.storage_id, rid.opaque_id, rid.space_id))
        assert share.opaque.map["resource_id"].decoder == "plain"
        assert share.opaque.map["owner_site"].value == b"site-a"
        assert share.resource_type == res.RESOURCE_TYPE_FILE
        webdav = share.protocols[0].webdav_options
        assert webdav.permissions.permissions.initiate_file_download
        assert not webdav.permissions.permissions.initiate_file_upload

        share.state = ocm_res.SHARE_STATE_ACCEPTED
        upd = await marie.call("UpdateReceivedOCMShare", ocm_api.UpdateReceivedOCMShareRequest(
            share=share, update_mask=field_mask_pb2.FieldMask(paths=["state"])))
        assert upd.status.code == OK
        got = await marie.call("GetReceivedOCMShare", ocm_api.GetReceivedOCMShareRequest(
            ref=ocm_res.ShareReference(id=share.id)))
        assert got.share.state == ocm_res.SHARE_STATE_ACCEPTED

        async with aiohttp.ClientSession() as http:
            async with http.get(webdav.uri) as r:
                assert (r.status, await r.read()) == (200, b'{"cells": []}')
            bare = webdav.uri.rpartition("/")[0] + "/"
            bearer = {"Authorization": f"Bearer {webdav.shared_secret}"}
            async with http.get(bare, headers=bearer) as r:
                assert r.status == 200
            async with http.put(webdav.uri, data=b"nope") as r:
                assert r.status == 403  # read-only share
            async with http.get(bare + "wrong-secret") as r:
                assert r.status == 401
            async with http.get(webdav.uri + "/../../x") as r:
                assert r.status in (400, 401, 404)

        rm = await einstein.call("RemoveOCMShare", ocm_api.RemoveOCMShareRequest(
            ref=ocm_res.ShareReference(id=created.share.id)))
        assert rm.status.code == OK
        async with aiohttp.ClientSession() as http, http.get(webdav.uri) as r:
            assert r.status == 401


async def test_writable_share_and_locks(
    two_sites: tuple[EmbeddedGateway, EmbeddedGateway],
) -> None:
    a, b = two_sites
    async with connect(a, "einstein") as einstein, connect(b, "marie") as marie:
        assert (await einstein.put(NB, b"v1"))[2] == 200
        assert (await create_share(einstein, b, "marie", write=True)).status.code == OK
        listed = await marie.call("ListReceivedOCMShares", ocm_api.ListReceivedOCMSharesRequest())
        uri = listed.shares[0].protocols[0].webdav_options.uri
        async with aiohttp.ClientSession() as http:
            async with http.put(uri, data=b"v2") as r:
                assert r.status == 204
            assert await einstein.get(NB) == (200, b"v2")
            resp = await einstein.call("SetLock", sp.SetLockRequest(
                ref=res.Reference(path=NB), lock=lock("L", app="mesh_collab")))
            assert resp.status.code == OK
            async with http.put(uri, data=b"v3") as r:
                assert r.status == 409  # eos: the holder is not the lock's app
            holder = {"X-Lock-Holder": "mesh_collab"}
            async with http.put(uri, data=b"v3", headers=holder) as r:
                assert r.status == 409  # the app tag alone is the lock's user's
            async with http.put(uri, data=b"v3", headers={**holder, "X-Lock-Id": "L"}) as r:
                assert r.status == 204
        assert await einstein.get(NB) == (200, b"v3")


async def test_ocm_refusals(two_sites: tuple[EmbeddedGateway, EmbeddedGateway]) -> None:
    a, b = two_sites
    async with connect(a, "einstein") as einstein:
        assert (await einstein.put(NB, b"v1"))[2] == 200
        unknown = await create_share(einstein, b, "nobody")
        assert unknown.status.code == c.CODE_NOT_FOUND
        sent = await einstein.call("ListOCMShares", ocm_api.ListOCMSharesRequest())
        assert list(sent.shares) == []  # not persisted when the remote refused
        a.trusted_providers = {*a.trusted_providers, "127.0.0.1:1"}  # trusted, but dead
        for domain, code in [("127.0.0.1:1", c.CODE_INTERNAL),
                             ("127.0.0.1:2", c.CODE_PERMISSION_DENIED),  # not trusted
                             ("http://evil/x", c.CODE_INVALID_ARGUMENT)]:
            info = await einstein.call("GetInfoByDomain",
                                       prov_api.GetInfoByDomainRequest(domain=domain))
            assert info.status.code == code, domain
    signer = await signer_of(a)
    async with aiohttp.ClientSession() as http:
        url = f"{b.http_url}/ocm/shares"
        async with http.post(url, data=b"not json") as r:
            assert r.status == 401 and "message" in await r.json()  # unsigned
        assert (await post_share(http, b, b"not json", signer))[0] == 400
        assert (await post_share(http, b, {"shareWith": "marie@x"}, signer))[0] == 400
        assert (await post_share(http, b, share_body(a, share_with="nobody"), signer))[0] == 404
        async with http.get(f"{b.http_url}/.well-known/ocm") as r:
            doc = await r.json()
            assert doc["enabled"] and doc["endPoint"] == f"{b.http_url}/ocm"
            assert doc["resourceTypes"][0]["protocols"]["webdav"] == "/remote.php/dav/ocm"
            assert doc["publicKey"]["keyId"] == f"{b.http_url}/ocm#signature"
            assert "http-sig" in doc["capabilities"]
