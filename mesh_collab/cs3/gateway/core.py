"""What the gRPC servicer and the HTTP endpoints share, and the per-RPC error boundary.

:class:`Core` bundles the parts of one running gateway. :func:`rpc` wraps every servicer
method: it authenticates the caller, turns a
:class:`~mesh_collab.cs3.gateway.status.GatewayError` into the response's CS3 status and
is the **one** place where an unexpected exception is caught (logged with ``exc_info``,
answered INTERNAL), so a bad request never produces a traceback on the wire.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import anyio
import grpc
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.rpc.v1beta1 import status_pb2
from cs3.types.v1beta1 import types_pb2
from google.protobuf.message import Message

from mesh_collab.throttle import LoginThrottle

from .namespace import Namespace
from .ocm import OcmStore
from .providers import Discovery
from .shares import ShareStore
from .status import INTERNAL, OK, PERMISSION_DENIED, UNAUTHENTICATED, GatewayError, code_name
from .storage import Storage
from .tokens import TokenSigner
from .users import UserDirectory, UserRecord

TOKEN_HEADER = "x-access-token"

#: The client address of the RPC being handled (set by :func:`rpc` for the handler's task).
call_peer: ContextVar[str] = ContextVar("mesh_collab_gateway_peer", default="")

R = TypeVar("R", bound=Message)


@dataclass(slots=True)
class Core:
    """The parts of one running gateway."""

    site: str
    domain: str
    #: Base URL of the HTTP side, ``https://`` when the gateway serves TLS: the transfer
    #: endpoints and the OCM URLs it hands out derive from it.
    http_url: str
    users: UserDirectory
    tokens: TokenSigner
    ns: Namespace
    storage: Storage
    shares: ShareStore
    ocm: OcmStore
    #: The trusted OCM providers: discovery, signed shares to them, signers of shares.
    discovery: Discovery
    #: The public half of the gateway's OCM signing key, published in /.well-known/ocm.
    public_key_pem: str
    max_upload_size: int
    log: logging.Logger
    #: Failed basic logins per account and per client address (``Authenticate``).
    throttle: LoginThrottle
    #: Password checks running at once (an argon2 check takes ~64 MiB for ~0.1 s).
    login_limiter: anyio.CapacityLimiter

    def user_from_token(self, token: str) -> UserRecord:
        """Return the user an access token belongs to.

        Raises:
            GatewayError: PERMISSION_DENIED if the token is invalid, expired or names a user
                this gateway does not know.
        """
        claims = self.tokens.verify(token)
        user = claims.get("user")
        ident = user.get("id") if isinstance(user, dict) else None
        if not isinstance(ident, dict):
            raise GatewayError(PERMISSION_DENIED, "access token carries no user")
        rec = self.users.by_opaque_id(str(ident.get("opaque_id", "")))
        if rec is None:
            raise GatewayError(PERMISSION_DENIED, "access token names an unknown user")
        return rec

    def user_id(self, opaque_id: str) -> user_res.UserId:
        """Return the ``UserId`` of a local user, also when the directory lost them."""
        rec = self.users.by_opaque_id(opaque_id)
        if rec is not None:
            return rec.user_id()
        return user_res.UserId(idp=self.domain, opaque_id=opaque_id,
                               type=user_res.USER_TYPE_PRIMARY)


def metadata_token(context: grpc.aio.ServicerContext) -> str:
    """Return the ``x-access-token`` of a call's metadata, or ``""``."""
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_HEADER:
            return value if isinstance(value, str) else value.decode()
    return ""


def peer_address(peer: str) -> str:
    """Return the IP address of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``).

    Other peers (``unix:/path``) are returned as they are.
    """
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


def opaque_str(opaque: types_pb2.Opaque, key: str) -> str:
    """Return a "plain" opaque entry as text, or ``""``."""
    entry = opaque.map.get(key)
    if entry is None:
        return ""
    return entry.value.decode("utf-8", "replace")


def plain(value: str) -> types_pb2.OpaqueEntry:
    """Return a "plain" opaque entry."""
    return types_pb2.OpaqueEntry(decoder="plain", value=value.encode())


Handler = Callable[[Any, Any, Any], Awaitable[R]]


def rpc(response: type[R], *, public: bool = False) -> Callable[[Handler[R]], Any]:
    """Wrap a servicer method ``(self, request, user) -> response`` as a gRPC handler.

    Args:
        response: the response message class, used to answer errors.
        public: the method needs no token (``user`` is then None).
    """

    def wrap(fn: Handler[R]) -> Any:
        op = fn.__name__

        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
            trace = uuid.uuid4().hex
            log: logging.Logger = self.core.log
            call_peer.set(peer_address(context.peer() or ""))
            try:
                user = None
                if not public:
                    token = metadata_token(context)
                    if not token:
                        raise GatewayError(UNAUTHENTICATED, "core access token not found")
                    user = self.core.user_from_token(token)
                answer = await fn(self, request, user)
                if answer.status.code == 0:
                    answer.status.code = OK
                answer.status.trace = trace
                log.debug("op=%s code=OK trace=%s", op, trace)
                return answer
            except GatewayError as exc:
                log.debug("op=%s code=%s msg=%r trace=%s", op, code_name(exc.code),
                          exc.message, trace)
                return response(status=exc.to_status(trace))
            except Exception:
                # The one catch-all boundary of an RPC: never a traceback on the wire.
                log.exception("op=%s failed trace=%s", op, trace)
                return response(status=status_pb2.Status(
                    code=INTERNAL, message="internal error", trace=trace))

        return handler

    return wrap
