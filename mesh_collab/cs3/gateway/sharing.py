"""Same-site share RPCs of the gateway servicer (spec §1.8).

Only the owner of a resource shares it (no resharing); the grantee gets the share's
``ResourcePermissions`` on the resource and below, whatever the share's state.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import resources_pb2 as gw_res
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as collab_api
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as collab_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2

from .core import Core, rpc
from .namespace import Node
from .shares import permissions_of
from .status import (
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    UNIMPLEMENTED,
    GatewayError,
)
from .users import UserRecord

_READ = {"stat": True, "initiate_file_download": True, "list_container": True,
         "get_path": True, "list_file_versions": True, "get_quota": True}
_WRITE = {**_READ, "initiate_file_upload": True, "delete": True, "move": True,
          "create_container": True, "restore_file_version": True}


def _ts(value: float | None) -> types_pb2.Timestamp | None:
    if value is None:
        return None
    return types_pb2.Timestamp(seconds=int(value), nanos=int((value % 1) * 1e9) % 10**9)


class SharingRpcs:
    """Same-site share RPCs; a mixin of the gateway servicer."""

    core: Core

    # ---- same-site shares -----------------------------------------------------------------

    @rpc(collab_api.CreateShareResponse)
    async def CreateShare(self, req: collab_api.CreateShareRequest, user: UserRecord) -> Any:
        """CreateShare: owner only; ALREADY_EXISTS for a duplicate; starts PENDING."""
        core = self.core
        info = req.resource_info
        if info.HasField("id") and info.id.opaque_id:
            node = core.ns.resolve_id(info.id)
        elif info.path:
            node = core.ns.resolve_path(info.path)
        else:
            raise GatewayError(INVALID_ARGUMENT, "resource_info needs an id")
        node_id = self._owned(user, node)
        grantee = req.grant.grantee
        if grantee.type == res.GRANTEE_TYPE_GROUP:
            raise GatewayError(UNIMPLEMENTED, "group shares are not supported")
        if grantee.type != res.GRANTEE_TYPE_USER or not grantee.user_id.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "grantee must be a user")
        rec = core.users.by_user_id(grantee.user_id)
        if rec is None:
            raise GatewayError(NOT_FOUND, "grantee not found")
        if rec.opaque_id == user.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "cannot share with the owner")
        perms = req.grant.permissions.permissions
        if not (perms.stat or perms.initiate_file_download):
            raise GatewayError(INVALID_ARGUMENT, "share permissions must allow reading")
        exp = req.grant.expiration
        row = core.shares.create(
            node_id=node_id, owner=user.opaque_id, creator=user.opaque_id,
            grantee=rec.opaque_id, permissions=perms,
            expiration=(exp.seconds + exp.nanos / 1e9) if exp.seconds else None,
        )
        core.log.info("op=CreateShare user=%s ref=%s grantee=%s", user.username, node.path,
                      rec.username)
        return collab_api.CreateShareResponse(share=self._share(row))

    @rpc(collab_api.RemoveShareResponse)
    async def RemoveShare(self, req: collab_api.RemoveShareRequest, user: UserRecord) -> Any:
        """RemoveShare (owner or creator)."""
        row = self._share_row(req.ref, user, manage=True)
        self.core.shares.delete(row["id"])
        return collab_api.RemoveShareResponse()

    @rpc(collab_api.GetShareResponse)
    async def GetShare(self, req: collab_api.GetShareRequest, user: UserRecord) -> Any:
        """GetShare (owner, creator or grantee)."""
        return collab_api.GetShareResponse(share=self._share(self._share_row(req.ref, user)))

    @rpc(collab_api.UpdateShareResponse)
    async def UpdateShare(self, req: collab_api.UpdateShareRequest, user: UserRecord) -> Any:
        """UpdateShare: permissions, from ``field`` or from ``share`` + ``update_mask``."""
        row = self._share_row(req.ref, user, manage=True)
        if req.HasField("field") and req.field.HasField("permissions"):
            perms = req.field.permissions.permissions
        elif "permissions" in req.update_mask.paths:
            perms = req.share.permissions.permissions
        else:
            raise GatewayError(INVALID_ARGUMENT, "only permissions can be updated")
        self.core.shares.update_permissions(row["id"], perms)
        updated = self.core.shares.get(row["id"])
        assert updated is not None
        return collab_api.UpdateShareResponse(share=self._share(updated))

    @rpc(collab_api.ListSharesResponse)
    async def ListShares(self, req: collab_api.ListSharesRequest, user: UserRecord) -> Any:
        """ListShares: the shares the caller created, filtered."""
        rows = self._filtered(self.core.shares.created_by(user.opaque_id), req.filters)
        return collab_api.ListSharesResponse(shares=[self._share(r) for r in rows])

    @rpc(gw.ListExistingSharesResponse)
    async def ListExistingShares(
        self, req: collab_api.ListSharesRequest, user: UserRecord
    ) -> Any:
        """ListExistingShares: ListShares plus each resource's info."""
        rows = self._filtered(self.core.shares.created_by(user.opaque_id), req.filters)
        infos = [
            gw_res.ShareResourceInfo(share=self._share(r), resource_info=self._info(user, r))
            for r in rows
        ]
        return gw.ListExistingSharesResponse(share_infos=infos)

    @rpc(collab_api.ListReceivedSharesResponse)
    async def ListReceivedShares(
        self, req: collab_api.ListReceivedSharesRequest, user: UserRecord
    ) -> Any:
        """ListReceivedShares."""
        rows = self._filtered(self.core.shares.received_by(user.opaque_id), req.filters)
        return collab_api.ListReceivedSharesResponse(shares=[self._received(r) for r in rows])

    @rpc(gw.ListExistingReceivedSharesResponse)
    async def ListExistingReceivedShares(
        self, req: collab_api.ListReceivedSharesRequest, user: UserRecord
    ) -> Any:
        """ListExistingReceivedShares: received shares plus each resource's info."""
        rows = self._filtered(self.core.shares.received_by(user.opaque_id), req.filters)
        infos = [
            gw_res.ReceivedShareResourceInfo(
                received_share=self._received(r), resource_info=self._info(user, r)
            )
            for r in rows
        ]
        return gw.ListExistingReceivedSharesResponse(share_infos=infos)

    @rpc(collab_api.GetReceivedShareResponse)
    async def GetReceivedShare(
        self, req: collab_api.GetReceivedShareRequest, user: UserRecord
    ) -> Any:
        """GetReceivedShare (grantee only)."""
        row = self._share_row(req.ref, user)
        if row["grantee"] != user.opaque_id:
            raise GatewayError(NOT_FOUND, "share not found")
        return collab_api.GetReceivedShareResponse(share=self._received(row))

    @rpc(collab_api.UpdateReceivedShareResponse)
    async def UpdateReceivedShare(
        self, req: collab_api.UpdateReceivedShareRequest, user: UserRecord
    ) -> Any:
        """UpdateReceivedShare: mask paths "state" and "hidden" ("mount_point" ignored)."""
        if not req.HasField("share") or not req.share.share.id.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "share or share id missing")
        row = self.core.shares.get(req.share.share.id.opaque_id)
        if row is None or row["grantee"] != user.opaque_id:
            raise GatewayError(NOT_FOUND, "share not found")
        state, hidden = _received_update(req.share.state, req.share.hidden, req.update_mask.paths,
                                         collab_res.ShareState.values())
        self.core.shares.update_received(row["id"], state=state, hidden=hidden)
        updated = self.core.shares.get(row["id"])
        assert updated is not None
        return collab_api.UpdateReceivedShareResponse(share=self._received(updated))

    # ---- helpers ----------------------------------------------------------------------------

    def _owned(self, user: UserRecord, node: Node) -> str:
        if node.home_user != user.username:
            raise GatewayError(PERMISSION_DENIED, "only the owner can share a resource")
        if not node.disk.exists():
            raise GatewayError(NOT_FOUND, "resource not found")
        if node.is_home:
            raise GatewayError(INVALID_ARGUMENT, "cannot share a home")
        return self.core.ns.ensure_id(node)

    def _resource_id(self, node_id: str) -> res.ResourceId:
        node = self.core.ns.node_by_id(node_id)
        if node is None:
            return res.ResourceId(storage_id=self.core.ns.storage_id, opaque_id=node_id)
        return self.core.ns.resource_id(node, node_id)

    def _share(self, row: sqlite3.Row) -> collab_res.Share:
        core = self.core
        share = collab_res.Share(
            id=collab_res.ShareId(opaque_id=row["id"]),
            resource_id=self._resource_id(row["node_id"]),
            permissions=collab_res.SharePermissions(permissions=permissions_of(row)),
            grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=core.user_id(row["grantee"])),
            owner=core.user_id(row["owner"]),
            creator=core.user_id(row["creator"]),
            ctime=_ts(row["ctime"]),
            mtime=_ts(row["mtime"]),
        )
        if row["expiration"] is not None:
            share.expiration.CopyFrom(_ts(row["expiration"]))
        return share

    def _received(self, row: sqlite3.Row) -> collab_res.ReceivedShare:
        node = self.core.ns.node_by_id(row["node_id"])
        return collab_res.ReceivedShare(
            share=self._share(row), state=row["state"], hidden=bool(row["hidden"]),
            mount_point=res.Reference(path=node.name if node else ""),
        )

    def _info(self, user: UserRecord, row: sqlite3.Row) -> res.ResourceInfo | None:
        node = self.core.ns.node_by_id(row["node_id"])
        if node is None:
            return None
        try:
            return self.core.storage.stat(user, node, [])
        except GatewayError:
            return None

    def _share_row(
        self, ref: collab_res.ShareReference, user: UserRecord, *, manage: bool = False
    ) -> sqlite3.Row:
        shares = self.core.shares
        if ref.HasField("id"):
            row = shares.get(ref.id.opaque_id)
        elif ref.HasField("key"):
            grantee = self.core.users.by_user_id(ref.key.grantee.user_id)
            row = None
            if grantee is not None and ref.key.resource_id.opaque_id:
                row = shares.by_key(ref.key.resource_id.opaque_id, grantee.opaque_id)
        else:
            raise GatewayError(INVALID_ARGUMENT, "share reference needs an id or a key")
        allowed = {row["owner"], row["creator"]} if row is not None else set()
        if row is not None and not manage:
            allowed.add(row["grantee"])
        if row is None or user.opaque_id not in allowed:
            raise GatewayError(NOT_FOUND, "share not found")
        return row

    def _filtered(self, rows: list[sqlite3.Row], filters: Any) -> list[sqlite3.Row]:
        by_type: dict[int, list[Any]] = defaultdict(list)
        for flt in filters:
            by_type[flt.type].append(flt)
        # Reva semantics: filters of one type are OR-ed, different types AND-ed.
        return [r for r in rows if all(
            any(self._match(r, f) for f in group) for group in by_type.values()
        )]

    def _match(self, row: sqlite3.Row, flt: collab_res.Filter) -> bool:
        kind = collab_res.Filter.Type
        if flt.type == kind.TYPE_RESOURCE_ID:
            return bool(row["node_id"] == flt.resource_id.opaque_id)
        if flt.type == kind.TYPE_OWNER:
            return bool(row["owner"] == flt.owner.opaque_id)
        if flt.type == kind.TYPE_CREATOR:
            return bool(row["creator"] == flt.creator.opaque_id)
        if flt.type == kind.TYPE_GRANTEE_TYPE:
            return flt.grantee_type == res.GRANTEE_TYPE_USER
        if flt.type == kind.TYPE_STATE:
            return bool(row["state"] == flt.state)
        if flt.type == kind.TYPE_GRANTEE:
            return bool(row["grantee"] == flt.grantee.user_id.opaque_id)
        if flt.type == kind.TYPE_SPACE_ID:
            return self._resource_id(row["node_id"]).space_id == flt.space_id
        return True


def _received_update(
    state: int, hidden: bool, paths: Any, valid_states: list[int]
) -> tuple[int | None, bool | None]:
    if not paths:
        raise GatewayError(INVALID_ARGUMENT, "update mask is empty")
    new_state: int | None = None
    new_hidden: bool | None = None
    for path in paths:
        if path == "state":
            if state not in valid_states or state == 0:
                raise GatewayError(INVALID_ARGUMENT, "invalid share state")
            new_state = state
        elif path == "hidden":
            new_hidden = hidden
        elif path != "mount_point":  # a TODO in Reva's share managers: accepted, ignored
            raise GatewayError(INVALID_ARGUMENT, f"cannot update field {path!r}")
    return new_state, new_hidden

