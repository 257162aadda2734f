"""Benchmark: what the durable local log costs, in updates per second a room accepts.

In-process: ``mesh_collab.rooms.Room`` with an ``UpdateLog`` in each of its modes, and with no
log at all ("durable log off"):

* **flush each commit** (``sync_interval=0``): every commit is fsynced before its updates are
  relayed;
* **flush after relay** (the node's default, ``sync_interval=0.01``): a commit is written to
  the WAL (it survives a crash of the process) before its updates are relayed, and fsynced by
  another thread 2 ms later (flushes at least 10 ms apart).

Clients speak the y-websocket protocol over in-process memory channels. An update counts as
accepted once the room relayed it to a listening client, which in mesh_collab happens only
after its commit. Three loads:

* **pipelined**: one writer sends pre-made keystroke updates as fast as it can into one room;
* **10 rooms**: ten writers, one per room, all at once (the log commits for all rooms together);
* **one in flight**: one writer sends the next keystroke only when the previous one reached
  the listener (rate = 1 / per-update latency, the case where group commit cannot help).

    .venv/bin/python benchmarks/durability.py            # 20,000 updates per load
    .venv/bin/python benchmarks/durability.py --quick    # 2,000 (in flight: 200)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import _harness as h
import anyio
from pycrdt import Doc, Text

from mesh_collab import protocol
from mesh_collab.channel import MemoryChannel, memory_channel_pair
from mesh_collab.rooms import Identity, Room
from mesh_collab.updatelog import UpdateLog

WHO = Identity("einstein", "Albert Einstein", site="site-a")
MODES = {  # mode -> UpdateLog's sync_interval
    "flush each commit": 0.0,
    "flush after relay": 0.01,
    "no log": -1,
}


def keystrokes(n: int) -> list[bytes]:
    """``n`` update frames, each one character typed at the end of a text."""
    doc = Doc()
    text = doc.get("source", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for _ in range(n):
        text.insert(len(text), "x")
    return [protocol.update(u) for u in updates]


class Listener:
    """Applies the updates a room relays to one client; counts the keystrokes it holds.

    A room may relay several keystrokes in one frame (mesh_collab merges a batch's updates),
    so what counts is the text's length, not the number of frames.
    """

    def __init__(self, channel: MemoryChannel) -> None:
        self.channel = channel
        self.doc = Doc()
        self.text = self.doc.get("source", type=Text)
        self.count = 0
        self.changed = anyio.Event()

    async def run(self) -> None:
        # Ask for the document first, as every client does (the room relays nothing before).
        await self.channel.send(protocol.sync_step1(self.doc.get_state()))
        async for message in self.channel:
            frame = protocol.parse(message)
            if frame.kind in (protocol.Kind.UPDATE, protocol.Kind.SYNC_STEP2):
                self.doc.apply_update(frame.payload)
                self.count = len(self.text)
                self.changed.set()
                self.changed = anyio.Event()

    async def until(self, n: int) -> None:
        while self.count < n:
            await self.changed.wait()


async def room_with_clients(tg: Any, room: Room) -> tuple[MemoryChannel, Listener]:
    writer_end, room_end = memory_channel_pair("writer")
    tg.start_soon(room.serve, room_end, WHO)
    listen_end, room_end2 = memory_channel_pair("listener")
    tg.start_soon(room.serve, room_end2, WHO)
    listener = Listener(listen_end)
    tg.start_soon(listener.run)
    return writer_end, listener


async def pipelined(log: UpdateLog | None, rooms: int, frames: list[bytes]) -> float:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        opened = []
        for i in range(rooms):
            room = await tg.start(_hosted_room, f"room-{i}", log, stop)
            opened.append(await room_with_clients(tg, room))
        await anyio.sleep(0.05)
        start = time.perf_counter()

        async def write(channel: MemoryChannel) -> None:
            for frame in frames:
                await channel.send(frame)

        for channel, _ in opened:
            tg.start_soon(write, channel)
        for _, listener in opened:
            await listener.until(len(frames))
        elapsed = time.perf_counter() - start
        await _close(stop, *(c for pair in opened for c in (pair[0], pair[1].channel)))
    return rooms * len(frames) / elapsed


async def _close(stop: anyio.Event, *channels: MemoryChannel) -> None:
    """End the clients, then the rooms (a room closes after a last flush of its log)."""
    for channel in channels:
        await channel.close()
    stop.set()


async def one_in_flight(log: UpdateLog | None, frames: list[bytes]) -> float:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        room = await tg.start(_hosted_room, "room-seq", log, stop)
        channel, listener = await room_with_clients(tg, room)
        await anyio.sleep(0.05)
        start = time.perf_counter()
        for i, frame in enumerate(frames, 1):
            await channel.send(frame)
            await listener.until(i)
        elapsed = time.perf_counter() - start
        await _close(stop, channel, listener.channel)
    return len(frames) / elapsed


async def _hosted_room(
    name: str, log: UpdateLog | None, stop: anyio.Event, *, task_status: Any
) -> None:
    # The listener decodes every frame in this same process and may fall far behind: it must
    # not count as a client too slow to keep (the room closes those at 4096 queued frames).
    async with Room(name, updatelog=log, outbox_size=10**6) as room:
        task_status.started(room)
        await stop.wait()


async def run_mode(mode: str, base: Path, n: int, n_seq: int) -> dict[str, Any]:
    frames = keystrokes(n)
    seq_frames = keystrokes(n_seq)
    path = base / f"{mode.replace(' ', '-')}.sqlite"

    async def measure(log: UpdateLog | None) -> dict[str, Any]:
        one = await pipelined(log, 1, frames)
        ten = await pipelined(log, 10, frames[: n // 10])
        seq = await one_in_flight(log, seq_frames)
        row = {"mode": mode, "pipelined_per_s": one, "10_rooms_per_s": ten,
               "one_in_flight_per_s": seq, "latency_ms": 1000 / seq}
        if log is not None:
            row["commits"] = log.commits
            row["rows_per_commit"] = log.rows_written / max(log.commits, 1)
        return row

    if mode == "no log":
        return await measure(None)
    async with UpdateLog(path, sync_interval=MODES[mode]) as log:
        return await measure(log)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternate the modes this many times and keep each one's best")
    args = parser.parse_args()
    n, n_seq = (2000, 200) if args.quick else (20000, 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    best: dict[str, dict[str, Any]] = {}
    with h.workdir() as base:
        for r in range(rounds):
            for mode in MODES:
                row = await run_mode(mode, base / f"round-{r}", n, n_seq)
                print(f"  round {r + 1} {mode}: pipelined {row['pipelined_per_s']:,.0f}/s, "
                      f"10 rooms {row['10_rooms_per_s']:,.0f}/s, "
                      f"one in flight {row['one_in_flight_per_s']:,.0f}/s", flush=True)
                kept = best.setdefault(mode, row)
                for key in ("pipelined_per_s", "10_rooms_per_s", "one_in_flight_per_s"):
                    kept[key] = max(kept[key], row[key])
                kept["latency_ms"] = 1000 / kept["one_in_flight_per_s"]
    rows = [best[m] for m in MODES]
    off = best["no log"]
    for row in rows:
        row["cost_vs_no_log_%"] = 100 * (1 - row["pipelined_per_s"] / off["pipelined_per_s"])
    h.print_table("Updates per second a room accepts (best of each mode)", rows)
    h.write_results("durability", args, {"updates": n, "one_in_flight_updates": n_seq,
                                         "rounds": rounds}, rows)


if __name__ == "__main__":
    asyncio.run(main())
