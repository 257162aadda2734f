"""Crash: ``kill -9`` a node while five clients type, restart it, lose nothing.

The rule under test (``rooms.py``): an update is in the node's SQLite log before it is relayed.
So every update any client *received from the node* must be in the document the restarted
node recovers, before any client has come back to re-send anything; then the clients come
back with their documents (their unacknowledged keystrokes included, as a y-websocket
provider does) and everybody converges, with no duplicated cells and no duplicated text.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import aiohttp
import anyio
import httpx
from jupyter_ydoc import YNotebook
from pycrdt import Doc, get_update

from mesh_collab import notebook, protocol
from mesh_collab.cs3.client import CS3Client
from tests.reliability.conftest import DATA, NodeProcess, gateway_process
from tests.reliability.yclient import YClient, until_all

CLIENTS = 5
#: How many crash/restart rounds (each with fresh typing); MESH_COLLAB_CRASH_ROUNDS for more.
ROUNDS = int(os.environ.get("MESH_COLLAB_CRASH_ROUNDS", "2"))


def cells_of(doc: Doc) -> list[str]:
    return [str(c["source"]) for c in YNotebook(ydoc=doc).ycells]


def missing_from(update: bytes, state: bytes) -> int:
    """How many client blocks of ``update`` the document with state vector ``state`` lacks."""
    return protocol.update_struct_count(get_update(update, state))


async def _crash_rounds(tmp_path: Path, rounds: int, *, converge: bool) -> None:
    rng = random.Random(int(os.environ.get("MESH_COLLAB_SEED", "1")))
    async with gateway_process(tmp_path) as gw:
        async with CS3Client(gw.grpc_address) as cs3:
            einstein = await cs3.login("einstein", "relativity")
            await einstein.files.write(
                "/home/einstein/crash.ipynb", (DATA / "Running_Code.ipynb").read_bytes()
            )
        # A short lock expiry: the restarted node must get the lock back within the test.
        node = NodeProcess(
            tmp_path=tmp_path, gateway=gw.grpc_address,
            traits={"lock_expiry": 6, "checkpoint_quiet_period": 0.5,
                    "checkpoint_max_interval": 2},
        )
        await node.start()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                session = await node.open_session(http, "crash.ipynb")
            room = f"json:notebook:{session['fileId']}"
            lineage = session["sessionId"]
            docs = [Doc() for _ in range(CLIENTS)]
            typed: list[list[str]] = [[] for _ in range(CLIENTS)]
            totals = {"received_updates": 0, "typed": 0, "kills": 0}
            for round_ in range(rounds):
                url = node.ws_url(room, sessionId=lineage)
                if round_:
                    # New clients each round: clients coming back with unacknowledged edits
                    # are what test_after_kill_9_clients_converge... is about.
                    docs = [Doc() for _ in range(CLIENTS)]
                seen, received = await _type_and_kill(
                    url, docs, typed, round_, rng, node, totals
                )
                await node.start()  # same port, same data folder: the update log
                async with httpx.AsyncClient(timeout=30) as http:
                    again = await node.open_session(http, "crash.ipynb")
                assert again["sessionId"] == lineage, "the restart started a new lineage"
                # Before any client is back: what does the node have?
                recovered = await _recovered(node.ws_url(room, sessionId=lineage))
                state = recovered.get_state()
                lacking = [u for u in received if missing_from(u, state)]
                assert not lacking, f"{len(lacking)} received updates lost by the crash"
                texts = cells_of(recovered)
                assert len(texts) == 28
                for who, view in enumerate(seen):
                    for cell, text in enumerate(view):
                        assert texts[cell].startswith(text), (who, cell, text[-40:])
                totals["received_updates"] += len(received)
            print(  # noqa: T201 - the figures
                f"\ncrash: kills={totals['kills']} clients={CLIENTS} "
                f"keystrokes={totals['typed']} received_updates_checked="
                f"{totals['received_updates']} lost=0"
            )
            if converge:
                # The clients come back with their documents (their keystrokes the node never
                # acknowledged included) and converge with the node.
                await _reconnect_and_converge(node.ws_url(room, sessionId=lineage), docs, typed)
        finally:
            await node.kill(signal.SIGTERM)
        if converge:
            # After the clean stop, the checkpoint in CS3 holds everything typed, once.
            async with CS3Client(gw.grpc_address) as cs3:
                einstein = await cs3.login("einstein", "relativity")
                raw = await einstein.files.read("/home/einstein/crash.ipynb")
                nb = notebook.from_bytes(raw)
                assert len(nb["cells"]) == 28
                for who in range(CLIENTS):
                    for token in typed[who]:
                        assert nb["cells"][who]["source"].count(token) == 1, token


async def test_kill_9_keeps_every_update_a_client_received(tmp_path: Path) -> None:
    """Rounds of: five clients type, SIGKILL mid-typing, restart, check the recovered doc
    (the clients of the next round come back with their documents)."""
    await _crash_rounds(tmp_path, ROUNDS, converge=False)


async def test_after_kill_9_clients_converge_with_the_recovered_node(tmp_path: Path) -> None:
    await _crash_rounds(tmp_path, 1, converge=True)


async def _type_and_kill(
    url: str,
    docs: list[Doc],
    typed: list[list[str]],
    round_: int,
    rng: random.Random,
    node: NodeProcess,
    totals: dict[str, int],
) -> tuple[list[list[str]], list[bytes]]:
    """Five clients type into their own cells; SIGKILL the node mid-typing.

    Returns what each client had seen of every cell typed by *others*, and every update
    any client received from the node, both taken the moment the node died.
    """
    killed = anyio.Event()
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        clients = [await tg.start(YClient(url, doc=doc).run, http) for doc in docs]
        for c in clients:
            await c.until(c.synced.is_set)
            # After a restart the room may be read-only until the node has the lock again.
            await c.until(lambda c=c: (c.mesh_status() or {}).get("editable"), timeout=30)

        async def type_(who: int, c: YClient) -> None:
            n = 0
            while not killed.is_set() and c.closed is None:
                token = f"<{who}.{round_}.{n}>"
                source = c.nb.ycells[who]["source"]
                source += token
                typed[who].append(token)
                totals["typed"] += 1
                n += 1
                await c.flush()
                await anyio.sleep(rng.uniform(0.005, 0.03))  # a typist's pace, not a wait

        for who, c in enumerate(clients):
            tg.start_soon(type_, who, c)
        # Kill once everybody has seen plenty of the others' typing, at a random moment.
        want = rng.randint(30, 80)
        for c in clients:
            await c.until(lambda c=c: len(c.received) >= want)
        os.kill(node.pid, signal.SIGKILL)
        totals["kills"] += 1
        # What each client had received from the node when it died. (Anything still in the
        # socket buffers arrives below; it was sent by the node, so it counts too.)
        for c in clients:
            await c.until(lambda c=c: c.closed is not None)
        killed.set()
        await node.kill()  # reap it
        seen = []
        received: list[bytes] = []
        for who, c in enumerate(clients):
            received.extend(c.received)
            replay = Doc()
            for update in c.received:
                replay.apply_update(update)
            view = cells_of(replay)
            view[who] = ""  # its own cell is not something it received
            seen.append(view)
    return seen, received


async def _recovered(url: str) -> Doc:
    """The restarted node's document, as a brand-new client receives it."""
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        fresh = await tg.start(YClient(url).run, http)
        await fresh.until(fresh.synced.is_set)
        await fresh.close()
    return fresh.doc


async def _reconnect_and_converge(url: str, docs: list[Doc], typed: list[list[str]]) -> None:
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        clients = [await tg.start(YClient(url, doc=doc).run, http) for doc in docs]
        observer = await tg.start(YClient(url).run, http)

        def converged() -> bool:
            texts = cells_of(observer.doc)
            return all(
                len(texts) == 28 and all(t in texts[who] for t in typed[who])
                for who in range(len(docs))
            ) and all(cells_of(c.doc) == texts for c in clients)

        # The restarted node may find its old lock (a new lock id: a new epoch) and wait for
        # it to expire (lock_expiry); the clients' unacknowledged edits must arrive anyway.
        try:
            await until_all([observer, *clients], converged, timeout=40)
        except TimeoutError:
            texts = cells_of(observer.doc)
            missing = {
                who: [t for t in typed[who] if t not in texts[who]] for who in range(len(docs))
            }
            raise AssertionError(
                f"no convergence: room status {observer.mesh_status()}; the node lacks "
                f"{ {w: len(m) for w, m in missing.items()} } keystrokes that clients hold "
                f"(e.g. {[m[:2] for m in missing.values()]}); clients agree with the node: "
                f"{[cells_of(c.doc) == texts for c in clients]}"
            ) from None
        texts = cells_of(observer.doc)
        ids = [c.get("id") for c in YNotebook(ydoc=observer.doc).ycells]
        assert len(set(ids)) == len(ids) == 28, "duplicated cells"
        for who in range(len(docs)):
            for token in typed[who]:
                assert texts[who].count(token) == 1, token
        for c in [*clients, observer]:
            await c.close()
