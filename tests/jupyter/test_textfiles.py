"""Text files co-edited as ``text:file`` rooms, with real Yjs peers (npm yjs + y-websocket),
a real Jupyter server and the embedded gateway: the same guarantees as notebooks (lineage,
lock, checkpoints as versions, external changes merged, viewers read-only)."""

from __future__ import annotations

from urllib.parse import quote

import anyio
import pytest

from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.jupyter.conftest import TOKEN, Node, NodeFactory
from tests.nodepeer import node_peer


def ws_base(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "api/collaboration/room"


async def file_session(node: Node, path: str, doc_format: str = "text") -> dict:
    response = await node.api(
        "PUT", f"collaboration/session/{quote(path)}", body={"format": doc_format, "type": "file"}
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def until_file(session: Session, path: str, check) -> bytes:  # type: ignore[no-untyped-def]
    """Read the file until ``check(bytes)`` holds (storage has no change events: poll)."""
    with anyio.fail_after(20):
        while True:
            data = await session.files.read(path)
            if check(data):
                return data
            await anyio.sleep(0.05)


async def test_two_users_co_edit_a_markdown_file_and_every_token_lands_once(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    node = await node_factory(gateway, checkpoint_quiet_period=0.2, checkpoint_max_interval=1)
    original = "# Notes\r\n\r\nNon-ASCII: Schrödinger ψ\r\n"
    info = await einstein.files.write("/home/einstein/notes.md", original.encode())
    s = await file_session(node, "notes.md")
    assert s["fileId"] == str(info.id)
    room = f"text:file:{s['fileId']}"
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with node_peer(ws_base(node), room, params) as a, node_peer(
        ws_base(node), room, params
    ) as b:
        assert (await a.dump())["text"] == original
        tokens_a = [f" a{i}" for i in range(20)]
        tokens_b = [f" b{i}" for i in range(20)]
        for ta, tb in zip(tokens_a, tokens_b, strict=True):
            await a.send(op="type", text=ta)
            await b.send(op="type", text=tb)
        everything = tokens_a + tokens_b
        seen = await a.until(lambda d: all(t in d["text"] for t in everything))
        assert (await b.until(lambda d: d["text"] == seen["text"]))["text"] == seen["text"]
        data = await until_file(einstein, info.id, lambda d: d.decode() == seen["text"])
    text = data.decode()
    # Exactly once each, after the untouched original (line endings kept as they were).
    assert text.startswith(original)
    for token in everything:
        assert text.count(token + " ") + text.endswith(token) == 1, token
    assert len(await einstein.versions.list(info.id)) >= 1


async def test_a_text_file_changed_outside_is_merged_into_the_live_document(
    node_factory: NodeFactory, gateway, einstein: Session
) -> None:
    node = await node_factory(
        gateway, checkpoint_quiet_period=0.2, checkpoint_max_interval=1, file_poll_interval=0.2
    )
    await einstein.files.write("/home/einstein/script.py", b"a = 1\nb = 2\n")
    s = await file_session(node, "script.py")
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with node_peer(ws_base(node), f"text:file:{s['fileId']}", params) as peer:
        await peer.send(op="type", text="c = 3\n")
        await until_file(einstein, "/home/einstein/script.py", lambda d: d.endswith(b"c = 3\n"))
        # A tool that shares the room's lock (a sync client of the owner) rewrites line 1.
        (room,) = node.state.server.rooms.values()
        await einstein.files.write(
            "/home/einstein/script.py", b"a = 100\nb = 2\nc = 3\n", lock=room._lease.lock
        )
        merged = await peer.until(lambda d: d["text"].startswith("a = 100\n"))
        assert merged["text"] == "a = 100\nb = 2\nc = 3\n"
        await peer.send(op="type", text="d = 4\n")
        await until_file(
            einstein, "/home/einstein/script.py", lambda d: d == b"a = 100\nb = 2\nc = 3\nd = 4\n"
        )


async def test_a_viewer_of_a_text_file_is_read_only(
    node_factory: NodeFactory, gateway, einstein: Session, marie: Session
) -> None:
    node = await node_factory(gateway, cs3_username="marie", cs3_password="radioactivity")
    info = await einstein.files.write("/home/einstein/shared.txt", b"read me\n")
    share = await einstein.shares.create(info.id, marie.user.id, Role.VIEWER)
    await marie.shares.accept(share.id)
    s = await file_session(node, "Shared with me/shared.txt")
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with node_peer(ws_base(node), f"text:file:{s['fileId']}", params) as peer:
        await peer.send(op="type", text="vandalism")
        await peer.wait_for(lambda e: e["event"] == "done" and e["op"] == "type")
        # A second client sees only what the node accepted: nothing.
        async with node_peer(ws_base(node), f"text:file:{s['fileId']}", params) as other:
            assert (await other.dump())["text"] == "read me\n"
    assert await einstein.files.read(info.id) == b"read me\n"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "café".encode("latin-1"), "binary"),
    ],
)
async def test_binary_files_get_a_clear_answer_instead_of_a_room(
    node: Node, einstein: Session, name: str, data: bytes, reason: str
) -> None:
    await einstein.files.write(f"/home/einstein/{name}", data)
    response = await node.api(
        "PUT", f"collaboration/session/{quote(name)}", body={"format": "text", "type": "file"}
    )
    assert response.status_code == 415
    assert reason in response.json()["message"]


async def test_a_file_open_as_a_notebook_is_not_opened_as_text_too(
    node: Node, einstein: Session
) -> None:
    nb = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    await einstein.files.write("/home/einstein/both.ipynb", nb)
    notebook_session = await node.api(
        "PUT", "collaboration/session/both.ipynb", body={"format": "json", "type": "notebook"}
    )
    assert notebook_session.status_code == 201
    s = notebook_session.json()
    params = {"sessionId": s["sessionId"], "token": TOKEN}
    async with node_peer(ws_base(node), f"json:notebook:{s['fileId']}", params):
        as_text = await node.api(
            "PUT", "collaboration/session/both.ipynb", body={"format": "text", "type": "file"}
        )
        assert as_text.status_code == 415
        assert "open as a notebook" in as_text.json()["message"]
        async with node_peer(
            ws_base(node), f"text:file:{s['fileId']}", {"token": TOKEN}, synced=False
        ) as peer:
            closed = await peer.wait_for(lambda e: e["event"] == "closed")
            assert closed["code"] == CloseCode.UNSUPPORTED_DOCUMENT
