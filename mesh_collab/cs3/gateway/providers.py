"""OCM providers (spec §1.9): which ones this gateway trusts, and live discovery of them.

* **Trust.** :class:`TrustedProviders` is the allowlist of OCM domains (``host:port``), the
  role of Reva's ``ocmproviderauthorizer`` with its ``json`` driver. Empty by default: no
  provider is trusted. :class:`Discovery` refuses any other domain with PERMISSION_DENIED
  *before* a request leaves the gateway, so a user cannot point it at an arbitrary host.
* **Discovery.** ``GET https://<domain>/.well-known/ocm``; plain ``http://`` only for a
  loopback host (127.0.0.0/8, ::1, localhost), after https failed. The ``endPoint`` it
  names must be on the domain's host (https unless loopback); the share POST goes there
  only. Results are cached for ``ttl`` seconds (10 minutes); failures are not cached and a
  failed lookup is INTERNAL, as in Reva.
* **Signed requests** (OCM 1.1 ``http-sig``, :mod:`~mesh_collab.cs3.gateway.signatures`):
  outgoing shares are signed with this gateway's key; :meth:`Discovery.signer_of` tells
  which trusted provider signed an incoming request, with that provider's published
  ``publicKey`` (re-fetched once when a signature fails, so a rotated key works), and
  accepts each signature once.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cs3.ocm.provider.v1beta1 import resources_pb2 as prov_res

from mesh_collab.tls import is_loopback

from . import signatures
from .status import INTERNAL, INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED, GatewayError

API_VERSION = "1.1.0"
WEBDAV_PREFIX = "/remote.php/dav/ocm"
DEFAULT_TTL = 600.0
_DOMAIN = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_MAX_DOCUMENT = 64 * 1024


def check_domain(domain: str) -> str:
    """Return ``domain`` in lower case if it is a bare ``host[:port]``.

    Raises:
        GatewayError: INVALID_ARGUMENT otherwise (schemes, paths, userinfo...).
    """
    if not domain or len(domain) > 255 or not _DOMAIN.match(domain):
        raise GatewayError(INVALID_ARGUMENT, f"not a domain: {domain[:80]!r}")
    return domain.lower()


def hostname(authority: str) -> str:
    """The host of a ``host[:port]`` authority, without brackets, in lower case."""
    return (urlsplit(f"//{authority}").hostname or "").lower()




def discovery_document(http_url: str, site: str, public_key_pem: str) -> dict[str, Any]:
    """Return the ``/.well-known/ocm`` document of a gateway (OCM 1.1)."""
    endpoint = f"{http_url}/ocm"
    return {
        "enabled": True,
        "apiVersion": API_VERSION,
        "endPoint": endpoint,
        "provider": f"mesh_collab ({site})",
        "resourceTypes": [
            {"name": "file", "shareTypes": ["user"], "protocols": {"webdav": WEBDAV_PREFIX}}
        ],
        "capabilities": ["/shares", "http-sig"],
        # What this provider asks of the others: signed requests, from listed providers.
        "criteria": ["http-request-signatures", "allowlist"],
        "publicKey": {"keyId": key_id_of(endpoint), "publicKeyPem": public_key_pem},
    }


def key_id_of(endpoint: str) -> str:
    """The ``keyId`` a provider publishes its key under: ``<endPoint>#signature``."""
    return f"{endpoint}#signature"


class TrustedProviders:
    """The OCM domains this gateway exchanges shares with; none by default.

    Args:
        domains: ``host:port`` domains, as ``EmbeddedGateway.domain`` gives them.

    Raises:
        ValueError: for an entry that is not a bare domain.
    """

    def __init__(self, domains: Iterable[str] = ()) -> None:
        self._domains: frozenset[str] = frozenset()
        self.replace(domains)

    @property
    def domains(self) -> frozenset[str]:
        """The trusted domains, in lower case."""
        return self._domains

    def replace(self, domains: Iterable[str]) -> None:
        """Trust exactly ``domains`` from now on (a lookup cached before stays cached).

        Raises:
            ValueError: for an entry that is not a bare domain; nothing changes then.
        """
        cleaned = set()
        for domain in domains:
            try:
                cleaned.add(check_domain(domain.strip()))
            except GatewayError as exc:
                raise ValueError(exc.message) from None
        self._domains = frozenset(cleaned)

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and domain.lower() in self._domains

    def require(self, domain: str) -> str:
        """Return ``domain`` (lower case) if it is trusted.

        Raises:
            GatewayError: INVALID_ARGUMENT for a malformed domain, PERMISSION_DENIED for
                one that is not trusted (Reva's ocmproviderauthorizer).
        """
        domain = check_domain(domain)
        if domain not in self._domains:
            raise GatewayError(PERMISSION_DENIED, f"OCM provider {domain} is not trusted")
        return domain

    def for_key_id(self, key_id: str) -> list[str]:
        """The trusted domains a signature's ``keyId`` may belong to: the one whose
        ``host:port`` is the key id's, else those on the key id's host."""
        try:
            parts = urlsplit(key_id)
            _ = parts.port  # raises for a malformed port
        except ValueError:
            return []
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return []
        authority = parts.netloc.lower()
        if authority in self._domains:
            return [authority]
        return sorted(d for d in self._domains if hostname(d) == parts.hostname.lower())


@dataclass(frozen=True, slots=True)
class Provider:
    """What the discovery of one trusted provider says."""

    domain: str
    #: The OCM ``endPoint``, on the domain's host.
    endpoint: str
    #: ``publicKey.keyId`` and ``publicKey.publicKeyPem``; empty when none is published.
    key_id: str
    public_key_pem: str
    info: prov_res.ProviderInfo

    @property
    def authorities(self) -> frozenset[str]:
        """The ``host:port`` this provider's URLs may name: its domain and its endPoint's."""
        return frozenset({self.domain, urlsplit(self.endpoint).netloc.lower()})

    @property
    def base_url(self) -> str:
        """``scheme://domain`` of the provider, to resolve a relative WebDAV uri against."""
        parts = urlsplit(self.endpoint)
        if parts.netloc.lower() == self.domain:
            return f"{parts.scheme}://{self.domain}"
        return f"{'http' if is_loopback(hostname(self.domain)) else 'https'}://{self.domain}"


def _provider(domain: str, doc: Any) -> Provider:
    """Build the :class:`Provider` of a discovery document, pinning its URLs to the domain.

    Raises:
        GatewayError: INTERNAL for a document without a usable ``endPoint``.
    """
    endpoint = doc.get("endPoint") if isinstance(doc, dict) else None
    try:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        host = parts.hostname if parts is not None else None
        _ = parts.port if parts is not None else None
    except ValueError:
        parts, host = None, None
    if parts is None or not host or parts.scheme not in ("http", "https"):
        raise GatewayError(INTERNAL, f"OCM discovery of {domain} has no endPoint")
    if host.lower() != hostname(domain) or parts.username is not None:
        raise GatewayError(INTERNAL, f"OCM discovery of {domain} names an endPoint elsewhere")
    if parts.scheme != "https" and not is_loopback(host):
        raise GatewayError(INTERNAL, f"OCM discovery of {domain} names a plain-http endPoint")
    endpoint = str(endpoint).rstrip("/")
    key = doc.get("publicKey")
    key_id = pem = ""
    if isinstance(key, dict) and isinstance(key.get("keyId"), str) \
            and isinstance(key.get("publicKeyPem"), str):
        key_id, pem = key["keyId"], key["publicKeyPem"]
    return Provider(domain=domain, endpoint=endpoint, key_id=key_id, public_key_pem=pem,
                    info=_provider_info(domain, endpoint, doc))


def _provider_info(domain: str, endpoint: str, doc: dict[str, Any]) -> prov_res.ProviderInfo:
    """The CS3 ``ProviderInfo``: an "OCM" service (path = the endPoint) and a "Webdav" one,
    like Reva's ``open`` authorizer."""
    name = str(doc.get("provider") or domain)[:255]
    version = str(doc.get("apiVersion") or "")[:32]
    base = "{0.scheme}://{0.netloc}".format(urlsplit(endpoint))
    webdav = WEBDAV_PREFIX
    for rtype in doc.get("resourceTypes") or []:
        if isinstance(rtype, dict) and isinstance(rtype.get("protocols"), dict):
            found = rtype["protocols"].get("webdav")
            # The spec's webdav is a path ("^/"); anything else falls back to the default.
            if isinstance(found, str) and found.startswith("/") and not found.startswith("//"):
                webdav = found
            break

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
        services=[service("OCM", endpoint), service("Webdav", base + webdav)],
    )


class Discovery:
    """Live OCM discovery of the trusted providers, and the HTTP calls between providers.

    Args:
        session: the gateway's HTTP client session.
        log: the gateway's logger.
        trusted: the providers that may be contacted and may send shares.
        key: this gateway's signing key; None sends unsigned requests (tests only).
        key_id: the ``keyId`` that key is published under.
        ttl: seconds a discovery result is reused.
        ssl: the TLS context for https requests; None for aiohttp's default verification.
        clock: the monotonic clock of the cache (tests pass their own).
    """

    def __init__(
        self, session: aiohttp.ClientSession, log: logging.Logger, *,
        trusted: TrustedProviders, key: Ed25519PrivateKey | None = None, key_id: str = "",
        ttl: float = DEFAULT_TTL, ssl: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._log = log
        self._trusted = trusted
        self._key = key
        self._key_id = key_id
        self._ttl = ttl
        self._ssl: ssl.SSLContext | bool = ssl if ssl is not None else True
        self._clock = clock
        self._cache: dict[str, tuple[float, Provider]] = {}
        self._replays = signatures.ReplayGuard()

    @property
    def trusted(self) -> TrustedProviders:
        """The providers this gateway trusts."""
        return self._trusted

    def known(self) -> list[prov_res.ProviderInfo]:
        """Return the trusted providers discovered and still cached."""
        now = self._clock()
        return [p.info for domain, (until, p) in sorted(self._cache.items())
                if until > now and domain in self._trusted]

    async def lookup(self, domain: str, *, refresh: bool = False) -> Provider:
        """Return what the discovery of a trusted ``domain`` says, from the cache if fresh.

        Raises:
            GatewayError: INVALID_ARGUMENT for a malformed domain, PERMISSION_DENIED for an
                untrusted one (no request is made), INTERNAL when the discovery fails.
        """
        domain = self._trusted.require(domain)
        cached = self._cache.get(domain)
        if cached is not None and not refresh and cached[0] > self._clock():
            return cached[1]
        provider = _provider(domain, await self._fetch(domain))
        self._cache[domain] = (self._clock() + self._ttl, provider)
        self._log.info("op=GetInfoByDomain domain=%s discovered", domain)
        return provider

    async def _fetch(self, domain: str) -> Any:
        schemes = ("https", "http") if is_loopback(hostname(domain)) else ("https",)
        failure: BaseException | None = None
        for scheme in schemes:
            url = f"{scheme}://{domain}/.well-known/ocm"
            try:
                async with self._session.get(url, allow_redirects=False, ssl=self._ssl) as resp:
                    raw = await resp.content.read(_MAX_DOCUMENT + 1)
                    if resp.status != 200 or len(raw) > _MAX_DOCUMENT:
                        raise ValueError(f"HTTP {resp.status}, {len(raw)} bytes")
                    return json.loads(raw)
            except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
                failure = exc
        self._log.warning("op=GetInfoByDomain domain=%s discovery failed: %r", domain, failure)
        raise GatewayError(INTERNAL, f"error getting provider info for {domain}")

    async def post_share(self, provider: Provider, payload: dict[str, Any]) -> tuple[int, Any]:
        """POST a signed OCM share to ``<endPoint>/shares``; return (HTTP status, JSON body).

        Raises:
            GatewayError: INTERNAL if the remote cannot be reached.
        """
        url = provider.endpoint + "/shares"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._key is not None:
            headers.update(signatures.sign(self._key, self._key_id, "POST", url, body))
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          allow_redirects=False, ssl=self._ssl) as resp:
                text = (await resp.content.read(_MAX_DOCUMENT)).decode("utf-8", "replace")
                try:
                    answer = json.loads(text) if text else {}
                except ValueError:
                    answer = {"message": text[:200]}
                return resp.status, answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._log.warning("op=CreateOCMShare remote=%s unreachable: %r", provider.domain,
                              exc)
            raise GatewayError(INTERNAL, "remote OCM provider unreachable") from exc

    async def signer_of(self, method: str, url: str, headers: Mapping[str, str],
                        body: bytes) -> Provider:
        """Return the trusted provider whose published key signed a request.

        Each signature is accepted once; the provider's key is fetched again once when the
        signature does not verify with the cached one.

        Raises:
            GatewayError: UNAUTHENTICATED (401) when the request is unsigned, stale,
                replayed, signed by an untrusted provider or by a key that provider does
                not publish.
        """
        try:
            key_id = signatures.claimed_key_id(headers)
        except signatures.SignatureError as exc:
            raise GatewayError(UNAUTHENTICATED, str(exc), http=401) from None
        domains = self._trusted.for_key_id(key_id)
        if not domains:
            raise GatewayError(UNAUTHENTICATED, "the signing key is not a trusted provider's",
                               http=401)
        reason = "the signing key is not the provider's published key"
        for domain in domains:
            for refresh in (False, True):
                try:
                    provider = await self.lookup(domain, refresh=refresh)
                except GatewayError:
                    break  # the provider cannot tell its key now: not accepted
                if provider.key_id != key_id:
                    continue
                try:
                    created = signatures.verify(method, url, headers, body, key_id=key_id,
                                                public_key_pem=provider.public_key_pem)
                except signatures.SignatureError as exc:
                    reason = str(exc)
                    continue
                if not self._replays.first_use(headers, created):
                    raise GatewayError(UNAUTHENTICATED, "the signed request was replayed",
                                       http=401)
                return provider
        raise GatewayError(UNAUTHENTICATED, reason, http=401)
