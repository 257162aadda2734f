"""Lock rules of both profiles: spec §2.1 (eos), §2.2 (edge), §2.3 side by side."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
import pytest
from cs3.rpc.v1beta1 import code_pb2 as c
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from gateway_helpers import OK, Session, connect, lock, share

from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.gateway.locks import MAX_LOCK_EXPIRY
from mesh_collab.cs3.gateway.storage import HIDDEN_LOCK_ID

F = "/home/einstein/f.txt"
REF = res.Reference(path=F)


def by_profile(eos: int, edge: int) -> dict[str, int]:
    return {"eos": eos, "edge": edge}


@pytest.fixture
async def s(profiled_gateway: EmbeddedGateway) -> AsyncIterator[Session]:
    async with connect(profiled_gateway, "einstein") as session:
        code, _, http = await session.put(F, b"v1")
        assert (code, http) == (OK, 200)
        yield session


async def set_lock(s: Session, lk: res.Lock, ref: res.Reference = REF) -> int:
    return (await s.call("SetLock", sp.SetLockRequest(ref=ref, lock=lk))).status.code


async def get_lock(s: Session, ref: res.Reference = REF) -> sp.GetLockResponse:
    return await s.call("GetLock", sp.GetLockRequest(ref=ref))


async def refresh(s: Session, lk: res.Lock, existing: str = "") -> int:
    req = sp.RefreshLockRequest(ref=REF, lock=lk, existing_lock_id=existing)
    return (await s.call("RefreshLock", req)).status.code


async def unlock(s: Session, lk: res.Lock) -> int:
    return (await s.call("Unlock", sp.UnlockRequest(ref=REF, lock=lk))).status.code


async def test_set_get_basic(s: Session) -> None:
    assert (await get_lock(s)).status.code == c.CODE_NOT_FOUND
    assert await set_lock(s, lock("A", app="app1")) == OK
    got = await get_lock(s)
    assert got.status.code == OK
    assert (got.lock.lock_id, got.lock.app_name) == ("A", "app1")
    assert got.lock.creation_time.seconds > 0
    # SetLock on any live lock, even one's own identical lock: FAILED_PRECONDITION.
    assert await set_lock(s, lock("A", app="app1")) == c.CODE_FAILED_PRECONDITION
    assert await set_lock(s, lock("B", app="other")) == c.CODE_FAILED_PRECONDITION
    stat = await s.stat(F)
    assert stat.info.lock.lock_id == "A"


@pytest.mark.parametrize(
    ("lk", "existing", "expected", "stored_after"),
    [
        (partial(lock, "A", app="app1"), "", by_profile(OK, OK), "A"),
        (partial(lock, "B", app="app1"), "", by_profile(OK, c.CODE_ABORTED), None),
        (partial(lock, "B", app="app1"), "X",
         by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_ABORTED), "A"),
        (partial(lock, "B", app="app1"), "A", by_profile(OK, OK), "B"),
        (partial(lock, "A", app="app2"), "",
         by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_PERMISSION_DENIED), "A"),
    ],
    ids=["same", "new-id-no-existing", "wrong-existing", "right-existing", "wrong-app"],
)
# The locks are built when each test runs: their expiry counts from then, not from collection.
async def test_refresh_table(
    s: Session, profile: str, lk: Callable[[], res.Lock], existing: str,
    expected: dict[str, int], stored_after: str | None,
) -> None:
    assert await set_lock(s, lock("A", app="app1")) == OK
    assert await refresh(s, lk(), existing) == expected[profile]
    after = (await get_lock(s)).lock.lock_id
    if stored_after is None:  # eos replaces the id, edge refuses
        stored_after = "B" if profile == "eos" else "A"
    assert after == stored_after


async def test_refresh_not_locked(s: Session) -> None:
    assert await refresh(s, lock("A", app="app1")) == c.CODE_FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("lk", "expected"),
    [
        (partial(lock, "B", app="app1"), by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_LOCKED)),
        (partial(lock, "A", app="app2"),
         by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_PERMISSION_DENIED)),
        (partial(lock, "A", app="app1"), by_profile(OK, OK)),
    ],
    ids=["wrong-id", "wrong-app", "holder"],
)
async def test_unlock_table(
    s: Session, profile: str, lk: Callable[[], res.Lock], expected: dict[str, int]
) -> None:
    assert await set_lock(s, lock("A", app="app1")) == OK
    assert await unlock(s, lk()) == expected[profile]


async def test_unlock_not_locked(s: Session, profile: str) -> None:
    expected = by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_ABORTED)
    assert await unlock(s, lock("A", app="app1")) == expected[profile]


async def test_empty_lock_id(s: Session, profile: str) -> None:
    assert await set_lock(s, lock("", app="app1")) == c.CODE_INVALID_ARGUMENT
    assert await set_lock(s, lock("A", app="app1")) == OK
    if profile == "edge":
        assert await refresh(s, lock("", app="app1")) == c.CODE_INVALID_ARGUMENT
        assert await unlock(s, lock("", app="app1")) == c.CODE_INVALID_ARGUMENT


async def test_shared_lock(s: Session, profile: str) -> None:
    shared = lock("S", app="app1", type=res.LOCK_TYPE_SHARED)
    expected = by_profile(c.CODE_INTERNAL, OK)
    assert await set_lock(s, shared) == expected[profile]
    if profile == "edge":
        # No holder checks on SHARED locks: another app may refresh and unlock.
        assert await refresh(s, lock("S", app="other", type=res.LOCK_TYPE_SHARED)) == OK
        assert await unlock(s, lock("S", app="other")) == OK


async def test_an_app_lock_belongs_to_its_user(
    profiled_gateway: EmbeddedGateway, s: Session, profile: str
) -> None:
    # Reva lets any user of the same app refresh or release a user-less app lock; here the
    # lock is its setter's, and a lock id (which every writer can read) proves nothing.
    await share(s, F, "marie", editor=True)
    await share(s, F, "richard", editor=True)
    refused = by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_PERMISSION_DENIED)[profile]
    async with connect(profiled_gateway, "marie") as marie, \
            connect(profiled_gateway, "richard") as richard:
        # Nobody takes a lock in another user's name.
        assert await set_lock(marie, lock("R", app="app1", user=richard.user.id)) == (
            c.CODE_PERMISSION_DENIED
        )
        assert await set_lock(marie, lock("M", app="app1", user=marie.user.id)) == OK
        assert (await get_lock(richard)).lock.lock_id == "M"  # an editor sees the id
        assert await refresh(richard, lock("M", app="app1")) == refused
        assert await refresh(richard, lock("R", app="app1"), existing="M") == refused
        assert await unlock(richard, lock("M", app="app1")) == refused
        assert (await get_lock(s)).lock.lock_id == "M"
        assert await refresh(marie, lock("M", app="app1"), existing="M") == OK
        assert await unlock(marie, lock("M", app="app1")) == OK
        assert (await get_lock(s)).status.code == c.CODE_NOT_FOUND


async def test_the_owner_breaks_a_grantees_lock(
    profiled_gateway: EmbeddedGateway, s: Session, profile: str
) -> None:
    await share(s, F, "marie", editor=True)
    async with connect(profiled_gateway, "marie") as marie:
        assert await set_lock(marie, lock("M", app="office")) == OK
        # Breaking is not taking over: the owner may not refresh the grantee's lock...
        refused = by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_PERMISSION_DENIED)[profile]
        assert await refresh(s, lock("M", app="office"), existing="M") == refused
        # ... and names the lock they break by its id, whatever their app.
        wrong_id = by_profile(c.CODE_FAILED_PRECONDITION, c.CODE_LOCKED)[profile]
        assert await unlock(s, lock("X", app="mesh_collab")) == wrong_id
        assert await unlock(s, lock("M", app="mesh_collab")) == OK
        assert (await get_lock(marie)).status.code == c.CODE_NOT_FOUND
        assert await set_lock(s, lock("E", app="mesh_collab")) == OK
        # The owner's own lock is theirs: the grantee cannot break it.
        assert await unlock(marie, lock("E", app="mesh_collab")) == refused


async def test_expiry(s: Session, profile: str) -> None:
    assert await set_lock(s, lock("A", app="app1", ttl=1)) == OK
    await anyio.sleep(1.3)  # the expiry itself is under test
    stat = await s.stat(F)
    if profile == "eos":
        # eosfs fills info.lock without checking the expiration.
        assert stat.info.lock.lock_id == "A"
        assert "lock" not in stat.info.opaque.map
        # ... but refresh and unlock see it expired.
        assert await refresh(s, lock("A", app="app1")) == c.CODE_FAILED_PRECONDITION
    else:
        # edge's ReadLock dropped it; refresh now finds no lock file.
        assert not stat.info.HasField("lock")
        assert await refresh(s, lock("A", app="app1")) == c.CODE_FAILED_PRECONDITION
    assert (await get_lock(s)).status.code == c.CODE_NOT_FOUND
    # SetLock over an expired lock succeeds in both.
    assert await set_lock(s, lock("B", app="app2")) == OK


async def test_edge_refresh_unread_expired_lock(s: Session, profile: str) -> None:
    assert await set_lock(s, lock("A", app="app1", ttl=1)) == OK
    await anyio.sleep(1.3)  # the expiry itself is under test
    # edge RefreshLock never checks the expiration if nobody read the lock since.
    expected = by_profile(c.CODE_FAILED_PRECONDITION, OK)
    assert await refresh(s, lock("A", app="app1", ttl=60)) == expected[profile]


async def test_edge_stat_lock_opaque(s: Session, profile: str) -> None:
    assert await set_lock(s, lock("A", app="app1")) == OK
    stat = await s.stat(F)
    assert stat.info.lock.app_name == "app1"
    if profile == "edge":
        entry = stat.info.opaque.map["lock"]
        assert entry.decoder == "json" and b'"app1"' in entry.value
    else:
        assert "lock" not in stat.info.opaque.map


@pytest.mark.parametrize(
    ("op", "lock_id", "expected"),
    [
        ("delete", "", by_profile(OK, c.CODE_LOCKED)),
        ("delete", "wrong", by_profile(OK, c.CODE_ABORTED)),
        ("delete", "A", by_profile(OK, OK)),
        ("move", "", by_profile(OK, c.CODE_LOCKED)),
        ("move", "A", by_profile(OK, OK)),
        ("setxattr", "", by_profile(OK, c.CODE_LOCKED)),
        ("setxattr", "wrong", by_profile(OK, c.CODE_ABORTED)),
        ("setxattr", "A", by_profile(OK, OK)),
        ("unsetxattr", "", by_profile(OK, c.CODE_LOCKED)),
        ("restore", "", by_profile(OK, c.CODE_LOCKED)),
        ("restore", "A", by_profile(OK, OK)),
    ],
)
async def test_ops_on_locked_file(
    s: Session, profile: str, op: str, lock_id: str, expected: dict[str, int]
) -> None:
    assert (await s.put(F, b"v2"))[2] == 200  # one version to restore
    assert await set_lock(s, lock("A", app="app1")) == OK
    assert await metadata_op(s, op, lock_id) == expected[profile]


async def test_lock_id_on_unlocked_file(s: Session, profile: str) -> None:
    expected = by_profile(OK, c.CODE_ABORTED)
    assert await metadata_op(s, "setxattr", "stray") == expected[profile]
    assert await metadata_op(s, "delete", "stray") == expected[profile]


async def metadata_op(s: Session, op: str, lock_id: str) -> int:
    if op == "delete":
        resp = await s.call("Delete", sp.DeleteRequest(ref=REF, lock_id=lock_id))
    elif op == "move":
        dst = res.Reference(path="/home/einstein/moved.txt")
        resp = await s.call("Move", sp.MoveRequest(source=REF, destination=dst, lock_id=lock_id))
    elif op == "setxattr":
        md = res.ArbitraryMetadata(metadata={"k": "v"})
        resp = await s.call("SetArbitraryMetadata", sp.SetArbitraryMetadataRequest(
            ref=REF, arbitrary_metadata=md, lock_id=lock_id))
    elif op == "unsetxattr":
        resp = await s.call("UnsetArbitraryMetadata", sp.UnsetArbitraryMetadataRequest(
            ref=REF, arbitrary_metadata_keys=["k"], lock_id=lock_id))
    else:
        versions = await s.call("ListFileVersions", sp.ListFileVersionsRequest(ref=REF))
        resp = await s.call("RestoreFileVersion", sp.RestoreFileVersionRequest(
            ref=REF, key=versions.versions[0].key, lock_id=lock_id))
    return int(resp.status.code)


@pytest.mark.parametrize(
    ("lock_id", "headers", "eos", "edge"),
    [
        # (initiate code, HTTP status)
        ("", {}, (OK, 409), (c.CODE_LOCKED, 0)),
        ("", {"X-Lock-Holder": "app1"}, (OK, 200), (c.CODE_LOCKED, 0)),
        ("A", {"X-Lock-Id": "A", "X-Lock-Holder": "app1"}, (OK, 200), (OK, 200)),
        ("wrong", {"X-Lock-Id": "wrong"}, (OK, 409), (c.CODE_INTERNAL, 0)),
        ("wrong", {"X-Lock-Holder": "App1"}, (OK, 200), (c.CODE_INTERNAL, 0)),
    ],
    ids=["nothing", "holder-only", "holder", "wrong-id", "eos-app-tag-case"],
)
async def test_upload_on_locked_file(
    s: Session, profile: str, lock_id: str, headers: dict[str, str],
    eos: tuple[int, int], edge: tuple[int, int],
) -> None:
    assert await set_lock(s, lock("A", app="app1")) == OK
    code, _, http = await s.put(F, b"new", lock_id=lock_id, headers=headers)
    assert (code, http) == (eos if profile == "eos" else edge)
    # Downloads are never lock-checked.
    assert await s.get(F) == (200, b"new" if http == 200 else b"v1")


async def test_lock_changed_between_initiate_and_put(s: Session, profile: str) -> None:
    assert await set_lock(s, lock("A", app="app1")) == OK
    req = sp.InitiateFileUploadRequest(ref=REF, lock_id="A" if profile == "edge" else "")
    init = await s.call("InitiateFileUpload", req)
    assert init.status.code == OK
    assert await unlock(s, lock("A", app="app1")) == OK
    assert await set_lock(s, lock("B", app="app2")) == OK
    proto = init.protocols[0]
    async with s.http.put(proto.upload_endpoint, data=b"late",
                          headers={"X-Lock-Holder": "app1"}) as put:
        assert put.status == (409 if profile == "eos" else 412)
    assert await s.get(F) == (200, b"v1")


async def test_eos_user_lock_enforced_on_put(einstein: Session, marie: Session) -> None:
    # The default profile is eos: a lock without app_name is held by its user.
    assert (await einstein.put(F, b"v1"))[2] == 200
    await share(einstein, F, "marie", editor=True)
    assert await set_lock(einstein, lock("U", app="")) == OK
    assert (await marie.put(F, b"marie"))[2] == 409
    assert (await einstein.put(F, b"einstein"))[2] == 200


async def test_viewer_cannot_lock(
    profiled_gateway: EmbeddedGateway, s: Session
) -> None:
    await share(s, F, "marie", editor=False)
    async with connect(profiled_gateway, "marie") as marie:
        assert await set_lock(marie, lock("M", app="app1")) == c.CODE_PERMISSION_DENIED
        assert (await get_lock(marie)).status.code == c.CODE_NOT_FOUND  # read is allowed
        assert await s.get(F) == (200, b"v1")


async def test_concurrent_setlock_exactly_one_wins(s: Session) -> None:
    results: list[int] = []

    async def attempt(i: int) -> None:
        results.append(await set_lock(s, lock(f"L{i}", app=f"app{i}")))

    async with anyio.create_task_group() as tg:
        for i in range(25):
            tg.start_soon(attempt, i)
    assert results.count(OK) == 1
    assert results.count(c.CODE_FAILED_PRECONDITION) == 24


def expiry_of(got: sp.GetLockResponse) -> float:
    return got.lock.expiration.seconds + got.lock.expiration.nanos / 1e9


async def test_lock_expiry_is_capped(s: Session, profile: str) -> None:
    # A lock without expiration (EOS: never) or a later one lives MAX_LOCK_EXPIRY at most.
    before = time.time()
    assert await set_lock(s, lock("A", app="app1", ttl=None)) == OK
    capped = expiry_of(await get_lock(s))
    assert before + MAX_LOCK_EXPIRY <= capped <= time.time() + MAX_LOCK_EXPIRY
    assert await refresh(s, lock("A", app="app1", ttl=30 * 86400)) == OK
    assert expiry_of(await get_lock(s)) <= time.time() + MAX_LOCK_EXPIRY
    assert await refresh(s, lock("A", app="app1", ttl=None)) == OK
    assert expiry_of(await get_lock(s)) <= time.time() + MAX_LOCK_EXPIRY
    # A shorter expiry, such as mesh_collab's 60 s, is kept as asked.
    short = lock("A", app="app1", ttl=60)
    assert await refresh(s, short) == OK
    assert expiry_of(await get_lock(s)) == pytest.approx(
        short.expiration.seconds + short.expiration.nanos / 1e9, abs=1e-3)


async def test_viewers_see_who_holds_a_lock_but_not_its_id(
    profiled_gateway: EmbeddedGateway, profile: str
) -> None:
    async with connect(profiled_gateway, "einstein") as owner, \
            connect(profiled_gateway, "marie") as viewer, \
            connect(profiled_gateway, "richard") as editor:
        folder = "/home/einstein/d"
        made = await owner.call("CreateContainer", sp.CreateContainerRequest(
            ref=res.Reference(path=folder)))
        assert made.status.code == OK
        path = f"{folder}/nb.ipynb"
        assert (await owner.put(path, b"{}"))[2] == 200
        await share(owner, folder, "marie", editor=False)
        await share(owner, folder, "richard", editor=True)
        secret = "opaquelocktoken:0123 c2Vzc2lvbg=="
        ref = res.Reference(path=path)
        assert await set_lock(owner, lock(secret, app="Collabora"), ref) == OK

        seen = await viewer.stat(path)
        listed = await viewer.call("ListContainer", sp.ListContainerRequest(
            ref=res.Reference(path=folder)))
        got = await get_lock(viewer, ref)
        assert got.status.code == OK
        for shown in (seen.info.lock, listed.infos[0].lock, got.lock):
            assert shown.app_name == "Collabora"
            assert shown.lock_id == HIDDEN_LOCK_ID
            assert shown.expiration.seconds > time.time()
        assert secret.encode() not in seen.SerializeToString()
        assert secret.encode() not in listed.SerializeToString()
        if profile == "edge":
            assert b"Collabora" in seen.info.opaque.map["lock"].value
        # Whoever may write sees the id (it is what a write through the lock presents).
        for session in (owner, editor):
            assert (await session.stat(path)).info.lock.lock_id == secret
            assert (await get_lock(session, ref)).lock.lock_id == secret


async def test_eos_app_tag_alone_writes_for_the_lock_user_only(
    einstein: Session, marie: Session
) -> None:
    # Default profile eos. The app tag (X-Lock-Holder) is the lock user's; another writer
    # presents the lock's id as well.
    assert (await einstein.put(F, b"v1"))[2] == 200
    await share(einstein, F, "marie", editor=True)
    assert await set_lock(einstein, lock("A", app="app1")) == OK
    holder = {"X-Lock-Holder": "app1"}
    assert (await marie.put(F, b"marie", headers=holder))[2] == 409
    assert (await marie.put(F, b"marie", headers={**holder, "X-Lock-Id": "B"}))[2] == 409
    assert (await marie.put(F, b"marie", headers={**holder, "X-Lock-Id": "A"}))[2] == 200
    assert (await marie.put(F, b"again", lock_id="A", headers=holder))[2] == 200
    assert (await einstein.put(F, b"einstein", headers=holder))[2] == 200
    assert await einstein.get(F) == (200, b"einstein")
