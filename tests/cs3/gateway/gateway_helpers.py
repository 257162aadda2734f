"""Helpers for the embedded gateway's own tests: real gRPC and HTTP on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
from cs3.rpc.v1beta1 import code_pb2
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as collab_api
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as collab_res
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as res
from cs3.types.v1beta1 import types_pb2

from mesh_collab.cs3.gateway import EmbeddedGateway, signatures

PASSWORDS = {"einstein": "relativity", "marie": "radioactivity", "richard": "superfluidity"}
OK = code_pb2.CODE_OK


@dataclass
class Session:
    """One authenticated user on one gateway."""

    gateway: EmbeddedGateway
    stub: gw_grpc.GatewayAPIStub
    http: aiohttp.ClientSession
    token: str
    user: Any

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-access-token", self.token)]

    @property
    def home(self) -> str:
        return f"/home/{self.user.username}"

    async def call(self, name: str, request: Any) -> Any:
        return await getattr(self.stub, name)(request, metadata=self.md, timeout=10)

    async def stat(self, path: str, **kw: Any) -> Any:
        return await self.call("Stat", sp.StatRequest(ref=res.Reference(path=path), **kw))

    async def put(
        self, ref: res.Reference | str, data: bytes, *, lock_id: str = "",
        headers: dict[str, str] | None = None, opaque: dict[str, str] | None = None,
        **options: Any,
    ) -> tuple[int, Any, int]:
        """InitiateFileUpload + PUT: (initiate code, response, HTTP status or 0)."""
        if isinstance(ref, str):
            ref = res.Reference(path=ref)
        entries = {"Upload-Length": str(len(data)), **(opaque or {})}
        req = sp.InitiateFileUploadRequest(
            ref=ref, lock_id=lock_id, opaque=_opaque(entries), **options
        )
        resp = await self.call("InitiateFileUpload", req)
        if resp.status.code != OK:
            return resp.status.code, resp, 0
        proto = resp.protocols[0]
        hdrs = {"X-Reva-Transfer": proto.token, "x-access-token": self.token,
                **(headers or {})}
        async with self.http.put(proto.upload_endpoint, data=data, headers=hdrs) as put:
            await put.read()
            return OK, put, put.status

    async def get(self, ref: res.Reference | str, *, version_key: str = "") -> tuple[int, bytes]:
        """InitiateFileDownload + GET: (HTTP status or -code, body)."""
        if isinstance(ref, str):
            ref = res.Reference(path=ref)
        opaque = _opaque({"version_key": version_key}) if version_key else None
        resp = await self.call("InitiateFileDownload",
                               sp.InitiateFileDownloadRequest(ref=ref, opaque=opaque))
        if resp.status.code != OK:
            return -resp.status.code, b""
        proto = resp.protocols[0]
        async with self.http.get(proto.download_endpoint,
                                 headers={"X-Reva-Transfer": proto.token}) as got:
            return got.status, await got.read()


def _opaque(entries: dict[str, str]) -> types_pb2.Opaque:
    return types_pb2.Opaque(map={
        k: types_pb2.OpaqueEntry(decoder="plain", value=v.encode()) for k, v in entries.items()
    })


def lock(lock_id: str, *, app: str = "mesh_collab", ttl: float | None = 60,
         type: int = res.LOCK_TYPE_WRITE, user: Any = None) -> res.Lock:
    out = res.Lock(lock_id=lock_id, type=type, app_name=app)
    if ttl is not None:
        exp = time.time() + ttl
        out.expiration.seconds = int(exp)
        out.expiration.nanos = int((exp % 1) * 1e9)
    if user is not None:
        out.user.CopyFrom(user)
    return out


@asynccontextmanager
async def connect(gateway: EmbeddedGateway, username: str = "einstein") -> AsyncIterator[Session]:
    async with grpc.aio.insecure_channel(gateway.grpc_address) as channel, \
            aiohttp.ClientSession() as http:
        stub = gw_grpc.GatewayAPIStub(channel)
        auth = await stub.Authenticate(
            gw.AuthenticateRequest(type="basic", client_id=username,
                                   client_secret=PASSWORDS[username]), timeout=10)
        assert auth.status.code == OK, auth.status
        yield Session(gateway, stub, http, auth.token, auth.user)


# ---- OCM between providers ------------------------------------------------------------


def trust_each_other(*gateways: EmbeddedGateway) -> None:
    """Make running gateways trust each other as OCM providers (their domains derive from
    their ports, so this comes after they started)."""
    for one in gateways:
        one.trusted_providers = {o.domain for o in gateways if o is not one}


@dataclass(frozen=True)
class Signer:
    """What signs a gateway's OCM requests: its key and the keyId it publishes."""

    key: Ed25519PrivateKey
    key_id: str


async def signer_of(gateway: EmbeddedGateway) -> Signer:
    """The gateway's own signing key (``<root>/ocm_signing_key.pem``) and its published
    ``publicKey.keyId`` (read from ``/.well-known/ocm``)."""
    key = signatures.load_or_create_key(gateway.root / signatures.KEY_FILE)
    async with aiohttp.ClientSession() as http, \
            http.get(f"{gateway.http_url}/.well-known/ocm") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["publicKey"]["publicKeyPem"] == signatures.public_pem(key)
    return Signer(key, doc["publicKey"]["keyId"])


def share_body(origin: EmbeddedGateway, *, share_with: str = "marie",
               provider_id: str = "storage$space!node", secret: str = "s3cret-1",
               uri: str | None = None, **fields: Any) -> dict[str, Any]:
    """An OCM 1.1 share as ``origin`` would POST it (einstein shares a notebook); ``fields``
    replace or add top-level fields."""
    owner = f"einstein@{origin.domain}"
    body: dict[str, Any] = {
        "shareWith": share_with, "name": "nb.ipynb", "providerId": provider_id,
        "owner": owner, "sender": owner, "shareType": "user", "resourceType": "file",
        "protocol": {"name": "multi", "webdav": {
            "sharedSecret": secret, "permissions": ["read"],
            "uri": uri if uri is not None else f"{origin.http_url}/remote.php/dav/ocm/{secret}",
        }},
        "ownerSite": origin.site,
    }
    body.update(fields)
    return body


def signed(signer: Signer, url: str, body: bytes, *,
           created: float | None = None) -> dict[str, str]:
    """The headers of a signed ``POST url`` of ``body`` (JSON)."""
    return {"Content-Type": "application/json",
            **signatures.sign(signer.key, signer.key_id, "POST", url, body, created=created)}


async def post_share(http: aiohttp.ClientSession, receiver: EmbeddedGateway,
                     body: dict[str, Any] | bytes, signer: Signer | None, *,
                     created: float | None = None) -> tuple[int, Any]:
    """POST a share to ``receiver``'s ``/ocm/shares``, signed by ``signer`` unless None;
    return (HTTP status, JSON answer)."""
    url = f"{receiver.http_url}/ocm/shares"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = signed(signer, url, data, created=created) if signer is not None \
        else {"Content-Type": "application/json"}
    async with http.post(url, data=data, headers=headers) as r:
        return r.status, await r.json()


async def share(s: Session, path: str, username: str, *, editor: bool) -> Any:
    """Share ``path`` of ``s``'s user with ``username`` as viewer or editor."""
    info = (await s.stat(path)).info
    user = (await s.stub.GetUserByClaim(
        user_api.GetUserByClaimRequest(claim="username", value=username))).user
    perms = res.ResourcePermissions(
        stat=True, initiate_file_download=True, list_container=True, list_file_versions=True,
        get_path=True, initiate_file_upload=editor, delete=editor, move=editor,
        create_container=editor, restore_file_version=editor,
    )
    grant = collab_res.ShareGrant(
        grantee=res.Grantee(type=res.GRANTEE_TYPE_USER, user_id=user.id),
        permissions=collab_res.SharePermissions(permissions=perms),
    )
    resp = await s.call("CreateShare", collab_api.CreateShareRequest(resource_info=info,
                                                                     grant=grant))
    assert resp.status.code == OK, resp.status
    return resp.share
