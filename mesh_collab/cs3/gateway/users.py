"""The gateway's user directory: a Reva-style ``users.json`` or three built-in demo users.

The file format is the one of Reva's ``json`` user and auth managers
(``pkg/user/manager/json``, ``pkg/auth/manager/json``)::

    [{"id": {"idp": "example.org", "opaque_id": "4c510ada-..."},
      "username": "einstein", "secret": "relativity", "mail": "einstein@example.org",
      "display_name": "Albert Einstein", "groups": ["physics"]}]

``id.idp`` defaults to the gateway's domain and ``id.opaque_id`` to a uuid5 of the username,
so a minimal entry needs only ``username`` and ``secret``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cs3.identity.user.v1beta1 import resources_pb2 as user_res

_USER_NS = uuid.UUID("6f1d2c43-5d1a-4f47-9a54-5b0d7e7c1a11")

DEMO_USERS: tuple[dict[str, Any], ...] = (
    {"username": "einstein", "secret": "relativity", "display_name": "Albert Einstein",
     "mail": "einstein@example.org", "groups": ["sailing-lovers", "physics-lovers"]},
    {"username": "marie", "secret": "radioactivity", "display_name": "Marie Curie",
     "mail": "marie@example.org", "groups": ["radium-lovers", "physics-lovers"]},
    {"username": "richard", "secret": "superfluidity", "display_name": "Richard Feynman",
     "mail": "richard@example.org", "groups": ["quantum-lovers", "physics-lovers"]},
)


def default_opaque_id(username: str) -> str:
    """Return the stable default opaque id of ``username`` (a uuid5)."""
    return str(uuid.uuid5(_USER_NS, username))


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user known to the gateway."""

    username: str
    secret: str
    idp: str
    opaque_id: str
    display_name: str = ""
    mail: str = ""
    groups: tuple[str, ...] = field(default=())

    def user_id(self) -> user_res.UserId:
        """Return the CS3 ``UserId`` of this user (type PRIMARY)."""
        return user_res.UserId(
            idp=self.idp, opaque_id=self.opaque_id, type=user_res.USER_TYPE_PRIMARY
        )

    def to_proto(self, *, with_groups: bool = True) -> user_res.User:
        """Return the CS3 ``User`` message (never the secret)."""
        return user_res.User(
            id=self.user_id(),
            username=self.username,
            mail=self.mail,
            mail_verified=bool(self.mail),
            display_name=self.display_name,
            groups=list(self.groups) if with_groups else [],
        )

    def to_claims(self) -> dict[str, Any]:
        """Return the user as the JSON dict carried in the token's ``user`` claim."""
        return {
            "id": {"idp": self.idp, "opaque_id": self.opaque_id, "type": "USER_TYPE_PRIMARY"},
            "username": self.username,
            "mail": self.mail,
            "display_name": self.display_name,
            "groups": list(self.groups),
        }


class UserDirectory:
    """Look-ups over the configured users.

    Usage::

        users = UserDirectory.load(None, idp="127.0.0.1:19001")   # demo users
        users.by_username("einstein").display_name                 # "Albert Einstein"
    """

    def __init__(self, records: Iterable[UserRecord]) -> None:
        self._by_name: dict[str, UserRecord] = {}
        self._by_id: dict[str, UserRecord] = {}
        for rec in records:
            if rec.username in self._by_name or rec.opaque_id in self._by_id:
                raise ValueError(f"duplicate user {rec.username!r} / {rec.opaque_id!r}")
            self._by_name[rec.username] = rec
            self._by_id[rec.opaque_id] = rec

    @classmethod
    def load(cls, path: Path | None, *, idp: str) -> UserDirectory:
        """Read a users file, or use the demo users when ``path`` is None.

        Raises:
            OSError: if the file cannot be read.
            ValueError: if the file is not a JSON list of users with username and secret.
        """
        if path is None:
            entries: list[Any] = [dict(u) for u in DEMO_USERS]
        else:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(entries, list):
                raise ValueError(f"users file {str(path)!r} must hold a JSON list")
        return cls(_record(entry, idp) for entry in entries)

    def all(self) -> list[UserRecord]:
        """Return every user, sorted by username."""
        return sorted(self._by_name.values(), key=lambda rec: rec.username)

    def by_username(self, username: str) -> UserRecord | None:
        """Return the user called ``username``, or None."""
        return self._by_name.get(username)

    def by_opaque_id(self, opaque_id: str) -> UserRecord | None:
        """Return the user whose ``UserId.opaque_id`` is ``opaque_id``, or None."""
        return self._by_id.get(opaque_id)

    def by_user_id(self, user_id: user_res.UserId) -> UserRecord | None:
        """Return the user with this ``UserId`` (an empty idp matches any idp), or None."""
        rec = self._by_id.get(user_id.opaque_id)
        if rec is None or (user_id.idp and user_id.idp != rec.idp):
            return None
        return rec

    def by_mail(self, mail: str) -> UserRecord | None:
        """Return the user with this mail address (case-insensitive), or None."""
        wanted = mail.casefold()
        return next((r for r in self._by_name.values() if r.mail.casefold() == wanted), None)

    def by_name_or_id(self, text: str) -> UserRecord | None:
        """Return the user whose username or opaque id is ``text`` (OCM ``shareWith``)."""
        return self._by_name.get(text) or self._by_id.get(text)


def _record(entry: Mapping[str, Any], idp: str) -> UserRecord:
    if not isinstance(entry, Mapping):
        raise ValueError(f"a user entry must be an object, not {entry!r}")
    username = entry.get("username")
    secret = entry.get("secret")
    if (
        not isinstance(username, str) or not username or username[0] == "."
        or any(ch in username for ch in "/\\\x00")
    ):
        raise ValueError(f"bad username in users file: {username!r}")
    if not isinstance(secret, str):
        raise ValueError(f"user {username!r} needs a string secret")
    ident = entry.get("id") or {}
    groups = entry.get("groups") or []
    return UserRecord(
        username=username,
        secret=secret,
        idp=str(ident.get("idp") or idp),
        opaque_id=str(ident.get("opaque_id") or default_opaque_id(username)),
        display_name=str(entry.get("display_name") or username),
        mail=str(entry.get("mail") or ""),
        groups=tuple(str(g) for g in groups),
    )
