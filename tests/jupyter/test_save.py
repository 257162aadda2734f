"""Ctrl+S as the stock frontend sends it: a raw "save" request over the room's websocket.

The node answers as jupyter-collaboration's server does (``{"type": "save", "responseTo": id,
"status": ...}``): the primary checkpoints at once (a CS3 version), a viewer is "skipped".
After every checkpoint the document's ``state.hash`` is the file's etag, which is what the
frontend compares before its next save (a stale one opens the "File Changed" dialog).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote, urlencode

import aiohttp
import anyio
from pycrdt import Map

from mesh_collab import notebook, protocol
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.reliability.yclient import YClient

NOTEBOOK = notebook.to_bytes(
    {
        "cells": [
            {"cell_type": "code", "id": "c1", "metadata": {}, "source": "x = 1",
             "outputs": [], "execution_count": None},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
)


async def session_of(node: Node, path: str, http: aiohttp.ClientSession | None = None) -> dict:
    response = await node.api(
        "PUT", f"collaboration/session/{quote(path)}", body={"format": "json", "type": "notebook"}
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def client(node: Node, path: str, **headers: str) -> AsyncIterator[YClient]:
    s = await session_of(node, path)
    query = urlencode({"sessionId": s["sessionId"]})
    url = (node.url.replace("http://", "ws://")
           + f"api/collaboration/room/json:notebook:{s['fileId']}?{query}")
    auth = headers or {"Authorization": f"token {TOKEN}"}
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        c = await tg.start(YClient(url, headers=auth).run, http)
        await c.synced.wait()
        yield c
        await c.close()


def state_hash(c: YClient) -> str | None:
    return c.doc.get("state", type=Map).get("hash")


async def test_ctrl_s_checkpoints_now_and_publishes_the_files_hash(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    # No timer would save within the test: only the save request can.
    node = await node_factory(gateway, checkpoint_quiet_period=600, checkpoint_max_interval=900)
    info = await einstein.files.write("/home/einstein/s.ipynb", NOTEBOOK)
    versions_before = len(await einstein.versions.list(info.id))
    async with client(node, "s.ipynb") as c:
        source = c.nb.ycells[0]["source"]
        source += " + 41"  # a Text edited in place, as typing does
        reply = await c.save(7)
        assert reply == {"type": "save", "responseTo": 7, "status": "success"}
        # The typed text is in the file, as one new version.
        saved = notebook.from_bytes(await einstein.files.read(info.id))
        assert saved["cells"][0]["source"] == "x = 1 + 41"
        assert len(await einstein.versions.list(info.id)) == versions_before + 1
        # The frontend learns what is on disk: the hash the contents API reports.
        model = (await node.contents("GET", "s.ipynb", params={"content": 0, "hash": 1})).json()
        await c.until(lambda: state_hash(c) == model["hash"])
        # Nothing new to save: answered at once, and no empty version is made.
        assert (await c.save(8))["status"] == "success"
        assert len(await einstein.versions.list(info.id)) == versions_before + 1


async def test_ctrl_s_of_a_viewer_is_skipped(
    node_factory: NodeFactory, gateway, einstein: Session, marie: Session
) -> None:
    node = await node_factory(gateway, auth_mode="multi-user")
    info = await einstein.files.write("/home/einstein/v.ipynb", NOTEBOOK)
    share = await einstein.shares.create(info.id, marie.user.id, Role.VIEWER)
    await marie.shares.accept(share.id)
    async with node.http.__class__(timeout=30) as http:
        assert (await node.login(http, "marie", "radioactivity")).status_code == 302
        cookies = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        s = (await node.api(
            "PUT", f"collaboration/session/{quote('Shared with me/v.ipynb')}",
            body={"format": "json", "type": "notebook"}, http=http,
            headers={"X-XSRFToken": http.cookies.get("_xsrf", "")},
        )).json()
    url = (node.url.replace("http://", "ws://")
           + f"api/collaboration/room/json:notebook:{s['fileId']}?sessionId={s['sessionId']}")
    async with aiohttp.ClientSession() as ws_http, anyio.create_task_group() as tg:
        c = await tg.start(YClient(url, headers={"Cookie": cookies}).run, ws_http)
        await c.synced.wait()
        assert (await c.save(1))["status"] == "skipped"
        await c.close()
    assert len(await einstein.versions.list(info.id)) == 0


async def test_a_flood_of_save_requests_is_answered_one_at_a_time(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    """Every request gets its answer; while one save runs, the others are "skipped" (as the
    stock server answers a save already in progress) instead of each starting a save."""
    node = await node_factory(gateway, checkpoint_quiet_period=600, checkpoint_max_interval=900)
    info = await einstein.files.write("/home/einstein/f.ipynb", NOTEBOOK)
    async with client(node, "f.ipynb") as c:
        source = c.nb.ycells[0]["source"]
        source += " + 1"
        await c.flush()
        for request_id in range(1, 201):
            await c.send_raw(protocol.save_request(request_id))
        await c.until(lambda: len(c.save_replies) == 200, timeout=60)
        statuses = [r["status"] for r in c.save_replies]
        assert set(statuses) <= {"success", "skipped"}
        assert "success" in statuses
        assert sorted(r["responseTo"] for r in c.save_replies) == list(range(1, 201))
    assert len(await einstein.versions.list(info.id)) == 1
