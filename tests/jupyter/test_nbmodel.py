"""Server-side execution with the real jupyter-server-nbmodel and a real ipykernel: the
kernel's outputs reach the shared document through mesh_collab's rooms (ydoc_compat.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import httpx
import nbformat
import pytest

from mesh_collab import notebook
from mesh_collab.cs3.client import Session
from tests.jupyter.conftest import TOKEN, Node, NodeFactory, jupyter_process
from tests.reliability.yclient import YClient

pytest.importorskip("jupyter_server_nbmodel")

CLEANUP_DELAY = 0.2
GRACE = 0.3
WITH_NBMODEL = {"jpserver_extensions": {"mesh_collab.jupyter": True,
                                        "jupyter_server_nbmodel": True}}


def notebook_bytes(*sources: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, id=f"cell-{i}") for i, src in enumerate(sources)]
    return nbformat.writes(nb).encode()


@pytest.fixture
async def nbmodel_node(node_factory: NodeFactory, gateway: Any) -> AsyncIterator[Node]:
    """A node with nbmodel loaded, its timings shortened."""
    node = await node_factory(
        gateway, server_config=WITH_NBMODEL, document_cleanup_delay=CLEANUP_DELAY,
        checkpoint_quiet_period=0.2, checkpoint_max_interval=1,
    )
    compat = node.extension.ydoc_compat
    compat.grace, compat.poll_interval = GRACE, 0.05
    yield node
    # nbmodel 0.2.9's stop_extension never disposes its execution stack (a name-mangling
    # slip); left to the garbage collector, its kernel clients' zmq contexts block the
    # collection of a later test for good. Dispose of it while the server still runs.
    (extension,) = node.app.extension_manager.extension_apps["jupyter_server_nbmodel"]
    stack = extension._Extension__execution_stack
    for kernel_id in node.app.kernel_manager.list_kernel_ids():
        # cancel() stops the kernel's worker and client, then re-raises the worker's
        # cancellation: in a task of its own, so that it does not look like ours.
        await asyncio.wait({asyncio.ensure_future(stack.cancel(kernel_id))})
    await stack.dispose()  # the rest (pending inputs), with no worker left to re-raise


async def start_kernel(node: Node) -> str:
    response = await node.api("POST", "kernels", body={"name": "python3"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def execute(node: Node, kernel: str, code: str, **metadata: str) -> str:
    """Ask nbmodel to run ``code`` as a cell of a document; returns the request's URL."""
    response = await node.api(
        "POST", f"kernels/{kernel}/execute", body={"code": code, "metadata": metadata}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["request_url"])


async def request_state(node: Node, url: str, status: int) -> dict[str, Any]:
    """Poll nbmodel's request endpoint (it has no push) until it answers ``status``."""
    with anyio.fail_after(60):
        while True:
            response = await node.http.get(node.url + url.lstrip("/"))
            if response.status_code == status:
                return response.json()  # type: ignore[no-any-return]
            assert response.status_code in (200, 202, 300), response.text
            await anyio.sleep(0.05)


def room_url(node: Node, rid: Any) -> str:
    return (node.url.replace("http://", "ws://")
            + f"api/collaboration/room/json:notebook:{rid}?token={TOKEN}")


def outputs(c: YClient) -> list[dict[str, Any]]:
    return list(c.nb.get_cell(0)["outputs"]) if len(c.nb.ycells) else []


def stdout(cell_outputs: list[dict[str, Any]]) -> str:
    return "".join("".join(o.get("text", "")) for o in cell_outputs if o.get("name") == "stdout")


async def stored_cell(session: Session, rid: Any, check: Any) -> dict[str, Any]:
    """The notebook's first cell in CS3, once ``check(cell)`` holds (storage has no change
    events: poll it)."""
    with anyio.fail_after(20):
        while True:
            cell = notebook.from_bytes(await session.files.read(rid))["cells"][0]
            if check(cell):
                return cell  # type: ignore[no-any-return]
            await anyio.sleep(0.1)


async def test_a_run_goes_on_after_the_browser_closed_and_every_client_sees_its_outputs(
    nbmodel_node: Node, einstein: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = nbmodel_node
    server, compat = node.state.server, node.extension.ydoc_compat
    checks: list[tuple[float, bool]] = []
    checked = anyio.Event()
    real_executing = compat.executing

    def executing(rid: Any) -> bool:
        nonlocal checked
        result = real_executing(rid)
        checks.append((time.monotonic(), result))
        checked.set()
        checked = anyio.Event()
        return result

    monkeypatch.setattr(compat, "executing", executing)
    # The cell blocks, its kernel busy, until the test answers on a socket (stdin through
    # nbmodel races with the kernel's input request).
    go = anyio.Event()

    async def answer(stream: Any) -> None:
        async with stream:
            await go.wait()
            await stream.send(b"world")

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, \
            aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        code = (
            "import socket\n"
            'print("started", flush=True)\n'
            f'with socket.create_connection(("127.0.0.1", {port})) as s:\n'
            "    answer = s.recv(64).decode()\n"
            'print("hello", answer)'
        )
        info = await einstein.files.write("/home/einstein/run.ipynb", notebook_bytes(code))
        kernel = await start_kernel(node)
        tg.start_soon(listener.serve, answer)

        browser = await tg.start(YClient(room_url(node, info.id)).run, http)
        await browser.until(lambda: browser.synced.is_set())
        room = server.rooms[info.id]
        request = await execute(node, kernel, code, document_id=f"json:notebook:{info.id}",
                                cell_id="cell-0")
        await browser.until(lambda: stdout(outputs(browser)) == "started\n")
        await browser.close()
        left = time.monotonic()

        # The kernel is busy: with no client left, the room would have closed CLEANUP_DELAY
        # after the browser left. It is held past that, by the busy kernel (the grace after
        # the hand-out is over too).
        with anyio.fail_after(20):
            while not any(ok and t > left + GRACE + CLEANUP_DELAY + 0.2 for t, ok in checks):
                await checked.wait()
        assert server.rooms.get(info.id) is room
        assert (await node.http.get(node.url + request.lstrip("/"))).status_code == 202
        go.set()
        result = await request_state(node, request, 200)
        assert result["status"] == "ok"
        assert server.rooms.get(info.id) is room  # the same room all along
        tg.cancel_scope.cancel()

    expected = [{"output_type": "stream", "name": "stdout", "text": "started\nhello world\n"}]
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        late = await tg.start(YClient(room_url(node, info.id)).run, http)
        cell = await late.until(
            lambda: late.synced.is_set() and late.nb.get_cell(0)["execution_count"] == 1
            and late.nb.get_cell(0)
        )
        assert cell["outputs"] == expected  # exactly once
        assert "jupyter_server_nbmodel" not in cell["metadata"]
        await late.close()
    stored = await stored_cell(einstein, info.id, lambda c: c["execution_count"] == 1)
    assert stored["outputs"] == expected

    # The run over, the hold ends; the room closes CLEANUP_DELAY after its last client.
    entry = server._rooms[info.id]
    with anyio.fail_after(20):
        await entry.closed.wait()
    assert not compat.current_activity()


async def test_a_run_opens_the_room_of_a_notebook_nobody_has_open(
    nbmodel_node: Node, einstein: Session
) -> None:
    """No browser at all: nbmodel's get_document opens the room with the node's session
    (by path as well as by id: the frontend sends both), and the outputs are checkpointed."""
    node = nbmodel_node
    info = await einstein.files.write("/home/einstein/quiet.ipynb", notebook_bytes("6 * 7"))
    kernel = await start_kernel(node)
    request = await execute(node, kernel, "6 * 7", document_id=f"json:notebook:{info.id}",
                            document_path="quiet.ipynb", cell_id="cell-0")
    assert (await request_state(node, request, 200))["status"] == "ok"
    stored = await stored_cell(einstein, info.id, lambda c: c["outputs"])
    assert stored["execution_count"] == 1
    assert [o["data"] for o in stored["outputs"]] == [{"text/plain": "42"}]


async def test_get_document_copies_and_refuses_what_is_not_a_notebook(
    nbmodel_node: Node, einstein: Session
) -> None:
    node = nbmodel_node
    info = await einstein.files.write("/home/einstein/c.ipynb", notebook_bytes("1"))
    compat = node.app.web_app.settings["jupyter_server_ydoc"]
    assert compat is node.app.extension_manager.extension_apps["jupyter_server_ydoc"].pop()
    room_id = f"json:notebook:{info.id}"
    assert await compat.get_document(room_id=room_id, create=False) is None
    fork = await compat.get_document(path="c.ipynb", content_type="notebook", file_format="json")
    fork.ycells[0]["source"] += " + 1"  # a copy: the room does not change
    live = await compat.get_document(room_id=room_id, copy=False)
    assert str(live.ycells[0]["source"]) == "1"
    assert await compat.get_document(room_id="text:file:x") is None
    assert await compat.get_document(room_id="json:notebook:not-an-id") is None
    with pytest.raises(ValueError):
        await compat.get_document(room_id=room_id, path="c.ipynb")


async def test_in_a_jupyter_server_process_with_every_installed_extension(
    gateway: Any, einstein: Session, tmp_path: Path, jupyter_env: Path
) -> None:
    """As users start it: nbmodel enabled by its own installed config, jupyter_server_ydoc
    disabled by ours; nbmodel finds mesh_collab's rooms when it loads (before mesh_collab)."""
    env = {
        "MESH_COLLAB_GATEWAY": gateway.grpc_address,
        "MESH_COLLAB_CS3_USERNAME": "einstein",
        "MESH_COLLAB_CS3_PASSWORD": "relativity",
    }
    info = await einstein.files.write("/home/einstein/p.ipynb", notebook_bytes("print(7)"))
    async with jupyter_process(tmp_path, jupyter_env, env=env) as server, httpx.AsyncClient(
        base_url=f"{server.url}api/", headers={"Authorization": f"token {TOKEN}"}, timeout=30
    ) as http:
        kernel = (await http.post("kernels", json={"name": "python3"})).json()["id"]
        r = await http.post(f"kernels/{kernel}/execute", json={
            "code": "print(7)", "metadata": {"document_id": f"json:notebook:{info.id}",
                                             "cell_id": "cell-0"}})
        assert r.status_code == 202, r.text
        stored = await stored_cell(einstein, info.id, lambda c: c["outputs"])
    assert stored["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "7\n"}]
    assert "collaboration extensions found" not in server.log
    assert "is not installed on the server" not in server.log
