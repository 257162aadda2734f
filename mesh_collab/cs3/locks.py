"""CS3 locks, and the lock lease that keeps one alive while a room is open.

Lock semantics differ between Reva lineages (spec §2.3). What this module relies on holds in
both: SetLock on a locked file fails (even with our own lock: SetLock is not idempotent), GetLock
answers NOT_FOUND when there is no live lock, and RefreshLock/Unlock by another holder fail.
Locks are app locks: ``app_name`` set and ``user`` left empty, as wopiserver and cs3client do,
so any user of the same app may refresh them (decomposedfs) and EOS enforces the app tag.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as sr

from mesh_collab import errors
from mesh_collab.cs3.models import Lock, Ref, describe, reference

if TYPE_CHECKING:
    from mesh_collab.cs3.client import Session

log = logging.getLogger(__name__)

APP_NAME = "mesh_collab"


class Locks:
    """Lock operations of one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def set(self, ref: Ref, lock: Lock) -> None:
        """Take a lock.

        Raises:
            LockConflict: the file is already locked (by anyone, us included).
            NotFound: no such file.
            PermissionDenied: the user may not write the file.
        """
        req = sp.SetLockRequest(ref=reference(ref), lock=lock.to_proto())
        await self._session.call("SetLock", req, ref=describe(ref), lock_id=lock.lock_id)

    async def get(self, ref: Ref) -> Lock | None:
        """Return the live lock of ``ref``, or None when it is not locked.

        GetLock is authoritative about expiry, unlike ``info.lock`` from Stat, which Reva
        master fills even for an expired lock.

        Raises:
            StorageError: any failure other than "not locked".
        """
        req = sp.GetLockRequest(ref=reference(ref))
        try:
            res = await self._session.call("GetLock", req, ref=describe(ref))
        except errors.NotFound:
            return None
        return Lock.from_proto(res.lock) if res.lock.lock_id else None

    async def refresh(self, ref: Ref, lock: Lock, *, existing_lock_id: str = "") -> None:
        """Extend a lock we hold (and replace its id when ``existing_lock_id`` proves the old one).

        Raises:
            LockConflict: not locked, or locked by someone else.
        """
        req = sp.RefreshLockRequest(
            ref=reference(ref), lock=lock.to_proto(), existing_lock_id=existing_lock_id
        )
        await self._session.call("RefreshLock", req, ref=describe(ref), lock_id=lock.lock_id)

    async def unlock(self, ref: Ref, lock: Lock) -> None:
        """Release a lock we hold.

        Raises:
            LockConflict: not locked, or locked by someone else.
        """
        req = sp.UnlockRequest(ref=reference(ref), lock=lock.to_proto())
        await self._session.call("Unlock", req, ref=describe(ref), lock_id=lock.lock_id)

    def lease(
        self,
        ref: Ref,
        *,
        lock_id: str,
        app_name: str = APP_NAME,
        expiry: float = 60.0,
        on_lost: Callable[[errors.StorageError | None], None] | None = None,
    ) -> LockLease:
        """Return a :class:`LockLease` on ``ref`` (enter it to acquire)."""
        return LockLease(
            self, ref, lock_id=lock_id, app_name=app_name, expiry=expiry, on_lost=on_lost
        )


class LockLease(anyio.AsyncContextManagerMixin):
    """Hold a CS3 write lock for as long as the ``async with`` block runs.

    Entering takes the lock (or takes back our own lock with the same id, e.g. after a
    restart); a background task refreshes it every ``expiry / 3`` seconds; leaving releases
    it under a shield, so that cancellation does not leak the lock.

    If the lock is lost underneath us (it expired, another holder took it, or refreshing
    kept failing until the expiry passed), :attr:`lost` is set and ``on_lost`` is called once;
    the holder must stop writing at once. The lease does not try to take the lock back.

    Usage::

        async with session.locks.lease(rid, lock_id="mesh_collab:site-a:node1:7") as lease:
            await session.files.write(rid, data, lock=lease.lock)

    Raises (on entry):
        LockConflict: someone else holds the lock; ``.holder`` names their lock.
    """

    def __init__(
        self,
        locks: Locks,
        ref: Ref,
        *,
        lock_id: str,
        app_name: str,
        expiry: float,
        on_lost: Callable[[errors.StorageError | None], None] | None = None,
        release_grace: float = 5.0,
    ) -> None:
        if expiry <= 0:
            raise ValueError(f"lock expiry must be positive, got {expiry!r}")
        self._locks = locks
        self.ref = ref
        self.lock_id = lock_id
        self.app_name = app_name
        self.expiry = expiry
        self._on_lost = on_lost
        self._release_grace = release_grace
        self.lost = anyio.Event()
        #: Why the lease was lost: a conflict (someone else has the lock), or a storage error
        #: (unreachable until after the expiry: the lock may still be free), or None.
        self.lost_reason: errors.StorageError | None = None
        self.expires_at = 0.0

    @property
    def lock(self) -> Lock:
        """The lock as we hold it (with the current expiration)."""
        return Lock(
            lock_id=self.lock_id,
            app_name=self.app_name,
            type=sr.LOCK_TYPE_WRITE,
            expiration=self.expires_at,
        )

    @property
    def held(self) -> bool:
        """Whether we still believe we hold the lock."""
        return not self.lost.is_set() and time.time() < self.expires_at

    def _new_expiry(self) -> float:
        # Whole seconds: CS3 timestamps round-trip, and EOS stores seconds only.
        return float(math.ceil(time.time() + self.expiry))

    async def _acquire(self) -> None:
        self.expires_at = self._new_expiry()
        try:
            await self._locks.set(self.ref, self.lock)
        except errors.LockConflict:
            current = await self._locks.get(self.ref)
            if current is None:
                # Released between our two calls: try once more, and let a loss propagate.
                await self._locks.set(self.ref, self.lock)
            elif current.app_name == self.app_name and current.lock_id == self.lock_id:
                # Ours already (a restart with the same id): SetLock is not idempotent,
                # RefreshLock is (wopiserver's pattern, src/core/wopi.py: setLock).
                await self._locks.refresh(self.ref, self.lock, existing_lock_id=self.lock_id)
            else:
                raise
        log.info("lock acquired ref=%s app=%s", describe(self.ref), self.app_name)

    def _mark_lost(self, exc: errors.StorageError | None) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = exc
        self.lost.set()
        log.warning("lock lost ref=%s reason=%s", describe(self.ref), exc or "expired")
        if self._on_lost is not None:
            self._on_lost(exc)

    async def confirm(self) -> bool:
        """Refresh the lock now: True if it is still ours (for another expiry), False if it
        is lost (``lost`` is then set). Call it before acting on the belief that the lock is
        ours, e.g. merging a file that changed: someone may have taken the lock since the
        last refresh.

        Raises:
            StorageError: storage did not answer (the lease keeps retrying by itself).
        """
        if self.lost.is_set():
            return False
        expires = self._new_expiry()
        lock = Lock(lock_id=self.lock_id, app_name=self.app_name, expiration=expires)
        try:
            await self._locks.refresh(self.ref, lock, existing_lock_id=self.lock_id)
        except (errors.LockConflict, errors.NotFound, errors.PermissionDenied) as exc:
            self._mark_lost(exc)
            return False
        self.expires_at = expires
        return True

    async def _keep_alive(self) -> None:
        period = self.expiry / 3
        delay = period
        while True:
            await anyio.sleep(delay)
            expires = self._new_expiry()
            lock = Lock(lock_id=self.lock_id, app_name=self.app_name, expiration=expires)
            try:
                # Prove the id we hold: Reva master compares only the app name otherwise, and
                # would let a refresh take over another holder's lock of the same app (two
                # mesh_collab nodes), silently replacing its id (cs3apis PR #182).
                await self._locks.refresh(self.ref, lock, existing_lock_id=self.lock_id)
            except (errors.LockConflict, errors.NotFound, errors.PermissionDenied) as exc:
                self._mark_lost(exc)
                return
            except errors.StorageError as exc:
                # Storage unreachable: retry sooner, for as long as the lock may be ours.
                remaining = self.expires_at - time.time()
                if remaining <= 0:
                    self._mark_lost(exc)
                    return
                delay = min(period, max(0.2, remaining / 4))
                log.warning(
                    "lock refresh failed, retrying ref=%s error=%s", describe(self.ref), exc
                )
                continue
            self.expires_at = expires
            delay = period

    async def _release(self) -> None:
        try:
            await self._locks.unlock(self.ref, self.lock)
        except (errors.LockConflict, errors.NotFound):
            # Not ours any more: nothing to release.
            log.info("lock already gone at release ref=%s", describe(self.ref))
        except errors.StorageError as exc:
            # The lock expires by itself; say so rather than fail the caller's exit.
            log.warning("lock release failed ref=%s error=%s", describe(self.ref), exc)
        else:
            log.info("lock released ref=%s", describe(self.ref))

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[LockLease]:
        # Cancelled while SetLock is in flight, we could not know whether the server set
        # the lock, and would leave it for a whole expiry: see the call through (every call
        # has a deadline), then honour the cancellation inside the releasing block below.
        with anyio.CancelScope(shield=True):
            await self._acquire()
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if not self.lost.is_set():
                with anyio.move_on_after(self._release_grace, shield=True):
                    await self._release()
