"""The two lock profiles: Reva master/EOS (``"eos"``) and Reva edge/decomposedfs (``"edge"``).

Each profile is a :class:`LockRules` implementation that answers with CS3 codes (raising
:class:`~mesh_collab.cs3.gateway.status.GatewayError`) exactly as the tables of the spec
(``cs3-semantics.md`` §2.1, §2.2, §2.3) say. Storage of the lock is shared: one row per
node in the ``locks`` table, read and written inside one ``BEGIN IMMEDIATE`` transaction so
that concurrent SetLock calls race safely (exactly one wins).

Reva sources cited below: master ``pkg/storage/fs/eos/locks.go`` (EOS) and edge
``pkg/storage/utils/decomposedfs/node/locks.go`` (decomposedfs).

Both profiles are stricter than Reva, which lets one user act on another's lock:

* **Expiry is capped** at :data:`MAX_LOCK_EXPIRY` (30 minutes, the WOPI lock lifetime
  wopiserver and cs3client use). A SetLock or RefreshLock without an expiration, or with a
  later one, gets the cap: the lock lives 30 minutes from the call, and GetLock says so. Reva
  stores what it is given (EOS: no expiration is a lock for ever).
* **A lock belongs to its user**: the ``user`` of the lock, else the user who set it (a
  SetLock naming another ``user`` is PERMISSION_DENIED). Only they refresh or release it,
  whatever the app name and whatever lock id the request proves: every writer of a file can
  read its lock id (Stat, GetLock), so the id says nothing about who is asking. Another
  user gets the profile's holder-mismatch code (FAILED_PRECONDITION on eos,
  PERMISSION_DENIED on edge). Reva decides on the app name alone for app locks, so any
  user of the same app may refresh or release them.
* **The owner of a file may break a lock** on it (Unlock with the lock's id) whoever set it
  and with whatever app: the owner keeps the last word over their file.
* **Writing through an app lock** with ``X-Lock-Holder: <app>`` alone (eos) is for the
  lock's user; another writer must also send the lock's id (``X-Lock-Id`` or the upload's
  ``lock_id``), as edge requires of everybody. Collaborators of the holder write through
  its lock that way.

SHARED locks (edge) stay advisory: no holder checks, as in decomposedfs. Who may see a
lock's id is the storage's business (:meth:`~.storage.Storage.get_lock`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2
from google.protobuf import json_format

from .db import MetaDB
from .status import (
    ABORTED,
    FAILED_PRECONDITION,
    INTERNAL,
    INVALID_ARGUMENT,
    LOCKED,
    NOT_FOUND,
    PERMISSION_DENIED,
    GatewayError,
)

LockProfile = Literal["eos", "edge"]

#: The longest a lock lives without a refresh, in seconds: 30 minutes, the WOPI lock
#: lifetime (wopiserver, and cs3client's default ``lock_expiration``).
MAX_LOCK_EXPIRY = 1800.0
# Node ids per query of many locks (SQLite's default limit of variables is 999 before 3.32).
_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredLock:
    """A lock as stored for one node."""

    lock_id: str
    type: int
    user_idp: str
    user_opaque: str
    app_name: str
    expiration: float | None
    creation: float
    setter: str

    @property
    def holder_user(self) -> str:
        """The opaque id of the user the lock belongs to: its ``user``, else its setter."""
        return self.user_opaque or self.setter

    def live(self, now: float) -> bool:
        """Whether the lock has not expired at ``now``."""
        return self.expiration is None or self.expiration > now

    def to_proto(self) -> res.Lock:
        """Return the CS3 ``Lock`` message."""
        lock = res.Lock(lock_id=self.lock_id, type=self.type, app_name=self.app_name)
        if self.user_opaque:
            lock.user.CopyFrom(user_res.UserId(idp=self.user_idp, opaque_id=self.user_opaque))
        if self.expiration is not None:
            lock.expiration.CopyFrom(_timestamp(self.expiration))
        lock.creation_time.CopyFrom(_timestamp(self.creation))
        return lock


class LockTable:
    """Reads and writes the ``locks`` table."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db

    def get(self, node_id: str) -> StoredLock | None:
        """Return the stored lock of a node, expired or not."""
        row = self.db.one("SELECT * FROM locks WHERE node_id = ?", (node_id,))
        return None if row is None else _from_row(row)

    def get_many(self, node_ids: list[str]) -> dict[str, StoredLock]:
        """Return the stored locks of several nodes (expired or not), by node id."""
        found: dict[str, StoredLock] = {}
        for start in range(0, len(node_ids), _BATCH):
            chunk = node_ids[start:start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows = self.db.all(f"SELECT * FROM locks WHERE node_id IN ({marks})", chunk)
            found.update((str(row["node_id"]), _from_row(row)) for row in rows)
        return found

    def put(self, node_id: str, lock: StoredLock) -> None:
        """Store (insert or replace) the lock of a node."""
        self.db.execute(
            "INSERT OR REPLACE INTO locks (node_id, lock_id, type, user_idp, user_opaque, "
            "app_name, expiration, creation, setter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (node_id, lock.lock_id, lock.type, lock.user_idp, lock.user_opaque,
             lock.app_name, lock.expiration, lock.creation, lock.setter),
        )

    def delete(self, node_id: str) -> None:
        """Remove the lock of a node."""
        self.db.execute("DELETE FROM locks WHERE node_id = ?", (node_id,))

    def read_live(self, node_id: str, now: float) -> StoredLock | None:
        """Return the live lock, deleting an expired one (Reva's lazy purge)."""
        lock = self.get(node_id)
        if lock is not None and not lock.live(now):
            self.delete(node_id)
            return None
        return lock


def _from_row(row: sqlite3.Row) -> StoredLock:
    expiration = row["expiration"]
    if expiration is None:
        # Stored before expiry was capped: it lives the cap from its creation.
        expiration = row["creation"] + MAX_LOCK_EXPIRY
    return StoredLock(
        lock_id=row["lock_id"], type=row["type"], user_idp=row["user_idp"],
        user_opaque=row["user_opaque"], app_name=row["app_name"],
        expiration=expiration, creation=row["creation"], setter=row["setter"],
    )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the user's opaque id and idp, and whether they own the file."""

    opaque_id: str
    idp: str
    owns_file: bool = False

    def may_break(self, lock: StoredLock) -> bool:
        """Whether this is the file's owner acting on a lock that is not theirs."""
        return self.owns_file and lock.holder_user != self.opaque_id


class LockRules(Protocol):
    """What a lock profile decides. Every method raises ``GatewayError`` to refuse."""

    name: LockProfile

    def stat_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock | None:
        """The lock to show in ``ResourceInfo.lock``."""

    def stat_locks(
        self, table: LockTable, node_ids: list[str], now: float
    ) -> dict[str, StoredLock]:
        """The locks to show in the ``ResourceInfo.lock`` of several nodes (a listing)."""

    def set_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        """SetLock."""

    def get_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock:
        """GetLock."""

    def refresh_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, existing_lock_id: str,
        caller: Caller, now: float,
    ) -> None:
        """RefreshLock."""

    def unlock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        """Unlock."""

    def check_op(self, table: LockTable, node_id: str | None, lock_id: str, now: float) -> None:
        """Lock check of Delete, Move, metadata, TouchFile, CreateContainer, restore."""

    def check_initiate_upload(
        self, table: LockTable, node_id: str | None, lock_id: str, now: float
    ) -> None:
        """Lock check of InitiateFileUpload."""

    def check_put(
        self, table: LockTable, node_id: str | None, *, lock_id: str, holder: str,
        uploader: str, now: float, webdav: bool = False,
    ) -> int | None:
        """Lock check of the HTTP PUT: None to accept, else the HTTP status to refuse with."""

    def lock_opaque(self, lock: StoredLock | None) -> types_pb2.OpaqueEntry | None:
        """The ``opaque["lock"]`` entry a Stat carries, if the profile sets one."""


class EosRules:
    """Reva master with the EOS driver (spec §2.1): the default profile."""

    name: LockProfile = "eos"

    def stat_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock | None:
        # eosfs.go convertToResourceInfo fills info.lock from the xattr without looking at
        # the expiration: clients must check it themselves (spec §2.1 "Expiry").
        return table.get(node_id)

    def stat_locks(
        self, table: LockTable, node_ids: list[str], now: float
    ) -> dict[str, StoredLock]:
        return table.get_many(node_ids)

    def set_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        _require_lock_id(lock, caller)
        if lock.type == res.LOCK_TYPE_SHARED:
            # eos SetLock returns NotSupported for shared locks, which the storage provider's
            # SetLock mapping does not handle: INTERNAL, not UNIMPLEMENTED.
            raise GatewayError(INTERNAL, "shared locks are not supported")
        with table.db.transaction():
            current = table.read_live(node_id, now)
            if current is not None:
                # reva PR #5421 "SetLock now checks existing locks", even one's own.
                raise GatewayError(FAILED_PRECONDITION, "reference already locked")
            table.put(node_id, _new_lock(lock, caller, now))

    def get_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock:
        with table.db.transaction():
            current = table.read_live(node_id, now)
        if current is None:
            raise GatewayError(NOT_FOUND, "reference or lock not found")
        return current

    def refresh_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, existing_lock_id: str,
        caller: Caller, now: float,
    ) -> None:
        with table.db.transaction():
            current = table.read_live(node_id, now)
            if current is None:
                raise GatewayError(FAILED_PRECONDITION, "file was not locked")
            if not _same_holder(current, lock, caller):
                raise GatewayError(FAILED_PRECONDITION, "caller does not hold the lock")
            if existing_lock_id and existing_lock_id != current.lock_id:
                raise GatewayError(FAILED_PRECONDITION, "mismatching existing lock id")
            if current.holder_user != caller.opaque_id:
                raise GatewayError(FAILED_PRECONDITION, "the lock belongs to another user")
            # eosfs does not enforce the lock id on refresh: a different lock_id without
            # existing_lock_id replaces the stored one (glpatcern, cs3apis PR #182).
            table.put(node_id, _refreshed(current, lock, now))

    def unlock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        with table.db.transaction():
            current = table.read_live(node_id, now)
            if current is None:
                raise GatewayError(FAILED_PRECONDITION, "reference not locked")
            if lock.lock_id != current.lock_id:
                raise GatewayError(FAILED_PRECONDITION, "caller does not hold the lock")
            if not caller.may_break(current):
                if not _same_holder(current, lock, caller):
                    raise GatewayError(FAILED_PRECONDITION, "caller does not hold the lock")
                if current.holder_user != caller.opaque_id:
                    raise GatewayError(FAILED_PRECONDITION, "the lock belongs to another user")
            table.delete(node_id)

    def check_op(self, table: LockTable, node_id: str | None, lock_id: str, now: float) -> None:
        # Master's Reva layer ignores every lock_id field (no use of req.LockId); EOS only
        # enforces its app lock on content writes. Delete/Move/metadata are allowed.
        return

    def check_initiate_upload(
        self, table: LockTable, node_id: str | None, lock_id: str, now: float
    ) -> None:
        # InitiateFileUpload always succeeds on master; EOS refuses the PUT itself.
        return

    def check_put(
        self, table: LockTable, node_id: str | None, *, lock_id: str, holder: str,
        uploader: str, now: float, webdav: bool = False,
    ) -> int | None:
        lock = table.get(node_id) if node_id else None
        if lock is None or not lock.live(now):
            return None
        # EOS tags writes with the app from X-Lock-Holder (default "write") and refuses
        # them with a Conflict (HTTP 409) when an app lock of another app is live
        # (pkg/storage/fs/eos/client/grpc/eoshttp.go, reva PR #4514). The app tag alone is
        # the lock's user's; another writer also shows the lock's id.
        if lock.app_name:
            held = bool(holder) and _eos_app_tag(holder) == _eos_app_tag(lock.app_name) and (
                uploader == lock.holder_user or lock_id == lock.lock_id
            )
        elif lock.user_opaque:
            held = uploader == lock.user_opaque
        else:
            held = uploader == lock.setter
        return None if held else 409

    def lock_opaque(self, lock: StoredLock | None) -> types_pb2.OpaqueEntry | None:
        return None


class EdgeRules:
    """Reva edge with decomposedfs or posix (spec §2.2)."""

    name: LockProfile = "edge"

    def stat_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock | None:
        # node.go AsResourceInfo → ReadLock, which removes expired locks.
        return table.read_live(node_id, now)

    def stat_locks(
        self, table: LockTable, node_ids: list[str], now: float
    ) -> dict[str, StoredLock]:
        found = table.get_many(node_ids)
        expired = [node_id for node_id, lock in found.items() if not lock.live(now)]
        if expired:
            with table.db.transaction():
                for node_id in expired:
                    table.delete(node_id)
        return {k: v for k, v in found.items() if k not in expired}

    def set_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        _require_lock_id(lock, caller)
        with table.db.transaction():
            # ReadLock deletes an expired lock file, then O_EXCL creation succeeds.
            if table.read_live(node_id, now) is not None:
                raise GatewayError(FAILED_PRECONDITION, "already locked")
            table.put(node_id, _new_lock(lock, caller, now))

    def get_lock(self, table: LockTable, node_id: str, now: float) -> StoredLock:
        with table.db.transaction():
            current = table.read_live(node_id, now)
        if current is None:
            raise GatewayError(NOT_FOUND, "lock not found")
        return current

    def refresh_lock(
        self, table: LockTable, node_id: str, lock: res.Lock, existing_lock_id: str,
        caller: Caller, now: float,
    ) -> None:
        if not lock.lock_id:
            raise GatewayError(INVALID_ARGUMENT, "missing lockid")
        with table.db.transaction():
            # RefreshLock opens the lock file directly and never checks the expiration:
            # an expired lock nobody has read since is still refreshable (spec §2.2).
            current = table.get(node_id)
            if current is None:
                raise GatewayError(FAILED_PRECONDITION, "lock does not exist")
            if existing_lock_id:
                if existing_lock_id != current.lock_id:
                    raise GatewayError(ABORTED, "mismatching existing lock ID")
            elif lock.lock_id != current.lock_id:
                raise GatewayError(ABORTED, "mismatching lock ID")
            _edge_holder_check(current, lock, caller)
            table.put(node_id, _refreshed(current, lock, now))

    def unlock(
        self, table: LockTable, node_id: str, lock: res.Lock, caller: Caller, now: float
    ) -> None:
        if not lock.lock_id:
            raise GatewayError(INVALID_ARGUMENT, "missing lockid")
        with table.db.transaction():
            current = table.get(node_id)  # no expiry check, as RefreshLock
            if current is None:
                raise GatewayError(ABORTED, "lock does not exist")
            if lock.lock_id != current.lock_id:
                raise GatewayError(LOCKED, f"error: locked by {_short(current.lock_id)}")
            if not caller.may_break(current):
                _edge_holder_check(current, lock, caller)
            table.delete(node_id)

    def check_op(self, table: LockTable, node_id: str | None, lock_id: str, now: float) -> None:
        # CheckLock: no id on a locked node → Locked; mismatch → Aborted; an id on an
        # unlocked node → Aborted ("not locked").
        with table.db.transaction():
            current = table.read_live(node_id, now) if node_id else None
        if current is None:
            if lock_id:
                raise GatewayError(ABORTED, "not locked")
            return
        if not lock_id:
            raise GatewayError(LOCKED, f"error: locked by {_short(current.lock_id)}")
        if lock_id != current.lock_id:
            raise GatewayError(ABORTED, "mismatching lock")

    def check_initiate_upload(
        self, table: LockTable, node_id: str | None, lock_id: str, now: float
    ) -> None:
        try:
            self.check_op(table, node_id, lock_id, now)
        except GatewayError as exc:
            if exc.code == ABORTED:
                # Aborted is not in InitiateFileUpload's error switch on edge: it surfaces
                # as INTERNAL "error getting upload id" (spec §2.2 upload outcomes).
                raise GatewayError(INTERNAL, f"error getting upload id: {exc.message}") from exc
            raise

    def check_put(
        self, table: LockTable, node_id: str | None, *, lock_id: str, holder: str,
        uploader: str, now: float, webdav: bool = False,
    ) -> int | None:
        try:
            self.check_op(table, node_id, lock_id, now)
        except GatewayError as exc:
            # Upload finalize (upload/store.go CreateNodeForUpload) turns a lock change into
            # 412; ocdav's PUT answers 423 Locked when no token was sent.
            if webdav and exc.code == LOCKED:
                return 423
            return 412
        return None

    def lock_opaque(self, lock: StoredLock | None) -> types_pb2.OpaqueEntry | None:
        if lock is None:
            return None
        # node.go readLocksIntoOpaque: the lock as JSON under opaque["lock"].
        body = json_format.MessageToDict(lock.to_proto(), preserving_proto_field_name=True)
        return types_pb2.OpaqueEntry(decoder="json", value=json.dumps(body).encode())


def rules_for(profile: LockProfile) -> LockRules:
    """Return the rules of a profile name.

    Raises:
        ValueError: for an unknown profile.
    """
    if profile == "eos":
        return EosRules()
    if profile == "edge":
        return EdgeRules()
    raise ValueError(f"unknown lock profile {profile!r}: use 'eos' or 'edge'")


def _require_lock_id(lock: res.Lock, caller: Caller) -> None:
    if not lock.lock_id:
        raise GatewayError(INVALID_ARGUMENT, "missing lock id")
    if lock.type == res.LOCK_TYPE_INVALID:
        raise GatewayError(INVALID_ARGUMENT, "missing lock type")
    if lock.user.opaque_id and lock.user.opaque_id != caller.opaque_id:
        # The lock would belong to that user: nobody takes a lock in another's name.
        raise GatewayError(PERMISSION_DENIED, "a lock can only be set for oneself")


def _new_lock(lock: res.Lock, caller: Caller, now: float) -> StoredLock:
    return StoredLock(
        lock_id=lock.lock_id,
        type=lock.type,
        user_idp=lock.user.idp if lock.user.opaque_id else "",
        user_opaque=lock.user.opaque_id,
        app_name=lock.app_name,
        expiration=_capped(lock.expiration, now),
        creation=_seconds(lock.creation_time) or now,  # EOS fills creation_time if absent
        setter=caller.opaque_id,
    )


def _refreshed(current: StoredLock, lock: res.Lock, now: float) -> StoredLock:
    # Refresh replaces lock id and expiration and keeps creation_time (EOS refreshLock).
    return replace(current, lock_id=lock.lock_id or current.lock_id,
                   expiration=_capped(lock.expiration, now))


def _capped(ts: types_pb2.Timestamp, now: float) -> float:
    # None (no expiration) would be a lock for ever on EOS: every lock gets the cap at most.
    asked = _seconds(ts)
    cap = now + MAX_LOCK_EXPIRY
    return cap if asked is None else min(asked, cap)


def _request_user(current: StoredLock, lock: res.Lock, caller: Caller) -> str:
    # A request without lock.user speaks for the caller (cs3client never sets it).
    return lock.user.opaque_id or (caller.opaque_id if current.user_opaque else "")


def _same_holder(current: StoredLock, lock: res.Lock, caller: Caller) -> bool:
    """EOS ``sameHolder``: users decide, then an app_name on either lock overrides them."""
    same = True
    wanted = _request_user(current, lock, caller)
    if current.user_opaque or wanted:
        same = current.user_opaque == wanted
    if current.app_name or lock.app_name:
        same = current.app_name == lock.app_name
    return same


def _edge_holder_check(current: StoredLock, lock: res.Lock, caller: Caller) -> None:
    # decomposedfs checks holders only for non-shared locks; a user-less app lock may be
    # refreshed or unlocked by any user of the same app (locks_test.go).
    if current.type == res.LOCK_TYPE_SHARED:
        return
    if current.app_name != lock.app_name:
        raise GatewayError(PERMISSION_DENIED, "app names of the locks are mismatching")
    wanted = _request_user(current, lock, caller)
    if (current.user_opaque or wanted) and current.user_opaque != wanted:
        raise GatewayError(PERMISSION_DENIED, "users of the locks are mismatching")
    if current.holder_user != caller.opaque_id:
        raise GatewayError(PERMISSION_DENIED, "caller is not the lock user")


def _eos_app_tag(app_name: str) -> str:
    # EncodeAppName in pkg/storage/fs/eos/client/eosclient.go.
    return "http/reva_" + app_name.lower().replace(" ", "_")


def _seconds(ts: types_pb2.Timestamp) -> float | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9


def _timestamp(value: float) -> types_pb2.Timestamp:
    seconds = int(value)
    nanos = min(999_999_999, int(round((value - seconds) * 1e9)))
    return types_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _short(lock_id: str) -> str:
    # Lock ids may embed credentials (WOPI): never echo them in full.
    return lock_id[:8] + "…" if len(lock_id) > 8 else lock_id

