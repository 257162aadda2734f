"""``mesh-collab demo --hub``: site A as a JupyterHub, one server per user.

Site A runs as sites run Jupyter for many users (docs/deploy.md): a ``jupyterhub`` process
with its configurable-http-proxy, the CS3 authenticator (:mod:`mesh_collab.hub`) against
site A's gateway, and one ``jupyterhub-singleuser`` server per user, each a mesh node acting
for its user alone, listed by the hub in the mesh directory. The demo logs einstein and marie
in (their passwords are public) and starts their servers, so that the addresses it prints
work at once; a person logging in at the hub lands on their running server.

The user servers run as the demo's own OS user (``SimpleLocalProcessSpawner``): a demo on
one laptop, not an isolation boundary between its users.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from mesh_collab import demo
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.tls import LocalCA

#: The demo's hub users, each with a server of their own.
USERS = ("einstein", "marie")
_XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


@dataclass
class HubSite:
    """A running hub: its URL, and per user their server's URL and an API token."""

    url: str
    servers: dict[str, tuple[str, str]] = field(default_factory=dict)


def proxy_command() -> str:
    """configurable-http-proxy: on PATH, or the one ``./dev.sh setup`` installs.

    Raises:
        FileNotFoundError: neither is there.
    """
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    checkout = Path(__file__).resolve().parents[1] / "deploy" / "proxy"
    local = checkout / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    raise FileNotFoundError(
        "configurable-http-proxy is missing: run ./dev.sh setup, or "
        "npm install -g configurable-http-proxy"
    )


@asynccontextmanager
async def hub_site(
    spec: demo.SiteSpec, gateway: EmbeddedGateway, root: Path, ca: LocalCA, *,
    directory: Path, other_sites: Path,
) -> AsyncIterator[HubSite]:
    """Run site A's hub until the context exits, with einstein's and marie's servers up."""
    port = spec.lab_port or demo.free_port()
    url = f"http://127.0.0.1:{port}/"
    admin_token = secrets.token_hex(16)
    singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
    config = {
        "JupyterHub": {
            "ip": "127.0.0.1", "port": port,
            "hub_ip": "127.0.0.1", "hub_port": demo.free_port(),
            "db_url": f"sqlite:///{root / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(root / "jupyterhub_cookie_secret"),
            "authenticator_class": "mesh-collab",
            "spawner_class": "simple",
            # The demo's own service: it logs the demo users in and starts their servers.
            "services": [{"name": "demo", "api_token": admin_token}],
            "load_roles": [{
                "name": "demo", "services": ["demo"],
                "scopes": ["admin:users", "admin:servers", "tokens"],
            }],
        },
        "ConfigurableHTTPProxy": {
            "api_url": f"http://127.0.0.1:{demo.free_port()}", "command": [proxy_command()],
        },
        "Authenticator": {"enable_auth_state": True, "allow_all": True},
        "CS3Authenticator": {
            "gateway": gateway.grpc_url, "gateway_ca": str(ca.ca_file), "site": spec.name,
            "domain": gateway.domain, "mesh_directory": str(directory),
            "mesh_sites": str(other_sites), "mesh_keys_dir": str(root / "node-keys"),
            "node_url": f"{url}user/{{username}}/",
        },
        "Spawner": {
            "cmd": [str(singleuser)],
            "args": [
                # Jupyter refuses to run as root without it (a container); never otherwise.
                *(["--allow-root"] if os.geteuid() == 0 else []),
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            "default_url": "/lab",
            "start_timeout": 120,
            # The printed ...?token= links: a demo convenience, off at a real site.
            "environment": {"JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"},
        },
        "SimpleLocalProcessSpawner": {"home_dir_template": str(root / "users" / "{username}")},
    }
    config_file, crypt_key = _write_config(root, config)
    env = {**os.environ, "JUPYTERHUB_CRYPT_KEY": crypt_key,
           "PATH": f"{singleuser.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_file = os.fdopen(demo.private(str(root / "jupyterhub.log"),
                                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")
    process = await anyio.open_process(
        [str(singleuser.with_name("jupyterhub")), "-f", str(config_file)], cwd=root, env=env,
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        site = HubSite(url)
        async with httpx.AsyncClient(timeout=30) as http:
            await _until_up(http, url, process, root / "jupyterhub.log")
            admin = {"Authorization": f"token {admin_token}"}
            for name in USERS:
                site.servers[name] = await _log_in_and_start(http, url, admin, name)
        yield site
    finally:
        process.terminate()  # the hub stops the user servers and its proxy first
        with anyio.move_on_after(30, shield=True):
            await process.wait()
        with anyio.CancelScope(shield=True):
            await process.aclose()
        log_file.close()


def _write_config(root: Path, config: dict[str, Any]) -> tuple[Path, str]:
    """Write the hub's configuration (it holds the demo's token: 0600) into ``root`` (0700);
    return its path and the key the hub encrypts auth state with (kept for the next run)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    config_file = root / "jupyterhub_config.json"
    with open(config_file, "w", opener=demo.private) as out:
        out.write(json.dumps(config, indent=1))
    crypt_key = root / "crypt-key"
    if not crypt_key.exists():
        with open(crypt_key, "w", opener=demo.private) as out:
            out.write(secrets.token_hex(32))
    # The hub's database (encrypted auth states, hashed tokens): 0600 before the hub opens
    # it (SQLite keeps a file's mode). Each user's home 0700 before the spawner makes it
    # (0755 otherwise).
    os.close(demo.private(str(root / "jupyterhub.sqlite"), os.O_WRONLY | os.O_CREAT))
    for name in USERS:
        home = root / "users" / name
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)
    return config_file, crypt_key.read_text().strip()


async def _until_up(http: httpx.AsyncClient, url: str, process: Any, log_path: Path) -> None:
    with anyio.fail_after(120):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"jupyterhub exited; see {log_path}")
            try:
                if (await http.get(f"{url}hub/api")).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            # A starting process gives no event to wait on: poll, under the deadline.
            await anyio.sleep(0.2)


async def _log_in_and_start(
    http: httpx.AsyncClient, url: str, admin: dict[str, str], name: str
) -> tuple[str, str]:
    """Log ``name`` in through the hub's form, start their server; (its URL, a token)."""
    async with httpx.AsyncClient(timeout=30) as browser:  # that user's own cookies
        page = await browser.get(f"{url}hub/login")
        match = _XSRF_FIELD.search(page.text)
        if match is None:
            raise RuntimeError("the hub's login page has no form")
        answer = await browser.post(
            f"{url}hub/login", follow_redirects=False,
            data={"username": name, "password": demo.PASSWORDS[name], "_xsrf": match[1]},
        )
        if answer.status_code != 302:
            raise RuntimeError(f"the hub refused {name}'s login ({answer.status_code})")
    await http.post(f"{url}hub/api/users/{name}/server", headers=admin)
    with anyio.fail_after(120):
        while True:
            model = (await http.get(f"{url}hub/api/users/{name}", headers=admin)).json()
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                break
            await anyio.sleep(0.2)  # the hub's API has no event for a server that is up
    token = (await http.post(f"{url}hub/api/users/{name}/tokens", headers=admin,
                             json={"note": "mesh-collab demo"})).json()["token"]
    return f"{url}{server['url'].lstrip('/')}", str(token)
