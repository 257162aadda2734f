"""The gRPC ``GatewayAPI`` servicer: auth, users and storage RPCs.

Share and OCM RPCs come from the mixins in :mod:`~mesh_collab.cs3.gateway.sharing` and
:mod:`~mesh_collab.cs3.gateway.ocm_rpcs`.
Every GatewayAPI method this gateway does not implement answers
``Status{code=CODE_UNIMPLEMENTED}`` (cs3client maps it to UnimplementedException, like the
gRPC-level UNIMPLEMENTED of a bare servicer; spec §1.11), except the two server-streaming
methods, which keep the gRPC default.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio.to_thread
from cs3.auth.registry.v1beta1 import registry_api_pb2
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.gateway.v1beta1 import resources_pb2 as gw_res
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
from cs3.rpc.v1beta1 import status_pb2
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2
from google.protobuf import message_factory

from .content import Conditions
from .core import Core, call_peer, opaque_str, rpc
from .namespace import Node
from .ocm_rpcs import OcmRpcs
from .recycle import RecycleEntry
from .status import (
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    GatewayError,
)
from .users import UserRecord

AUTH_TYPES = ("basic", "bearer")


class GatewayServicer(OcmRpcs, gw_grpc.GatewayAPIServicer):
    """Reva-compatible answers for the GatewayAPI methods mesh_collab and cs3client use.

    Args:
        core: the parts of the running gateway.
    """

    def __init__(self, core: Core) -> None:
        self.core = core

    # ---- auth ---------------------------------------------------------------------------

    @rpc(gw.AuthenticateResponse, public=True)
    async def Authenticate(self, req: gw.AuthenticateRequest, _: None) -> Any:
        """Authenticate with "basic" (username + password) or "bearer".

        "bearer" takes a JWT this gateway issued earlier (``client_secret``; ``client_id`` is
        ignored, as Reva's OIDC manager does) and exchanges it for a fresh token of the same
        login: it keeps the ``auth_time`` of the one it replaces and lives at most until the
        login's maximum age (:meth:`TokenSigner.renewable`). Past that age, or once the
        token already lives until then, the exchange answers UNAUTHENTICATED; an invalid or
        expired token, PERMISSION_DENIED.

        "basic" answers an unknown user and a wrong password alike (PERMISSION_DENIED "wrong
        user name or password"), and refuses with RESOURCE_EXHAUSTED "too many failed logins:
        try again in N s" once :attr:`Core.throttle` says so, without checking the password.
        """
        auth_time = None
        if req.type == "basic":
            rec = await self._check_password(req.client_id, req.client_secret)
        elif req.type == "bearer":
            auth_time = self.core.tokens.renewable(req.client_secret)
            rec = self.core.user_from_token(req.client_secret)
        else:
            # The gateway finds no auth provider for the type (authprovider.go).
            raise GatewayError(INTERNAL, f"error getting auth provider for type: {req.type!r}")
        self.core.storage.ensure_home(rec)
        token = self.core.tokens.issue(rec.to_claims(), idp=rec.idp, auth_time=auth_time)
        self.core.log.info("op=Authenticate user=%s type=%s", rec.username, req.type)
        return gw.AuthenticateResponse(token=token, user=rec.to_proto())

    async def _check_password(self, username: str, password: str) -> UserRecord:
        core = self.core
        address = call_peer.get()
        # The throttle is asked once the check may run: attempts queued behind the limiter
        # see the failures of those before them.
        async with core.login_limiter:
            wait = core.throttle.retry_after(username, address)
            if wait:
                core.log.warning("op=Authenticate user=%r address=%s throttled", username,
                                 address)
                raise GatewayError(
                    RESOURCE_EXHAUSTED,
                    f"too many failed logins: try again in {math.ceil(wait)} s",
                )
            rec = await anyio.to_thread.run_sync(core.users.authenticate, username, password)
            if rec is None:
                core.throttle.failed(username, address)
                core.log.info("op=Authenticate user=%r address=%s refused", username, address)
                raise GatewayError(PERMISSION_DENIED, "wrong user name or password")
            core.throttle.succeeded(username, address)
        return rec

    @rpc(gw.WhoAmIResponse)
    async def WhoAmI(self, req: gw.WhoAmIRequest, user: UserRecord) -> Any:
        """Return the user of ``req.token`` (or of the call's token when empty)."""
        rec = self.core.user_from_token(req.token) if req.token else user
        return gw.WhoAmIResponse(user=rec.to_proto())

    @rpc(gw.ListAuthProvidersResponse, public=True)
    async def ListAuthProviders(
        self, req: registry_api_pb2.ListAuthProvidersRequest, _: None
    ) -> Any:
        """List the supported auth types."""
        return gw.ListAuthProvidersResponse(types=list(AUTH_TYPES))

    # ---- users ----------------------------------------------------------------------------

    @rpc(user_api.GetUserResponse, public=True)
    async def GetUser(self, req: user_api.GetUserRequest, _: None) -> Any:
        """GetUser: NOT_FOUND when unknown."""
        rec = self.core.users.by_user_id(req.user_id)
        if rec is None:
            raise GatewayError(NOT_FOUND, "user not found")
        return user_api.GetUserResponse(
            user=rec.to_proto(with_groups=not req.skip_fetching_user_groups)
        )

    @rpc(user_api.GetUserByClaimResponse, public=True)
    async def GetUserByClaim(self, req: user_api.GetUserByClaimRequest, _: None) -> Any:
        """GetUserByClaim: claims username, mail, userid (also uid, opaque_id)."""
        users = self.core.users
        if req.claim == "username":
            rec = users.by_username(req.value)
        elif req.claim == "mail":
            rec = users.by_mail(req.value)
        elif req.claim in ("userid", "uid", "opaque_id"):
            rec = users.by_opaque_id(req.value)
        else:
            raise GatewayError(INVALID_ARGUMENT, f"claim not supported: {req.claim!r}")
        if rec is None:
            raise GatewayError(NOT_FOUND, "user not found")
        return user_api.GetUserByClaimResponse(
            user=rec.to_proto(with_groups=not req.skip_fetching_user_groups)
        )

    @rpc(user_api.GetUserGroupsResponse, public=True)
    async def GetUserGroups(self, req: user_api.GetUserGroupsRequest, _: None) -> Any:
        """GetUserGroups: NOT_FOUND when unknown."""
        rec = self.core.users.by_user_id(req.user_id)
        if rec is None:
            raise GatewayError(NOT_FOUND, "user not found")
        return user_api.GetUserGroupsResponse(groups=list(rec.groups))

    @rpc(user_api.FindUsersResponse)
    async def FindUsers(self, req: user_api.FindUsersRequest, user: UserRecord) -> Any:
        """FindUsers: needs a TYPE_QUERY filter; substring match, sorted by username."""
        queries = [f.query for f in req.filters if f.type == user_api.Filter.TYPE_QUERY]
        if not queries:
            # Reva master answers a Go error (gRPC UNKNOWN); a CS3 status is clearer.
            raise GatewayError(INVALID_ARGUMENT, "a query filter is required")
        types = {f.usertype for f in req.filters if f.type == user_api.Filter.TYPE_USERTYPE}
        found = []
        for rec in self.core.users.all():
            fields = (rec.username, rec.display_name, rec.mail, rec.opaque_id)
            if not all(any(q.casefold() in v.casefold() for v in fields) for q in queries):
                continue
            if types and user_res.USER_TYPE_PRIMARY not in types:
                continue
            found.append(rec.to_proto(with_groups=not req.skip_fetching_user_groups))
        return user_api.FindUsersResponse(users=found)

    # ---- namespace ------------------------------------------------------------------------

    @rpc(sp.StatResponse)
    async def Stat(self, req: sp.StatRequest, user: UserRecord) -> Any:
        """Stat."""
        node = self.core.ns.resolve(req.ref)
        info = self.core.storage.stat(user, node, list(req.arbitrary_metadata_keys))
        return sp.StatResponse(info=info)

    @rpc(sp.ListContainerResponse)
    async def ListContainer(self, req: sp.ListContainerRequest, user: UserRecord) -> Any:
        """ListContainer, paged by offset when ``page_size`` is set (only the page's entries
        are described); without it, the whole folder, as Reva and cs3client expect."""
        node = self.core.ns.resolve(req.ref)
        start = _offset(req.page_token)
        infos, total = await self.core.storage.list_container(
            user, node, list(req.arbitrary_metadata_keys), start=start,
            limit=max(req.page_size, 0),
        )
        return sp.ListContainerResponse(
            infos=infos, next_page_token=_next_token(start, req.page_size, total)
        )

    @rpc(sp.CreateContainerResponse)
    async def CreateContainer(self, req: sp.CreateContainerRequest, user: UserRecord) -> Any:
        """CreateContainer (edge reads the parent's lock id from opaque ``lockid``)."""
        node = self.core.ns.resolve(req.ref)
        self.core.storage.create_container(user, node, opaque_str(req.opaque, "lockid"))
        return sp.CreateContainerResponse()

    @rpc(sp.TouchFileResponse)
    async def TouchFile(self, req: sp.TouchFileRequest, user: UserRecord) -> Any:
        """TouchFile (edge reads the lock id from opaque ``lockid``, not the field)."""
        node = self.core.ns.resolve(req.ref)
        self.core.storage.touch_file(user, node, opaque_str(req.opaque, "lockid"))
        return sp.TouchFileResponse()

    @rpc(sp.DeleteResponse)
    async def Delete(self, req: sp.DeleteRequest, user: UserRecord) -> Any:
        """Delete (containers recursively) into the recycle bin of the resource's space."""
        node = self.core.ns.resolve(req.ref)
        key = await self.core.storage.delete(user, node, req.lock_id)
        self.core.log.info("op=Delete user=%s ref=%s recycle=%s", user.username, node.path,
                           key)
        return sp.DeleteResponse()

    @rpc(sp.MoveResponse)
    async def Move(self, req: sp.MoveRequest, user: UserRecord) -> Any:
        """Move: ids are kept, an existing destination is ALREADY_EXISTS."""
        src = self.core.ns.resolve(req.source)
        dst = self.core.ns.resolve(req.destination)
        self.core.storage.move(user, src, dst, req.lock_id)
        return sp.MoveResponse()

    @rpc(sp.SetArbitraryMetadataResponse)
    async def SetArbitraryMetadata(
        self, req: sp.SetArbitraryMetadataRequest, user: UserRecord
    ) -> Any:
        """SetArbitraryMetadata."""
        node = self.core.ns.resolve(req.ref)
        metadata = dict(req.arbitrary_metadata.metadata)
        self.core.storage.set_metadata(user, node, metadata, req.lock_id)
        return sp.SetArbitraryMetadataResponse()

    @rpc(sp.UnsetArbitraryMetadataResponse)
    async def UnsetArbitraryMetadata(
        self, req: sp.UnsetArbitraryMetadataRequest, user: UserRecord
    ) -> Any:
        """UnsetArbitraryMetadata."""
        node = self.core.ns.resolve(req.ref)
        keys = list(req.arbitrary_metadata_keys)
        self.core.storage.unset_metadata(user, node, keys, req.lock_id)
        return sp.UnsetArbitraryMetadataResponse()

    @rpc(sp.GetPathResponse)
    async def GetPath(self, req: sp.GetPathRequest, user: UserRecord) -> Any:
        """GetPath."""
        return sp.GetPathResponse(path=self.core.storage.get_path(user, req.resource_id))

    @rpc(sp.GetHomeResponse)
    async def GetHome(self, req: sp.GetHomeRequest, user: UserRecord) -> Any:
        """GetHome: ``/home/<username>``."""
        return sp.GetHomeResponse(path=f"/home/{user.username}")

    @rpc(sp.GetQuotaResponse)
    async def GetQuota(self, req: gw.GetQuotaRequest, user: UserRecord) -> Any:
        """GetQuota: the free disk space plus what the home uses; no real quota. What the
        home uses is counted at most every ``QUOTA_MAX_AGE`` seconds."""
        ns = self.core.ns
        has_ref = req.HasField("ref") and (req.ref.path or req.ref.HasField("resource_id"))
        node = ns.resolve(req.ref) if has_ref else ns.resolve_path(f"/home/{user.username}")
        total, used = await self.core.storage.quota(user, node)
        return sp.GetQuotaResponse(total_bytes=total, used_bytes=used)

    # ---- data transfer --------------------------------------------------------------------

    @rpc(gw.InitiateFileUploadResponse)
    async def InitiateFileUpload(
        self, req: sp.InitiateFileUploadRequest, user: UserRecord
    ) -> Any:
        """InitiateFileUpload: checks, then a "simple" protocol with a transfer token."""
        core = self.core
        node = core.ns.resolve(req.ref)
        node_id, st = core.storage.upload_target(user, node)
        length = opaque_str(req.opaque, "Upload-Length")
        if length:
            if not length.isdigit():
                raise GatewayError(INVALID_ARGUMENT, "Upload-Length must be a number")
            if int(length) > core.max_upload_size:
                raise GatewayError(RESOURCE_EXHAUSTED, "upload exceeds the maximum size")
        since = None
        if req.HasField("if_unmodified_since"):
            ts = req.if_unmodified_since
            since = ts.seconds + ts.nanos / 1e9
        cond = Conditions(if_not_exist=req.if_not_exist, if_match=req.if_match,
                          if_unmodified_since=since)
        core.storage.check_conditions(node_id, st, cond)
        core.storage.rules.check_initiate_upload(
            core.storage.locks, node_id, req.lock_id, time.time()
        )
        token = core.tokens.issue_transfer({
            "op": "upload", "path": node.rel, "user": user.opaque_id, "lock_id": req.lock_id,
            "if_not_exist": cond.if_not_exist, "if_match": cond.if_match,
            "if_unmodified_since": since,
        })
        protocol = gw_res.FileUploadProtocol(
            protocol="simple", upload_endpoint=f"{core.http_url}/datagateway/{token}",
            token=token,
        )
        return gw.InitiateFileUploadResponse(protocols=[protocol])

    @rpc(gw.InitiateFileDownloadResponse)
    async def InitiateFileDownload(
        self, req: sp.InitiateFileDownloadRequest, user: UserRecord
    ) -> Any:
        """InitiateFileDownload; opaque ``version_key`` selects a version (master)."""
        core = self.core
        node = core.ns.resolve(req.ref)
        version_key = opaque_str(req.opaque, "version_key")
        node_id = core.storage.download_target(user, node, version_key)
        token = core.tokens.issue_transfer({
            "op": "download", "node": node_id, "user": user.opaque_id,
            "version_key": version_key,
        })
        protocol = gw_res.FileDownloadProtocol(
            protocol="simple", download_endpoint=f"{core.http_url}/datagateway/{token}",
            token=token,
        )
        return gw.InitiateFileDownloadResponse(protocols=[protocol])

    # ---- versions -------------------------------------------------------------------------

    @rpc(sp.ListFileVersionsResponse)
    async def ListFileVersions(self, req: sp.ListFileVersionsRequest, user: UserRecord) -> Any:
        """ListFileVersions: newest first."""
        node = self.core.ns.resolve(req.ref)
        versions = [
            res.FileVersion(key=v.key, size=v.size, mtime=v.mtime, etag=v.etag)
            for v in self.core.storage.list_versions(user, node)
        ]
        page, token = _page(versions, req.page_size, req.page_token)
        return sp.ListFileVersionsResponse(versions=page, next_page_token=token)

    @rpc(sp.RestoreFileVersionResponse)
    async def RestoreFileVersion(
        self, req: sp.RestoreFileVersionRequest, user: UserRecord
    ) -> Any:
        """RestoreFileVersion: NOT_FOUND for an unknown key."""
        node = self.core.ns.resolve(req.ref)
        await self.core.storage.restore_version(user, node, req.key, req.lock_id)
        return sp.RestoreFileVersionResponse()

    # ---- recycle bin ----------------------------------------------------------------------

    @rpc(sp.ListRecycleResponse)
    async def ListRecycle(self, req: sp.ListRecycleRequest, user: UserRecord) -> Any:
        """ListRecycle: the bin of the space ``ref`` is in (default: the caller's home).

        ``key`` picks one item; ``from_ts``/``to_ts`` bound the deletion time (seconds);
        paged by offset. Sub-paths of an item (``<key>/<path>``) are not addressable.
        """
        node = self._space_ref(req.ref, user)
        entries = await self.core.storage.list_recycle(user, node)
        low = req.from_ts.seconds if req.HasField("from_ts") else None
        high = req.to_ts.seconds if req.HasField("to_ts") else None
        items = [
            _recycle_item(e) for e in entries
            if (not req.key or e.key == req.key)
            and (low is None or e.deleted >= low)
            and (high is None or e.deleted < high + 1)
        ]
        page, token = _page(items, req.page_size, req.page_token)
        return sp.ListRecycleResponse(recycle_items=page, next_page_token=token)

    @rpc(sp.RestoreRecycleItemResponse)
    async def RestoreRecycleItem(
        self, req: sp.RestoreRecycleItemRequest, user: UserRecord
    ) -> Any:
        """RestoreRecycleItem: to the original path, or to ``restore_ref`` (same space)."""
        core = self.core
        node = self._space_ref(req.ref, user)
        target = None
        if req.HasField("restore_ref") and (
            req.restore_ref.path or req.restore_ref.HasField("resource_id")
        ):
            target = core.ns.resolve(req.restore_ref)
        dst = await core.storage.restore_recycle_item(user, node, req.key, target, req.lock_id)
        core.log.info("op=RestoreRecycleItem user=%s key=%s ref=%s", user.username, req.key,
                      dst.path)
        return sp.RestoreRecycleItemResponse()

    @rpc(sp.PurgeRecycleResponse)
    async def PurgeRecycle(self, req: sp.PurgeRecycleRequest, user: UserRecord) -> Any:
        """PurgeRecycle: the item ``key``, or the whole bin when ``key`` is empty."""
        node = self._space_ref(req.ref, user)
        count = await self.core.storage.purge_recycle(user, node, req.key)
        self.core.log.info("op=PurgeRecycle user=%s key=%s items=%d", user.username,
                           req.key or "*", count)
        return sp.PurgeRecycleResponse()

    def _space_ref(self, ref: res.Reference, user: UserRecord) -> Node:
        """The node a recycle call's reference names; the caller's home when it is empty."""
        ns = self.core.ns
        if ref.path or ref.HasField("resource_id"):
            return ns.resolve(ref)
        return ns.resolve_path(f"/home/{user.username}")

    # ---- locks ----------------------------------------------------------------------------

    @rpc(sp.SetLockResponse)
    async def SetLock(self, req: sp.SetLockRequest, user: UserRecord) -> Any:
        """SetLock (profile rules in :mod:`~mesh_collab.cs3.gateway.locks`); the expiry is
        capped at ``MAX_LOCK_EXPIRY``."""
        node = self._lock_node(req)
        self.core.storage.set_lock(user, node, req.lock)
        self.core.log.info("op=SetLock user=%s ref=%s app=%s", user.username, node.path,
                           req.lock.app_name)
        return sp.SetLockResponse()

    @rpc(sp.GetLockResponse)
    async def GetLock(self, req: sp.GetLockRequest, user: UserRecord) -> Any:
        """GetLock: NOT_FOUND when not locked or expired; without write permission, the
        lock's id reads ``HIDDEN_LOCK_ID``."""
        lock = self.core.storage.get_lock(user, self._lock_node(req))
        return sp.GetLockResponse(lock=lock.to_proto())

    @rpc(sp.RefreshLockResponse)
    async def RefreshLock(self, req: sp.RefreshLockRequest, user: UserRecord) -> Any:
        """RefreshLock: by the lock's user only."""
        node = self._lock_node(req)
        self.core.storage.refresh_lock(user, node, req.lock, req.existing_lock_id)
        return sp.RefreshLockResponse()

    @rpc(sp.UnlockResponse)
    async def Unlock(self, req: sp.UnlockRequest, user: UserRecord) -> Any:
        """Unlock: by the lock's user, or the file's owner (breaking it)."""
        node = self._lock_node(req)
        self.core.storage.unlock(user, node, req.lock)
        self.core.log.info("op=Unlock user=%s ref=%s", user.username, node.path)
        return sp.UnlockResponse()

    def _lock_node(self, req: Any) -> Node:
        return self.core.ns.resolve(req.ref)


def _recycle_item(entry: RecycleEntry) -> res.RecycleItem:
    """The CS3 ``RecycleItem`` of a bin entry; ``ref`` is the original absolute path (as
    Reva master's EOS driver gives it)."""
    seconds = int(entry.deleted)
    return res.RecycleItem(
        type=res.RESOURCE_TYPE_CONTAINER if entry.is_dir else res.RESOURCE_TYPE_FILE,
        key=entry.key,
        ref=res.Reference(path=entry.path),
        size=entry.size,
        deletion_time=types_pb2.Timestamp(
            seconds=seconds, nanos=int((entry.deleted - seconds) * 1e9) % 10**9
        ),
    )


def _page(items: list[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    """Offset paging: ``page_token`` is the offset of the page, as a decimal string."""
    start = _offset(page_token)
    if page_size <= 0:
        return items[start:], ""
    return items[start:start + page_size], _next_token(start, page_size, len(items))


def _offset(page_token: str) -> int:
    """The offset a page token names (``""``: 0).

    Raises:
        GatewayError: INVALID_ARGUMENT for anything but a decimal number.
    """
    if page_token and not page_token.isdigit():
        raise GatewayError(INVALID_ARGUMENT, "bad page token")
    return int(page_token or 0)


def _next_token(start: int, page_size: int, total: int) -> str:
    """The token of the page after ``[start, start + page_size)`` of ``total`` items."""
    end = start + page_size
    return str(end) if page_size > 0 and end < total else ""


def _install_unimplemented() -> None:
    """Answer CODE_UNIMPLEMENTED for every unary GatewayAPI method not defined above."""
    service = gw.DESCRIPTOR.services_by_name["GatewayAPI"]
    for method in service.methods:
        if any(method.name in vars(klass) for klass in GatewayServicer.__mro__[:-2]):
            continue
        if method.server_streaming or method.client_streaming:
            continue
        cls = message_factory.GetMessageClass(method.output_type)

        def make(name: str, response: Any) -> Any:
            async def unimplemented(self: Any, request: Any, context: Any) -> Any:
                status = status_pb2.Status(code=UNIMPLEMENTED, message=f"{name} not implemented")
                return response(status=status)

            unimplemented.__name__ = name
            return unimplemented

        setattr(GatewayServicer, method.name, make(method.name, cls))


_install_unimplemented()
