"""File versions: the content an overwrite replaced, kept under ``<root>/versions``.

Both Reva lineages keep the *old* content as a version on every write (EOS ``.sys.v#``
folders, decomposedfs ``.REV.`` nodes; spec §1.7). Keys sort by creation, newest first.
The version file is a hard link to the replaced inode when the filesystem allows it (the
overwrite is a rename, so the old inode is otherwise unreferenced), else a copy.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .db import MetaDB


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version."""

    key: str
    size: int
    mtime: int
    etag: str
    path: Path


class VersionStore:
    """Version files and their rows in the ``versions`` table."""

    def __init__(self, root: Path, db: MetaDB) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._db = db

    def new_key(self, node_id: str) -> tuple[str, Path]:
        """Return a fresh version key and the file it will be stored in."""
        key = f"{time.time_ns()}.{uuid.uuid4().hex[:8]}"
        return key, self.root / node_id / key

    def record(self, node_id: str, key: str, *, size: int, mtime: int, etag: str) -> None:
        """Record a version whose file was written by :func:`preserve`."""
        self._db.execute(
            "INSERT INTO versions (node_id, key, size, mtime, etag) VALUES (?, ?, ?, ?, ?)",
            (node_id, key, size, mtime, etag),
        )

    def list(self, node_id: str) -> list[Version]:
        """Return the versions of a node, newest first."""
        rows = self._db.all(
            "SELECT key, size, mtime, etag FROM versions WHERE node_id = ? ORDER BY seq DESC",
            (node_id,),
        )
        return [self._version(node_id, row) for row in rows]

    def get(self, node_id: str, key: str) -> Version | None:
        """Return one version of a node, or None."""
        row = self._db.one(
            "SELECT key, size, mtime, etag FROM versions WHERE node_id = ? AND key = ?",
            (node_id, key),
        )
        return None if row is None else self._version(node_id, row)

    def drop(self, node_ids: list[str]) -> list[Path]:
        """Forget the versions of deleted nodes; return their folders to remove."""
        for node_id in node_ids:
            self._db.execute("DELETE FROM versions WHERE node_id = ?", (node_id,))
        return [self.root / node_id for node_id in node_ids]

    def _version(self, node_id: str, row: sqlite3.Row) -> Version:
        return Version(
            key=row["key"], size=row["size"], mtime=row["mtime"], etag=row["etag"],
            path=self.root / node_id / row["key"],
        )


def preserve(src: Path, dst: Path) -> None:
    """Keep the current content of ``src`` at ``dst`` (hard link, else copy). Blocking."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_trees(paths: list[Path]) -> None:
    """Remove version folders of deleted nodes. Blocking."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
