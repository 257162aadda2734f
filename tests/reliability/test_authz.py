"""Who may do what: a matrix of actors and actions against a multi-user node, each with its
documented answer (HTTP status or websocket close code, close_codes.py), and no secret in
any log line.

Actors: anonymous, a forged cookie, a replayed cookie after logout, a user the notebook is
not shared with ("wrong user"), a viewer, an editor, the owner; then a forged identity in
awareness, an expired CS3 token, and paths that try to leave the user's storage. (Remote
sites without or with wrong credentials come with federation.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import httpx
import pytest

from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.helpers import append, eventually
from tests.jupyter.conftest import Node, NodeFactory
from tests.reliability.conftest import DATA
from tests.reliability.yclient import YClient

PASSWORDS = {"einstein": "relativity", "marie": "radioactivity", "richard": "superfluidity"}
LOGGERS = ("", "ServerApp", "MeshCollabApp", "tornado", "mesh_collab", "grpc", "httpx")


@dataclass
class World:
    node: Node
    room_url: str
    session_path: str
    cookies: dict[str, str]
    http: dict[str, httpx.AsyncClient]


async def login(node: Node, user: str) -> httpx.AsyncClient:
    http = httpx.AsyncClient(timeout=30)
    response = await node.login(http, user, PASSWORDS[user])
    assert response.status_code == 302, response.text
    return http


def cookie_header(http: httpx.AsyncClient) -> str:
    return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


@pytest.fixture
async def world(
    node_factory: NodeFactory, gateway: Any, einstein: Session, cs3: Any
) -> Any:
    node = await node_factory(gateway, auth_mode="multi-user")
    info = await einstein.files.write(
        "/home/einstein/matrix.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    marie = await cs3.login("marie", "radioactivity")
    richard = await cs3.login("richard", "superfluidity")
    for session, role in ((marie, Role.VIEWER), (richard, Role.EDITOR)):
        share = await einstein.shares.create(info.id, session.user.id, role)
        await session.shares.accept(share.id)
    clients = {user: await login(node, user) for user in ("einstein", "marie", "richard")}
    base = node.url.replace("http://", "ws://") + "api/collaboration/room/"
    w = World(node, f"{base}json:notebook:{info.id}", "matrix.ipynb",
              {u: cookie_header(h) for u, h in clients.items()}, clients)
    # A fourth login, logged out at once: its cookie is a replayed one.
    stale = await login(node, "einstein")
    w.cookies["replayed"] = cookie_header(stale)
    assert (await stale.get(f"{node.url}logout")).status_code == 200
    await stale.aclose()
    w.cookies["forged"] = re.sub(r'username-[^=]+="?[^;]*', "username-x=forged",
                                 w.cookies["einstein"])
    w.cookies["anonymous"] = ""
    try:
        yield w
    finally:
        for h in clients.values():
            await h.aclose()


async def ws_outcome(world: World, actor: str, *, edit: str | None = None) -> dict[str, Any]:
    """Connect as ``actor``; optionally type ``edit``; report the close code (None: served),
    whether the edit reached the node, and the role the node stamped."""
    headers = {"Cookie": world.cookies[actor]} if world.cookies[actor] else {}
    out: dict[str, Any] = {"close": None, "edit_applied": None, "role": None}
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        c = await tg.start(YClient(world.room_url, headers=headers).run, http)
        with anyio.fail_after(15):
            await c.until(lambda: c.synced.is_set() or c.closed is not None)
        if c.closed is not None:
            out["close"] = c.closed.code
            return out
        await c.set_awareness(c.doc.client_id, 1, {"user": {"username": "einstein",
                                                            "name": "Forged Einstein"}})
        if edit is not None:
            append(c.nb.ycells[0], edit)
            await c.flush()
        # An owner's probe sees what the node relays (edit applied? role stamped?).
        probe_headers = {"Cookie": world.cookies["einstein"]}
        probe = await tg.start(YClient(world.room_url, headers=probe_headers).run, http)
        await probe.until(lambda: probe.synced.is_set() and c.doc.client_id in probe.awareness)
        state = probe.awareness[c.doc.client_id] or {}
        out["role"] = state.get("user", {}).get("role")
        out["username"] = state.get("user", {}).get("username")
        if edit is not None:
            room = next(iter(world.node.state.server.rooms.values()))
            await room.room.flush()
            out["edit_applied"] = edit in probe.source(0)
        await c.close()
        await probe.close()
    return out


# (actor, expected websocket outcome)
WS_MATRIX = [
    ("anonymous", {"close": 403}),  # the handshake is refused (jupyter_server: 403)
    ("forged", {"close": 403}),
    ("replayed", {"close": 403}),
    ("marie", {"close": None, "role": "viewer", "username": "marie", "edit_applied": False}),
    ("richard", {"close": None, "role": "editor", "username": "richard",
                 "edit_applied": True}),
    ("einstein", {"close": None, "role": "editor", "username": "einstein",
                  "edit_applied": True}),
]


@pytest.mark.parametrize(("actor", "expected"), WS_MATRIX, ids=[a for a, _ in WS_MATRIX])
async def test_websocket_matrix(world: World, actor: str, expected: dict[str, Any]) -> None:
    outcome = await ws_outcome(world, actor, edit=f"# by {actor}")
    for key, value in expected.items():
        assert outcome[key] == value, (actor, key, outcome)


async def test_a_user_without_a_share_is_forbidden(
    node_factory: NodeFactory, gateway: Any, einstein: Session
) -> None:
    node = await node_factory(gateway, auth_mode="multi-user")
    info = await einstein.files.write(
        "/home/einstein/private.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    http = await login(node, "richard")
    try:
        url = (node.url.replace("http://", "ws://")
               + f"api/collaboration/room/json:notebook:{info.id}")
        async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
            c = await tg.start(YClient(url, headers={"Cookie": cookie_header(http)}).run,
                               session)
            await c.until(lambda: c.closed is not None or c.synced.is_set())
            assert not c.synced.is_set()
            assert c.closed is not None
            assert c.closed.code in (CloseCode.FORBIDDEN, CloseCode.NOT_FOUND), c.closed
        # By path, richard reaches only his own storage.
        r = await node.api("PUT", "collaboration/session/private.ipynb", http=http,
                           body={"format": "json", "type": "notebook"},
                           headers={"X-XSRFToken": http.cookies.get("_xsrf", "")})
        assert r.status_code == 404, r.text
        for path in ("../einstein/private.ipynb", "%2E%2E/einstein/private.ipynb"):
            r = await node.api("GET", f"contents/{path}", http=http)
            assert r.status_code in (400, 403, 404), (path, r.status_code)
    finally:
        await http.aclose()


HTTP_MATRIX = [
    # actor, method, api, expected status
    ("anonymous", "GET", "me", 403),
    ("anonymous", "PUT", "collaboration/session/matrix.ipynb", 403),
    ("anonymous", "GET", "contents/matrix.ipynb", 403),
    ("forged", "GET", "me", 403),
    ("replayed", "GET", "contents/matrix.ipynb", 403),
    ("marie", "GET", "contents/matrix.ipynb", 404),  # not in her home; shares are elsewhere
    ("einstein", "GET", "contents/matrix.ipynb", 200),
    ("einstein", "PUT", "collaboration/session/matrix.ipynb", 201),
    ("einstein", "PUT", "collaboration/session/..%2Fmarie%2Fx.ipynb", 400),
]


@pytest.mark.parametrize(("actor", "method", "api", "status"), HTTP_MATRIX,
                         ids=[f"{a}-{m}-{p.split('/')[0]}" for a, m, p, _ in HTTP_MATRIX])
async def test_http_matrix(world: World, actor: str, method: str, api: str, status: int) -> None:
    headers = {}
    if world.cookies[actor]:
        headers["Cookie"] = world.cookies[actor]
        xsrf = re.search(r"_xsrf=([^;]+)", world.cookies[actor])
        if xsrf:
            headers["X-XSRFToken"] = xsrf.group(1)
    async with httpx.AsyncClient(timeout=30) as http:
        body = '{"format": "json", "type": "notebook"}' if method == "PUT" else None
        r = await http.request(method, f"{world.node.url}api/{api}", content=body,
                               headers=headers)
    assert r.status_code == status, (actor, method, api, r.status_code, r.text[:200])


async def test_expired_cs3_token_is_refused_with_its_code(
    node_factory: NodeFactory, gateway_factory: Any, cs3_client_factory: Any
) -> None:
    gw = await gateway_factory(site="site-a", token_lifetime=2)
    cs3 = await cs3_client_factory(gw.grpc_address)
    einstein = await cs3.login("einstein", "relativity")
    info = await einstein.files.write(
        "/home/einstein/exp.ipynb", (DATA / "test4.ipynb").read_bytes()
    )
    token = await einstein.tokens.token()
    node = await node_factory(gw, cs3_username="", cs3_password="", cs3_token=token)
    await anyio.sleep(3)  # the token's lifetime passing is the thing tested
    url = (node.url.replace("http://", "ws://")
           + f"api/collaboration/room/json:notebook:{info.id}?token={node.token}")
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        c = await tg.start(YClient(url).run, http)
        await c.until(lambda: c.closed is not None or c.synced.is_set())
        assert c.closed is not None and c.closed.code == CloseCode.UNAUTHORIZED, c.closed
    r = await node.api("PUT", "collaboration/session/exp.ipynb",
                       body={"format": "json", "type": "notebook"})
    assert r.status_code == 401, (r.status_code, r.text[:200])


async def test_no_secret_in_any_log_line(
    world: World, caplog: pytest.LogCaptureFixture, einstein: Session
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    for actor in ("anonymous", "forged", "marie", "richard", "einstein"):
        await ws_outcome(world, actor, edit=f"# log test {actor}")
    bad = httpx.AsyncClient(timeout=30)
    await world.node.login(bad, "einstein", "wrong-relativity")
    await bad.aclose()
    # Checkpoint: a save through the data gateway (transfer tokens in its URLs).
    room = next(iter(world.node.state.server.rooms.values()))
    await room.checkpointer.flush()
    secrets = set(PASSWORDS.values()) | {"wrong-relativity"}
    for user in ("einstein", "marie", "richard"):
        session = world.node.state.sessions.get(user)
        assert session is not None
        secrets.add(await session.tokens.token())
    secrets |= set(world.node.state.sessions._keys)
    secrets |= {v for k, v in world.http["einstein"].cookies.items() if k.startswith("username")}
    secrets.add(await einstein.tokens.token())
    records = [r for r in caplog.records if not r.name.startswith("httpcore")]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
                     for r in records)
    assert len(records) > 20
    leaked = [s[:6] + "..." for s in secrets if s and s in text]
    assert not leaked, f"secrets in logs: {leaked}"
    assert not re.search(r"/datagateway/(?!<redacted>)[A-Za-z0-9_\-.]{8,}", text)


async def test_global_presence_shows_a_user_only_their_own_windows(world: World) -> None:
    """JupyterLab publishes in its global awareness which file each window shows
    (``current``): nobody else may learn it, nor that the user is online. Collaborators still
    see one another in the rooms of the documents they both have open."""
    presence_url = world.room_url.rsplit("/", 1)[0] + "/JupyterLab:globalAwareness"
    secret = "notebook:private/secret.ipynb"
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:

        async def join(url: str, user: str) -> YClient:
            c: YClient = await tg.start(
                YClient(url, headers={"Cookie": world.cookies[user]}).run, http)
            await c.until(c.synced.is_set)
            return c

        einstein = await join(presence_url, "einstein")
        await einstein.set_awareness(einstein.doc.client_id, 1, {"current": secret})
        # His other window sees it: the node holds it.
        window = await join(presence_url, "einstein")
        await window.until(
            lambda: (window.awareness.get(einstein.doc.client_id) or {}).get("current") == secret
        )
        # A newcomer gets every state the room holds before its sync completes.
        marie = await join(presence_url, "marie")
        assert einstein.doc.client_id not in marie.awareness
        assert not any(secret in repr(state) for state in marie.awareness.values())
        assert not any((state or {}).get("user", {}).get("username") == "einstein"
                       for state in marie.awareness.values())
        # In the notebook both have open, they see each other's cursors.
        e_doc = await join(world.room_url, "einstein")
        m_doc = await join(world.room_url, "marie")
        await e_doc.set_awareness(e_doc.doc.client_id, 1, {"cursors": [{"head": 3}]})
        seen = await m_doc.until(lambda: m_doc.awareness.get(e_doc.doc.client_id))
        assert seen["user"]["username"] == "einstein" and seen["cursors"] == [{"head": 3}]
        for c in (einstein, window, marie, e_doc, m_doc):
            await c.close()

    async def no_presence_room() -> bool:
        return not world.node.state.server.awareness_rooms

    # A user's presence room goes with their last window: the node keeps none per user.
    await eventually(no_presence_room)
