"""Fixtures of the file interfaces: ``cs3://`` (fsspec) and the FUSE mount.

fsspec's synchronous calls run on fsspec's IO thread and block their caller until done, while
the embedded gateway serves on the test's event loop: tests call them through
:func:`in_thread`, never straight from the loop.
"""

from __future__ import annotations

import functools
import json
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import fsspec
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.filesystem import CS3FileSystem
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.pytest_plugin import Site

T = TypeVar("T")

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def declared_entry_point() -> EntryPoint:
    """The ``fsspec.specs`` entry point for ``cs3`` that pyproject.toml declares."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    value = project["entry-points"]["fsspec.specs"]["cs3"]
    return EntryPoint(name="cs3", value=value, group="fsspec.specs")


# fsspec registers "cs3" from the installed package's entry points; a checkout whose package
# was installed before the entry point existed gets it from pyproject.toml itself.
if "cs3" not in fsspec.available_protocols():
    fsspec.register_implementation(
        "cs3", declared_entry_point().value.replace(":", "."), clobber=False
    )


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (fsspec, pandas, the mount's files) off the test's event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@pytest.fixture
def cs3fs(site: Site) -> Iterator[CS3FileSystem]:
    """einstein's ``cs3://`` filesystem on :func:`site` (a fresh instance per test)."""
    fs = CS3FileSystem(
        gateway=site.grpc_address, username="einstein", password=site.users["einstein"],
        skip_instance_cache=True,
    )
    yield fs
    fs.close_session()


@pytest.fixture
async def fsdir(site: Site, einstein: Session) -> AsyncIterator[str]:
    """A fresh folder in einstein's home, as an fsspec path (no leading slash)."""
    path = f"{site.home('einstein')}/fs-test-{uuid.uuid4().hex[:12]}"
    await einstein.files.mkdir(path)
    yield path.lstrip("/")
    try:
        await einstein.files.delete(path)
    except errors.StorageError:
        pass  # a test may have deleted or locked it on purpose: the folder is disposable


# The mount and kernel tests need one site only (the mount does not depend on the lock
# profile beyond what the cs3:// tests check): site-a's gateway and einstein there.


@pytest.fixture
async def gateway_a(
    gateway_factory: Callable[..., Awaitable[EmbeddedGateway]],
) -> EmbeddedGateway:
    """An embedded gateway for site-a (eos lock profile)."""
    return await gateway_factory(site="site-a")


@pytest.fixture
async def einstein_a(
    gateway_a: EmbeddedGateway, cs3_client_factory: Callable[..., Awaitable[CS3Client]]
) -> Session:
    """einstein's session on :func:`gateway_a`."""
    cs3 = await cs3_client_factory(gateway_a.grpc_address)
    return await cs3.login("einstein", "relativity")


async def first_json_line(process: Any) -> Any:
    """The JSON line a starting process announces itself with on stdout (None: it exited
    first), within 30 s."""
    assert process.stdout is not None
    line = b""
    with anyio.fail_after(30):
        async for chunk in process.stdout:
            line += chunk
            if b"\n" in line:
                break
    return json.loads(line or b"null")
