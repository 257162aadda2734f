"""RFC 9421 HTTP message signatures between OCM providers (OCM 1.1 ``http-sig``).

Each gateway holds one Ed25519 key pair in ``<root>/ocm_signing_key.pem`` (PKCS#8, mode
0600), made at its first start and reused after. The public half is published in its
``/.well-known/ocm`` as ``publicKey: {keyId: "<endPoint>#signature", publicKeyPem}``.

The profile, the same both ways: a signed request carries ``Content-Digest`` (RFC 9530,
``sha-256`` of the body) and one signature ``sig1`` covering ``@method``, ``@target-uri``
and ``content-digest``, with the ``created``, ``keyid`` and ``alg="ed25519"`` parameters.
:func:`verify` checks all of it against *one* public key; choosing that key (the trusted
provider's published one) is the caller's job, with :func:`claimed_key_id` to read which
key the request names. ``created`` must be within :data:`MAX_SKEW` seconds of now, so an
old request cannot be replayed later.

The RFC 9421 signature base and the Ed25519 operations are the ``http-message-signatures``
package's; this module fixes the profile, checks the digest itself (the package checks
bodies only in its newer releases) and keeps the key file.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import inspect
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

KEY_FILE = "ocm_signing_key.pem"
#: How far ``created`` may be from now, either way, in seconds.
MAX_SKEW = 300
LABEL = "sig1"
COMPONENTS = ("@method", "@target-uri", "content-digest")
_SIGNED = ("signature", "signature-input", "content-digest")
_MAX_HEADER = 4096
_SIGNATURE_BYTES = re.compile(r":([A-Za-z0-9+/]+=*):")
_KEYID = re.compile(r';\s*keyid="((?:[^"\\]|\\.)*)"')
# Newer releases of the package refuse to sign over a Content-Digest they did not make
# unless told it is meant; 0.5 has no such option (and computes no digest at all).
_REUSE_DIGEST = (
    {"use_existing_digest": True}
    if "use_existing_digest" in inspect.signature(HTTPMessageSigner.sign).parameters else {}
)


class SignatureError(Exception):
    """Raised when a request's signature is missing, malformed, stale or does not verify."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Return the Ed25519 private key kept in ``path``, making the file (0600) if missing.

    Raises:
        ValueError: the file exists but holds no unencrypted Ed25519 private key.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    return key


def _read_key(path: Path) -> Ed25519PrivateKey:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)  # a private key: nobody else may read it
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} holds no usable private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a key that is not Ed25519")
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    """Return the SubjectPublicKeyInfo PEM of ``key``'s public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def content_digest(body: bytes) -> str:
    """Return the RFC 9530 ``Content-Digest`` value of ``body`` (``sha-256=:...:``)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def sign(key: Ed25519PrivateKey, key_id: str, method: str, url: str, body: bytes, *,
         created: float | None = None) -> dict[str, str]:
    """Return the headers that sign a request: ``Content-Digest``, ``Signature-Input``
    and ``Signature``.

    Args:
        key: the provider's private key.
        key_id: its published ``keyId``.
        method: the request method, e.g. ``"POST"``.
        url: the absolute target URI, exactly as the request is sent.
        body: the exact body bytes.
        created: the signature's creation time (default now); tests sign old requests.
    """
    message = _Message(method.upper(), url, {"Content-Digest": content_digest(body)})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=_OneKey(key_id, private=key))
    when = time.time() if created is None else created
    signer.sign(
        message, key_id=key_id, label=LABEL, covered_component_ids=COMPONENTS,
        created=datetime.datetime.fromtimestamp(int(when), tz=datetime.UTC),
        **_REUSE_DIGEST,
    )
    return dict(message.headers)


def claimed_key_id(headers: Mapping[str, str]) -> str:
    """Return the ``keyid`` a request's one signature names (not yet verified).

    Raises:
        SignatureError: the request is unsigned, or names no key or several.
    """
    value = _single(headers)["signature-input"]
    found = {m.group(1) for m in _KEYID.finditer(value)}
    if len(found) != 1:
        raise SignatureError("the signature must name exactly one keyid")
    return re.sub(r"\\(.)", r"\1", found.pop())


def verify(method: str, url: str, headers: Mapping[str, str], body: bytes, *,
           key_id: str, public_key_pem: str, now: float | None = None) -> int:
    """Check a request's signature against one public key; return its ``created`` time.

    Args:
        method: the request method.
        url: the absolute target URI the request was received at.
        headers: the request headers (each of the signature headers exactly once).
        body: the exact body bytes.
        key_id: the ``keyId`` the key is published under; the signature must name it.
        public_key_pem: the PEM of the signer's published public key.
        now: the current time (default ``time.time()``).

    Raises:
        SignatureError: naming what is wrong (missing, malformed, stale, not covering
            the profile's components, digest mismatch, bad signature).
    """
    signed = _single(headers)
    message = _Message(method.upper(), url, {
        "Signature": signed["signature"], "Signature-Input": signed["signature-input"],
        "Content-Digest": signed["content-digest"],
    })
    verifier = _Verifier(signature_algorithm=algorithms.ED25519,
                         key_resolver=_OneKey(key_id, public=public_key_pem.encode()))
    try:
        results = verifier.verify(message, max_age=datetime.timedelta(seconds=MAX_SKEW))
    except Exception as exc:
        # The package raises its own errors but also ValueError, KeyError... on hostile
        # headers: every one of them means "not validly signed", never a 500.
        raise SignatureError(f"signature does not verify: {str(exc) or 'bad signature'}") from exc
    if len(results) != 1:
        raise SignatureError("exactly one signature expected")
    params = results[0].parameters
    covered = {str(c).strip('"') for c in results[0].covered_components}
    if not set(COMPONENTS) <= covered:
        raise SignatureError(f"the signature must cover {', '.join(COMPONENTS)}")
    if params.get("alg") != "ed25519" or params.get("keyid") != key_id:
        raise SignatureError("the signature must name alg ed25519 and the provider's keyid")
    created = params.get("created")
    current = time.time() if now is None else now
    if not isinstance(created, int) or abs(current - created) > MAX_SKEW:
        raise SignatureError("the signature is too old or from the future")
    if not _digest_matches(signed["content-digest"], body):
        raise SignatureError("Content-Digest does not match the body")
    return created


class ReplayGuard:
    """Remembers the signatures accepted in the last :data:`MAX_SKEW` seconds, so that
    the very same signed request is accepted once only (an older one is stale anyway).

    Args:
        limit: most signatures kept; past it the oldest are forgotten.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._seen: dict[bytes, float] = {}  # signature -> when it may be forgotten

    def first_use(self, headers: Mapping[str, str], created: int,
                  now: float | None = None) -> bool:
        """Record the signature of a verified request; False if it was seen before."""
        current = time.time() if now is None else now
        for seen, until in list(self._seen.items()):
            if until > current:
                break  # oldest first: stop at the first one still in its window
            del self._seen[seen]
        # The signature bytes, not the header: its label is not signed and may be renamed.
        found = _SIGNATURE_BYTES.search(_single(headers)["signature"])
        value = base64.b64decode(found.group(1)) if found else b""
        if not value or value in self._seen:
            return False
        while len(self._seen) >= self._limit:
            del self._seen[next(iter(self._seen))]
        self._seen[value] = created + MAX_SKEW
        return True


def _single(headers: Mapping[str, str]) -> dict[str, str]:
    """The signature headers of a request, each present exactly once and short."""
    found: dict[str, list[str]] = {name: [] for name in _SIGNED}
    for name, value in headers.items():
        if name.lower() in found:
            found[name.lower()].append(value)
    if not found["signature"] and not found["signature-input"]:
        raise SignatureError("the request is not signed")
    for name, values in found.items():
        if len(values) != 1 or len(values[0]) > _MAX_HEADER:
            raise SignatureError(f"exactly one {name} header expected")
    return {name: values[0] for name, values in found.items()}


def _digest_matches(header: str, body: bytes) -> bool:
    expected = content_digest(body).partition("=")[2]
    for member in header.split(","):
        algorithm, _, value = member.strip().partition("=")
        if algorithm.strip().lower() == "sha-256":
            return hmac.compare_digest(value.strip(), expected)
    return False


@dataclass
class _Message:
    """The request view the package signs and verifies: method, url, headers."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class _OneKey(HTTPSignatureKeyResolver):
    """Resolves one key id only: any other id the request names finds no key."""

    def __init__(self, key_id: str, *, public: bytes | None = None,
                 private: Ed25519PrivateKey | None = None) -> None:
        self._key_id = key_id
        self._public = public
        self._private = private

    def resolve_public_key(self, key_id: str) -> bytes | None:
        return self._public if key_id == self._key_id else None

    def resolve_private_key(self, key_id: str) -> bytes:
        if key_id != self._key_id or self._private is None:
            raise KeyError(key_id)
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class _Verifier(HTTPMessageVerifier):
    # The package allows 5 s of clock difference for "created in the future"; two
    # providers' clocks may differ more. :func:`verify` bounds ``created`` itself.
    max_clock_skew = datetime.timedelta(seconds=MAX_SKEW)
