"""TornadoChannel: a room reads a tornado websocket from its ``on_message`` callback; the
limits and presence fields of a real Jupyter server's collaboration websockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from jupyter_ydoc import YNotebook
from pycrdt import Text

from mesh_collab import protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.jupyter.websocket import TornadoChannel
from mesh_collab.rooms import Identity, Room
from tests.data import NOTEBOOKS
from tests.helpers import GatedLog, append, until
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.test_updatelog import typed
from tests.wschannel import synced_doc

EINSTEIN = Identity("einstein", "Albert Einstein", site="site-a", user_id="site-a/einstein")


class Socket:
    """The two methods of tornado's ``WebSocketHandler`` that the channel calls."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def write_message(self, message: bytes, binary: bool = False) -> asyncio.Future[None]:
        self.written.append(message)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_messages_reach_the_room_in_order_and_a_full_room_pushes_back(
    tmp_path: Path,
) -> None:
    updates, text = typed(3000)
    socket = Socket()
    channel = TornadoChannel(socket, "room")  # type: ignore[arg-type]
    async with GatedLog(tmp_path / "u.sqlite") as log, Room("room", updatelog=log) as room, \
            anyio.create_task_group() as tg:
        # Frames that arrive before the room reads are queued, then handed over first.
        for update in updates[:10]:
            assert channel.deliver(protocol.update(update)) is None
        served = anyio.Event()

        async def serve() -> None:
            await room.serve(channel, EINSTEIN)
            served.set()

        tg.start_soon(serve)
        await anyio.wait_all_tasks_blocked()
        # Then tornado's callback hands frames to the room without yielding, like a burst
        # read from the socket, while the room's commits wait for the disk: once the room's
        # inbox is full, it answers with an awaitable, which tornado awaits before reading
        # the next frame.
        waits = 0
        for update in updates[10:]:
            pending: Awaitable[None] | None = channel.deliver(protocol.update(update))
            if pending is not None:
                waits += 1
                log.gate.set()
                await pending
        assert waits > 0
        await room.flush()
        assert str(room.doc.get("source", type=Text)) == text
        assert socket.written  # the room greeted the client (sync step 1)
        channel.mark_closed()  # the socket closed: the room lets the client go
        with anyio.fail_after(5):
            await served.wait()
        assert room.clients == []


async def room_url(node: Node, einstein: Session, name: str) -> str:
    """The websocket URL of a fresh notebook's room (its session opened)."""
    await einstein.files.write(
        f"/home/einstein/{name}", (NOTEBOOKS / "notebook3.ipynb").read_bytes()
    )
    response = await node.api(
        "PUT", f"collaboration/session/{name}", body={"format": "json", "type": "notebook"}
    )
    assert response.status_code == 201, response.text
    s = response.json()
    return (node.url.replace("http://", "ws://") + f"api/collaboration/room/json:notebook:"
            f"{s['fileId']}?token={TOKEN}&sessionId={s['sessionId']}")


def server_room(node: Node) -> Any:
    (room,) = node.state.server.rooms.values()
    return room


async def test_a_frame_up_to_max_message_size_is_accepted_and_a_larger_one_closes_1009(
    node_factory: NodeFactory, gateway: Any, einstein: Session
) -> None:
    """One number: tornado's own limit (10 MiB unless configured) no longer refuses what
    max_message_size (16 MiB) accepts, e.g. a 12 MiB edit or first sync of a large notebook;
    a frame over max_message_size gets the documented close code, 1009."""
    node = await node_factory(gateway)
    url = await room_url(node, einstein, "large.ipynb")
    big = 12 * 2**20
    async with synced_doc(url) as doc:
        append(YNotebook(ydoc=doc).ycells[0], "x" * big)  # one update: one 12 MiB frame
        room = server_room(node)
        await until(lambda: len(str(room.ynotebook.ycells[0]["source"])) > big, room.room.doc)

    small = await node_factory(gateway, max_message_size=2**20)
    url = await room_url(small, einstein, "small.ipynb")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_bytes(protocol.update(b"\x00" * (2**20 + 1)))
        with anyio.fail_after(10):
            while (await ws.receive()).type is aiohttp.WSMsgType.BINARY:
                pass  # the room's greeting may come first
        assert ws.close_code == CloseCode.MESSAGE_TOO_BIG


def awareness_of(message: bytes) -> list[protocol.AwarenessEntry]:
    frame = protocol.parse(message)
    if frame.kind is not protocol.Kind.AWARENESS:
        return []
    return protocol.decode_awareness(frame.payload)


async def test_presence_color_is_a_hex_color_from_api_me_to_the_collaborators(
    node: Node, einstein: Session
) -> None:
    refused = await node.api("PATCH", "me", body={"color": "red;background:url(//evil)"})
    assert refused.status_code == 400
    assert (await node.api("PATCH", "me", body={"color": "#12ab34"})).status_code == 200
    assert (await node.api("PATCH", "me", body={"color": "#12ab34\n"})).status_code == 400
    assert (await node.api("GET", "me")).json()["identity"]["color"] == "#12ab34"

    url = await room_url(node, einstein, "colors.ipynb")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as a:
        claimed = {"user": {"name": "x", "color": "url(javascript:alert(1))"}}
        await a.send_bytes(protocol.encode_awareness([protocol.AwarenessEntry(7, 1, claimed)]))
        await server_room(node).room.flush()
        async with http.ws_connect(url) as b:
            with anyio.fail_after(10):
                while not (entries := awareness_of(await b.receive_bytes())):
                    pass
        (entry,) = [e for e in entries if e.client_id == 7]
        assert entry.state["user"]["color"] == "#12ab34"
