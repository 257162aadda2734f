"""CS3 errors as the ``OSError`` of file APIs: the one mapping for ``cs3://`` and the mount.

Code that reads files (pandas, dask, a kernel's ``open()``) expects ``FileNotFoundError``,
``PermissionError`` and friends, and the FUSE mount must answer the kernel with an errno. Both
come from the table below, so the two interfaces fail the same way::

    NotFound            FileNotFoundError    ENOENT
    PermissionDenied    PermissionError      EACCES
    Unauthenticated     PermissionError      EACCES
    AlreadyExists       FileExistsError      EEXIST
    LockConflict        FileLockedError      EBUSY    (names the lock's holder)
    Conflict            OSError              EBUSY
    InvalidArgument     OSError              EINVAL
    QuotaExceeded       OSError              ENOSPC
    Unimplemented       OSError              ENOTSUP
    StorageUnavailable  OSError              EIO
    anything else       OSError              EIO

The :class:`~mesh_collab.errors.StorageError` stays attached as ``__cause__``.
"""

from __future__ import annotations

import errno

from mesh_collab import errors
from mesh_collab.cs3.models import Lock


class FileLockedError(OSError):
    """A write refused because another application holds the file's CS3 (Reva) lock.

    Raised by ``cs3://`` and, as ``EBUSY``, reported by the mount: writing around a lock
    would overwrite what that application (an office editor, a live notebook room) is about
    to save, so the write fails instead of happening silently.

    Attributes:
        holder: the lock's holder (its application name, else its lock id), "" if unknown.
    """

    def __init__(self, path: str, holder: str = "") -> None:
        by = f" by {holder}" if holder else " by another application"
        super().__init__(
            errno.EBUSY, f"{path} is locked{by} (CS3 lock); it cannot be written now", path
        )
        self.holder = holder


#: (class, errno, OSError subclass); the first matching class wins, subclasses first.
_TABLE: tuple[tuple[type[errors.StorageError], int, type[OSError]], ...] = (
    (errors.NotFound, errno.ENOENT, FileNotFoundError),
    (errors.PermissionDenied, errno.EACCES, PermissionError),
    (errors.Unauthenticated, errno.EACCES, PermissionError),
    (errors.AlreadyExists, errno.EEXIST, FileExistsError),
    (errors.Conflict, errno.EBUSY, OSError),
    (errors.InvalidArgument, errno.EINVAL, OSError),
    (errors.QuotaExceeded, errno.ENOSPC, OSError),
    (errors.Unimplemented, errno.ENOTSUP, OSError),
)


def errno_of(exc: errors.StorageError) -> int:
    """The errno that stands for ``exc`` (EBUSY for a lock conflict, EIO when none fits)."""
    if isinstance(exc, errors.LockConflict):
        return errno.EBUSY
    for cls, code, _ in _TABLE:
        if isinstance(exc, cls):
            return code
    return errno.EIO


def holder_of(lock: Lock | None) -> str:
    """How to name a lock's holder in a message: its application, else its lock id."""
    if lock is None:
        return ""
    return lock.app_name or lock.lock_id


def os_error(exc: errors.StorageError, path: str, *, lock: Lock | None = None) -> OSError:
    """Return the ``OSError`` to raise (``from exc``) for ``exc`` on ``path``.

    Args:
        lock: for a lock conflict, the lock found on the file, to name its holder.
    """
    if isinstance(exc, errors.LockConflict):
        return FileLockedError(path, holder_of(lock))
    for cls, code, os_cls in _TABLE:
        if isinstance(exc, cls):
            return os_cls(code, f"{path}: {exc}", path)
    return OSError(errno.EIO, f"{path}: {exc}", path)
