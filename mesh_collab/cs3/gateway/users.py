"""The gateway's user directory: a Reva-style ``users.json`` or three built-in demo users.

The file format is the one of Reva's ``json`` user and auth managers
(``pkg/user/manager/json``, ``pkg/auth/manager/json``)::

    [{"id": {"idp": "example.org", "opaque_id": "4c510ada-..."},
      "username": "einstein", "secret": "relativity", "mail": "einstein@example.org",
      "display_name": "Albert Einstein", "groups": ["physics"]}]

``id.idp`` defaults to the gateway's domain and ``id.opaque_id`` to a uuid5 of the username,
so a minimal entry needs only ``username`` and ``secret``.

``secret`` is the password in clear (as in Reva's file) or, better, an argon2 hash prefixed
with ``argon2:``, the format of ``jupyter_server.auth.passwd()``::

    python -c "import argon2; print('argon2:' + argon2.PasswordHasher().hash(input()))"

An empty secret is refused. A malformed file is refused with the entry's number, its line and
the field at fault, never with the entry's content (which may hold a password).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2
from cs3.identity.user.v1beta1 import resources_pb2 as user_res

_USER_NS = uuid.UUID("6f1d2c43-5d1a-4f47-9a54-5b0d7e7c1a11")

#: The prefix of a hashed secret (jupyter_server's ``passwd()`` format).
ARGON2_PREFIX = "argon2:"
_HASHER = argon2.PasswordHasher()
_WS = re.compile(r"[ \t\n\r]*")

DEMO_USERS: tuple[dict[str, Any], ...] = (
    {"username": "einstein", "secret": "relativity", "display_name": "Albert Einstein",
     "mail": "einstein@example.org", "groups": ["sailing-lovers", "physics-lovers"]},
    {"username": "marie", "secret": "radioactivity", "display_name": "Marie Curie",
     "mail": "marie@example.org", "groups": ["radium-lovers", "physics-lovers"]},
    {"username": "richard", "secret": "superfluidity", "display_name": "Richard Feynman",
     "mail": "richard@example.org", "groups": ["quantum-lovers", "physics-lovers"]},
)


class UsersFileError(ValueError):
    """Raised when a users file is malformed; the message never quotes the file's content."""


def default_opaque_id(username: str) -> str:
    """Return the stable default opaque id of ``username`` (a uuid5)."""
    return str(uuid.uuid5(_USER_NS, username))


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user known to the gateway."""

    username: str
    #: The password, or ``argon2:<hash>``; kept out of ``repr`` (tracebacks, logs).
    secret: str = field(repr=False)
    idp: str
    opaque_id: str
    display_name: str = ""
    mail: str = ""
    groups: tuple[str, ...] = field(default=())

    @property
    def hashed(self) -> bool:
        """Whether the secret is an argon2 hash (checking it takes ~0.1 s of CPU)."""
        return self.secret.startswith(ARGON2_PREFIX)

    def check_secret(self, password: str) -> bool:
        """Return whether ``password`` is this user's (constant time; blocking if hashed)."""
        if not self.hashed:
            return hmac.compare_digest(self.secret.encode(), password.encode())
        try:
            return bool(_HASHER.verify(self.secret[len(ARGON2_PREFIX):], password))
        except argon2.exceptions.VerificationError:
            return False

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
        # Checked for unknown user names when secrets are hashed, so that a refusal takes
        # as long whether the user exists or not.
        self._decoy: UserRecord | None = None
        if any(rec.hashed for rec in self._by_name.values()):
            self._decoy = UserRecord(
                username="", secret=ARGON2_PREFIX + _HASHER.hash(secrets.token_urlsafe(16)),
                idp="", opaque_id="",
            )

    @classmethod
    def load(cls, path: Path | None, *, idp: str) -> UserDirectory:
        """Read a users file, or use the demo users when ``path`` is None.

        Raises:
            OSError: if the file cannot be read.
            UsersFileError: if the file is not a JSON list of users with a username and a
                non-empty secret each, or names a user twice.
        """
        if path is None:
            return cls(_record(dict(entry), idp) for entry in DEMO_USERS)
        text = Path(path).read_text(encoding="utf-8")
        records: list[UserRecord] = []
        names: dict[str, int] = {}  # username -> entry number
        ids: dict[str, int] = {}  # opaque id -> entry number
        for number, line, entry in _entries(text, str(path)):
            where = f"users file {str(path)!r}, entry {number} (line {line})"
            try:
                rec = _record(entry, idp)
            except ValueError as exc:
                raise UsersFileError(f"{where}: {exc}") from None
            for field_name, seen, value in (
                ("username", names, rec.username), ("id.opaque_id", ids, rec.opaque_id)
            ):
                if value in seen:
                    raise UsersFileError(
                        f"{where}: '{field_name}' is the same as in entry {seen[value]}"
                    )
                seen[value] = number
            records.append(rec)
        return cls(records)

    def authenticate(self, username: str, password: str) -> UserRecord | None:
        """Return the user if ``password`` is theirs, else None (also for an unknown user).

        Blocking when secrets are hashed (~0.1 s of CPU): call it on a worker thread.
        """
        rec = self._by_name.get(username)
        if rec is None:
            if self._decoy is not None:
                self._decoy.check_secret(password)
            return None
        return rec if rec.check_secret(password) else None

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


def _entries(text: str, name: str) -> Iterator[tuple[int, int, Any]]:
    """Yield (number from 1, line, value) for each element of the JSON list in ``text``."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0  # the line of position `counted`, advanced as the parse goes

    def line_of(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def fail(what: str, pos: int) -> UsersFileError:
        column = pos - text.rfind("\n", 0, pos)
        return UsersFileError(
            f"users file {name!r}: {what} at line {line_of(pos)} column {column}"
        )

    def skip(pos: int) -> int:  # past the JSON whitespace at pos
        match = _WS.match(text, pos)
        return match.end() if match else pos

    pos = skip(0)
    if not text.startswith("[", pos):
        raise fail("expected a JSON list of users", pos)
    number = 0
    pos = skip(pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                # Its message names a position only; its .doc (the whole file) is dropped.
                raise fail(f"not valid JSON ({exc.msg})", exc.pos) from None
            number += 1
            yield number, line_of(pos), value
            pos = skip(end)
            if text.startswith("]", pos):
                pos += 1
                break
            if not text.startswith(",", pos):
                raise fail("expected ',' or ']'", pos)
            pos = skip(pos + 1)
    if text[pos:].strip(" \t\n\r"):
        raise fail("unexpected text after the list", pos)


def _record(entry: Any, idp: str) -> UserRecord:
    # The messages name the field at fault, never a value: a misplaced password must not
    # reach a log.
    if not isinstance(entry, Mapping):
        raise ValueError("a user entry must be a JSON object")
    username = entry.get("username")
    secret = entry.get("secret")
    if (
        not isinstance(username, str) or not username or username[0] == "."
        or any(ch in username for ch in "/\\\x00")
    ):
        raise ValueError(
            "'username' must be a non-empty string without '/', '\\' or NUL, not starting "
            "with '.'"
        )
    if not isinstance(secret, str) or not secret:
        raise ValueError("'secret' must be a non-empty string")
    if secret.startswith(ARGON2_PREFIX):
        try:
            argon2.extract_parameters(secret[len(ARGON2_PREFIX):])
        except argon2.exceptions.InvalidHashError:
            raise ValueError("'secret' starts with 'argon2:' but is not an argon2 hash") from None
    ident = entry.get("id") or {}
    if not isinstance(ident, Mapping):
        raise ValueError("'id' must be a JSON object")
    groups = entry.get("groups") or []
    if not isinstance(groups, list):
        raise ValueError("'groups' must be a JSON list")
    return UserRecord(
        username=username,
        secret=secret,
        idp=str(ident.get("idp") or idp),
        opaque_id=str(ident.get("opaque_id") or default_opaque_id(username)),
        display_name=str(entry.get("display_name") or username),
        mail=str(entry.get("mail") or ""),
        groups=tuple(str(g) for g in groups),
    )
