"""A site on JupyterHub: a real hub and configurable-http-proxy on loopback, real user servers.

The hub logs users in with :class:`mesh_collab.hub.CS3Authenticator` against an embedded
gateway, spawns ``jupyterhub-singleuser`` with the mesh_collab extension for each user, and
routes to it through the proxy, as a site runs it (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import psutil
import pytest

from mesh_collab.cs3.client import CS3Client, Session, token_expiry
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.models import Role
from mesh_collab.hub import CS3Authenticator
from mesh_collab.jupyter.fileids import home_path
from tests.data import NOTEBOOKS
from tests.helpers import eventually
from tests.nodepeer import node_peer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "deploy" / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy"
SINGLEUSER = Path(sys.executable).with_name("jupyterhub-singleuser")
HUB = Path(sys.executable).with_name("jupyterhub")
XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')
PASSWORDS = {"einstein": "relativity", "marie": "radioactivity"}


def _free_port() -> int:
    # The hub and its proxy take fixed ports only: ask the kernel for free ones.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hub:
    """A running JupyterHub: its public URL, folder and an admin service token."""

    url: str
    root: Path
    admin_token: str
    process: anyio.abc.Process
    gateway: str

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"token {self.admin_token}"}

    async def user(self, http: httpx.AsyncClient, name: str) -> dict[str, Any]:
        response = await http.get(f"{self.url}hub/api/users/{name}", headers=self.admin())
        response.raise_for_status()
        return dict(response.json())

    async def login(self, http: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
        """Log in through the hub's login form; ``http`` keeps the cookies."""
        page = await http.get(f"{self.url}hub/login")
        match = XSRF_FIELD.search(page.text)
        assert match, page.text
        return await http.post(
            f"{self.url}hub/login",
            data={"username": name, "password": password, "_xsrf": match.group(1)},
            follow_redirects=False,
        )

    async def running_server(self, http: httpx.AsyncClient, name: str) -> dict[str, Any]:
        """Start ``name``'s server (if not yet) and return its model once it is ready."""
        await http.post(f"{self.url}hub/api/users/{name}/server", headers=self.admin())

        async def ready() -> dict[str, Any] | None:
            server = (await self.user(http, name))["servers"].get("", {})
            return dict(server) if server.get("ready") else None

        return dict(await eventually(ready, every=0.2, within=60))

    async def user_token(self, http: httpx.AsyncClient, name: str) -> str:
        response = await http.post(f"{self.url}hub/api/users/{name}/tokens",
                                   headers=self.admin(), json={"expires_in": 600})
        response.raise_for_status()
        return str(response.json()["token"])


@pytest.fixture
async def hub(gateway_factory: Any, tmp_path: Path) -> AsyncIterator[Hub]:
    if not PROXY.exists():
        pytest.fail(f"{PROXY} is missing: run ./dev.sh setup (npm ci in deploy/proxy)")
    gw: EmbeddedGateway = await gateway_factory(site="site-a")
    root = tmp_path / "hub"
    root.mkdir()
    port, hub_port, api_port = _free_port(), _free_port(), _free_port()
    admin_token = secrets.token_hex(16)
    config = {
        "JupyterHub": {
            "ip": "127.0.0.1", "port": port, "hub_ip": "127.0.0.1", "hub_port": hub_port,
            "db_url": f"sqlite:///{root / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(root / "jupyterhub_cookie_secret"),
            "authenticator_class": "mesh-collab",
            "spawner_class": "simple",
            "services": [{"name": "probe", "api_token": admin_token}],
            "load_roles": [{
                "name": "probe",
                "scopes": ["admin:users", "admin:auth_state", "admin:servers", "tokens",
                           "access:servers"],
                "services": ["probe"],
            }],
        },
        "ConfigurableHTTPProxy": {
            "api_url": f"http://127.0.0.1:{api_port}", "command": [str(PROXY)],
        },
        "Authenticator": {"enable_auth_state": True, "allow_all": True},
        "CS3Authenticator": {
            "gateway": gw.grpc_address, "site": "site-a", "domain": gw.domain,
            "mesh_directory": str(root / "mesh" / "mesh.json"),
            "node_url": f"http://127.0.0.1:{port}/user/{{username}}/",
        },
        "Spawner": {
            "cmd": [str(SINGLEUSER)],
            # The CI machine runs tests as root; a site's servers never are.
            "args": ["--MeshCollabApp.mount_kernels=False"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            "start_timeout": 60,
        },
        "SimpleLocalProcessSpawner": {"home_dir_template": str(root / "home" / "{username}")},
    }
    (root / "jupyterhub_config.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        "PATH": f"{SINGLEUSER.parent}{os.pathsep}{os.environ['PATH']}",
    }
    for name in ("MESH_COLLAB_CS3_PASSWORD", "MESH_COLLAB_CS3_USERNAME", "MESH_COLLAB_CS3_TOKEN"):
        env.pop(name, None)
    log = (root / "hub.log").open("wb")
    process = await anyio.open_process(
        [str(HUB), "-f", str(root / "jupyterhub_config.json")], cwd=root, env=env,
        stdout=log, stderr=log,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def up() -> bool:
                assert process.returncode is None, (root / "hub.log").read_text()[-3000:]
                try:
                    return (await http.get(f"{url}hub/api")).status_code == 200
                except httpx.TransportError:
                    return False  # not listening yet

            await eventually(up, every=0.2, within=60)
        yield Hub(url=url, root=root, admin_token=admin_token, process=process,
                  gateway=gw.grpc_address)
    finally:
        children = psutil.Process(process.pid).children(recursive=True)
        process.terminate()
        with anyio.move_on_after(20):
            await process.wait()
        for child in children:
            if child.is_running():
                child.kill()
        await process.aclose()  # kills it if it is still there, and closes its pipes
        log.close()


async def test_a_hub_login_keeps_the_cs3_token_never_the_password(hub: Hub) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        refused = await hub.login(http, "einstein", "not-his-password")
        assert refused.status_code == 403
        assert "einstein" not in (await http.get(f"{hub.url}hub/api/users",
                                                 headers=hub.admin())).text

        logged_in = await hub.login(http, "einstein", PASSWORDS["einstein"])
        assert logged_in.status_code == 302, logged_in.text

        state = (await hub.user(http, "einstein"))["auth_state"]
        assert set(state) == {"cs3_token", "cs3_token_expires", "cs3_user_id"}
        assert token_expiry(state["cs3_token"]) == state["cs3_token_expires"] > 0
        assert PASSWORDS["einstein"] not in json.dumps(state)

        server = await hub.running_server(http, "einstein")
        pid = server["state"]["pid"]
        node = psutil.Process(pid)
        environ = node.environ()
        assert environ["MESH_COLLAB_CS3_TOKEN"]
        assert environ["MESH_COLLAB_SITE"] == "site-a"
        assert "MESH_COLLAB_CS3_PASSWORD" not in environ

    # No process of the site holds the password: not the hub's files, not any process's
    # environment or command line.
    for path in hub.root.rglob("*"):
        if path.is_file() and path.suffix != ".log":
            assert PASSWORDS["einstein"].encode() not in path.read_bytes(), path
    for process in [psutil.Process(hub.process.pid), *psutil.Process(hub.process.pid).children(
            recursive=True)]:
        assert PASSWORDS["einstein"] not in " ".join(process.cmdline())
        assert PASSWORDS["einstein"] not in "".join(process.environ().values())
    assert stat.S_IMODE((hub.root / "jupyterhub_cookie_secret").stat().st_mode) == 0o600


async def test_a_user_server_is_a_mesh_node_of_its_user_and_nobody_else(
    hub: Hub, cs3_client_factory: Any
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await hub.login(http, "einstein", PASSWORDS["einstein"])).status_code == 302
        server = await hub.running_server(http, "einstein")
        base = f"{hub.url}{server['url'].lstrip('/')}"
        token = await hub.user_token(http, "einstein")
        as_einstein = {"Authorization": f"token {token}"}

        me = (await http.get(f"{base}api/me", headers=as_einstein)).json()["identity"]
        assert (me["username"], me["site"]) == ("einstein", "site-a")
        state = (await hub.user(http, "einstein"))["auth_state"]
        assert me["cs3_user_id"] == state["cs3_user_id"]

        # What the server writes goes to einstein's CS3 home, not to a local folder.
        notebook = {"type": "notebook", "content": {
            "cells": [{"cell_type": "markdown", "source": "from the hub", "metadata": {},
                       "id": "c1"}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
        put = await http.put(f"{base}api/contents/hub.ipynb", headers=as_einstein,
                             json=notebook)
        assert put.status_code in (200, 201), put.text
        home = hub.root / "home" / "einstein"
        assert not (home / "hub.ipynb").exists()
        cs3 = await cs3_client_factory(hub.gateway)
        session = cs3.session(state["cs3_token"])
        await session.whoami()
        stored = json.loads(await session.files.read(f"{home_path(session)}/hub.ipynb"))
        assert "".join(stored["cells"][0]["source"]) == "from the hub"

        # Whoever else the hub lets through (here a service with access to every server)
        # does not act with einstein's CS3 token.
        foreign = await http.get(f"{base}api/contents/hub.ipynb", headers=hub.admin())
        assert foreign.status_code == 403
        assert "from the hub" not in foreign.text


@dataclass
class CoEditing:
    """einstein's notebook shared with marie, both logged in at the hub with a server each."""

    servers: dict[str, dict[str, Any]]
    tokens: dict[str, str]
    #: Per user, the websocket base and the room of the notebook at their own server.
    rooms: dict[str, tuple[str, str]]

    def auth(self, name: str) -> dict[str, str]:
        # (A token in a websocket URL counts only with a browser's Sec-Fetch-Mode header.)
        return {"Authorization": f"token {self.tokens[name]}"}


async def co_editing(hub: Hub, http: httpx.AsyncClient, cs3_client_factory: Any) -> CoEditing:
    cs3 = await cs3_client_factory(hub.gateway)
    einstein: Session = await cs3.login("einstein", PASSWORDS["einstein"])
    marie: Session = await cs3.login("marie", PASSWORDS["marie"])
    info = await einstein.files.write("/home/einstein/welcome.ipynb",
                                      (NOTEBOOKS / "Running_Code.ipynb").read_bytes())
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    servers, tokens = {}, {}
    for name in ("einstein", "marie"):
        async with httpx.AsyncClient(timeout=30) as browser:  # a browser of each user
            assert (await hub.login(browser, name, PASSWORDS[name])).status_code == 302
        servers[name] = await hub.running_server(http, name)
        tokens[name] = await hub.user_token(http, name)
    setup = CoEditing(servers, tokens, {})
    paths = {"einstein": "welcome.ipynb", "marie": "Shared with me/welcome.ipynb"}
    for name in ("einstein", "marie"):
        base = f"{hub.url}{servers[name]['url'].lstrip('/')}"
        opened = await http.put(
            f"{base}api/collaboration/session/{quote(paths[name])}",
            headers=setup.auth(name), json={"format": "json", "type": "notebook"},
        )
        assert opened.status_code == 201, opened.text
        setup.rooms[name] = (base.replace("http://", "ws://") + "api/collaboration/room",
                             f"json:notebook:{opened.json()['fileId']}")
    assert setup.rooms["einstein"][1] == setup.rooms["marie"][1]  # one room: the resource's
    return setup


async def test_two_hub_users_co_edit_one_notebook_on_their_own_servers(
    hub: Hub, cs3_client_factory: Any
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        setup = await co_editing(hub, http, cs3_client_factory)
        # Each server is a node of site-a in the directory the hub keeps, under its user's
        # name, with its own key; the hub's own key folder is the hub's alone.
        directory = json.loads((hub.root / "mesh" / "mesh.json").read_text())
        (site,) = directory
        assert site["site"] == "site-a"
        assert sorted(n["id"] for n in site["nodes"]) == ["einstein", "marie"]
        assert len({n["key"] for n in site["nodes"]}) == 2
        assert stat.S_IMODE((hub.root / "mesh" / "node-keys").stat().st_mode) == 0o700
        for name in ("einstein", "marie"):
            key_file = hub.root / "mesh" / "node-keys" / f"{name}.pem"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            environ = psutil.Process(setup.servers[name]["state"]["pid"]).environ()
            assert environ["MESH_COLLAB_NODE_ID"] == name

        async with node_peer(*setup.rooms["einstein"], {}, setup.auth("einstein")) as a, \
                node_peer(*setup.rooms["marie"], {}, setup.auth("marie")) as b:
            await a.send(op="append", cell=0, text=" # einstein")
            await b.until(lambda d: d["cells"][0].count(" # einstein") == 1)
            await b.send(op="append", cell=1, text=" # marie")
            seen = await a.until(lambda d: d["cells"][1].endswith(" # marie"))
            assert seen["cells"][1].count(" # marie") == 1
            assert seen["cells"][0].count(" # einstein") == 1
            await b.send(op="cursor", cell=1, index=2)
            aware = await a.until(lambda d: any(
                s.get("user", {}).get("username") == "marie" and "cursors" in s
                for s in d["awareness"]))
            (marie_state,) = [s for s in aware["awareness"]
                              if s.get("user", {}).get("username") == "marie"]
            assert marie_state["user"]["site"] == "site-a"


async def test_a_user_server_restart_mid_session_loses_and_duplicates_no_edit(
    hub: Hub, cs3_client_factory: Any
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        setup = await co_editing(hub, http, cs3_client_factory)
        typed: list[str] = []

        async def type_at(peer: Any, word: str) -> None:
            typed.append(word)
            await peer.send(op="append", cell=1, text=word)

        async with node_peer(*setup.rooms["einstein"], {}, setup.auth("einstein")) as a, \
                node_peer(*setup.rooms["marie"], {}, setup.auth("marie")) as b:
            for i in range(5):
                await type_at(b, f" m{i}")
                await type_at(a, f" e{i}")
            await a.until(lambda d: " m4" in d["cells"][1])
            # marie's server goes away mid-session (the hub stops it), and comes back.
            stop = await http.delete(f"{hub.url}hub/api/users/marie/server",
                                     headers=hub.admin())
            assert stop.status_code in (202, 204), stop.text

            async def stopped() -> bool:
                return not (await hub.user(http, "marie"))["servers"]

            await eventually(stopped, every=0.2, within=60)
            # Both keep typing: einstein live, marie's browser offline (held, merged later).
            for i in range(5, 10):
                await type_at(a, f" e{i}")
                await type_at(b, f" m{i}")
            await hub.running_server(http, "marie")
            # marie's browser reconnects to her new server by itself, which links again.
            await a.until(lambda d: " m9" in d["cells"][1])
            await b.until(lambda d: " e9" in d["cells"][1])
            await type_at(b, " after")
            final = await a.until(lambda d: " after" in d["cells"][1])
        for word in typed:
            assert final["cells"][1].count(word + " ") + final["cells"][1].endswith(word) == 1, (
                word, final["cells"][1])


class _HubUser:
    """What JupyterHub hands ``refresh_user``: a name and an encrypted auth state."""

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        self.state = state

    async def get_auth_state(self) -> dict[str, Any]:
        return dict(self.state)


async def test_the_hub_renews_a_token_before_it_expires_and_ends_a_login_past_its_age(
    gateway_factory: Any,
) -> None:
    gw: EmbeddedGateway = await gateway_factory(site="site-a", token_lifetime=120,
                                                token_max_age=3600)
    auth = CS3Authenticator(enable_auth_state=True, gateway=gw.grpc_address, renew_margin=60)
    login = await auth.authenticate(None, {"username": "marie", "password": "radioactivity"})
    assert login is not None and login["name"] == "marie"
    user = _HubUser("marie", login["auth_state"])

    assert await auth.refresh_user(user) is True  # 120 s left, more than the margin

    auth.renew_margin = 600  # now within the margin: renewed through the bearer exchange
    first = user.state["cs3_token_expires"]
    renewed: dict[str, Any] = {}

    async def extended() -> bool:
        result = await auth.refresh_user(user)
        if result is True:
            return False  # renewed within the same second: not extended yet, still good
        assert isinstance(result, dict), result
        renewed.update(result["auth_state"])
        return True

    await eventually(extended, every=0.25)  # a new second for a later expiry
    assert renewed["cs3_token"] != user.state["cs3_token"]
    assert renewed["cs3_token_expires"] > first
    assert renewed["cs3_user_id"] == user.state["cs3_user_id"]
    async with CS3Client(gw.grpc_address) as cs3:
        assert (await cs3.session(renewed["cs3_token"]).whoami()).username == "marie"

    # A token the gateway does not know (forged, or of another gateway): log in again.
    assert await auth.refresh_user(_HubUser("marie", {**renewed, "cs3_token": "x.y.z",
                                                      "cs3_token_expires": 1.0})) is False
    assert await auth.refresh_user(_HubUser("marie", {})) is False
    # A wrong password and an unknown user get the same answer.
    assert await auth.authenticate(None, {"username": "marie", "password": "x"}) is None
    assert await auth.authenticate(None, {"username": "nobody", "password": "x"}) is None


def test_the_authenticator_refuses_to_run_without_auth_state() -> None:
    with pytest.raises(ValueError, match="enable_auth_state"):
        CS3Authenticator(enable_auth_state=False, gateway="127.0.0.1:1")
