"""The node-to-node protocol, version 1.

A node links to another node's room with a websocket to
``<node url>mesh/federation/v1/rooms/<resource id>`` carrying these headers:

=====================  ====================================================================
``Authorization``      ``MeshPeer <shared secret>``: the secret configured for the site
``X-Mesh-Site``        the linking node's site name
``X-Mesh-Node``        the linking node's URL (for logs and for same-site primaries)
``X-Mesh-Protocol``    ``1``
=====================  ====================================================================

The serving node answers with a ``welcome`` control message (or closes: 4401 unknown peer
or wrong secret, 4403 the room is not shared with that site or no local user can open it,
4426 another protocol version). After that both sides speak the y-websocket protocol (sync
and awareness) plus control messages (message type 100, JSON):

* ``{"type": "welcome", "version": 1, "site": ..., "node": ..., "lineage": ...}``
* ``{"type": "author", "user": "<username>"}``: the following updates were made by that user
  of the sending site; the receiving node applies them only if that user may edit.

Both sides treat the link as a :class:`~mesh_collab.rooms.Peer` connection of their room:
updates are relayed to everybody but their sender (no echo), presence is stamped with the
linking site, and each side resyncs by state vector whenever the link (re)connects.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
PATH = "/mesh/federation/v1/rooms/"
AUTH_SCHEME = "MeshPeer"
SITE_HEADER = "X-Mesh-Site"
NODE_HEADER = "X-Mesh-Node"
VERSION_HEADER = "X-Mesh-Protocol"


def credentials(header: str) -> str:
    """The secret of an ``Authorization: MeshPeer <secret>`` header ("" when absent)."""
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme == AUTH_SCHEME else ""
