"""The one exception tree of mesh_collab.

Every error that mesh_collab raises on purpose is a :class:`MeshCollabError`::

    MeshCollabError
    ├── StorageError                  a CS3 call failed (carries op, ref, code, trace)
    │   ├── NotFound                  NOT_FOUND, HTTP 404
    │   ├── PermissionDenied          PERMISSION_DENIED, HTTP 403
    │   ├── Unauthenticated           UNAUTHENTICATED, bad or expired token, HTTP 401
    │   ├── AlreadyExists             ALREADY_EXISTS
    │   ├── Conflict                  FAILED_PRECONDITION (etag, if_match), HTTP 412
    │   │   └── LockConflict          LOCKED, ABORTED, FAILED_PRECONDITION of a lock, HTTP 409
    │   ├── InvalidArgument           INVALID_ARGUMENT, HTTP 400
    │   ├── QuotaExceeded             RESOURCE_EXHAUSTED, INSUFFICIENT_STORAGE, HTTP 413/507
    │   ├── Unimplemented             UNIMPLEMENTED
    │   ├── StorageUnavailable        UNAVAILABLE, DEADLINE_EXCEEDED, connection refused
    │   └── StorageInternal           INTERNAL, UNKNOWN and every other code, HTTP 5xx
    ├── FederationError               a link between two nodes failed
    │   ├── PeerUnreachable
    │   ├── PeerRejected              a handshake is refused (carries the close code)
    │   └── ProtocolVersionMismatch
    ├── ProtocolError                 a client or peer sent an undecodable message
    ├── LocalStoreError               the node's local update log failed (disk full, I/O)
    ├── MountError                    the FUSE mount of a CS3 folder could not be set up
    ├── UserLimitExceeded             a user would hold more documents open than one may
    └── RoomClosed                    the room is shutting down

Only :mod:`mesh_collab.cs3.statuses` turns CS3 statuses and HTTP answers into these. The file
interfaces (``cs3://``, the FUSE mount) present storage errors as ``OSError`` through
:mod:`mesh_collab.cs3.oserrors`.
Programming errors (misuse of an API) are ``RuntimeError``, ``TypeError`` or ``ValueError``.
"""

from __future__ import annotations


class MeshCollabError(Exception):
    """Base of every error that mesh_collab raises on purpose."""


class StorageError(MeshCollabError):
    """Raised when a call to CS3 storage fails.

    Attributes:
        op: the CS3 operation, e.g. ``"Stat"`` or ``"PUT"``.
        ref: the resource the operation addressed, as text (a path or a resource id).
        code: the CS3 status code name (``"NOT_FOUND"``) or HTTP status (``"HTTP 409"``).
        trace: the gateway's trace id, to join with its logs.
        detail: the gateway's message.
    """

    default_message = "Storage error"

    def __init__(
        self,
        detail: str = "",
        *,
        op: str = "",
        ref: str = "",
        code: str = "",
        trace: str = "",
    ) -> None:
        self.detail = detail
        self.op = op
        self.ref = ref
        self.code = code
        self.trace = trace
        parts = [self.default_message]
        if op:
            parts.append(f"op={op}")
        if ref:
            parts.append(f"ref={ref!r}")
        if code:
            parts.append(f"code={code}")
        if detail:
            parts.append(f"detail={detail!r}")
        if trace:
            parts.append(f"trace={trace}")
        super().__init__(" ".join(parts))


class NotFound(StorageError):
    """Raised when the resource, its parent, a lock or a share does not exist."""

    default_message = "No such file or directory"


class PermissionDenied(StorageError):
    """Raised when the user may not do this to the resource."""

    default_message = "Permission denied"


class Unauthenticated(StorageError):
    """Raised when credentials are wrong, or a token is missing, invalid or expired."""

    default_message = "Not authenticated"


class AlreadyExists(StorageError):
    """Raised when creating something that is already there."""

    default_message = "File exists"


class Conflict(StorageError):
    """Raised when the resource's state forbids the operation (a precondition failed)."""

    default_message = "Precondition failed"


class LockConflict(Conflict):
    """Raised when a lock held by someone else, or a lock mismatch, forbids the operation."""

    default_message = "Lock mismatch"


class InvalidArgument(StorageError):
    """Raised when the request itself is malformed."""

    default_message = "Invalid argument"


class QuotaExceeded(StorageError):
    """Raised when a size limit or the storage quota forbids the operation."""

    default_message = "No space left or too large"


class Unimplemented(StorageError):
    """Raised when the storage does not support the operation."""

    default_message = "Operation not supported"


class StorageUnavailable(StorageError):
    """Raised when the storage cannot be reached or did not answer before the deadline."""

    default_message = "Storage unavailable"


class StorageInternal(StorageError):
    """Raised when the storage failed on its side (INTERNAL, UNKNOWN, HTTP 5xx)."""

    default_message = "Storage internal error"


class FederationError(MeshCollabError):
    """Raised when a link between two mesh nodes fails."""


class PeerUnreachable(FederationError):
    """Raised when a peer node cannot be reached."""


class PeerRejected(FederationError):
    """Raised when a link is refused (credentials, rights): ``code`` is the close code the
    refused side is told (:mod:`mesh_collab.close_codes`), ``reason`` why."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ProtocolVersionMismatch(FederationError):
    """Raised when a peer speaks a federation protocol version we do not."""


class ProtocolError(MeshCollabError):
    """Raised when a client or peer sends a message that cannot be decoded."""


class LocalStoreError(MeshCollabError):
    """Raised when the node's local update log cannot store or read updates."""


class MountError(MeshCollabError):
    """Raised when the FUSE mount cannot be set up: no FUSE (``/dev/fuse``, ``fusermount3``,
    pyfuse3), a mount point in use, or a CS3 folder that cannot be mounted."""


class UserLimitExceeded(MeshCollabError):
    """Raised when a user would hold more documents open on the node than one user may
    (``CollabServer.max_rooms_per_user``); other users are not affected."""


class RoomClosed(MeshCollabError):
    """Raised when using a room that is shutting down."""


def single_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (a task group's body that raised),
    or ``exc`` itself when it is not a group of exactly one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
