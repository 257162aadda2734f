"""The node-to-node protocol, version 2.

A node links to another node's room with a websocket to
``<node url>mesh/federation/v1/rooms/<resource id>[?kind=<kind>]``, opened with a signed
handshake (:mod:`mesh_collab.federation.handshake`). The serving node answers with a
``welcome`` control message signed by its own key, or closes: 4401 unknown node, bad
signature, a handshake meant for another node, too old or replayed; 4403 the room is not
shared with that site or no local user can open it; 4426 another protocol version. After
that both sides speak the y-websocket protocol (sync and awareness) plus control messages
(message type 100, JSON):

* ``{"type": "welcome", "version": 2, "site": ..., "node": <node id>, "lineage": ...,
  "proof": <signature>}``
* ``{"type": "user", "user": "<username>", ...}``: the linking node introduces a user it
  serves in the room, before anything of theirs (an update, a presence state). The serving
  node decides what that user may do there: a user of another site by the OCM share of the
  resource with them; a user of its own site by the CS3 token the introduction carries
  (``"token"``, sent only to nodes of the same site), with which it asks the storage. The
  link may then act for that user only: updates of users not introduced, or not allowed to
  edit, are dropped; presence of users not introduced is dropped, and the rest is relabelled
  by the serving node (name, site, role). A resync (sync step 2 not attributed to one user)
  is applied only once an introduced user may edit.
* ``{"type": "author", "user": "<username>"}``: the following updates were made by that user.

Both sides treat the link as a :class:`~mesh_collab.rooms.Peer` connection of their room:
updates are relayed to everybody but their sender (no echo), and each side resyncs by state
vector whenever the link (re)connects. The linking side is a replica: it takes the serving
side's document as the document's home.
"""

from __future__ import annotations

PROTOCOL_VERSION = 2
PATH = "/mesh/federation/v1/rooms/"
