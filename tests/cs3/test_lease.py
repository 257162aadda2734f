"""The lock lease: acquire, keep alive, shielded release, loss detection."""

from __future__ import annotations

import time

import anyio
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Lock


async def test_lease_outlives_its_expiry_and_releases(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    async with einstein.locks.lease(path, lock_id="node-a:1", expiry=2) as lease:
        # The thing tested is the refresh over time: outlive two expiries.
        await anyio.sleep(4.5)
        held = await einstein.locks.get(path)
        assert held is not None and held.lock_id == "node-a:1"
        assert lease.held and held.expiration > time.time()
        await einstein.files.write(path, b"checkpoint", lock=lease.lock)
    assert await einstein.locks.get(path) is None


async def test_lease_is_released_when_cancelled(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    acquired = anyio.Event()
    with anyio.CancelScope() as scope:
        async with einstein.locks.lease(path, lock_id="node-a:1", expiry=30):
            acquired.set()
            scope.cancel()
            await anyio.sleep_forever()
    assert acquired.is_set()
    assert await einstein.locks.get(path) is None


async def test_a_lease_cancelled_while_acquiring_leaves_no_lock(
    einstein: Session, workdir: str
) -> None:
    """Cancelled while SetLock is in flight (a room closed as it opens), the lock the server
    may have set is released: nothing is left locked for lock_expiry."""
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    entered = 0
    for attempt in range(40):
        # Deadlines from 0 to ~4 ms: some fall before, some during, some after the SetLock.
        with anyio.move_on_after(attempt / 10_000):
            async with einstein.locks.lease(path, lock_id=f"node-a:{attempt}", expiry=30):
                entered += 1
                await anyio.sleep_forever()
        assert await einstein.locks.get(path) is None, f"lock left at attempt {attempt}"
    assert entered > 0  # the deadlines reach past the acquisition too


async def test_lease_refused_when_another_app_holds_the_lock(
    einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    office = Lock(lock_id="office-1", app_name="office", expiration=float(int(time.time() + 60)))
    await einstein.locks.set(path, office)
    with pytest.raises(errors.LockConflict):
        async with einstein.locks.lease(path, lock_id="node-a:1", expiry=30):
            pytest.fail("entered a lease on a file another app holds")
    held = await einstein.locks.get(path)
    assert held is not None and held.app_name == "office"


async def test_lease_takes_back_its_own_lock(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    # A node restarts while its lock is still live: same id, same app.
    expiration = float(int(time.time() + 60))
    mine = Lock(lock_id="node-a:1", app_name="mesh_collab", expiration=expiration)
    await einstein.locks.set(path, mine)
    async with einstein.locks.lease(path, lock_id="node-a:1", expiry=30) as lease:
        assert lease.held
    assert await einstein.locks.get(path) is None


async def test_lost_lease_is_reported_at_once(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    reasons: list[errors.StorageError | None] = []
    async with einstein.locks.lease(
        path, lock_id="node-a:1", expiry=1.5, on_lost=reasons.append
    ) as lease:
        # Someone steals the lock: releases ours and takes it for another app.
        await einstein.locks.unlock(path, lease.lock)
        await einstein.locks.set(path, Lock(lock_id="thief", app_name="office",
                                            expiration=float(int(time.time() + 60))))
        with anyio.fail_after(3):
            await lease.lost.wait()
        assert not lease.held
        assert len(reasons) == 1 and isinstance(reasons[0], errors.LockConflict)
        with pytest.raises(errors.LockConflict):
            await einstein.files.write(path, b"late write", lock=lease.lock)
    # Leaving a lost lease must not release the new holder's lock.
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "thief"
    assert await einstein.files.read(path) == b"{}"


async def test_lease_refresh_never_takes_over_another_node_of_the_same_app(
    einstein: Session, workdir: str
) -> None:
    """Two nodes of one app: Reva master accepts a same-app refresh with another id (it
    replaces the id). The lease proves its own id, so it finds out it lost the lock."""
    path = f"{workdir}/lease.ipynb"
    await einstein.files.write(path, b"{}")
    async with einstein.locks.lease(path, lock_id="node-1:1", expiry=1.5) as lease:
        # The lock passes to node 2 (node 1 was frozen past its expiry, say).
        await einstein.locks.unlock(path, lease.lock)
        other = Lock(lock_id="node-2:1", app_name="mesh_collab",
                     expiration=float(int(time.time() + 60)))
        await einstein.locks.set(path, other)
        with anyio.fail_after(3):
            await lease.lost.wait()
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "node-2:1"
