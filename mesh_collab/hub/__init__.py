"""JupyterHub for a site: CS3 logins, and one single-user server per user that is a mesh node.

``c.JupyterHub.authenticator_class = "mesh-collab"`` selects :class:`CS3Authenticator`
(see ``docs/deploy.md``). The hub keeps each user's CS3 token in its encrypted auth state,
never the password, renews it before it expires, and hands it to that user's server only.
"""

from mesh_collab.hub.authenticator import CS3Authenticator, exchange_oidc_token

__all__ = ["CS3Authenticator", "exchange_oidc_token"]
