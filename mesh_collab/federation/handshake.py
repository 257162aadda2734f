"""The signed, mutual handshake of a node-to-node link (federation protocol 2).

The linking node signs, with its own node key, who it is (site and node id), whom it means
to reach (site and node id), the resource and kind of the room, the time and a fresh nonce.
The serving node accepts it only if the directory lists that node with that key, the
handshake is meant for itself, its time is within a minute of now and its nonce is new: a
captured handshake cannot be replayed, nor relayed to another node. The serving node's
``welcome`` carries its own signature over the linking node's nonce, so the linking node
knows it reached the node it meant, not whoever answers at that address.

Headers of the websocket request:

=====================  ====================================================================
``Authorization``      ``MeshSig <base64 signature>``
``X-Mesh-Site``        the linking node's site
``X-Mesh-Node``        the linking node's id (as the directory lists it)
``X-Mesh-To``          the id of the node it means to reach
``X-Mesh-Time``        seconds since the epoch, when it signed
``X-Mesh-Nonce``       a fresh random value (base64url, 16 bytes)
``X-Mesh-Protocol``    ``2``
=====================  ====================================================================
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh_collab.close_codes import CloseCode
from mesh_collab.errors import PeerRejected
from mesh_collab.federation import keys
from mesh_collab.federation.directory import MeshDirectory, Node, Site
from mesh_collab.federation.protocol import PROTOCOL_VERSION

AUTH_SCHEME = "MeshSig"
SITE_HEADER = "X-Mesh-Site"
NODE_HEADER = "X-Mesh-Node"
TO_HEADER = "X-Mesh-To"
TIME_HEADER = "X-Mesh-Time"
NONCE_HEADER = "X-Mesh-Nonce"
VERSION_HEADER = "X-Mesh-Protocol"


@dataclass(frozen=True, slots=True)
class LocalNode:
    """This node as the mesh knows it: its site, its id and its signing key (read again at
    every handshake: a rotated key file is used at once)."""

    site: str
    node_id: str
    key: Callable[[], Ed25519PrivateKey]


def _link_fields(site: str, node: str, to_site: str, to_node: str, resource: str, kind: str,
                 stamp: str, nonce: str) -> list[str]:
    return [f"mesh_collab link {PROTOCOL_VERSION}", site, node, to_site, to_node, resource,
            kind, stamp, nonce]


def _welcome_fields(site: str, node: str, to_site: str, to_node: str, resource: str,
                    nonce: str) -> list[str]:
    return [f"mesh_collab welcome {PROTOCOL_VERSION}", site, node, to_site, to_node, resource,
            nonce]


def link_headers(local: LocalNode, site: Site, node: Node, resource: str, kind: str
                 ) -> tuple[dict[str, str], str]:
    """The headers that open a link to ``node`` of ``site``, and the nonce they carry (the
    welcome must sign it)."""
    stamp, nonce = str(int(time.time())), secrets.token_urlsafe(16)
    signature = keys.sign(local.key(), _link_fields(
        local.site, local.node_id, site.name, node.id, resource, kind, stamp, nonce))
    return {
        "Authorization": f"{AUTH_SCHEME} {signature}",
        SITE_HEADER: local.site,
        NODE_HEADER: local.node_id,
        TO_HEADER: node.id,
        TIME_HEADER: stamp,
        NONCE_HEADER: nonce,
        VERSION_HEADER: str(PROTOCOL_VERSION),
    }, nonce


def check_link(headers: Mapping[str, str], *, local: LocalNode, directory: MeshDirectory,
               resource: str, kind: str, nonces: keys.Nonces) -> tuple[Site, Node]:
    """The site and node a link request comes from, once its handshake is verified.

    Raises:
        PeerRejected: 4426 another protocol version; 4401 an unknown node, a bad signature, a
            handshake for another node, too old or replayed.
    """
    if headers.get(VERSION_HEADER, "") != str(PROTOCOL_VERSION):
        raise PeerRejected(f"speaks {PROTOCOL_VERSION}", CloseCode.PROTOCOL_VERSION)
    site_name, node_id = headers.get(SITE_HEADER, ""), headers.get(NODE_HEADER, "")
    site, node = directory.site(site_name), directory.node(site_name, node_id)
    scheme, _, signature = headers.get("Authorization", "").partition(" ")
    if site is None or node is None or scheme != AUTH_SCHEME:
        raise PeerRejected("unknown node", CloseCode.UNAUTHORIZED)
    if headers.get(TO_HEADER, "") != local.node_id:
        raise PeerRejected("handshake meant for another node", CloseCode.UNAUTHORIZED)
    stamp, nonce = headers.get(TIME_HEADER, ""), headers.get(NONCE_HEADER, "")
    fields = _link_fields(site_name, node_id, local.site, local.node_id, resource, kind, stamp,
                          nonce)
    if not keys.verify(node.keys, fields, signature.strip()):
        raise PeerRejected("bad signature", CloseCode.UNAUTHORIZED)
    try:
        when = float(stamp)
    except ValueError:
        raise PeerRejected("bad time", CloseCode.UNAUTHORIZED) from None
    if not nonces.fresh(nonce[:64], when):
        raise PeerRejected("handshake expired or replayed", CloseCode.UNAUTHORIZED)
    return site, node


def welcome_proof(local: LocalNode, site: str, node: str, resource: str, nonce: str) -> str:
    """The serving node's signature in its welcome to node ``node`` of ``site``."""
    return keys.sign(local.key(), _welcome_fields(local.site, local.node_id, site, node,
                                                  resource, nonce))


def check_welcome(message: Mapping[str, object], *, local: LocalNode, site: Site, node: Node,
                  resource: str, nonce: str) -> bool:
    """Whether a welcome comes from ``node`` of ``site``, for this handshake."""
    proof = message.get("proof")
    return (
        message.get("site") == site.name and message.get("node") == node.id
        and isinstance(proof, str)
        and keys.verify(node.keys, _welcome_fields(site.name, node.id, local.site,
                                                   local.node_id, resource, nonce), proof)
    )
