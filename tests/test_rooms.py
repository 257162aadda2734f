"""Room: sync between real protocol peers (pycrdt's Provider), presence, rights, bad input."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text

from mesh_collab import protocol
from mesh_collab.channel import MemoryChannel, memory_channel_pair
from mesh_collab.close_codes import CloseCode
from mesh_collab.rooms import Identity, Peer, Room
from mesh_collab.updatelog import UpdateLog
from tests.helpers import EINSTEIN, MARIE, GatedLog, non_reading_client, peer, until


@asynccontextmanager
async def room_with_log(tmp_path: Path) -> AsyncIterator[tuple[Room, UpdateLog]]:
    async with UpdateLog(tmp_path / "updates.sqlite") as log:
        async with Room("room-1", updatelog=log) as room:
            yield room, log


async def test_two_editors_converge(tmp_path: Path) -> None:
    async with room_with_log(tmp_path) as (room, _), anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as a, peer(room, tg, MARIE) as b:
            a.text += "hello"
            await until(lambda: str(b.text) == "hello", b.doc)
            b.text.insert(0, "> ")
            a.text += " world"
            await until(lambda: str(a.text) == str(b.text) == "> hello world", a.doc, b.doc)
            assert str(room.doc.get("source", type=Text)) == "> hello world"


async def test_an_update_is_in_the_log_before_anyone_sees_it(tmp_path: Path) -> None:
    async with room_with_log(tmp_path) as (room, log), anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as a, peer(room, tg, MARIE) as b:
            a.text += "durable"
            await until(lambda: str(b.text) == "durable", b.doc)
            stored = await log.load("room-1")
            # The log holds no lineage row until a checkpoint starts one, but the rows are there.
            replay = Doc()
            rows = await log._run(  # the raw rows: what a restart would replay
                lambda: log.db.execute("SELECT data FROM updates WHERE room = 'room-1'").fetchall()
            )
            for (row,) in rows:
                replay.apply_update(row)
            assert str(replay.get("source", type=Text)) == "durable"
            assert stored is None or stored.updates


async def test_a_link_to_another_node_gets_updates_while_they_commit(tmp_path: Path) -> None:
    """Clients see an update only once it is committed; a link to another node (which makes
    it durable itself before its clients see it) gets it at once."""
    from mesh_collab.rooms import Peer

    async with GatedLog(tmp_path / "u.sqlite") as log, Room("r", updatelog=log) as room, \
            anyio.create_task_group() as tg:
        link_end, link = memory_channel_pair("link")
        tg.start_soon(partial(room.serve, link_end, Identity("node:b", site="site-b"),
                              peer=Peer(site="site-b")))
        # Like every peer, the other node first asks for what it lacks.
        await link.send(protocol.sync_step1(Doc().get_state()))
        log.gate.set()  # let the joins through
        async with peer(room, tg, EINSTEIN) as a, peer(room, tg, MARIE) as b:
            await room.flush()
            log.gate = anyio.Event()
            log.waiting = anyio.Event()
            a.text += "x"
            with anyio.fail_after(5):
                await log.waiting.wait()
                while True:  # the link's frames, until the update arrives
                    frame = protocol.parse(await link.recv())
                    if frame.kind is protocol.Kind.UPDATE:
                        break
            other = Doc()
            other.apply_update(frame.payload)
            assert str(other.get("source", type=Text)) == "x"
            assert str(b.text) == ""  # not committed: the client has not seen it
            log.gate.set()
            await until(lambda: str(b.text) == "x", b.doc)
        tg.cancel_scope.cancel()


async def test_viewer_sees_edits_but_its_updates_are_refused(tmp_path: Path) -> None:
    async with room_with_log(tmp_path) as (room, _), anyio.create_task_group() as tg:
        async with (
            peer(room, tg, EINSTEIN) as editor,
            peer(room, tg, MARIE, writable=False) as viewer,
        ):
            editor.text += "from the editor"
            await until(lambda: str(viewer.text) == "from the editor", viewer.doc)
            viewer.text += " + viewer's attempt"
            editor.text += "!"
            await until(lambda: "!" in str(viewer.text), viewer.doc)
            assert str(editor.text) == "from the editor!"
            assert str(room.doc.get("source", type=Text)) == "from the editor!"
            (viewer_conn,) = [c for c in room.clients if not c.writable]
            assert viewer_conn.refused_updates >= 1


def awareness_frame(client_id: int, clock: int, state: dict | None) -> bytes:
    return protocol.encode_awareness([protocol.AwarenessEntry(client_id, clock, state)])


async def next_awareness_frame(channel: MemoryChannel) -> bytes:
    with anyio.fail_after(5):
        while True:
            message = await channel.recv()
            if protocol.parse(message).kind is protocol.Kind.AWARENESS:
                return message


async def next_awareness(channel: MemoryChannel) -> list[protocol.AwarenessEntry]:
    return protocol.decode_awareness(protocol.parse(await next_awareness_frame(channel)).payload)


async def test_presence_arrives_at_once_stamped_and_leaves_at_once() -> None:
    async with Room("presence") as room, anyio.create_task_group() as tg:
        a_server, a = memory_channel_pair("a")
        tg.start_soon(room.serve, a_server, EINSTEIN)
        await next_awareness(a)  # the initial presence (nobody else yet)
        forged = {"user": {"name": "Marie Curie", "username": "marie", "color": "#f00"},
                  "cursors": [{"anchor": 1}]}
        await a.send(awareness_frame(111, 1, forged))

        b_server, b = memory_channel_pair("b")
        tg.start_soon(partial(room.serve, b_server, MARIE, writable=False))
        entries = await next_awareness(b)  # at once, not after a 30 s heartbeat
        (einstein_state,) = [e.state for e in entries if e.client_id == 111]
        assert einstein_state is not None
        user = einstein_state["user"]
        assert user["username"] == "einstein" and user["name"] == "Albert Einstein"
        assert user["display_name"] == "Albert Einstein · site-a"  # cursor labels show the site
        assert user["site"] == "site-a" and user["role"] == "editor"
        assert user["color"] == "#f00" and einstein_state["cursors"] == [{"anchor": 1}]

        await b.send(awareness_frame(222, 1, {"user": {"name": "x"}}))
        (seen_by_a,) = await next_awareness(a)
        assert seen_by_a.client_id == 222 and seen_by_a.state["user"]["role"] == "viewer"
        # b cannot speak for a's client id
        await b.send(awareness_frame(111, 9, {"user": {"name": "hijack"}}))
        await b.close()
        (gone,) = await next_awareness(a)
        assert gone.client_id == 222 and gone.state is None
        tg.cancel_scope.cancel()


def states(first_id: int, count: int, size: int) -> bytes:
    """One awareness frame: ``count`` fresh client ids, each with a state of ``size`` bytes."""
    return protocol.encode_awareness([
        protocol.AwarenessEntry(first_id + i, 1, {"user": {"name": "x"}, "pad": "p" * size})
        for i in range(count)
    ])


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        pytest.param(states(100, 5, 10), "a fifth client id", id="ids"),
        pytest.param(states(100, 3, 60_000), "180 KB of presence", id="bytes"),
    ],
)
async def test_a_browser_over_its_presence_budget_is_closed_and_forgotten(
    frame: bytes, why: str
) -> None:
    async with Room("presence-budget") as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as editor:
            hostile_server, hostile = memory_channel_pair("hostile")
            tg.start_soon(partial(room.serve, hostile_server, MARIE, writable=False))
            await next_awareness(hostile)
            await hostile.send(frame)
            with anyio.fail_after(5):
                await hostile.closed.wait()
            assert hostile.close_code == CloseCode.AWARENESS_TOO_LARGE, why
            await room.flush()
            assert room.awareness_bytes == 0  # its states left with it
            newcomer_server, newcomer = memory_channel_pair("newcomer")
            tg.start_soon(room.serve, newcomer_server, EINSTEIN)
            assert await next_awareness(newcomer) == []
            editor.text += "still editing"  # the others are served on
            await until(lambda: str(room.doc.get("source", type=Text)) == "still editing",
                        room.doc)
        tg.cancel_scope.cancel()


async def test_a_full_room_drops_new_presence_but_serves_its_client() -> None:
    async with Room("presence-full", max_room_awareness_bytes=5000) as room, \
            anyio.create_task_group() as tg:
        clients = []
        for i in range(4):  # 2 KB each: the third would make 6 KB
            server_end, client = memory_channel_pair(f"c{i}")
            tg.start_soon(room.serve, server_end, MARIE)
            await next_awareness(client)
            await client.send(states(10 + i, 1, 2000))
            await room.flush()
            clients.append(client)
        assert 4000 <= room.awareness_bytes <= 5000
        newcomer_server, newcomer = memory_channel_pair("newcomer")
        tg.start_soon(room.serve, newcomer_server, EINSTEIN)
        greeting = await next_awareness_frame(newcomer)
        assert len(greeting) <= 5000 + 100
        assert len(protocol.decode_awareness(protocol.parse(greeting).payload)) == 2
        # Dropped, not closed: the client whose presence did not fit is still served.
        assert not any(c.closed.is_set() for c in clients)
        assert len(room.clients) == 5
        # Once a state leaves, there is room again.
        await clients[0].send(awareness_frame(10, 2, None))
        await clients[3].send(states(13, 1, 2000))
        assert [e.client_id for e in await next_awareness(newcomer)] == [10]
        assert [e.client_id for e in await next_awareness(newcomer)] == [13]
        tg.cancel_scope.cancel()


async def test_presence_queries_without_reading_get_one_answer() -> None:
    """A client that sends QUERY_AWARENESS again and again and never reads is answered
    once: the answer queued first, and the changes after it, keep it current."""
    async with Room("queries") as room, anyio.create_task_group() as tg:
        present_server, present = memory_channel_pair("present")
        tg.start_soon(room.serve, present_server, EINSTEIN)
        await next_awareness(present)
        await present.send(states(1, 1, 30_000))
        await room.flush()
        viewer, unread = non_reading_client(room, tg, MARIE, writable=False)
        for _ in range(500):
            await viewer.send(b"\x03")  # QUERY_AWARENESS
        await room.flush()
        await present.send(awareness_frame(1, 2, {"user": {}, "moved": True}))
        answers = []
        with anyio.fail_after(10):
            while True:
                frame = protocol.parse(await unread.receive())
                if frame.kind is protocol.Kind.AWARENESS:
                    entries = protocol.decode_awareness(frame.payload)
                    if entries[0].state.get("moved"):
                        break
                    answers.append(entries)
        assert len(answers) == 1  # not 501 copies of 30 KB
        unread.close()
        tg.cancel_scope.cancel()


async def test_presence_colors_are_css_hex_colors_or_nothing() -> None:
    painted = Identity("einstein", site="site-a", color="red;background:url(//x)")
    async with Room("colors") as room, anyio.create_task_group() as tg:
        watcher_server, watcher = memory_channel_pair("watcher")
        tg.start_soon(room.serve, watcher_server, MARIE)
        await next_awareness(watcher)
        browser_server, browser = memory_channel_pair("browser")
        tg.start_soon(room.serve, browser_server, painted)
        link_server, link = memory_channel_pair("link")
        tg.start_soon(partial(room.serve, link_server, Identity("node:site-b"),
                              peer=Peer(site="site-b")))
        cases = [
            (browser, 1, "#1a2B3c", "#1a2B3c"),
            (browser, 2, "url(javascript:alert(1))", None),
            (browser, 3, "#12345678\n", None),
            (link, 4, "#abc", "#abc"),
            (link, 5, "expression(alert(1))", None),
        ]
        for channel, cid, sent, relayed in cases:
            await channel.send(awareness_frame(cid, 1, {"user": {"name": "n", "color": sent}}))
            (entry,) = await next_awareness(watcher)
            assert (entry.client_id, entry.state["user"]["color"]) == (cid, relayed), sent
        tg.cancel_scope.cancel()


async def test_status_reaches_clients_as_the_nodes_awareness() -> None:
    async with Room("status") as room, anyio.create_task_group() as tg:
        server_end, client = memory_channel_pair("a")
        tg.start_soon(room.serve, server_end, EINSTEIN)
        await next_awareness(client)
        room.set_status(lock="held", primary="node-a")
        (entry,) = await next_awareness(client)
        assert entry.client_id == room.doc.client_id
        assert entry.state == {"mesh": {"lock": "held", "primary": "node-a"}}
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        pytest.param(b"\x07\x00", CloseCode.RESET_CONNECTION, id="unknown-type"),
        pytest.param(b"\x00\x02\x10abc", CloseCode.RESET_CONNECTION, id="truncated"),
        pytest.param(b"\x00\x02\x03\x01\x02\x03", CloseCode.RESET_CONNECTION, id="garbage-update"),
        pytest.param(b"\x01\x05\x01\x01\x01\x01{", CloseCode.RESET_CONNECTION, id="bad-awareness"),
        pytest.param(b"\x00\x09\x00", CloseCode.RESET_CONNECTION, id="unknown-sync-type"),
        pytest.param(b"\x00\x02" + b"\x80" * 20, CloseCode.RESET_CONNECTION, id="huge-varuint"),
        pytest.param(b"", CloseCode.RESET_CONNECTION, id="empty"),
        pytest.param(b"\x00\x02" + b"x" * 70000, CloseCode.MESSAGE_TOO_BIG, id="oversized"),
    ],
)
async def test_bad_messages_close_only_their_connection(
    tmp_path: Path, message: bytes, code: int
) -> None:
    async with UpdateLog(tmp_path / "u.sqlite") as log, Room(
        "bad", updatelog=log, max_message_size=65536
    ) as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as good:
            bad_server, bad = memory_channel_pair("bad")
            tg.start_soon(room.serve, bad_server, MARIE)
            await bad.send(message)
            with anyio.fail_after(5):
                await bad.closed.wait()
            assert bad.close_code == code
            good.text += "still served"
            await until(
                lambda: str(room.doc.get("source", type=Text)) == "still served", room.doc
            )
        tg.cancel_scope.cancel()


async def test_update_with_unknown_dependencies_is_refused_and_purged(tmp_path: Path) -> None:
    source = Doc()
    text = source.get("source", type=Text)
    updates: list[bytes] = []
    source.observe(lambda e: updates.append(e.update))
    text += "first"
    text += " second"  # depends on "first"
    async with room_with_log(tmp_path) as (room, log), anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as good:
            bad_server, bad = memory_channel_pair("bad")
            tg.start_soon(room.serve, bad_server, MARIE)
            await bad.send(protocol.update(updates[1]))
            with anyio.fail_after(5):
                await bad.closed.wait()
            assert bad.close_code == CloseCode.RESET_CONNECTION
            await room.flush()
            # The missing dependency arrives later from an honest client: the refused
            # update must not come back with it.
            good.doc.apply_update(updates[0])
            await until(lambda: str(room.doc.get("source", type=Text)) == "first", room.doc)
            good.text += "!"
            await until(lambda: str(room.doc.get("source", type=Text)) == "first!", room.doc)
            await room.flush()
            rows = await log._run(
                lambda: log.db.execute("SELECT data FROM updates").fetchall()
            )
            replay = Doc()
            for (row,) in rows:
                replay.apply_update(row)
            assert str(replay.get("source", type=Text)) == "first!"
        tg.cancel_scope.cancel()


async def test_a_client_that_never_reads_is_closed_as_too_slow() -> None:
    async with Room("slow", outbox_size=8) as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as writer:
            slow, never_read = non_reading_client(room, tg, MARIE)
            # It asks for the document, as every client does, then never reads.
            await slow.send(protocol.sync_step1(Doc().get_state()))
            for i in range(200):
                writer.text += str(i % 10)
            with anyio.fail_after(5):
                await slow.closed.wait()
            assert slow.close_code == CloseCode.TOO_SLOW
            await until(lambda: len(str(room.doc.get("source", type=Text))) == 200, room.doc)
            never_read.close()
        tg.cancel_scope.cancel()


async def test_a_client_asking_again_and_again_without_reading_gets_one_answer() -> None:
    """A viewer sends sync step 1 five hundred times and never reads (the review's probe:
    480 bytes raised the node's memory by 117 MiB, a full-state answer queued per request).
    The room queues one answer; when the client reads at last, it gets that one answer and
    then the edits made since, each once."""
    async with Room("amplify") as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as writer:
            writer.text += "x" * 200_000
            await until(lambda: len(str(room.doc.get("source", type=Text))) == 200_000,
                        room.doc)
            viewer, unread = non_reading_client(room, tg, MARIE, writable=False)
            ask = protocol.sync_step1(Doc().get_state())
            for _ in range(500):
                await viewer.send(ask)
            writer.text += "!"  # relayed to the viewer after everything it asked for
            answers = updates = 0
            with anyio.fail_after(10):
                while not updates:
                    kind = protocol.parse(await unread.receive()).kind
                    answers += kind is protocol.Kind.SYNC_STEP2
                    updates += kind is protocol.Kind.UPDATE
            assert answers == 1
            unread.close()
        tg.cancel_scope.cancel()


async def test_a_client_that_never_reads_is_closed_at_its_byte_budget() -> None:
    """Few large messages fill a slow client's outbox by bytes long before by count."""
    async with Room("bytes", outbox_size=4096, outbox_bytes=100_000) as room, \
            anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as writer:
            slow, never_read = non_reading_client(room, tg, MARIE)
            await slow.send(protocol.sync_step1(Doc().get_state()))
            for n in range(1, 21):  # one relayed message each: the room has it before the next
                writer.text += "y" * 10_000
                await until(lambda n=n: len(str(room.doc.get("source", type=Text))) == n * 10_000,
                            room.doc)
            with anyio.fail_after(5):
                await slow.closed.wait()
            assert slow.close_code == CloseCode.TOO_SLOW
            never_read.close()
        tg.cancel_scope.cancel()


async def test_edit_runs_in_the_room_and_reaches_clients() -> None:
    from mesh_collab.origins import StorageOrigin

    async with Room("edit") as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as a:
            await room.edit(
                lambda doc: doc.get("source", type=Text).insert(0, "external "),
                StorageOrigin(),
            )
            await until(lambda: str(a.text) == "external ", a.doc)
        tg.cancel_scope.cancel()


async def test_compaction_keeps_the_document_and_shrinks_the_log(tmp_path: Path) -> None:
    async with room_with_log(tmp_path) as (room, log), anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as a:
            for i in range(50):
                a.text += str(i % 10)
            await until(lambda: len(str(room.doc.get("source", type=Text))) == 50, room.doc)
            await room.flush()
            assert await log.count("room-1") > 1
            await room.compact("lineage-1")
            assert await log.count("room-1") == 1
            a.text += "!"
            await until(lambda: str(room.doc.get("source", type=Text)).endswith("!"), room.doc)
            await room.flush()
            stored = await log.load("room-1")
            assert stored is not None and stored.lineage == "lineage-1"
            replay = Doc()
            for update in stored.updates:
                replay.apply_update(update)
            assert str(replay.get("source", type=Text)) == str(a.text)
        tg.cancel_scope.cancel()


class CountingChannel:
    """Wraps a channel and counts the update frames sent through it."""

    def __init__(self, inner: MemoryChannel) -> None:
        self.inner = inner
        self.updates_sent = 0

    @property
    def path(self) -> str:
        return self.inner.path

    async def send(self, message: bytes) -> None:
        if protocol.parse(message).kind is protocol.Kind.UPDATE:
            self.updates_sent += 1
        await self.inner.send(message)

    def send_nowait(self, message: bytes) -> bool:
        sent = self.inner.send_nowait(message)
        if sent and protocol.parse(message).kind is protocol.Kind.UPDATE:
            self.updates_sent += 1
        return sent

    async def recv(self) -> bytes:
        return await self.inner.recv()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self.inner.close(code, reason)


async def test_linked_rooms_never_echo_and_store_each_update_once(tmp_path: Path) -> None:
    from mesh_collab.rooms import Peer

    async with UpdateLog(tmp_path / "a.sqlite") as log_a, UpdateLog(
        tmp_path / "b.sqlite"
    ) as log_b, Room("r", updatelog=log_a) as room_a, Room(
        "r", updatelog=log_b
    ) as room_b, anyio.create_task_group() as tg:
        a_end, b_end = memory_channel_pair("link")
        to_a = CountingChannel(b_end)  # what room B sends towards room A
        tg.start_soon(partial(room_a.serve, a_end, Identity("node:b", site="b"),
                              peer=Peer(site="b")))
        tg.start_soon(partial(room_b.serve, to_a, Identity("node:a", site="a"),
                              peer=Peer(site="a")))
        async with peer(room_a, tg, EINSTEIN) as writer:
            for i in range(20):
                writer.text += str(i % 10)
            await until(lambda: len(str(room_b.doc.get("source", type=Text))) == 20, room_b.doc)
            await room_a.flush()
            await room_b.flush()
            assert to_a.updates_sent == 0  # nothing bounced back to its sender's node
            rows_a = await log_a.count("r")
            rows_b = await log_b.count("r")
            # Each room logs what it applied once; B may merge A's relayed updates further.
            assert rows_a == room_a.stats.updates
            assert rows_b == room_b.stats.updates <= rows_a
        tg.cancel_scope.cancel()


async def test_compaction_while_typing_keeps_every_update_in_the_log(tmp_path: Path) -> None:
    """Compaction replaces a room's rows by one state while edits keep coming: every update
    a client has seen must still be in the log (what a restart replays)."""
    async with UpdateLog(tmp_path / "u.sqlite") as log, Room("r", updatelog=log) as room, \
            anyio.create_task_group() as tg:
        await log.reset("r", "lineage", b"\x00\x00")
        async with peer(room, tg, EINSTEIN) as a, peer(room, tg, MARIE) as b:
            typed = anyio.Event()
            compacted = anyio.Event()

            async def type_() -> None:
                # Eight keystrokes, then wait for a compaction (which they race with).
                for i in range(400):
                    a.text += str(i % 10)
                    if i % 8 == 7:
                        await compacted.wait()
                typed.set()

            tg.start_soon(type_)
            compactions = 0
            while not typed.is_set():
                await room.compact("lineage")
                compactions += 1
                compacted.set()
                compacted = anyio.Event()
                await anyio.lowlevel.checkpoint()
            await until(lambda: len(str(b.text)) == 400, b.doc)
            await room.flush()
        stored = await log.load("r")
        assert stored is not None and compactions >= 50
        replay = Doc()
        for update in stored.updates:
            replay.apply_update(update)
        assert str(replay.get("source", type=Text)) == str(b.text)
        tg.cancel_scope.cancel()


async def test_an_edit_made_outside_the_loop_is_committed_then_relayed(tmp_path: Path) -> None:
    """Code that edits the live document directly (jupyter-server-nbmodel writing outputs)
    takes the path of every update: the loop wakes without any message, the link gets it at
    once, the clients once it is in the log, and the listeners (the checkpointer) hear of it."""
    from mesh_collab.rooms import Peer

    async with GatedLog(tmp_path / "u.sqlite") as log, Room("r", updatelog=log) as room, \
            anyio.create_task_group() as tg:
        link_end, link = memory_channel_pair("link")
        tg.start_soon(partial(room.serve, link_end, Identity("node:b", site="site-b"),
                              peer=Peer(site="site-b")))
        # Like every peer, the other node first asks for what it lacks.
        await link.send(protocol.sync_step1(Doc().get_state()))
        log.gate.set()  # let the joins through
        heard: list[object] = []
        room.add_listener(lambda updates: heard.extend(origin for _, origin in updates))
        async with peer(room, tg, EINSTEIN) as a:
            await room.flush()
            log.gate = anyio.Event()
            log.waiting = anyio.Event()
            with room.doc.transaction():  # no origin, not in the room loop
                room.doc.get("source", type=Text).insert(0, "output")
            with anyio.fail_after(5):
                await log.waiting.wait()  # the loop woke and started the commit
                while True:
                    frame = protocol.parse(await link.recv())
                    if frame.kind is protocol.Kind.UPDATE:
                        break
            assert str(a.text) == ""  # not committed: the client has not seen it
            assert heard == []
            log.gate.set()
            await until(lambda: str(a.text) == "output", a.doc)
            await room.flush()
            assert heard == [None]
        rows = await log._run(
            lambda: log.db.execute("SELECT data FROM updates WHERE room = 'r'").fetchall()
        )
        replay = Doc()
        for (row,) in rows:
            replay.apply_update(row)
        assert str(replay.get("source", type=Text)) == "output"
        tg.cancel_scope.cancel()


class FailingLog(UpdateLog):
    """A real update log whose writes fail while ``failing`` is set (a full disk)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing = False
        self.failures = 0

    def _write_rows(self, rows: list[tuple[str, bytes]]) -> None:
        if self.failing:
            self.failures += 1
            raise sqlite3.OperationalError("database or disk is full")
        super()._write_rows(rows)


async def test_an_update_whose_commit_failed_is_not_relayed_until_it_is_stored(
    tmp_path: Path,
) -> None:
    async with FailingLog(tmp_path / "u.sqlite") as log, Room("r", updatelog=log) as room, \
            anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as a, peer(room, tg, MARIE) as b:
            await room.flush()
            log.failing = True
            a.text += "typed on a full disk"
            await until(lambda: "typed" in str(room.doc.get("source", type=Text)), room.doc)
            await room.flush()  # its commit, and the retry behind the barrier, failed
            assert log.failures >= 1
            assert str(b.text) == ""  # never relayed while not durable
            log.failing = False
            # Written again without anything else coming; then, and only then, relayed.
            await until(lambda: str(b.text) == "typed on a full disk", b.doc)
            rows = await log._run(
                lambda: log.db.execute("SELECT data FROM updates WHERE room = 'r'").fetchall()
            )
            replay = Doc()
            for (row,) in rows:
                replay.apply_update(row)
            assert str(replay.get("source", type=Text)) == "typed on a full disk"
