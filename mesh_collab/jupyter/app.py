"""``MeshCollabApp``: the jupyter_server extension that makes a Jupyter server a mesh_collab node.

Installing the package enables it (``etc/jupyter/jupyter_server_config.d/mesh_collab.json``,
which also disables ``jupyter_server_ydoc``: exactly one implementation serves
``/api/collaboration/*``, ours). It

* replaces the server's contents manager (:class:`~.contents.CS3ContentsManager`: files live
  in CS3), identity provider (:class:`~.identity.CS3IdentityProvider`: users are CS3 users)
  and kernel manager (:class:`~.kernels.CS3KernelManager`: kernels start in the node's FUSE
  mount of CS3), unless the configuration names other classes explicitly;
* puts a :class:`MeshState` into ``web_app.settings["mesh_collab"]``;
* serves the collaboration routes of :func:`mesh_collab.jupyter.handlers.collaboration_handlers`;
* owns the node's long-lived services in ONE task (STYLE §3.7 rule 9): the task enters
  ``async with CS3Client(...)``, logs the single user in, enters every service of
  :attr:`MeshCollabApp.services` in order, marks the state ready, and waits for the stop event.
  ``stop_extension`` sets the event and awaits the task under ``stop_timeout``.

Adding a service (the room server, a federation endpoint, ...) needs no change here::

    @asynccontextmanager
    async def room_server(state: MeshState) -> AsyncIterator[CollabServer]:
        async with CollabServer(...) as server:
            state.server = server
            yield server

    app.add_service(room_server)   # e.g. from collaboration_handlers(app)

Services are entered after the CS3 client is open and left in reverse order before it closes.
``add_service`` must be called before the server starts (``initialize_handlers`` runs
``collaboration_handlers(app)`` early enough).
"""

# jupyter_server and nbformat are untyped: calling into them is not an error here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import secrets
import signal
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Bool, CaselessStrEnum, Float, Int, TraitError, Unicode, default, validate
from traitlets.config import Config

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, Session
from mesh_collab.federation import keys
from mesh_collab.federation.directory import NODE_ID_ENV, PEERS_ENV, MeshDirectory
from mesh_collab.federation.keys import NODE_KEY_ENV
from mesh_collab.jupyter.contents import CS3ContentsManager
from mesh_collab.jupyter.fileids import DEFAULT_HOME_TEMPLATE
from mesh_collab.jupyter.identity import CS3IdentityProvider, Sessions
from mesh_collab.jupyter.kernels import CS3KernelManager, KernelFiles, kernel_mount
from mesh_collab.jupyter.ydoc_compat import NAME as YDOC_EXTENSION
from mesh_collab.jupyter.ydoc_compat import YDocCompat

if TYPE_CHECKING:
    from jupyter_server.serverapp import ServerApp

#: Tornado's limit on websocket messages when ``websocket_max_message_size`` is not set
#: (tornado/websocket.py ``_default_max_message_size``).
_TORNADO_MAX_MESSAGE_SIZE = 10 * 2**20

#: The traits that hold credentials: kept out of logs, reprs and ``settings``.
SECRET_TRAITS = frozenset({"cs3_password", "cs3_token", "peers"})


@dataclass(eq=False)
class MeshState:
    """What the node's handlers share, in ``web_app.settings["mesh_collab"]``.

    Attributes:
        config: the :class:`MeshCollabApp` (its traits are the node's configuration).
        cs3: the node's CS3 client; open from start until stop (await :meth:`wait_ready`).
        sessions: the CS3 sessions of the node's users (:class:`~.identity.Sessions`).
        server: the room server; None until a service attaches it.
        kernel_files: where kernels find CS3 files (the FUSE mount), see
            :mod:`~.kernels`.
        site: the site name.
        ready: set once the CS3 client is open, the single user logged in and every service
            entered.
        error: why the node is not running (failed to start, stopping, or stopped by an
            error); None while it runs.
    """

    config: MeshCollabApp
    cs3: CS3Client
    sessions: Sessions
    site: str
    server: Any = None
    kernel_files: KernelFiles | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    async def wait_ready(self) -> None:
        """Wait until the node is connected to CS3 (at most ``rpc_timeout`` seconds).

        Raises:
            HTTPError: 503 when the node failed to start or is not ready in time.
        """
        if not self.ready.is_set():
            if self.error is None:
                try:
                    async with asyncio.timeout(self.config.rpc_timeout):
                        await self.ready.wait()
                except TimeoutError:
                    raise web.HTTPError(503, "mesh_collab is not connected to CS3 yet") from None
        if self.error is not None:
            raise web.HTTPError(503, f"mesh_collab is not running: {self.error}")

    def __repr__(self) -> str:
        return f"MeshState(site={self.site!r}, gateway={self.cs3.gateway!r}, {self.sessions!r})"


ServiceFactory = Callable[[MeshState], AbstractAsyncContextManager[Any]]
"""Builds one long-lived service of the node from its state (see :meth:`add_service`)."""


def _freeze_startup_objects() -> None:
    """Keep the garbage collector off what the server loaded at startup (it lives as long as
    the process): a full collection of a JupyterLab process's ~200k startup objects stalls
    the event loop, every room's relay with it, for ~150 ms; frozen, a collection scans only
    what came after. Startup garbage is collected first, not frozen."""
    gc.collect()
    gc.freeze()


def persistent_node_id(data_dir: Path) -> str:
    """The node id kept in ``<data_dir>/node-id``, made (random, 16 hex digits) on first use."""
    path = data_dir / "node-id"
    try:
        node_id = path.read_text().strip()
    except FileNotFoundError:
        node_id = ""
    if not re.fullmatch(r"[0-9a-f]{16}", node_id):
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # see initialize_settings
        node_id = secrets.token_hex(8)
        path.write_text(node_id + "\n")
    return node_id


def _is_hub_identity(cls: Any) -> bool:
    """Whether ``cls`` is JupyterHub's single-user identity provider (or ours, derived)."""
    return isinstance(cls, type) and any(
        base.__name__ == "JupyterHubIdentityProvider"
        and base.__module__.startswith("jupyterhub.")
        for base in cls.__mro__
    )


def _env(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback


class RedactTransferSecrets(logging.Filter):
    """Masks bearer secrets that travel in URL paths, in httpx's request log lines.

    httpx logs every request URL at INFO ("HTTP Request: GET <url> ..."). Two kinds of URL
    carry a credential in their path: CS3 data-gateway transfers (``/datagateway/<transfer
    token>``) and OCM WebDAV URIs (``/dav/ocm/<shared secret>``). STYLE §3.6: no token in any
    log line. Installed once on the ``httpx`` logger by :class:`MeshCollabApp`.
    """

    PATTERN = re.compile(r"(/datagateway/|/dav/ocm/)[^/\s\"'?#]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1<redacted>", str(a)) if isinstance(a, str | httpx.URL) else a
                for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1<redacted>", record.msg)
        return True


def install_log_redaction(logger_name: str = "httpx") -> None:
    """Add :class:`RedactTransferSecrets` to ``logger_name`` unless it is there already."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactTransferSecrets) for f in target.filters):
        target.addFilter(RedactTransferSecrets())


class MeshCollabApp(ExtensionApp):
    """The mesh_collab jupyter_server extension (see the module docstring)."""

    name = "mesh_collab"
    #: (mtime of the key file, the key) of :meth:`signing_key`.
    _key_cache: tuple[int, Ed25519PrivateKey] | None = None
    load_other_extensions = True

    #: Applied to the ServerApp both when launched directly (jupyter_server reads this
    #: attribute only then) and, by :meth:`_link_jupyter_server_extension`, when loaded as an
    #: extension of ``jupyter lab`` / ``jupyter server``, unless configured explicitly.
    serverapp_config: dict[str, Any] = {
        "contents_manager_class": CS3ContentsManager,
        "identity_provider_class": CS3IdentityProvider,
        "kernel_manager_class": CS3KernelManager,
    }

    # -- traits ---------------------------------------------------------------------------

    # Environment fallbacks (STYLE §3.5): each trait's default reads its `<trait>_env`.
    site_env = "MESH_COLLAB_SITE"
    gateway_env = "MESH_COLLAB_GATEWAY"
    cs3_username_env = "MESH_COLLAB_CS3_USERNAME"
    cs3_password_env = "MESH_COLLAB_CS3_PASSWORD"
    cs3_token_env = "MESH_COLLAB_CS3_TOKEN"
    gateway_ca_env = "MESH_COLLAB_GATEWAY_CA"

    site = Unicode(
        help="""Name of this node's site (e.g. "cern", "jrc"). Shown to collaborators next to
        the user name and used to tell sites apart in federation. Default "site-a", or the
        environment variable MESH_COLLAB_SITE.""",
    ).tag(config=True)

    gateway = Unicode(
        help="""gRPC address of the site's CS3 gateway (Reva, or `mesh-collab gateway`):
        "grpcs://host:port" for TLS, "host:port" for plaintext, which is accepted for a
        loopback gateway only (see allow_insecure_gateway). Default "127.0.0.1:19000", or
        MESH_COLLAB_GATEWAY.""",
    ).tag(config=True)

    gateway_ca = Unicode(
        help="""A CA bundle (PEM) that the gateway's certificate is verified with, for gRPC
        and the HTTP file transfers; setting it also turns TLS on for a "host:port" gateway.
        Default MESH_COLLAB_GATEWAY_CA, or "": the default roots (gRPC's bundled ones, the
        system's for HTTP). Verification is never off.""",
    ).tag(config=True)

    allow_insecure_gateway = Bool(
        False,
        help="""Accept a plaintext gateway that is not on loopback (and plain-http transfer
        URLs on such a host). The CS3 password and every token then cross the network in
        clear: only for a network you trust. Default False: such a gateway is refused at
        start.""",
    ).tag(config=True)

    peers = Unicode(
        "",
        help="""The mesh directory, as JSON: a list of sites, each {"site": name, "domain": its
        CS3/OCM domain, "nodes": [{"id": node id, "url": its URL, "key": its public key}]}
        (see docs/configuration.md). Include this node's own site: the other nodes of the
        site are found there. A notebook shared with us over OCM is edited live by linking to
        its home site's node found here. "@/path/file.json" reads the list from that file,
        again at every look-up (so it can be written after the nodes started, and keys
        rotated without a restart). Default "" (no federation), or MESH_COLLAB_PEERS. It
        holds public keys only.""",
    ).tag(config=True)

    node_id = Unicode(
        "",
        help="""This node's id: the name of its run in the Reva lock id (a node that finds a
        lock with its own id and another epoch took it before a restart, and takes it back),
        and its name in the mesh directory. Default "": a random id made once and kept in
        <data_dir>/node-id, so that two hosts that share a URL (both http://localhost:8888/)
        never take each other's lock for their own.""",
    ).tag(config=True)

    node_key = Unicode(
        "",
        help="""The file of this node's Ed25519 private key, with which it signs its links to
        other nodes (PEM; made with mode 0600 on first use). Its public key, for the mesh
        directory, is printed by `mesh-collab node-key <file>`. Default "":
        <data_dir>/node-key.pem.""",
    ).tag(config=True)

    federation_port = Int(
        0,
        help="""A port on which this node also serves its federation links over TLS (wss), with
        federation_certfile and federation_keyfile; its directory entry is then
        https://<host>:<port>/. Default 0: links come to the server's own port (https when
        the server itself runs with ServerApp.certfile). The browser-facing port can stay
        plain http on loopback.""",
    ).tag(config=True)

    federation_ip = Unicode(
        "127.0.0.1", help="""The address federation_port listens on.""",
    ).tag(config=True)

    federation_certfile = Unicode(
        "", help="""The certificate (PEM, with its chain) of federation_port.""",
    ).tag(config=True)

    federation_keyfile = Unicode(
        "", help="""The private key of federation_certfile.""",
    ).tag(config=True)

    mesh_ca = Unicode(
        "",
        help="""A CA bundle (PEM) that https nodes of the mesh directory are verified with.
        Default "": the system's trust store. Verification is never off.""",
    ).tag(config=True)

    home_template = Unicode(
        DEFAULT_HOME_TEMPLATE,
        help="""CS3 path of a user's home, with {username}; the Jupyter root "/" is this
        folder. Default "/home/{username}" (Reva's demo layout, the embedded gateway).""",
    ).tag(config=True)

    auth_mode = CaselessStrEnum(
        ["single-user", "multi-user"],
        default_value="single-user",
        help="""How browsers authenticate. "single-user" (default): the Jupyter token, and the
        identity is the CS3 user of cs3_username/cs3_password or cs3_token. "multi-user": a
        login form checks user name and password against the CS3 gateway; each user works
        with their own CS3 token.""",
    ).tag(config=True)

    cs3_username = Unicode(
        help="""single-user mode: CS3 user name to log in with (with cs3_password). Default
        "", or MESH_COLLAB_CS3_USERNAME.""",
    ).tag(config=True)

    cs3_password = Unicode(
        help="""single-user mode: CS3 password of cs3_username. Never logged. Default "", or
        MESH_COLLAB_CS3_PASSWORD (prefer the environment to a config file).""",
    ).tag(config=True)

    cs3_token = Unicode(
        help="""single-user mode: a CS3 access token (x-access-token) to use instead of
        user name and password; it is not renewed, so it must outlive the server. Never
        logged. Default "", or MESH_COLLAB_CS3_TOKEN.""",
    ).tag(config=True)

    rpc_timeout = Float(
        10.0,
        help="""Deadline of every CS3 gRPC call, in seconds (default 10). Also how long a
        request waits for the node to connect to CS3 at start-up before it gets 503.""",
    ).tag(config=True)

    transfer_timeout = Float(
        60.0,
        help="""Deadline of every CS3 HTTP data transfer (file upload/download), in seconds
        (default 60). At 10 MB/s this allows a 600 MB file; raise it for slow links.""",
    ).tag(config=True)

    checkpoint_quiet_period = Float(
        2.0,
        help="""Seconds without edits after which the primary writes a live notebook to CS3
        (default 2). Together with checkpoint_max_interval: a notebook typed into without
        pause is written every checkpoint_max_interval seconds, otherwise 2 s after the last
        edit. Every write is a CS3 version, so smaller values mean more versions.""",
    ).tag(config=True)

    checkpoint_max_interval = Float(
        30.0,
        help="""Longest time, in seconds, that edits of a live notebook may wait before the
        primary writes it to CS3, however busy the editing (default 30). Must not be smaller
        than checkpoint_quiet_period.""",
    ).tag(config=True)

    file_poll_interval = Float(
        5.0,
        help="""Seconds between two checks of a live notebook's file in CS3 (default 5): a
        change written behind the room's back (another application, a sync client, a
        restored version) is merged into the live document at the next check.""",
    ).tag(config=True)

    lock_expiry = Float(
        60.0,
        help="""Expiry of the CS3 lock the primary holds on a live notebook, in seconds
        (default 60, at most 1800). The lock is refreshed every lock_expiry/3 s; when its
        node dies, another node takes over after at most this long. Storage may cap a
        lock's life (the embedded gateway and Reva's app locks: 30 minutes), so a longer
        one would lapse between two refreshes.""",
    ).tag(config=True)

    @validate("lock_expiry")
    def _validate_lock_expiry(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if not 0 < value <= 1800:
            raise TraitError(f"lock_expiry must be in (0, 1800] seconds: {value!r}")
        return value

    log_sync_interval = Float(
        0.01,
        help="""Least time, in seconds, between two flushes of the node's update log to its
        disk (default 0.01). An edit is relayed once written to the log: it then survives a
        crash of the node. The flush that makes it survive a power loss runs 2 ms later, or
        once the previous flush is this old (until then, the clients and nodes that hold the
        edit give it back when they resync). 0 flushes every write before the edit is relayed
        (one fsync on the path of every keystroke).""",
    ).tag(config=True)

    data_dir = Unicode(
        help="""Local folder of the node's update log (SQLite) and other node state. Default
        <jupyter data dir>/mesh_collab/<site>. Put it on a local disk, not NFS.""",
    ).tag(config=True)

    max_message_size = Int(
        16 * 2**20,
        help="""Largest websocket message accepted from a browser or a peer node, in bytes
        (default 16 MiB): a notebook's first sync is one message. A larger one closes that
        connection only, with 1009 (message too big). The server's own limit
        (ServerApp.tornado_settings "websocket_max_message_size", 10 MiB unless set) is
        raised to this value when it is lower, for every websocket of the server.""",
    ).tag(config=True)

    max_connections_per_user = Int(
        64,
        help="""Most collaboration websockets one user may have open on this node (default
        64: a document open in a tab is one, plus one per browser window for presence).
        One more is closed with 4430; the user's other connections, and other users, are
        not affected. 0: no limit. Multi-user mode only: in single-user mode everybody with
        the token is the server's one user.""",
    ).tag(config=True)

    max_rooms_per_user = Int(
        32,
        help="""Most documents one user may hold open on this node (default 32). A document
        counts for the users connected to it, or, while nobody is, for the last user who
        opened or left it, until it is freed (document_cleanup_delay). At the limit, one of
        the user's documents that nobody uses is freed at once to make room; when all are
        in use, opening another answers 429 (websocket: 4430). Each open document holds up
        to max_notebook_size of memory. 0: no limit. Multi-user mode only.""",
    ).tag(config=True)

    rights_check_interval = Float(
        5.0,
        help="""Seconds between two looks at each connected user's rights on the document
        (default 5): a share removed or downgraded at the storage reaches open connections
        within this time. The connection is closed with 1003 and a reason JupyterLab shows;
        a downgraded editor reopens the document read-only. Each look is one Stat per
        connection.""",
    ).tag(config=True)

    max_notebook_size = Int(
        64 * 2**20,
        help="""Largest notebook the node opens or saves, in bytes (default 64 MiB). Larger
        ones are refused with 413.""",
    ).tag(config=True)

    document_cleanup_delay = Float(
        60.0,
        help="""Seconds a room stays in memory after its last client left (default 60), so
        that a reload or a short network loss does not rebuild it. 0 frees it at once.""",
    ).tag(config=True)

    mount_kernels = Bool(
        True,
        help="""Mount the node's CS3 user's home with FUSE (a `mesh-collab mount` child
        process) and start kernels in it, in the notebook's folder, so that
        open("data.txt") beside a notebook reads CS3 (default True). Kernels also get
        MESH_COLLAB_GATEWAY and MESH_COLLAB_CS3_TOKEN, for cs3:// URLs. Without FUSE
        (no /dev/fuse, fusermount3 or pyfuse3, or the mount fails) the node logs one warning
        and kernels start below ServerApp.root_dir, as in stock Jupyter. Multi-user nodes
        mount their default user (cs3_username / cs3_token) only, for every kernel. False:
        no mount, kernels start below ServerApp.root_dir (they still get the variables).""",
    ).tag(config=True)

    mount_root = Unicode(
        help="""Local folder where the node mounts its user's CS3 home for kernels (created if
        missing; a stale mount a crashed node left there is unmounted first). Default
        <data_dir>/mount.""",
    ).tag(config=True)

    start_worker = Bool(
        True,
        help="""Start the worker process that parses and writes large notebooks (256 KB and
        more) with the node (default True), in the background. False starts it when the
        first large notebook opens, which then waits ~1.2 s for it. Once started, it stays
        (about 60 MB of memory).""",
    ).tag(config=True)

    stop_timeout = Float(
        10.0,
        help="""Seconds the node's services get to stop (final checkpoints, lock release)
        when the server shuts down (default 10); after that they are cancelled.""",
    ).tag(config=True)

    @default("site")
    def _default_site(self) -> str:
        return _env(self.site_env, "site-a")

    @default("peers")
    def _default_peers(self) -> str:
        return _env(PEERS_ENV, "")

    @validate("peers")
    def _validate_peers(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value and not value.startswith("@"):
            try:
                entries = json.loads(value)
                MeshDirectory.from_config(entries)
            except (ValueError, TypeError, AttributeError) as exc:
                # The value holds secrets: name the problem, not the value.
                raise TraitError(
                    f"MeshCollabApp.peers is not a valid mesh directory: {exc}"
                ) from None
        return value

    def directory(self) -> MeshDirectory:
        """The mesh directory of :attr:`peers` (read again from its file, if it names one).

        Raises:
            ValueError: the file is missing or not a valid directory.
        """
        text = self.peers
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the mesh directory file: {exc}") from exc
        return MeshDirectory.from_config(json.loads(text) if text else [])

    @default("gateway")
    def _default_gateway(self) -> str:
        return _env(self.gateway_env, "127.0.0.1:19000")

    @default("cs3_username")
    def _default_cs3_username(self) -> str:
        return _env(self.cs3_username_env, "")

    @default("cs3_password")
    def _default_cs3_password(self) -> str:
        return _env(self.cs3_password_env, "")

    @default("gateway_ca")
    def _default_gateway_ca(self) -> str:
        return _env(self.gateway_ca_env, "")

    @default("cs3_token")
    def _default_cs3_token(self) -> str:
        return _env(self.cs3_token_env, "")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "mesh_collab" / self.site)

    @default("node_id")
    def _default_node_id(self) -> str:
        return _env(NODE_ID_ENV, "") or persistent_node_id(Path(self.data_dir))

    @default("node_key")
    def _default_node_key(self) -> str:
        return str(Path(self.data_dir) / "node-key.pem")

    @validate("node_id")
    def _validate_node_id(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise TraitError(f"node_id must be 1-64 letters, digits, '.', '_' or '-': {value!r}")
        return value

    def signing_key(self) -> Ed25519PrivateKey:
        """This node's key (read again when its file changed: a rotated key is used at once).

        Raises:
            ValueError: the file is not an Ed25519 private key.
        """
        path = Path(self.node_key)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        if self._key_cache is None or self._key_cache[0] != stamp or not stamp:
            key = keys.load_or_create(path)
            self._key_cache = (path.stat().st_mtime_ns, key)
        return self._key_cache[1]

    def mesh_ssl(self) -> ssl.SSLContext:
        """How this node verifies the https nodes it links to (mesh_ca, or the system's)."""
        return ssl.create_default_context(cafile=self.mesh_ca or None)

    @default("mount_root")
    def _default_mount_root(self) -> str:
        return str(Path(self.data_dir) / "mount")

    @validate("site")
    def _validate_site(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if not value or "/" in value or value.strip() != value:
            raise TraitError(f"site must be a non-empty name without '/' or spaces: {value!r}")
        return value

    @validate("gateway")
    def _validate_gateway(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        scheme, sep, address = value.partition("://")
        if not sep:
            scheme, address = "", value
        host, sep, port = address.rpartition(":")
        if scheme.lower() not in ("", "grpc", "grpcs") or not sep or not host \
                or not port.isdigit():
            raise TraitError(f"gateway must be host:port or grpcs://host:port: {value!r}")
        return value

    @validate(
        "rpc_timeout",
        "transfer_timeout",
        "checkpoint_quiet_period",
        "checkpoint_max_interval",
        "file_poll_interval",
        "stop_timeout",
        "rights_check_interval",
    )
    def _validate_positive(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value <= 0:
            raise TraitError(f"{proposal['trait'].name} must be > 0 seconds: {value!r}")
        return value

    @validate("document_cleanup_delay", "log_sync_interval")
    def _validate_not_negative(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value < 0:
            raise TraitError(f"{proposal['trait'].name} must be >= 0 seconds: {value!r}")
        return value

    @validate("max_message_size", "max_notebook_size")
    def _validate_size(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value <= 0:
            raise TraitError(f"{proposal['trait'].name} must be > 0 bytes: {value!r}")
        return value

    @validate("max_connections_per_user", "max_rooms_per_user")
    def _validate_limit(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"{proposal['trait'].name} must be >= 0 (0: no limit): {value!r}")
        return value

    # -- state ------------------------------------------------------------------------------

    services: list[ServiceFactory]
    state: MeshState | None
    _stop: asyncio.Event | None
    _task: asyncio.Task[None] | None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Factories of the node's long-lived services, entered in order inside the owner
        #: task after the CS3 client opened (see the module docstring). Empty by default.
        self.services = []
        self.state = None
        self._stop = None
        self._task = None
        #: jupyter_server_ydoc's API for other extensions (server-side execution), on our
        #: rooms: see ydoc_compat.py.
        self.ydoc_compat = YDocCompat(self)

    def add_service(self, factory: ServiceFactory) -> None:
        """Run ``factory(state)`` as an async context manager for the node's lifetime.

        Raises:
            RuntimeError: the node already started.
        """
        if self._task is not None:
            raise RuntimeError("add_service must be called before the server starts")
        self.services.append(factory)

    def __repr__(self) -> str:
        return (
            f"MeshCollabApp(site={self.site!r}, gateway={self.gateway!r}, "
            f"auth_mode={self.auth_mode!r})"
        )

    # -- jupyter_server hooks -----------------------------------------------------------------

    def _link_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        """Link, then make the ServerApp use our contents manager and identity provider.

        jupyter_server applies ``serverapp_config`` only when the extension is launched
        directly (``MeshCollabApp.launch_instance``); under ``jupyter lab`` or ``jupyter
        server`` the ServerApp builds its contents manager and identity provider after
        linking the extensions, so setting the classes here takes effect. A class configured
        explicitly (``ServerApp.contents_manager_class = ...``) wins.
        """
        super()._link_jupyter_server_extension(serverapp)
        # Before any extension loads: jupyter-server-nbmodel looks it up while loading.
        self.ydoc_compat.log = self.log
        self.ydoc_compat.publish(serverapp.extension_manager)
        configured = serverapp.config.get("ServerApp", {})
        if self.auth_mode == "multi-user":
            # Every user of one server would get a shell as its OS user, reading the others'
            # sessions and the node's keys: terminals are off, whatever is configured.
            if configured.get("terminals_enabled"):
                self.log.error("mesh_collab: multi-user mode turns terminals off "
                               "(ServerApp.terminals_enabled = True is ignored); for shells, "
                               "run a server per user (JupyterHub, docs/deploy.md)")
            serverapp.terminals_enabled = False
        if _is_hub_identity(configured.get("identity_provider_class")):
            # A JupyterHub single-user server: the hub authenticates, and the node lets in
            # its own CS3 user only (mesh_collab.jupyter.hub_identity).
            from mesh_collab.jupyter.hub_identity import HubIdentityProvider

            serverapp.update_config(
                Config({"ServerApp": {"identity_provider_class": HubIdentityProvider}})
            )
            # JupyterHub stops a server with SIGINT. Without a terminal, jupyter_server
            # leaves SIGINT to raise KeyboardInterrupt out of the loop, skipping every
            # extension's stop (rooms would not checkpoint, the mount would stay): stop
            # as on SIGTERM instead.
            signal.signal(signal.SIGINT, serverapp._signal_stop)
        wanted = Config(
            {
                "ServerApp": {
                    name: value
                    for name, value in self.serverapp_config.items()
                    if name not in configured
                }
            }
        )
        if wanted.ServerApp:
            serverapp.update_config(wanted)

    def _prepare_config(self) -> None:
        # jupyter_server copies every trait into settings["mesh_collab_config"]: not secrets.
        super()._prepare_config()
        for name in SECRET_TRAITS:
            self.extension_config.pop(name, None)

    def _take_handed_over_secrets(self) -> None:
        """Take the secrets a hub hands over in the environment, then remove them from it.

        The CS3 token (``MESH_COLLAB_CS3_TOKEN``, read by its trait) and the node key
        (``MESH_COLLAB_NODE_KEY``, PEM, kept in ``node_key`` with mode 0600) leave
        ``os.environ``, so the terminals and kernels this server starts do not inherit them
        (kernels get a token of their own, :mod:`~.kernels`).

        Raises:
            TraitError: ``MESH_COLLAB_NODE_KEY`` is not an Ed25519 private key.
        """
        pem = os.environ.pop(NODE_KEY_ENV, "")
        if pem:
            try:
                keys.store(Path(self.node_key), pem.encode())
            except ValueError as exc:
                raise TraitError(f"{NODE_KEY_ENV}: {exc}") from None
        if os.environ.get(self.cs3_token_env):
            _ = self.cs3_token  # its default comes from the variable: read it first
            del os.environ[self.cs3_token_env]

    def initialize_settings(self) -> None:
        """Build the node's state and hand it to the contents manager and identity provider.

        Raises:
            TraitError: ``checkpoint_max_interval`` is smaller than ``checkpoint_quiet_period``;
                a plaintext ``gateway`` off loopback without ``allow_insecure_gateway``; an
                unreadable ``gateway_ca``.
        """
        if self.checkpoint_max_interval < self.checkpoint_quiet_period:
            raise TraitError(
                f"checkpoint_max_interval ({self.checkpoint_max_interval!r} s) must not be "
                f"smaller than checkpoint_quiet_period ({self.checkpoint_quiet_period!r} s)"
            )
        # 0700: the update log in it holds every document the node served, in clear.
        Path(self.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        install_log_redaction()
        self._take_handed_over_secrets()
        # Tornado refuses a frame over its own limit (10 MiB unless set) before any handler
        # sees it: never below ours, so that max_message_size is the one number. Above it,
        # our rooms refuse the frame with the same close code.
        self.settings["websocket_max_message_size"] = max(
            self.settings.get("websocket_max_message_size") or _TORNADO_MAX_MESSAGE_SIZE,
            self.max_message_size,
        )
        try:
            cs3 = CS3Client(
                self.gateway,
                rpc_timeout=self.rpc_timeout,
                transfer_timeout=self.transfer_timeout,
                log=self.log,
                ca_file=Path(self.gateway_ca) if self.gateway_ca else None,
                allow_insecure=self.allow_insecure_gateway,
            )
        except (ValueError, OSError) as exc:
            raise TraitError(
                f"MeshCollabApp.gateway / gateway_ca / allow_insecure_gateway: {exc}"
            ) from exc
        self.state = MeshState(config=self, cs3=cs3, sessions=Sessions(), site=self.site)
        self.settings["mesh_collab"] = self.state
        assert self.serverapp is not None
        if YDOC_EXTENSION not in self.serverapp.web_app.settings:
            self.settings[YDOC_EXTENSION] = self.ydoc_compat  # where other extensions look
        self._init_kernel_files(self.state)
        contents = self.serverapp.contents_manager
        if isinstance(contents, CS3ContentsManager):
            contents.attach(self.state)
        else:
            self.log.warning(
                "mesh_collab: the contents manager is %s, not CS3: Jupyter shows local files",
                type(contents).__name__,
            )
        identity = self.serverapp.identity_provider
        if isinstance(identity, CS3IdentityProvider):
            identity.attach(self.state)
            # JupyterLab asks it for every page (jupyterlab_server's handlers).
            self.serverapp.web_app.settings.setdefault("page_config_hook",
                                                       identity.page_config_hook)
        elif _is_hub_identity(type(identity)):
            identity.attach(self.state)  # JupyterHub's own page_config_hook stays
        else:
            self.log.warning(
                "mesh_collab: the identity provider is %s: users are not CS3 users",
                type(identity).__name__,
            )
        if self.auth_mode == "single-user" and not (
            self.cs3_token or (self.cs3_username and self.cs3_password)
        ):
            self.log.warning(
                "mesh_collab: single-user mode needs cs3_username and cs3_password, or cs3_token"
            )
        self.log.info(
            "mesh_collab: site=%s gateway=%s auth_mode=%s data_dir=%s",
            self.site,
            self.gateway,
            self.auth_mode,
            self.data_dir,
        )

    def _init_kernel_files(self, state: MeshState) -> None:
        """Make kernels start in the CS3 mount (the ``kernel_mount`` service mounts it)."""
        assert self.serverapp is not None
        kernels = self.serverapp.kernel_manager
        state.kernel_files = KernelFiles(
            gateway=self.gateway,
            gateway_ca=str(Path(self.gateway_ca).absolute()) if self.gateway_ca else "",
            mountpoint=Path(self.mount_root).absolute(),
            fallback=str(getattr(kernels, "root_dir", "") or self.serverapp.root_dir),
        )
        if isinstance(kernels, CS3KernelManager):
            kernels.attach(state.kernel_files)
        else:
            self.log.warning(
                "mesh_collab: the kernel manager is %s: kernels do not start in the CS3 mount",
                type(kernels).__name__,
            )
        self.add_service(kernel_mount)

    def initialize_handlers(self) -> None:
        """Serve the collaboration routes (``mesh_collab.jupyter.handlers``)."""
        # Imported here: handlers.py may import this module (MeshState, session_for).
        from mesh_collab.jupyter.handlers import collaboration_handlers

        self.handlers.extend(collaboration_handlers(self))

    async def _start_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        """Start the owner task and wait until the node is connected (or failed).

        Raises:
            MeshCollabError, OSError: the node could not log in to CS3 or start a service
                (jupyter_server logs it; requests then get 503 with the reason).
        """
        if self.state is None:
            raise RuntimeError("mesh_collab was not initialised")
        if self._task is not None:
            return
        self._stop = asyncio.Event()
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The one create_task of mesh_collab (STYLE §3.7 rule 9): this task owns the CS3
        # client and every service, entering and leaving their task groups itself.
        self._task = asyncio.get_running_loop().create_task(
            self._run(self.state, self._stop, started), name="mesh_collab"
        )
        await started

    async def _run(
        self, state: MeshState, stop: asyncio.Event, started: asyncio.Future[None]
    ) -> None:
        try:
            async with state.cs3, AsyncExitStack() as stack:
                if self.auth_mode == "single-user" or self.cs3_token or self.cs3_username:
                    # Multi-user nodes may have a default user too: the Jupyter token then
                    # stands for that user (scripts, the demo's printed URLs).
                    session = await self._single_user_session(state.cs3)
                    state.sessions.set_default(session)
                for factory in self.services:
                    await stack.enter_async_context(factory(state))
                state.ready.set()
                started.set_result(None)
                self.log.info("mesh_collab: node started site=%s", state.site)
                _freeze_startup_objects()
                await stop.wait()
                self.log.info("mesh_collab: node stopping site=%s", state.site)
                # New requests get 503 while the services finish (final checkpoints).
                state.error = RuntimeError("the node is stopping")
        except BaseException as exc:
            # One of the three catch boundaries: record why the node is down (requests then
            # get 503 with the reason), wake the waiters, and re-raise what is not reported.
            state.error = exc
            state.ready.set()
            if not started.done():
                started.set_exception(exc)
                self.log.error("mesh_collab: node failed to start: %s", exc)
                if isinstance(exc, Exception):
                    return  # reported through `started`, which the start hook awaits
            elif not stop.is_set():
                self.log.error("mesh_collab: node stopped unexpectedly", exc_info=exc)
            raise

    async def _single_user_session(self, cs3: CS3Client) -> Session:
        """Log in with the configured credentials.

        Raises:
            Unauthenticated: no credentials configured, or they are refused.
            StorageError: the gateway failed.
        """
        if self.cs3_token:
            # Renewed through the bearer exchange, as a login's: a hub-spawned server's
            # token outlives its first hour.
            session = cs3.resume(self.cs3_token)
            await session.whoami()
        elif self.cs3_username and self.cs3_password:
            # The password is configuration held for the node's life anyway: keep logging
            # in with it when the gateway stops renewing the login's token.
            session = await cs3.login(self.cs3_username, self.cs3_password, keep_password=True)
        else:
            raise errors.Unauthenticated(
                "single-user mode needs cs3_username and cs3_password, or cs3_token",
                op="login",
            )
        assert session.user is not None
        self.log.info("mesh_collab: logged in to CS3 as user=%s", session.user.username)
        return session

    async def stop_extension(self) -> None:
        """Stop the owner task: services leave in reverse order, then the CS3 client closes."""
        task, stop = self._task, self._stop
        if task is None or stop is None:
            return
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
        if not done:
            self.log.warning(
                "mesh_collab: services did not stop within %.1f s; cancelling", self.stop_timeout
            )
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            self.log.error("mesh_collab: node stopped with an error", exc_info=task.exception())
        self._task = None
