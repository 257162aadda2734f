"""Storage outage: the CS3 gateway dies mid-session and comes back on the same address.

A real ``jupyter server`` node and a real ``mesh-collab gateway`` process; clients are
websocket clients. While the gateway is gone, editing continues between the clients, the
room's status stays visible to them, and checkpoints fail and are retried with backoff (not
in a hot loop). When it returns, the node catches up: the checkpoint in CS3 has every edit,
the file's lock is the node's one lock, and it is released when the room closes.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import aiohttp
import anyio
import httpx

from mesh_collab import notebook
from mesh_collab.cs3.client import CS3Client
from mesh_collab.documents import APP_NAME
from tests.helpers import append
from tests.reliability.conftest import DATA, GatewayProcess, gateway_process, node_process
from tests.reliability.yclient import YClient, until_all

#: How long the gateway stays away (seconds): the outage is the thing tested.
OUTAGE = 4.0


async def poll(check, timeout: float = 60, every: float = 0.2):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    """Poll storage (it has no change events) until ``check()`` is truthy."""
    with anyio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(every)


async def stored_cells(gw: GatewayProcess, path: str) -> list[str]:
    async with CS3Client(gw.grpc_address) as cs3:
        einstein = await cs3.login("einstein", "relativity")
        nb = notebook.from_bytes(await einstein.files.read(path))
    return [c["source"] for c in nb["cells"]]


async def file_lock(gw: GatewayProcess, path: str):  # type: ignore[no-untyped-def]
    async with CS3Client(gw.grpc_address) as cs3:
        einstein = await cs3.login("einstein", "relativity")
        return await einstein.locks.get(path)


async def _outage(tmp_path: Path, *, lock_expiry: float, outage: float) -> None:
    path = "/home/einstein/outage.ipynb"
    async with gateway_process(tmp_path) as gw:
        async with CS3Client(gw.grpc_address) as cs3:
            einstein = await cs3.login("einstein", "relativity")
            await einstein.files.write(path, (DATA / "test4.ipynb").read_bytes())
        async with node_process(
            tmp_path, gw.grpc_address, lock_expiry=lock_expiry, checkpoint_quiet_period=0.3,
            checkpoint_max_interval=1, document_cleanup_delay=0.5, rpc_timeout=2,
        ) as node:
            async with httpx.AsyncClient(timeout=30) as http:
                session = await node.open_session(http, "outage.ipynb")
            url = node.ws_url(f"json:notebook:{session['fileId']}", sessionId=session["sessionId"])
            async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
                a = await tg.start(YClient(url).run, http)
                b = await tg.start(YClient(url).run, http)
                both = [a, b]
                await until_all(both, lambda: all(
                    c.synced.is_set() and (c.mesh_status() or {}).get("lock") == "held"
                    for c in both
                ))
                append(a.nb.ycells[0], " before")
                await a.flush()

                async def saved_before() -> bool:
                    return (await stored_cells(gw, path))[0].endswith(" before")

                await poll(saved_before)

                await gw.stop(signal.SIGKILL)
                typed = 0
                end = anyio.current_time() + outage
                while anyio.current_time() < end:
                    for who, c in enumerate(both):
                        append(c.nb.ycells[who + 1], f"<{typed}>")
                        await c.flush()
                    typed += 1
                    # The other client gets each edit through the node: sync goes on.
                    last = f"<{typed - 1}>"
                    await until_all(
                        both,
                        lambda last=last: last in b.source(1) and last in a.source(2),
                        timeout=10,
                    )
                    await anyio.sleep(0.1)  # a typist's pace, not a wait
                assert typed > 5
                # The room's status stays visible to clients throughout.
                assert a.mesh_status() is not None and b.mesh_status() is not None

                await gw.start()  # same root, same ports
                want = [f"<{typed - 1}>", f"<{typed - 1}>"]

                async def caught_up() -> bool:
                    cells = await stored_cells(gw, path)
                    return want[0] in cells[1] and want[1] in cells[2]

                await poll(caught_up)
                cells = await stored_cells(gw, path)
                for i in range(typed):
                    assert cells[1].count(f"<{i}>") == 1 and cells[2].count(f"<{i}>") == 1
                lock = await file_lock(gw, path)
                assert lock is not None and lock.app_name == APP_NAME
                for c in both:
                    await c.close()
            # The room closes (cleanup delay 0.5 s) and releases its lock: nothing leaked.

            async def released() -> bool:
                return await file_lock(gw, path) is None

            await poll(released)
            failures = len(re.findall(r"checkpoint failed, will retry", node.log))
            print(f"\noutage: {outage:.0f}s typed={typed} failed_checkpoints={failures} lost=0")  # noqa: T201
            assert failures >= 1
            # Backoff (1, 2, 4... s), not a hot loop: a handful of attempts per outage.
            assert failures <= 2 + outage, failures


async def test_gateway_outage_shorter_than_the_lock(tmp_path: Path) -> None:
    await _outage(tmp_path, lock_expiry=30, outage=OUTAGE)


async def test_gateway_outage_longer_than_the_lock(tmp_path: Path) -> None:
    await _outage(tmp_path, lock_expiry=3, outage=6)


async def test_status_names_the_last_checkpoint(tmp_path: Path, einstein) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import EINSTEIN, client
    from tests.reliability.test_lock_faults import StatusWatcher, node

    info = await einstein.files.write(
        "/home/einstein/status.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    watcher = StatusWatcher()
    async with node(tmp_path) as server, anyio.create_task_group() as tg:
        tg.start_soon(watcher.run, server, info.id, einstein)
        async with client(server, tg, info.id, einstein, EINSTEIN) as a:
            await watcher.until(lock="held")
            append(a.nb.ycells[0], " saved")
            nb_room = server.rooms[info.id]
            with anyio.fail_after(10):
                while nb_room.checkpointer.saves < 1:
                    await nb_room.checkpointer.saved.wait()
            await nb_room.room.flush()
            # The first checkpoint is written: the clients must be told when.
            with anyio.fail_after(5):
                while not (watcher.statuses and watcher.statuses[-1].get("checkpoint")):
                    watcher.changed = anyio.Event()
                    await watcher.changed.wait()
        tg.cancel_scope.cancel()
