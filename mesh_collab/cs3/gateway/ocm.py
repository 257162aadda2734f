"""Open Cloud Mesh between gateways (spec §1.9): discovery, sending and receiving shares.

* Discovery: ``GET http://<domain>/.well-known/ocm`` (loopback http, as the embedded
  gateways serve it), turned into a CS3 ``ProviderInfo`` with an "OCM" service whose path
  is the discovered ``endPoint`` and a "Webdav" service, like Reva's ``open`` authorizer.
  Results are cached per domain; a failed lookup is INTERNAL, as in Reva.
* Sending: ``POST <endPoint>/shares`` with the OCM 1.1 share JSON; the share is persisted
  only after the remote answered 201.
* Receiving: :func:`parse_incoming` validates the JSON the remote posted; the received share
  keeps the owner's resource id (``providerId``) and site for mesh_collab.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cs3.ocm.provider.v1beta1 import resources_pb2 as prov_res

from .db import MetaDB
from .status import ALREADY_EXISTS, INTERNAL, INVALID_ARGUMENT, GatewayError

API_VERSION = "1.1.0"
WEBDAV_PREFIX = "/remote.php/dav/ocm"
_DOMAIN = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_PERMS = frozenset({"read", "write", "share"})


def discovery_document(http_url: str, site: str) -> dict[str, Any]:
    """Return the ``/.well-known/ocm`` document of a gateway."""
    return {
        "enabled": True,
        "apiVersion": API_VERSION,
        "endPoint": f"{http_url}/ocm",
        "provider": f"mesh_collab ({site})",
        "resourceTypes": [
            {"name": "file", "shareTypes": ["user"], "protocols": {"webdav": WEBDAV_PREFIX}}
        ],
        "capabilities": ["/shares"],
    }


def check_domain(domain: str) -> str:
    """Return ``domain`` if it is a bare ``host[:port]``.

    Raises:
        GatewayError: INVALID_ARGUMENT otherwise (schemes, paths, userinfo...).
    """
    if not domain or not _DOMAIN.match(domain):
        raise GatewayError(INVALID_ARGUMENT, f"not a domain: {domain!r}")
    return domain


def provider_info(domain: str, doc: dict[str, Any]) -> prov_res.ProviderInfo:
    """Build the CS3 ``ProviderInfo`` of a discovery document.

    Raises:
        GatewayError: INTERNAL if the document lacks an ``endPoint``.
    """
    endpoint = doc.get("endPoint") if isinstance(doc, dict) else None
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise GatewayError(INTERNAL, f"OCM discovery of {domain} has no endPoint")
    name = str(doc.get("provider") or domain)
    version = str(doc.get("apiVersion") or "")
    base = "{0.scheme}://{0.netloc}".format(urlsplit(endpoint))
    webdav = WEBDAV_PREFIX
    for rtype in doc.get("resourceTypes") or []:
        if isinstance(rtype, dict) and isinstance(rtype.get("protocols"), dict):
            webdav = str(rtype["protocols"].get("webdav") or webdav)
            break
    webdav_url = webdav if webdav.startswith("http") else base + "/" + webdav.lstrip("/")

    def service(kind: str, path: str) -> prov_res.Service:
        return prov_res.Service(
            host=domain,
            endpoint=prov_res.ServiceEndpoint(
                type=prov_res.ServiceType(name=kind, description=f"{kind} service"),
                name=f"{name} - {kind}",
                path=path,
                is_monitored=True,
            ),
            api_version=version,
        )

    return prov_res.ProviderInfo(
        name=name, full_name=name, domain=domain,
        services=[service("OCM", endpoint), service("Webdav", webdav_url)],
    )


def ocm_endpoint(info: prov_res.ProviderInfo) -> str:
    """Return the path of the service whose type is "OCM" (ocminvitemanager GetOCMEndpoint)."""
    for svc in info.services:
        if svc.endpoint.type.name == "OCM" and svc.endpoint.path:
            return str(svc.endpoint.path)
    return ""


class Discovery:
    """Live OCM discovery with a per-domain cache, and the outgoing HTTP calls."""

    def __init__(self, session: aiohttp.ClientSession, log: logging.Logger) -> None:
        self._session = session
        self._log = log
        self._cache: dict[str, prov_res.ProviderInfo] = {}

    def known(self) -> list[prov_res.ProviderInfo]:
        """Return the providers discovered so far."""
        return list(self._cache.values())

    async def lookup(self, domain: str) -> prov_res.ProviderInfo:
        """Return the ProviderInfo of ``domain``, discovering it on first use.

        Raises:
            GatewayError: INVALID_ARGUMENT for a malformed domain, INTERNAL when the
                discovery fails (as Reva's provider authorizer).
        """
        check_domain(domain)
        cached = self._cache.get(domain)
        if cached is not None:
            return cached
        url = f"http://{domain}/.well-known/ocm"
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise GatewayError(INTERNAL, f"OCM discovery of {domain}: HTTP {resp.status}")
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._log.warning("op=GetInfoByDomain domain=%s discovery failed: %r", domain, exc)
            raise GatewayError(INTERNAL, f"error getting provider info for {domain}") from exc
        info = provider_info(domain, doc)
        self._cache[domain] = info
        self._log.info("op=GetInfoByDomain domain=%s discovered", domain)
        return info

    async def post_share(self, endpoint: str, payload: dict[str, Any]) -> tuple[int, Any]:
        """POST an OCM share to ``<endpoint>/shares``; return (HTTP status, JSON body).

        Raises:
            GatewayError: INTERNAL if the remote cannot be reached.
        """
        url = endpoint.rstrip("/") + "/shares"
        try:
            async with self._session.post(url, json=payload, allow_redirects=False) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else {}
                except ValueError:
                    body = {"message": text[:200]}
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._log.warning("op=CreateOCMShare remote=%s unreachable: %r", url, exc)
            raise GatewayError(INTERNAL, "remote OCM provider unreachable") from exc


@dataclass(frozen=True, slots=True)
class IncomingShare:
    """A validated ``POST /ocm/shares`` body."""

    share_with: str
    name: str
    provider_id: str
    owner: str
    sender: str
    resource_type: str
    secret: str
    permissions: tuple[str, ...]
    uri: str
    owner_site: str

    @property
    def sender_domain(self) -> str:
        """The domain part of the owner's ``user@domain``."""
        return self.owner.rpartition("@")[2]


def parse_incoming(body: Any) -> IncomingShare:
    """Validate an incoming OCM share (OCM API 1.1 ``POST /shares``).

    Raises:
        ValueError: with a message naming the offending field.
    """
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")

    def text(key: str, *, required: bool = True) -> str:
        value = body.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise ValueError(f"field {key!r} must be a non-empty string")
        return value

    share_with = text("shareWith")
    name = text("name")
    provider_id = text("providerId")
    owner = text("owner")
    sender = text("sender", required=False) or owner
    if "@" not in owner or not owner.rpartition("@")[2]:
        raise ValueError("field 'owner' must be user@domain")
    if text("shareType", required=False) not in ("", "user"):
        raise ValueError("only shareType 'user' is supported")
    rtype = text("resourceType", required=False) or "file"
    if rtype not in ("file", "folder"):
        raise ValueError("resourceType must be 'file' or 'folder'")
    protocol = body.get("protocol")
    if not isinstance(protocol, dict):
        raise ValueError("field 'protocol' must be an object")
    if protocol.get("name") == "webdav" and isinstance(protocol.get("options"), dict):
        webdav = protocol["options"]  # OCM 1.0 form
    else:
        webdav = protocol.get("webdav")
    if not isinstance(webdav, dict):
        raise ValueError("protocol must carry webdav options")
    secret = webdav.get("sharedSecret")
    if not isinstance(secret, str) or not secret:
        raise ValueError("webdav.sharedSecret must be a non-empty string")
    perms = webdav.get("permissions") or ["read"]
    if not isinstance(perms, list) or not all(isinstance(p, str) and p in _PERMS for p in perms):
        raise ValueError("webdav.permissions must be a list of read, write, share")
    uri = webdav.get("uri") or ""
    if not isinstance(uri, str):
        raise ValueError("webdav.uri must be a string")
    domain = owner.rpartition("@")[2]
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("/"):
            tail = uri.lstrip("/")
        else:
            tail = f"{WEBDAV_PREFIX.lstrip('/')}/{uri or secret}"
        uri = f"http://{domain}/{tail}"
    owner_site = body.get("ownerSite")
    return IncomingShare(
        share_with=share_with, name=name, provider_id=provider_id, owner=owner, sender=sender,
        resource_type=rtype, secret=secret, permissions=tuple(perms), uri=uri,
        owner_site=owner_site if isinstance(owner_site, str) and owner_site else domain,
    )


class OcmStore:
    """The ``ocm_sent`` and ``ocm_received`` tables."""

    def __init__(self, db: MetaDB) -> None:
        self._db = db

    def sent_by_key(self, node_id: str, idp: str, opaque: str) -> sqlite3.Row | None:
        """Return the sent share of a resource with a federated grantee."""
        return self._db.one(
            "SELECT * FROM ocm_sent WHERE node_id = ? AND grantee_idp = ? AND grantee_opaque = ?",
            (node_id, idp, opaque),
        )

    def add_sent(
        self, *, node_id: str, owner: str, grantee_idp: str, grantee_opaque: str,
        secret: str, writable: bool, name: str, recipient_name: str,
    ) -> sqlite3.Row:
        """Persist a share the remote accepted.

        Raises:
            GatewayError: ALREADY_EXISTS on a concurrent duplicate.
        """
        share_id = str(uuid.uuid4())
        now = time.time()
        try:
            self._db.execute(
                "INSERT INTO ocm_sent (id, node_id, owner, grantee_idp, grantee_opaque, secret, "
                "writable, name, recipient_name, ctime, mtime) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (share_id, node_id, owner, grantee_idp, grantee_opaque, secret, int(writable),
                 name, recipient_name, now, now),
            )
        except sqlite3.IntegrityError as exc:
            raise GatewayError(ALREADY_EXISTS, "OCM share already exists") from exc
        row = self.sent(share_id)
        assert row is not None
        return row

    def sent(self, share_id: str) -> sqlite3.Row | None:
        """Return a sent share by id."""
        return self._db.one("SELECT * FROM ocm_sent WHERE id = ?", (share_id,))

    def sent_by_secret(self, secret: str) -> sqlite3.Row | None:
        """Return the sent share a WebDAV secret opens."""
        return self._db.one("SELECT * FROM ocm_sent WHERE secret = ?", (secret,))

    def sent_by_owner(self, owner: str) -> list[sqlite3.Row]:
        """Return the shares a user sent, oldest first."""
        return self._db.all("SELECT * FROM ocm_sent WHERE owner = ? ORDER BY ctime", (owner,))

    def remove_sent(self, share_id: str) -> None:
        """Remove a sent share: its secret stops working."""
        self._db.execute("DELETE FROM ocm_sent WHERE id = ?", (share_id,))

    def add_received(self, grantee: str, share: IncomingShare, state: int) -> sqlite3.Row:
        """Store (or refresh, when re-sent) a received share; return its row."""
        owner_user, _, owner_domain = share.owner.rpartition("@")
        creator_user, _, creator_domain = share.sender.rpartition("@")
        now = time.time()
        with self._db.transaction():
            row = self._db.one(
                "SELECT id FROM ocm_received WHERE grantee = ? AND owner_idp = ? "
                "AND remote_share_id = ?",
                (grantee, owner_domain, share.provider_id),
            )
            share_id = str(row["id"]) if row is not None else str(uuid.uuid4())
            self._db.execute("DELETE FROM ocm_received WHERE id = ?", (share_id,))
            self._db.execute(
                "INSERT INTO ocm_received (id, grantee, name, remote_share_id, owner_idp, "
                "owner_opaque, creator_idp, creator_opaque, uri, secret, permissions, "
                "resource_type, resource_id, owner_site, state, hidden, ctime, mtime) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (share_id, grantee, share.name, share.provider_id, owner_domain, owner_user,
                 creator_domain or owner_domain, creator_user or owner_user, share.uri,
                 share.secret, json.dumps(list(share.permissions)), share.resource_type,
                 share.provider_id, share.owner_site, state, now, now),
            )
        found = self.received(share_id)
        assert found is not None
        return found

    def received(self, share_id: str) -> sqlite3.Row | None:
        """Return a received share by id."""
        return self._db.one("SELECT * FROM ocm_received WHERE id = ?", (share_id,))

    def received_by(self, grantee: str) -> list[sqlite3.Row]:
        """Return the shares a user received, oldest first."""
        return self._db.all(
            "SELECT * FROM ocm_received WHERE grantee = ? ORDER BY ctime", (grantee,)
        )

    def update_received(self, share_id: str, *, state: int | None, hidden: bool | None) -> None:
        """Update state and hidden flag of a received share."""
        now = time.time()
        if state is not None:
            self._db.execute(
                "UPDATE ocm_received SET state = ?, mtime = ? WHERE id = ?", (state, now, share_id)
            )
        if hidden is not None:
            self._db.execute(
                "UPDATE ocm_received SET hidden = ?, mtime = ? WHERE id = ?",
                (int(hidden), now, share_id),
            )


def new_secret() -> str:
    """Return a new WebDAV shared secret."""
    return secrets.token_urlsafe(32)
