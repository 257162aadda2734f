"""The only place where CS3 answers become mesh_collab exceptions.

Three kinds of answer reach the client:

* a ``cs3.rpc.v1beta1.Status`` inside a response (Reva answers errors this way, with gRPC OK);
* a gRPC-level error: Reva's auth interceptor answers UNAUTHENTICATED when the token is
  missing and PERMISSION_DENIED when it is invalid or expired; a dead gateway gives UNAVAILABLE;
* an HTTP status from the data gateway (PUT/GET of file content).

Lock conflicts come in many shapes depending on the Reva lineage (spec §2.3): master/EOS
answers FAILED_PRECONDITION to lock calls and HTTP 409 to a PUT by another holder; edge answers
LOCKED, ABORTED, or FAILED_PRECONDITION, and HTTP 412 at upload finalize. All of them are
:class:`~mesh_collab.errors.LockConflict` when the call concerned a lock. The mapping never
sniffs message strings.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from cs3.rpc.v1beta1 import code_pb2, status_pb2

from mesh_collab import errors

# Operations whose FAILED_PRECONDITION means "lock mismatch" (cs3apis provider_api.proto).
LOCK_OPS = frozenset({"SetLock", "GetLock", "RefreshLock", "Unlock"})

_BY_CODE: dict[int, type[errors.StorageError]] = {
    code_pb2.CODE_NOT_FOUND: errors.NotFound,
    code_pb2.CODE_PERMISSION_DENIED: errors.PermissionDenied,
    code_pb2.CODE_UNAUTHENTICATED: errors.Unauthenticated,
    code_pb2.CODE_ALREADY_EXISTS: errors.AlreadyExists,
    code_pb2.CODE_LOCKED: errors.LockConflict,
    code_pb2.CODE_ABORTED: errors.LockConflict,
    code_pb2.CODE_INVALID_ARGUMENT: errors.InvalidArgument,
    code_pb2.CODE_OUT_OF_RANGE: errors.InvalidArgument,
    code_pb2.CODE_RESOURCE_EXHAUSTED: errors.QuotaExceeded,
    code_pb2.CODE_INSUFFICIENT_STORAGE: errors.QuotaExceeded,
    code_pb2.CODE_UNIMPLEMENTED: errors.Unimplemented,
    code_pb2.CODE_UNAVAILABLE: errors.StorageUnavailable,
    code_pb2.CODE_DEADLINE_EXCEEDED: errors.StorageUnavailable,
    code_pb2.CODE_TOO_EARLY: errors.StorageUnavailable,
}

_BY_GRPC: dict[grpc.StatusCode, type[errors.StorageError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    # Reva's auth interceptor: "auth: core access token is invalid" (also when expired).
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: errors.StorageUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.StorageUnavailable,
    grpc.StatusCode.CANCELLED: errors.StorageUnavailable,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.QuotaExceeded,
}

_BY_HTTP: dict[int, type[errors.StorageError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    # master/EOS: the app lock of another holder refuses the write (reva PR #4514)
    409: errors.LockConflict,
    412: errors.Conflict,
    413: errors.QuotaExceeded,
    423: errors.LockConflict,
    502: errors.StorageUnavailable,
    503: errors.StorageUnavailable,
    504: errors.StorageUnavailable,
    507: errors.QuotaExceeded,
}


def error_for(
    status: status_pb2.Status, *, op: str, ref: str = "", lock_id: str = ""
) -> errors.StorageError:
    """Return the exception for a non-OK CS3 status.

    Args:
        status: the ``status`` field of a CS3 response.
        op: the RPC name, e.g. ``"InitiateFileUpload"``.
        ref: the addressed resource, for the message.
        lock_id: the lock id the request carried, if any: then FAILED_PRECONDITION is a lock
            conflict (edge and master both answer it to a mismatched lock).
    """
    code = status.code
    cls = _BY_CODE.get(code)
    if code == code_pb2.CODE_FAILED_PRECONDITION:
        cls = errors.LockConflict if (op in LOCK_OPS or lock_id) else errors.Conflict
    elif code == code_pb2.CODE_PERMISSION_DENIED and op in ("RefreshLock", "Unlock"):
        # Reva edge: refreshing or releasing another app's lock (spec §2.2, §2.4.4).
        cls = errors.LockConflict
    elif code == code_pb2.CODE_INTERNAL and op == "InitiateFileUpload" and lock_id:
        # Reva edge: a wrong lock id at InitiateFileUpload escapes its status switch as
        # INTERNAL ("error getting upload id"), spec §2.2.
        cls = errors.LockConflict
    elif cls is None:
        cls = errors.StorageInternal
    return cls(
        status.message,
        op=op,
        ref=ref,
        code=code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code),
        trace=status.trace,
    )


def check(status: status_pb2.Status, *, op: str, ref: str = "", lock_id: str = "") -> None:
    """Raise the mapped exception unless ``status`` is OK.

    Raises:
        StorageError: the subclass that :func:`error_for` picks.
    """
    if status.code != code_pb2.CODE_OK:
        raise error_for(status, op=op, ref=ref, lock_id=lock_id)


def raise_for_rpc_error(exc: grpc.RpcError, *, op: str, ref: str = "") -> NoReturn:
    """Raise the mapped exception for a gRPC-level failure, chained to it.

    Raises:
        StorageError: always.
    """
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError | grpc.Call) else None
    cls = _BY_GRPC.get(code, errors.StorageInternal) if code else errors.StorageUnavailable
    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError | grpc.Call) else str(exc)
    raise cls(detail or "", op=op, ref=ref, code=f"grpc {code.name if code else '?'}") from exc


def raise_for_http(status: int, *, op: str, ref: str = "", lock_id: str = "") -> None:
    """Raise the mapped exception unless the data gateway answered with success.

    200, 201, 204 and 206 are success. On the data path, 412 after a PUT that carried a lock
    id is a lock conflict (edge, lock changed between initiate and PUT).

    Raises:
        StorageError: the mapped subclass.
    """
    if status in (200, 201, 204, 206):
        return
    cls = _BY_HTTP.get(status)
    if status == 412 and lock_id:
        cls = errors.LockConflict
    if cls is None:
        cls = errors.StorageInternal
    raise cls(op=op, ref=ref, code=f"HTTP {status}")
