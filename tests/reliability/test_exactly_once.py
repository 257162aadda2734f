"""Exactly once, under torture: every typed token is in the notebook once, whatever happens.

Two nodes of one site (real ``jupyter server`` processes on one gateway process; the Reva
lock decides the primary, the other links to it) serve three pycrdt clients who type unique
tokens at the start or the end of random cells. A seeded scheduler meanwhile:

* kills a node with ``kill -9`` and restarts it on the same port and data folder;
* freezes the primary (SIGSTOP) past the lock expiry, so the lock moves, then thaws it;
* steals the lock from outside and writes the file like another application would (read,
  add a token to a cell, write with the etag read), the token to be kept like a typed one;
* drops a client's connection (it reconnects with the same document, as a provider does).

At the end everything is healed, and every client, both nodes and the checkpointed file must
hold the same notebook with every token exactly once. The run prints its seed and every
injected event, so a failure can be replayed: ``MESH_COLLAB_TORTURE_SEED`` (default 1) and
``MESH_COLLAB_TORTURE_SECONDS`` (the CI size is 40 s of faults; docs/reliability.md gives
the long run).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import httpx
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from mesh_collab import errors, notebook
from mesh_collab.cs3.client import CS3Client, Session
from tests.helpers import MeshNode, mesh_node, mesh_site, write_mesh
from tests.reliability.conftest import DATA, NodeProcess, gateway_process
from tests.reliability.yclient import YClient

SEED = int(os.environ.get("MESH_COLLAB_TORTURE_SEED", "1"))
SECONDS = float(os.environ.get("MESH_COLLAB_TORTURE_SECONDS", "40"))
LOCK_EXPIRY = 3
TOKEN = re.compile(r"tk[0-9a-z]+x[0-9]+")
PATH = "/home/einstein/torture.ipynb"

pytestmark = pytest.mark.timeout(SECONDS + 300)  # start-up, faults, convergence


@dataclass
class Typist:
    """A client's document (kept across its connections) and what it typed."""

    name: str
    node: int
    doc: Doc = field(default_factory=Doc)
    typed: list[str] = field(default_factory=list)
    conn: YClient | None = None


def tokens_in(text: str) -> Counter[str]:
    return Counter(TOKEN.findall(text))


def notebook_text(nb: dict[str, Any]) -> str:
    return "\n".join("".join(cell["source"]) for cell in nb["cells"])


def doc_text(doc: Doc) -> str:
    return "\n".join(str(cell["source"]) for cell in YNotebook(ydoc=doc).ycells)


class Torture:
    def __init__(self, tmp_path: Path, gw: Any, einstein: Session, rng: random.Random) -> None:
        self.tmp_path, self.gw, self.einstein, self.rng = tmp_path, gw, einstein, rng
        self.events: list[str] = []
        self.started = time.monotonic()
        self.outside: list[str] = []
        self.nodes: list[NodeProcess] = []
        self.identities: list[MeshNode] = []
        self.frozen: set[int] = set()
        self.room = ""
        self.rid: Any = None
        self.stop = anyio.Event()
        self.typists = [Typist(f"c{i}", node=i % 2) for i in range(3)]

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:7.2f}s {text}"
        self.events.append(line)
        print(line, flush=True)  # noqa: T201 - the run's record, for replaying a failure

    async def start(self) -> None:
        info = await self.einstein.files.write(PATH, (DATA / "Running_Code.ipynb").read_bytes())
        self.rid = info.id
        peers = self.tmp_path / "mesh.json"
        traits = {
            "site": "site-a", "peers": f"@{peers}", "lock_expiry": LOCK_EXPIRY,
            "checkpoint_quiet_period": 0.2, "checkpoint_max_interval": 1,
            "file_poll_interval": 0.5, "document_cleanup_delay": 600,
        }
        for i in range(2):
            identity = mesh_node(self.tmp_path, "site-a", f"node{i}")
            identity.key  # noqa: B018 - made here, before the node reads it
            self.identities.append(identity)
            node = NodeProcess(tmp_path=self.tmp_path / f"node{i}", gateway=self.gw.grpc_address,
                               traits={**traits, **identity.traits})
            (self.tmp_path / f"node{i}").mkdir()
            await node.start()
            self.nodes.append(node)
        # Both nodes of the site, at their real addresses (a restart keeps its port): how
        # the replica finds the primary that the lock names.
        write_mesh(peers, mesh_site("site-a", urlsplit(self.gw.http_url).netloc,
                                    *((m, n.url) for m, n in zip(self.identities, self.nodes,
                                                                 strict=True))))
        for node in self.nodes:
            async with httpx.AsyncClient(timeout=60) as http:
                session = await node.open_session(http, "torture.ipynb")
            self.room = f"json:notebook:{session['fileId']}"

    # --- clients -------------------------------------------------------------------------

    async def connect_forever(self, typist: Typist) -> None:
        async with aiohttp.ClientSession() as http:
            while not self.stop.is_set():
                node = self.nodes[typist.node]
                if node.proc is None or typist.node in self.frozen:
                    await anyio.sleep(0.2)  # down: retry like a provider's backoff
                    continue
                client = YClient(node.ws_url(self.room), doc=typist.doc)
                try:
                    async with anyio.create_task_group() as tg:
                        await tg.start(client.run, http)
                        typist.conn = client
                        while client.closed is None and not self.stop.is_set():
                            with anyio.move_on_after(0.5):
                                await client.until(lambda c=client: c.closed is not None,
                                                   timeout=3600)
                        tg.cancel_scope.cancel()
                except* (aiohttp.ClientError, OSError):
                    pass  # the node is down or going: connect again
                finally:
                    typist.conn = None
                await anyio.sleep(0.2)

    async def type_forever(self) -> None:
        n = 0
        while not self.stop.is_set():
            await anyio.sleep(self.rng.uniform(0.05, 0.25))  # a typist's pace, not a wait
            typist = self.rng.choice(self.typists)
            cells = YNotebook(ydoc=typist.doc).ycells
            if len(cells) == 0:
                continue
            token = f"tk{typist.name}x{n}"
            n += 1
            source = cells[self.rng.randrange(len(cells))]["source"]
            if self.rng.random() < 0.5:
                source.insert(0, token + " ")
            else:
                source += " " + token
            typist.typed.append(token)
            if typist.conn is not None:
                await typist.conn.flush()

    # --- faults --------------------------------------------------------------------------

    async def primary(self) -> int | None:
        try:
            lock = await self.einstein.locks.get(self.rid)
        except errors.StorageError:
            return None
        # Lock ids read mesh_collab:<site>:<node id>:<epoch>.
        holder = lock.lock_id.split(":")[2] if lock is not None and lock.lock_id.count(
            ":") == 3 else ""
        for i, identity in enumerate(self.identities):
            if holder == identity.id:
                return i
        return None

    async def kill_and_restart(self) -> None:
        i = self.rng.randrange(2)
        self.event(f"kill -9 node{i}")
        await self.nodes[i].kill(signal.SIGKILL)
        await anyio.sleep(self.rng.uniform(0.2, 2.0))
        await self.nodes[i].start()
        self.event(f"node{i} restarted")

    async def freeze_primary(self) -> None:
        i = await self.primary()
        if i is None or self.nodes[i].proc is None:
            return
        self.event(f"SIGSTOP node{i} (primary) past the lock expiry")
        os.kill(self.nodes[i].pid, signal.SIGSTOP)
        self.frozen.add(i)
        try:
            await anyio.sleep(LOCK_EXPIRY + self.rng.uniform(1, 3))
        finally:
            os.kill(self.nodes[i].pid, signal.SIGCONT)
            self.frozen.discard(i)
        self.event(f"SIGCONT node{i}")

    async def write_from_outside(self) -> None:
        token = f"tkoutx{len(self.outside)}"
        for _attempt in range(5):  # a checkpoint may come between the read and the write
            try:
                lock = await self.einstein.locks.get(self.rid)
                if lock is not None:
                    await self.einstein.locks.unlock(self.rid, lock)
                data = await self.einstein.files.read(self.rid)
                info = await self.einstein.files.stat(self.rid)
                if data != await self.einstein.files.read(self.rid):
                    continue  # written meanwhile: read again
                nb = notebook.from_bytes(data)
                cell = nb["cells"][self.rng.randrange(len(nb["cells"]))]
                cell["source"] = token + " " + "".join(cell["source"])
                await self.einstein.files.write(
                    self.rid, json.dumps(nb).encode(), if_match=info.etag)
            except errors.StorageError as exc:
                self.event(f"outside write refused ({type(exc).__name__})")
                continue
            self.outside.append(token)
            self.event(f"lock stolen, file written from outside with {token}")
            return
        self.event(f"no outside write this time: {token} not counted")

    async def drop_a_connection(self) -> None:
        typist = self.rng.choice(self.typists)
        if typist.conn is not None:
            self.event(f"drop {typist.name}'s connection")
            await typist.conn.close()

    async def schedule(self) -> None:
        faults = [self.kill_and_restart, self.freeze_primary, self.write_from_outside,
                  self.drop_a_connection]
        deadline = time.monotonic() + SECONDS
        due: list[Any] = []
        while time.monotonic() < deadline:
            await anyio.sleep(self.rng.uniform(1.0, 3.0))  # time between faults
            if not due:  # every kind of fault in each round, in a random order
                due = self.rng.sample(faults, len(faults))
            await due.pop()()

    # --- the end -------------------------------------------------------------------------

    def expected(self) -> list[str]:
        return [t for typist in self.typists for t in typist.typed] + self.outside

    async def converged(self) -> dict[str, Counter[str]]:
        expected = set(self.expected())

        def complete(text: str) -> bool:
            return expected <= set(tokens_in(text))

        changed = anyio.Event()

        def poke(_event: object) -> None:
            changed.set()

        subscriptions = [(t.doc, t.doc.observe(poke)) for t in self.typists]
        with anyio.fail_after(120):
            while not all(complete(doc_text(t.doc)) for t in self.typists):
                await changed.wait()  # a change to a client's document
                changed = anyio.Event()
            for doc, subscription in subscriptions:
                doc.unobserve(subscription)
            while True:
                data = (await self.einstein.files.read(self.rid)).decode()
                if complete(notebook_text(json.loads(data))):
                    break
                await anyio.sleep(0.2)  # storage has no change events
        found = {t.name: tokens_in(doc_text(t.doc)) for t in self.typists}
        found["file"] = tokens_in(notebook_text(json.loads(
            await self.einstein.files.read(self.rid))))
        async with aiohttp.ClientSession() as http:
            for i, node in enumerate(self.nodes):
                fresh = YClient(node.ws_url(self.room))
                async with anyio.create_task_group() as tg:
                    await tg.start(fresh.run, http)
                    await fresh.until(lambda f=fresh: complete(doc_text(f.doc)), timeout=60)
                    found[f"node{i}"] = tokens_in(doc_text(fresh.doc))
                    await fresh.close()
        return found


async def test_every_token_exactly_once_through_kills_freezes_steals_and_drops(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    print(f"torture seed={SEED} seconds={SECONDS}")  # noqa: T201
    (tmp_path / "gw").mkdir()
    async with gateway_process(tmp_path / "gw") as gw, CS3Client(gw.grpc_address) as cs3:
        einstein = await cs3.login("einstein", "relativity")
        t = Torture(tmp_path, gw, einstein, rng)
        await t.start()
        try:
            async with anyio.create_task_group() as tg:
                for typist in t.typists:
                    tg.start_soon(t.connect_forever, typist)
                typing = anyio.CancelScope()

                async def type_until_healed() -> None:
                    with typing:
                        await t.type_forever()

                tg.start_soon(type_until_healed)
                await t.schedule()
                typing.cancel()
                t.event("healed: every node up, typing stopped")
                found = await t.converged()
                t.stop.set()
        finally:
            for node in t.nodes:
                await node.kill(signal.SIGTERM)
    expected = t.expected()
    counts = Counter(expected)
    assert all(n == 1 for n in counts.values()), "a token was typed twice (test defect)"
    for where, seen in found.items():
        wrong = {tok: seen[tok] for tok in expected if seen[tok] != 1}
        assert not wrong, f"{where}: tokens not exactly once: {wrong}\n" + "\n".join(t.events)
    print(  # noqa: T201
        f"torture: {len(expected)} tokens ({len(t.outside)} written from outside), "
        f"{len(t.events)} events, every one exactly once in {', '.join(found)}"
    )
