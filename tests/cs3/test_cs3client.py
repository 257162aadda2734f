"""CERN's cs3client (a real client nobody here wrote) against the embedded gateway.

cs3client is synchronous; each call runs in a worker thread so the gateway's event loop keeps
serving. It covers the calls cs3client supports: files, locks, versions, shares, users.
"""

from __future__ import annotations

import configparser
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from cs3client.auth import Auth
from cs3client.cs3client import CS3Client as CernClient
from cs3client.cs3resource import Resource
from cs3client.exceptions import FileLockedException, NotFoundException

from mesh_collab.cs3.client import Session
from mesh_collab.pytest_plugin import Site

pytestmark = pytest.mark.filterwarnings(
    # cs3client calls datetime.utcnow() style APIs deprecated upstream; not our code.
    "ignore::DeprecationWarning"
)


@pytest.fixture
async def cern(site: Site) -> tuple[CernClient, Callable[[], tuple[str, str]]]:
    if not site.embedded and site.profile != "eos":
        pytest.skip("cs3client expects Reva master semantics")
    config = configparser.ConfigParser()
    config["cs3client"] = {
        "host": site.grpc_address,
        "auth_login_type": "basic",
        "auth_client_id": "einstein",
        "auth_client_secret": site.users["einstein"],
        "lock_expiration": "60",
        "grpc_timeout": "10",
        "http_timeout": "10",
    }
    client = await anyio.to_thread.run_sync(
        CernClient, config, "cs3client", logging.getLogger("cs3client")
    )
    auth = Auth(client)
    auth.set_client_id("einstein")
    auth.set_client_secret(site.users["einstein"])
    return client, auth.get_token


async def sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_files(cern: tuple[CernClient, Any], workdir: str, einstein: Session) -> None:
    client, token = cern
    tok = await sync(token)
    res = Resource(abs_path=f"{workdir}/cern.txt")
    await sync(client.file.write_file, tok, res, b"written by cs3client", 20)
    chunks = await sync(lambda: list(client.file.read_file(tok, res)))
    assert b"".join(chunks) == b"written by cs3client"
    info = await sync(client.file.stat, tok, res)
    assert info.size == 20 and info.path == f"{workdir}/cern.txt"
    await sync(client.file.make_dir, tok, Resource(abs_path=f"{workdir}/dir"))
    folder = Resource(abs_path=workdir)
    names = await sync(lambda: [i.path for i in client.file.list_dir(tok, folder)])
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["cern.txt", "dir"]
    await sync(client.file.set_xattr, tok, res, "k", "v")
    assert (await einstein.files.stat(f"{workdir}/cern.txt")).metadata["k"] == "v"
    await sync(client.file.rename_file, tok, res, Resource(abs_path=f"{workdir}/moved.txt"))
    assert (await einstein.files.stat(f"{workdir}/moved.txt")).size == 20
    await sync(client.file.remove_file, tok, Resource(abs_path=f"{workdir}/moved.txt"))
    with pytest.raises(NotFoundException):
        await sync(client.file.stat, tok, Resource(abs_path=f"{workdir}/moved.txt"))


async def test_locks(cern: tuple[CernClient, Any], workdir: str) -> None:
    client, token = cern
    tok = await sync(token)
    res = Resource(abs_path=f"{workdir}/locked.txt")
    await sync(client.file.write_file, tok, res, b"v1", 2)
    await sync(client.file.set_lock, tok, res, "wopi", "lock-1")
    lock = await sync(client.file.get_lock, tok, res)
    assert lock["lock_id"] == "lock-1" and lock["app_name"] == "wopi"
    with pytest.raises(FileLockedException):
        await sync(client.file.set_lock, tok, res, "wopi", "lock-2")
    await sync(client.file.refresh_lock, tok, res, "wopi", "lock-1")
    await sync(client.file.unlock, tok, res, "wopi", "lock-1")
    # Reva answers GetLock on an unlocked file with NOT_FOUND, which cs3client raises.
    with pytest.raises(NotFoundException):
        await sync(client.file.get_lock, tok, res)


async def test_cs3client_cannot_overwrite_a_mesh_collab_lock(
    site: Site, cern: tuple[CernClient, Any], einstein: Session, workdir: str
) -> None:
    client, token = cern
    tok = await sync(token)
    path = f"{workdir}/nb.ipynb"
    await einstein.files.write(path, b"original")
    async with einstein.locks.lease(path, lock_id="node-a:1", expiry=30):
        with pytest.raises(Exception) as info:
            await sync(client.file.write_file, tok, Resource(abs_path=path), b"overwrite", 9,
                       app_name="office", lock_id="office-1")
        if site.profile == "eos":
            # Reva+EOS refuses the PUT with 409, which cs3client raises as FileLockedException.
            assert isinstance(info.value, FileLockedException)
    assert await einstein.files.read(path) == b"original"


async def test_versions(cern: tuple[CernClient, Any], workdir: str) -> None:
    client, token = cern
    tok = await sync(token)
    res = Resource(abs_path=f"{workdir}/v.txt")
    for body in (b"v1", b"v2"):
        await sync(client.file.write_file, tok, res, body, len(body))
    versions = await sync(client.checkpoint.list_file_versions, tok, res)
    assert len(versions) == 1
    await sync(client.checkpoint.restore_file_version, tok, res, versions[0].key)
    chunks = await sync(lambda: list(client.file.read_file(tok, res)))
    assert b"".join(chunks) == b"v1"


async def test_users_and_shares(
    cern: tuple[CernClient, Any], workdir: str, marie: Session
) -> None:
    client, token = cern
    tok = await sync(token)
    filt = client.user.create_find_user_filter("TYPE_QUERY", query="marie")
    (found,) = await sync(client.user.find_users, tok, [filt])
    assert found.username == "marie"
    user = await sync(client.user.get_user, found.id.idp, found.id.opaque_id)
    assert user.username == "marie"
    res = Resource(abs_path=f"{workdir}/s.txt")
    await sync(client.file.write_file, tok, res, b"shared", 6)
    info = await sync(client.file.stat, tok, res)
    await sync(client.share.create_share, tok, info, found.id.opaque_id, found.id.idp,
               "EDITOR", "USER")
    shares, _ = await sync(client.share.list_existing_shares, tok)
    assert any(s.share.resource_id.opaque_id == info.id.opaque_id for s in shares)
    received = await marie.shares.received()
    assert any(r.share.resource_id.opaque_id == info.id.opaque_id for r in received)
