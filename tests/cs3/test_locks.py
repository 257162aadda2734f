"""Locks: lifecycles, races, expiry and enforcement on writes, in both Reva lock profiles.

The expected answers are the tables of shared/cs3-semantics.md §2.3: every lock conflict is a
:class:`LockConflict` through mesh_collab's client, whatever code the lineage uses; what
differs between profiles is *whether* some operations are refused at all.
"""

from __future__ import annotations

import time

import anyio
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway.locks import MAX_LOCK_EXPIRY
from mesh_collab.cs3.models import Lock, Role
from mesh_collab.pytest_plugin import Site


def app_lock(lock_id: str, app: str = "mesh_collab", ttl: float = 60) -> Lock:
    return Lock(lock_id=lock_id, app_name=app, expiration=float(int(time.time() + ttl)))


async def test_lock_lifecycle(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    assert await einstein.locks.get(path) is None
    await einstein.locks.set(path, app_lock("id-1"))
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "id-1" and held.app_name == "mesh_collab"
    assert (await einstein.files.stat(path)).lock is not None
    await einstein.locks.refresh(path, app_lock("id-1", ttl=120))
    refreshed = await einstein.locks.get(path)
    assert refreshed is not None and refreshed.expiration > held.expiration
    await einstein.locks.unlock(path, app_lock("id-1"))
    assert await einstein.locks.get(path) is None


async def test_set_lock_on_a_locked_file_fails_even_for_the_holder(
    einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    await einstein.locks.set(path, app_lock("id-1"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.set(path, app_lock("id-1"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.set(path, app_lock("id-2", app="office"))


async def test_concurrent_set_lock_exactly_one_wins(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/race.ipynb"
    await einstein.files.write(path, b"{}")
    winners: list[str] = []
    losers: list[str] = []

    async def contender(i: int) -> None:
        try:
            await einstein.locks.set(path, app_lock(f"contender-{i}"))
        except errors.LockConflict:
            losers.append(f"contender-{i}")
        else:
            winners.append(f"contender-{i}")

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(contender, i)
    assert len(winners) == 1 and len(losers) == 19
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == winners[0]


async def test_unlock_and_refresh_by_another_holder_fail(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    await einstein.locks.set(path, app_lock("id-1"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.unlock(path, app_lock("wrong-id"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.unlock(path, app_lock("id-1", app="office"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.refresh(path, app_lock("id-1", app="office"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.refresh(path, app_lock("id-2"), existing_lock_id="wrong-id")
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "id-1"


async def test_refresh_and_unlock_of_an_unlocked_file_fail(
    einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    with pytest.raises(errors.LockConflict):
        await einstein.locks.refresh(path, app_lock("id-1"))
    with pytest.raises(errors.LockConflict):
        await einstein.locks.unlock(path, app_lock("id-1"))


async def test_refresh_with_a_new_id(site: Site, einstein: Session, workdir: str) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    await einstein.locks.set(path, app_lock("id-1"))
    # Replacing the id while proving the old one (WOPI UnlockAndRelock) works everywhere.
    await einstein.locks.refresh(path, app_lock("id-2"), existing_lock_id="id-1")
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "id-2"
    # Without proof: master/EOS replaces the id, edge refuses (ABORTED).
    if site.profile == "eos":
        await einstein.locks.refresh(path, app_lock("id-3"))
        expected = "id-3"
    else:
        with pytest.raises(errors.LockConflict):
            await einstein.locks.refresh(path, app_lock("id-3"))
        expected = "id-2"
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == expected


async def test_lock_expires(site: Site, einstein: Session, marie: Session, workdir: str) -> None:
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    lock = Lock(lock_id="short", app_name="mesh_collab", expiration=float(int(time.time()) + 2))
    await einstein.locks.set(path, lock)
    assert await einstein.locks.get(path) is not None
    # The thing tested is expiry itself: wait for the lock's expiration to pass.
    await anyio.sleep(max(0.0, lock.expiration - time.time()) + 1.0)
    assert await einstein.locks.get(path) is None
    info = await einstein.files.stat(path)
    if site.profile == "eos":
        # Reva master fills info.lock from the xattr even when it has expired (§2.1).
        assert info.lock is None or info.lock.expired(time.time())
    else:
        assert info.lock is None
    await einstein.locks.set(path, app_lock("next", app="office"))
    held = await einstein.locks.get(path)
    assert held is not None and held.lock_id == "next"


async def test_nobody_else_overwrites_a_locked_file(
    site: Site, einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/locked.ipynb"
    await einstein.files.write(path, b"original")
    mine = app_lock("holder-1")
    await einstein.locks.set(path, mine)
    # Another app, no lock id: master refuses the PUT (409), edge the initiate (LOCKED).
    with pytest.raises(errors.LockConflict):
        await einstein.files.write(path, b"intruder")
    # Another app, with its own lock id.
    with pytest.raises(errors.LockConflict):
        await einstein.files.write(path, b"intruder", lock=app_lock("other", app="office"))
    assert await einstein.files.read(path) == b"original"
    # The holder writes.
    await einstein.files.write(path, b"by holder", lock=mine)
    assert await einstein.files.read(path) == b"by holder"


async def test_downloads_are_never_lock_checked(einstein: Session, workdir: str) -> None:
    path = f"{workdir}/r.ipynb"
    await einstein.files.write(path, b"readable")
    await einstein.locks.set(path, app_lock("holder-1"))
    assert await einstein.files.read(path) == b"readable"


async def test_metadata_operations_on_a_locked_file(
    site: Site, einstein: Session, workdir: str
) -> None:
    path = f"{workdir}/meta.ipynb"
    await einstein.files.write(path, b"{}")
    lock = app_lock("holder-1")
    await einstein.locks.set(path, lock)
    if site.profile == "eos":
        # Reva master ignores lock ids outside writes: allowed without one (§2.1).
        await einstein.files.set_metadata(path, {"k": "v"})
        await einstein.files.move(path, f"{workdir}/moved.ipynb")
        await einstein.files.delete(f"{workdir}/moved.ipynb")
    else:
        for call in (
            einstein.files.set_metadata(path, {"k": "v"}),
            einstein.files.move(path, f"{workdir}/moved.ipynb"),
            einstein.files.delete(path),
            einstein.files.set_metadata(path, {"k": "v"}, lock_id="wrong"),
        ):
            with pytest.raises(errors.LockConflict):
                await call
        await einstein.files.set_metadata(path, {"k": "v"}, lock_id=lock.lock_id)
        await einstein.files.move(path, f"{workdir}/moved.ipynb", lock_id=lock.lock_id)
        assert (await einstein.files.stat(f"{workdir}/moved.ipynb")).metadata["k"] == "v"


async def test_lock_id_on_an_unlocked_file(site: Site, einstein: Session, workdir: str) -> None:
    path = f"{workdir}/free.ipynb"
    await einstein.files.write(path, b"{}")
    if site.profile == "edge":
        # decomposedfs CheckLock: a lock id for an unlocked file is ABORTED (§2.2).
        with pytest.raises(errors.LockConflict):
            await einstein.files.delete(path, lock_id="stale")
    else:
        await einstein.files.delete(path, lock_id="stale")


# ---- the embedded gateway's own rules (Reva decides on the app name, and caps nothing) ----


def embedded_only(site: Site) -> None:
    if not site.embedded:
        pytest.skip("a rule of the embedded gateway: Reva lets any user of the app act")


async def test_only_the_locks_user_refreshes_it_and_the_owner_may_break_it(
    site: Site, einstein: Session, marie: Session, workdir: str
) -> None:
    embedded_only(site)
    info = await einstein.files.write(f"{workdir}/l.ipynb", b"{}")
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    async with marie.locks.lease(info.id, lock_id="marie:1", expiry=60) as lease:
        seen = await einstein.locks.get(info.id)
        assert seen is not None and seen.lock_id == "marie:1"
        # Knowing the id (every writer can read it) does not make einstein its holder.
        with pytest.raises(errors.LockConflict):
            await einstein.locks.refresh(info.id, app_lock("einstein:1"),
                                         existing_lock_id="marie:1")
        assert await lease.confirm()
        # As the file's owner, he may break it.
        await einstein.locks.unlock(info.id, seen)
        assert not await lease.confirm()
        assert lease.lost.is_set()
    assert await einstein.locks.get(info.id) is None


async def test_a_lock_lives_thirty_minutes_at_most(
    site: Site, einstein: Session, workdir: str
) -> None:
    embedded_only(site)
    path = f"{workdir}/l.ipynb"
    await einstein.files.write(path, b"{}")
    await einstein.locks.set(path, app_lock("id-1", ttl=7 * 86400))
    held = await einstein.locks.get(path)
    assert held is not None and held.expiration <= time.time() + MAX_LOCK_EXPIRY
    await einstein.locks.refresh(path, Lock(lock_id="id-1", app_name="mesh_collab"))
    held = await einstein.locks.get(path)
    assert held is not None and 0 < held.expiration <= time.time() + MAX_LOCK_EXPIRY
