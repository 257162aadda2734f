"""Budgets: what one connection or one user can make a node hold, and what they are told
beyond it.

The promises: a browser's presence is bounded per connection (over it: closed with
``AWARENESS_TOO_LARGE``, its presence removed) and per room (what a newcomer receives first);
one user has at most ``max_connections_per_user`` connections and ``max_rooms_per_user``
open documents on a node (over it: ``USER_LIMIT``, HTTP 429); one user's excess never closes
another user's connection, nor their own other ones.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from pycrdt import Text

from mesh_collab import notebook, protocol
from mesh_collab.channel import memory_channel_pair
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.documents import RoomSettings
from mesh_collab.errors import UserLimitExceeded
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Identity, Room
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog
from tests.helpers import EINSTEIN, MARIE, append, client, eventually, peer, until
from tests.jupyter.conftest import TOKEN, NodeFactory
from tests.reliability.conftest import DATA

# --- presence ------------------------------------------------------------------------------


def fresh_states(first_id: int, count: int, size: int) -> bytes:
    """An awareness frame of ``count`` states of ``size`` bytes under fresh client ids."""
    return protocol.encode_awareness([
        protocol.AwarenessEntry(first_id + i, 1, {"user": {"name": "m"}, "pad": "p" * size})
        for i in range(count)
    ])


async def test_a_flood_of_fresh_presence_ids_leaves_newcomers_a_small_first_frame() -> None:
    """A viewer sends 8 frames of 100 presence states of 60 KB, each under fresh client ids
    (what made every newcomer's first frame 46 MiB). Each connection is closed at its budget
    and its presence forgotten: the newcomer's first frame is tiny, the node keeps nothing."""
    async with Room("flood") as room, anyio.create_task_group() as tg:
        async with peer(room, tg, EINSTEIN) as editor:
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for n in range(8):
                    server_end, viewer = memory_channel_pair(f"viewer-{n}")
                    tg.start_soon(partial(room.serve, server_end, MARIE, writable=False))
                    await viewer.send(fresh_states(1000 + 100 * n, 100, 60_000))
                    with anyio.fail_after(10):
                        await viewer.closed.wait()
                    assert viewer.close_code == CloseCode.AWARENESS_TOO_LARGE
                    assert room.awareness_bytes <= room.max_awareness_bytes
                await anyio.wait_all_tasks_blocked()  # every viewer's connection has left
                await room.flush()
                assert room.awareness_bytes == 0
                newcomer_end, newcomer = memory_channel_pair("newcomer")
                tg.start_soon(room.serve, newcomer_end, EINSTEIN)
                with anyio.fail_after(5):
                    while protocol.parse(first := await newcomer.recv()).kind is not (
                        protocol.Kind.AWARENESS
                    ):
                        pass
                assert len(first) < 1024  # was 46 MiB
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert kept < 2 * 2**20, f"{kept} bytes kept after 48 MB of presence"
            editor.text += "served on"
            await until(lambda: str(room.doc.get("source", type=Text)) == "served on", room.doc)
        tg.cancel_scope.cancel()


# --- one user's share of the node ----------------------------------------------------------

SETTINGS = RoomSettings(
    site="site-a", node_id="n1", lock_expiry=3, quiet_period=0.2, max_interval=1.0,
    poll_interval=0.3,
)


@asynccontextmanager
async def node(tmp_path: Path, **limits: int) -> AsyncIterator[CollabServer]:
    async with UpdateLog(tmp_path / "updates.sqlite") as log, CollabServer(
        updatelog=log, settings=SETTINGS, cleanup_delay=60.0, **limits
    ) as server:
        yield server


async def notebooks(session: Session, *names: str) -> list[ResourceId]:
    assert session.user is not None
    content = (DATA / "notebook3.ipynb").read_bytes()
    home = f"/home/{session.user.username}"
    return [(await session.files.write(f"{home}/{name}.ipynb", content)).id for name in names]


async def refused(
    server: CollabServer, tg: Any, rid: ResourceId, session: Session, who: Identity
) -> int | None:
    """Connect ``who`` to ``rid``; the close code it gets at once."""
    server_end, end = memory_channel_pair(who.username)
    tg.start_soon(partial(server.serve_document, rid, session, server_end, who, writable=True))
    with anyio.fail_after(10):
        await end.closed.wait()
    return end.close_code


def source(server: CollabServer, rid: ResourceId) -> str:
    return str(server.rooms[rid].ynotebook.ycells[0]["source"])


async def test_a_user_at_the_room_limit_is_refused_and_nobody_else_is(
    tmp_path: Path, einstein: Session, marie: Session
) -> None:
    a, b, c = await notebooks(einstein, "a", "b", "c")
    m, m2 = await notebooks(marie, "m", "m2")
    async with node(tmp_path, max_rooms_per_user=2) as server, \
            anyio.create_task_group() as tg:
        async with client(server, tg, a, einstein, EINSTEIN) as in_a, \
                client(server, tg, b, einstein, EINSTEIN), \
                client(server, tg, m, marie, MARIE) as marie_in_m:
            # Both of his documents are in use: a third is refused, over HTTP and websocket.
            assert await refused(server, tg, c, einstein, EINSTEIN) == CloseCode.USER_LIMIT
            with pytest.raises(UserLimitExceeded):
                await server.open(c, einstein, user="einstein")  # as for a session PUT
            assert c not in server.rooms
            # Marie is another user: she opens a second document, and his connections and
            # hers are served on.
            async with client(server, tg, m2, marie, MARIE):
                append(in_a.nb.ycells[0], " +einstein")
                append(marie_in_m.nb.ycells[0], " +marie")
                await until(lambda: source(server, a).endswith(" +einstein"),
                            server.rooms[a].room.doc)
                await until(lambda: source(server, m).endswith(" +marie"),
                            server.rooms[m].room.doc)
        tg.cancel_scope.cancel()


async def test_at_the_room_limit_a_users_idle_document_is_saved_and_freed_at_once(
    tmp_path: Path, einstein: Session
) -> None:
    """A document nobody uses any more still counts for the user who left it last, until
    it is freed (cleanup_delay, 60 s here); at the limit, opening another frees it at once,
    after its final checkpoint, instead of refusing."""
    a, b, c = await notebooks(einstein, "a", "b", "c")
    async with node(tmp_path, max_rooms_per_user=2) as server, \
            anyio.create_task_group() as tg:
        async with client(server, tg, b, einstein, EINSTEIN):
            async with client(server, tg, a, einstein, EINSTEIN) as in_a:
                append(in_a.nb.ycells[0], " typed before leaving")
                await until(lambda: source(server, a).endswith(" typed before leaving"),
                            server.rooms[a].room.doc)
            await anyio.wait_all_tasks_blocked()  # his connection to a has ended
            assert a in server.rooms  # kept for a reload
            async with client(server, tg, c, einstein, EINSTEIN):
                assert a not in server.rooms
                saved = notebook.from_bytes(await einstein.files.read(a))
                assert saved["cells"][0]["source"].endswith(" typed before leaving")
        tg.cancel_scope.cancel()


async def test_a_user_at_the_connection_limit_is_refused_and_nobody_else_is(
    tmp_path: Path, einstein: Session, marie: Session
) -> None:
    (a,) = await notebooks(einstein, "a")
    (m,) = await notebooks(marie, "m")
    async with node(tmp_path, max_connections_per_user=2) as server, \
            anyio.create_task_group() as tg:
        async with client(server, tg, a, einstein, EINSTEIN) as first, \
                client(server, tg, a, einstein, EINSTEIN) as second, \
                client(server, tg, m, marie, MARIE) as marie_in_m:
            assert await refused(server, tg, a, einstein, EINSTEIN) == CloseCode.USER_LIMIT
            # Presence rooms count too.
            server_end, global_awareness = memory_channel_pair("awareness")
            tg.start_soon(server.serve_awareness, "global", server_end, EINSTEIN)
            with anyio.fail_after(10):
                await global_awareness.closed.wait()
            assert global_awareness.close_code == CloseCode.USER_LIMIT
            async with client(server, tg, a, marie, MARIE) as marie_in_a:
                append(first.nb.ycells[0], " one")
                await until(lambda: str(second.nb.ycells[0]["source"]).endswith(" one")
                            and str(marie_in_a.nb.ycells[0]["source"]).endswith(" one"),
                            second.doc, marie_in_a.doc)
            append(marie_in_m.nb.ycells[0], " two")
            await until(lambda: source(server, m).endswith(" two"), server.rooms[m].room.doc)
        # His connections ended (the node counts them down as each one's task ends): he
        # may connect again.
        async def all_ended() -> bool:
            return server._user_connections["einstein"] == 0

        await eventually(all_ended)
        async with client(server, tg, a, einstein, EINSTEIN):
            pass
        tg.cancel_scope.cancel()


async def test_the_limits_over_http_and_websockets(
    node_factory: NodeFactory, gateway: Any, einstein: Session
) -> None:
    node = await node_factory(gateway, auth_mode="multi-user", cs3_username="einstein",
                              cs3_password="relativity", max_rooms_per_user=2,
                              max_connections_per_user=2)
    await notebooks(einstein, "a", "b", "c")

    async def session(name: str) -> Any:
        return await node.api("PUT", f"collaboration/session/{name}.ipynb",
                              body={"format": "json", "type": "notebook"})

    def url(s: dict[str, str]) -> str:
        return (node.url.replace("http://", "ws://") + "api/collaboration/room/json:notebook:"
                f"{s['fileId']}?token={TOKEN}&sessionId={s['sessionId']}")

    first, second = (await session("a")).json(), (await session("b")).json()
    async with aiohttp.ClientSession() as http, http.ws_connect(url(first)) as in_a, \
            http.ws_connect(url(second)) as in_b:
        await in_a.receive_bytes()  # served: the room's greeting
        await in_b.receive_bytes()
        third = await session("c")
        assert third.status_code == 429, third.text
        async with http.ws_connect(url(first)) as one_more:
            with anyio.fail_after(10):
                while (await one_more.receive()).type is aiohttp.WSMsgType.BINARY:
                    pass
            assert one_more.close_code == CloseCode.USER_LIMIT
        # His two connections are served on.
        await in_a.send_bytes(b"\x03")  # a presence query: answered
        assert protocol.parse(await in_a.receive_bytes()).kind is protocol.Kind.AWARENESS
        assert not in_b.closed
