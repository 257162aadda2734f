"""WebSocket close codes of mesh_collab, for browser clients and for node-to-node links.

A bad message closes only the connection that sent it, with one of these codes and a short
reason; the room and everyone else carry on. The labextension reads the same table. The stock
JupyterLab frontend shows a message for 4400, 4404 and 4500 before the first sync, and a
reload dialog for 1003 with a JSON reason (``{"reason": "unknown_session", "reloadable":
true}``).

| code | name | when |
|---|---|---|
| 1000 | NORMAL | the server or client ended the connection normally |
| 1001 | GOING_AWAY | the node shuts down; reconnect later |
| 1003 | UNKNOWN_SESSION | the client's session belongs to another document lineage: reload; |
|      |                 | or the user's rights on the document changed (a JSON reason with |
|      |                 | ``errorReason`` for the dialog; reloadable after a downgrade) |
| 1009 | MESSAGE_TOO_BIG | a frame over the configured size limit (``max_message_size``) |
| 4205 | RESET_CONNECTION | an undecodable, truncated or unknown message, or an update |
|      |                  | that refers to items the document does not have |
| 4400 | BAD_REQUEST | a malformed room id, or a room of an unsupported kind |
| 4401 | UNAUTHORIZED | no or bad credentials |
| 4403 | FORBIDDEN | no read access to the document, or a peer refused |
| 4404 | NOT_FOUND | no such document |
| 4409 | LINEAGE_MISMATCH | a linking node holds another lineage (CRDT history) of the document |
|      |                  | than the node it links to: the link is refused, never merged; the |
|      |                  | linking node keeps its edits in its log and shows the link refused |
| 4413 | AWARENESS_TOO_LARGE | a browser's presence (awareness) would hold more client ids (4) |
|      |                     | or bytes (128 KiB) than one connection may; its presence is |
|      |                     | removed for everybody, the document is not affected |
| 4415 | UNSUPPORTED_DOCUMENT | the file is not a notebook mesh_collab can open |
| 4426 | PROTOCOL_VERSION | a peer speaks another federation protocol version |
| 4429 | TOO_SLOW | the client does not read fast enough; its queue overflowed (4096 |
|      |          | messages or 64 MiB) |
| 4430 | USER_LIMIT | the user already has as many connections (64) or open documents |
|      |            | (32) on this node as one user may; other users are not affected |
| 4500 | LOAD_FAILED | the document could not be loaded (storage unavailable), or serving the |
|      |             | connection failed (an internal error, logged once at the node) |
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes (see the module docstring for when each is used)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNKNOWN_SESSION = 1003
    MESSAGE_TOO_BIG = 1009
    RESET_CONNECTION = 4205
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    LINEAGE_MISMATCH = 4409
    AWARENESS_TOO_LARGE = 4413
    UNSUPPORTED_DOCUMENT = 4415
    PROTOCOL_VERSION = 4426
    TOO_SLOW = 4429
    USER_LIMIT = 4430
    LOAD_FAILED = 4500
