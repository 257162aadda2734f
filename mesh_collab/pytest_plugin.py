"""Test fixtures for mesh_collab and for projects built on it.

Enable with ``pytest_plugins = ["mesh_collab.pytest_plugin"]``. Everything runs for real on
loopback: embedded CS3 gateways over gRPC and HTTP, the async CS3 client.

The contract fixtures (:func:`site`) run against the embedded gateway in both lock profiles,
and against a real Reva when ``MESH_COLLAB_REVA`` is set::

    MESH_COLLAB_REVA=localhost:19000                # the gateway's gRPC address
    MESH_COLLAB_REVA_USERS=einstein:relativity,marie:radioactivity
    MESH_COLLAB_REVA_PROFILE=eos                    # which lock rules it follows: eos or edge
    MESH_COLLAB_REVA_HOME=/home/{username}          # home path template (Reva's demo layout)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.gateway import EmbeddedGateway

T = TypeVar("T")

DEMO_USERS = {"einstein": "relativity", "marie": "radioactivity", "richard": "superfluidity"}


@asynccontextmanager
async def in_own_task(cm: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit ``cm`` inside a task of its own.

    pytest-asyncio sets a fixture up and tears it down in two different tasks, while anyio
    task groups must be entered and exited in one. Hosting the context manager in its own
    task makes any service usable as a fixture.
    """
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with cm as value:
                entered.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
                return
            raise

    task = asyncio.get_running_loop().create_task(host())
    try:
        yield await entered
    finally:
        stop.set()
        await task


@dataclass
class Site:
    """One CS3 site under test: a gateway address, its lock profile and its users."""

    grpc_address: str
    profile: str
    users: dict[str, str]
    home_template: str = "/home/{username}"
    gateway: EmbeddedGateway | None = None
    clients: list[CS3Client] = field(default_factory=list)

    def home(self, username: str) -> str:
        """The home path of ``username``."""
        return self.home_template.format(username=username)

    @property
    def embedded(self) -> bool:
        return self.gateway is not None


def _reva_site() -> Site | None:
    address = os.environ.get("MESH_COLLAB_REVA")
    if not address:
        return None
    pairs = os.environ.get("MESH_COLLAB_REVA_USERS", "einstein:relativity,marie:radioactivity")
    users = dict(pair.split(":", 1) for pair in pairs.split(","))
    return Site(
        grpc_address=address,
        profile=os.environ.get("MESH_COLLAB_REVA_PROFILE", "eos"),
        users=users,
        home_template=os.environ.get("MESH_COLLAB_REVA_HOME", "/home/{username}"),
    )


@pytest.fixture
async def gateway_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Start embedded gateways: ``gw = await gateway_factory(site="site-a", lock_profile="eos")``.

    Each gets its own root under ``tmp_path``; all stop at teardown.
    """
    stack: list[AbstractAsyncContextManager[EmbeddedGateway]] = []

    async def start(**kwargs: Any) -> EmbeddedGateway:
        site = kwargs.setdefault("site", f"site-{len(stack)}")
        kwargs.setdefault("root", tmp_path / site)
        kwargs.setdefault("host", "127.0.0.1")
        cm = in_own_task(EmbeddedGateway(**kwargs))
        gw = await cm.__aenter__()
        stack.append(cm)
        return gw

    try:
        yield start
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)


@pytest.fixture
async def cs3_client_factory() -> AsyncIterator[Callable[[str], Any]]:
    """Open CS3 clients: ``client = await cs3_client_factory(gw.grpc_address)``."""
    opened: list[AbstractAsyncContextManager[CS3Client]] = []

    async def open_client(address: str, **kwargs: Any) -> CS3Client:
        cm = in_own_task(CS3Client(address, **kwargs))
        client = await cm.__aenter__()
        opened.append(cm)
        return client

    try:
        yield open_client
    finally:
        for cm in reversed(opened):
            await cm.__aexit__(None, None, None)


def _site_params() -> list[Any]:
    params: list[Any] = [
        pytest.param("eos", id="embedded-eos"),
        pytest.param("edge", id="embedded-edge"),
    ]
    reva = pytest.mark.skipif(
        not os.environ.get("MESH_COLLAB_REVA"), reason="MESH_COLLAB_REVA is not set"
    )
    params.append(pytest.param("reva", id="reva", marks=reva))
    return params


@pytest.fixture(params=_site_params())
async def site(request: pytest.FixtureRequest, gateway_factory: Any) -> Site:
    """A CS3 site to run the contract suite against: embedded (eos, edge) or a real Reva."""
    if request.param == "reva":
        reva = _reva_site()
        assert reva is not None
        return reva
    gw = await gateway_factory(site="site-a", lock_profile=request.param)
    return Site(
        grpc_address=gw.grpc_address, profile=request.param, users=dict(DEMO_USERS), gateway=gw
    )


@pytest.fixture
async def cs3(site: Site, cs3_client_factory: Any) -> CS3Client:
    """An open :class:`CS3Client` on :func:`site`."""
    return await cs3_client_factory(site.grpc_address)


@pytest.fixture
async def einstein(site: Site, cs3: CS3Client) -> Session:
    """einstein's session on :func:`site`."""
    return await cs3.login("einstein", site.users["einstein"])


@pytest.fixture
async def marie(site: Site, cs3: CS3Client) -> Session:
    """marie's session on :func:`site`."""
    return await cs3.login("marie", site.users["marie"])
