"""Who may do what: a matrix of actors and actions against a multi-user node, each with its
documented answer (HTTP status or websocket close code, close_codes.py), and no secret in
any log line.

Actors: anonymous, a forged cookie, a replayed cookie after logout, a user the notebook is
not shared with ("wrong user"), a viewer, an editor, the owner; then a forged identity in
awareness, an expired CS3 token, and paths that try to leave the user's storage; last, what
an editor share allows: editing, not taking the owner's file nor destroying it or its history.
(Remote sites without or with wrong credentials come with federation.)
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import httpx
import pytest

from mesh_collab import errors
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.gateway.storage import HIDDEN_LOCK_ID
from mesh_collab.cs3.models import Lock, Role
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


# ---- an editor share: edit, not take or destroy ---------------------------------------------


async def editor_share(einstein: Session, marie: Session, path: str) -> Any:
    """einstein's ``path`` (written twice: one version), shared with marie as editor."""
    await einstein.files.write(path, b"v1")
    info = await einstein.files.write(path, b"v2")
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    return info


async def test_an_editor_cannot_move_the_shared_file_into_her_home(
    einstein: Session, marie: Session
) -> None:
    report = await editor_share(einstein, marie, "/home/einstein/report.ipynb")
    with pytest.raises(errors.PermissionDenied):
        await marie.files.move(report.id, "/home/marie/taken.ipynb")
    owner_view = await einstein.files.stat("/home/einstein/report.ipynb")
    assert owner_view.id == report.id and owner_view.owner == einstein.user.id
    assert (await einstein.files.stat(report.id)).path == "/home/einstein/report.ipynb"
    assert (await marie.files.stat(report.id)).path == "/home/einstein/report.ipynb"
    with pytest.raises(errors.NotFound):
        await marie.files.stat("/home/marie/taken.ipynb")


async def test_an_editor_cannot_destroy_the_file_or_its_history(
    einstein: Session, marie: Session
) -> None:
    thesis = await editor_share(einstein, marie, "/home/einstein/thesis.ipynb")
    with pytest.raises(errors.PermissionDenied):
        await marie.files.delete(thesis.id)
    # Overwriting without versioning still leaves the owner the content it replaced.
    await marie.files.write(thesis.id, b"blank", disable_versioning=True)
    history = [await einstein.versions.read(thesis.id, v.key)
               for v in await einstein.versions.list(thesis.id)]
    assert history == [b"v2", b"v1"]


async def test_an_editors_delete_in_a_shared_folder_is_restorable_by_the_owner(
    einstein: Session, marie: Session
) -> None:
    await einstein.files.mkdir("/home/einstein/lab")
    folder = await einstein.files.stat("/home/einstein/lab")
    share = await einstein.shares.create(folder.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    await einstein.files.write("/home/einstein/lab/thesis.ipynb", b"v1")
    thesis = await einstein.files.write("/home/einstein/lab/thesis.ipynb", b"v2")
    await marie.files.delete(thesis.id)
    with pytest.raises(errors.NotFound):
        await einstein.files.stat(thesis.id)
    (item,) = await einstein.files.list_recycle("/home/einstein")
    assert item.path == "/home/einstein/lab/thesis.ipynb"
    await einstein.files.restore_recycle_item("/home/einstein", item.key)
    assert await einstein.files.read(thesis.id) == b"v2"
    (version,) = await einstein.versions.list(thesis.id)
    assert await einstein.versions.read(thesis.id, version.key) == b"v1"


async def test_an_editor_cannot_drag_a_file_out_of_a_shared_folder(
    node_factory: NodeFactory, gateway: Any, einstein: Session, marie: Session
) -> None:
    marie_node = await node_factory(gateway, cs3_username="marie", cs3_password="radioactivity")
    await einstein.files.mkdir("/home/einstein/proj")
    nb = await einstein.files.write("/home/einstein/proj/nb.ipynb",
                                    (DATA / "test4.ipynb").read_bytes())
    folder = await einstein.files.stat("/home/einstein/proj")
    share = await einstein.shares.create(folder.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    moved = await marie_node.contents("PATCH", "Shared with me/proj/nb.ipynb",
                                      body={"path": "nb.ipynb"})
    assert moved.status_code == 403, moved.text
    assert (await einstein.files.stat(nb.id)).path == "/home/einstein/proj/nb.ipynb"
    inside = await marie_node.contents("PATCH", "Shared with me/proj/nb.ipynb",
                                       body={"path": "Shared with me/proj/renamed.ipynb"})
    assert inside.status_code == 200, inside.text
    assert (await einstein.files.stat(nb.id)).path == "/home/einstein/proj/renamed.ipynb"


async def test_a_reused_transfer_token_is_refused(einstein: Session, cs3: Any) -> None:
    """An upload URL serves one PUT, and none once the share behind it is removed."""
    from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
    from cs3.types.v1beta1 import types_pb2

    from mesh_collab.cs3.models import reference

    info = await einstein.files.write("/home/einstein/probe.json", b'{"v": "einstein 1"}')
    marie = await cs3.login("marie", "radioactivity")
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)

    async def upload_url() -> tuple[str, str]:
        opaque = types_pb2.Opaque(map={"Upload-Length": types_pb2.OpaqueEntry(
            decoder="plain", value=b"15")})
        res = await marie.call("InitiateFileUpload", sp.InitiateFileUploadRequest(
            ref=reference(info.id), opaque=opaque))
        return res.protocols[0].upload_endpoint, res.protocols[0].token

    async with httpx.AsyncClient(timeout=30) as http:
        endpoint, token = await upload_url()
        statuses = [
            (await http.put(endpoint, headers={"X-Reva-Transfer": token},
                            content=f'{{"v": "marie {n}"}}'.encode())).status_code
            for n in (1, 2)
        ]
        assert statuses == [200, 403]
        endpoint, token = await upload_url()
        await einstein.shares.remove(share.id)
        for n in (3, 4):
            r = await http.put(endpoint, headers={"X-Reva-Transfer": token},
                               content=f'{{"v": "marie {n}"}}'.encode())
            assert r.status_code == 403
    assert await einstein.files.read(info.id) == b'{"v": "marie 1"}'


# ---- the room's lock: its id is not a viewer's to see, nor an editor's to take --------------


async def test_viewers_do_not_see_the_rooms_lock_id_and_editors_cannot_take_it(
    world: World, einstein: Session, cs3: Any
) -> None:
    viewer = await cs3.login("marie", "radioactivity")
    editor = await cs3.login("richard", "superfluidity")
    rid = (await einstein.files.stat("/home/einstein/matrix.ipynb")).id
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        owner = await tg.start(
            YClient(world.room_url, headers={"Cookie": world.cookies["einstein"]}).run, http)
        with anyio.fail_after(15):
            await owner.until(lambda: owner.synced.is_set())
        held = await eventually(lambda: einstein.locks.get(rid))
        assert held.app_name == "mesh_collab"
        # The room's own lock (lock_expiry, 60 s) is not touched by the gateway's cap.
        assert held.expiration <= time.time() + 61
        # A viewer sees that the room holds the file, not the id that writes through it.
        for seen in (await viewer.locks.get(rid), (await viewer.files.stat(rid)).lock):
            assert seen is not None and seen.app_name == "mesh_collab"
            assert seen.lock_id == HIDDEN_LOCK_ID
        # An editor sees the id, and still cannot take the lock over nor release it.
        assert (await editor.locks.get(rid)).lock_id == held.lock_id
        with pytest.raises(errors.LockConflict):
            await editor.locks.refresh(
                rid, Lock(lock_id="richard:1", app_name="mesh_collab",
                          expiration=float(int(time.time() + 60))),
                existing_lock_id=held.lock_id,
            )
        with pytest.raises(errors.LockConflict):
            await editor.locks.unlock(rid, held)
        assert (await einstein.locks.get(rid)).lock_id == held.lock_id
        room = next(iter(world.node.state.server.rooms.values()))
        assert room.lock_state == "held"
        await owner.close()
