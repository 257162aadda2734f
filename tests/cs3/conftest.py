from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.pytest_plugin import Site


@pytest.fixture
def gateway_factory(gateway_factory: Callable[..., Any]) -> Callable[..., Any]:
    """The plugin's factory, with the gateways it starts trusting each other as OCM
    providers (the sites of one mesh); a gateway trusts nobody else unless told.

    A gateway's domain derives from its port, so the trust is set once it runs.
    """
    started: list[EmbeddedGateway] = []

    async def start(**kwargs: Any) -> EmbeddedGateway:
        gw: EmbeddedGateway = await gateway_factory(**kwargs)
        started.append(gw)
        for one in started:
            others = {other.domain for other in started if other is not one}
            one.trusted_providers = one.trusted_providers | others
        return gw

    return start


@pytest.fixture
async def workdir(site: Site, einstein: Session) -> AsyncIterator[str]:
    """A fresh folder in einstein's home, removed afterwards (tests may share a real Reva)."""
    path = f"{site.home('einstein')}/mc-test-{uuid.uuid4().hex[:12]}"
    await einstein.files.mkdir(path)
    yield path
    try:
        await einstein.files.delete(path)
    except errors.StorageError:
        pass  # a test may have deleted or locked it on purpose: the folder is disposable
