"""User look-ups: by id, by claim, and search (FindUsers).

GetUser and GetUserByClaim are unprotected in Reva's gateway (``UnprotectedEndpoints``); they
still travel with the session's token here, which Reva accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cs3.identity.user.v1beta1 import user_api_pb2 as ua

from mesh_collab.cs3.models import User, UserId

if TYPE_CHECKING:
    from mesh_collab.cs3.client import Session


class Users:
    """User look-ups of one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def get(self, user_id: UserId) -> User:
        """Return the user with this id.

        Raises:
            NotFound: no such user.
        """
        req = ua.GetUserRequest(user_id=user_id.to_proto(), skip_fetching_user_groups=True)
        res = await self._session.call("GetUser", req, ref=user_id.opaque_id)
        return User.from_proto(res.user)

    async def by_claim(self, claim: str, value: str) -> User:
        """Return the user whose ``claim`` (``"username"``, ``"mail"``, ``"userid"``) is ``value``.

        Raises:
            NotFound: no such user.
        """
        req = ua.GetUserByClaimRequest(claim=claim, value=value, skip_fetching_user_groups=True)
        res = await self._session.call("GetUserByClaim", req, ref=value)
        return User.from_proto(res.user)

    async def find(self, query: str) -> list[User]:
        """Search users whose name, display name or mail contains ``query``.

        Reva master requires a TYPE_QUERY filter, so one is always sent.
        """
        req = ua.FindUsersRequest(
            filters=[ua.Filter(type=ua.Filter.TYPE_QUERY, query=query)],
            skip_fetching_user_groups=True,
        )
        res = await self._session.call("FindUsers", req, ref=query)
        return [User.from_proto(u) for u in res.users]
