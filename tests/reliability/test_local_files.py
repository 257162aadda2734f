"""Local files that hold secrets or documents are the owner's only, whatever the umask.

The gateway's ``meta.sqlite`` holds the keys that sign every access token; the node's
``updates.sqlite`` every document it served, in clear; the demo's folders the Jupyter tokens.
Each component is started the way it runs (a ``mesh-collab gateway`` process, the node's
update log, ``mesh-collab demo``) under umask 022, the usual default that lets everyone read
new files.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import grpc
import httpx
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.rpc.v1beta1 import code_pb2

from mesh_collab.updatelog import UpdateLog
from tests.helpers import demo_sites

UMASK = 0o022


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_files(path: Path) -> list[Path]:
    """The database and its -wal and -shm (which exist while it is open)."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    assert all(f.exists() for f in files), files
    return files


@pytest.fixture
def umask_022() -> Iterator[None]:
    """This process's umask set to 022 for the test (the in-process components)."""
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


async def test_gateway_process_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "gateway"
    args = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0", "--data-port", "0",
            "--root", str(root), "--demo-users"]
    async with await anyio.open_process(args, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, umask=UMASK) as proc:
        assert proc.stdout is not None
        buffered = b""
        with anyio.fail_after(30):
            while b"\n" not in buffered:
                buffered += await proc.stdout.receive()
        line = json.loads(buffered.split(b"\n")[0])
        async with grpc.aio.insecure_channel(line["grpc"]) as channel:
            auth = await gw_grpc.GatewayAPIStub(channel).Authenticate(gw.AuthenticateRequest(
                type="basic", client_id="einstein", client_secret="relativity"), timeout=10)
            assert auth.status.code == code_pb2.CODE_OK
        assert mode(root) == 0o700
        for path in sqlite_files(root / "meta.sqlite"):  # the token secrets are in it
            assert mode(path) == 0o600, path
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0


async def test_update_log_files_are_private(tmp_path: Path, umask_022: None) -> None:
    data_dir = tmp_path / "node-data"
    async with UpdateLog(data_dir / "updates.sqlite"):
        assert mode(data_dir) == 0o700
        for path in sqlite_files(data_dir / "updates.sqlite"):
            assert mode(path) == 0o600, path


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_demo_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    args = [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "demo",
            "--root", str(root)]
    async with await anyio.open_process(args, stderr=subprocess.DEVNULL,
                                        umask=UMASK) as process:
        try:
            site_a = (await demo_sites(process))[0]
            # Open the shared notebook: the node's update log then holds it.
            async with httpx.AsyncClient(timeout=60) as http:
                response = await http.put(
                    f"{site_a['url']}api/collaboration/session/{quote(site_a['notebook'])}",
                    json={"format": "json", "type": "notebook"},
                    headers={"Authorization": f"token {site_a['token']}"},
                )
                assert response.status_code == 201, response.text
            site = root / "site-a"
            for folder in (root, site, site / "runtime", site / "gateway", site / "node"):
                assert mode(folder) == 0o700, folder
            # The runtime folder holds the page that logs in with the token.
            assert list((site / "runtime").glob("jpserver-*-open.html"))
            for path in (root / "mesh.json", site / "jupyter.log",
                         *sqlite_files(site / "gateway" / "meta.sqlite"),
                         *sqlite_files(site / "node" / "updates.sqlite")):
                assert mode(path) == 0o600, path
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                await process.wait()
