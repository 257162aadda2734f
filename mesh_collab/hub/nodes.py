"""The hub's user servers as nodes of its site: their ids, keys and the mesh directory.

Each user's server is a mesh node (``MeshCollabApp``) whose id is the user's name. The hub
keeps one Ed25519 key per user server (``<keys_dir>/<user>.pem``, 0600 in a 0700 folder),
hands it to the server at each spawn (``MESH_COLLAB_NODE_KEY``, which the server moves into
its own data folder and out of its environment), and lists the server in the mesh directory
file it maintains (public keys only, written whole and atomically): this site's entry, with
one node per user at its URL behind the hub's proxy, after the other sites' entries taken
from ``sites_file``. Nodes read that file again at every look-up, so a server that starts is
found by the others at once.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mesh_collab.federation import keys
from mesh_collab.federation.directory import NODE_ID_ENV, PEERS_ENV, MeshDirectory
from mesh_collab.federation.keys import NODE_KEY_ENV

_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class HubNodes:
    """The user servers of one hub site (see the module docstring).

    Args:
        site: this site's name.
        domain: this site's CS3/OCM domain (what OCM shares name as the owner's provider).
        url_template: a user server's URL, with ``{username}`` (the hub's public URL and
            ``user/{username}/``).
        directory: the mesh directory file the hub writes (readable by the servers).
        keys_dir: where the hub keeps the servers' private keys (only the hub reads it).
        sites_file: the other sites' entries (a directory file), or None.
    """

    def __init__(self, *, site: str, domain: str, url_template: str, directory: Path,
                 keys_dir: Path, sites_file: Path | None = None) -> None:
        self.site = site
        self.domain = domain
        self.url_template = url_template
        self.directory = directory
        self.keys_dir = keys_dir
        self.sites_file = sites_file

    def environment(self, username: str, cs3_user_id: str) -> dict[str, str]:
        """Register ``username``'s server and return what its environment needs.

        ``cs3_user_id`` (``"<idp>/<opaque id>"``) goes into the node's entry as the user it
        acts for: other sites link to it for that user's documents.

        Raises:
            ValueError: the user name cannot be a node id, or the directory would be
                invalid (a bad ``url_template`` or ``sites_file``).
        """
        if not _NODE_ID.fullmatch(username):
            raise ValueError(f"user {username!r} cannot name a mesh node")
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keys_dir.chmod(0o700)
        key_file = self.keys_dir / f"{username}.pem"
        key = keys.load_or_create(key_file)
        # Called on the hub's event loop and never awaiting: two spawns never interleave
        # their read and write of the directory.
        self._write(username, keys.public_text(key), cs3_user_id.rpartition("/")[2])
        return {
            NODE_KEY_ENV: keys.pem(key).decode(),
            NODE_ID_ENV: username,
            PEERS_ENV: f"@{self.directory.absolute()}",
        }

    def _write(self, username: str, public_key: str, opaque_id: str) -> None:
        nodes = {n["id"]: n for n in self._own_nodes()}
        nodes[username] = {
            "id": username,
            "url": self.url_template.format(username=username),
            "key": public_key,
            "user": opaque_id,
        }
        own = {"site": self.site, "domain": self.domain, "nodes": list(nodes.values())}
        others = [e for e in self._entries(self.sites_file) if e.get("site") != self.site]
        entries = [own, *others]
        MeshDirectory.from_config(entries)  # never write a directory the nodes refuse
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.directory.with_name(self.directory.name + ".new")
        temporary.write_text(json.dumps(entries, indent=1) + "\n")
        os.chmod(temporary, 0o644)  # public keys and addresses only
        temporary.replace(self.directory)

    def _own_nodes(self) -> list[dict[str, Any]]:
        for entry in self._entries(self.directory):
            if entry.get("site") == self.site:
                return [n for n in entry.get("nodes", []) if isinstance(n, dict) and "id" in n]
        return []

    @staticmethod
    def _entries(path: Path | None) -> list[dict[str, Any]]:
        if path is None or not path.exists():
            return []
        data = json.loads(path.read_text())
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
