"""A deployment's jupyter_server ``Authorizer`` (``ServerApp.authorizer_class``) governs
mesh_collab's REST API and websockets as it governs jupyter_server's own: a user it refuses
gets 403 and no websocket; a user it allows to read but not to write is served read-only, as
a viewer is, whatever their share allows."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
from jupyter_server.auth import Authorizer

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.data import NOTEBOOKS as DATA
from tests.helpers import append
from tests.jupyter.conftest import Node, NodeFactory
from tests.reliability.yclient import YClient

PASSWORDS = {"einstein": "relativity", "marie": "radioactivity"}
SHARED = "Shared with me/matrix.ipynb"


class MarieRefused(Authorizer):
    """Refuses marie everything (a user the deployment has locked out)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return bool(user.username != "marie")


class MarieReadsOnly(Authorizer):
    """Lets marie read and nothing else (JupyterHub's read-only sharing, for instance)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return bool(user.username != "marie" or action == "read")


@dataclass
class World:
    node: Node
    http: dict[str, httpx.AsyncClient]
    room_url: str
    presence_url: str
    #: A share marie gave einstein (of her own file) and a pending one einstein gave her.
    marie_share: str
    pending_for_marie: str
    marie_version: str


@pytest.fixture
async def world(
    request: pytest.FixtureRequest, node_factory: NodeFactory, gateway: Any,
    einstein: Session, marie: Session,
) -> AsyncIterator[World]:
    """A multi-user node with ``request.param`` as its Authorizer; einstein's notebook shared
    with marie as editor; things marie may change if the Authorizer lets her."""
    node = await node_factory(gateway, auth_mode="multi-user",
                              server_config={"authorizer_class": request.param})
    assert marie.user is not None and einstein.user is not None
    info = await einstein.files.write(
        "/home/einstein/matrix.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    other = await einstein.files.write("/home/einstein/other.ipynb", (DATA / "test4.ipynb")
                                       .read_bytes())
    pending = await einstein.shares.create(other.id, marie.user.id, Role.VIEWER)
    own = await marie.files.write("/home/marie/own.ipynb", (DATA / "test4.ipynb").read_bytes())
    await marie.files.write(own.id, (DATA / "notebook3.ipynb").read_bytes())
    (version, *_) = await marie.versions.list(own.id)
    given = await marie.shares.create(own.id, einstein.user.id, Role.VIEWER)
    http = {}
    for user, password in PASSWORDS.items():
        http[user] = httpx.AsyncClient(timeout=30)
        response = await node.login(http[user], user, password)
        assert response.status_code == 302, response.text
    base = node.url.replace("http://", "ws://") + "api/collaboration/room/"
    try:
        yield World(node, http, f"{base}json:notebook:{info.id}",
                    f"{base}JupyterLab:globalAwareness", given.id, pending.id, version.key)
    finally:
        for client in http.values():
            await client.aclose()


def headers(http: httpx.AsyncClient) -> dict[str, str]:
    """The cookie and XSRF header of a logged-in browser."""
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    xsrf = re.search(r"_xsrf=([^;]+)", cookie)
    return {"Cookie": cookie, **({"X-XSRFToken": xsrf.group(1)} if xsrf else {})}


async def call(world: World, user: str, method: str, api: str, body: Any = None) -> int:
    response = await world.node.api(method, api, body=body, http=world.http[user],
                                    headers=headers(world.http[user]))
    return response.status_code


def requests(world: World) -> list[tuple[str, str, Any]]:
    """Every REST route of mesh_collab, each with a request marie is normally answered."""
    session = {"format": "json", "type": "notebook"}
    return [
        ("PUT", "collaboration/session/Shared%20with%20me/matrix.ipynb", session),
        ("GET", "mesh/users?q=ein", None),
        ("GET", "mesh/sites", None),
        ("GET", f"mesh/status?path={SHARED}", None),
        ("GET", "mesh/shares?path=own.ipynb", None),
        ("POST", "mesh/shares", {"path": "own.ipynb", "grantee": "richard"}),
        ("DELETE", f"mesh/shares?id={world.marie_share}&kind=local", None),
        ("GET", "mesh/received", None),
        ("POST", "mesh/received", {"id": world.pending_for_marie, "action": "accept"}),
        ("GET", "mesh/shared-by-me", None),
        ("GET", "mesh/versions?path=own.ipynb", None),
        ("POST", "mesh/restore", {"path": "own.ipynb", "key": world.marie_version}),
    ]


async def ws(world: World, user: str, url: str, tg: Any, http: aiohttp.ClientSession) -> YClient:
    """A client of ``url`` as ``user``, once synced or closed."""
    client: YClient = await tg.start(YClient(url, headers=headers(world.http[user])).run, http)
    await client.until(lambda: client.synced.is_set() or client.closed is not None)
    return client


@pytest.mark.parametrize("world", [MarieRefused], indirect=True)
async def test_a_user_the_authorizer_refuses_gets_403_and_no_websocket(world: World) -> None:
    for method, api, body in requests(world):
        assert await call(world, "marie", method, api, body) == 403, (method, api)
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        for url in (world.room_url, world.presence_url):
            refused = await ws(world, "marie", url, tg, http)
            assert not refused.synced.is_set()
            assert refused.closed is not None and refused.closed.code == 403, refused.closed
            served = await ws(world, "einstein", url, tg, http)
            assert served.synced.is_set(), served.closed
            await served.close()
    # Everybody else is served as before.
    assert await call(world, "einstein", "GET", "mesh/status?path=matrix.ipynb") == 200


@pytest.mark.parametrize("world", [MarieReadsOnly], indirect=True)
async def test_a_user_the_authorizer_lets_only_read_is_served_read_only(world: World) -> None:
    status = (await world.node.api("GET", f"mesh/status?path={SHARED}",
                                   http=world.http["marie"])).json()
    assert (status["role"], status["writable"]) == ("viewer", False)  # her share: editor
    reads, writes = [], []
    for method, api, body in requests(world):
        (reads if method in ("GET", "PUT") else writes).append(
            (method, api, await call(world, "marie", method, api, body)))
    # Opening a session is reading: she may open the notebook, read-only.
    assert all(code in (200, 201) for *_, code in reads), reads
    assert all(code == 403 for *_, code in writes), writes
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        einstein = await ws(world, "einstein", world.room_url, tg, http)
        marie = await ws(world, "marie", world.room_url, tg, http)
        assert marie.synced.is_set(), marie.closed
        append(marie.nb.ycells[0], "# by marie")
        await marie.flush()
        await marie.set_awareness(marie.doc.client_id, 1, {"cursors": []})
        # Her presence comes after her update on one connection: once einstein sees it, the
        # node has handled the update.
        seen = await einstein.until(lambda: einstein.awareness.get(marie.doc.client_id))
        assert seen["user"]["role"] == "viewer"
        room = next(iter(world.node.state.server.rooms.values()))
        await room.room.flush()
        assert "# by marie" not in str(room.ynotebook.ycells[0]["source"])
        assert "# by marie" not in einstein.source(0)
        # She still reads: einstein's edit reaches her.
        append(einstein.nb.ycells[0], "# by einstein")
        await einstein.flush()
        await marie.until(lambda: "# by einstein" in marie.source(0))
        await marie.close()
        await einstein.close()
