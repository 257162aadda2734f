"""A real Jupyter node runs a real kernel in its FUSE mount of CS3, beside the notebook."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.jupyter.kernels import fuse_missing
from tests.fs.conftest import first_json_line, in_thread
from tests.jupyter.conftest import TOKEN, Node, NodeFactory, jupyter_env, node_factory

__all__ = ["jupyter_env", "node_factory"]  # fixtures, used by name

HOME = "/home/einstein"


@dataclass
class GatewayProcess:
    """``mesh-collab gateway`` in a process of its own (what a node's fixture needs of it)."""

    grpc_address: str


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """An embedded gateway in a child process.

    A kernel starts with its working folder in the mount, and jupyter_client's Popen waits,
    on the node's event loop, for the child to enter it: a FUSE call that the mount answers
    by asking the gateway. In this test the node runs on the test's event loop, so the
    gateway must not (deployments have it elsewhere anyway).
    """
    command = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0",
               "--root", str(tmp_path / "gateway"), "--demo-users"]
    async with await anyio.open_process(
        command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as process:
        try:
            yield GatewayProcess(grpc_address=(await first_json_line(process))["grpc"])
        finally:
            process.terminate()
            with anyio.fail_after(30):
                await process.wait()


@pytest.fixture
async def einstein_p(
    gateway_process: GatewayProcess, cs3_client_factory: Callable[..., Awaitable[CS3Client]]
) -> Session:
    """einstein's session on :func:`gateway_process`."""
    cs3 = await cs3_client_factory(gateway_process.grpc_address)
    return await cs3.login("einstein", "relativity")


async def execute(node: Node, kernel_id: str, code: str) -> str:
    """Run ``code`` in the kernel through its websocket; return what it printed."""
    url = node.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"})
    ws: WebSocketClientConnection = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3",
                   "date": datetime.now(UTC).isoformat()},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out: list[str] = []
    replied = idle = False
    try:
        with anyio.fail_after(60):
            while not (replied and idle):
                raw = await ws.read_message()
                assert raw is not None, "the kernel websocket closed"
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["header"]["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    pytest.fail("\n".join(content["traceback"]))
                elif kind == "execute_reply":
                    replied = True
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
    finally:
        ws.close()
    return "".join(out)


@pytest.mark.skipif(bool(fuse_missing()), reason=f"no FUSE here: {fuse_missing()}")
async def test_a_kernel_reads_and_writes_cs3_beside_its_notebook(
    gateway_process: GatewayProcess, einstein_p: Session, node_factory: NodeFactory
) -> None:
    einstein = einstein_p
    await einstein.files.mkdir(f"{HOME}/project")
    await einstein.files.write(f"{HOME}/project/data.txt", b"measured in CS3")
    notebook = nbformat.writes(nbformat.v4.new_notebook()).encode()
    await einstein.files.write(f"{HOME}/project/analysis.ipynb", notebook)

    node = await node_factory(gateway_process, mount_kernels=True)  # type: ignore[arg-type]
    files = node.state.kernel_files
    assert files is not None
    with anyio.fail_after(30):
        await files.settled.wait()
    assert files.mounted, files.reason
    status = (await node.api("GET", "mesh/status?path=project/analysis.ipynb")).json()
    assert status["kernels"] == {"mounted": True, "cwd": str(files.mountpoint),
                                 "root": HOME, "reason": ""}

    created = await node.api("POST", "sessions", body={
        "path": "project/analysis.ipynb", "type": "notebook", "name": "analysis.ipynb",
        "kernel": {"name": "python3"},
    })
    assert created.status_code == 201, created.text
    kernel_id = created.json()["kernel"]["id"]

    printed = await execute(node, kernel_id, 'print(open("data.txt").read())')
    assert printed == "measured in CS3\n"

    code = (
        "import os\n"
        "from mesh_collab.cs3.filesystem import CS3FileSystem\n"
        "print(os.getcwd())\n"
        "with open('result.txt', 'w') as f:\n"
        "    f.write('42')\n"
        "print(CS3FileSystem().cat_file('home/einstein/project/data.txt').decode())\n"
        "print('MESH_COLLAB_CS3_PASSWORD' in os.environ)\n"
    )
    cwd, through_cs3, has_password, _ = (await execute(node, kernel_id, code)).split("\n")
    assert cwd == str(files.mountpoint / "project")
    assert through_cs3 == "measured in CS3"  # cs3:// with the gateway and token from the env
    assert has_password == "False"
    assert await einstein.files.read(f"{HOME}/project/result.txt") == b"42"

    assert (await node.api("DELETE", f"kernels/{kernel_id}")).status_code == 204


async def test_without_fuse_kernels_fall_back_with_one_warning(
    gateway_a: EmbeddedGateway, einstein_a: Session, node_factory: NodeFactory,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    notebook = nbformat.writes(nbformat.v4.new_notebook()).encode()
    await einstein_a.files.write(f"{HOME}/nb.ipynb", notebook)
    # A mount point that cannot exist (below a regular file): the mount process fails.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    node = await node_factory(gateway_a, mount_kernels=True, mount_root=str(blocker / "mnt"))
    files = node.state.kernel_files
    assert files is not None
    with anyio.fail_after(30):
        await files.settled.wait()
    assert not files.mounted
    status = (await node.api("GET", "mesh/status?path=nb.ipynb")).json()
    assert status["kernels"]["mounted"] is False
    assert status["kernels"]["reason"] == files.reason
    # The node logs to stderr through its own handler (not to caplog's, it does not propagate).
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "kernels will not see CS3" in line]
    assert len(warnings) == 1, warnings
    # The mount process's own reason reaches the log (its exit status is the process's).
    assert "the mount failed (exit code" in warnings[0]
    assert "cannot mount: cannot use mount point" in warnings[0]
    assert files.status()["cwd"] == files.fallback
    kernels: Any = node.app.kernel_manager
    cwd = await in_thread(kernels.cwd_for_path, "project")
    assert cwd == files.fallback == node.app.root_dir
