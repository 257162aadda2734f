"""Who a browser is inside a JupyterHub single-user server: the server's owner, or nobody.

``jupyterhub-singleuser`` authenticates requests with the hub (OAuth, its token or
cookie). Such a server is a mesh node acting for one user, with that user's CS3 token
(handed over by :class:`mesh_collab.hub.CS3Authenticator` in ``MESH_COLLAB_CS3_TOKEN``):
:class:`HubIdentityProvider` lets in the hub user whose name is that CS3 user's, as a
:class:`~.identity.MeshUser` (site, CS3 id) with the node's session, and refuses (403)
anybody else the hub would let in (an admin, a user the server is shared with), who would
otherwise act with the owner's CS3 token.

``MeshCollabApp`` uses it in place of JupyterHub's provider when it finds that one
configured (see ``_link_jupyter_server_extension``).
"""

# jupyterhub and jupyter_server are untyped.
# mypy: disable-error-code="no-untyped-call,misc"

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_server.auth.identity import User
from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
from tornado import web

from mesh_collab.jupyter.identity import MeshUser, current_session, identity_model

if TYPE_CHECKING:
    from mesh_collab.jupyter.app import MeshState


class HubIdentityProvider(JupyterHubIdentityProvider):
    """JupyterHub's identity provider, narrowed to the server's own CS3 user."""

    _state: MeshState | None = None

    def attach(self, state: MeshState) -> None:
        """Connect the provider to the node's state (done by ``MeshCollabApp``)."""
        self._state = state

    async def get_user(self, handler: web.RequestHandler) -> User | None:
        current_session.set(None)
        hub_user = await super().get_user(handler)
        if hub_user is None or self._state is None:
            return None
        await self._state.wait_ready()
        session = self._state.sessions.default
        if session is None or session.user is None:
            return None
        if session.user.username != hub_user.username:
            self.log.warning("op=login refused hub_user=%s: this server acts for user=%s only",
                             hub_user.username, session.user.username)
            raise web.HTTPError(403, "this server belongs to another user")
        user = MeshUser.from_session(session, site=self._state.site)
        user.hub_user = hub_user.hub_user  # type: ignore[attr-defined]  # JupyterHubAuthorizer
        current_session.set(session)
        return user

    def identity_model(self, user: User) -> dict[str, Any]:
        return identity_model(user)
