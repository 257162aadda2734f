"""Shares within a site (collaboration API) and across sites (OCM).

A local share grants a user of the same site a role on a resource. An OCM share sends the
resource to a user at another site: the sending gateway discovers the remote provider
(``GetInfoByDomain``), POSTs the share to its OCM endpoint, and the recipient finds it among
their received OCM shares (spec §1.8, §1.9). cs3client has no OCM calls, so these use the
raw stubs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.ocm.provider.v1beta1 import provider_api_pb2 as ocm_provider
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as ca
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as cr
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as oa
from cs3.sharing.ocm.v1beta1 import resources_pb2 as orr
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as sr
from google.protobuf import field_mask_pb2

from mesh_collab.cs3.models import (
    OCMShare,
    ReceivedOCMShare,
    ReceivedShare,
    Ref,
    Role,
    Share,
    ShareState,
    UserId,
    describe,
    permissions_for,
    reference,
    to_resource_id,
)
from mesh_collab.resources import ResourceId

if TYPE_CHECKING:
    from mesh_collab.cs3.client import Session


class Shares:
    """Shares with users of the same site."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def create(self, ref: Ref, grantee: UserId, role: Role | str = Role.VIEWER) -> Share:
        """Share ``ref`` with ``grantee`` (a user of this site) as viewer or editor.

        Raises:
            NotFound: no such resource.
            AlreadyExists: already shared with that user.
            LockConflict: the resource is locked (cs3apis: CreateShare MUST answer LOCKED).
        """
        stat = await self._session.call(
            "Stat", sp.StatRequest(ref=reference(ref)), ref=describe(ref)
        )
        grant = cr.ShareGrant(
            grantee=sr.Grantee(type=sr.GRANTEE_TYPE_USER, user_id=grantee.to_proto()),
            permissions=cr.SharePermissions(permissions=permissions_for(role)),
        )
        res = await self._session.call(
            "CreateShare", ca.CreateShareRequest(resource_info=stat.info, grant=grant),
            ref=describe(ref),
        )
        return Share.from_proto(res.share)

    async def list(self, resource_id: ResourceId | None = None) -> list[Share]:
        """Return the shares the caller created, optionally of one resource."""
        filters = []
        if resource_id is not None:
            filters.append(
                cr.Filter(type=cr.Filter.TYPE_RESOURCE_ID, resource_id=to_resource_id(resource_id))
            )
        res = await self._session.call("ListShares", ca.ListSharesRequest(filters=filters))
        return [Share.from_proto(s) for s in res.shares]

    async def update(self, share_id: str, role: Role | str) -> Share:
        """Change the role a share grants.

        Raises:
            NotFound: no such share.
        """
        req = ca.UpdateShareRequest(
            ref=cr.ShareReference(id=cr.ShareId(opaque_id=share_id)),
            field=ca.UpdateShareRequest.UpdateField(
                permissions=cr.SharePermissions(permissions=permissions_for(role))
            ),
        )
        res = await self._session.call("UpdateShare", req, ref=share_id)
        return Share.from_proto(res.share)

    async def remove(self, share_id: str) -> None:
        """Revoke a share.

        Raises:
            NotFound: no such share.
        """
        req = ca.RemoveShareRequest(ref=cr.ShareReference(id=cr.ShareId(opaque_id=share_id)))
        await self._session.call("RemoveShare", req, ref=share_id)

    async def received(self) -> list[ReceivedShare]:
        """Return the shares others gave the caller, with the shared resource's metadata."""
        res = await self._session.call(
            "ListExistingReceivedShares", ca.ListReceivedSharesRequest()
        )
        return [
            ReceivedShare.from_proto(item.received_share, item.resource_info)
            for item in res.share_infos
        ]

    async def accept(self, share_id: str) -> None:
        """Accept a received share.

        Raises:
            NotFound: no such received share.
        """
        await self._set_state(share_id, ShareState.ACCEPTED)

    async def decline(self, share_id: str) -> None:
        """Decline a received share.

        Raises:
            NotFound: no such received share.
        """
        await self._set_state(share_id, ShareState.REJECTED)

    async def _set_state(self, share_id: str, state: ShareState) -> None:
        received = cr.ReceivedShare(share=cr.Share(id=cr.ShareId(opaque_id=share_id)), state=state)
        req = ca.UpdateReceivedShareRequest(
            share=received, update_mask=field_mask_pb2.FieldMask(paths=["state"])
        )
        await self._session.call("UpdateReceivedShare", req, ref=share_id)


@dataclass(frozen=True, slots=True)
class Provider:
    """An OCM provider (a site) as discovery describes it."""

    domain: str
    name: str
    ocm_endpoint: str


class OCM:
    """Shares with users at other sites (Open Cloud Mesh)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def _provider_info(self, domain: str) -> object:
        req = ocm_provider.GetInfoByDomainRequest(domain=domain)
        res = await self._session.call("GetInfoByDomain", req, ref=domain)
        return res.provider_info

    async def provider(self, domain: str) -> Provider:
        """Discover the OCM provider at ``domain``.

        Raises:
            StorageInternal: discovery failed (Reva answers INTERNAL, not NOT_FOUND).
        """
        info = await self._provider_info(domain)
        endpoint = ""
        for service in info.services:  # type: ignore[attr-defined]
            if service.endpoint.type.name == "OCM":
                endpoint = service.endpoint.path
        return Provider(domain=info.domain or domain, name=info.name, ocm_endpoint=endpoint)  # type: ignore[attr-defined]

    async def create(
        self, ref: ResourceId, grantee: UserId, role: Role | str = Role.VIEWER
    ) -> OCMShare:
        """Share a resource with a user at another site.

        Args:
            ref: the resource to share.
            grantee: the remote user: ``idp`` is their site's OCM domain, ``opaque_id`` their
                user id (or user name) there.
            role: viewer or editor.

        Raises:
            NotFound: no such resource.
            AlreadyExists: already shared with that user.
            StorageError: discovery or the remote site refused.
        """
        provider = await self._provider_info(grantee.idp)
        remote = user_res.UserId(
            idp=grantee.idp, opaque_id=grantee.opaque_id, type=user_res.USER_TYPE_FEDERATED
        )
        method = orr.AccessMethod(
            webdav_options=orr.WebDAVAccessMethod(
                permissions=permissions_for(role), access_types=[orr.ACCESS_TYPE_REMOTE]
            )
        )
        req = oa.CreateOCMShareRequest(
            resource_id=to_resource_id(ref),
            grantee=sr.Grantee(type=sr.GRANTEE_TYPE_USER, user_id=remote),
            recipient_mesh_provider=provider,
            access_methods=[method],
        )
        res = await self._session.call("CreateOCMShare", req, ref=str(ref))
        return OCMShare.from_proto(res.share)

    async def list(self) -> list[OCMShare]:
        """Return the OCM shares the caller created."""
        res = await self._session.call("ListOCMShares", oa.ListOCMSharesRequest())
        return [OCMShare.from_proto(s) for s in res.shares]

    async def remove(self, share_id: str) -> None:
        """Revoke an OCM share.

        Raises:
            NotFound: no such share.
        """
        req = oa.RemoveOCMShareRequest(ref=orr.ShareReference(id=orr.ShareId(opaque_id=share_id)))
        await self._session.call("RemoveOCMShare", req, ref=share_id)

    async def received(self) -> list[ReceivedOCMShare]:
        """Return the shares users at other sites gave the caller."""
        res = await self._session.call("ListReceivedOCMShares", oa.ListReceivedOCMSharesRequest())
        return [ReceivedOCMShare.from_proto(s) for s in res.shares]

    async def get_received(self, share_id: str) -> ReceivedOCMShare:
        """Return one received OCM share.

        Raises:
            NotFound: no such received share.
        """
        req = oa.GetReceivedOCMShareRequest(
            ref=orr.ShareReference(id=orr.ShareId(opaque_id=share_id))
        )
        res = await self._session.call("GetReceivedOCMShare", req, ref=share_id)
        return ReceivedOCMShare.from_proto(res.share)

    async def accept(self, share_id: str) -> None:
        """Accept a received OCM share.

        Raises:
            NotFound: no such received share.
        """
        await self._set_state(share_id, ShareState.ACCEPTED)

    async def decline(self, share_id: str) -> None:
        """Decline a received OCM share.

        Raises:
            NotFound: no such received share.
        """
        await self._set_state(share_id, ShareState.REJECTED)

    async def _set_state(self, share_id: str, state: ShareState) -> None:
        share = orr.ReceivedShare(id=orr.ShareId(opaque_id=share_id), state=int(state))
        req = oa.UpdateReceivedOCMShareRequest(
            share=share, update_mask=field_mask_pb2.FieldMask(paths=["state"])
        )
        await self._session.call("UpdateReceivedOCMShare", req, ref=share_id)


