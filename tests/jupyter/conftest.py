"""Fixtures for the jupyter_server extension: a real ServerApp on loopback, in this process.

pytest-jupyter's ``jp_serverapp`` runs tests in a loop of its own (its ``pytest_pyfunc_call``
hook and autouse ``jp_asyncio_loop``), which fights pytest-asyncio's loop and would apply to
every async test of the repository once registered. So these fixtures build the ServerApp the
same way (``initialize(new_httpserver=False)``, then a tornado ``HTTPServer`` on a socket bound
to ``127.0.0.1:0`` and read back, never bind-and-close), on pytest-asyncio's loop, and talk to
it with httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from jupyter_server.serverapp import ServerApp
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets.config import Config

from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.jupyter.app import MeshCollabApp, MeshState

TOKEN = "mesh-collab-test-token"
XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


@dataclass
class Node:
    """One running Jupyter server with the mesh_collab extension."""

    app: ServerApp
    url: str
    http: httpx.AsyncClient
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> MeshState:
        state = self.app.web_app.settings["mesh_collab"]
        assert isinstance(state, MeshState)
        return state

    @property
    def extension(self) -> MeshCollabApp:
        return self.state.config

    token: str = TOKEN

    async def api(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        http: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Call ``/api/<path>`` (path segments are URL-quoted by the caller)."""
        if body is not None:
            kwargs["content"] = json.dumps(body)
        return await (http or self.http).request(method, f"{self.url}api/{path}", **kwargs)

    async def contents(
        self, method: str, path: str = "", suffix: str = "", **kwargs: Any
    ) -> httpx.Response:
        """Call ``/api/contents/<path><suffix>``, quoting each path segment."""
        quoted = "/".join(quote(p, safe="") for p in path.split("/")) if path else ""
        return await self.api(method, f"contents/{quoted}{suffix}".rstrip("/"), **kwargs)

    async def login_form(self, http: httpx.AsyncClient) -> tuple[httpx.Response, str]:
        """GET the login page with ``http``; return it and its xsrf form value."""
        page = await http.get(f"{self.url}login")
        match = XSRF_FIELD.search(page.text)
        assert match, page.text
        return page, match.group(1)

    async def login(self, http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
        """Log in through the form (multi-user mode); ``http`` keeps the cookies."""
        _, xsrf = await self.login_form(http)
        return await http.post(
            f"{self.url}login",
            data={"username": username, "password": password, "_xsrf": xsrf},
            follow_redirects=False,
        )


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Awaitable[EmbeddedGateway]]) -> EmbeddedGateway:
    """An embedded CS3 gateway for site-a."""
    return await gateway_factory(site="site-a")


@pytest.fixture
async def cs3(
    gateway: EmbeddedGateway, cs3_client_factory: Callable[..., Awaitable[CS3Client]]
) -> CS3Client:
    """A CS3 client of the test itself (to arrange shares, check storage)."""
    return await cs3_client_factory(gateway.grpc_address)


@pytest.fixture
async def einstein(cs3: CS3Client) -> Session:
    return await cs3.login("einstein", "relativity")


@pytest.fixture
async def marie(cs3: CS3Client) -> Session:
    return await cs3.login("marie", "radioactivity")


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Jupyter's user folders under tmp_path (config, data, runtime)."""
    base = tmp_path / "jupyter"
    for name, env in (
        ("config", "JUPYTER_CONFIG_DIR"),
        ("data", "JUPYTER_DATA_DIR"),
        ("runtime", "JUPYTER_RUNTIME_DIR"),
    ):
        (base / name).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(env, str(base / name))
    for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "MESH_COLLAB_GATEWAY", "MESH_COLLAB_SITE"):
        monkeypatch.delenv(name, raising=False)
    return base


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def node_factory(tmp_path: Path, jupyter_env: Path) -> AsyncIterator[NodeFactory]:
    """Start Jupyter servers: ``node = await node_factory(gateway, auth_mode="multi-user")``.

    Keyword arguments are ``MeshCollabApp`` traits. Only mesh_collab is loaded: other
    installed extensions patch jupyter_server process-wide (notebook_shim), so the test of
    the full set runs a ``jupyter server`` process instead.
    """
    started: list[tuple[ServerApp, HTTPServer, httpx.AsyncClient]] = []

    async def start(
        gateway: EmbeddedGateway,
        *,
        server_config: dict[str, Any] | None = None,
        **mesh: Any,
    ) -> Node:
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        root = tmp_path / f"root-{len(started)}"
        root.mkdir()
        mesh.setdefault("gateway", gateway.grpc_address)
        mesh.setdefault("site", "site-a")
        mesh.setdefault("data_dir", str(tmp_path / f"data-{len(started)}"))
        # A worker process per node would cost each test ~1 s of CPU; the tests of large
        # notebooks start theirs on first use, test_app.py checks the default.
        mesh.setdefault("start_worker", False)
        # Likewise the FUSE mount for kernels (a child process per node): tests/fs checks it.
        mesh.setdefault("mount_kernels", False)
        if mesh.get("auth_mode", "single-user") == "single-user":
            mesh.setdefault("cs3_username", "einstein")
            mesh.setdefault("cs3_password", "relativity")
        config = Config(
            {
                "ServerApp": {
                    "port": port,
                    "ip": "127.0.0.1",
                    "open_browser": False,
                    "allow_root": True,
                    "root_dir": str(root),
                    "jpserver_extensions": {"mesh_collab.jupyter": True},
                    **(server_config or {}),
                },
                "IdentityProvider": {"token": TOKEN},
                "NotebookNotary": {"db_file": ":memory:"},
                "MeshCollabApp": mesh,
            }
        )
        app = ServerApp(config=config)
        app.init_signal = lambda: None  # type: ignore[method-assign]
        try:
            app.initialize(argv=[], find_extensions=False, new_httpserver=False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        server = HTTPServer(app.web_app)
        server.add_sockets(sockets)
        await app.extension_manager.start_all_extensions()
        http = httpx.AsyncClient(timeout=30, headers={"Authorization": f"token {TOKEN}"})
        started.append((app, server, http))
        return Node(app=app, url=f"http://127.0.0.1:{port}/", http=http)

    try:
        yield start
    finally:
        for app, server, http in reversed(started):
            await http.aclose()
            server.stop()
            await app._cleanup()
            await server.close_all_connections()
        ServerApp.clear_instance()


@pytest.fixture
async def node(node_factory: NodeFactory, gateway: EmbeddedGateway) -> Node:
    """A single-user node: einstein's server on site-a."""
    return await node_factory(gateway)


@dataclass
class JupyterProcess:
    """A real ``jupyter server`` / ``jupyter lab`` process (every installed extension)."""

    url: str
    log_path: Path
    process: Any = None

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@asynccontextmanager
async def jupyter_process(
    tmp_path: Path,
    jupyter_env: Path,
    *,
    app: str = "server",
    name: str = "",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> AsyncIterator[JupyterProcess]:
    """Run ``jupyter <app>`` on 127.0.0.1 with a free port, until the context exits.

    ``name`` (default: the app) names its root, data folder, runtime folder and log, so
    that several processes can run side by side, and one can be restarted on its data. The
    server announces its port in its runtime file (``--ServerApp.port=0``, no
    bind-and-close); readiness is ``/api`` answering.
    """
    name = name or app
    runtime = tmp_path / f"{name}-runtime"
    for stale in runtime.glob("jpserver-*.json"):
        stale.unlink()
    runtime.mkdir(exist_ok=True)
    root = tmp_path / f"{name}-root"
    root.mkdir(exist_ok=True)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
            f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
            f"--MeshCollabApp.data_dir={tmp_path / (name + '-data')}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *args,
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            info = None
            with anyio.fail_after(90):
                while info is None:
                    # The server announces itself in its runtime file; poll for it.
                    for found in runtime.glob("jpserver-*.json"):
                        info = json.loads(found.read_text() or "null")
                    if proc.returncode is not None:
                        pytest.fail(log_path.read_text())
                    # The process gives no event to wait on: poll, under the deadline.
                    await anyio.sleep(0.1)
            url = f"http://127.0.0.1:{info['port']}/"
            async with httpx.AsyncClient(timeout=30) as http:
                with anyio.fail_after(60):
                    # Readiness seen from outside the process: poll, under the deadline.
                    while (await http.get(f"{url}api")).status_code != 200:  # noqa: ASYNC110
                        await anyio.sleep(0.1)
            yield JupyterProcess(url=url, log_path=log_path, process=proc)
        finally:
            if proc.returncode is None:
                proc.terminate()
                with anyio.fail_after(30):
                    await proc.wait()
