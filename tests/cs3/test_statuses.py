"""The one mapping from CS3 answers to mesh_collab exceptions, table-driven."""

from __future__ import annotations

import pytest
from cs3.rpc.v1beta1 import code_pb2
from cs3.rpc.v1beta1.status_pb2 import Status

from mesh_collab import errors
from mesh_collab.cs3 import statuses

C = code_pb2


@pytest.mark.parametrize(
    ("code", "op", "lock_id", "expected"),
    [
        (C.CODE_NOT_FOUND, "Stat", "", errors.NotFound),
        (C.CODE_PERMISSION_DENIED, "Authenticate", "", errors.PermissionDenied),
        (C.CODE_PERMISSION_DENIED, "SetLock", "", errors.PermissionDenied),
        (C.CODE_PERMISSION_DENIED, "RefreshLock", "x", errors.LockConflict),
        (C.CODE_PERMISSION_DENIED, "Unlock", "x", errors.LockConflict),
        (C.CODE_UNAUTHENTICATED, "Stat", "", errors.Unauthenticated),
        (C.CODE_ALREADY_EXISTS, "CreateContainer", "", errors.AlreadyExists),
        (C.CODE_FAILED_PRECONDITION, "SetLock", "x", errors.LockConflict),
        (C.CODE_FAILED_PRECONDITION, "GetLock", "", errors.LockConflict),
        (C.CODE_FAILED_PRECONDITION, "InitiateFileUpload", "x", errors.LockConflict),
        (C.CODE_FAILED_PRECONDITION, "InitiateFileUpload", "", errors.Conflict),
        (C.CODE_ABORTED, "Delete", "x", errors.LockConflict),
        (C.CODE_LOCKED, "Delete", "", errors.LockConflict),
        (C.CODE_INTERNAL, "InitiateFileUpload", "x", errors.LockConflict),
        (C.CODE_INTERNAL, "InitiateFileUpload", "", errors.StorageInternal),
        (C.CODE_INTERNAL, "Stat", "", errors.StorageInternal),
        (C.CODE_UNKNOWN, "Stat", "", errors.StorageInternal),
        (C.CODE_INVALID_ARGUMENT, "Stat", "", errors.InvalidArgument),
        (C.CODE_RESOURCE_EXHAUSTED, "InitiateFileUpload", "", errors.QuotaExceeded),
        (C.CODE_INSUFFICIENT_STORAGE, "InitiateFileUpload", "", errors.QuotaExceeded),
        (C.CODE_UNIMPLEMENTED, "ListContainerStream", "", errors.Unimplemented),
        (C.CODE_UNAVAILABLE, "Stat", "", errors.StorageUnavailable),
        (C.CODE_TOO_EARLY, "Delete", "", errors.StorageUnavailable),
        (999, "Stat", "", errors.StorageInternal),
    ],
)
def test_status_mapping(code: int, op: str, lock_id: str, expected: type) -> None:
    status = Status(code=code, message="detail", trace="t-1")
    with pytest.raises(expected) as info:
        statuses.check(status, op=op, ref="/home/einstein/x", lock_id=lock_id)
    assert type(info.value) is expected
    assert info.value.op == op and info.value.trace == "t-1" and info.value.detail == "detail"


def test_ok_raises_nothing() -> None:
    statuses.check(Status(code=C.CODE_OK), op="Stat")


@pytest.mark.parametrize(
    ("http", "lock_id", "expected"),
    [
        (400, "", errors.InvalidArgument),
        (401, "", errors.Unauthenticated),
        (403, "", errors.PermissionDenied),
        (404, "", errors.NotFound),
        (409, "", errors.LockConflict),
        (412, "", errors.Conflict),
        (412, "x", errors.LockConflict),
        (413, "", errors.QuotaExceeded),
        (419, "", errors.StorageInternal),
        (500, "", errors.StorageInternal),
        (503, "", errors.StorageUnavailable),
        (507, "", errors.QuotaExceeded),
    ],
)
def test_http_mapping(http: int, lock_id: str, expected: type) -> None:
    with pytest.raises(expected) as info:
        statuses.raise_for_http(http, op="PUT", lock_id=lock_id)
    assert type(info.value) is expected
    assert info.value.code == f"HTTP {http}"


@pytest.mark.parametrize("http", [200, 201, 204, 206])
def test_http_success(http: int) -> None:
    statuses.raise_for_http(http, op="GET")


def test_every_storage_error_is_a_mesh_collab_error() -> None:
    assert issubclass(errors.LockConflict, errors.Conflict)
    for cls in (errors.NotFound, errors.LockConflict, errors.StorageUnavailable):
        assert issubclass(cls, errors.StorageError) and issubclass(cls, errors.MeshCollabError)
