"""Same-site shares (spec §1.8): rows of the ``shares`` table, and the access they grant.

A share grants its permissions on its resource and on everything below it. Reva adds the
storage grant when the share is created, so a share gives access whatever its state
(PENDING, ACCEPTED, REJECTED): the state only matters for the recipient's share listing.
"""

from __future__ import annotations

import sqlite3
import time
import uuid

from cs3.sharing.collaboration.v1beta1 import resources_pb2 as collab_res
from cs3.storage.provider.v1beta1 import resources_pb2 as res

from .db import MetaDB
from .status import ALREADY_EXISTS, GatewayError


class ShareStore:
    """The ``shares`` table."""

    def __init__(self, db: MetaDB) -> None:
        self._db = db

    def create(
        self, *, node_id: str, owner: str, creator: str, grantee: str,
        permissions: res.ResourcePermissions, expiration: float | None,
    ) -> sqlite3.Row:
        """Store a new PENDING share and return its row.

        Raises:
            GatewayError: ALREADY_EXISTS if the grantee already has a share of the resource.
        """
        share_id = str(uuid.uuid4())
        now = time.time()
        with self._db.transaction():
            if self.by_key(node_id, grantee) is not None:
                raise GatewayError(ALREADY_EXISTS, "share already exists")
            self._db.execute(
                "INSERT INTO shares (id, node_id, owner, creator, grantee, permissions, ctime, "
                "mtime, expiration, state, hidden) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (share_id, node_id, owner, creator, grantee, permissions.SerializeToString(),
                 now, now, expiration, collab_res.SHARE_STATE_PENDING),
            )
        row = self.get(share_id)
        assert row is not None
        return row

    def get(self, share_id: str) -> sqlite3.Row | None:
        """Return a share by id."""
        return self._db.one("SELECT * FROM shares WHERE id = ?", (share_id,))

    def by_key(self, node_id: str, grantee: str) -> sqlite3.Row | None:
        """Return the share of a resource with a grantee."""
        return self._db.one(
            "SELECT * FROM shares WHERE node_id = ? AND grantee = ?", (node_id, grantee)
        )

    def created_by(self, user: str) -> list[sqlite3.Row]:
        """Return the shares a user owns or created, oldest first."""
        return self._db.all(
            "SELECT * FROM shares WHERE owner = ? OR creator = ? ORDER BY ctime", (user, user)
        )

    def received_by(self, user: str) -> list[sqlite3.Row]:
        """Return the shares granted to a user, oldest first."""
        return self._db.all("SELECT * FROM shares WHERE grantee = ? ORDER BY ctime", (user,))

    def update_permissions(self, share_id: str, permissions: res.ResourcePermissions) -> None:
        """Replace the permissions of a share."""
        self._db.execute(
            "UPDATE shares SET permissions = ?, mtime = ? WHERE id = ?",
            (permissions.SerializeToString(), time.time(), share_id),
        )

    def update_received(self, share_id: str, *, state: int | None, hidden: bool | None) -> None:
        """Update the recipient-side state and hidden flag of a share."""
        if state is not None:
            self._db.execute("UPDATE shares SET state = ? WHERE id = ?", (state, share_id))
        if hidden is not None:
            self._db.execute("UPDATE shares SET hidden = ? WHERE id = ?", (int(hidden), share_id))

    def delete(self, share_id: str) -> None:
        """Remove a share."""
        self._db.execute("DELETE FROM shares WHERE id = ?", (share_id,))

    def drop_for_nodes(self, node_ids: list[str]) -> None:
        """Remove the shares of purged resources (a resource in the recycle bin keeps them:
        they give no access while it is there, and work again once it is restored)."""
        for node_id in node_ids:
            self._db.execute("DELETE FROM shares WHERE node_id = ?", (node_id,))
            self._db.execute("DELETE FROM ocm_sent WHERE node_id = ?", (node_id,))

    def grants(self, user: str, node_ids: list[str]) -> list[res.ResourcePermissions]:
        """Return the permissions that shares of any of ``node_ids`` grant to ``user``."""
        return [perms for _, perms in self.grants_by_node(user, node_ids)]

    def grants_by_node(
        self, user: str, node_ids: list[str]
    ) -> list[tuple[str, res.ResourcePermissions]]:
        """Return ``(node id, permissions)`` of the live shares of ``node_ids`` to ``user``."""
        if not node_ids:
            return []
        marks = ",".join("?" * len(node_ids))
        now = time.time()
        rows = self._db.all(
            f"SELECT node_id, permissions, expiration FROM shares WHERE grantee = ? "
            f"AND node_id IN ({marks})",
            [user, *node_ids],
        )
        return [
            (str(row["node_id"]), permissions_of(row))
            for row in rows
            if row["expiration"] is None or row["expiration"] > now
        ]


def permissions_of(row: sqlite3.Row) -> res.ResourcePermissions:
    """Decode the permissions column of a share row."""
    perms = res.ResourcePermissions()
    perms.ParseFromString(row["permissions"])
    return perms
