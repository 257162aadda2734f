"""``mesh-collab demo``: two ScienceMesh sites on one machine.

Each site is an embedded CS3 gateway plus a JupyterLab node (a ``jupyter lab`` process with
the mesh_collab extension, in multi-user mode: log in with a CS3 user). Between the parts
everything runs over TLS with certificates of a local CA made at the first start (in
``<root>/ca``): gRPC to the gateways (``grpcs://``), OCM discovery and shares (https), and
the node-to-node links (wss, on each node's federation port). The browser-facing JupyterLab
stays plain http on loopback. Site A holds a sample
notebook, a Markdown file and a Python script in einstein's home, each shared with marie on
site A (a local share) and with marie at site B (an OCM share, already accepted), and a small
data file beside them that the notebook's kernel reads.

It prints, for people, the addresses and logins, and for scripts one JSON line::

    {"sites": [{"site": "site-a", "url": "http://127.0.0.1:PORT/", "token": "...",
                "user": "einstein", "notebook": "welcome.ipynb"}, {"site": "site-b", ...}]}

where ``url`` + ``token`` reach that site's Jupyter server APIs as ``user``, and
``notebook`` is the shared notebook's path in that user's view of the contents.
Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
import httpx

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.models import Role, UserId
from mesh_collab.federation import keys
from mesh_collab.jupyter.fileids import SHARED_FOLDER
from mesh_collab.tls import LocalCA

log = logging.getLogger(__name__)

NOTEBOOK = "welcome.ipynb"
#: Shared like the notebook: co-edited as text files.
NOTES = "notes.md"
SCRIPT = "analysis.py"
#: Beside the notebook, for its kernel to read.
DATA = "data.txt"
PASSWORDS = {"einstein": "relativity", "marie": "radioactivity", "richard": "superfluidity"}


@dataclass
class SiteSpec:
    """One demo site: its name, its node's default user, and fixed ports (0: free ones)."""

    name: str
    user: str
    grpc_port: int = 0
    data_port: int = 0
    lab_port: int = 0
    #: The node's TLS port for links from other nodes (wss).
    federation_port: int = 0

    @property
    def node_id(self) -> str:
        return f"{self.name}-node"


@dataclass
class RunningSite:
    spec: SiteSpec
    gateway: EmbeddedGateway
    url: str
    token: str
    notebook: str = ""
    #: Where other nodes link to: ``https://127.0.0.1:<federation_port>/``.
    federation_url: str = ""
    #: A hub site (``--hub``): the hub's URL, and per user (their server's URL, a token).
    hub: str = ""
    servers: dict[str, tuple[str, str]] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "site": self.spec.name,
            "url": self.url,
            "token": self.token,
            "user": self.spec.user,
            "notebook": self.notebook,
        }
        if self.hub:
            line["hub"] = self.hub
            line["users"] = {name: {"url": url, "token": token}
                             for name, (url, token) in self.servers.items()}
        return line


@asynccontextmanager
async def jupyter_lab(
    spec: SiteSpec, gateway: EmbeddedGateway, root: Path, peers_file: Path, ca: LocalCA
) -> AsyncIterator[tuple[str, str]]:
    """Run ``jupyter lab`` for one site until the context exits; yield (url, token)."""
    node_tls = ca.issue(spec.node_id)
    token = secrets.token_hex(16)
    runtime = root / "runtime"
    # 0700 (also when left by an older run): the runtime folder gets the server's token
    # (jpserver-*-open.html).
    for sub in ("runtime", "config", "data", "lab-root"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / sub).chmod(0o700)
    # The node's default user comes as a CS3 token (renewed by the node, for at most the
    # login's maximum age), never as a password: the server keeps no password.
    async with CS3Client(gateway.grpc_url, ca_file=ca.ca_file) as cs3:
        cs3_token, _ = await cs3.authenticate("basic", spec.user, PASSWORDS[spec.user])
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "MESH_COLLAB_CS3_TOKEN": cs3_token,
    }
    env.pop("MESH_COLLAB_CS3_PASSWORD", None)
    args = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        # Jupyter refuses to run as root without it (a container); never asked otherwise.
        *(["--allow-root"] if os.geteuid() == 0 else []),
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={spec.lab_port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root / 'lab-root'}",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--MeshCollabApp.site={spec.name}",
        f"--MeshCollabApp.gateway={gateway.grpc_url}",
        f"--MeshCollabApp.gateway_ca={ca.ca_file}",
        "--MeshCollabApp.auth_mode=multi-user",
        f"--MeshCollabApp.cs3_username={spec.user}",
        f"--MeshCollabApp.data_dir={root / 'node'}",
        f"--MeshCollabApp.node_id={spec.node_id}",
        f"--MeshCollabApp.federation_port={spec.federation_port}",
        f"--MeshCollabApp.federation_certfile={node_tls.cert}",
        f"--MeshCollabApp.federation_keyfile={node_tls.key}",
        f"--MeshCollabApp.mesh_ca={ca.ca_file}",
        # The mesh directory is written once every node's address is known.
        f"--MeshCollabApp.peers=@{peers_file}",
    ]
    # 0600: the server logs its URL with the token.
    log_path = str(root / "jupyter.log")
    log_file = os.fdopen(private(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")
    process = await anyio.open_process(args, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = await _announced_url(runtime, process, root / "jupyter.log")
        yield url, token
    finally:
        process.terminate()
        with anyio.move_on_after(20, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
        log_file.close()


async def _announced_url(runtime: Path, process: Any, log_path: Path) -> str:
    """The URL a starting Jupyter server writes into its runtime file, once it answers."""
    with anyio.fail_after(120):
        while True:
            for found in runtime.glob("jpserver-*.json"):  # noqa: ASYNC240 - a tiny local file
                text = found.read_text()
                if text:
                    url = f"http://127.0.0.1:{json.loads(text)['port']}/"
                    async with httpx.AsyncClient(timeout=5) as http:
                        try:
                            if (await http.get(f"{url}api")).status_code == 200:
                                return url
                        except httpx.TransportError:
                            pass  # not listening yet
            if process.returncode is not None:
                raise RuntimeError(f"jupyter lab exited; see {log_path}")
            # A starting process gives no event to wait on: poll, under the deadline.
            await anyio.sleep(0.2)


async def seed(sites: list[RunningSite], ca: LocalCA) -> None:
    """Put the sample files into einstein's home at site A and share them."""
    a = sites[0]
    sample = files("mesh_collab").joinpath("data")
    async with CS3Client(a.gateway.grpc_url, ca_file=ca.ca_file) as cs3:
        einstein = await cs3.login("einstein", PASSWORDS["einstein"])
        marie = await einstein.users.by_claim("username", "marie")
        for name, shared in ((NOTEBOOK, True), (NOTES, True), (SCRIPT, True), (DATA, False)):
            path = f"/home/einstein/{name}"
            try:
                info = await einstein.files.stat(path)
            except errors.NotFound:  # first run: put the sample there
                info = await einstein.files.write(path, sample.joinpath(name).read_bytes())
            if not shared:
                continue
            existing = {s.grantee.opaque_id for s in await einstein.shares.list(info.id)}
            if marie.id.opaque_id not in existing:
                share = await einstein.shares.create(info.id, marie.id, Role.EDITOR)
                await (await cs3.login("marie", PASSWORDS["marie"])).shares.accept(share.id)
            for b in sites[1:]:
                remote = {
                    s.grantee.idp for s in await einstein.ocm.list() if s.resource_id == info.id
                }
                if b.gateway.domain not in remote:
                    await einstein.ocm.create(
                        info.id, UserId(idp=b.gateway.domain, opaque_id=b.spec.user), Role.EDITOR
                    )
        a.notebook = NOTEBOOK
        for b in sites[1:]:
            async with CS3Client(b.gateway.grpc_url, ca_file=ca.ca_file) as cs3_b:
                user_b = await cs3_b.login(b.spec.user, PASSWORDS[b.spec.user])
                for received in await user_b.ocm.received():
                    await user_b.ocm.accept(received.id)
            b.notebook = f"{SHARED_FOLDER}/{NOTEBOOK}"


async def run(args: argparse.Namespace) -> int:
    """Start the sites, print where they are, and wait for Ctrl-C."""
    base = args.port_base
    specs = [
        SiteSpec("site-a", "einstein", *(range(base, base + 4) if base else (0, 0, 0, 0))),
        SiteSpec("site-b", "marie", *(range(base + 10, base + 14) if base else (0, 0, 0, 0))),
    ]
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mesh-collab-demo-"))
    # Tokens and the sites' files are below: nobody else may enter (mkdtemp's folder is
    # 0700 already; an existing --root folder is left as it is, the demo's own are not).
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for spec in specs:
        (root / spec.name).mkdir(mode=0o700, exist_ok=True)
        (root / spec.name).chmod(0o700)
        spec.federation_port = spec.federation_port or free_port()
    ca = _local_ca(root / "ca")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with AsyncExitStack() as stack:
            sites = []
            for spec in specs:
                gateway = await stack.enter_async_context(
                    EmbeddedGateway(
                        root=root / spec.name / "gateway", site=spec.name,
                        port=spec.grpc_port, data_port=spec.data_port,
                        tls=ca.issue(f"{spec.name}-gateway"), ca_file=ca.ca_file,
                    )
                )
                sites.append(RunningSite(spec, gateway, url="", token=""))
            for site in sites:
                # The other site is the one OCM provider each gateway takes shares from.
                site.gateway.trusted_providers = {
                    s.gateway.domain for s in sites if s is not site
                }
            await seed(sites, ca)
            peers_file = root / "mesh.json"
            if args.hub:
                await _start_with_hub(stack, sites, root, peers_file, ca)
            else:
                for site in sites:
                    site.url, site.token = await stack.enter_async_context(
                        jupyter_lab(site.spec, site.gateway, root / site.spec.name, peers_file,
                                    ca)
                    )
                    site.federation_url = f"https://127.0.0.1:{site.spec.federation_port}/"
                write_directory(peers_file, sites, root)
            _announce(sites, root)
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
    return 0


async def _start_with_hub(
    stack: AsyncExitStack, sites: list[RunningSite], root: Path, peers_file: Path, ca: LocalCA
) -> None:
    """Site A as a JupyterHub (:mod:`mesh_collab.demo_hub`), the other sites as nodes.

    The hub keeps the mesh directory (``peers_file``): its users' servers, then the other
    sites, whose entries are written first (their nodes' keys are made before they start).
    """
    from mesh_collab import demo_hub  # JupyterHub only for --hub

    hub_site, *others = sites
    other_sites = root / "other-sites.json"
    for site in others:
        site.federation_url = f"https://127.0.0.1:{site.spec.federation_port}/"
    write_directory(other_sites, others, root)
    for site in others:
        site.url, site.token = await stack.enter_async_context(
            jupyter_lab(site.spec, site.gateway, root / site.spec.name, peers_file, ca)
        )
    hub = await stack.enter_async_context(demo_hub.hub_site(
        hub_site.spec, hub_site.gateway, root / hub_site.spec.name / "hub", ca,
        directory=peers_file, other_sites=other_sites,
    ))
    hub_site.hub = hub.url
    hub_site.servers = hub.servers
    hub_site.url, hub_site.token = hub.servers[hub_site.spec.user]


def write_directory(path: Path, sites: list[RunningSite], root: Path) -> None:
    """The mesh directory every node reads: each site's OCM domain and its node (id, URL and
    public key; the private key stays in the node's data folder)."""
    entries = [
        {
            "site": s.spec.name,
            "domain": s.gateway.domain,
            "nodes": [{
                "id": s.spec.node_id,
                "url": s.federation_url,
                "key": keys.public_text(
                    keys.load_or_create(root / s.spec.name / "node" / "node-key.pem")),
            }],
        }
        for s in sites
    ]
    with open(path, "w", opener=private) as out:
        out.write(json.dumps(entries, indent=1))


def _local_ca(folder: Path) -> LocalCA:
    """The demo's CA: the one a previous run left in ``folder``, else a new one."""
    if (folder / "ca.pem").exists():
        return LocalCA.load(folder)
    return LocalCA.create(folder)


def free_port() -> int:
    """A TCP port free on loopback now (the node binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private(path: str, flags: int) -> int:
    """``open()``'s opener for a file that only its owner may read (0600, also when it was
    there before)."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _announce(sites: list[RunningSite], root: Path) -> None:
    out = sys.stdout
    out.write("\nmesh_collab demo: two sites are running (Ctrl-C stops them)\n\n")
    for site in sites:
        if site.hub:
            out.write(f"  {site.spec.name}: {site.hub}  (a JupyterHub: log in as "
                      "einstein/relativity or marie/radioactivity, each to their own server)\n")
            for name, (url, token) in site.servers.items():
                out.write(f"           as {name}, no login: {url}lab?token={token}\n")
            out.write(f"           notebook: {site.notebook}"
                      f"  (marie: {SHARED_FOLDER}/{NOTEBOOK})\n")
            continue
        out.write(f"  {site.spec.name}: {site.url}  (log in as einstein/relativity, "
                  "marie/radioactivity or richard/superfluidity)\n")
        out.write(f"           as {site.spec.user}, no login: {site.url}lab?token={site.token}\n")
        out.write(f"           notebook: {site.notebook}"
                  f"  (and {posixpath.dirname(site.notebook) or '.'}/{NOTES})\n")
    out.write(f"\n  data and logs: {root}\n\n")
    out.write(json.dumps({"sites": [s.line() for s in sites]}) + "\n")
    out.flush()


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's arguments."""
    parser.add_argument("--port-base", type=int, default=0,
                        help="fixed ports: site A uses N..N+3, site B N+10..N+13 "
                        "(default: free ports)")
    parser.add_argument("--hub", action="store_true",
                        help="run site A as a JupyterHub with one server per user "
                        "(docs/deploy.md)")
    parser.add_argument("--root", default=None,
                        help="folder for the sites' storage and logs (default: a new temporary "
                        "folder)")
