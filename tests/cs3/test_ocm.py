"""OCM between two embedded gateways: einstein at site A shares with marie at site B.

The two gateways trust each other (``tests/cs3/conftest.py``'s ``gateway_factory``) and no
one else.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.models import Role, ShareState, UserId


@dataclass
class TwoSites:
    einstein: Session  # at site A
    marie: Session  # at site B
    a: EmbeddedGateway
    b: EmbeddedGateway


@pytest.fixture
async def sites(gateway_factory, cs3_client_factory) -> TwoSites:
    a = await gateway_factory(site="site-a")
    b = await gateway_factory(site="site-b")
    assert a.trusted_providers == {b.domain} and b.trusted_providers == {a.domain}
    einstein = await (await cs3_client_factory(a.grpc_address)).login("einstein", "relativity")
    marie = await (await cs3_client_factory(b.grpc_address)).login("marie", "radioactivity")
    return TwoSites(einstein, marie, a, b)


@pytest.fixture
async def two_sites(sites: TwoSites) -> tuple[Session, Session, str]:
    """(einstein at site A, marie at site B, site B's OCM domain)."""
    return sites.einstein, sites.marie, sites.b.domain


async def test_provider_discovery(two_sites: tuple[Session, Session, str]) -> None:
    einstein, _, domain_b = two_sites
    provider = await einstein.ocm.provider(domain_b)
    assert provider.ocm_endpoint.startswith("http://")
    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"http://{domain_b}/.well-known/ocm")).json()
    assert doc["enabled"] is True and doc["endPoint"] == provider.ocm_endpoint


async def test_marie_at_site_b_receives_einsteins_notebook(
    two_sites: tuple[Session, Session, str],
) -> None:
    einstein, marie, domain_b = two_sites
    nb = await einstein.files.write("/home/einstein/shared.ipynb", b'{"cells": []}')
    share = await einstein.ocm.create(nb.id, UserId(idp=domain_b, opaque_id="marie"), Role.EDITOR)
    assert share.resource_id == nb.id
    assert [s.id for s in await einstein.ocm.list()] == [share.id]

    (received,) = await marie.ocm.received()
    assert received.name == "shared.ipynb"
    assert received.state is ShareState.PENDING
    assert received.remote_resource_id == nb.id  # the room key, the same at both sites
    assert received.role is Role.EDITOR
    assert "secret" not in repr(received).lower() or received.shared_secret not in repr(received)

    await marie.ocm.accept(received.id)
    assert (await marie.ocm.get_received(received.id)).state is ShareState.ACCEPTED

    async with httpx.AsyncClient() as http:
        response = await http.get(
            received.webdav_uri, headers={"Authorization": f"Bearer {received.shared_secret}"}
        )
        assert response.status_code == 200 and response.content == b'{"cells": []}'
        wrong_uri = received.webdav_uri.replace(received.shared_secret, "wrong-secret")
        refused = await http.get(wrong_uri, headers={"Authorization": "Bearer wrong-secret"})
        assert refused.status_code in (401, 403, 404)


async def test_share_with_an_unknown_remote_user_is_refused(
    two_sites: tuple[Session, Session, str],
) -> None:
    einstein, marie, domain_b = two_sites
    nb = await einstein.files.write("/home/einstein/shared.ipynb", b"{}")
    with pytest.raises(errors.StorageError):
        await einstein.ocm.create(nb.id, UserId(idp=domain_b, opaque_id="nobody-such"))
    assert await einstein.ocm.list() == []
    assert await marie.ocm.received() == []


async def test_share_with_an_unreachable_site_is_refused(sites: TwoSites) -> None:
    sites.a.trusted_providers = {*sites.a.trusted_providers, "127.0.0.1:9"}  # trusted, dead
    einstein = sites.einstein
    nb = await einstein.files.write("/home/einstein/shared.ipynb", b"{}")
    with pytest.raises(errors.StorageInternal):
        await einstein.ocm.provider("127.0.0.1:9")
    with pytest.raises(errors.StorageError):
        await einstein.ocm.create(nb.id, UserId(idp="127.0.0.1:9", opaque_id="marie"))
    assert await einstein.ocm.list() == []


async def test_share_with_an_untrusted_site_is_refused(sites: TwoSites) -> None:
    einstein = sites.einstein
    nb = await einstein.files.write("/home/einstein/shared.ipynb", b"{}")
    with pytest.raises(errors.PermissionDenied):
        await einstein.ocm.provider("127.0.0.1:9")
    with pytest.raises(errors.PermissionDenied):
        await einstein.ocm.create(nb.id, UserId(idp="127.0.0.1:9", opaque_id="marie"))
    assert await einstein.ocm.list() == []
