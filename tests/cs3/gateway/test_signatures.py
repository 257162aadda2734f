"""Unit tests of the OCM request signatures (RFC 9421 Ed25519 profile) and of the trusted
providers' allowlist."""

from __future__ import annotations

import base64
import datetime
import hashlib
import inspect
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cs3.rpc.v1beta1 import code_pb2 as c
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms
from multidict import CIMultiDict

from mesh_collab.cs3.gateway import signatures
from mesh_collab.cs3.gateway.providers import TrustedProviders, check_domain
from mesh_collab.cs3.gateway.signatures import ReplayGuard, SignatureError
from mesh_collab.cs3.gateway.status import GatewayError

URL = "https://b.example:8443/ocm/shares"
KEY_ID = "https://a.example/ocm#signature"
BODY = b'{"shareWith": "marie"}'


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pem(key: Ed25519PrivateKey) -> str:
    return signatures.public_pem(key)


def check(headers: object, *, pem: str, method: str = "POST", url: str = URL,
          body: bytes = BODY, key_id: str = KEY_ID, now: float | None = None) -> int:
    return signatures.verify(method, url, headers, body, key_id=key_id,  # type: ignore[arg-type]
                             public_key_pem=pem, now=now)


# ---- sign and verify ------------------------------------------------------------------------


def test_sign_then_verify(key: Ed25519PrivateKey, pem: str) -> None:
    before = int(time.time())
    headers = signatures.sign(key, KEY_ID, "post", URL, BODY)
    assert set(headers) == {"Content-Digest", "Signature-Input", "Signature"}
    assert headers["Content-Digest"] == signatures.content_digest(BODY)
    assert headers["Signature-Input"].startswith(
        'sig1=("@method" "@target-uri" "content-digest");')
    assert 'alg="ed25519"' in headers["Signature-Input"]
    assert f'keyid="{KEY_ID}"' in headers["Signature-Input"]
    created = check(headers, pem=pem)
    assert before <= created <= int(time.time()) + 1
    assert signatures.claimed_key_id(headers) == KEY_ID
    # Header names are case-insensitive, as HTTP has them.
    assert check({k.lower(): v for k, v in headers.items()}, pem=pem) == created
    assert check(CIMultiDict(headers), pem=pem, method="post") == created


def test_content_digest_is_rfc9530_sha256() -> None:
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert signatures.content_digest(b"") == f"sha-256=:{empty}:"
    assert empty == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_a_tampered_body_does_not_match_the_digest(key: Ed25519PrivateKey, pem: str) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    with pytest.raises(SignatureError, match="Content-Digest does not match"):
        check(headers, pem=pem, body=BODY + b" ")
    # Nor may the digest be replaced to fit the new body: it is signed.
    forged = {**headers, "Content-Digest": signatures.content_digest(b"{}")}
    with pytest.raises(SignatureError, match="does not verify"):
        check(forged, pem=pem, body=b"{}")
    # A digest of another algorithm only is no sha-256 digest.
    other = {**headers, "Content-Digest": "sha-512=:AAAA:"}
    with pytest.raises(SignatureError):
        check(other, pem=pem)


@pytest.mark.parametrize(("method", "url"), [
    ("PUT", URL),
    ("POST", "https://b.example:8443/ocm/shares?x=1"),
    ("POST", "https://c.example:8443/ocm/shares"),
    ("POST", "http://b.example:8443/ocm/shares"),
])
def test_another_method_or_url_does_not_verify(
    key: Ed25519PrivateKey, pem: str, method: str, url: str,
) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    with pytest.raises(SignatureError, match="does not verify"):
        check(headers, pem=pem, method=method, url=url)


@pytest.mark.parametrize("missing", ["Signature", "Signature-Input", "Content-Digest"])
def test_a_missing_header_is_refused(key: Ed25519PrivateKey, pem: str, missing: str) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    del headers[missing]
    with pytest.raises(SignatureError):
        check(headers, pem=pem)


def test_an_unsigned_request_is_refused(pem: str) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        check({"Content-Type": "application/json"}, pem=pem)
    with pytest.raises(SignatureError, match="not signed"):
        signatures.claimed_key_id({})


@pytest.mark.parametrize("name", ["Signature", "Signature-Input", "Content-Digest"])
def test_a_duplicate_header_is_refused(key: Ed25519PrivateKey, pem: str, name: str) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    twice = CIMultiDict(headers)
    twice.add(name, headers[name])
    with pytest.raises(SignatureError, match=f"exactly one {name.lower()}"):
        check(twice, pem=pem)
    with pytest.raises(SignatureError):
        signatures.claimed_key_id(twice)
    # The same, in a plain mapping with two spellings of the name.
    spelled = {**headers, name.lower(): headers[name]}
    with pytest.raises(SignatureError):
        check(spelled, pem=pem)


def test_an_oversized_header_is_refused(key: Ed25519PrivateKey, pem: str) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    headers["Signature-Input"] += ";nonce=" + '"' + "x" * 5000 + '"'
    with pytest.raises(SignatureError, match="exactly one signature-input"):
        check(headers, pem=pem)


def test_a_wrong_keyid_or_key_does_not_verify(key: Ed25519PrivateKey, pem: str) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY)
    with pytest.raises(SignatureError):
        check(headers, pem=pem, key_id="https://c.example/ocm#signature")
    other = signatures.public_pem(Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="does not verify"):
        check(headers, pem=other)
    # A key signing under the provider's keyId is not the provider's key.
    forged = signatures.sign(Ed25519PrivateKey.generate(), KEY_ID, "POST", URL, BODY)
    with pytest.raises(SignatureError, match="does not verify"):
        check(forged, pem=pem)


def test_a_hostile_header_is_a_signature_error_not_a_crash(pem: str) -> None:
    for value in ("", "garbage", "sig1=(", 'sig1=("@method");created=abc;keyid="k"'):
        headers = {"Signature": "sig1=:AAAA:", "Signature-Input": value,
                   "Content-Digest": signatures.content_digest(BODY)}
        with pytest.raises(SignatureError):
            check(headers, pem=pem)
    with pytest.raises(SignatureError):
        check({"Signature": "x", "Signature-Input": "y", "Content-Digest": "z"}, pem="no pem")


@pytest.mark.parametrize("offset", [signatures.MAX_SKEW + 5, 3600])
def test_a_signature_from_the_future_is_refused(
    key: Ed25519PrivateKey, pem: str, offset: int,
) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=time.time() + offset)
    with pytest.raises(SignatureError):
        check(headers, pem=pem)


@pytest.mark.parametrize("offset", [signatures.MAX_SKEW + 5, 86400])
def test_an_old_signature_is_refused(key: Ed25519PrivateKey, pem: str, offset: int) -> None:
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=time.time() - offset)
    with pytest.raises(SignatureError):
        check(headers, pem=pem)


def test_the_window_is_300_seconds_either_way(key: Ed25519PrivateKey, pem: str) -> None:
    assert signatures.MAX_SKEW == 300
    now = time.time()
    for offset in (-250, 250):
        headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=now + offset)
        assert check(headers, pem=pem) == int(now + offset)
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=now)
    with pytest.raises(SignatureError, match="too old"):
        check(headers, pem=pem, now=now + 400)  # as the verifier's clock sees it


# ---- signatures outside the profile -------------------------------------------------------


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def resolve_public_key(self, key_id: str) -> bytes:
        return signatures.public_pem(self._key).encode()

    def resolve_private_key(self, key_id: str) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())


# Newer releases of the package sign over an existing Content-Digest only when told to.
_REUSE = ({"use_existing_digest": True}
          if "use_existing_digest" in inspect.signature(HTTPMessageSigner.sign).parameters
          else {})


def _package_sign(key: Ed25519PrivateKey, message: _Message, **kw: object) -> dict[str, str]:
    """Sign with the package directly, outside the profile."""
    message.headers.setdefault("Content-Digest", signatures.content_digest(BODY))
    kw.update(_REUSE)
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Resolver(key)).sign(
        message, key_id=KEY_ID, created=datetime.datetime.now(tz=datetime.UTC), **kw)
    return message.headers


def test_a_signature_not_covering_the_digest_is_refused(
    key: Ed25519PrivateKey, pem: str,
) -> None:
    headers = _package_sign(key, _Message("POST", URL), label="sig1",
                            covered_component_ids=("@method", "@target-uri"))
    with pytest.raises(SignatureError, match="must cover"):
        check(headers, pem=pem)


def test_a_signature_without_alg_is_refused(key: Ed25519PrivateKey, pem: str) -> None:
    headers = _package_sign(key, _Message("POST", URL), label="sig1", include_alg=False,
                            covered_component_ids=signatures.COMPONENTS)
    with pytest.raises(SignatureError, match="alg ed25519"):
        check(headers, pem=pem)


def test_two_signatures_are_refused(key: Ed25519PrivateKey, pem: str) -> None:
    message = _Message("POST", URL)
    _package_sign(key, message, label="sig1", covered_component_ids=signatures.COMPONENTS)
    _package_sign(key, message, label="sig2", covered_component_ids=signatures.COMPONENTS,
                  append_if_signature_exists=True)
    with pytest.raises(SignatureError):
        check(message.headers, pem=pem)  # one header, two members


def test_claimed_key_id_needs_exactly_one() -> None:
    digest = signatures.content_digest(BODY)
    base = {"Signature": "sig1=:AAAA:", "Content-Digest": digest}
    assert signatures.claimed_key_id(
        {**base, "Signature-Input": 'sig1=("@method");keyid="a\\"b";alg="ed25519"'}) == 'a"b'
    for value in ('sig1=("@method");alg="ed25519"',
                  'sig1=("@method");keyid="a", sig2=("@method");keyid="b"'):
        with pytest.raises(SignatureError, match="exactly one keyid"):
            signatures.claimed_key_id({**base, "Signature-Input": value})


# ---- ReplayGuard ----------------------------------------------------------------------------


def test_replay_guard_accepts_a_signature_once(key: Ed25519PrivateKey) -> None:
    guard = ReplayGuard()
    now = time.time()
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=now)
    assert guard.first_use(headers, int(now), now=now)
    assert not guard.first_use(headers, int(now), now=now + 1)
    # The label is not signed: renamed, it is the same signature.
    renamed = {k: v.replace("sig1=", "other=", 1) for k, v in headers.items()}
    assert not guard.first_use(renamed, int(now), now=now + 2)
    # Another signature of the same request is another use.
    again = signatures.sign(key, KEY_ID, "POST", URL, BODY + b" ", created=now)
    assert guard.first_use(again, int(now), now=now + 3)


def test_replay_guard_forgets_after_the_window(key: Ed25519PrivateKey) -> None:
    guard = ReplayGuard()
    now = time.time()
    headers = signatures.sign(key, KEY_ID, "POST", URL, BODY, created=now)
    assert guard.first_use(headers, int(now), now=now)
    assert not guard.first_use(headers, int(now), now=now + signatures.MAX_SKEW - 1)
    # Past created + MAX_SKEW the signature is stale (verify refuses it): no need to keep it.
    assert guard.first_use(headers, int(now), now=now + signatures.MAX_SKEW + 1)


def test_replay_guard_is_bounded(key: Ed25519PrivateKey) -> None:
    guard = ReplayGuard(limit=2)
    now = time.time()
    signed = [signatures.sign(key, KEY_ID, "POST", URL, bytes([n]), created=now)
              for n in range(3)]
    assert all(guard.first_use(h, int(now), now=now) for h in signed)
    assert not guard.first_use(signed[2], int(now), now=now)
    assert guard.first_use(signed[0], int(now), now=now)  # the oldest was forgotten


def test_replay_guard_refuses_a_signature_without_bytes() -> None:
    guard = ReplayGuard()
    headers = {"Signature": "sig1=nothing", "Signature-Input": "x", "Content-Digest": "y"}
    assert not guard.first_use(headers, int(time.time()))


# ---- the key file ---------------------------------------------------------------------------


def test_the_key_file_is_made_once_0600(tmp_path: Path) -> None:
    path = tmp_path / signatures.KEY_FILE
    key = signatures.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signatures.public_pem(signatures.load_or_create_key(path)) == \
        signatures.public_pem(key)
    os.chmod(path, 0o644)
    signatures.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unusable_key_file_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / signatures.KEY_FILE
    path.write_bytes(b"not a key")
    with pytest.raises(ValueError, match="no usable private key"):
        signatures.load_or_create_key(path)
    ec = generate_private_key(SECP256R1())
    path.write_bytes(ec.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not Ed25519"):
        signatures.load_or_create_key(path)


# ---- TrustedProviders -----------------------------------------------------------------------


@pytest.mark.parametrize("domain", [
    "http://x", "https://a.example", "a.example/ocm", "user@a.example", "", "a b",
    "a.example:123456", "a.example:", "[::1", "a.example?x", "x" * 256,
])
def test_a_malformed_domain_is_a_value_error(domain: str) -> None:
    with pytest.raises(ValueError, match="not a domain"):
        TrustedProviders([domain])
    trusted = TrustedProviders(["a.example"])
    with pytest.raises(ValueError):
        trusted.replace(["b.example", domain])
    assert trusted.domains == {"a.example"}  # nothing changed


def test_trusted_providers_are_bare_domains_in_lower_case() -> None:
    trusted = TrustedProviders([" A.Example:8443 ", "127.0.0.1:9000", "[::1]:9000", "b.example"])
    assert trusted.domains == {"a.example:8443", "127.0.0.1:9000", "[::1]:9000", "b.example"}
    assert "A.EXAMPLE:8443" in trusted and "a.example" not in trusted and 1 not in trusted
    assert trusted.require("A.example:8443") == "a.example:8443"
    with pytest.raises(GatewayError) as denied:
        trusted.require("c.example")
    assert denied.value.code == c.CODE_PERMISSION_DENIED
    with pytest.raises(GatewayError) as bad:
        trusted.require("http://a.example:8443")
    assert bad.value.code == c.CODE_INVALID_ARGUMENT
    assert TrustedProviders().domains == frozenset()  # deny by default
    with pytest.raises(GatewayError):
        TrustedProviders().require("a.example")
    assert check_domain("[::1]:8080") == "[::1]:8080"


def test_for_key_id() -> None:
    trusted = TrustedProviders(["a.example:8443", "127.0.0.1:9000", "127.0.0.1:9001"])
    assert trusted.for_key_id("https://a.example:8443/ocm#signature") == ["a.example:8443"]
    assert trusted.for_key_id("https://A.EXAMPLE:8443/ocm#signature") == ["a.example:8443"]
    # Another port of a trusted host: the providers on that host.
    assert trusted.for_key_id("http://127.0.0.1:1/ocm#signature") == [
        "127.0.0.1:9000", "127.0.0.1:9001"]
    assert trusted.for_key_id("http://127.0.0.1:9001/ocm#signature") == ["127.0.0.1:9001"]
    for key_id in ("https://b.example/ocm#signature", "ftp://a.example:8443/k",
                   "urn:a.example:8443", "a.example:8443", "https://a.example:99999/ocm",
                   "https:///ocm", ""):
        assert trusted.for_key_id(key_id) == [], key_id
