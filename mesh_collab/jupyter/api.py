"""The REST API of the mesh_collab JupyterLab extension, under ``/api/mesh/``.

Every route acts as the request's CS3 user (:func:`~.identity.session_for`) and answers JSON.
Storage errors become readable HTTP errors in :func:`~.contents.http_error` only; bad input is
a 400 whose message quotes the value. jupyter_server's ``Authorizer`` is asked first, on the
resource ``"contents"``, with the action of the method (``read`` for GET, ``write`` for POST
and DELETE); a refusal is a 403. What the Authorizer refuses to write is reported read-only
(``writable`` of ``status`` and ``versions``), as the rooms serve it.

=========================  ==============================================================
``GET users?q=``           users of this site whose name contains ``q`` (FindUsers)
``GET sites``              this site and the other sites of the mesh (no secrets)
``GET status?path=``       the user's role on a notebook and where it lives
``GET shares?path=``       the shares of a file (local and OCM)
``POST shares``            ``{"path", "grantee", "role"}``: share with ``user`` (this site)
                           or ``user@site`` (another mesh site, over OCM)
``DELETE shares?id=&kind``  revoke a share (``kind`` "local" or "ocm")
``GET received``           shares given to the user, pending ones included
``POST received``          ``{"id", "kind", "action": "accept" | "decline"}``
``GET shared-by-me``       the user's shares, with the shared file's path
``GET versions?path=``     the notebook's CS3 versions (its checkpoints), newest first
``POST restore``           ``{"path", "key"}``: bring a version back through the live room
=========================  ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import (
    OCMShare,
    ReceivedOCMShare,
    ReceivedShare,
    Role,
    Share,
    ShareState,
    UserId,
)
from mesh_collab.jupyter.contents import http_error
from mesh_collab.jupyter.fileids import (
    SHARED_FOLDER,
    HomeLocation,
    OCMLocation,
    ShareLocation,
    locate,
    path_for,
    resource_id_for,
)
from mesh_collab.jupyter.identity import mesh_state, session_for
from mesh_collab.kinds import kind_for_path
from mesh_collab.resources import ResourceId

#: The most users a search returns (a short list to pick from, not a directory dump).
MAX_USERS = 20
#: Shortest search text: FindUsers with one letter lists most of a site.
MIN_QUERY = 2

#: What the handlers ask jupyter_server's Authorizer about (as jupyter-collaboration does).
AUTH_RESOURCE = "contents"

_STATES = {
    ShareState.PENDING: "pending",
    ShareState.ACCEPTED: "accepted",
    ShareState.REJECTED: "declined",
}


_DONE = {"accept": "accepted", "decline": "declined"}


def api_handlers() -> list[tuple[str, Any, dict[str, Any]]]:
    """The routes of the JupyterLab extension's REST API."""
    return [
        (r"/api/mesh/users", UsersHandler, {}),
        (r"/api/mesh/sites", SitesHandler, {}),
        (r"/api/mesh/status", StatusHandler, {}),
        (r"/api/mesh/shares", SharesHandler, {}),
        (r"/api/mesh/received", ReceivedHandler, {}),
        (r"/api/mesh/shared-by-me", SharedByMeHandler, {}),
        (r"/api/mesh/versions", VersionsHandler, {}),
        (r"/api/mesh/restore", RestoreHandler, {}),
    ]


async def may_write(handler: JupyterHandler, user: Any) -> bool:
    """Whether jupyter_server's Authorizer lets ``user`` write contents (edit a document)."""
    allowed = await ensure_async(
        handler.authorizer.is_authorized(handler, user, "write", AUTH_RESOURCE)
    )
    return bool(allowed)


class MeshAPIHandler(APIHandler):
    """Common parts: the user's session, JSON bodies, required arguments."""

    auth_resource = AUTH_RESOURCE

    async def session(self) -> Session:
        """The request user's CS3 session, once the node is ready (503/401 otherwise)."""
        await mesh_state(self).wait_ready()
        return session_for(self)

    def body(self) -> dict[str, Any]:
        """The JSON object of the request body.

        Raises:
            HTTPError: 400 when the body is not a JSON object.
        """
        try:
            data = json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as exc:
            raise web.HTTPError(400, "the request body is not JSON") from exc
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def required(self, name: str, data: dict[str, Any] | None = None) -> str:
        """A non-empty string argument (query argument, or field of ``data``).

        Raises:
            HTTPError: 400 when it is missing or empty.
        """
        value = self.get_query_argument(name, "") if data is None else data.get(name, "")
        if not isinstance(value, str) or not value.strip():
            raise web.HTTPError(400, f"missing {name!r}")
        return value.strip()

    def site_of_idp(self, idp: str) -> str:
        """The mesh site whose CS3 domain is ``idp`` ("" when unknown)."""
        state = mesh_state(self)
        try:
            site = state.config.directory().by_domain(idp)
        except ValueError:
            return ""
        return site.name if site is not None else ""


class _Names:
    """User names of this site's user ids (shares name users by opaque id), cached."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._known: dict[UserId, str] = {}

    async def __call__(self, uid: UserId) -> str:
        if uid not in self._known:
            try:
                self._known[uid] = (await self._session.users.get(uid)).username
            except errors.NotFound:
                self._known[uid] = uid.opaque_id
        return self._known[uid]


class UsersHandler(MeshAPIHandler):
    """``GET /api/mesh/users?q=<text>``: users of this site to share with."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        query = self.get_query_argument("q", "").strip()
        if len(query) < MIN_QUERY:
            raise web.HTTPError(400, f"type at least {MIN_QUERY} characters to search: {query!r}")
        try:
            found = await session.users.find(query)
        except errors.StorageError as exc:
            raise http_error(exc, query) from exc
        me = session.user.username if session.user else ""
        site = mesh_state(self).site
        users = [
            {
                "username": u.username,
                "display_name": u.display_name or u.username,
                "mail": u.mail,
                "site": site,
            }
            for u in found
            if u.username != me
        ]
        self.finish({"users": users[:MAX_USERS]})


class SitesHandler(MeshAPIHandler):
    """``GET /api/mesh/sites``: this site and the mesh's other sites (names and domains)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        state = mesh_state(self)
        try:
            directory = list(state.config.directory())
        except ValueError as exc:
            raise web.HTTPError(500, f"the mesh directory is not readable: {exc}") from exc
        sites = [
            {"name": s.name, "domain": s.domain, "local": s.name == state.site} for s in directory
        ]
        self.finish({"site": state.site, "sites": sites})


class StatusHandler(MeshAPIHandler):
    """``GET /api/mesh/status?path=``: the user's role on a notebook, and its home site.

    A collaborator's role reaches the others in awareness, but a browser's own awareness
    state is not stamped back to it: this is how the frontend knows it is a viewer.

    ``kernels`` tells where the node's kernels find CS3 files: ``{"mounted", "cwd", "root",
    "reason"}`` (``mounted`` false with the reason when FUSE is unavailable, see
    :mod:`~.kernels`).
    """

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        path = self.required("path")
        state = mesh_state(self)
        try:
            loc = await locate(session, path, home_template=state.config.home_template)
            names = _Names(session)
            if isinstance(loc, OCMLocation):
                writable = loc.share.role is Role.EDITOR
                home = loc.share.opaque.get("owner_site", "") or self.site_of_idp(
                    loc.share.owner.idp
                )
                owner = loc.share.owner.opaque_id
            elif isinstance(loc, HomeLocation | ShareLocation):
                info = await session.files.stat(loc.ref)
                writable = info.writable
                home = state.site
                owner = (
                    await names(loc.share.share.owner)
                    if isinstance(loc, ShareLocation)
                    else (session.user.username if session.user else "")
                )
            else:
                raise web.HTTPError(400, f"not a notebook: {path!r}")
            writable = writable and await may_write(self, self.current_user)
        except ValueError as exc:
            raise web.HTTPError(400, f"bad path {path!r}: {exc}") from exc
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        self.finish(
            {
                "path": path,
                "role": Role.EDITOR.value if writable else Role.VIEWER.value,
                "writable": writable,
                "site": state.site,
                "home": home,
                "owner": owner,
                "remote": isinstance(loc, OCMLocation),
                "kernels": state.kernel_files.status() if state.kernel_files else None,
            }
        )


async def _own_resource(handler: MeshAPIHandler, session: Session, path: str) -> ResourceId:
    """The resource id of a file in the user's home (sharing starts from one's own files).

    Raises:
        HTTPError: 400 for a file shared with the user, or a bad path; 404 etc. from storage.
    """
    state = mesh_state(handler)
    try:
        loc = await locate(session, path, home_template=state.config.home_template)
        if not isinstance(loc, HomeLocation) or not loc.path:
            raise web.HTTPError(
                400, f"only your own files can be shared, not {path!r} (in {SHARED_FOLDER!r})"
            )
        return (await session.files.stat(loc.ref)).id
    except ValueError as exc:
        raise web.HTTPError(400, f"bad path {path!r}: {exc}") from exc
    except errors.StorageError as exc:
        raise http_error(exc, path) from exc


async def _local_share(share: Share, site: str, names: _Names) -> dict[str, Any]:
    return {
        "id": share.id,
        "kind": "local",
        "grantee": await names(share.grantee),
        "site": site,
        "role": share.role.value,
    }


class SharesHandler(MeshAPIHandler):
    """``/api/mesh/shares``: list, create and revoke the shares of one of the user's files."""

    async def _shares(self, session: Session, rid: ResourceId) -> list[dict[str, Any]]:
        site = mesh_state(self).site
        local = cast("Sequence[Share]", await session.shares.list(rid))
        names = _Names(session)
        out = [await _local_share(s, site, names) for s in local]
        for share in cast("Sequence[OCMShare]", await session.ocm.list()):
            if share.resource_id != rid:
                continue
            out.append(
                {
                    "id": share.id,
                    "kind": "ocm",
                    "grantee": share.grantee.opaque_id,
                    "site": self.site_of_idp(share.grantee.idp) or share.grantee.idp,
                    "role": share.role.value,
                }
            )
        return out

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        path = self.required("path")
        rid = await _own_resource(self, session, path)
        try:
            shares = await self._shares(session, rid)
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        self.finish({"path": path, "shares": shares})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        session = await self.session()
        data = self.body()
        path = self.required("path", data)
        grantee = self.required("grantee", data)
        try:
            role = Role(data.get("role", Role.VIEWER.value))
        except ValueError as exc:
            raise web.HTTPError(
                400, f"role must be viewer or editor: {data.get('role')!r}"
            ) from exc
        rid = await _own_resource(self, session, path)
        state = mesh_state(self)
        user, _, site_name = grantee.partition("@")
        try:
            if site_name and site_name != state.site:
                try:
                    site = state.config.directory().site(site_name)
                except ValueError as exc:
                    raise web.HTTPError(500, f"the mesh directory is not readable: {exc}") from exc
                if site is None or not site.domain:
                    raise web.HTTPError(400, f"no site {site_name!r} in the mesh")
                share = await session.ocm.create(
                    rid, UserId(idp=site.domain, opaque_id=user), role
                )
                self.log.info("op=share kind=ocm rid=%s site=%s role=%s", rid, site.name, role)
                result = {
                    "id": share.id,
                    "kind": "ocm",
                    "grantee": user,
                    "site": site.name,
                    "role": share.role.value,
                }
            else:
                if session.user is not None and user == session.user.username:
                    raise web.HTTPError(400, f"you cannot share with yourself: {user!r}")
                try:
                    target = await session.users.by_claim("username", user)
                except errors.NotFound as exc:
                    raise web.HTTPError(404, f"no user {user!r} at {state.site}") from exc
                local = await session.shares.create(rid, target.id, role)
                self.log.info("op=share kind=local rid=%s role=%s", rid, role)
                result = await _local_share(local, state.site, _Names(session))
        except errors.AlreadyExists as exc:
            raise web.HTTPError(409, f"{path!r} is already shared with {grantee!r}") from exc
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        self.set_status(201)
        self.finish(result)

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        session = await self.session()
        share_id = self.required("id")
        kind = self.get_query_argument("kind", "local")
        if kind not in ("local", "ocm"):
            raise web.HTTPError(400, f"kind must be local or ocm: {kind!r}")
        try:
            if kind == "ocm":
                await session.ocm.remove(share_id)
            else:
                await session.shares.remove(share_id)
        except errors.StorageError as exc:
            raise http_error(exc, f"share {share_id}") from exc
        self.set_status(204)
        self.finish()


class ReceivedHandler(MeshAPIHandler):
    """``/api/mesh/received``: shares given to the user, and accepting or declining them."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        site = mesh_state(self).site
        try:
            local = cast("Sequence[ReceivedShare]", await session.shares.received())
            remote = cast("Sequence[ReceivedOCMShare]", await session.ocm.received())
        except errors.StorageError as exc:
            raise http_error(exc, SHARED_FOLDER) from exc
        names = _Names(session)
        out: list[dict[str, Any]] = [
            {
                "id": r.share.id,
                "kind": "local",
                "name": r.info.name if r.info is not None else str(r.share.resource_id),
                "owner": await names(r.share.owner),
                "site": site,
                "role": r.share.role.value,
                "state": _STATES[r.state],
            }
            for r in local
        ]
        out.extend(
            {
                "id": r.id,
                "kind": "ocm",
                "name": r.name.rsplit("/", 1)[-1],
                "owner": r.owner.opaque_id,
                "site": r.opaque.get("owner_site", "") or self.site_of_idp(r.owner.idp),
                "role": r.role.value,
                "state": _STATES[r.state],
            }
            for r in remote
        )
        self.finish({"shares": out})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        session = await self.session()
        data = self.body()
        share_id = self.required("id", data)
        kind = data.get("kind", "local")
        action = data.get("action", "")
        if kind not in ("local", "ocm"):
            raise web.HTTPError(400, f"kind must be local or ocm: {kind!r}")
        if action not in ("accept", "decline"):
            raise web.HTTPError(400, f"action must be accept or decline: {action!r}")
        target = session.ocm if kind == "ocm" else session.shares
        try:
            await (target.accept if action == "accept" else target.decline)(share_id)
        except errors.StorageError as exc:
            raise http_error(exc, f"share {share_id}") from exc
        self.finish({"id": share_id, "kind": kind, "state": _DONE[action]})


class SharedByMeHandler(MeshAPIHandler):
    """``GET /api/mesh/shared-by-me``: the user's shares, local and OCM, with file paths."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        state = mesh_state(self)
        paths: dict[ResourceId, str | None] = {}
        names = _Names(session)

        async def path_of(rid: ResourceId) -> str:
            if rid not in paths:
                paths[rid] = await path_for(session, rid, home_template=state.config.home_template)
            return paths[rid] or str(rid)

        try:
            out: list[dict[str, Any]] = [
                {
                    **await _local_share(share, state.site, names),
                    "path": await path_of(share.resource_id),
                }
                for share in cast("Sequence[Share]", await session.shares.list())
            ]
            out += [
                {
                    "id": ocm.id,
                    "kind": "ocm",
                    "grantee": ocm.grantee.opaque_id,
                    "site": self.site_of_idp(ocm.grantee.idp) or ocm.grantee.idp,
                    "role": ocm.role.value,
                    "path": await path_of(ocm.resource_id),
                }
                for ocm in cast("Sequence[OCMShare]", await session.ocm.list())
            ]
        except errors.StorageError as exc:
            raise http_error(exc, "your shares") from exc
        out.sort(key=lambda s: (s["path"], s["site"], s["grantee"]))
        self.finish({"shares": out})


async def _notebook(handler: MeshAPIHandler, session: Session, path: str) -> ResourceId:
    """The resource id of a notebook of this site that the user can see.

    Raises:
        HTTPError: 400 for a notebook another site keeps (its versions live there).
    """
    state = mesh_state(handler)
    try:
        loc = await locate(session, path, home_template=state.config.home_template)
        if isinstance(loc, OCMLocation):
            raise web.HTTPError(
                400,
                f"{path!r} is kept by its owner's site: its versions are listed there",
            )
        return await resource_id_for(session, path, home_template=state.config.home_template)
    except ValueError as exc:
        raise web.HTTPError(400, f"bad path {path!r}: {exc}") from exc
    except errors.StorageError as exc:
        raise http_error(exc, path) from exc


class VersionsHandler(MeshAPIHandler):
    """``GET /api/mesh/versions?path=``: the notebook's CS3 versions, newest first."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        session = await self.session()
        path = self.required("path")
        rid = await _notebook(self, session, path)
        try:
            versions = await session.versions.list(rid)
            writable = (await session.files.stat(rid)).writable
            writable = writable and await may_write(self, self.current_user)
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        self.finish(
            {
                "path": path,
                "writable": writable,
                "versions": [{"key": v.key, "mtime": v.mtime, "size": v.size} for v in versions],
            }
        )


class RestoreHandler(MeshAPIHandler):
    """``POST /api/mesh/restore {"path", "key"}``: restore a version through the live room.

    The version is merged into the room as an edit: collaborators see it happen, and the
    next checkpoint stores the result as a new version. Nothing is overwritten behind the
    backs of the people editing it.
    """

    @web.authenticated
    @authorized
    async def post(self) -> None:
        session = await self.session()
        data = self.body()
        path = self.required("path", data)
        key = self.required("key", data)
        rid = await _notebook(self, session, path)
        state = mesh_state(self)
        kind = kind_for_path(path)
        try:
            room = await state.server.open(rid, session, kind=kind)
            stats = await room.restore_version(session, key)
        except errors.PermissionDenied as exc:
            raise web.HTTPError(403, f"viewers cannot restore versions of {path!r}") from exc
        except ValueError as exc:
            raise web.HTTPError(
                415, f"version {key!r} of {path!r} cannot be restored as a {kind.name}: {exc}"
            ) from exc
        except errors.StorageError as exc:
            raise http_error(exc, path) from exc
        self.log.info("op=restore rid=%s", rid)
        self.finish(
            {
                "path": path,
                "key": key,
                "kept": stats.kept,
                "edited": stats.edited,
                "inserted": stats.inserted,
                "deleted": stats.deleted,
            }
        )
