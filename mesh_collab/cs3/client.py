"""Async CS3 client: one gRPC channel to a gateway, one session per user.

Usage::

    async with CS3Client("grpcs://reva.example.org:19000", ca_file=Path("ca.pem")) as cs3:
        einstein = await cs3.login("einstein", "relativity")
        info = await einstein.files.stat("/home/einstein/notebook.ipynb")
        async with einstein.locks.lease(info.id, lock_id="mesh_collab:site-a:1") as lease:
            await einstein.files.write(info.id, b"...", lock=lease.lock)

It is built on ``grpc.aio`` and the ``cs3apis`` stubs, with ``httpx`` for the data gateway's
HTTP transfers (docs/architecture.md says why not cs3client). Every RPC carries the
``x-access-token`` of its session and a deadline; every answer goes through
:mod:`mesh_collab.cs3.statuses`.

Transport security: ``grpcs://host:port`` (or ``tls=True``, or a ``ca_file``) speaks TLS,
verified against ``ca_file`` or the default roots, and so do the HTTP transfers. Plaintext
(``host:port`` or ``grpc://host:port``) is accepted for a loopback gateway only, since the
password of ``Authenticate`` and every token would otherwise cross the network in clear:
``allow_insecure=True`` lifts that for a network you trust.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import grpc
import httpx
import jwt
from cs3.gateway.v1beta1 import gateway_api_pb2, gateway_api_pb2_grpc

from mesh_collab import errors
from mesh_collab.cs3 import statuses
from mesh_collab.cs3.files import Files, Versions
from mesh_collab.cs3.locks import Locks
from mesh_collab.cs3.models import User
from mesh_collab.cs3.shares import OCM, Shares
from mesh_collab.cs3.users import Users
from mesh_collab.tls import client_context, is_loopback

log = logging.getLogger(__name__)

# httpx logs every request URL at INFO, and a data gateway endpoint carries its transfer
# token as the last path segment (as Reva's does): keep those URLs out of the logs.
logging.getLogger("httpx").setLevel(logging.WARNING)


class TokenSource(Protocol):
    """Gives the current CS3 token of one user, renewing it when needed."""

    async def token(self) -> str:
        """Return a token valid for at least the next call."""
        ...


class StaticToken:
    """A token given from outside (a single-user server's configured token)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"


def token_expiry(token: str) -> float:
    """Return the ``exp`` claim of a Reva JWT, read without verifying it (as cs3client does).

    Returns 0.0 when the token is not a JWT or has no expiry.
    """
    return _token_times(token)[1]


def _token_times(token: str) -> tuple[float, float]:
    """``(iat, exp)`` of a JWT read without verifying it; 0.0 for what it lacks."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return 0.0, 0.0
    times = []
    for name in ("iat", "exp"):
        value = claims.get(name, 0.0)
        times.append(float(value) if isinstance(value, int | float) else 0.0)
    return times[0], times[1]


class Login:
    """One login's access token, renewed shortly before it expires; keeps no password.

    The first :meth:`token` logs in with the credentials given, and the secret is then
    dropped. Renewals go through the gateway's ``bearer`` exchange (the current token for a
    new one of the same login), which a gateway refuses once the login reaches its maximum
    age (the embedded gateway: 7 days; a Reva without a bearer auth provider refuses it at
    once). After a refusal the token serves until it expires, then :meth:`token` raises
    :class:`~mesh_collab.errors.Unauthenticated`: the user must log in again.

    ``keep_secret`` keeps the secret and logs in with it again instead of ending: for an
    account whose password the process holds anyway (a node's configured credentials).
    The secret never appears in a repr or a log line.

    Args:
        client: the client to authenticate with.
        auth_type: ``"basic"`` or ``"bearer"`` (see :meth:`CS3Client.authenticate`).
        client_id: the user name (``"basic"``).
        secret: the password, or the access token to exchange (``"bearer"``).
        keep_secret: log in again with ``secret`` when a renewal is refused.
    """

    #: Renew the token this many seconds before it expires (at most half its lifetime).
    RENEW_MARGIN = 60.0
    #: Try a renewal again after this many seconds when the gateway could not be reached
    #: (or, with ``keep_secret``, refused the secret too).
    RETRY_DELAY = 5.0

    def __init__(
        self, client: CS3Client, auth_type: str, client_id: str, secret: str, *,
        keep_secret: bool = False,
    ) -> None:
        self._client = client
        self._auth_type = auth_type
        self._client_id = client_id
        self._secret = secret
        self._keep_secret = keep_secret
        self._token = ""
        self._expires = 0.0
        self._renew_at = 0.0
        self._renewable = True
        self.user: User | None = None
        self._lock = anyio.Lock()

    @property
    def expires(self) -> float:
        """When the current token expires (unix seconds; 0.0 before the first login)."""
        return self._expires

    async def token(self) -> str:
        """Return the current token, logging in or renewing it first when due.

        Raises:
            Unauthenticated: the login has ended (its token expired and cannot be renewed).
            PermissionDenied, NotFound, StorageError: the first login failed.
        """
        async with self._lock:
            if not self._token:
                await self._log_in()
            elif self._renewable and self._client.clock() >= self._renew_at:
                await self._renew()
            if self._expires and self._client.clock() >= self._expires:
                raise errors.Unauthenticated(
                    "the CS3 login has expired: log in again", op="Authenticate",
                    ref=self._client_id,
                )
            return self._token

    def adopt(self, other: Login) -> None:
        """Take the token of ``other``, a newer login of the same user, if it lives longer."""
        if other._token and other._expires > self._expires:
            self._take(other._token, other.user)
            self._renewable = other._renewable

    async def _log_in(self) -> None:
        token, user = await self._client.authenticate(
            self._auth_type, self._client_id, self._secret
        )
        self._take(token, user)
        self._renewable = True
        if not self._keep_secret:
            self._secret = ""

    async def _renew(self) -> None:
        # The bearer exchange first (no password check), then the kept secret if any.
        attempts = [("bearer", "", self._token)]
        if self._secret:
            attempts.append((self._auth_type, self._client_id, self._secret))
        code = ""
        for auth_type, client_id, secret in attempts:
            try:
                token, user = await self._client.authenticate(auth_type, client_id, secret)
            except errors.StorageUnavailable:
                self._renew_at = self._client.clock() + self.RETRY_DELAY
                return
            except errors.StorageError as exc:
                code = exc.code
                continue
            if auth_type != "bearer" or token_expiry(token) > self._expires:
                self._take(token, user)  # a new login, or a renewal that extends the token
                return
            code = "not extended"
        if self._secret:
            self._client.log.warning("op=Authenticate user=%s login refused (%s): trying "
                                     "again in %.0f s", self._client_id, code,
                                     self.RETRY_DELAY)
            self._renew_at = self._client.clock() + self.RETRY_DELAY
            return
        # Invalid, expired, past the login's maximum age, or no bearer exchange at this
        # gateway: the token serves until it expires.
        self._client.log.info("op=Authenticate user=%s renewal refused (%s): the login ends "
                              "when its token expires", self._client_id, code)
        self._renewable = False

    def resume(self, token: str) -> None:
        """Start from ``token``, a token of this login given from outside (no call is made).

        It is renewed like a token this login got itself: a hub-spawned server's token.
        """
        self._take(token, None)
        self._renewable = True

    def _take(self, token: str, user: User | None) -> None:
        iat, exp = _token_times(token)
        self._token, self._expires = token, exp
        margin = min(self.RENEW_MARGIN, max(0.0, exp - iat) / 2)
        self._renew_at = exp - margin if exp else float("inf")
        if user is not None:
            self.user = user
            if user.username and not self._client_id:
                self._client_id = user.username

    def __repr__(self) -> str:
        return f"Login({self._auth_type!r}, {self._client_id!r}, <hidden>)"


class CS3Client(anyio.AsyncContextManagerMixin):
    """A connection to one CS3 gateway (Reva, or mesh_collab's embedded gateway).

    Args:
        gateway: the gRPC address: ``host:port`` or ``grpc://host:port`` (plaintext), or
            ``grpcs://host:port`` (TLS).
        rpc_timeout: deadline of every RPC, in seconds.
        transfer_timeout: deadline of every HTTP transfer, in seconds.
        log: the logger to use.
        clock: the time that token renewal goes by (``time.time``); tests pass a fake one.
        tls: speak TLS (True) or plaintext (False); None: TLS for a ``grpcs://`` address
            or when ``ca_file`` is given.
        ca_file: the CA bundle (PEM) the gateway's certificate is verified with, for gRPC
            and the HTTP transfers; None for the default roots (gRPC's bundled ones, the
            system's for HTTP). Verification is never off.
        allow_insecure: accept plaintext to a gateway that is not loopback, and plain
            ``http`` transfer URLs on such a host (passwords and tokens then travel in
            clear).

    Raises:
        ValueError: plaintext to a gateway that is not loopback without ``allow_insecure``,
            an unknown scheme, or ``tls=False`` with a ``grpcs://`` address.
        OSError: ``ca_file`` cannot be read (``ssl.SSLError``: it holds no certificate).
    """

    def __init__(
        self,
        gateway: str,
        *,
        rpc_timeout: float = 10.0,
        transfer_timeout: float = 60.0,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
        tls: bool | None = None,
        ca_file: Path | str | None = None,
        allow_insecure: bool = False,
    ) -> None:
        self.gateway = gateway
        #: The gRPC target without its scheme, ``host:port``.
        self.target, self.tls = _parse_gateway(gateway, tls, ca_file)
        self.allow_insecure = allow_insecure
        if not self.tls and not allow_insecure and not _is_local(self.target):
            raise ValueError(
                f"CS3 gateway {self.target} is not loopback: plaintext would send passwords "
                f"and tokens in clear; use grpcs://{self.target} (tls=True, with ca_file for "
                "a private CA), or pass allow_insecure=True for a network you trust"
            )
        self.ca_file = Path(ca_file) if ca_file else None
        # Read now: a missing or bad CA file fails at configuration, not at the first call.
        self._ca_pem = self.ca_file.read_bytes() if self.ca_file and self.tls else None
        self._http_ssl = client_context(self.ca_file)
        self.rpc_timeout = rpc_timeout
        self.transfer_timeout = transfer_timeout
        self.log = log or logging.getLogger(__name__)
        self.clock = clock
        self._stub: gateway_api_pb2_grpc.GatewayAPIStub | None = None
        self._http: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[CS3Client]:
        options = [("grpc.max_receive_message_length", 64 * 2**20)]
        if self.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
            channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.target, options=options)
        http = httpx.AsyncClient(timeout=self.transfer_timeout, verify=self._http_ssl)
        self._stub = gateway_api_pb2_grpc.GatewayAPIStub(channel)
        self._http = http
        try:
            yield self
        finally:
            self._stub = None
            self._http = None
            with anyio.CancelScope(shield=True):
                await http.aclose()
                await channel.close(grace=None)

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client for data transfers."""
        if self._http is None:
            raise RuntimeError("CS3Client is not open: use `async with CS3Client(...)`")
        return self._http

    async def call(
        self,
        name: str,
        request: Any,
        *,
        token: str | None,
        ref: str = "",
        lock_id: str = "",
        check: bool = True,
    ) -> Any:
        """Call the gateway RPC ``name`` and check its status.

        Args:
            name: the GatewayAPI method, e.g. ``"Stat"``.
            request: its request message.
            token: the caller's token, or None for unprotected methods.
            ref: the resource, for error messages and logs.
            lock_id: the lock id the request carries (lets FAILED_PRECONDITION read as a lock
                conflict).
            check: raise on a non-OK status (pass False to inspect it yourself).

        Raises:
            StorageError: the mapped subclass.
        """
        if self._stub is None:
            raise RuntimeError("CS3Client is not open: use `async with CS3Client(...)`")
        method = getattr(self._stub, name)
        metadata = (("x-access-token", token),) if token else ()
        try:
            response = await method(request, metadata=metadata, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            statuses.raise_for_rpc_error(exc, op=name, ref=ref)
        if check:
            statuses.check(response.status, op=name, ref=ref, lock_id=lock_id)
        self.log.debug("op=%s ref=%s trace=%s", name, ref, response.status.trace)
        return response

    async def transfer(
        self,
        method: str,
        endpoint: str,
        *,
        transfer_token: str,
        token: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ref: str = "",
        lock_id: str = "",
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Do one HTTP transfer against the data gateway.

        Args:
            accept: HTTP statuses besides success that the caller handles itself (e.g. 416
                for a range past the end of a file).

        Raises:
            StorageError: the mapped subclass for a failed answer or a transport failure.
        """
        self._check_endpoint(endpoint, op=method, ref=ref)
        all_headers = {"X-Reva-Transfer": transfer_token, "x-access-token": token}
        all_headers.update(headers or {})
        try:
            response = await self.http.request(
                method, endpoint, headers=all_headers, content=content
            )
        except httpx.TimeoutException as exc:
            raise errors.StorageUnavailable(
                "transfer timed out", op=method, ref=ref, code="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise errors.StorageUnavailable(str(exc), op=method, ref=ref) from exc
        if response.status_code not in accept:
            statuses.raise_for_http(response.status_code, op=method, ref=ref, lock_id=lock_id)
        return response

    def _check_endpoint(self, endpoint: str, *, op: str, ref: str) -> None:
        """Refuse to send tokens to a plain-http endpoint off loopback (unless
        ``allow_insecure``): the transfer token is in its path, the access token in a header.

        Raises:
            StorageInternal: the gateway handed out such an endpoint.
        """
        parts = urlsplit(endpoint)
        if parts.scheme.lower() == "https" or self.allow_insecure:
            return
        if parts.scheme.lower() != "http" or not is_loopback(parts.hostname or ""):
            # The URL carries the transfer token: name its host only.
            raise errors.StorageInternal(
                f"the gateway handed out a {parts.scheme or 'schemeless'} transfer URL on "
                f"{parts.hostname or '?'}: only https is accepted off loopback",
                op=op, ref=ref, code="insecure endpoint",
            )

    async def authenticate(self, auth_type: str, client_id: str, secret: str) -> tuple[str, User]:
        """Authenticate and return ``(token, user)``.

        Args:
            auth_type: ``"basic"`` (username and password) or ``"bearer"`` (``secret`` is an
                access token; Reva's OIDC manager ignores ``client_id``).

        Raises:
            PermissionDenied: wrong password (Reva's answer).
            NotFound: unknown user.
            StorageError: any other failure.
        """
        request = gateway_api_pb2.AuthenticateRequest(
            type=auth_type, client_id=client_id, client_secret=secret
        )
        response = await self.call("Authenticate", request, token=None, ref=client_id)
        return response.token, User.from_proto(response.user)

    async def login(
        self, username: str, password: str, *, keep_password: bool = False
    ) -> Session:
        """Log in with basic credentials and return that user's session.

        The session keeps the token only, renewed through the ``bearer`` exchange; once the
        gateway refuses that (the login's maximum age), it raises ``Unauthenticated`` when
        the token expires (:class:`Login`).

        Args:
            keep_password: keep the password and log in with it again instead (for an
                account whose password the process holds anyway, such as a node's
                configured credentials).

        Raises:
            PermissionDenied: wrong password.
            NotFound: unknown user.
        """
        creds = Login(self, "basic", username, password, keep_secret=keep_password)
        await creds.token()
        return Session(self, creds, user=creds.user)

    async def login_bearer(self, access_token: str) -> Session:
        """Log in with an access token (auth type ``bearer``) and return the session.

        The token is exchanged for a new one of the same login, renewed like :meth:`login`'s.

        Raises:
            PermissionDenied: the access token is refused.
            Unauthenticated: its login has reached its maximum age.
        """
        creds = Login(self, "bearer", "", access_token)
        await creds.token()
        return Session(self, creds, user=creds.user)

    def resume(self, token: str) -> Session:
        """Return a session for an existing token, renewed like :meth:`login`'s (no call).

        For a token handed over from outside, such as a JupyterHub-spawned server's: the
        ``bearer`` exchange renews it shortly before it expires, as long as the gateway
        extends it (a token that is no JWT, or a gateway without the exchange, serves
        until it expires, as with :meth:`session`).
        """
        creds = Login(self, "bearer", "", "")
        creds.resume(token)
        return Session(self, creds)

    def session(self, token: str | TokenSource) -> Session:
        """Return a session for an existing token (no call is made)."""
        source = StaticToken(token) if isinstance(token, str) else token
        return Session(self, source)


class Session:
    """One user's view of the gateway: every call carries that user's token.

    Attributes:
        files: stat, list, read, write, move, delete, metadata (:class:`~.files.Files`).
        versions: list, download and restore versions (:class:`~.files.Versions`).
        locks: CS3 locks and the lock lease (:class:`~.locks.Locks`).
        shares: shares on this site (:class:`~.shares.Shares`).
        ocm: shares with other sites (:class:`~.shares.OCM`).
        users: user look-ups (:class:`~.users.Users`).
    """

    def __init__(self, client: CS3Client, tokens: TokenSource, *, user: User | None = None):
        self.client = client
        self.tokens = tokens
        self.user = user
        self.files = Files(self)
        self.versions = Versions(self)
        self.locks = Locks(self)
        self.shares = Shares(self)
        self.ocm = OCM(self)
        self.users = Users(self)

    def adopt(self, other: Session) -> None:
        """Take the token of ``other``, a newer login of the same user, when it lives longer.

        Whoever holds this session (a room writing a notebook) then goes on with the new
        login's token. Sessions on a fixed token keep theirs.
        """
        if isinstance(self.tokens, Login) and isinstance(other.tokens, Login):
            self.tokens.adopt(other.tokens)

    async def call(self, name: str, request: Any, *, ref: str = "", lock_id: str = "") -> Any:
        """Call an RPC with this session's token (see :meth:`CS3Client.call`)."""
        token = await self.tokens.token()
        return await self.client.call(name, request, token=token, ref=ref, lock_id=lock_id)

    async def whoami(self) -> User:
        """Return the user behind this session's token.

        Raises:
            Unauthenticated: the token is invalid or expired.
        """
        token = await self.tokens.token()
        response = await self.client.call(
            "WhoAmI", gateway_api_pb2.WhoAmIRequest(token=token), token=token
        )
        self.user = User.from_proto(response.user)
        return self.user


def _parse_gateway(gateway: str, tls: bool | None, ca_file: Path | str | None,
                   ) -> tuple[str, bool]:
    """Split a gateway address into its gRPC target and whether it speaks TLS.

    Raises:
        ValueError: an unknown scheme, or ``tls`` contradicting the scheme.
    """
    scheme, sep, rest = gateway.partition("://")
    if not sep or scheme.lower() == "unix":  # gRPC's own unix:///path targets stay whole
        return gateway, bool(ca_file) if tls is None else tls
    scheme = scheme.lower()
    if scheme == "grpcs":
        if tls is False:
            raise ValueError(f"tls=False contradicts the grpcs:// gateway {gateway!r}")
        return rest, True
    if scheme == "grpc":
        if tls:
            raise ValueError(f"tls=True contradicts the plaintext grpc:// gateway {gateway!r}")
        if ca_file:
            raise ValueError(f"ca_file is given for the plaintext grpc:// gateway {gateway!r}")
        return rest, False
    raise ValueError(f"CS3 gateway must be host:port, grpc://host:port or "
                     f"grpcs://host:port: {gateway!r}")


def _is_local(target: str) -> bool:
    """Whether a gRPC target never leaves the machine (loopback, or a unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    try:
        host = urlsplit(f"//{target}").hostname or ""
    except ValueError:
        return False
    return is_loopback(host)
