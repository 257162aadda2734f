"""Transaction origins: who caused a document change.

pycrdt needs hashable origins; frozen dataclasses are. The room uses them to relay an update
to everybody but its sender, and the checkpointer and federation links use them to avoid
echoes and double storage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientOrigin:
    """An update from a client connected to this node."""

    connection: int


@dataclass(frozen=True, slots=True)
class PeerOrigin:
    """An update that arrived over a link from another node."""

    site: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class StorageOrigin:
    """A change read from storage: a file changed behind our back, or a restored version."""

    reason: str = "external"


Origin = ClientOrigin | PeerOrigin | StorageOrigin
