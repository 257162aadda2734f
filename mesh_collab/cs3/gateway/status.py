"""CS3 status helpers and the gateway's one internal error.

The embedded gateway answers like Reva: errors travel **inside** the response's
``cs3.rpc.v1beta1.Status`` with gRPC status OK (spec §1.1). Internally every refusal is a
:class:`GatewayError` carrying the CS3 code; the per-RPC boundary in
:mod:`mesh_collab.cs3.gateway.servicer` turns it into the response status, and the HTTP
endpoints turn it into an HTTP status with :func:`http_status`.
"""

from __future__ import annotations

from cs3.rpc.v1beta1 import code_pb2, status_pb2

OK = code_pb2.CODE_OK
INVALID_ARGUMENT = code_pb2.CODE_INVALID_ARGUMENT
NOT_FOUND = code_pb2.CODE_NOT_FOUND
ALREADY_EXISTS = code_pb2.CODE_ALREADY_EXISTS
PERMISSION_DENIED = code_pb2.CODE_PERMISSION_DENIED
UNAUTHENTICATED = code_pb2.CODE_UNAUTHENTICATED
RESOURCE_EXHAUSTED = code_pb2.CODE_RESOURCE_EXHAUSTED
FAILED_PRECONDITION = code_pb2.CODE_FAILED_PRECONDITION
ABORTED = code_pb2.CODE_ABORTED
UNIMPLEMENTED = code_pb2.CODE_UNIMPLEMENTED
INTERNAL = code_pb2.CODE_INTERNAL
UNAVAILABLE = code_pb2.CODE_UNAVAILABLE
LOCKED = code_pb2.CODE_LOCKED

# How a CS3 code reads on the HTTP data path (datagateway, OCM WebDAV). Lock and
# precondition codes are not here: their HTTP status depends on the lock profile and the
# callers pass it explicitly (409 on EOS, 412/423 on edge; spec §1.5, §2.3).
_HTTP = {
    INVALID_ARGUMENT: 400,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 412,
    PERMISSION_DENIED: 403,
    UNAUTHENTICATED: 401,
    RESOURCE_EXHAUSTED: 413,
    FAILED_PRECONDITION: 412,
    ABORTED: 412,
    LOCKED: 423,
    UNIMPLEMENTED: 501,
    UNAVAILABLE: 503,
}


class GatewayError(Exception):
    """Raised inside the gateway when a request must be refused with a CS3 status.

    Attributes:
        code: the ``cs3.rpc.v1beta1.Code`` value to answer with.
        message: the status message, worded like Reva's where one is known.
        http: the HTTP status to answer with on the data path, when it is not the default
            mapping of ``code`` (e.g. 409 for an EOS lock conflict).
    """

    def __init__(self, code: int, message: str, *, http: int | None = None) -> None:
        self.code = code
        self.message = message
        self.http = http
        super().__init__(f"{code_pb2.Code.Name(code)}: {message}")

    def to_status(self, trace: str = "") -> status_pb2.Status:
        """Return the ``Status`` message for this error."""
        return status_pb2.Status(code=self.code, message=self.message, trace=trace)


def ok(trace: str = "") -> status_pb2.Status:
    """Return a ``Status`` with code OK."""
    return status_pb2.Status(code=OK, trace=trace)


def http_status(error: GatewayError) -> int:
    """Return the HTTP status the data path answers ``error`` with (500 by default)."""
    return error.http or _HTTP.get(error.code, 500)


def code_name(code: int) -> str:
    """Return the short name of a CS3 code, e.g. ``"NOT_FOUND"``, for logs."""
    return code_pb2.Code.Name(code).removeprefix("CODE_")
