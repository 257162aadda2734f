"""The mesh directory: which sites exist, where their nodes are, and how they authenticate.

It comes from configuration (``MeshCollabApp.peers``), one entry per site::

    [{"site": "site-b", "url": "http://127.0.0.1:8812/", "domain": "127.0.0.1:8811",
      "secret": "..."}]

``url`` is the site's node (its Jupyter server), ``domain`` its CS3/OCM domain (what OCM
shares from that site name as the owner's identity provider), ``secret`` the shared secret
that site's nodes present when they link to us and that we present to them. Nodes of our own
site use our own site's entry.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Site:
    """One site of the mesh."""

    name: str
    url: str
    domain: str = ""
    secret: str = ""

    def __repr__(self) -> str:
        return f"Site({self.name!r}, url={self.url!r}, domain={self.domain!r})"


class MeshDirectory:
    """Sites by name and by domain.

    Raises (constructor):
        ValueError: an entry without a site name or URL, or a site listed twice.
    """

    def __init__(self, sites: Iterable[Site] = ()) -> None:
        self._by_name: dict[str, Site] = {}
        for site in sites:
            if not site.name or not site.url:
                raise ValueError(f"a mesh site needs a name and a url: {site!r}")
            if site.name in self._by_name:
                raise ValueError(f"site {site.name!r} is listed twice")
            url = site.url if site.url.endswith("/") else site.url + "/"
            self._by_name[site.name] = Site(site.name, url, site.domain, site.secret)

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]]) -> MeshDirectory:
        """Build from configuration dicts (keys site, url, domain, secret)."""
        return cls(
            Site(
                name=str(e.get("site", "")),
                url=str(e.get("url", "")),
                domain=str(e.get("domain", "")),
                secret=str(e.get("secret", "")),
            )
            for e in entries
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    def site(self, name: str) -> Site | None:
        """The site called ``name``."""
        return self._by_name.get(name)

    def by_domain(self, domain: str) -> Site | None:
        """The site whose CS3/OCM domain is ``domain``."""
        for site in self._by_name.values():
            if site.domain and site.domain == domain:
                return site
        return None

    def authenticate(self, name: str, secret: str) -> Site | None:
        """The site if ``secret`` is its configured secret (constant-time compare)."""
        site = self._by_name.get(name)
        if site is None or not site.secret or not secret:
            return None
        if not hmac.compare_digest(site.secret.encode(), secret.encode()):
            return None
        return site
