"""Rights follow the storage while a document is open: a share downgraded or removed at the
gateway reaches the grantee's open connection within ``rights_check_interval`` seconds.

The grantee's connection is closed with 1003 and a JSON reason that the stock JupyterLab
frontend shows in a dialog (with a Reload button when reopening makes sense): a downgraded
editor reopens the document read-only, a user whose share is gone cannot reopen it.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import httpx
import pytest

from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.helpers import append
from tests.jupyter.conftest import NodeFactory
from tests.reliability.conftest import DATA
from tests.reliability.yclient import YClient

INTERVAL = 0.5


async def cookie_of(node: Any, user: str, password: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await node.login(http, user, password)
        assert response.status_code == 302, response.text
        return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


async def closed_by(change: Any, url: str, cookie: str, tg: Any, http: Any) -> Any:
    """Connect as the grantee, make ``change`` at the storage, return how the node closed
    the connection (within a few rights checks)."""
    client = await tg.start(YClient(url, headers={"Cookie": cookie}).run, http)
    await client.until(lambda: client.synced.is_set())
    await change
    with anyio.fail_after(10 * INTERVAL + 5):
        await client.until(lambda: client.closed is not None)
    assert client.closed.code == CloseCode.UNKNOWN_SESSION
    return json.loads(client.closed.reason)


@pytest.fixture
async def shared(node_factory: NodeFactory, gateway: Any, einstein: Session, cs3: Any) -> Any:
    node = await node_factory(gateway, auth_mode="multi-user", rights_check_interval=INTERVAL)
    info = await einstein.files.write(
        "/home/einstein/revoked.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    richard = await cs3.login("richard", "superfluidity")
    share = await einstein.shares.create(info.id, richard.user.id, Role.EDITOR)
    await richard.shares.accept(share.id)
    url = node.url.replace("http://", "ws://") + f"api/collaboration/room/json:notebook:{info.id}"
    cookie = await cookie_of(node, "richard", "superfluidity")
    return node, url, cookie, share


async def test_an_editor_whose_share_becomes_viewer_is_told_and_reopens_read_only(
    shared: Any, einstein: Session
) -> None:
    node, url, cookie, share = shared
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        reason = await closed_by(einstein.shares.update(share.id, Role.VIEWER), url, cookie,
                                 tg, http)
        assert reason["reloadable"] is True
        assert "read-only" in reason["errorReason"]
        # Reopened: served, as a viewer (an edit never reaches the document).
        again = await tg.start(YClient(url, headers={"Cookie": cookie}).run, http)
        await again.until(lambda: again.synced.is_set())
        append(again.nb.ycells[0], "# after the downgrade")
        await again.flush()
        room = next(iter(node.state.server.rooms.values()))
        await room.room.flush()
        assert "# after the downgrade" not in str(room.ynotebook.ycells[0]["source"])
        assert again.closed is None
        await again.close()
        tg.cancel_scope.cancel()


async def test_a_user_whose_share_is_removed_is_told_and_cannot_reopen(
    shared: Any, einstein: Session
) -> None:
    node, url, cookie, share = shared
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        reason = await closed_by(einstein.shares.remove(share.id), url, cookie, tg, http)
        assert reason["reloadable"] is False
        assert "removed" in reason["errorReason"]
        again = await tg.start(YClient(url, headers={"Cookie": cookie}).run, http)
        with anyio.fail_after(15):
            await again.until(lambda: again.closed is not None)
        assert again.closed.code == CloseCode.FORBIDDEN
        tg.cancel_scope.cancel()
