"""OCM trust between providers: one regression test per attack of the security review
(``C4``: forged and re-posted shares; ``M9``: requests to any host, a cache that never
expires), against real gateways over real HTTP.

Site A (einstein) and site B (marie) trust each other and nobody else. A test signs its
requests with A's own key, read from A's root, under the ``keyId`` A publishes: what a
request of A looks like, so that only the attacked part differs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.ocm.provider.v1beta1 import provider_api_pb2 as prov_api
from cs3.ocm.provider.v1beta1 import resources_pb2 as prov_res
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm_api
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from gateway_helpers import (
    OK,
    Session,
    Signer,
    connect,
    post_share,
    share_body,
    signed,
    signer_of,
    trust_each_other,
)
from google.protobuf import field_mask_pb2

from mesh_collab.cs3.gateway import EmbeddedGateway, providers, signatures

NB = "/home/einstein/nb.ipynb"
Sites = tuple[EmbeddedGateway, EmbeddedGateway]


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[Sites]:
    async with EmbeddedGateway(root=tmp_path / "a", site="site-a") as a, \
            EmbeddedGateway(root=tmp_path / "b", site="site-b") as b:
        trust_each_other(a, b)
        yield a, b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def signer(sites: Sites) -> Signer:
    """Site A's signing key and published keyId."""
    return await signer_of(sites[0])


async def received(gw: EmbeddedGateway, username: str = "marie") -> list[Any]:
    async with connect(gw, username) as s:
        listed = await s.call("ListReceivedOCMShares", ocm_api.ListReceivedOCMSharesRequest())
        assert listed.status.code == OK
        return list(listed.shares)


async def create_share(s: Session, domain: str, grantee: str = "marie") -> Any:
    rid = (await s.stat(NB)).info.id
    return await s.call("CreateOCMShare", ocm_api.CreateOCMShareRequest(
        resource_id=rid,
        grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=user_res.UserId(
            idp=domain, opaque_id=grantee, type=user_res.USER_TYPE_FEDERATED)),
        access_methods=[ocm_res.AccessMethod(webdav_options=ocm_res.WebDAVAccessMethod(
            permissions=res.ResourcePermissions(stat=True, initiate_file_download=True)))],
    ))


# ---- a listener on loopback that counts what reaches it ---------------------------------


@dataclass
class Listener:
    """An HTTP server on 127.0.0.1 counting TCP connections and requests; it answers
    ``documents[path]`` as JSON, 404 for anything else."""

    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.domain}"


@pytest.fixture
async def listen() -> AsyncIterator[Callable[[], Any]]:
    servers: list[tuple[asyncio.Server, web.Server]] = []

    async def start() -> Listener:
        listener = Listener()

        async def handler(request: web.BaseRequest) -> web.Response:
            listener.requests.append(f"{request.method} {request.path}")
            if request.path in listener.documents:
                return web.json_response(listener.documents[request.path])
            return web.Response(status=404)

        server = web.Server(handler)

        def protocol() -> Any:
            listener.connections += 1  # every connection counts, TLS attempts included
            return server()

        tcp = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
        listener.port = tcp.sockets[0].getsockname()[1]
        servers.append((tcp, server))
        return listener

    yield start
    for tcp, server in servers:
        await server.shutdown(1)
        tcp.close()
        await tcp.wait_closed()


def fake_provider(listener: Listener, key: Ed25519PrivateKey) -> Signer:
    """Make ``listener`` publish an OCM discovery document with ``key``; return its signer."""
    endpoint = f"{listener.url}/ocm"
    listener.documents["/.well-known/ocm"] = providers.discovery_document(
        listener.url, "site-f", signatures.public_pem(key))
    return Signer(key, providers.key_id_of(endpoint))


# ---- C4: forged share POSTs ---------------------------------------------------------------


async def test_an_unsigned_share_is_refused_and_nothing_is_stored(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    body = share_body(a)
    status, answer = await post_share(http, b, body, None)
    assert status == 401 and answer["message"]
    # Signature headers alone, or from another request, are no signature either.
    data = json.dumps(body).encode()
    other = signed(signer, f"{b.http_url}/ocm/shares", b"{}")
    for headers in ({"Signature": other["Signature"]},
                    {"Signature-Input": other["Signature-Input"]},
                    other):
        async with http.post(f"{b.http_url}/ocm/shares", data=data, headers=headers) as r:
            assert r.status == 401, headers
    assert await received(b) == []


@pytest.mark.parametrize("key_id", [
    "published",  # A's keyId, another key
    "http://127.0.0.1:2/ocm#signature",  # a provider B does not trust
    "urn:not-a-url",
])
async def test_a_share_signed_by_a_key_the_provider_does_not_publish_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer, key_id: str,
) -> None:
    a, b = sites
    forger = Signer(Ed25519PrivateKey.generate(),
                    signer.key_id if key_id == "published" else key_id)
    status, _ = await post_share(http, b, share_body(a), forger)
    assert status == 401
    assert await received(b) == []
    assert (await post_share(http, b, share_body(a), signer))[0] == 201  # the control


async def test_a_provider_no_longer_trusted_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    b.trusted_providers = set()
    assert (await post_share(http, b, share_body(a), signer))[0] == 401
    assert await received(b) == []


@pytest.mark.parametrize("age", [signatures.MAX_SKEW + 1, 3600, -(signatures.MAX_SKEW + 1)])
async def test_a_stale_or_future_signature_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer, age: int,
) -> None:
    a, b = sites
    status, answer = await post_share(http, b, share_body(a), signer, created=time.time() - age)
    assert status == 401, answer
    assert "too old" in answer["message"] or "future" in answer["message"] \
        or "age" in answer["message"]
    assert await received(b) == []


async def test_a_signature_a_little_off_is_accepted(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites  # two providers' clocks differ: within the window is fine
    body = share_body(a)
    assert (await post_share(http, b, body, signer, created=time.time() - 200))[0] == 201
    body2 = share_body(a, provider_id="other$space!node", secret="s3cret-2")
    assert (await post_share(http, b, body2, signer, created=time.time() + 200))[0] == 201


async def test_the_same_signed_request_replayed_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    url = f"{b.http_url}/ocm/shares"
    data = json.dumps(share_body(a)).encode()
    headers = signed(signer, url, data)
    async with http.post(url, data=data, headers=headers) as r:
        assert r.status == 201
    async with http.post(url, data=data, headers=headers) as r:
        assert r.status == 401
        assert "replayed" in (await r.json())["message"]
    # Under another label (the label is not signed), the same signature is the same.
    relabelled = {**headers,
                  "Signature": headers["Signature"].replace("sig1=", "sig2=", 1),
                  "Signature-Input": headers["Signature-Input"].replace("sig1=", "sig2=", 1)}
    async with http.post(url, data=data, headers=relabelled) as r:
        assert r.status == 401
    assert len(await received(b)) == 1


async def test_a_request_signed_for_another_url_or_host_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    data = json.dumps(share_body(a)).encode()
    # Signed for A's own endpoint, sent to B: the target URI is covered.
    headers = signed(signer, f"{a.http_url}/ocm/shares", data)
    async with http.post(f"{b.http_url}/ocm/shares", data=data, headers=headers) as r:
        assert r.status == 401
    # Signed for another provider's name, delivered to B with that Host.
    headers = {**signed(signer, "http://evil.example/ocm/shares", data), "Host": "evil.example"}
    async with http.post(f"{b.http_url}/ocm/shares", data=data, headers=headers) as r:
        assert r.status == 401
        assert "not addressed" in (await r.json())["message"]
    # The body is covered by the digest.
    headers = signed(signer, f"{b.http_url}/ocm/shares", data)
    tampered = data.replace(b'"read"', b'"write"')
    async with http.post(f"{b.http_url}/ocm/shares", data=tampered, headers=headers) as r:
        assert r.status == 401
    assert await received(b) == []


@pytest.mark.parametrize("who", ["owner", "sender"])
@pytest.mark.parametrize("domain", ["evil.example", "receiver"])
async def test_a_trusted_provider_speaking_for_another_providers_user_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer, who: str, domain: str,
) -> None:
    a, b = sites
    user = f"einstein@{b.domain if domain == 'receiver' else domain}"
    status, answer = await post_share(http, b, share_body(a, **{who: user}), signer)
    assert status == 403, answer
    assert await received(b) == []


@pytest.mark.parametrize(("uri", "status"), [
    ("https://evil.example/remote.php/dav/ocm/s3cret-1", 403),
    ("receiver", 403),  # point B at itself
    ("http://127.0.0.1:1/ssrf-probe", 403),  # same host, another port
    ("http://evil.example/x", 400),  # plain http off loopback
    ("http://user:pw@{a}/x", 400),
])
async def test_a_webdav_uri_off_the_senders_host_is_refused(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer, uri: str, status: int,
) -> None:
    a, b = sites
    uri = f"{b.http_url}/remote.php/dav/ocm/x" if uri == "receiver" else uri.format(a=a.domain)
    got, answer = await post_share(http, b, share_body(a, uri=uri), signer)
    assert got == status, answer
    assert await received(b) == []


async def test_a_relative_webdav_uri_is_resolved_on_the_senders_host(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    assert (await post_share(http, b, share_body(a, uri="s3cret-1"), signer))[0] == 201
    (share,) = await received(b)
    assert share.protocols[0].webdav_options.uri == \
        f"{a.http_url}/remote.php/dav/ocm/s3cret-1"


async def test_a_second_post_of_a_share_is_409_and_changes_nothing(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    first = share_body(a)
    assert (await post_share(http, b, first, signer))[0] == 201
    async with connect(b, "marie") as marie:
        (share,) = (await marie.call("ListReceivedOCMShares",
                                     ocm_api.ListReceivedOCMSharesRequest())).shares
        share.state = ocm_res.SHARE_STATE_ACCEPTED
        upd = await marie.call("UpdateReceivedOCMShare", ocm_api.UpdateReceivedOCMShareRequest(
            share=share, update_mask=field_mask_pb2.FieldMask(paths=["state"])))
        assert upd.status.code == OK
    # The same share (providerId) again, with the attacker's uri and secret: the hijack.
    again = share_body(a, secret="attacker-secret",
                       uri=f"{a.http_url}/remote.php/dav/ocm/attacker-secret")
    again["protocol"]["webdav"]["permissions"] = ["read", "write"]
    status, answer = await post_share(http, b, again, signer)
    assert status == 409 and answer["message"]
    (kept,) = await received(b)
    webdav = kept.protocols[0].webdav_options
    assert webdav.uri == f"{a.http_url}/remote.php/dav/ocm/s3cret-1"
    assert webdav.shared_secret == "s3cret-1"
    assert not webdav.permissions.permissions.initiate_file_upload
    assert kept.state == ocm_res.SHARE_STATE_ACCEPTED  # not reset to pending
    assert kept.id == share.id


async def test_an_oversized_share_is_413(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    body = share_body(a, description="x" * (64 * 1024))
    assert (await post_share(http, b, body, signer))[0] == 413
    assert await received(b) == []


async def test_a_signed_share_to_an_unknown_user_is_404(
    sites: Sites, http: aiohttp.ClientSession, signer: Signer,
) -> None:
    a, b = sites
    status, answer = await post_share(http, b, share_body(a, share_with="nobody"), signer)
    assert status == 404 and answer["message"] == "user not found"


# ---- the way it works: a share end to end -----------------------------------------------


async def test_a_signed_share_end_to_end(sites: Sites) -> None:
    a, b = sites
    async with connect(a, "einstein") as einstein:
        assert (await einstein.put(NB, b'{"cells": []}'))[2] == 200
        created = await create_share(einstein, b.domain)
        assert created.status.code == OK, created.status
        assert created.recipient_display_name == "Marie Curie"
        allowed = await einstein.stub.IsProviderAllowed(prov_api.IsProviderAllowedRequest(
            provider=prov_res.ProviderInfo(domain=b.domain)))
        assert allowed.status.code == OK
    (share,) = await received(b)
    assert share.owner.idp == a.domain and share.owner.opaque_id == "einstein"
    assert share.opaque.map["owner_site"].value == b"site-a"
    webdav = share.protocols[0].webdav_options
    assert webdav.uri.startswith(f"{a.http_url}/remote.php/dav/ocm/")
    async with aiohttp.ClientSession() as http, http.get(webdav.uri) as r:
        assert (r.status, await r.read()) == (200, b'{"cells": []}')


# ---- M9: requests to any host -------------------------------------------------------------


async def test_an_untrusted_domain_is_refused_before_any_request(
    sites: Sites, listen: Callable[[], Any],
) -> None:
    a, _ = sites
    listener: Listener = await listen()
    async with connect(a, "einstein") as einstein:
        assert (await einstein.put(NB, b"v1"))[2] == 200
        info = await einstein.call("GetInfoByDomain",
                                   prov_api.GetInfoByDomainRequest(domain=listener.domain))
        assert info.status.code == c.CODE_PERMISSION_DENIED
        created = await create_share(einstein, listener.domain)
        assert created.status.code == c.CODE_PERMISSION_DENIED
        allowed = await einstein.stub.IsProviderAllowed(prov_api.IsProviderAllowedRequest(
            provider=prov_res.ProviderInfo(domain=listener.domain)))
        assert allowed.status.code == c.CODE_PERMISSION_DENIED
        assert (listener.connections, listener.requests) == (0, [])
        sent = await einstein.call("ListOCMShares", ocm_api.ListOCMSharesRequest())
        assert list(sent.shares) == []

        # The control: once trusted, the very same call reaches the listener.
        a.trusted_providers = {*a.trusted_providers, listener.domain}
        info = await einstein.call("GetInfoByDomain",
                                   prov_api.GetInfoByDomainRequest(domain=listener.domain))
        assert info.status.code == c.CODE_INTERNAL  # it serves no discovery document
        assert listener.requests == ["GET /.well-known/ocm"]


async def test_a_trusted_providers_endpoint_elsewhere_is_never_contacted(
    sites: Sites, listen: Callable[[], Any],
) -> None:
    a, _ = sites
    provider: Listener = await listen()
    elsewhere: Listener = await listen()
    doc = providers.discovery_document(provider.url, "site-f", "")
    for endpoint in (f"http://localhost:{elsewhere.port}/ocm",  # another host name
                     "https://evil.example/ocm",
                     f"http://user@{provider.domain}/ocm"):
        provider.documents["/.well-known/ocm"] = {**doc, "endPoint": endpoint}
        a.trusted_providers = {*a.trusted_providers, provider.domain}
        async with connect(a, "einstein") as einstein:
            assert (await einstein.put(NB, b"v1"))[2] == 200
            created = await create_share(einstein, provider.domain)
            assert created.status.code == c.CODE_INTERNAL, endpoint
    assert elsewhere.connections == 0
    assert "POST /ocm/shares" not in provider.requests


# ---- M9: the discovery cache expires ------------------------------------------------------


async def test_the_discovery_cache_expires(listen: Callable[[], Any]) -> None:
    listener: Listener = await listen()
    fake_provider(listener, Ed25519PrivateKey.generate())
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        discovery = providers.Discovery(
            session, logging.getLogger("test"),
            trusted=providers.TrustedProviders([listener.domain]), ttl=60.0,
            clock=lambda: now[0])
        first = await discovery.lookup(listener.domain)
        assert first.info.name == "mesh_collab (site-f)"
        assert [p.domain for p in discovery.known()] == [listener.domain]
        now[0] += 59
        assert await discovery.lookup(listener.domain) is first
        assert listener.requests.count("GET /.well-known/ocm") == 1

        listener.documents["/.well-known/ocm"]["provider"] = "renamed"
        now[0] += 2  # past the ttl
        assert discovery.known() == []
        again = await discovery.lookup(listener.domain)
        assert again.info.name == "renamed"
        assert listener.requests.count("GET /.well-known/ocm") == 2

        # A failure is not cached: the next lookup asks again.
        del listener.documents["/.well-known/ocm"]
        now[0] += 61
        with pytest.raises(providers.GatewayError) as failed:
            await discovery.lookup(listener.domain)
        assert failed.value.code == c.CODE_INTERNAL
        with pytest.raises(providers.GatewayError):
            await discovery.lookup(listener.domain)
        assert listener.requests.count("GET /.well-known/ocm") == 4
    assert providers.DEFAULT_TTL == 600


async def test_a_rotated_provider_key_is_accepted_after_a_refetch(
    sites: Sites, http: aiohttp.ClientSession, listen: Callable[[], Any],
) -> None:
    _, b = sites
    listener: Listener = await listen()
    b.trusted_providers = {*b.trusted_providers, listener.domain}
    old = fake_provider(listener, Ed25519PrivateKey.generate())

    def body(n: int) -> dict[str, Any]:
        owner = f"einstein@{listener.domain}"
        return {"shareWith": "marie", "name": f"nb{n}.ipynb", "providerId": f"s$p!{n}",
                "owner": owner, "shareType": "user",
                "protocol": {"name": "multi", "webdav": {
                    "sharedSecret": f"secret-{n}",
                    "uri": f"{listener.url}/remote.php/dav/ocm/secret-{n}"}}}

    assert (await post_share(http, b, body(1), old))[0] == 201
    fetched = listener.requests.count("GET /.well-known/ocm")
    assert fetched == 1
    new = fake_provider(listener, Ed25519PrivateKey.generate())  # the provider rotates
    assert new.key_id == old.key_id
    assert (await post_share(http, b, body(2), new))[0] == 201  # B's cached key is stale
    assert listener.requests.count("GET /.well-known/ocm") == 2
    assert (await post_share(http, b, body(3), old))[0] == 401  # the old key is gone
    assert [s.name for s in await received(b)] == ["nb1.ipynb", "nb2.ipynb"]


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_refuses_a_malformed_trusted_provider(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0",
            "--root", str(tmp_path / "data"), "--demo-users",
            "--trusted-providers", "http://x"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not a domain" in done.stderr and "http://x" in done.stderr
    assert done.stdout == ""  # never announced readiness
