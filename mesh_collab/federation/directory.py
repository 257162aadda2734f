"""The mesh directory: which sites exist, which nodes they run, and the nodes' public keys.

It comes from configuration (``MeshCollabApp.peers``), one entry per site::

    [{"site": "site-b", "domain": "127.0.0.1:8811",
      "nodes": [{"id": "b1", "url": "https://b1.example.org/", "key": "ed25519:..."}]}]

``domain`` is the site's CS3/OCM domain (what OCM shares from that site name as the owner's
identity provider). Each node has an ``id`` (its ``MeshCollabApp.node_id``), the ``url`` other
nodes link to, and its public ``key`` (or ``keys``, a list, while a key is rotated); a node
that serves one CS3 user only (a JupyterHub user's server) names that user's opaque id as
``user``, and other sites link to it for that user's documents. A site
with one node may write that node's fields in the site's entry: ``{"site", "domain", "url",
"node", "key"}``. The first node of a site is where other sites link to.

The directory holds public keys only: it is the one place that says where a node is and who
it is. Nothing read from storage (a lock id, metadata, a share) ever names an address that a
node contacts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh_collab.federation.keys import parse_public
from mesh_collab.tls import is_loopback

#: Where a node finds its directory (``@<file>`` or the JSON) and its own id, when not
#: configured otherwise.
PEERS_ENV = "MESH_COLLAB_PEERS"
NODE_ID_ENV = "MESH_COLLAB_NODE_ID"


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a site: where it is and the keys it signs with."""

    id: str
    url: str
    keys: tuple[Ed25519PublicKey, ...] = field(default=(), compare=False)
    #: The CS3 user (opaque id) this node acts for, when it serves one user only (a
    #: JupyterHub user's server); "" for a node of many users.
    user: str = ""

    def __repr__(self) -> str:
        return f"Node({self.id!r}, url={self.url!r})"


@dataclass(frozen=True, slots=True)
class Site:
    """One site of the mesh."""

    name: str
    url: str = ""
    domain: str = ""
    nodes: tuple[Node, ...] = ()

    def node(self, node_id: str) -> Node | None:
        """The node of this site called ``node_id``."""
        return next((n for n in self.nodes if n.id == node_id), None)

    def for_owner(self, opaque_id: str) -> Site:
        """This site with the node acting for user ``opaque_id`` first, if it lists one.

        Another site links to a document's home through the site's first node; at a site of
        one server per user (a hub), that is the owner's own server.
        """
        own = [n for n in self.nodes if n.user and n.user == opaque_id]
        if not own:
            return self
        rest = tuple(n for n in self.nodes if n not in own)
        return Site(self.name, own[0].url, self.domain, (own[0], *rest))

    @property
    def entry(self) -> Node | None:
        """The node other sites link to (the first)."""
        return self.nodes[0] if self.nodes else None




def _url(value: Any, where: str) -> str:
    """A node's URL: https, or http on the loopback interface only (a link carries users'
    tokens and edits; in clear text only where nobody else can listen)."""
    url = str(value or "")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: a node's url must be https://...: {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{where}: plain http is for loopback only, use https: {url!r}")
    return url if url.endswith("/") else url + "/"


def _node(entry: Mapping[str, Any], where: str, default_id: str = "") -> Node:
    node_id = str(entry.get("id") or entry.get("node") or default_id)
    if not node_id or ":" in node_id or "/" in node_id:
        raise ValueError(f"{where}: a node needs an id without ':' or '/': {node_id!r}")
    if "secret" in entry:
        raise ValueError(f"{where}: shared secrets are gone, give the node's public key")
    texts = entry.get("keys", [entry["key"]] if "key" in entry else [])
    if not isinstance(texts, list) or not texts:
        raise ValueError(f"{where}: node {node_id!r} needs a public key ('key' or 'keys')")
    try:
        keys = tuple(parse_public(t) for t in texts)
    except ValueError as exc:
        raise ValueError(f"{where}: node {node_id!r}: {exc}") from exc
    user = str(entry.get("user") or "")
    return Node(node_id, _url(entry.get("url"), where), keys, user)


class MeshDirectory:
    """Sites by name and by domain, and their nodes.

    Raises (constructor):
        ValueError: an entry without a site name or URL, or a site listed twice.
    """

    def __init__(self, sites: Iterable[Site] = ()) -> None:
        self._by_name: dict[str, Site] = {}
        for site in sites:
            if not site.name:
                raise ValueError(f"a mesh site needs a name: {site!r}")
            if site.name in self._by_name:
                raise ValueError(f"site {site.name!r} is listed twice")
            url = site.url or (site.nodes[0].url if site.nodes else "")
            if not url:
                raise ValueError(f"site {site.name!r} needs a node")
            url = url if url.endswith("/") else url + "/"
            self._by_name[site.name] = Site(site.name, url, site.domain, site.nodes)

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]]) -> MeshDirectory:
        """Build from configuration dicts (see the module's docstring).

        Raises:
            ValueError: naming the entry and what is wrong with it.
        """
        sites = []
        for number, entry in enumerate(entries, 1):
            if not isinstance(entry, Mapping):
                raise ValueError(f"entry {number}: a site is an object")
            name = str(entry.get("site", ""))
            where = f"site {name or number!r}"
            if "nodes" in entry:
                raw = entry["nodes"]
                if not isinstance(raw, list) or not raw:
                    raise ValueError(f"{where}: 'nodes' is a non-empty list")
                nodes = tuple(_node(n, where) for n in raw if isinstance(n, Mapping))
                if len(nodes) != len(raw):
                    raise ValueError(f"{where}: a node is an object")
            else:
                nodes = (_node(entry, where, default_id=name),)
            if len({n.id for n in nodes}) != len(nodes):
                raise ValueError(f"{where}: a node id is listed twice")
            sites.append(Site(name, nodes[0].url, str(entry.get("domain", "")), nodes))
        return cls(sites)

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

    def node(self, site: str, node_id: str) -> Node | None:
        """Node ``node_id`` of site ``site``, if the directory lists it."""
        entry = self._by_name.get(site)
        return entry.node(node_id) if entry is not None else None
