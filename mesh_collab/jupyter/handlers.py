"""The collaboration URLs of the stock JupyterLab frontend, served by mesh_collab.

jupyter-collaboration 5's frontend asks ``PUT /api/collaboration/session/<path>`` for a
document session, then connects to ``/api/collaboration/room/<format>:<type>:<file id>``:
``json:notebook`` for notebooks, ``text:file`` for every file the file editor opens
(:mod:`mesh_collab.kinds`). Here the file id is the file's CS3 resource id, so two paths to
one resource (the owner's and a recipient's share path) open one room, and a rename keeps it.
The session id is the document's *lineage*: a client that reconnects with another lineage's
session (the history was rebuilt) is told to reload (close code 1003) instead of merging
into a foreign history.

Every handler a browser reaches goes through jupyter_server's ``Authorizer`` on the resource
``"contents"``, as jupyter-collaboration's own handlers do: ``read`` to open a session or
join a room, and ``write`` to edit in it. A user the Authorizer allows to read but not to
write joins read-only, as a viewer of the file does. Links from other nodes
(:class:`FederationHandler`) carry no Jupyter user: a handshake signed by the linking node's
key authenticates the node, and the link acts only for the users it introduces, each checked
here (by their OCM share, or by the storage with their own token).

Close codes are those of :mod:`mesh_collab.close_codes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web
from tornado.websocket import WebSocketHandler

from mesh_collab import errors, metrics
from mesh_collab.close_codes import CloseCode
from mesh_collab.cs3.models import ReceivedOCMShare, Role, ShareState
from mesh_collab.documents import Federation, RoomSettings
from mesh_collab.federation.directory import Site
from mesh_collab.federation.handshake import (
    NODE_HEADER,
    NONCE_HEADER,
    SITE_HEADER,
    check_link,
    welcome_proof,
)
from mesh_collab.federation.keys import Nonces
from mesh_collab.federation.protocol import PATH
from mesh_collab.jupyter.api import AUTH_RESOURCE, api_handlers, may_write
from mesh_collab.jupyter.federation_tls import federation_listener
from mesh_collab.jupyter.fileids import resource_id_for
from mesh_collab.jupyter.identity import MeshUser, mesh_state, session_for
from mesh_collab.jupyter.websocket import TornadoChannel
from mesh_collab.kinds import BY_NAME, BY_SESSION, NOTEBOOK, DocumentKind, parse_room_id
from mesh_collab.resources import ResourceId
from mesh_collab.rooms import Identity, Peer
from mesh_collab.server import CollabServer
from mesh_collab.updatelog import UpdateLog

log = logging.getLogger(__name__)

GLOBAL_AWARENESS = "JupyterLab:globalAwareness"


def collaboration_handlers(app: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """Register the room server as a node service and return the collaboration routes."""
    app.add_service(room_service)
    app.add_service(federation_listener)
    return [
        (r"/api/collaboration/session/(.*)", SessionHandler, {}),
        (r"/api/collaboration/room/(.*)", RoomHandler, {}),
        (PATH.rstrip("/") + r"/(.*)", FederationHandler, {}),
        *api_handlers(),
    ]


@asynccontextmanager
async def room_service(state: Any) -> AsyncIterator[CollabServer]:
    """The node's update log and room server, for the life of the Jupyter server."""
    config = state.config
    federation = Federation(
        site=config.site, node_id=config.node_id, directory_source=config.directory,
        key_source=config.signing_key, ssl=config.mesh_ssl(),
    )
    config.signing_key()  # made now, not at the first link: its public key goes in the directory
    settings = RoomSettings(
        site=config.site,
        node_id=config.node_id,
        lock_expiry=config.lock_expiry,
        quiet_period=config.checkpoint_quiet_period,
        max_interval=config.checkpoint_max_interval,
        poll_interval=config.file_poll_interval,
        max_message_size=config.max_message_size,
        max_notebook_size=config.max_notebook_size,
    )
    path = Path(config.data_dir) / "updates.sqlite"
    multi_user = config.auth_mode == "multi-user"
    async with UpdateLog(
        path, sync_interval=config.log_sync_interval, log=config.log
    ) as updatelog, CollabServer(
        updatelog=updatelog,
        settings=settings,
        cleanup_delay=config.document_cleanup_delay,
        federation=federation,
        log=config.log,
        start_worker=config.start_worker,
        # Per-user budgets need users: in single-user mode, everybody with the token is
        # the one user of the server (its owner), as in stock Jupyter.
        max_connections_per_user=config.max_connections_per_user if multi_user else 0,
        max_rooms_per_user=config.max_rooms_per_user if multi_user else 0,
        rights_check_interval=config.rights_check_interval,
    ) as server:
        state.server = server
        try:
            with metrics.exported(server):
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


async def _ocm_share(session: Any, rid: ResourceId) -> ReceivedOCMShare | None:
    """The accepted OCM share through which ``rid`` (another site's resource) reaches us."""
    for share in await session.ocm.received():
        if share.remote_resource_id == rid and share.state is ShareState.ACCEPTED:
            return share  # type: ignore[no-any-return]
    return None


async def home_of(state: Any, session: Any, rid: ResourceId) -> Site | None:
    """The site that owns ``rid`` when it came to us over OCM, else None (it is ours).

    Raises:
        HTTPError: 502 when the owner's site is not in the mesh directory.
    """
    try:
        await session.files.stat(rid)
        return None
    except errors.NotFound:
        pass
    except errors.StorageError:
        return None  # no access, expired session...: the access check answers it
    share = await _ocm_share(session, rid)
    if share is None:
        return None
    # The owner's identity provider says where the notebook lives: the share's other
    # fields are the sender's word, not the directory's.
    site = state.config.directory().by_domain(share.owner.idp)
    if site is None:
        raise web.HTTPError(502, f"the owner's site {share.owner.idp!r} is not in the mesh")
    return site.for_owner(share.owner.opaque_id)  # type: ignore[no-any-return]


async def _remote_writable(session: Any, rid: ResourceId) -> bool:
    share = await _ocm_share(session, rid)
    return share is not None and share.role is Role.EDITOR


async def access_check(session: Any, rid: ResourceId) -> tuple[int | None, str, bool]:
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
        return CloseCode.UNSUPPORTED_DOCUMENT, "a folder is not a document", False
    return None, "", info.writable


async def _rights_now(session: Any, rid: ResourceId, remote: bool, authorized_write: bool
                      ) -> bool | None:
    """What the user may do with the document now: None (nothing), False (read), True
    (write), as the storage (or the OCM share of a remote document) says; the
    Authorizer's answer of the connection's start still applies.

    Raises:
        StorageError: storage cannot tell now.
    """
    if remote:
        share = await _ocm_share(session, rid)
        return None if share is None else share.role is Role.EDITOR and authorized_write
    code, reason, writable = await access_check(session, rid)
    if code in (CloseCode.FORBIDDEN, CloseCode.NOT_FOUND):
        return None
    if code is not None:
        raise errors.StorageError(reason, op="Stat")
    return writable and authorized_write


def _parse_room(room_id: str) -> tuple[DocumentKind, ResourceId] | None:
    parsed = parse_room_id(room_id)
    if parsed is None:
        return None
    kind, file_id = parsed
    try:
        return kind, ResourceId.parse(file_id)
    except ValueError:
        return None


class SessionHandler(APIHandler):
    """``PUT /api/collaboration/session/<path>``: the document session of a notebook or a
    text file. A binary or oversized file, or a folder, gets 415 with the reason.

    The Authorizer is asked for ``read`` (jupyter-collaboration asks ``write`` for this
    PUT): a user who may only read opens the session too, and joins read-only."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized("read")
    async def put(self, path: str) -> None:
        state = mesh_state(self)
        await state.wait_ready()
        session = session_for(self)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as exc:  # not UTF-8, not JSON
            raise web.HTTPError(400, "the body is not JSON") from exc
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'the body must be {"format": ..., "type": ...}')
        doc_format, doc_type = body.get("format"), body.get("type")
        kind = None
        if isinstance(doc_format, str) and isinstance(doc_type, str):
            kind = BY_SESSION.get((doc_format, doc_type))
        if kind is None:
            raise web.HTTPError(
                400, f"mesh_collab collaborates on notebooks and text files, not "
                f"{doc_format!r}:{doc_type!r} ({path!r})"
            )
        try:
            rid = await resource_id_for(session, path)
        except ValueError as exc:
            raise web.HTTPError(400, f"not a valid path: {path!r}") from exc
        except errors.StorageError as exc:
            raise _session_error(exc, path) from exc
        try:
            room = await state.server.open(
                rid, session, home=await home_of(state, session, rid), kind=kind,
                user=self.current_user.username,
            )
        except ValueError as exc:
            raise web.HTTPError(415, f"{path!r} cannot be opened here: {exc}") from exc
        except errors.UserLimitExceeded as exc:
            raise web.HTTPError(429, f"{path!r} cannot be opened: {exc}") from exc
        except errors.StorageError as exc:
            raise _session_error(exc, path) from exc
        self.set_status(201)
        self.finish(
            {"format": doc_format, "type": doc_type, "fileId": str(rid), "sessionId": room.lineage}
        )


def _session_error(exc: errors.StorageError, path: str) -> web.HTTPError:
    """The HTTP answer to a storage error while opening ``path`` (no internal references)."""
    for cls, status, text in (
        (errors.NotFound, 404, "no such file"),
        (errors.PermissionDenied, 403, "no access to"),
        (errors.Unauthenticated, 401, "CS3 session expired for"),
        (errors.InvalidArgument, 400, "not a valid path"),
        (errors.QuotaExceeded, 413, "too large"),
    ):
        if isinstance(exc, cls):
            return web.HTTPError(status, f"{text}: {path!r}")
    return web.HTTPError(503, f"storage unavailable for {path!r}")


class RoomHandler(WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """``/api/collaboration/room/<room id>``: y-websocket for a document or global awareness."""

    # JupyterHandler has no ``auth_resource`` (APIHandler does): ``@authorized`` needs it.
    auth_resource = AUTH_RESOURCE
    channel: TornadoChannel | None = None

    @ws_authenticated
    @authorized("read")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    async def open(self, room_id: str) -> None:  # type: ignore[override]
        # Every keystroke is a small frame: Nagle's algorithm would hold each ~40 ms.
        self.set_nodelay(True)
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
            server.start_soon(server.serve_awareness, room_id, self.channel, identity_of(user),
                              channel=self.channel)
            return
        parsed = _parse_room(room_id)
        if parsed is None:
            await self.channel.close(CloseCode.BAD_REQUEST, "unsupported room id")
            return
        kind, rid = parsed
        home = await home_of(state, session, rid)
        if home is None:
            code, reason, writable = await access_check(session, rid)
        else:
            code, reason, writable = None, "", await _remote_writable(session, rid)
        if code is not None:
            await self.channel.close(code, reason)
            return
        authorized_write = await may_write(self, user)
        writable = writable and authorized_write
        try:
            room = await server.open(rid, session, home=home, kind=kind, user=user.username)
        except ValueError as exc:
            await self.channel.close(CloseCode.UNSUPPORTED_DOCUMENT, str(exc)[:120])
            return
        except errors.UserLimitExceeded as exc:
            await self.channel.close(CloseCode.USER_LIMIT, str(exc)[:120])
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
                server.serve_document, rid, session, self.channel, identity_of(user),
                writable=writable, kind=kind,
                rights=partial(_rights_now, session, rid, home is not None, authorized_write),
            ),
            channel=self.channel,
        )

    def on_message(self, message: bytes | str) -> Awaitable[None] | None:
        return self.channel.deliver(message) if self.channel is not None else None

    def on_close(self) -> None:
        if self.channel is not None:
            self.channel.mark_closed()

    def check_origin(self, origin: str) -> bool:
        # jupyter_server's own origin policy (allow_origin, allow_origin_pat, same host).
        return bool(JupyterHandler.check_origin(self, origin))


class FederationHandler(WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """``/mesh/federation/v1/rooms/<resource id>[?kind=file]``: another node links to one of
    our rooms (of a notebook unless ``kind`` names another kind).

    Peers open the link with a handshake signed by their node key
    (federation/handshake.py); browsers' Jupyter credentials play no part here. The close
    codes: 4401 unknown node, bad signature, a handshake for another node, expired or
    replayed; 4426 another protocol version; 4400 a bad room id; 4403 the notebook is not
    shared with that site (or no local user may open it); 4404 no such notebook.
    """

    channel: TornadoChannel | None = None
    #: Handshake nonces seen lately, by every link of this process.
    nonces = Nonces()

    @allow_unauthenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    def check_xsrf_cookie(self) -> None:
        return  # not a browser: peers authenticate with their own header

    async def open(self, room_id: str) -> None:  # type: ignore[override]
        # Every keystroke is a small frame: Nagle's algorithm would hold each ~40 ms.
        self.set_nodelay(True)
        state = mesh_state(self)
        self.channel = TornadoChannel(self, f"peer:{room_id}")
        kind = BY_NAME.get(self.get_query_argument("kind", NOTEBOOK.name))
        parsed = _parse_room(NOTEBOOK.room_prefix + room_id)
        if parsed is None or kind is None:
            await self.channel.close(CloseCode.BAD_REQUEST, "bad resource id or kind")
            return
        _, rid = parsed
        await state.wait_ready()
        server: CollabServer = state.server
        local = server.federation.local if server.federation is not None else None
        try:
            if local is None:
                raise errors.PeerRejected("no federation here", CloseCode.UNAUTHORIZED)
            site, node = check_link(
                self.request.headers, local=local, directory=state.config.directory(),
                resource=str(rid), kind=kind.name, nonces=self.nonces,
            )
        except (errors.PeerRejected, ValueError) as exc:
            code = getattr(exc, "code", CloseCode.UNAUTHORIZED)
            log.warning("link refused: %s site=%r node=%r", exc,
                        self.request.headers.get(SITE_HEADER, "")[:64],
                        self.request.headers.get(NODE_HEADER, "")[:64])
            await self.channel.close(code, str(exc)[:120])
            return
        session = state.sessions.default
        if session is None:
            await self.channel.close(CloseCode.FORBIDDEN, "no local user can open it")
            return
        code, reason, _ = await access_check(session, rid)
        if code is not None:
            await self.channel.close(code, reason)
            return
        if site.name == state.config.site:
            admit = partial(_admit_same_site, state.cs3, rid)
        elif await _shared_with(session, rid, site):
            admit = partial(_admit_remote, session, rid, site)
        else:
            await self.channel.close(CloseCode.FORBIDDEN, "not shared with that site")
            return
        identity = Identity(username=f"node:{site.name}:{node.id}", site=site.name)
        proof = welcome_proof(local, site.name, node.id, str(rid),
                              self.request.headers.get(NONCE_HEADER, ""))
        log.info("link accepted room=%s site=%s node=%s", rid, site.name, node.id)
        server.start_soon(
            partial(server.serve_peer, rid, session, self.channel, identity,
                    Peer(site=site.name, admit=admit), kind, proof=proof),
            channel=self.channel,
        )

    def on_message(self, message: bytes | str) -> Awaitable[None] | None:
        return self.channel.deliver(message) if self.channel is not None else None

    def on_close(self) -> None:
        if self.channel is not None:
            self.channel.mark_closed()

    def check_origin(self, origin: str) -> bool:
        return True  # nodes are not browsers; their signed handshake authenticates them


async def _ocm_grants(session: Any, rid: ResourceId, site: Site) -> list[Any]:
    """The OCM shares of ``rid`` with users of ``site``."""
    if not site.domain:
        return []
    return [share for share in await session.ocm.list()
            if share.resource_id == rid and share.grantee.idp == site.domain]


async def _shared_with(session: Any, rid: ResourceId, site: Site) -> bool:
    return bool(await _ocm_grants(session, rid, site))


async def _admit_remote(session: Any, rid: ResourceId, site: Site, user: str,
                        message: Mapping[str, Any]) -> str | None:
    """What a user of another site may do in a room: what the OCM share with them says."""
    for share in await _ocm_grants(session, rid, site):
        if share.grantee.opaque_id == user:
            return "editor" if share.role is Role.EDITOR else "viewer"
    return None


async def _admit_same_site(cs3: Any, rid: ResourceId, user: str, message: Mapping[str, Any]
                           ) -> str | None:
    """What a user of our own site, served by another node of the site, may do in a room:
    what the storage answers to their own CS3 token (which the introduction carries)."""
    token = message.get("token")
    if not isinstance(token, str) or not token or len(token) > 16384:
        return None
    session = cs3.session(token)
    try:
        if (await session.whoami()).username != user:
            return None
        info = await session.files.stat(rid)
    except errors.StorageError:
        return None
    return "editor" if info.writable else "viewer"
