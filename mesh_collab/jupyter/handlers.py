"""The collaboration URLs of the stock JupyterLab frontend, served by mesh_collab.

jupyter-collaboration 5's frontend asks ``PUT /api/collaboration/session/<path>`` for a
document session, then connects to ``/api/collaboration/room/<format>:<type>:<file id>``.
Here the file id is the notebook's CS3 resource id, so two paths to one resource (the owner's
and a recipient's share path) open one room, and a rename keeps it. The session id is the
document's *lineage*: a client that reconnects with another lineage's session (the history
was rebuilt) is told to reload (close code 1003) instead of merging into a foreign history.

Close codes are those of :mod:`mesh_collab.close_codes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web
from tornado.websocket import WebSocketHandler

from mesh_collab import errors
from mesh_collab.close_codes import CloseCode
from mesh_collab.documents import RoomSettings
from mesh_collab.jupyter.fileids import resource_id_for
from mesh_collab.jupyter.identity import MeshUser, mesh_state, session_for
from mesh_collab.jupyter.websocket import TornadoChannel
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Identity
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog

log = logging.getLogger(__name__)

GLOBAL_AWARENESS = "JupyterLab:globalAwareness"
NOTEBOOK_PREFIX = "json:notebook:"


def collaboration_handlers(app: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """Register the room server as a node service and return the collaboration routes."""
    app.add_service(room_service)
    return [
        (r"/api/collaboration/session/(.*)", SessionHandler, {}),
        (r"/api/collaboration/room/(.*)", RoomHandler, {}),
    ]


@asynccontextmanager
async def room_service(state: Any) -> AsyncIterator[CollabServer]:
    """The node's update log and room server, for the life of the Jupyter server."""
    config = state.config
    settings = RoomSettings(
        site=config.site,
        node_id=config.node_id if hasattr(config, "node_id") else "node",
        lock_expiry=config.lock_expiry,
        quiet_period=config.checkpoint_quiet_period,
        max_interval=config.checkpoint_max_interval,
        poll_interval=getattr(config, "file_poll_interval", 5.0),
        max_message_size=config.max_message_size,
        max_notebook_size=config.max_notebook_size,
    )
    path = Path(config.data_dir) / "updates.sqlite"
    async with UpdateLog(path, log=config.log) as updatelog, CollabServer(
        updatelog=updatelog,
        settings=settings,
        cleanup_delay=config.document_cleanup_delay,
        log=config.log,
    ) as server:
        state.server = server
        try:
            yield server
        finally:
            state.server = None


def identity_of(user: MeshUser) -> Identity:
    """The room identity of an authenticated Jupyter user."""
    return Identity(
        username=user.username,
        display_name=user.display_name or user.name,
        site=user.site,
        user_id=user.cs3_user_id,
        color=user.color or "",
    )


def _parse_room(room_id: str) -> ResourceId | None:
    if not room_id.startswith(NOTEBOOK_PREFIX):
        return None
    try:
        return ResourceId.parse(room_id[len(NOTEBOOK_PREFIX) :])
    except ValueError:
        return None


class SessionHandler(APIHandler):
    """``PUT /api/collaboration/session/<path>``: the document session of a notebook."""

    @web.authenticated
    async def put(self, path: str) -> None:
        state = mesh_state(self)
        await state.wait_ready()
        session = session_for(self)
        try:
            body = json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as exc:
            raise web.HTTPError(400, "the body is not JSON") from exc
        doc_format, doc_type = body.get("format"), body.get("type")
        if (doc_format, doc_type) != ("json", "notebook"):
            raise web.HTTPError(
                400, f"mesh_collab collaborates on notebooks only, not {doc_type!r} ({path!r})"
            )
        try:
            rid = await resource_id_for(session, path)
            room = await state.server.open(rid, session)
        except errors.NotFound as exc:
            raise web.HTTPError(404, f"no such notebook: {path!r}") from exc
        except errors.PermissionDenied as exc:
            raise web.HTTPError(403, f"no access to {path!r}") from exc
        except ValueError as exc:
            raise web.HTTPError(415, f"not a notebook: {path!r}: {exc}") from exc
        except errors.StorageError as exc:
            raise web.HTTPError(503, f"storage unavailable for {path!r}: {exc}") from exc
        self.set_status(201)
        self.finish(
            {"format": doc_format, "type": doc_type, "fileId": str(rid), "sessionId": room.lineage}
        )


class RoomHandler(WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """``/api/collaboration/room/<room id>``: y-websocket for a notebook or global awareness."""

    channel: TornadoChannel | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "authentication required")
        await super().get(*args, **kwargs)

    async def open(self, room_id: str) -> None:  # type: ignore[override]
        state = mesh_state(self)
        self.channel = TornadoChannel(self, room_id)
        user = self.current_user
        if not isinstance(user, MeshUser):
            await self.channel.close(CloseCode.UNAUTHORIZED, "no CS3 user")
            return
        try:
            await state.wait_ready()
            session = session_for(self)
        except web.HTTPError as exc:
            await self.channel.close(CloseCode.UNAUTHORIZED, exc.log_message or "unauthorized")
            return
        server: CollabServer = state.server
        if room_id == GLOBAL_AWARENESS:
            server.start_soon(server.serve_awareness, room_id, self.channel, identity_of(user))
            return
        rid = _parse_room(room_id)
        if rid is None:
            await self.channel.close(CloseCode.BAD_REQUEST, "unsupported room id")
            return
        code, reason, writable = await self._check(session, rid)
        if code is not None:
            await self.channel.close(code, reason)
            return
        try:
            room = await server.open(rid, session)
        except ValueError as exc:
            await self.channel.close(CloseCode.UNSUPPORTED_DOCUMENT, str(exc)[:120])
            return
        except errors.StorageError as exc:
            log.warning("cannot open room=%s error=%s", rid, exc)
            await self.channel.close(CloseCode.LOAD_FAILED, "storage unavailable")
            return
        session_id = self.get_query_argument("sessionId", "")
        if session_id and session_id != room.lineage:
            reason = {"reason": "unknown_session", "sessionId": session_id, "reloadable": True}
            await self.channel.close(CloseCode.UNKNOWN_SESSION, json.dumps(reason))
            return
        server.start_soon(
            partial(
                server.serve_notebook, rid, session, self.channel, identity_of(user),
                writable=writable,
            )
        )

    async def _check(self, session: Any, rid: ResourceId) -> tuple[int | None, str, bool]:
        """Whether the user may join: (close code or None, reason, writable)."""
        try:
            info = await session.files.stat(rid)
        except errors.NotFound:
            return CloseCode.NOT_FOUND, "no such notebook", False
        except errors.PermissionDenied:
            return CloseCode.FORBIDDEN, "no read access", False
        except errors.Unauthenticated:
            return CloseCode.UNAUTHORIZED, "CS3 session expired", False
        except errors.StorageError:
            return CloseCode.LOAD_FAILED, "storage unavailable", False
        if info.is_dir:
            return CloseCode.UNSUPPORTED_DOCUMENT, "a folder is not a notebook", False
        return None, "", info.writable

    async def on_message(self, message: bytes | str) -> None:  # type: ignore[override]
        if self.channel is not None:
            await self.channel.deliver(message)

    def on_close(self) -> None:
        if self.channel is not None:
            self.channel.mark_closed()

    def check_origin(self, origin: str) -> bool:
        # jupyter_server's own origin policy (allow_origin, allow_origin_pat, same host).
        return bool(JupyterHandler.check_origin(self, origin))
