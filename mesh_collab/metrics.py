"""Prometheus metrics of a mesh_collab node, served by jupyter_server at ``/metrics``.

Two kinds, both exposed by one collector (:class:`NodeCollector`) in prometheus_client's
default registry, which jupyter_server's ``/metrics`` handler serves (behind the node's
authentication unless ``ServerApp.authenticate_prometheus`` is False):

* **Live state, read at scrape time** from the node's :class:`~mesh_collab.server.CollabServer`:
  open rooms by kind and role (the lock state), connected clients, links to other nodes by
  state, checkpoint lag. Nothing on the rooms' paths keeps these up to date.
* **Events, counted where they happen**: messages and bytes received and sent, updates
  relayed, resync bytes on links, checkpoint failures, lock losses, connections closed by
  close code, and three latency histograms (commit, relay, checkpoint). They live in
  :data:`COUNTS` and the :class:`LatencyHistogram` objects below as plain numbers, because
  some are bumped for every message and every receiver of a keystroke: prometheus_client's
  ``Counter.inc`` costs ~0.9 us and ``Histogram.observe`` ~2.1 us here (a lock and label
  bookkeeping each), a plain integer add ~0.05 us. Everything runs on the node's event loop
  thread, so they need no lock.

Counts and histograms are per process (the scope of ``/metrics``): several nodes started in
one process, as the tests do, add up. Every metric is described, with what to alert on, in
``docs/operations.md``.

Usage::

    with metrics.exported(server):   # once per node, for as long as it runs
        ...
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mesh_collab.close_codes import CloseCode
from mesh_collab.kinds import BY_NAME
from mesh_collab.protocol import Kind

if TYPE_CHECKING:
    from mesh_collab.checkpoint import Checkpointer
    from mesh_collab.federation.link import PeerLink
    from mesh_collab.kinds import DocumentKind
    from mesh_collab.rooms import Room

#: A room's role on this node, by its lock state (``documents.py``).
ROLES: Mapping[str, str] = {
    "held": "primary",  # holds the Reva lock: accepts edits, checkpoints
    "linked": "secondary",  # another node of the site holds the lock: linked to it
    "remote": "replica",  # another site's notebook (OCM): linked to its home node
    "other": "read_only",  # another application holds the lock
    "unreachable": "unreachable",  # storage unreachable past the lock's expiry
    "lost": "lost",  # the lock was taken from us
    "none": "none",  # no user with write access joined yet
}
#: The roles in which the room's changes are this node's to write: their checkpoint lag counts
#: (a secondary's or replica's changes are written by the node it links to).
WRITERS = frozenset({"primary", "unreachable", "lost", "none"})
#: The states of a link to another node (``federation/link.py``).
LINK_STATES = ("connecting", "online", "offline", "refused")

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Counts:
    """The node's event counters (plain integers; see the module docstring for why)."""

    __slots__ = (
        "absorbed",
        "checkpoint_failures",
        "closed",
        "lock_losses",
        "received",
        "received_bytes",
        "relayed_updates",
        "resync_bytes",
        "sent_bytes",
    )

    def __init__(self) -> None:
        #: Bytes of every websocket message rooms received (clients and links).
        self.received_bytes = 0
        #: Messages rooms received, by frame kind.
        self.received: dict[Kind, int] = dict.fromkeys(Kind, 0)
        #: Bytes of every message rooms sent, once per receiver.
        self.sent_bytes = 0
        #: Document updates written to the log and relayed to clients.
        self.relayed_updates = 0
        #: Bytes of sync step 2 answers on links to other nodes: "sent", "received".
        self.resync_bytes = {"sent": 0, "received": 0}
        self.checkpoint_failures = 0
        #: Changed files a primary took in, by provenance: "checkpoint" (a checkpoint of
        #: the room's lineage, applied as its CRDT state) or "external" (merged three-way).
        self.absorbed = {"checkpoint": 0, "external": 0}
        #: Locks lost, by the state the room went to ("lost", "unreachable").
        self.lock_losses = {"lost": 0, "unreachable": 0}
        #: Websocket connections this node closed, by close code.
        self.closed: Counter[int] = Counter()


class LatencyHistogram:
    """A histogram of durations in seconds (plain numbers; see the module docstring).

    Args:
        bounds: the buckets' upper bounds, ascending (the ``+Inf`` bucket is implied).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a Prometheus metric family (cumulative buckets)."""
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


COUNTS = Counts()
#: From the start of a commit of the update log to its rows being written (``updatelog.py``).
COMMIT_DURATION = LatencyHistogram(_FAST)
#: From the arrival of the oldest message of a batch to its relay to clients (``rooms.py``).
RELAY_LATENCY = LatencyHistogram(_FAST)
#: Of every successful checkpoint to storage (``checkpoint.py``).
CHECKPOINT_DURATION = LatencyHistogram(_SLOW)


#: The kinds of room every scrape reports, open or not (so that a rate has a start).
KINDS = tuple(BY_NAME)


class ServedRoom(Protocol):
    """What the collector reads of an open room (:class:`~mesh_collab.documents.DocumentRoom`)."""

    @property
    def room(self) -> Room: ...

    @property
    def kind(self) -> DocumentKind: ...

    @property
    def checkpointer(self) -> Checkpointer: ...

    @property
    def lock_state(self) -> str: ...

    @property
    def link(self) -> PeerLink | None: ...


class Node(Protocol):
    """What the collector reads of a node (:class:`~mesh_collab.server.CollabServer`)."""

    @property
    def rooms(self) -> Mapping[object, ServedRoom]: ...

    @property
    def awareness_rooms(self) -> Mapping[str, Room]: ...


class NodeCollector:
    """Yields every mesh_collab metric of the nodes in :attr:`nodes` (see the module
    docstring); live state is read from the nodes at each scrape."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: list[Node] = list(nodes)

    def collect(self) -> Iterator[Metric]:
        yield from self._live()
        yield from _events()

    def _live(self) -> Iterator[Metric]:
        now = time.monotonic()
        rooms: Counter[tuple[str, str]] = Counter(
            dict.fromkeys(((kind, role) for kind in KINDS for role in ROLES.values()), 0)
        )
        clients: Counter[str] = Counter({**dict.fromkeys(KINDS, 0), "awareness": 0})
        links: Counter[str] = Counter(dict.fromkeys(LINK_STATES, 0))
        node_connections = unsaved = 0
        lag = 0.0
        for node in self.nodes:
            for served in list(node.rooms.values()):
                kind = served.kind.name
                role = ROLES.get(served.lock_state, served.lock_state)
                rooms[kind, role] += 1
                for conn in served.room.clients:
                    if conn.peer is None:
                        clients[kind] += 1
                    else:
                        node_connections += 1
                if served.link is not None:
                    links[served.link.state] += 1
                since = served.checkpointer.unsaved_since
                if since is not None and role in WRITERS:
                    unsaved += 1
                    lag = max(lag, now - since)
            for room in list(node.awareness_rooms.values()):
                clients["awareness"] += len(room.clients)
        family = GaugeMetricFamily(
            "mesh_collab_rooms", "Open rooms, by kind and by the node's role in them "
            "(its lock state).", labels=["kind", "role"])
        for (kind, role), n in sorted(rooms.items()):
            family.add_metric([kind, role], n)
        yield family
        family = GaugeMetricFamily(
            "mesh_collab_clients", "Browser connections served, by room kind.", labels=["kind"])
        for kind, n in sorted(clients.items()):
            family.add_metric([kind], n)
        yield family
        yield GaugeMetricFamily(
            "mesh_collab_node_connections", "Connections to and from other nodes served in "
            "rooms (both directions).", value=node_connections)
        family = GaugeMetricFamily(
            "mesh_collab_links", "Links this node keeps to rooms on other nodes, by state.",
            labels=["state"])
        for state, n in sorted(links.items()):
            family.add_metric([state], n)
        yield family
        yield GaugeMetricFamily(
            "mesh_collab_checkpoint_lag_seconds", "Age of the oldest change not yet written "
            "to storage, over the rooms this node writes (0: everything saved).", value=lag)
        yield GaugeMetricFamily(
            "mesh_collab_rooms_unsaved", "Rooms this node writes with changes not yet "
            "written to storage.", value=unsaved)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _events() -> Iterator[Metric]:
    counts = COUNTS
    family = CounterMetricFamily(
        "mesh_collab_received_messages", "Websocket messages rooms received from clients "
        "and other nodes, by frame type.", labels=["type"])
    for kind, n in counts.received.items():
        family.add_metric([kind.name.lower()], n)
    yield family
    yield _counter("mesh_collab_received_bytes", "Bytes of the websocket messages rooms "
                   "received from clients and other nodes.", counts.received_bytes)
    yield _counter("mesh_collab_sent_bytes", "Bytes of the messages rooms sent to clients "
                   "and other nodes, counted once per receiver.", counts.sent_bytes)
    yield _counter("mesh_collab_relayed_updates", "Document updates written to the update "
                   "log and relayed to clients (one client's updates that arrive together "
                   "count as one).", counts.relayed_updates)
    family = CounterMetricFamily(
        "mesh_collab_resync_bytes", "Bytes of sync step 2 answers (what the other side "
        "missed) on links to other nodes.", labels=["direction"])
    for direction, n in counts.resync_bytes.items():
        family.add_metric([direction], n)
    yield family
    yield _counter("mesh_collab_checkpoint_failures", "Checkpoints to storage that failed "
                   "(each is retried).", counts.checkpoint_failures)
    family = CounterMetricFamily(
        "mesh_collab_files_absorbed", "Changed files taken into rooms, by provenance: "
        "checkpoint (another node's checkpoint of the lineage, applied as its CRDT state) or "
        "external (changed outside mesh_collab, merged three-way).", labels=["provenance"])
    for provenance, n in counts.absorbed.items():
        family.add_metric([provenance], n)
    yield family
    family = CounterMetricFamily(
        "mesh_collab_lock_losses", "Reva locks a primary lost, by the state its room went to: "
        "lost (taken by someone else) or unreachable (storage down past the expiry).",
        labels=["state"])
    for state, n in counts.lock_losses.items():
        family.add_metric([state], n)
    yield family
    family = CounterMetricFamily(
        "mesh_collab_connections_closed", "Websocket connections this node closed, by close "
        "code (close_codes.py).", labels=["code", "name"])
    for code, n in sorted(counts.closed.items()):
        family.add_metric([str(code), _close_name(code)], n)
    yield family
    yield COMMIT_DURATION.family(
        "mesh_collab_commit_duration_seconds", "From the start of a commit of the update log "
        "to its updates being written.")
    yield RELAY_LATENCY.family(
        "mesh_collab_relay_latency_seconds", "From the arrival of a message (the oldest of "
        "its batch) to its relay to clients, its commit included.")
    yield CHECKPOINT_DURATION.family(
        "mesh_collab_checkpoint_duration_seconds", "Duration of successful checkpoints to "
        "storage.")


def relayed(arrived: float, updates: int) -> None:
    """Count a batch a room relayed to its clients: its updates, and its latency when it
    carried messages (``arrived``: the ``time.monotonic()`` of the oldest, else 0)."""
    COUNTS.relayed_updates += updates
    if arrived:
        RELAY_LATENCY.observe(time.monotonic() - arrived)


def _close_name(code: int) -> str:
    try:
        return CloseCode(code).name
    except ValueError:
        return ""  # a code of the other side or of the websocket library


def connection_closed(code: int) -> None:
    """Count a websocket connection this node closes with ``code`` (called by transports)."""
    COUNTS.closed[code] += 1


_COLLECTOR = NodeCollector()


@contextmanager
def exported(node: Node) -> Iterator[None]:
    """Expose ``node``'s metrics in prometheus_client's default registry while the context
    runs.

    One collector serves every node of the process: it is registered with the first node
    and unregistered after the last (two collectors would export the same names twice).
    """
    if not _COLLECTOR.nodes:
        REGISTRY.register(_COLLECTOR)
    _COLLECTOR.nodes.append(node)
    try:
        yield
    finally:
        _COLLECTOR.nodes.remove(node)
        if not _COLLECTOR.nodes:
            REGISTRY.unregister(_COLLECTOR)
