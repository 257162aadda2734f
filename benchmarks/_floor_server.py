"""The measurement floor: the least a Python y-websocket server can do (not a product).

An aiohttp server holding one pycrdt document per room, loaded from ``<root>/<room>`` with
jupyter_ydoc like the stock server does. It answers sync step 1, applies each update and
forwards the client's frame as is to every other client of the room: no persistence, no
awareness, no authentication, no checks. ``fanout.py`` runs it next to the two real servers,
so that the latency the clients of this benchmark add on this machine (one client process
for all N clients) can be told apart from the servers' own.

    python benchmarks/_floor_server.py ROOT    # prints {"port": PORT} once listening
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import _harness as h
from aiohttp import WSMsgType, web
from jupyter_ydoc import YNotebook
from pycrdt import Doc


class Relay:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.docs: dict[str, Doc] = {}
        self.clients: dict[str, set[web.WebSocketResponse]] = {}

    def doc(self, room: str) -> Doc:
        if room not in self.docs:
            doc = Doc()
            YNotebook(ydoc=doc).set(json.loads((self.root / room).read_bytes()))
            self.docs[room] = doc
            self.clients[room] = set()
        return self.docs[room]

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        room = request.match_info["room"]
        doc = self.doc(room)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        peers = self.clients[room]
        peers.add(ws)
        try:
            await ws.send_bytes(h.sync_step1(doc.get_state()))
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                data: bytes = msg.data
                if data[0] != 0 or len(data) < 3:
                    continue
                length, pos = h._read_uint(data, 2)
                payload = data[pos : pos + length]
                if data[1] == 0:
                    await ws.send_bytes(h.sync_step2(doc.get_update(payload)))
                    continue
                doc.apply_update(payload)
                frame = data if data[1] == 2 else h.update_frame(payload)
                for peer in list(peers):
                    if peer is not ws:
                        await peer.send_bytes(frame)
        finally:
            peers.discard(ws)
        return ws


async def main() -> None:
    relay = Relay(Path(sys.argv[1]))
    app = web.Application()
    app.router.add_get("/{room}", relay.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
