"""Async CS3 client: one gRPC channel to a gateway, one session per user.

Usage::

    async with CS3Client("127.0.0.1:19000") as cs3:
        einstein = await cs3.login("einstein", "relativity")
        info = await einstein.files.stat("/home/einstein/notebook.ipynb")
        async with einstein.locks.lease(info.id, lock_id="mesh_collab:site-a:1") as lease:
            await einstein.files.write(info.id, b"...", lock=lease.lock)

It is built on ``grpc.aio`` and the ``cs3apis`` stubs, with ``httpx`` for the data gateway's
HTTP transfers (docs/architecture.md says why not cs3client). Every RPC carries the
``x-access-token`` of its session and a deadline; every answer goes through
:mod:`mesh_collab.cs3.statuses`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

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
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return 0.0
    return float(claims.get("exp", 0.0))


class Login:
    """Credentials that log in again shortly before the token expires.

    The secret stays in memory only, and never in a repr or a log line.
    """

    #: Renew the token this many seconds before it expires.
    RENEW_MARGIN = 60.0

    def __init__(
        self, client: CS3Client, auth_type: str, client_id: str, secret: str
    ) -> None:
        self._client = client
        self._auth_type = auth_type
        self._client_id = client_id
        self._secret = secret
        self._token = ""
        self._expires = 0.0
        self.user: User | None = None
        self._lock = anyio.Lock()

    async def token(self) -> str:
        async with self._lock:
            renew_at = self._expires - self.RENEW_MARGIN
            if not self._token or (self._expires and time.time() > renew_at):
                self._token, self.user = await self._client.authenticate(
                    self._auth_type, self._client_id, self._secret
                )
                self._expires = token_expiry(self._token)
            return self._token

    def __repr__(self) -> str:
        return f"Login({self._auth_type!r}, {self._client_id!r}, <hidden>)"


class CS3Client(anyio.AsyncContextManagerMixin):
    """A connection to one CS3 gateway (Reva, or mesh_collab's embedded gateway).

    Args:
        gateway: the gRPC address, ``host:port``.
        rpc_timeout: deadline of every RPC, in seconds.
        transfer_timeout: deadline of every HTTP transfer, in seconds.
        log: the logger to use.
    """

    def __init__(
        self,
        gateway: str,
        *,
        rpc_timeout: float = 10.0,
        transfer_timeout: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.gateway = gateway
        self.rpc_timeout = rpc_timeout
        self.transfer_timeout = transfer_timeout
        self.log = log or logging.getLogger(__name__)
        self._stub: gateway_api_pb2_grpc.GatewayAPIStub | None = None
        self._http: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[CS3Client]:
        channel = grpc.aio.insecure_channel(
            self.gateway, options=[("grpc.max_receive_message_length", 64 * 2**20)]
        )
        http = httpx.AsyncClient(timeout=self.transfer_timeout)
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

    async def login(self, username: str, password: str) -> Session:
        """Log in with basic credentials and return that user's session.

        Raises:
            PermissionDenied: wrong password.
            NotFound: unknown user.
        """
        creds = Login(self, "basic", username, password)
        await creds.token()
        return Session(self, creds, user=creds.user)

    async def login_bearer(self, access_token: str) -> Session:
        """Log in with an access token (auth type ``bearer``) and return the session.

        Raises:
            PermissionDenied: the access token is refused.
        """
        creds = Login(self, "bearer", "", access_token)
        await creds.token()
        return Session(self, creds, user=creds.user)

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
