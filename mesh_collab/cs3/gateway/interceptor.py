"""The gRPC auth interceptor, as Reva's ``internal/grpc/interceptors/auth/auth.go``.

Errors here are **gRPC-level**, not CS3 statuses (spec §1.2):

* no ``x-access-token``, or an empty one: ``UNAUTHENTICATED`` ("core access token not found");
* a token that is malformed, forged, expired or names an unknown user: ``PERMISSION_DENIED``
  ("core access token is invalid").

Unprotected methods (``gateway.go: UnprotectedEndpoints``) pass without a token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .core import TOKEN_HEADER, Core
from .status import GatewayError

UNPROTECTED = frozenset({
    "Authenticate", "ListAuthProviders", "GetAuthProvider", "GetUser", "GetUserByClaim",
    "GetUserGroups", "IsProviderAllowed", "ListAllProviders", "GetOCMShareByToken",
    "GetPublicShareByToken", "CreateOCMIncomingShare", "AcceptInvite", "GetAcceptedUser",
    "GetAppPassword", "AddAppProvider", "ListSupportedMimeTypes",
})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses protected calls without a valid access token."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method.rpartition("/")[2]
        if method in UNPROTECTED:
            return await continuation(handler_call_details)
        token = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_HEADER:
                token = value if isinstance(value, str) else value.decode()
        if not token:
            return await self._refuse(continuation, handler_call_details,
                                      grpc.StatusCode.UNAUTHENTICATED,
                                      "auth: core access token not found")
        try:
            self._core.user_from_token(token)
        except GatewayError:
            self._core.log.debug("op=%s invalid access token", method)
            return await self._refuse(continuation, handler_call_details,
                                      grpc.StatusCode.PERMISSION_DENIED,
                                      "auth: core access token is invalid")
        return await continuation(handler_call_details)

    @staticmethod
    async def _refuse(
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails, code: grpc.StatusCode, message: str,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown method: let gRPC answer UNIMPLEMENTED

        async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, message)

        async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, message)
            yield  # pragma: no cover  (makes this an async generator)

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                abort_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            abort, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
