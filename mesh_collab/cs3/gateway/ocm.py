"""Open Cloud Mesh shares between gateways (spec §1.9): what is received, what is kept.

* Sending: :class:`~mesh_collab.cs3.gateway.providers.Discovery` POSTs the OCM 1.1 share
  JSON, signed, to a trusted provider's ``endPoint``; the share is persisted only after
  the remote answered 201.
* Receiving: the HTTP side first finds which trusted provider signed the request
  (``Discovery.signer_of``), then :func:`parse_incoming` validates the JSON against that
  provider: the owner and sender are its users, the WebDAV ``uri`` is on its host, every
  field is bounded. The received share keeps the owner's resource id (``providerId``);
  ``ownerSite`` is kept as a display label only.
* :class:`OcmStore` keeps both tables; a received share is never replaced by a later POST.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mesh_collab.tls import is_loopback

from .db import MetaDB
from .providers import WEBDAV_PREFIX, Provider
from .status import ALREADY_EXISTS, INVALID_ARGUMENT, PERMISSION_DENIED, GatewayError

_PERMS = frozenset({"read", "write", "share"})
_MAX_NAME = 255
_MAX_ID = 1024
_MAX_SECRET = 256
_MAX_URI = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
# A secret travels in URL paths and Authorization headers: URL-safe characters only.
_SECRET = re.compile(r"^[A-Za-z0-9._~+=-]+$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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


def _bad(message: str) -> GatewayError:
    return GatewayError(INVALID_ARGUMENT, message, http=400)


def _foreign(message: str) -> GatewayError:
    return GatewayError(PERMISSION_DENIED, message, http=403)


def parse_incoming(body: Any, signer: Provider) -> IncomingShare:
    """Validate an incoming OCM share (OCM API 1.1 ``POST /shares``) that ``signer`` sent.

    Raises:
        GatewayError: INVALID_ARGUMENT (400) naming a malformed or oversized field;
            PERMISSION_DENIED (403) when the share speaks for another provider: an owner or
            sender of another domain, a WebDAV uri on another host.
    """
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")

    def text(key: str, limit: int, *, required: bool = True) -> str:
        value = body.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise _bad(f"field {key!r} must be a non-empty string")
        if len(value) > limit or _CONTROL.search(value):
            raise _bad(f"field {key!r} must be at most {limit} characters, none a control")
        return value

    share_with = text("shareWith", _MAX_NAME)
    name = text("name", _MAX_NAME)
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise _bad("field 'name' must be a plain file name")
    provider_id = text("providerId", _MAX_ID)
    owner = _user_of(signer, "owner", text("owner", _MAX_NAME))
    sender = _user_of(signer, "sender", text("sender", _MAX_NAME, required=False) or owner)
    if text("shareType", _MAX_NAME, required=False) not in ("", "user"):
        raise _bad("only shareType 'user' is supported")
    rtype = text("resourceType", _MAX_NAME, required=False) or "file"
    if rtype not in ("file", "folder"):
        raise _bad("resourceType must be 'file' or 'folder'")
    webdav = _webdav_options(body.get("protocol"))
    secret = webdav.get("sharedSecret")
    if not isinstance(secret, str) or len(secret) > _MAX_SECRET or not _SECRET.match(secret):
        raise _bad(f"webdav.sharedSecret must be 1 to {_MAX_SECRET} URL-safe characters")
    perms = webdav.get("permissions") or ["read"]
    if not isinstance(perms, list) or not all(isinstance(p, str) and p in _PERMS for p in perms):
        raise _bad("webdav.permissions must be a list of read, write, share")
    owner_site = body.get("ownerSite")
    if owner_site is not None and (not isinstance(owner_site, str)
                                   or not _SITE.match(owner_site)):
        raise _bad("ownerSite must be a short plain name")
    return IncomingShare(
        share_with=share_with, name=name, provider_id=provider_id, owner=owner, sender=sender,
        resource_type=rtype, secret=secret, permissions=tuple(perms),
        uri=_webdav_uri(signer, webdav.get("uri"), secret), owner_site=owner_site or signer.domain,
    )


def _user_of(signer: Provider, field: str, user: str) -> str:
    """``user@domain`` of a user of the signing provider."""
    local, at, domain = user.rpartition("@")
    if not at or not local or not domain:
        raise _bad(f"field {field!r} must be user@domain")
    if domain.lower() != signer.domain:
        raise _foreign(f"field {field!r} names a user of another provider than the sender")
    return f"{local}@{signer.domain}"


def _webdav_options(protocol: Any) -> dict[str, Any]:
    if not isinstance(protocol, dict):
        raise _bad("field 'protocol' must be an object")
    if protocol.get("name") == "webdav" and isinstance(protocol.get("options"), dict):
        webdav = protocol["options"]  # OCM 1.0 form
    else:
        webdav = protocol.get("webdav")
    if not isinstance(webdav, dict):
        raise _bad("protocol must carry webdav options")
    return webdav


def _webdav_uri(signer: Provider, uri: Any, secret: str) -> str:
    """The absolute WebDAV uri of a share: on the signer's host, https unless loopback."""
    if uri is None:
        uri = ""
    if not isinstance(uri, str) or len(uri) > _MAX_URI or not _PRINTABLE.match(uri):
        raise _bad(f"webdav.uri must be a printable string of at most {_MAX_URI} characters")
    if not uri.lower().startswith(("http://", "https://")):
        if "://" in uri or uri.startswith("//"):
            raise _bad("webdav.uri must be an http(s) URL or a path")
        tail = uri.lstrip("/") if uri.startswith("/") else \
            f"{WEBDAV_PREFIX.lstrip('/')}/{uri or secret}"
        return f"{signer.base_url}/{tail}"
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port  # raises for a malformed port
    except ValueError:
        raise _bad("webdav.uri is not a valid URL") from None
    if not host or parts.username is not None or parts.password is not None:
        raise _bad("webdav.uri must name a host and no credentials")
    if parts.scheme.lower() != "https" and not is_loopback(host):
        raise _bad("webdav.uri must be https")
    if parts.netloc.lower() not in signer.authorities:
        raise _foreign("webdav.uri is not on the sending provider's host")
    return uri


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
        """Store a received share; return its row.

        An existing share of the same (grantee, owner domain, providerId) is never replaced
        nor reset: its uri, secret and state stay as they are.

        Raises:
            GatewayError: ALREADY_EXISTS (HTTP 409) when that share is already there.
        """
        owner_user, _, owner_domain = share.owner.rpartition("@")
        creator_user, _, creator_domain = share.sender.rpartition("@")
        share_id = str(uuid.uuid4())
        now = time.time()
        try:
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
        except sqlite3.IntegrityError as exc:
            raise GatewayError(ALREADY_EXISTS, "share already exists", http=409) from exc
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
