"""``EmbeddedGateway``: a CS3-API gateway that runs anywhere, like SQLite for a database.

One object serves the gRPC ``GatewayAPI`` (``grpc.aio``) and the HTTP side (aiohttp: data
gateway, OCM API, OCM WebDAV) over files under ``<root>/files`` and metadata in
``<root>/meta.sqlite``. It reproduces Reva's observable behaviour; ``lock_profile`` picks the
lock rules of Reva master/EOS (``"eos"``, default) or Reva edge/decomposedfs (``"edge"``).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import stat
from collections.abc import AsyncGenerator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import aiohttp
import anyio
import grpc
from aiohttp import web
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc

from mesh_collab.throttle import LoginThrottle
from mesh_collab.tls import ServerTLS, client_context, is_loopback

from .core import Core
from .db import MetaDB
from .http import build_app
from .interceptor import AuthInterceptor
from .locks import LockProfile, rules_for
from .namespace import Namespace
from .ocm import OcmStore
from .providers import Discovery, TrustedProviders, key_id_of
from .recycle import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES
from .servicer import GatewayServicer
from .shares import ShareStore
from .signatures import KEY_FILE, load_or_create_key, public_pem
from .storage import Storage
from .tokens import MAX_AGE, TokenSigner
from .users import UserDirectory

_GRACE = 2.0
#: Password checks at once (each argon2 check holds ~64 MiB for ~0.1 s).
_LOGIN_CONCURRENCY = 4


class EmbeddedGateway(anyio.AsyncContextManagerMixin):
    """A CS3 gateway on loopback, with Reva's semantics.

    Usage::

        async with EmbeddedGateway(root=tmp_path) as gw:
            channel = grpc.aio.insecure_channel(gw.grpc_address)
            ...  # Authenticate einstein/relativity, Stat, InitiateFileUpload, ...

    Args:
        root: folder holding ``files/``, ``versions/``, ``trash/``, ``tmp/`` and
            ``meta.sqlite``.
        site: the site name; the storage id and space ids derive from it.
        host: the address both servers bind.
        port: the gRPC port; 0 picks a free one.
        data_port: the HTTP port; 0 picks a free one.
        users: a Reva-style ``users.json``; None for the demo users (einstein/relativity,
            marie/radioactivity, richard/superfluidity), whose passwords are public: a
            warning is logged when they are served on an address other than loopback.
        lock_profile: ``"eos"`` (Reva master) or ``"edge"`` (Reva edge).
        domain: the OCM domain and default idp; default the HTTP authority (``host:port``).
        token_lifetime: access token validity in seconds.
        token_max_age: seconds after a password login past which its tokens are no longer
            renewed (default 7 days): the user logs in again.
        max_upload_size: largest accepted upload in bytes (413 / RESOURCE_EXHAUSTED above).
        login_throttle: counts failed basic logins; default :class:`LoginThrottle` with 5
            failures per account and 100 per client address in 5 minutes (every node of the
            site logs its users in from its one address).
        recycle_max_age: seconds a deleted resource stays in its space's recycle bin before
            it is purged; default 30 days; None keeps it until purged.
        recycle_max_bytes: bytes of deleted resources one space's bin keeps; default 4 GiB;
            None for no limit. The owner's deletes purge the oldest items to make room (the
            newest always stays); a grantee's delete that does not fit is refused.
        trusted_providers: the OCM domains (``host:port``, as :attr:`domain` gives them)
            this gateway discovers, shares with and takes shares from; None trusts none.
            Settable later with :attr:`trusted_providers`. The gateway signs its OCM
            requests with the Ed25519 key in ``<root>/ocm_signing_key.pem`` (made at first
            start, mode 0600) and publishes its public half in ``/.well-known/ocm``.
        tls: the certificate and key both servers serve: gRPC over TLS, and https for the
            data gateway and OCM, whose URLs (:attr:`http_url`, transfer endpoints, the OCM
            discovery document) then say ``https``. None serves plaintext, which off
            loopback sends passwords and tokens in clear (a warning is logged).
        ca_file: the CA bundle (PEM) the gateway verifies other gateways' https with (OCM
            discovery and shares); None for the system's trust store.
        log: the logger; default ``mesh_collab.cs3.gateway``.

    Raises:
        ValueError: for a bad lock profile, an empty site or a malformed trusted provider
            (at construction); when entering, for an unusable ``ocm_signing_key.pem``.
        OSError: when entering, if a port cannot be bound or the root is not writable, or
            (``ssl.SSLError``) if ``tls`` or ``ca_file`` cannot be read or used.
    """

    def __init__(
        self,
        *,
        root: Path,
        site: str = "site-a",
        host: str = "127.0.0.1",
        port: int = 0,
        data_port: int = 0,
        users: Path | None = None,
        lock_profile: Literal["eos", "edge"] = "eos",
        domain: str | None = None,
        token_lifetime: float = 86400,
        token_max_age: float = MAX_AGE,
        max_upload_size: int = 512 * 2**20,
        login_throttle: LoginThrottle | None = None,
        recycle_max_age: float | None = DEFAULT_MAX_AGE,
        recycle_max_bytes: int | None = DEFAULT_MAX_BYTES,
        trusted_providers: Iterable[str] | None = None,
        tls: ServerTLS | None = None,
        ca_file: Path | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        rules_for(lock_profile)  # fail early on a bad profile
        if not site:
            raise ValueError("site must not be empty")
        self._root = Path(root)
        self._site = site
        self._host = host
        self._port = port
        self._data_port = data_port
        self._users_file = users
        self._lock_profile: LockProfile = lock_profile
        self._domain = domain
        self._token_lifetime = token_lifetime
        self._token_max_age = token_max_age
        self._max_upload_size = max_upload_size
        self._throttle = login_throttle or LoginThrottle(max_per_account=5, max_per_address=100)
        self._recycle_max_age = recycle_max_age
        self._recycle_max_bytes = recycle_max_bytes
        self._trusted = TrustedProviders(trusted_providers or ())
        self._tls = tls
        self._ca_file = ca_file
        self._log = log or logging.getLogger("mesh_collab.cs3.gateway")
        self._grpc_port: int | None = None
        self._http_port: int | None = None

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC server."""
        return f"{_bracket(self._host)}:{self._require(self._grpc_port)}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP server, e.g. ``http://127.0.0.1:40124`` (``https`` with
        ``tls``)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{_bracket(self._host)}:{self._require(self._http_port)}"

    @property
    def grpc_url(self) -> str:
        """The gRPC address as :class:`~mesh_collab.cs3.client.CS3Client` takes it, with its
        scheme: ``grpcs://host:port`` with ``tls``, else ``grpc://host:port``."""
        return f"{'grpcs' if self._tls is not None else 'grpc'}://{self.grpc_address}"

    @property
    def tls(self) -> ServerTLS | None:
        """The certificate both servers serve, or None for plaintext."""
        return self._tls

    @property
    def site(self) -> str:
        """The site name."""
        return self._site

    @property
    def domain(self) -> str:
        """The OCM domain (default: the HTTP authority)."""
        return self._domain or self.http_url.partition("://")[2]

    @property
    def trusted_providers(self) -> frozenset[str]:
        """The trusted OCM domains (lower case); settable, also while running (the other
        site's domain may be known only once its gateway runs).

        Raises:
            ValueError: when set with an entry that is not a bare ``host[:port]``.
        """
        return self._trusted.domains

    @trusted_providers.setter
    def trusted_providers(self, domains: Iterable[str]) -> None:
        self._trusted.replace(domains)

    @property
    def lock_profile(self) -> LockProfile:
        """``"eos"`` or ``"edge"``."""
        return self._lock_profile

    @property
    def root(self) -> Path:
        """The root folder."""
        return self._root

    def _require(self, port: int | None) -> int:
        if port is None:
            raise RuntimeError("EmbeddedGateway is not running: use `async with gateway:`")
        return port

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[EmbeddedGateway]:
        # The root holds the token secrets (meta.sqlite) and every user's files.
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self._root.stat().st_mode)
        if mode & 0o077:
            self._log.warning(
                "gateway root %s has mode %o: open to its group or others (chmod 700)",
                self._root, mode,
            )
        if self._users_file is None and not is_loopback(self._host):
            self._log.warning("serving the demo users, whose passwords are public, on %s",
                              self._host)
        if self._tls is None and not is_loopback(self._host):
            self._log.warning("serving plaintext gRPC and HTTP on %s: passwords and tokens "
                              "travel in clear (pass a TLS certificate)", self._host)
        # Read the certificates before binding anything: a bad file fails the start cleanly.
        server_ssl = self._tls.ssl_context() if self._tls is not None else None
        grpc_credentials = None if self._tls is None else grpc.ssl_server_credentials(
            [(self._tls.key_bytes(), self._tls.cert_bytes())]
        )
        outgoing_ssl = client_context(self._ca_file)
        # Bind the HTTP socket first: the domain (and the users' idp) derive from its port.
        sock = _bind(self._host, self._data_port)
        db: MetaDB | None = None
        try:
            self._http_port = sock.getsockname()[1]
            db = MetaDB(self._root / "meta.sqlite")
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10)
            ) as session:
                core = self._core(db, session, outgoing_ssl)
                # No SO_REUSEPORT: a second gateway on a busy port must fail, not share it.
                server = grpc.aio.server(
                    interceptors=[AuthInterceptor(core)], options=[("grpc.so_reuseport", 0)]
                )
                gw_grpc.add_GatewayAPIServicer_to_server(GatewayServicer(core), server)
                address = f"{_bracket(self._host)}:{self._port}"
                try:
                    if grpc_credentials is None:
                        self._grpc_port = server.add_insecure_port(address)
                    else:
                        self._grpc_port = server.add_secure_port(address, grpc_credentials)
                except RuntimeError as exc:  # grpc reports bind failures this way
                    raise OSError(errno.EADDRINUSE, f"cannot bind gRPC to {address}") from exc
                runner = web.AppRunner(build_app(core), access_log=None)
                await runner.setup()
                try:
                    await server.start()
                    await web.SockSite(runner, sock, ssl_context=server_ssl).start()
                    self._log.info(
                        "gateway started site=%s grpc=%s http=%s profile=%s root=%s",
                        self._site, self.grpc_address, self.http_url, self._lock_profile,
                        self._root,
                    )
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await runner.cleanup()
                        await server.stop(_GRACE)
                    self._log.info("gateway stopped site=%s", self._site)
        finally:
            self._grpc_port = None
            self._http_port = None
            sock.close()
            if db is not None:
                db.close()

    def _core(self, db: MetaDB, session: aiohttp.ClientSession,
              outgoing_ssl: ssl.SSLContext) -> Core:
        domain = self.domain
        users = UserDirectory.load(self._users_file, idp=domain)
        namespace = Namespace(self._root / "files", db, site=self._site)
        shares = ShareStore(db)
        storage = Storage(
            root=self._root, db=db, namespace=namespace, rules=rules_for(self._lock_profile),
            users=users, shares=shares, idp=domain, log=self._log,
            recycle_max_age=self._recycle_max_age, recycle_max_bytes=self._recycle_max_bytes,
        )
        tokens = TokenSigner(db.secret("jwt"), db.secret("transfer"),
                             lifetime=self._token_lifetime, max_age=self._token_max_age)
        key = load_or_create_key(self._root / KEY_FILE)
        discovery = Discovery(session, self._log, trusted=self._trusted, key=key,
                              key_id=key_id_of(f"{self.http_url}/ocm"), ssl=outgoing_ssl)
        return Core(
            site=self._site, domain=domain, http_url=self.http_url, users=users,
            tokens=tokens, ns=namespace, storage=storage, shares=shares, ocm=OcmStore(db),
            discovery=discovery, public_key_pem=public_pem(key),
            max_upload_size=self._max_upload_size,
            log=self._log, throttle=self._throttle,
            login_limiter=anyio.CapacityLimiter(_LOGIN_CONCURRENCY),
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock




def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
