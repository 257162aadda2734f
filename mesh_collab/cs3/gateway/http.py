"""The gateway's HTTP side (aiohttp): data gateway, OCM API and the OCM WebDAV endpoint.

Routes:

* ``PUT|GET|HEAD /datagateway/<token>``: the data gateway (spec §1.5). The transfer token
  comes from the ``X-Reva-Transfer`` header or the last path segment; an invalid, forged or
  expired one is 403. The transfer token authorises the transfer (``x-access-token`` is
  accepted and ignored), and the user it names must still have the right to it when the
  request comes (a share removed since InitiateFileUpload/Download: 403). An upload token
  serves one PUT: the first that presents it spends it, whatever its outcome, and any
  other is 403. A download token serves any number of GETs within its life (60 s), so that
  a client may retry or read ranges. PUT answers 200 with ``ETag``/``OC-ETag``/
  ``OC-FileId``; GET supports ``Range`` (206). ``X-Disable-Versioning: true`` on a PUT is
  honoured for the owner of the file only; anybody else's write keeps the replaced content
  as a version.
* ``GET /.well-known/ocm`` (and the legacy ``/ocm-provider``): OCM discovery.
* ``POST /ocm/shares``: receive an OCM share from a trusted provider; 201
  ``{"recipientDisplayName": ...}``. Every refusal is JSON ``{"message": ...}``: 401 unless
  the request is signed (RFC 9421) by a trusted provider's published key, within 5 minutes
  and once, for this provider's URL; 403 for an owner, sender or WebDAV uri of another
  provider; 400 for a bad body; 404 for an unknown ``shareWith`` user; 409 when that share
  was received already (the stored one is left as it is); 413 above 64 KiB.
* ``GET|HEAD|PUT /remote.php/dav/ocm/<secret>[/<path>]``: the shared resource, for the
  recipient's site (secret in the path, or ``Authorization: Bearer <secret>``). A PUT always
  keeps the replaced content as a version.

Every refusal is a :class:`~mesh_collab.cs3.gateway.status.GatewayError` turned into an HTTP
status by one middleware, which is also the single catch-all boundary of a request.
"""

from __future__ import annotations

import json
import os
import stat as stat_mod
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from aiohttp import web
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_res

from ...resources import ResourceId
from .content import Conditions
from .core import Core
from .namespace import Node
from .ocm import parse_incoming
from .providers import WEBDAV_PREFIX, discovery_document
from .status import (
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    GatewayError,
    http_status,
)
from .users import UserRecord

TRANSFER_HEADER = "X-Reva-Transfer"
_CHUNK = 1 << 20
_MAX_SHARE_BODY = 64 * 1024
CORE_KEY: web.AppKey[Core] = web.AppKey("core", Core)


def build_app(core: Core) -> web.Application:
    """Return the aiohttp application of a gateway."""
    app = web.Application(middlewares=[_errors])
    app[CORE_KEY] = core
    app.router.add_route("PUT", "/datagateway/{token}", _upload)
    app.router.add_route("PUT", "/datagateway", _upload)
    app.router.add_route("PUT", "/datagateway/", _upload)
    app.router.add_get("/datagateway/{token}", _download)
    app.router.add_get("/datagateway", _download)
    app.router.add_get("/datagateway/", _download)
    app.router.add_get("/.well-known/ocm", _discovery)
    app.router.add_get("/ocm-provider", _discovery)
    app.router.add_post("/ocm/shares", _receive_share)
    app.router.add_get(WEBDAV_PREFIX + "/{rest:.*}", _dav_get)
    app.router.add_put(WEBDAV_PREFIX + "/{rest:.*}", _dav_put)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException:
        raise
    except GatewayError as exc:
        status = http_status(exc)
        core.log.debug("op=HTTP %s path=%s status=%d msg=%r", request.method,
                       _safe_path(request), status, exc.message)
        if request.path.startswith("/ocm"):
            return web.json_response({"message": exc.message}, status=status)
        return web.Response(status=status, text=exc.message + "\n")
    except Exception:
        # The one catch-all boundary of an HTTP request: log, answer 500 without details.
        core.log.exception("op=HTTP %s path=%s failed", request.method, _safe_path(request))
        return web.Response(status=500, text="internal error\n")


def _safe_path(request: web.Request) -> str:
    # Paths carry transfer tokens and share secrets: log only their first characters.
    head, _, tail = request.path.rpartition("/")
    return f"{head}/{tail[:6]}…" if len(tail) > 12 else request.path


# ---- data gateway ---------------------------------------------------------------------


def _transfer_claims(request: web.Request, op: str) -> dict[str, Any]:
    core = request.app[CORE_KEY]
    token = request.headers.get(TRANSFER_HEADER) or request.match_info.get("token", "")
    try:
        claims = core.tokens.verify_transfer(token)
    except GatewayError as exc:
        raise GatewayError(PERMISSION_DENIED, exc.message, http=403) from exc
    if claims.get("op") != op:
        raise GatewayError(PERMISSION_DENIED, "transfer token not valid for this operation",
                           http=403)
    return claims


def _transfer_user(core: Core, claims: dict[str, Any]) -> UserRecord:
    """The user a transfer token was issued to (their rights are checked again now)."""
    rec = core.users.by_opaque_id(str(claims.get("user", "")))
    if rec is None:
        raise GatewayError(PERMISSION_DENIED, "transfer token names an unknown user", http=403)
    return rec


async def _upload(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    claims = _transfer_claims(request, "upload")
    try:
        core.tokens.spend_transfer(claims)
    except GatewayError as exc:
        core.log.warning("op=PUT user=%s refused: %s", claims.get("user", ""), exc.message)
        raise GatewayError(PERMISSION_DENIED, exc.message, http=403) from exc
    node = core.ns.node(str(claims["path"]))
    # The rights may have changed since InitiateFileUpload (a share removed): ask again.
    # The grants of the node and of the folders above it count, whether it exists or not.
    core.storage.require(_transfer_user(core, claims), node, "initiate_file_upload")
    since = claims.get("if_unmodified_since")
    cond = Conditions(
        if_not_exist=bool(claims.get("if_not_exist")),
        if_match=str(claims.get("if_match") or ""),
        if_unmodified_since=float(since) if since is not None else None,
    )
    # Edge: the lock id saved in the upload session overrides X-Lock-Id (spec §2.2).
    lock_id = str(claims.get("lock_id") or "") or request.headers.get("X-Lock-Id", "")
    uploader = str(claims.get("user", ""))
    # Only the owner may write without keeping the replaced content: a grantee's write
    # always leaves a version the owner can go back to.
    versioning = not (_disabled_versioning(request) and core.storage.owns(uploader, node))
    tmp = await _receive_body(request, core)
    try:
        node_id = await core.storage.commit(
            node, tmp, uploader=uploader, lock_id=lock_id,
            holder=request.headers.get("X-Lock-Holder", ""),
            versioning=versioning, conditions=cond,
        )
    finally:
        tmp.unlink(missing_ok=True)
    core.log.info("op=PUT ref=%s user=%s", node.path, claims.get("user", ""))
    return web.Response(status=200, headers=_file_headers(core, node, node_id))


async def _download(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    claims = _transfer_claims(request, "download")
    node_id = str(claims.get("node", ""))
    node = core.ns.node_by_id(node_id)
    if node is None:
        raise GatewayError(NOT_FOUND, "file not found")
    version_key = str(claims.get("version_key") or "")
    # The rights may have changed since InitiateFileDownload (a share removed): ask again.
    core.storage.require(_transfer_user(core, claims), node, "initiate_file_download")
    if version_key:
        version = core.storage.versions.get(node_id, version_key)
        if version is None:
            raise GatewayError(NOT_FOUND, "version not found")
        return web.FileResponse(version.path, headers={"OC-FileId": _file_id(core, node, node_id)})
    return _serve_file(core, node, node_id)


def _serve_file(core: Core, node: Node, node_id: str) -> web.FileResponse:
    st = _regular(node)
    etag = core.storage.etag(node_id, st)
    return web.FileResponse(node.disk, headers={
        "OC-FileId": _file_id(core, node, node_id), "OC-ETag": etag,
    })


async def _receive_body(request: web.Request, core: Core) -> Path:
    """Stream the request body into a temp file, refusing more than the maximum size."""
    limit = core.max_upload_size
    declared = request.headers.get("Upload-Length")
    if declared is not None and not declared.strip().isdigit():
        raise GatewayError(INVALID_ARGUMENT, "bad Upload-Length", http=400)
    for size in (request.content_length, int(declared) if declared else None):
        if size is not None and size > limit:
            raise GatewayError(RESOURCE_EXHAUSTED, "upload exceeds the maximum size", http=413)
    tmp = await core.storage.new_temp()
    try:
        total = 0
        async with await anyio.open_file(tmp, "wb") as out:
            async for chunk in request.content.iter_chunked(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise GatewayError(RESOURCE_EXHAUSTED, "upload exceeds the maximum size",
                                       http=413)
                await out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _disabled_versioning(request: web.Request) -> bool:
    return request.headers.get("X-Disable-Versioning", "").strip().lower() in ("true", "1")


def _regular(node: Node) -> os.stat_result:
    try:
        st = os.lstat(node.disk)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise GatewayError(NOT_FOUND, "file not found") from exc
    if not stat_mod.S_ISREG(st.st_mode):
        raise GatewayError(INVALID_ARGUMENT, "not a file", http=400)
    return st


def _file_id(core: Core, node: Node, node_id: str) -> str:
    rid = core.ns.resource_id(node, node_id)
    return str(ResourceId(rid.storage_id, rid.opaque_id, rid.space_id))


def _file_headers(core: Core, node: Node, node_id: str) -> dict[str, str]:
    st = os.lstat(node.disk)
    etag = core.storage.etag(node_id, st)
    return {
        "ETag": etag, "OC-ETag": etag, "OC-FileId": _file_id(core, node, node_id),
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
    }


# ---- OCM ----------------------------------------------------------------------------------


async def _discovery(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    return web.json_response(discovery_document(core.http_url, core.site, core.public_key_pem))


async def _receive_share(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    # A signature covers the target URI: one meant for another provider is not for us.
    if request.host.lower() not in (core.domain.lower(), urlsplit(core.http_url).netloc):
        raise GatewayError(UNAUTHENTICATED, "request not addressed to this provider", http=401)
    if (request.content_length or 0) > _MAX_SHARE_BODY:
        raise GatewayError(RESOURCE_EXHAUSTED, "share too large", http=413)
    body = await request.content.read(_MAX_SHARE_BODY + 1)
    if len(body) > _MAX_SHARE_BODY:
        raise GatewayError(RESOURCE_EXHAUSTED, "share too large", http=413)
    signer = await core.discovery.signer_of(request.method, str(request.url), request.headers,
                                            body)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError(INVALID_ARGUMENT, "body is not JSON", http=400) from None
    share = parse_incoming(doc, signer)
    local = share.share_with.rpartition("@")[0] or share.share_with
    rec = core.users.by_name_or_id(local)
    if rec is None:
        # Reva's ocmd answers 404 "user not found" (internal/http/services/opencloudmesh).
        raise GatewayError(NOT_FOUND, "user not found")
    core.ocm.add_received(rec.opaque_id, share, state=ocm_res.SHARE_STATE_PENDING)
    core.log.info("op=OCM received share user=%s from=%s", rec.username, signer.domain)
    return web.json_response({"recipientDisplayName": rec.display_name}, status=201)


def _dav_target(request: web.Request) -> tuple[Any, Node, str]:
    """Resolve ``/remote.php/dav/ocm/<secret>[/<path>]`` to (share row, node, node id)."""
    core = request.app[CORE_KEY]
    segments = [s for s in request.match_info["rest"].split("/") if s]
    row = core.ocm.sent_by_secret(segments[0]) if segments else None
    if row is not None:
        tail = segments[1:]
    else:
        auth = request.headers.get("Authorization", "")
        scheme, _, secret = auth.partition(" ")
        row = core.ocm.sent_by_secret(secret.strip()) if scheme.lower() == "bearer" else None
        tail = segments
    if row is None:
        raise GatewayError(UNAUTHENTICATED, "unknown share secret", http=401)
    root = core.ns.node_by_id(row["node_id"])
    if root is None:
        raise GatewayError(NOT_FOUND, "shared resource not found")
    if not tail:
        return row, root, str(row["node_id"])
    if not root.disk.is_dir():
        raise GatewayError(NOT_FOUND, "not found")
    node = core.ns.child(root, "/".join(tail))
    return row, node, core.ns.id_of(node) or ""


async def _dav_get(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    _row, node, _ = _dav_target(request)
    _regular(node)
    return _serve_file(core, node, core.ns.ensure_id(node))


async def _dav_put(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    row, node, _ = _dav_target(request)
    if not row["writable"]:
        raise GatewayError(PERMISSION_DENIED, "read-only share", http=403)
    existed = node.disk.exists()
    tmp = await _receive_body(request, core)
    try:
        node_id = await core.storage.commit(
            node, tmp, uploader=f"ocm:{row['grantee_opaque']}@{row['grantee_idp']}",
            lock_id=request.headers.get("X-Lock-Id", ""),
            holder=request.headers.get("X-Lock-Holder", ""),
            # A recipient is never the owner: X-Disable-Versioning is not theirs to send.
            versioning=True, webdav=True,
        )
    finally:
        tmp.unlink(missing_ok=True)
    core.log.info("op=OCM PUT ref=%s remote=%s", node.path, row["grantee_idp"])
    return web.Response(status=204 if existed else 201,
                        headers=_file_headers(core, node, node_id))

