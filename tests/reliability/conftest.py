"""Processes to break on purpose: a CS3 gateway and a Jupyter node, each a real subprocess.

A fault test needs to kill things the way the world does (``SIGKILL``, a gateway that
vanishes and comes back on the same address), so both run as ``python -m ...`` processes
here. Ports: the first start binds port 0 and reads the bound port back (the gateway prints
it, the node writes it into its runtime file); a restart asks for that same port again, which
is free once the process is dead (no bind-and-close anywhere).

The in-process fixtures of ``tests/jupyter/conftest.py`` (``node_factory``, ``gateway``...)
are re-exported for the tests that need no process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from tests.data import NOTEBOOKS as DATA  # noqa: F401 - for the tests of this folder
from tests.jupyter.conftest import (  # noqa: F401 - fixtures, re-exported
    TOKEN,
    cs3,
    einstein,
    gateway,
    jupyter_env,
    marie,
    node,
    node_factory,
)


def soak_seconds(default: float = 30.0) -> float:
    """``MESH_COLLAB_SOAK_SECONDS``: how long the soak runs (CI default 30 s)."""
    return float(os.environ.get("MESH_COLLAB_SOAK_SECONDS", default))


@dataclass
class GatewayProcess:
    """``python -m mesh_collab gateway`` in a subprocess, restartable on the same ports."""

    root: Path
    log_path: Path
    grpc_port: int = 0
    data_port: int = 0
    grpc_address: str = ""
    http_url: str = ""
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> None:
        """Start (or restart on the same ports) and wait for its JSON line."""
        args = [
            sys.executable, "-m", "mesh_collab", "gateway", "--host", "127.0.0.1",
            "--port", str(self.grpc_port), "--data-port", str(self.data_port),
            "--root", str(self.root), "--site", "site-a", "--demo-users",
        ]
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdout=subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        with anyio.fail_after(30):
            line = await self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the gateway did not start:\n{self.log_path.read_text()}")
        info = json.loads(line)
        self.grpc_address, self.http_url = info["grpc"], info["http"]
        self.grpc_port = int(self.grpc_address.rsplit(":", 1)[1])
        self.data_port = int(self.http_url.rsplit(":", 1)[1])

    async def stop(self, signum: int = signal.SIGKILL) -> None:
        """Stop it (SIGKILL by default: an outage, not a shutdown)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signum)
            with anyio.fail_after(30):
                await self.proc.wait()
        self.proc = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def gateway_process(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(root=tmp_path / "gateway-root", log_path=tmp_path / "gateway.log")
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(signal.SIGTERM)


@dataclass
class NodeProcess:
    """``jupyter server`` with mesh_collab in a subprocess, restartable on the same port and
    data folder (its update log)."""

    tmp_path: Path
    gateway: str
    traits: dict[str, object] = field(default_factory=dict)
    port: int = 0
    url: str = ""
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.tmp_path / "node-data"

    @property
    def log_path(self) -> Path:
        return self.tmp_path / "node.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start (a restart uses the same port and data folder) and wait until it answers."""
        self.starts += 1
        runtime = self.tmp_path / f"runtime-{self.starts}"  # no stale files of a killed run
        runtime.mkdir(parents=True)
        root = self.tmp_path / "node-root"
        root.mkdir(exist_ok=True)
        traits = {"gateway": self.gateway, "data_dir": str(self.data_dir), **self.traits}
        env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "JUPYTER_CONFIG_DIR": str(self.tmp_path / "jupyter-config"),
            "JUPYTER_DATA_DIR": str(self.tmp_path / "jupyter-data"),
            "MESH_COLLAB_CS3_USERNAME": "einstein",
            # In the environment, not on the command line (and the log test looks for it).
            "MESH_COLLAB_CS3_PASSWORD": "relativity",
        }
        for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "MESH_COLLAB_GATEWAY"):
            env.pop(name, None)
        args = [
            sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            *(f"--MeshCollabApp.{k}={v}" for k, v in traits.items()),
        ]
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_path
            )
        info = None
        with anyio.fail_after(90):
            while info is None:
                # The server announces itself in its runtime file; poll for it.
                for found in runtime.glob("jpserver-*.json"):
                    info = json.loads(found.read_text() or "null")
                if self.proc.returncode is not None:
                    pytest.fail(self.log)
                await anyio.sleep(0.1)
        self.port = int(info["port"])
        self.url = f"http://127.0.0.1:{self.port}/"
        async with httpx.AsyncClient(timeout=30) as http:
            with anyio.fail_after(60):
                # Readiness seen from outside the process: poll, under the deadline.
                while (await http.get(f"{self.url}api")).status_code != 200:  # noqa: ASYNC110
                    await anyio.sleep(0.1)

    async def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            if self.proc.returncode is None:
                try:
                    os.kill(self.proc.pid, signum)
                except ProcessLookupError:
                    pass  # already dead (killed by the test), not reaped yet
            with anyio.fail_after(30):
                await self.proc.wait()
        self.proc = None

    def rss(self) -> int:
        """Resident memory of the node process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def ws_url(self, room: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"token": TOKEN, **params}.items())
        return f"{self.url.replace('http://', 'ws://')}api/collaboration/room/{room}?{query}"

    async def open_session(self, http: httpx.AsyncClient, path: str) -> dict[str, str]:
        response = await http.put(
            f"{self.url}api/collaboration/session/{path}",
            json={"format": "json", "type": "notebook"},
            headers={"Authorization": f"token {TOKEN}"},
        )
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def node_process(
    tmp_path: Path, gateway_address: str, **traits: object
) -> AsyncIterator[NodeProcess]:
    """Run a node against ``gateway_address`` with ``MeshCollabApp`` ``traits``."""
    proc = NodeProcess(tmp_path=tmp_path, gateway=gateway_address, traits=traits)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill(signal.SIGTERM)
