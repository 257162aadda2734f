"""TornadoChannel: a room reads a tornado websocket from its ``on_message`` callback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import anyio
from pycrdt import Text

from mesh_collab import protocol
from mesh_collab.jupyter.websocket import TornadoChannel
from mesh_collab.rooms import Identity, Room
from tests.helpers import GatedLog
from tests.test_updatelog import typed

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
