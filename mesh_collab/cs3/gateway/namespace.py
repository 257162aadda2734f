"""Paths, node ids and references: the only way from a CS3 ``Reference`` to a file on disk.

The CS3 namespace is ``/home/<username>/...``; it maps to ``<root>/files/home/<username>/...``.
Every reference goes through :meth:`Namespace.resolve`, which refuses (never silently
"cleans") anything that could reach outside ``<root>/files``: ``..`` components, NUL bytes,
backslashes, absolute paths in relative references, and symlinks (no path component under
``<root>/files`` may be a symlink, so neither a link to ``/etc`` nor a link into another
user's home is followed).

Node ids (``ResourceId.opaque_id``) live in the ``nodes`` table. A home container's id is its
space id (as on Reva edge); every other node gets a uuid4 the first time the gateway sees it,
so files put into a home by hand are picked up lazily. The id follows the node through
overwrites and moves; deleting a node forgets its id.
"""

from __future__ import annotations

import os
import stat as stat_mod
import uuid
from dataclasses import dataclass
from pathlib import Path

from cs3.storage.provider.v1beta1 import resources_pb2 as res

from .db import MetaDB
from .status import INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, GatewayError

HOME = "home"
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class Node:
    """A resolved location inside ``<root>/files`` (it may not exist yet).

    Attributes:
        rel: the posix path relative to ``<root>/files``, e.g. ``"home/einstein/nb.ipynb"``.
        disk: the absolute path on disk.
    """

    rel: str
    disk: Path

    @property
    def parts(self) -> list[str]:
        """The path components of ``rel``."""
        return self.rel.split("/")

    @property
    def home_user(self) -> str:
        """The username whose home holds this node."""
        return self.parts[1]

    @property
    def path(self) -> str:
        """The absolute CS3 path, e.g. ``"/home/einstein/nb.ipynb"``."""
        return "/" + self.rel

    @property
    def name(self) -> str:
        """The last path component."""
        return self.parts[-1]

    @property
    def is_home(self) -> bool:
        """Whether this node is a home container."""
        return len(self.parts) == 2

    @property
    def parent_rel(self) -> str:
        """``rel`` of the parent container (only meaningful below a home)."""
        return self.rel.rpartition("/")[0]


class Namespace:
    """Maps references to nodes and nodes to ids.

    Args:
        files_root: ``<root>/files``; created if missing.
        db: the metadata database.
        site: the site name, from which the storage id and space ids derive.
    """

    def __init__(self, files_root: Path, db: MetaDB, *, site: str) -> None:
        files_root.mkdir(parents=True, exist_ok=True)
        (files_root / HOME).mkdir(exist_ok=True)
        self.files_root = files_root.resolve()
        self._db = db
        self.site = site
        self.storage_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mesh-collab:{site}"))

    # ---- ids -------------------------------------------------------------------------

    def space_id(self, username: str) -> str:
        """Return the space id of ``username``'s home (also the home container's id)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mesh-collab:{self.site}:{username}"))

    def resource_id(self, node: Node, opaque_id: str) -> res.ResourceId:
        """Return the CS3 ``ResourceId`` of ``node``."""
        return res.ResourceId(
            storage_id=self.storage_id,
            space_id=self.space_id(node.home_user),
            opaque_id=opaque_id,
        )

    def id_of(self, node: Node) -> str | None:
        """Return the id recorded for ``node``'s path, or None."""
        row = self._db.one("SELECT id FROM nodes WHERE path = ?", (node.rel,))
        return None if row is None else str(row["id"])

    def ensure_id(self, node: Node) -> str:
        """Return the id of an existing ``node``, assigning one on first sight."""
        found = self.id_of(node)
        if found is not None:
            return found
        new_id = self.space_id(node.home_user) if node.is_home else str(uuid.uuid4())
        self._db.execute(
            "INSERT INTO nodes (id, path, gen) VALUES (?, ?, ?)", (new_id, node.rel, _gen())
        )
        return new_id

    def new_id(self, node: Node) -> str:
        """Give a freshly created ``node`` a new id, dropping any stale record of its path."""
        with self._db.transaction():
            self.forget(node)
            return self.ensure_id(node)

    def gen_of(self, node_id: str) -> str:
        """Return the write generation of a node (an etag input)."""
        row = self._db.one("SELECT gen FROM nodes WHERE id = ?", (node_id,))
        return "" if row is None else str(row["gen"])

    def bump(self, node_id: str) -> None:
        """Record a write to the node, so that its etag changes."""
        self._db.execute("UPDATE nodes SET gen = ? WHERE id = ?", (_gen(), node_id))

    def node_by_id(self, opaque_id: str) -> Node | None:
        """Return the existing node with this id, or None (stale records are dropped)."""
        row = self._db.one("SELECT path FROM nodes WHERE id = ?", (opaque_id,))
        if row is None:
            return None
        node = self._node(str(row["path"]).split("/"))
        if not os.path.lexists(node.disk):
            with self._db.transaction():
                self.forget(node)
            return None
        return node

    def ids_of_ancestors(self, node: Node) -> list[str]:
        """Return the recorded ids of ``node`` and of every container above it."""
        parts = node.parts
        prefixes = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
        marks = ",".join("?" * len(prefixes))
        rows = self._db.all(f"SELECT id FROM nodes WHERE path IN ({marks})", prefixes)
        return [str(r["id"]) for r in rows]

    def forget(self, node: Node) -> list[str]:
        """Drop the records of ``node`` and everything below it; return the dropped ids."""
        rows = self._db.all(
            "SELECT id FROM nodes WHERE path = ? OR substr(path, 1, ?) = ?",
            (node.rel, len(node.rel) + 1, node.rel + "/"),
        )
        ids = [str(r["id"]) for r in rows]
        with self._db.transaction():
            for node_id in ids:
                self._db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
                self._db.execute("DELETE FROM xattrs WHERE node_id = ?", (node_id,))
                self._db.execute("DELETE FROM locks WHERE node_id = ?", (node_id,))
        return ids

    def rename(self, old: Node, new: Node) -> None:
        """Move the records of ``old`` and its descendants to ``new`` (ids are kept)."""
        with self._db.transaction():
            self.forget(new)
            self._db.execute(
                "UPDATE nodes SET path = ? || substr(path, ?) "
                "WHERE path = ? OR substr(path, 1, ?) = ?",
                (new.rel, len(old.rel) + 1, old.rel, len(old.rel) + 1, old.rel + "/"),
            )

    # ---- references ---------------------------------------------------------------------

    def resolve(self, ref: res.Reference | None) -> Node:
        """Resolve an absolute, id-only or relative reference (spec §1.3).

        The node may not exist. Existence and permissions are the caller's business.

        Raises:
            GatewayError: INVALID_ARGUMENT for malformed references, NOT_FOUND for unknown
                ids, PERMISSION_DENIED for paths outside every home or through a symlink.
        """
        if ref is None:
            raise GatewayError(INVALID_ARGUMENT, "missing reference")
        if ref.HasField("resource_id"):
            base = self.resolve_id(ref.resource_id)
            rel_parts = relative_parts(ref.path)
            if rel_parts is None:
                raise GatewayError(
                    INVALID_ARGUMENT,
                    f"relative path must start with '.': {ref.path!r}",
                )
            return self._node(base.parts + rel_parts)
        if not ref.path:
            raise GatewayError(INVALID_ARGUMENT, "reference needs a path or a resource id")
        return self.resolve_path(ref.path)

    def resolve_id(self, rid: res.ResourceId) -> Node:
        """Resolve a ``ResourceId`` to an existing node.

        Raises:
            GatewayError: INVALID_ARGUMENT for an incomplete id, NOT_FOUND if unknown.
        """
        if not rid.storage_id or not rid.opaque_id:
            raise GatewayError(INVALID_ARGUMENT, "resource id needs storage_id and opaque_id")
        if rid.storage_id != self.storage_id:
            raise GatewayError(NOT_FOUND, "storage provider not found for resource id")
        node = self.node_by_id(rid.opaque_id)
        if node is None:
            raise GatewayError(NOT_FOUND, "resource id not found")
        return node

    def resolve_path(self, path: str) -> Node:
        """Resolve an absolute CS3 path.

        Raises:
            GatewayError: INVALID_ARGUMENT if malformed, PERMISSION_DENIED outside the homes.
        """
        if not path.startswith("/"):
            raise GatewayError(INVALID_ARGUMENT, f"path must be absolute: {path!r}")
        parts = _split(path)
        if len(parts) < 2 or parts[0] != HOME:
            raise GatewayError(PERMISSION_DENIED, f"path is outside of every home: {path!r}")
        return self._node(parts)

    def node(self, rel: str) -> Node:
        """Return the node for a ``rel`` path taken from the database or a token."""
        return self._node(rel.split("/"))

    def child(self, parent: Node, name: str) -> Node:
        """Return the node ``name`` inside ``parent``."""
        return self._node([*parent.parts, *_split(name)])

    def _node(self, parts: list[str]) -> Node:
        if len(parts) < 2 or parts[0] != HOME:
            raise GatewayError(PERMISSION_DENIED, "path is outside of every home")
        disk = self.files_root.joinpath(*parts)
        # No component below the files root may be a symlink: this keeps every access
        # inside <root>/files and inside the home (or share) it was authorised for.
        probe = self.files_root
        for part in parts:
            probe = probe / part
            try:
                mode = os.lstat(probe).st_mode
            except FileNotFoundError:
                break
            except NotADirectoryError:
                break
            if stat_mod.S_ISLNK(mode):
                raise GatewayError(PERMISSION_DENIED, "symbolic links are not followed")
        return Node(rel="/".join(parts), disk=disk)


def relative_parts(path: str) -> list[str] | None:
    """Split the path of a relative reference: ``""``/``"."`` → [], ``"./a/b"`` → [a, b].

    Returns None when the path does not start with ``"."`` (not a relative reference).

    Raises:
        GatewayError: INVALID_ARGUMENT for ``..``, NUL or backslashes.
    """
    if path in ("", "."):
        return []
    if not path.startswith("./"):
        return None
    return _split(path[2:])


def _split(path: str) -> list[str]:
    if "\x00" in path or "\\" in path:
        raise GatewayError(INVALID_ARGUMENT, "path contains NUL or a backslash")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise GatewayError(INVALID_ARGUMENT, "path must not contain '..'")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME:
            raise GatewayError(INVALID_ARGUMENT, "path component too long")
    return parts


def _gen() -> str:
    return uuid.uuid4().hex
