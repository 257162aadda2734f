"""The extension app: installation, configuration, state, lifecycle, services."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from jupyter_core.paths import jupyter_config_path
from jupyter_server.config_manager import BaseJSONConfigManager
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from traitlets import TraitError

from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.jupyter.app import MeshCollabApp, MeshState
from mesh_collab.jupyter.contents import CS3ContentsManager
from mesh_collab.jupyter.identity import CS3IdentityProvider
from tests.jupyter.conftest import TOKEN, jupyter_process
from tests.processes import pool_workers

NodeFactory = Any

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_enables_us_and_disables_ydoc() -> None:
    data = json.loads(
        (REPO / "jupyter-config/jupyter_server_config.d/mesh_collab.json").read_text()
    )
    assert data["ServerApp"]["jpserver_extensions"] == {
        "mesh_collab.jupyter": True,
        "jupyter_server_ydoc": False,
    }


def test_installed_config_enables_us_and_disables_ydoc() -> None:
    """What `jupyter server extension list` reads: every config dir, merged."""
    merged: dict[str, bool] = {}
    for folder in jupyter_config_path()[::-1]:  # lowest precedence first
        manager = BaseJSONConfigManager(config_dir=folder, read_directory=True)
        section = manager.get("jupyter_server_config")
        merged.update(section.get("ServerApp", {}).get("jpserver_extensions", {}))
    assert merged.get("mesh_collab.jupyter") is True
    assert merged.get("jupyter_server_ydoc") is False


def test_extension_list_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    states = dict(re.findall(r"^\s+(\S+) (enabled|disabled)$", text, re.MULTILINE))
    assert states["mesh_collab.jupyter"] == "enabled"
    assert states["jupyter_server_ydoc"] == "disabled"


def test_traits_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MESH_COLLAB_GATEWAY", "MESH_COLLAB_SITE", "MESH_COLLAB_CS3_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    app = MeshCollabApp()
    assert app.site == "site-a" and app.gateway == "127.0.0.1:19000"
    assert app.auth_mode == "single-user"
    assert (app.checkpoint_quiet_period, app.checkpoint_max_interval) == (2.0, 30.0)
    assert (app.lock_expiry, app.document_cleanup_delay, app.rpc_timeout) == (60.0, 60.0, 10.0)
    assert app.file_poll_interval == 5.0 and app.log_sync_interval == 0.01
    assert app.max_message_size == 16 * 2**20 and app.max_notebook_size == 64 * 2**20
    assert app.data_dir.endswith("mesh_collab/site-a")

    monkeypatch.setenv("MESH_COLLAB_GATEWAY", "reva.example:19000")
    monkeypatch.setenv("MESH_COLLAB_SITE", "cern")
    monkeypatch.setenv("MESH_COLLAB_CS3_PASSWORD", "s3cret-pw")
    app = MeshCollabApp()
    assert app.gateway == "reva.example:19000" and app.site == "cern"
    assert app.data_dir.endswith("mesh_collab/cern")
    assert app.cs3_password == "s3cret-pw"
    assert "s3cret-pw" not in repr(app)
    for name in ("site", "gateway", "cs3_password", "checkpoint_quiet_period", "max_message_size"):
        trait = app.traits()[name]
        assert trait.metadata.get("config") is True and trait.help


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("gateway", "no-port"),
        ("site", ""),
        ("rpc_timeout", 0),
        ("lock_expiry", -1),
        ("lock_expiry", 3600),  # past the storage's cap on a lock's life
        ("file_poll_interval", 0),
        ("log_sync_interval", -0.1),
        ("max_notebook_size", 0),
        ("auth_mode", "everyone"),
    ],
)
def test_bad_values_are_refused(name: str, value: object) -> None:
    with pytest.raises(TraitError):
        MeshCollabApp(**{name: value})


async def test_node_state_and_replaced_classes(
    node_factory: NodeFactory, gateway: EmbeddedGateway
) -> None:
    node = await node_factory(gateway, cs3_password="relativity")
    assert isinstance(node.app.contents_manager, CS3ContentsManager)
    assert isinstance(node.app.identity_provider, CS3IdentityProvider)
    state = node.state
    assert isinstance(state, MeshState)
    assert state.site == "site-a" and state.config is node.extension
    assert state.ready.is_set() and state.error is None
    assert state.sessions.default is not None
    assert state.sessions.default.user is not None
    assert state.sessions.default.user.username == "einstein"
    assert "relativity" not in repr(state)
    assert "cs3_password" not in node.app.web_app.settings["mesh_collab_config"]
    # the stock jupyter_server_ydoc routes are not there; ours are the only ones
    response = await node.api("GET", "status")
    assert response.status_code == 200


async def test_a_started_node_keeps_the_collector_off_its_startup_objects(
    node_factory: NodeFactory, gateway: EmbeddedGateway
) -> None:
    gc.unfreeze()  # whatever an earlier node of this test process froze
    assert gc.get_freeze_count() == 0
    await node_factory(gateway, cs3_password="relativity")
    # A full collection no longer scans the server's modules, classes and settings.
    assert gc.get_freeze_count() > 10_000


async def test_a_started_node_starts_its_worker_process_in_the_background(
    node_factory: NodeFactory, gateway: EmbeddedGateway
) -> None:
    """The worker of large notebooks starts with the node (``start_worker``, on by default),
    so that the first large notebook does not wait for it."""
    before = pool_workers()
    await node_factory(gateway, start_worker=MeshCollabApp.start_worker.default_value)
    with anyio.fail_after(30):
        # Another process's start, which the node does not announce: poll it.
        while not pool_workers() - before:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_collaboration_routes_are_ours(
    node_factory: NodeFactory, gateway: EmbeddedGateway
) -> None:
    node = await node_factory(gateway)
    for uri in ("/api/collaboration/session/a.ipynb", "/api/collaboration/room/json:notebook:x"):
        request = HTTPServerRequest(
            start_line=RequestStartLine("GET", uri, "HTTP/1.1"),
            headers=HTTPHeaders({"Host": "127.0.0.1"}),
        )
        handler = node.app.web_app.find_handler(request).handler_class
        assert handler.__module__ == "mesh_collab.jupyter.handlers", (uri, handler)


async def test_jupyter_server_process(
    gateway: EmbeddedGateway, tmp_path: Path, jupyter_env: Path
) -> None:
    """A real `jupyter server` with every installed extension, as users start it."""
    env = {
        "MESH_COLLAB_GATEWAY": gateway.grpc_address,
        "MESH_COLLAB_CS3_USERNAME": "einstein",
        "MESH_COLLAB_CS3_PASSWORD": "relativity",
        "MESH_COLLAB_SITE": "site-x",
    }
    async with jupyter_process(tmp_path, jupyter_env, env=env) as server:
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {TOKEN}"}, timeout=30
        ) as http:
            with anyio.fail_after(30):
                # Readiness seen from outside the process: poll, under the deadline.
                while (me := await http.get(f"{server.url}api/me")).status_code == 503:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            assert me.status_code == 200, server.log
            identity = me.json()["identity"]
            assert identity["username"] == "einstein" and identity["site"] == "site-x"
            listing = (await http.get(f"{server.url}api/contents")).json()
            assert "Shared with me" in [m["name"] for m in listing["content"]]
    text = server.log
    assert "mesh_collab: node started" in text
    assert "relativity" not in text


async def test_explicit_contents_manager_wins(
    node_factory: NodeFactory, gateway: EmbeddedGateway
) -> None:
    node = await node_factory(
        gateway,
        server_config={
            "contents_manager_class": (
                "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"
            )
        },
    )
    assert not isinstance(node.app.contents_manager, CS3ContentsManager)
    assert isinstance(node.app.identity_provider, CS3IdentityProvider)


async def test_services_run_in_order_inside_the_owner_task(
    node_factory: NodeFactory, gateway: EmbeddedGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    tasks: set[asyncio.Task[object] | None] = set()

    def service(name: str):  # type: ignore[no-untyped-def]
        @asynccontextmanager
        async def run(state: MeshState) -> AsyncIterator[None]:
            assert state.sessions.default is not None  # the CS3 client is open, user logged in
            tasks.add(asyncio.current_task())
            events.append(f"enter {name}")
            yield
            events.append(f"exit {name}")

        return run

    original = MeshCollabApp.initialize_handlers

    def initialize_handlers(self: MeshCollabApp) -> None:
        original(self)
        self.add_service(service("a"))
        self.add_service(service("b"))

    monkeypatch.setattr(MeshCollabApp, "initialize_handlers", initialize_handlers)
    node = await node_factory(gateway)
    assert events == ["enter a", "enter b"]
    assert len(tasks) == 1 and None not in tasks
    with pytest.raises(RuntimeError):
        node.extension.add_service(service("late"))
    await node.extension.stop_extension()
    assert events == ["enter a", "enter b", "exit b", "exit a"]
    assert (await node.contents("GET")).status_code == 503  # stopped: no CS3 client


async def test_max_interval_below_quiet_period_is_refused(
    node_factory: NodeFactory, gateway: EmbeddedGateway, capfd: pytest.CaptureFixture[str]
) -> None:
    # jupyter_server prints the configuration error and exits.
    with pytest.raises(SystemExit):
        await node_factory(
            gateway,
            checkpoint_quiet_period=5.0,
            checkpoint_max_interval=1.0,
            server_config={"reraise_server_extension_failures": True},
        )
    assert "must not be smaller than checkpoint_quiet_period" in capfd.readouterr().err


async def test_bad_credentials_fail_start_and_requests_get_503(
    node_factory: NodeFactory, gateway: EmbeddedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await node_factory(gateway, cs3_password="wrong-password-xyz")
    assert node.state.error is not None
    response = await node.api("GET", "contents")
    assert response.status_code == 503
    assert "wrong-password-xyz" not in caplog.text


def test_the_node_id_is_random_and_kept_in_the_data_dir(tmp_path: Path) -> None:
    """Two nodes that share a URL (both http://localhost:8888/ on two hosts) have different
    ids, so neither takes the other's Reva lock for its own before a restart; one node keeps
    its id across restarts."""
    one = MeshCollabApp(data_dir=str(tmp_path / "one")).node_id
    again = MeshCollabApp(data_dir=str(tmp_path / "one")).node_id
    other = MeshCollabApp(data_dir=str(tmp_path / "two")).node_id
    assert one == again and one != other
    assert len(one) == 16 and (tmp_path / "one" / "node-id").read_text().strip() == one
