"""PeerLink: keep a local room linked to the same room on another node.

The link is a websocket to the other node (``federation/protocol.py``), served into the local
room as a :class:`~mesh_collab.rooms.Peer` connection: the local room relays its users' edits
and presence to the other node and applies what comes back, exactly as for a browser, but
with the other site's presence left as that site stamped it. When the link drops, the local
room keeps serving its users ("offline, changes will merge"); the link reconnects with
exponential backoff, and on reconnection both rooms resync by state vector, so only what
either side missed travels, once.

Usage::

    link = PeerLink(room, rid, remote=site_a, node=site_a.entry, local=local_node)
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        await link.synced.wait()
"""

from __future__ import annotations

import logging
import ssl as ssl_module
from collections.abc import Callable
from functools import partial
from urllib.parse import quote

import aiohttp
import anyio

from mesh_collab import protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.errors import ProtocolError
from mesh_collab.federation.aiohttp_channel import AiohttpChannel
from mesh_collab.federation.directory import Node, Site
from mesh_collab.federation.handshake import LocalNode, check_welcome, link_headers
from mesh_collab.federation.protocol import PATH, PROTOCOL_VERSION
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Identity, Peer, Room

#: Close codes after which retrying with the same configuration cannot help.
REFUSED = frozenset({
    CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN, CloseCode.PROTOCOL_VERSION,
    CloseCode.LINEAGE_MISMATCH,
})


def room_url(node_url: str, resource_id: ResourceId, kind: str = "notebook") -> str:
    """The federation websocket URL of a room on a node (``kind``: a document kind's name)."""
    base = node_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    url = f"{base.rstrip('/')}{PATH}{quote(str(resource_id), safe='$!')}"
    return url if kind == "notebook" else f"{url}?kind={quote(kind)}"


class PeerLink:
    """One node-to-node link of one room, reconnecting until cancelled.

    Args:
        room: the local room.
        resource_id: the notebook (the room key, the same on both nodes).
        remote: the other site.
        node: the node of that site to link to (its address and keys, from the directory).
        local: this node (site, id and signing key).
        introduce: what the other node is told about a user of ours when the room
            introduces them (a CS3 token for a node of our own site; nothing for another
            site), see federation/protocol.py.
        kind: the room's document kind (its name, e.g. "file").
        ssl: how a wss:// node is verified (None: the system's trust store).
        lineage: returns the local room's lineage ("" while it has none yet): a welcome
            naming another lineage is refused (close code 4409), never synced.
        on_state: called with "online", "offline" or "refused" when the link changes.
    """

    def __init__(
        self,
        room: Room,
        resource_id: ResourceId,
        *,
        remote: Site,
        node: Node,
        local: LocalNode,
        introduce: Callable[[str], dict[str, str]] | None = None,
        on_state: Callable[[str], None] | None = None,
        kind: str = "notebook",
        lineage: Callable[[], str] | None = None,
        max_backoff: float = 10.0,
        max_message_size: int = 16 * 2**20,
        ssl: ssl_module.SSLContext | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.room = room
        self.resource_id = resource_id
        self.remote = remote
        self.node = node
        self.local = local
        self.kind = kind
        self.introduce = introduce or (lambda user: {})
        self.url = room_url(node.url, resource_id, kind)
        self.on_state = on_state
        self.local_lineage = lineage or (lambda: "")
        self.max_backoff = max_backoff
        self.max_message_size = max_message_size
        self.ssl = ssl
        self.log = log or logging.getLogger(__name__)
        self.state = "connecting"
        self.lineage = ""
        self.synced = anyio.Event()
        self.connections = 0
        self.close_code: int | None = None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.log.info("link %s room=%s site=%s", state, self.resource_id, self.remote.name)
            if self.on_state is not None:
                self.on_state(state)

    async def run(self) -> None:
        """Link, and relink after every failure with exponential backoff, until cancelled."""
        backoff = 0.1
        while True:
            try:
                await self._connect_once()
                backoff = 0.1
            except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
                self.log.info("link failed room=%s site=%s error=%s",
                              self.resource_id, self.remote.name, exc.__class__.__name__)
            if self.close_code in REFUSED:
                self._set_state("refused")
                backoff = self.max_backoff
            else:
                self._set_state("offline")
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _connect_once(self) -> None:
        headers, nonce = link_headers(self.local, self.remote, self.node,
                                      str(self.resource_id), self.kind)
        self.close_code = None
        timeout = aiohttp.ClientWSTimeout(ws_close=5)
        async with aiohttp.ClientSession() as http, http.ws_connect(
            self.url, headers=headers, heartbeat=15, max_msg_size=self.max_message_size,
            timeout=timeout, ssl=self.ssl if self.ssl is not None else True,
        ) as ws:
            with anyio.fail_after(10):
                first = await ws.receive()
            if first.type != aiohttp.WSMsgType.BINARY:
                self.close_code = ws.close_code
                raise ProtocolError(f"link refused: close code {ws.close_code}")
            welcome = protocol.parse(first.data)
            if welcome.kind is not protocol.Kind.CONTROL:
                raise ProtocolError("the other node did not welcome the link")
            message = protocol.decode_control(welcome.payload)
            if message.get("type") != "welcome" or message.get("version") != PROTOCOL_VERSION:
                raise ProtocolError(f"unexpected welcome: {message.get('type')!r}")
            if not check_welcome(message, local=self.local, site=self.remote, node=self.node,
                                 resource=str(self.resource_id), nonce=nonce):
                # Whoever answers at that address is not the node the directory lists.
                self.close_code = CloseCode.UNAUTHORIZED
                await ws.close(code=CloseCode.UNAUTHORIZED, message=b"bad welcome")
                self.log.error("link refused: the welcome is not signed by node %s of %s",
                               self.node.id, self.remote.name)
                return
            self.lineage = str(message.get("lineage", ""))
            mine = self.local_lineage()
            if mine and self.lineage != mine:
                # Two histories of one document: syncing them would put items of one into
                # the other as if they were the same edits. Refuse; the edits stay here.
                self.close_code = CloseCode.LINEAGE_MISMATCH
                await ws.close(code=CloseCode.LINEAGE_MISMATCH, message=b"lineage mismatch")
                self.log.error("link refused: another lineage room=%s site=%s here=%s "
                               "there=%s", self.resource_id, self.remote.name, mine,
                               self.lineage)
                return
            self.connections += 1
            channel = AiohttpChannel(ws, f"link:{self.remote.name}")
            identity = Identity(username=f"node:{self.remote.name}", site=self.remote.name)
            synced = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(
                    self.room.serve, channel, identity, writable=True,
                    peer=Peer(site=self.remote.name, introduce=self.introduce),
                    synced=synced,
                ))
                self._set_state("online")
                await synced.wait()
                self.synced.set()
            self.close_code = ws.close_code
