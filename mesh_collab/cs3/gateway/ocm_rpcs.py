"""OCM RPCs of the gateway servicer (spec §1.9).

The owner shares with a federated user of another gateway; the remote is told over the OCM
HTTP API (:mod:`~mesh_collab.cs3.gateway.ocm`) and serves the recipient's
``ListReceivedOCMShares``. Received shares carry the owner's resource id and site in their
opaque map, which mesh_collab nodes key rooms by.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.ocm.provider.v1beta1 import provider_api_pb2 as prov_api
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm_api
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocm_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res

from ...resources import ResourceId
from .core import plain, rpc
from .ocm import new_secret
from .sharing import _READ, _WRITE, SharingRpcs, _received_update, _ts
from .status import (
    ALREADY_EXISTS,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    GatewayError,
)
from .users import UserRecord


class OcmRpcs(SharingRpcs):
    """OCM RPCs; a mixin of :class:`~mesh_collab.cs3.gateway.servicer.GatewayServicer`."""

    # ---- OCM providers --------------------------------------------------------------------

    @rpc(prov_api.GetInfoByDomainResponse)
    async def GetInfoByDomain(self, req: prov_api.GetInfoByDomainRequest, user: Any) -> Any:
        """GetInfoByDomain: live discovery of a trusted provider; PERMISSION_DENIED for any
        other domain (no request leaves), INTERNAL when the domain does not answer."""
        provider = await self.core.discovery.lookup(req.domain)
        return prov_api.GetInfoByDomainResponse(provider_info=provider.info)

    @rpc(prov_api.ListAllProvidersResponse, public=True)
    async def ListAllProviders(self, req: prov_api.ListAllProvidersRequest, _: None) -> Any:
        """ListAllProviders: the providers discovered so far."""
        return prov_api.ListAllProvidersResponse(providers=self.core.discovery.known())

    @rpc(prov_api.IsProviderAllowedResponse, public=True)
    async def IsProviderAllowed(self, req: prov_api.IsProviderAllowedRequest, _: None) -> Any:
        """IsProviderAllowed: OK for a trusted provider's domain, PERMISSION_DENIED for any
        other (Reva's ``json`` ocmproviderauthorizer)."""
        self.core.discovery.trusted.require(req.provider.domain)
        return prov_api.IsProviderAllowedResponse()

    # ---- OCM shares -----------------------------------------------------------------------

    @rpc(ocm_api.CreateOCMShareResponse)
    async def CreateOCMShare(self, req: ocm_api.CreateOCMShareRequest, user: UserRecord) -> Any:
        """CreateOCMShare: persisted only after the remote answered 201."""
        core = self.core
        node = core.ns.resolve_id(req.resource_id)
        node_id = self._owned(user, node)
        grantee = req.grantee.user_id
        if req.grantee.type != res.GRANTEE_TYPE_USER or not grantee.idp or not grantee.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "grantee must be a federated user id")
        if core.ocm.sent_by_key(node_id, grantee.idp, grantee.opaque_id) is not None:
            raise GatewayError(ALREADY_EXISTS, "OCM share already exists")
        provider = await core.discovery.lookup(grantee.idp)
        writable = any(
            m.webdav_options.permissions.initiate_file_upload
            for m in req.access_methods if m.HasField("webdav_options")
        )
        secret = new_secret()
        rid = core.ns.resource_id(node, node_id)
        owner = f"{user.username}@{core.domain}"
        payload = {
            "shareWith": f"{grantee.opaque_id}@{grantee.idp}",
            "name": node.name,
            "description": "",
            "providerId": str(ResourceId(rid.storage_id, rid.opaque_id, rid.space_id)),
            "owner": owner,
            "sender": owner,
            "ownerDisplayName": user.display_name,
            "senderDisplayName": user.display_name,
            "shareType": "user",
            "resourceType": "file" if node.disk.is_file() else "folder",
            "protocol": {"name": "multi", "webdav": {
                "sharedSecret": secret,
                "permissions": ["read", "write"] if writable else ["read"],
                "uri": f"{core.http_url}/remote.php/dav/ocm/{secret}",
            }},
            # mesh_collab extension (ignored by other OCM servers): the owner's site name.
            "ownerSite": core.site,
        }
        status, body = await core.discovery.post_share(provider, payload)
        if status != 201:
            raise _remote_refusal(status, body)
        recipient = str(body.get("recipientDisplayName", "")) if isinstance(body, dict) else ""
        row = core.ocm.add_sent(
            node_id=node_id, owner=user.opaque_id, grantee_idp=grantee.idp,
            grantee_opaque=grantee.opaque_id, secret=secret, writable=writable,
            name=node.name, recipient_name=recipient,
        )
        core.log.info("op=CreateOCMShare user=%s ref=%s remote=%s", user.username, node.path,
                      grantee.idp)
        return ocm_api.CreateOCMShareResponse(share=self._ocm_share(row),
                                              recipient_display_name=recipient)

    @rpc(ocm_api.ListOCMSharesResponse)
    async def ListOCMShares(self, req: ocm_api.ListOCMSharesRequest, user: UserRecord) -> Any:
        """ListOCMShares: the shares the caller sent (filter by resource id honoured)."""
        rows = self.core.ocm.sent_by_owner(user.opaque_id)
        wanted = {f.resource_id.opaque_id for f in req.filters if f.resource_id.opaque_id}
        shares = [self._ocm_share(r) for r in rows if not wanted or r["node_id"] in wanted]
        return ocm_api.ListOCMSharesResponse(shares=shares)

    @rpc(ocm_api.GetOCMShareResponse)
    async def GetOCMShare(self, req: ocm_api.GetOCMShareRequest, user: UserRecord) -> Any:
        """GetOCMShare (by id, owner only)."""
        return ocm_api.GetOCMShareResponse(share=self._ocm_share(self._sent_row(req.ref, user)))

    @rpc(ocm_api.RemoveOCMShareResponse)
    async def RemoveOCMShare(self, req: ocm_api.RemoveOCMShareRequest, user: UserRecord) -> Any:
        """RemoveOCMShare: the WebDAV secret stops working (the remote is not notified)."""
        row = self._sent_row(req.ref, user)
        self.core.ocm.remove_sent(row["id"])
        return ocm_api.RemoveOCMShareResponse()

    @rpc(ocm_api.ListReceivedOCMSharesResponse)
    async def ListReceivedOCMShares(
        self, req: ocm_api.ListReceivedOCMSharesRequest, user: UserRecord
    ) -> Any:
        """ListReceivedOCMShares: the caller's received shares."""
        rows = self.core.ocm.received_by(user.opaque_id)
        return ocm_api.ListReceivedOCMSharesResponse(shares=[self._ocm_received(r) for r in rows])

    @rpc(ocm_api.GetReceivedOCMShareResponse)
    async def GetReceivedOCMShare(
        self, req: ocm_api.GetReceivedOCMShareRequest, user: UserRecord
    ) -> Any:
        """GetReceivedOCMShare (by id)."""
        row = self._received_ocm_row(req.ref.id.opaque_id, user)
        return ocm_api.GetReceivedOCMShareResponse(share=self._ocm_received(row))

    @rpc(ocm_api.UpdateReceivedOCMShareResponse)
    async def UpdateReceivedOCMShare(
        self, req: ocm_api.UpdateReceivedOCMShareRequest, user: UserRecord
    ) -> Any:
        """UpdateReceivedOCMShare: mask paths "state" and "hidden"."""
        if not req.HasField("share") or not req.share.id.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "share or share id missing")
        row = self._received_ocm_row(req.share.id.opaque_id, user)
        state, hidden = _received_update(req.share.state, req.share.hidden, req.update_mask.paths,
                                         ocm_res.ShareState.values())
        self.core.ocm.update_received(row["id"], state=state, hidden=hidden)
        return ocm_api.UpdateReceivedOCMShareResponse()

    # ---- helpers ----------------------------------------------------------------------------

    def _ocm_share(self, row: sqlite3.Row) -> ocm_res.Share:
        core = self.core
        perms = res.ResourcePermissions(**(_WRITE if row["writable"] else _READ))
        return ocm_res.Share(
            id=ocm_res.ShareId(opaque_id=row["id"]),
            resource_id=self._resource_id(row["node_id"]),
            name=row["name"],
            token=row["secret"],
            grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=user_res.UserId(
                idp=row["grantee_idp"], opaque_id=row["grantee_opaque"],
                type=user_res.USER_TYPE_FEDERATED)),
            owner=core.user_id(row["owner"]),
            creator=core.user_id(row["owner"]),
            ctime=_ts(row["ctime"]),
            mtime=_ts(row["mtime"]),
            share_type=ocm_res.SHARE_TYPE_USER,
            access_methods=[ocm_res.AccessMethod(
                webdav_options=ocm_res.WebDAVAccessMethod(permissions=perms))],
            recipient_type=ocm_res.RECIPIENT_TYPE_USER,
        )

    def _sent_row(self, ref: ocm_res.ShareReference, user: UserRecord) -> sqlite3.Row:
        if not ref.HasField("id"):
            raise GatewayError(INVALID_ARGUMENT, "OCM share reference needs an id")
        row = self.core.ocm.sent(ref.id.opaque_id)
        if row is None or row["owner"] != user.opaque_id:
            raise GatewayError(NOT_FOUND, "OCM share not found")
        return row

    def _received_ocm_row(self, share_id: str, user: UserRecord) -> sqlite3.Row:
        if not share_id:
            raise GatewayError(INVALID_ARGUMENT, "share id missing")
        row = self.core.ocm.received(share_id)
        if row is None or row["grantee"] != user.opaque_id:
            raise GatewayError(NOT_FOUND, "OCM share not found")
        return row

    def _ocm_received(self, row: sqlite3.Row) -> ocm_res.ReceivedShare:
        core = self.core
        perm_names = json.loads(row["permissions"])
        perms = res.ResourcePermissions(**(_WRITE if "write" in perm_names else _READ))
        folder = row["resource_type"] == "folder"
        fed = user_res.USER_TYPE_FEDERATED
        share = ocm_res.ReceivedShare(
            id=ocm_res.ShareId(opaque_id=row["id"]),
            name=row["name"],
            remote_share_id=row["remote_share_id"],
            grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=core.user_id(row["grantee"])),
            owner=user_res.UserId(idp=row["owner_idp"], opaque_id=row["owner_opaque"], type=fed),
            creator=user_res.UserId(idp=row["creator_idp"], opaque_id=row["creator_opaque"],
                                    type=fed),
            ctime=_ts(row["ctime"]),
            mtime=_ts(row["mtime"]),
            share_type=ocm_res.SHARE_TYPE_USER,
            protocols=[ocm_res.Protocol(webdav_options=ocm_res.WebDAVProtocol(
                shared_secret=row["secret"], uri=row["uri"],
                permissions=ocm_res.SharePermissions(permissions=perms),
                share_permissions=perms,
            ))],
            state=row["state"],
            resource_type=res.RESOURCE_TYPE_CONTAINER if folder else res.RESOURCE_TYPE_FILE,
            recipient_type=ocm_res.RECIPIENT_TYPE_USER,
            shared_resource_type=(ocm_res.SHARE_RESOURCE_TYPE_CONTAINER if folder
                                  else ocm_res.SHARE_RESOURCE_TYPE_FILE),
            hidden=bool(row["hidden"]),
        )
        # mesh_collab keys rooms by the owner's resource id and site.
        share.opaque.map["resource_id"].CopyFrom(plain(row["resource_id"]))
        share.opaque.map["owner_site"].CopyFrom(plain(row["owner_site"]))
        return share


def _remote_refusal(status: int, body: Any) -> GatewayError:
    detail = body.get("message", "") if isinstance(body, dict) else ""
    message = f"remote OCM provider refused the share: HTTP {status} {detail}".strip()
    if status == 404:
        return GatewayError(NOT_FOUND, message)
    if status == 400:
        return GatewayError(INVALID_ARGUMENT, message)
    if status in (401, 403):
        return GatewayError(PERMISSION_DENIED, message)
    if status == 409:
        return GatewayError(ALREADY_EXISTS, message)
    return GatewayError(INTERNAL, message)
