"""Prometheus metrics at ``GET /metrics``: a real node, real websocket clients typing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
from prometheus_client.parser import text_string_to_metric_families

from mesh_collab import metrics, protocol
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from tests.data import NOTEBOOKS as DATA
from tests.helpers import append
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.jupyter.test_federation import session_of, two_sites
from tests.reliability.yclient import YClient

KEYS = 15  # keystrokes per client

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(node: Node, **kwargs: Any) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    response = await node.http.get(f"{node.url}metrics", **kwargs)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, metric: str, /, **labels: str) -> float:
    return value(after, metric, **labels) - value(before, metric, **labels)


async def room_url(node: Node, einstein: Session, name: str) -> str:
    await einstein.files.write(f"/home/einstein/{name}", (DATA / "test4.ipynb").read_bytes())
    response = await node.api("PUT", f"collaboration/session/{name}",
                              body={"format": "json", "type": "notebook"})
    assert response.status_code == 201, response.text
    s = response.json()
    return (node.url.replace("http://", "ws://") + f"api/collaboration/room/json:notebook:"
            f"{s['fileId']}?token={TOKEN}&sessionId={s['sessionId']}")


async def type_keys(typist: YClient, other: YClient, cell: int, keys: int) -> None:
    """Type ``keys`` characters one by one, each seen by ``other`` before the next (so
    that every keystroke is its own update all the way)."""
    for i in range(keys):
        append(typist.nb.ycells[cell], chr(ord("a") + i % 26))
        await typist.flush()
        expected = typist.source(cell)
        await other.until(lambda expected=expected: other.source(cell) == expected)


async def test_a_live_room_is_seen_at_metrics(
    node_factory: NodeFactory, gateway: Any, einstein: Session
) -> None:
    # A quiet period long enough to scrape the unsaved change, short enough to wait for.
    node = await node_factory(gateway, checkpoint_quiet_period=1.0, checkpoint_max_interval=30)
    url = await room_url(node, einstein, "metrics.ipynb")
    before = await scrape(node)
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        a = await tg.start(YClient(url).run, http)
        b = await tg.start(YClient(url).run, http)
        for c in (a, b):
            await c.until(c.synced.is_set)
        # The node takes the file's lock once the room opened: the room is then primary.
        await a.until(lambda: (a.mesh_status() or {}).get("lock") == "held")

        await type_keys(a, b, 0, KEYS)
        await type_keys(b, a, 1, KEYS)
        typing = await scrape(node)
        assert value(typing, "mesh_collab_rooms", kind="notebook", role="primary") == 1
        assert value(typing, "mesh_collab_rooms", kind="notebook", role="none") == 0
        assert value(typing, "mesh_collab_clients", kind="notebook") == 2
        assert value(typing, "mesh_collab_links", state="online") == 0
        assert grew(before, typing, "mesh_collab_received_messages_total", type="update") == (
            2 * KEYS)
        assert grew(before, typing, "mesh_collab_relayed_updates_total") >= 2 * KEYS
        assert grew(before, typing, "mesh_collab_received_bytes_total") > 0
        # Every keystroke went to the other client (a frame each) and more: greetings,
        # presence, the first sync.
        assert grew(before, typing, "mesh_collab_sent_bytes_total") > 2 * KEYS * 20
        for histogram in ("commit_duration", "relay_latency"):
            name = f"mesh_collab_{histogram}_seconds"
            assert grew(before, typing, f"{name}_count") >= 2 * KEYS
            assert grew(before, typing, f"{name}_bucket", le="+Inf") >= 2 * KEYS
            assert grew(before, typing, f"{name}_sum") > 0
        # The last keystroke is not saved yet (quiet period: 1 s).
        assert value(typing, "mesh_collab_rooms_unsaved") == 1
        assert 0 < value(typing, "mesh_collab_checkpoint_lag_seconds") < 30

        # Then the room checkpoints (its status says when).
        await a.until(lambda: (a.mesh_status() or {}).get("checkpoint"), timeout=30)
        saved = await scrape(node)
        assert grew(before, saved, "mesh_collab_checkpoint_duration_seconds_count") >= 1
        assert value(saved, "mesh_collab_checkpoint_lag_seconds") == 0
        assert value(saved, "mesh_collab_rooms_unsaved") == 0
        assert grew(before, saved, "mesh_collab_checkpoint_failures_total") == 0

        # A client that sends a frame of an unknown type is closed, and counted.
        bad = await tg.start(YClient(url).run, http)
        await bad.until(bad.synced.is_set)
        await bad.send_raw(b"\x07junk")
        await bad.until(lambda: bad.closed is not None)
        assert bad.closed is not None and bad.closed.code == CloseCode.RESET_CONNECTION
        closed = await scrape(node)
        assert grew(saved, closed, "mesh_collab_connections_closed_total",
                    code="4205", name="RESET_CONNECTION") == 1
        # Everybody else carries on.
        (served,) = node.state.server.rooms.values()
        await served.room.flush()  # the room handled the bad client's leaving
        assert value(await scrape(node), "mesh_collab_clients", kind="notebook") == 2
        await type_keys(a, b, 0, 1)
        for c in (a, b):
            await c.close()
        with anyio.fail_after(10):
            await served.room.empty.wait()
    after = await scrape(node)
    assert value(after, "mesh_collab_clients", kind="notebook") == 0
    # The room stays open for document_cleanup_delay: still primary.
    assert value(after, "mesh_collab_rooms", kind="notebook", role="primary") == 1


async def test_a_replica_linked_to_the_home_site_is_seen_at_metrics(
    gateway_factory: Any, cs3_client_factory: Any, node_factory: NodeFactory, tmp_path: Path
) -> None:
    mesh = await two_sites(gateway_factory, cs3_client_factory, node_factory, tmp_path)
    before = await scrape(mesh.a)
    # Site B opens marie's share: its replica links to site A's room and syncs first.
    await session_of(mesh.b, "Shared with me/shared.ipynb")
    # Both nodes run in this process, whose /metrics counts them both.
    samples = await scrape(mesh.a)
    assert value(samples, "mesh_collab_rooms", kind="notebook", role="replica") == 1
    assert value(samples, "mesh_collab_links", state="online") == 1
    assert value(samples, "mesh_collab_node_connections") == 2  # the link, seen at both ends
    assert grew(before, samples, "mesh_collab_resync_bytes_total", direction="sent") > 0
    assert grew(before, samples, "mesh_collab_resync_bytes_total", direction="received") > 0


async def test_metrics_need_the_token(node: Node) -> None:
    response = await node.http.get(f"{node.url}metrics", headers={"Authorization": ""})
    assert response.status_code == 403
    samples = await scrape(node)
    assert ("mesh_collab_rooms", frozenset({("kind", "notebook"), ("role", "primary")})) in (
        samples)


def test_the_collector_is_registered_while_a_node_runs() -> None:
    from prometheus_client import REGISTRY

    class Idle:
        rooms: dict[object, Any] = {}
        awareness_rooms: dict[str, Any] = {}

    names = {f.name for f in metrics.NodeCollector().collect()}
    assert all(name.startswith("mesh_collab_") for name in names)
    assert REGISTRY.get_sample_value("mesh_collab_node_connections") is None
    with metrics.exported(Idle()), metrics.exported(Idle()):  # two nodes in one process
        assert REGISTRY.get_sample_value("mesh_collab_node_connections") == 0
    assert REGISTRY.get_sample_value("mesh_collab_node_connections") is None


def test_frame_kinds_have_stable_names() -> None:
    # The `type` label of mesh_collab_received_messages_total: documented in operations.md.
    assert [k.name.lower() for k in protocol.Kind] == [
        "sync_step1", "sync_step2", "update", "awareness", "query_awareness", "save", "control"]
