"""Paths, node ids and references: the only way from a CS3 ``Reference`` to a file on disk.

The CS3 namespace is ``/home/<username>/...``; it maps to ``<root>/files/home/<username>/...``.
Every reference goes through :meth:`Namespace.resolve`, which refuses (never silently
"cleans") anything that could reach outside ``<root>/files``: ``..`` components, NUL bytes,
backslashes, absolute paths in relative references, and symlinks (no path component under
``<root>/files`` may be a symlink, so neither a link to ``/etc`` nor a link into another
user's home is followed).

The symlink check walks the path one component at a time from a descriptor of
``<root>/files`` (``openat`` with ``O_NOFOLLOW | O_DIRECTORY``), so a directory swapped for
a symlink halfway through the walk is seen, not followed. A check is only good for the
moment it runs, though: what happens to the path afterwards is what counts. The
descriptor-based operations (:meth:`Namespace.lstat`, :meth:`Namespace.children`,
:meth:`Namespace.used_bytes`, :meth:`Namespace.open_dir`) walk again, the same way, at the
moment they act, so a symlink put in place after the check is refused then
(PERMISSION_DENIED) rather than followed out of ``<root>/files``: Stat, ListContainer,
GetQuota and the lock calls go through them. Content transfers, moves and the recycle bin
still act on ``Node.disk`` by path, trusting the check made when the node was resolved.

Node ids (``ResourceId.opaque_id``) live in the ``nodes`` table. A home container's id is its
space id (as on Reva edge); every other node gets a uuid4 the first time the gateway sees it,
so files put into a home by hand are picked up lazily. The id follows the node through
overwrites and moves, and into the recycle bin and back: a restored node has its old id.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cs3.storage.provider.v1beta1 import resources_pb2 as res

from .db import MetaDB
from .status import INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, GatewayError

HOME = "home"
_MAX_NAME = 255
# Descend into a directory without following a symlink: a symlink fails with ENOTDIR (or
# ELOOP), like a regular file. O_PATH needs no read permission on the directory.
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)
_LIST_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_RDONLY
_SYMLINK = "symbolic links are not followed"
# Paths per query of many nodes (SQLite's default limit of variables is 999 before 3.32).
_QUERY_BATCH = 500


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

    def records(self, nodes: list[Node]) -> dict[str, tuple[str, str]]:
        """Return ``{rel: (id, gen)}`` of existing nodes, giving ids to those seen for the
        first time (as :meth:`ensure_id` does, with a few queries for all of them)."""
        found: dict[str, tuple[str, str]] = {}
        rels = [node.rel for node in nodes]
        for first in range(0, len(rels), _QUERY_BATCH):
            chunk = rels[first:first + _QUERY_BATCH]
            marks = ",".join("?" * len(chunk))
            rows = self._db.all(
                f"SELECT id, path, gen FROM nodes WHERE path IN ({marks})", chunk
            )
            found.update((str(r["path"]), (str(r["id"]), str(r["gen"]))) for r in rows)
        new = [node for node in nodes if node.rel not in found]
        if new:
            with self._db.transaction():
                for node in new:
                    new_id = self.space_id(node.home_user) if node.is_home else str(uuid.uuid4())
                    gen = _gen()
                    self._db.execute(
                        "INSERT INTO nodes (id, path, gen) VALUES (?, ?, ?)",
                        (new_id, node.rel, gen),
                    )
                    found[node.rel] = (new_id, gen)
        return found

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
        return list(self.ancestors(node))

    def ancestors(self, node: Node) -> dict[str, str]:
        """Return ``{id: rel}`` of ``node`` and of every container above it, when recorded."""
        parts = node.parts
        prefixes = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
        marks = ",".join("?" * len(prefixes))
        rows = self._db.all(f"SELECT id, path FROM nodes WHERE path IN ({marks})", prefixes)
        return {str(r["id"]): str(r["path"]) for r in rows}

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

    def detach(self, node: Node) -> list[tuple[str, str, str]]:
        """Drop the records of ``node`` and below, keeping their metadata (a delete to the
        recycle bin); locks go. Returns ``(id, path below node, gen)`` for :meth:`attach`."""
        rows = self._db.all(
            "SELECT id, path, gen FROM nodes WHERE path = ? OR substr(path, 1, ?) = ?",
            (node.rel, len(node.rel) + 1, node.rel + "/"),
        )
        records = [
            (str(r["id"]), str(r["path"])[len(node.rel) + 1 :], str(r["gen"])) for r in rows
        ]
        with self._db.transaction():
            for node_id, _, _ in records:
                self._db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
                self._db.execute("DELETE FROM locks WHERE node_id = ?", (node_id,))
        return records

    def attach(self, node: Node, records: list[tuple[str, str, str]]) -> None:
        """Record ``node`` and below under the ids :meth:`detach` returned (a restore)."""
        with self._db.transaction():
            self.forget(node)
            for node_id, below, gen in records:
                path = f"{node.rel}/{below}" if below else node.rel
                self._db.execute(
                    "INSERT INTO nodes (id, path, gen) VALUES (?, ?, ?)", (node_id, path, gen)
                )

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

    # ---- descriptor-based access (no symlink followed, whenever it is swapped in) --------

    def lstat(self, node: Node) -> os.stat_result | None:
        """Return the ``lstat`` of ``node``, or None when it does not exist.

        Raises:
            GatewayError: PERMISSION_DENIED when the node or a folder above it is a symlink.
        """
        with self._parent_fd(node.parts) as parent:
            if parent is None:
                return None
            st = _stat_at(parent, node.name)
        if st is not None and stat_mod.S_ISLNK(st.st_mode):
            raise GatewayError(PERMISSION_DENIED, _SYMLINK)
        return st

    @contextmanager
    def open_dir(self, node: Node) -> Iterator[int]:
        """Open the folder ``node`` for reading, every component without following links.

        Raises:
            GatewayError: PERMISSION_DENIED through a symlink; NOT_FOUND when it is not
                there or not a folder.
        """
        with self._parent_fd(node.parts) as parent:
            if parent is None:
                raise GatewayError(NOT_FOUND, "path not found")
            fd = _open_dir_at(parent, node.name, _LIST_FLAGS)
        try:
            yield fd
        finally:
            os.close(fd)

    def children(self, node: Node) -> list[tuple[str, os.stat_result]]:
        """Return the names and ``lstat`` of the folders and regular files directly inside
        ``node``, sorted by name (:meth:`listed` makes their nodes).

        Symlinks, other file types and names no reference could address are left out.
        Blocking (one ``lstat`` per entry): run it on a worker thread.

        Raises:
            GatewayError: as :meth:`open_dir`.
        """
        found: list[tuple[str, os.stat_result]] = []
        with self.open_dir(node) as fd, os.scandir(fd) as entries:
            for entry in entries:
                if not _addressable(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone meanwhile
                if stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode):
                    found.append((entry.name, st))
        found.sort(key=lambda item: item[0])
        return found

    def listed(self, parent: Node, name: str) -> Node:
        """The node of an entry :meth:`children` found in ``parent`` (already checked)."""
        return Node(rel=f"{parent.rel}/{name}", disk=parent.disk / name)

    def used_bytes(self, node: Node) -> int:
        """Bytes of the regular files at or below the folder ``node``; links are not
        followed. Blocking: run it on a worker thread.

        Raises:
            GatewayError: as :meth:`open_dir`.
        """
        total = 0
        with self.open_dir(node) as fd:
            for _, _, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                for name in files:
                    st = _stat_at(dir_fd, name)
                    if st is not None and stat_mod.S_ISREG(st.st_mode):
                        total += st.st_size
        return total

    @contextmanager
    def _parent_fd(self, parts: list[str]) -> Iterator[int | None]:
        """A descriptor of the folder holding ``parts[-1]``, walked down from the files root
        one component at a time; None when a folder on the way does not exist.

        Raises:
            GatewayError: PERMISSION_DENIED when a folder on the way is a symlink.
        """
        fd = os.open(self.files_root, os.O_DIRECTORY | os.O_CLOEXEC | os.O_RDONLY)
        try:
            found = True
            for part in parts[:-1]:
                try:
                    nxt = _open_dir_at(fd, part, _DIR_FLAGS)
                except GatewayError as exc:
                    if exc.code != NOT_FOUND:
                        raise
                    found = False
                    break
                os.close(fd)
                fd = nxt
            yield fd if found else None
        finally:
            os.close(fd)

    def _node(self, parts: list[str]) -> Node:
        if len(parts) < 2 or parts[0] != HOME:
            raise GatewayError(PERMISSION_DENIED, "path is outside of every home")
        # No component below the files root may be a symlink: this keeps every access
        # inside <root>/files and inside the home (or share) it was authorised for.
        with self._parent_fd(parts) as parent:
            st = _stat_at(parent, parts[-1]) if parent is not None else None
        if st is not None and stat_mod.S_ISLNK(st.st_mode):
            raise GatewayError(PERMISSION_DENIED, _SYMLINK)
        return Node(rel="/".join(parts), disk=self.files_root.joinpath(*parts))


def _stat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``fstatat(dir_fd, name, AT_SYMLINK_NOFOLLOW)``, None when there is no such entry."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _open_dir_at(dir_fd: int, name: str, flags: int) -> int:
    """Open the folder ``name`` inside ``dir_fd`` without following a symlink.

    Raises:
        GatewayError: PERMISSION_DENIED for a symlink, NOT_FOUND when there is no folder.
    """
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GatewayError(PERMISSION_DENIED, _SYMLINK) from exc
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        # O_NOFOLLOW | O_DIRECTORY answers ENOTDIR for a symlink as for a file: tell them
        # apart without following either.
        st = _stat_at(dir_fd, name)
        if st is not None and stat_mod.S_ISLNK(st.st_mode):
            raise GatewayError(PERMISSION_DENIED, _SYMLINK) from exc
        raise GatewayError(NOT_FOUND, "path not found") from exc


def _addressable(name: str) -> bool:
    """Whether a reference could name this directory entry (see :func:`_split`)."""
    return (
        name not in (".", "..")
        and "\\" not in name
        and len(name.encode("utf-8", "surrogatepass")) <= _MAX_NAME
    )


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
