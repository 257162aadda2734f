"""Node keys: every node signs its link handshakes with an Ed25519 key of its own.

The private key stays in one file on the node (mode 0600); the mesh directory lists the
public key as ``ed25519:<base64 of the 32 raw bytes>``. No node or site ever holds a key that
lets it speak as another: a stolen key speaks for its node only, and is revoked by removing
it from the directory.

A signature covers a list of text fields joined by newlines; each protocol message names
its own first field (``"mesh_collab link 2"``), so that a signature of one message can never
pass for another.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "ed25519:"
#: Where a node finds its key (PEM) when a hub hands it over; the node moves it into its
#: key file and out of its environment.
NODE_KEY_ENV = "MESH_COLLAB_NODE_KEY"


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The node key kept in ``path`` (PEM, PKCS#8), made on first use with mode 0600.

    Raises:
        ValueError: the file holds something else than an Ed25519 private key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem(key))
        return key
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as PEM (PKCS#8, unencrypted): what a key file holds."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def store(path: Path, data: bytes) -> Ed25519PrivateKey:
    """Keep the key ``data`` (PEM) in ``path``, mode 0600, replacing what is there.

    For a key handed over from outside (a hub gives each user's server its node key).

    Raises:
        ValueError: ``data`` is not an Ed25519 private key.
    """
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.read_bytes() == data:
            return loaded
    except FileNotFoundError:
        pass
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    temporary.replace(path)
    return loaded


def public_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """How the directory writes a public key: ``ed25519:<base64>``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    """The public key of an ``ed25519:<base64>`` text.

    Raises:
        ValueError: not such a text.
    """
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise ValueError(f"a public key reads {PREFIX}<base64>")
    try:
        raw = base64.b64decode(text[len(PREFIX):], validate=True)
    except binascii.Error as exc:
        raise ValueError("a public key's base64 is not valid") from exc
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _message(fields: Sequence[str]) -> bytes:
    if any("\n" in f for f in fields):
        raise ValueError("a signed field may not contain a newline")
    return "\n".join(fields).encode()


def sign(key: Ed25519PrivateKey, fields: Sequence[str]) -> str:
    """The base64 signature of ``fields``."""
    return base64.b64encode(key.sign(_message(fields))).decode()


def verify(keys: Iterable[Ed25519PublicKey], fields: Sequence[str], signature: str) -> bool:
    """Whether ``signature`` is one of ``fields`` by any of ``keys`` (during a rotation a
    node has two)."""
    try:
        raw = base64.b64decode(signature, validate=True)
        message = _message(fields)
    except (binascii.Error, ValueError):
        return False
    for key in keys:
        try:
            key.verify(raw, message)
            return True
        except InvalidSignature:
            continue
    return False


class Nonces:
    """The nonces seen within the last ``window`` seconds: a handshake is accepted once.

    Handshakes older than ``window`` are refused by their time, so a nonce need not be kept
    longer; at most ``capacity`` are kept (the oldest go first).
    """

    def __init__(self, window: float = 120.0, capacity: int = 100_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def fresh(self, nonce: str, stamp: float, now: float | None = None) -> bool:
        """True (and remembered) if ``stamp`` is within the window of now and ``nonce`` was
        not seen; False for a replayed, early or late handshake."""
        now = time.time() if now is None else now
        if not nonce or abs(now - stamp) > self.window / 2:
            return False
        while self._seen and next(iter(self._seen.values())) < now - self.window:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True
