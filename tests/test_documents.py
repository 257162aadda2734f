"""Notebook rooms against the embedded CS3 gateway: checkpoints, locks, external changes,
restarts. Clients are pycrdt Docs synced by pycrdt's own Provider."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc, Provider

from mesh_collab import errors, notebook
from mesh_collab.channel import ChannelClosed, memory_channel_pair
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Lock, Role
from mesh_collab.cs3.store import META_LINEAGE
from mesh_collab.documents import RoomSettings
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog
from tests.data import NOTEBOOKS as DATA
from tests.helpers import EINSTEIN, MARIE, append, client, eventually, until

FAST = RoomSettings(
    site="site-a", node_id="n1", lock_expiry=3, quiet_period=0.2, max_interval=1.0,
    poll_interval=0.3,
)


def data_notebook(name: str) -> bytes:
    return (DATA / name).read_bytes()


@asynccontextmanager
async def node(tmp_path: Path, settings: RoomSettings = FAST) -> AsyncIterator[CollabServer]:
    async with UpdateLog(tmp_path / "node" / "updates.sqlite") as log:
        async with CollabServer(updatelog=log, settings=settings, cleanup_delay=0.5) as server:
            yield server


async def put_notebook(session: Session, name: str, content: bytes) -> Any:
    return await session.files.write(f"/home/einstein/{name}", content)


@pytest.fixture
async def cs3(gateway_factory, cs3_client_factory):
    gw = await gateway_factory()
    return await cs3_client_factory(gw.grpc_address)


@pytest.fixture
async def einstein(cs3) -> Session:
    return await cs3.login("einstein", "relativity")


@pytest.fixture
async def marie(cs3) -> Session:
    return await cs3.login("marie", "radioactivity")


async def test_two_editors_and_checkpoint_under_continuous_typing(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "run.ipynb", data_notebook("Running_Code.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a, client(
            server, tg, info.id, einstein, MARIE
        ) as b:
            assert len(a.nb.ycells) == 28
            start = time.monotonic()
            # Type without pause for longer than max_interval: a checkpoint must still happen.
            written = None
            while time.monotonic() - start < 3 and written is None:
                append(a.nb.ycells[0], "x")
                await anyio.sleep(0.05)  # a typist's pace, not synchronisation
                versions = await einstein.versions.list(info.id)
                if versions:
                    written = versions
            assert written, "no checkpoint while typing continuously"
            await until(lambda: b.source(0) == a.source(0), b.doc)
            append(b.nb.ycells[1], " from marie")
            await until(lambda: a.source(1).endswith(" from marie"), a.doc)
        # Last client left: a final checkpoint with everything.
        async def saved() -> bool:
            nb = notebook.from_bytes(await einstein.files.read(info.id))
            src = nb["cells"][1]["source"]
            return src.endswith(" from marie")
        await eventually(saved)
        nb = notebook.from_bytes(await einstein.files.read(info.id))
        assert len(nb["cells"]) == 28  # a valid notebook, nothing duplicated
        stat = await einstein.files.stat(info.id)
        assert stat.metadata[META_LINEAGE]
        tg.cancel_scope.cancel()


async def test_room_holds_the_lock_while_open_and_releases_it(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "l.ipynb", data_notebook("notebook3.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN):
            lock = await eventually(lambda: einstein.locks.get(info.id))
            assert lock.app_name == "mesh_collab" and "site-a" in lock.lock_id
        await eventually(lambda: _unlocked(einstein, info.id))
        tg.cancel_scope.cancel()


async def _unlocked(session: Session, rid: Any) -> bool:
    return await session.locks.get(rid) is None


async def test_foreign_lock_opens_read_only_then_editable(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "f.ipynb", data_notebook("notebook3.ipynb"))
    office = Lock(lock_id="office-1", app_name="office", expiration=float(int(time.time() + 60)))
    await einstein.locks.set(info.id, office)
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            await eventually(lambda: _is(nb_room, "other"))
            assert nb_room.room.status["holder"] == "office"
            before = await einstein.files.read(info.id)
            append(a.nb.ycells[0], "# refused while locked")
            await nb_room.room.flush()
            assert "refused" not in str(nb_room.ynotebook.ycells[0]["source"])
            await einstein.locks.unlock(info.id, office)
            await eventually(lambda: _is(nb_room, "held"))
            assert await einstein.files.read(info.id) == before  # never overwrote office's file
        tg.cancel_scope.cancel()


async def _is(nb_room: Any, state: str) -> bool:
    return nb_room.room.status.get("lock") == state


async def test_lost_lock_stops_all_writing(tmp_path: Path, einstein: Session) -> None:
    info = await put_notebook(einstein, "lost.ipynb", data_notebook("notebook3.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            await eventually(lambda: _is(nb_room, "held"))
            ours = await einstein.locks.get(info.id)
            # Another application steals the lock.
            await einstein.locks.unlock(info.id, ours)
            thief = Lock("thief", app_name="office", expiration=float(int(time.time() + 60)))
            await einstein.locks.set(info.id, thief)
            await eventually(lambda: _not_held(nb_room))
            stolen_content = await einstein.files.read(info.id)
            append(a.nb.ycells[0], "# after the theft")
            await anyio.sleep(FAST.max_interval + 0.5)  # a checkpoint would be due by now
            assert await einstein.files.read(info.id) == stolen_content
            assert not nb_room.checkpointer.enabled
        tg.cancel_scope.cancel()


async def _not_held(nb_room: Any) -> bool:
    return nb_room.room.status.get("lock") in ("lost", "other")


async def test_external_change_is_merged_with_concurrent_edits(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "ext.ipynb", data_notebook("Running_Code.ipynb"))
    settings = RoomSettings(site="site-a", node_id="n1", lock_expiry=3, quiet_period=30,
                            max_interval=60, poll_interval=0.2)
    async with node(tmp_path, settings) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            await eventually(lambda: _is(nb_room, "held"))
            cell3 = a.nb.ycells[3]
            append(a.nb.ycells[5], "\n# unsaved live edit")
            await nb_room.room.flush()
            # Someone writes the file behind our back (e.g. a sync client), with our lock id
            # unknown to them: use the room's own lock to get past it, as a co-owner tool would.
            disk = json.loads(data_notebook("Running_Code.ipynb"))
            disk["cells"][2]["source"] = "EXTERNAL " + "".join(disk["cells"][2]["source"])
            lock = nb_room._lease.lock
            await einstein.files.write(info.id, notebook.to_bytes(disk), lock=lock)
            await until(lambda: a.source(2).startswith("EXTERNAL "), a.doc)
            assert a.source(5).endswith("# unsaved live edit")  # survived the merge
            assert a.nb.ycells[3] is not None and str(cell3["source"]) == a.source(3)
            assert len(a.nb.ycells) == 28
        tg.cancel_scope.cancel()


async def test_an_outside_change_met_after_the_lock_was_lost_is_left_to_the_next_holder(
    tmp_path: Path, einstein: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is on its way when another application takes the lock, writes the file
    and lets go. The room's write meets the new file (etag mismatch) after its lease is
    lost: it must not merge that change (with two nodes, the next holder merges it too, and
    it is in the notebook twice), but leave it to whoever holds the lock next; here, the
    room itself once it takes the lock back, and the change is then in exactly once."""
    info = await put_notebook(einstein, "late.ipynb", data_notebook("Running_Code.ipynb"))
    set_lock = einstein.locks.set
    may_lock = [anyio.Event()]  # replaced by an unset one while the room must not lock
    may_lock[0].set()

    async def gated_set(*args: Any, **kwargs: Any) -> Any:
        await may_lock[0].wait()
        return await set_lock(*args, **kwargs)

    monkeypatch.setattr(einstein.locks, "set", gated_set)
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            await eventually(lambda: _is(nb_room, "held"))
            save = nb_room.store.save
            attempted = anyio.Event()

            async def save_after_a_theft(*args: Any, **kwargs: Any) -> Any:
                nb_room.store.save = save  # once
                may_lock[0] = anyio.Event()  # the room cannot take the lock back meanwhile
                ours = await einstein.locks.get(info.id)
                await einstein.locks.unlock(info.id, ours)
                thief = Lock("office-1", app_name="office",
                             expiration=float(int(time.time() + 60)))
                await set_lock(info.id, thief)
                disk = json.loads(await einstein.files.read(info.id))
                disk["cells"][2]["source"] = "OUTSIDE " + "".join(disk["cells"][2]["source"])
                await einstein.files.write(info.id, notebook.to_bytes(disk), lock=thief)
                await einstein.locks.unlock(info.id, thief)
                await eventually(lambda: _not_held(nb_room) or _is(nb_room, "none"))
                try:
                    return await save(*args, **kwargs)
                finally:
                    attempted.set()

            monkeypatch.setattr(nb_room.store, "save", save_after_a_theft)
            append(a.nb.ycells[0], " tok-live")  # a checkpoint is due soon
            with anyio.fail_after(10):
                await attempted.wait()
            async with nb_room._storage_lock:  # that checkpoint attempt is over
                assert "OUTSIDE" not in str(nb_room.ynotebook.ycells[2]["source"])
            may_lock[0].set()
            await until(lambda: a.source(2).startswith("OUTSIDE "), a.doc)
            await nb_room.room.flush()
        await eventually(lambda: _unlocked(einstein, info.id))
        tg.cancel_scope.cancel()
    saved = (await einstein.files.read(info.id)).decode()
    assert saved.count("OUTSIDE ") == 1
    assert saved.count(" tok-live") == 1


async def test_a_checkpoint_whose_answer_was_lost_is_recognised_not_merged_again(
    tmp_path: Path, einstein: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload of a checkpoint reaches storage but its answer is lost (a deadline): the
    room retries, meets a file it does not know, and must recognise its own checkpoint by
    the state stored for exactly those bytes, not merge it as a change made outside (which
    would insert the new text a second time)."""
    info = await put_notebook(einstein, "lost-answer.ipynb", data_notebook("Running_Code.ipynb"))
    write = einstein.files.write
    armed = anyio.Event()
    failed = anyio.Event()

    async def write_and_lose_the_answer(ref: Any, *args: Any, **kwargs: Any) -> Any:
        result = await write(ref, *args, **kwargs)
        if armed.is_set() and ref == info.id and not failed.is_set():
            failed.set()
            raise errors.StorageError("deadline exceeded", op="PUT", code="DEADLINE")
        return result

    monkeypatch.setattr(einstein.files, "write", write_and_lose_the_answer)
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            append(a.nb.ycells[0], " tok-first")
            await eventually(lambda: _file_has(einstein, info.id, " tok-first"))
            armed.set()
            append(a.nb.ycells[1], " tok-second")
            with anyio.fail_after(10):
                await failed.wait()
            await nb_room.room.flush()
            await eventually(lambda: _saved_all(einstein, nb_room, " tok-second"))
            assert str(nb_room.ynotebook.ycells[1]["source"]).count(" tok-second") == 1
        tg.cancel_scope.cancel()
    saved = (await einstein.files.read(info.id)).decode()
    assert saved.count(" tok-first") == 1
    assert saved.count(" tok-second") == 1


async def _file_has(session: Session, rid: Any, text: str) -> bool:
    return text in (await session.files.read(rid)).decode()


async def _saved_all(session: Session, nb_room: Any, text: str) -> bool:
    return not nb_room.checkpointer.dirty and await _file_has(session, nb_room.resource_id, text)


async def test_viewer_share_is_read_only(
    tmp_path: Path, einstein: Session, marie: Session
) -> None:
    info = await put_notebook(einstein, "v.ipynb", data_notebook("notebook3.ipynb"))
    assert marie.user is not None
    await einstein.shares.create(info.id, marie.user.id, Role.VIEWER)
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a, client(
            server, tg, info.id, marie, MARIE, writable=False
        ) as m:
            append(a.nb.ycells[0], "# by einstein")
            await until(lambda: m.source(0).endswith("# by einstein"), m.doc)
            append(m.nb.ycells[0], "# by marie")
            append(a.nb.ycells[1], "# again")
            await until(lambda: m.source(1).endswith("# again"), m.doc)
            assert "# by marie" not in a.source(0)
        tg.cancel_scope.cancel()


async def test_restart_keeps_the_lineage_and_merges_offline_edits(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "r.ipynb", data_notebook("Running_Code.ipynb"))
    keep = Doc()
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            append(a.nb.ycells[0], " before restart")
            await server.rooms[info.id].room.flush()
        tg.cancel_scope.cancel()
    # Offline edit while the node is down.
    append(YNotebook(ydoc=keep).ycells[1], " offline")
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            nb_room = server.rooms[info.id]
            await until(lambda: str(nb_room.ynotebook.ycells[1]["source"]).endswith(" offline"),
                        nb_room.room.doc)
            cells = notebook.to_notebook(nb_room.ynotebook)["cells"]
            assert len(cells) == 28  # no duplicated cells
            assert cells[0]["source"].count(" before restart") == 1
            assert a.source(0).count(" before restart") == 1
        tg.cancel_scope.cancel()


async def test_recovery_from_the_crdt_state_in_cs3(tmp_path: Path, einstein: Session) -> None:
    """Another node, with no local log, recovers the same lineage from CS3."""
    info = await put_notebook(einstein, "c.ipynb", data_notebook("Running_Code.ipynb"))
    keep = Doc()
    async with node(tmp_path / "one") as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            append(a.nb.ycells[0], " saved")
        tg.cancel_scope.cancel()
    append(YNotebook(ydoc=keep).ycells[2], " offline")
    async with node(tmp_path / "two") as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep):
            nb_room = server.rooms[info.id]
            await until(lambda: str(nb_room.ynotebook.ycells[2]["source"]).endswith(" offline"),
                        nb_room.room.doc)
            cells = notebook.to_notebook(nb_room.ynotebook)["cells"]
            assert len(cells) == 28
            assert cells[0]["source"].count(" saved") == 1
        tg.cancel_scope.cancel()


async def test_restore_goes_through_the_live_room(tmp_path: Path, einstein: Session) -> None:
    info = await put_notebook(einstein, "h.ipynb", data_notebook("Running_Code.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            nb_room = server.rooms[info.id]
            await eventually(lambda: _is(nb_room, "held"))
            append(a.nb.ycells[0], " # later edit")
            await until(
                lambda: str(nb_room.ynotebook.ycells[0]["source"]).endswith(" # later edit"),
                nb_room.room.doc,
            )
            await nb_room.room.flush()
            assert await nb_room.checkpointer.flush()
            (version,) = await einstein.versions.list(info.id)
            kept = a.nb.ycells[5]
            await nb_room.restore_version(einstein, version.key)
            await until(lambda: not a.source(0).endswith(" # later edit"), a.doc)
            assert a.nb.ycells[5] is not None and str(kept["source"]) == a.source(5)
            assert len(a.nb.ycells) == 28
        tg.cancel_scope.cancel()


async def test_a_direct_hold_keeps_the_room_open_without_clients(
    tmp_path: Path, einstein: Session
) -> None:
    """open_direct counts as a client (a kernel writing outputs): the room stays while held,
    closes cleanup_delay after, and a hold asked for while it closes gets a new room."""
    info = await put_notebook(einstein, "held.ipynb", data_notebook("notebook3.ipynb"))
    async with node(tmp_path) as server:
        async with server.open_direct(info.id, einstein) as nb:
            entry = server._rooms[info.id]
            # Twice the cleanup delay without a client: time passing is what is tested.
            with anyio.move_on_after(2 * server.cleanup_delay):
                await entry.closed.wait()
            assert server.rooms[info.id] is nb and not entry.closing
        with anyio.fail_after(10):
            # The room decides to close cleanup_delay later; there is no event for that
            # moment, and the closing lasts only a few loop turns: watch at every turn.
            while not entry.closing:
                await anyio.lowlevel.checkpoint()
        async with server.open_direct(info.id, einstein) as again:
            assert entry.closed.is_set() and again is not nb
            assert server.rooms[info.id] is again


async def test_a_checkpoint_of_another_node_is_applied_not_merged_again(
    tmp_path: Path, einstein: Session
) -> None:
    """Node one reopens from its local log after node two checkpointed edits that node one's
    client carries too: the file is a checkpoint of the same lineage, so its CRDT state is
    applied (nothing inserted twice), not merged as an outside change against node one's
    older base."""
    info = await put_notebook(einstein, "mates.ipynb", data_notebook("Running_Code.ipynb"))
    keep = Doc()
    async with node(tmp_path / "one") as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            append(a.nb.ycells[0], " tok-from-one")
            nb_room = server.rooms[info.id]
            await until(lambda: " tok-from-one" in str(nb_room.ynotebook.ycells[0]["source"]),
                        nb_room.room.doc)
            await nb_room.room.flush()
        tg.cancel_scope.cancel()
    two = dataclasses.replace(FAST, node_id="n2")
    async with node(tmp_path / "two", two) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            append(a.nb.ycells[1], " tok-from-two")
            nb_room = server.rooms[info.id]
            await until(lambda: " tok-from-two" in str(nb_room.ynotebook.ycells[1]["source"]),
                        nb_room.room.doc)
            await nb_room.room.flush()
        tg.cancel_scope.cancel()
    saved = json.loads(await einstein.files.read(info.id))
    assert "".join(saved["cells"][1]["source"]).count(" tok-from-two") == 1
    append(YNotebook(ydoc=keep).ycells[2], " tok-offline")
    async with node(tmp_path / "one") as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN, doc=keep) as a:
            nb_room = server.rooms[info.id]
            await until(lambda: " tok-offline" in str(nb_room.ynotebook.ycells[2]["source"]),
                        nb_room.room.doc)
            await nb_room.room.flush()
            live = json.dumps(notebook.to_notebook(nb_room.ynotebook))
            for token in (" tok-from-one", " tok-from-two", " tok-offline"):
                assert live.count(token) == 1, token
                assert json.dumps([a.source(i) for i in range(3)]).count(token) == 1, token
        tg.cancel_scope.cancel()
    saved = (await einstein.files.read(info.id)).decode()
    for token in (" tok-from-one", " tok-from-two", " tok-offline"):
        assert saved.count(token) == 1, token


async def test_edits_of_a_user_who_leaves_before_the_lock_is_taken_are_checkpointed(
    tmp_path: Path, einstein: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow SetLock (a busy Reva): the user types and leaves before the node holds the
    lock. The room's last checkpoint waits for the lock and writes the edit to the file
    (before, it failed with "not holding the lock" and the edit stayed in the local log)."""
    info = await put_notebook(einstein, "slowlock.ipynb", data_notebook("Running_Code.ipynb"))
    set_lock = einstein.locks.set

    async def slow_set(*args: Any, **kwargs: Any) -> Any:
        await anyio.sleep(1.0)  # storage latency, not a wait for an outcome
        return await set_lock(*args, **kwargs)

    monkeypatch.setattr(einstein.locks, "set", slow_set)
    async with node(tmp_path / "one") as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            append(a.nb.ycells[0], " tok-early")
            nb_room = server.rooms[info.id]
            await until(lambda: " tok-early" in str(nb_room.ynotebook.ycells[0]["source"]),
                        nb_room.room.doc)
            await nb_room.room.flush()
            assert nb_room.lock_state == "none"  # the lock is still on its way
        await eventually(lambda: _unlocked(einstein, info.id))
        tg.cancel_scope.cancel()
    saved = json.loads(await einstein.files.read(info.id))
    assert "".join(saved["cells"][0]["source"]).count(" tok-early") == 1


# --- the boundaries of one node ---------------------------------------------------------


async def test_a_failing_connection_is_closed_and_the_node_carries_on(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "iso.ipynb", data_notebook("Running_Code.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        broken, broken_client = memory_channel_pair("broken")

        async def defect() -> None:
            raise RuntimeError("a defect in one connection")

        async def gone() -> None:
            raise ChannelClosed("the peer hung up before its welcome")

        server.start_soon(defect, channel=broken)
        server.start_soon(gone)
        with anyio.fail_after(5):
            await broken_client.closed.wait()
        assert broken_client.close_code == CloseCode.LOAD_FAILED
        # Everyone else is served as before.
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            append(a.nb.ycells[0], " still served")
            await server.rooms[info.id].room.flush()
            assert str(server.rooms[info.id].ynotebook.ycells[0]["source"]).endswith(
                " still served")
        tg.cancel_scope.cancel()


async def test_a_user_who_joins_during_the_last_checkpoint_keeps_the_room(
    tmp_path: Path, einstein: Session
) -> None:
    info = await put_notebook(einstein, "race.ipynb", data_notebook("Running_Code.ipynb"))
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            append(a.nb.ycells[0], " first")
        nb_room = server.rooms[info.id]
        flushing, release = anyio.Event(), anyio.Event()
        real_flush = nb_room.checkpointer.flush

        async def slow_flush() -> bool:
            flushing.set()
            await release.wait()
            return await real_flush()

        nb_room.checkpointer.flush = slow_flush  # type: ignore[method-assign]
        # Wait for the last leave's checkpoint (the client above has gone).
        with anyio.fail_after(10):
            await flushing.wait()
        async with client(server, tg, info.id, einstein, EINSTEIN) as b:
            release.set()
            entry = server._rooms[info.id]
            # Several cleanup delays later, the room still serves the user who came back.
            with anyio.move_on_after(server.cleanup_delay * 4):
                await entry.closed.wait()
            assert not entry.closed.is_set()
            append(b.nb.ycells[1], " second")
            await nb_room.room.flush()
            assert str(nb_room.ynotebook.ycells[1]["source"]).endswith(" second")
        tg.cancel_scope.cancel()


async def test_a_node_with_awareness_connections_stops_at_once(tmp_path: Path) -> None:
    with anyio.fail_after(5):  # far under a server's 10 s stop timeout
        async with node(tmp_path) as server:
            server_end, client_end = memory_channel_pair("awareness")
            server.start_soon(server.serve_awareness, "global", server_end, EINSTEIN,
                              channel=server_end)
            doc = Doc()
            async with Provider(doc, client_end) as provider:
                await provider.synced.wait()
                assert len(server.awareness_rooms) == 1
            # The connection is still open: the node, stopping, closes it with its room.
    assert client_end.closed.is_set() and not server.awareness_rooms
