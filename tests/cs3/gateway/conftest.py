"""Fixtures for the embedded gateway's own tests: real gRPC and HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway_helpers import Session, connect

from mesh_collab.cs3.gateway import EmbeddedGateway


@pytest.fixture(params=["eos", "edge"])
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[EmbeddedGateway]:
    async with EmbeddedGateway(root=tmp_path / "gw") as gw:
        yield gw


@pytest.fixture
async def profiled_gateway(tmp_path: Path, profile: str) -> AsyncIterator[EmbeddedGateway]:
    async with EmbeddedGateway(root=tmp_path / "gw", lock_profile=profile) as gw:  # type: ignore[arg-type]
        yield gw


@pytest.fixture
async def einstein(gateway: EmbeddedGateway) -> AsyncIterator[Session]:
    async with connect(gateway, "einstein") as session:
        yield session


@pytest.fixture
async def marie(gateway: EmbeddedGateway) -> AsyncIterator[Session]:
    async with connect(gateway, "marie") as session:
        yield session
