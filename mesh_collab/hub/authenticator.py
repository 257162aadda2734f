"""A JupyterHub authenticator that logs users in with the site's CS3 gateway.

The login form's user name and password go to the gateway's ``Authenticate`` (``basic``);
with ``login_type = "bearer"`` the password field holds an access token instead, exchanged
as Reva's OIDC auth manager accepts it. What the hub keeps is the gateway's answer, in the
user's auth state (JupyterHub encrypts it; ``enable_auth_state`` is required):

``cs3_token``
    the user's CS3 access token (a Reva JWT);
``cs3_token_expires``
    when it expires (unix seconds; 0 when the token says nothing);
``cs3_user_id``
    ``"<idp>/<opaque id>"``, the user's CS3 identity.

Never the password: it is used for the one ``Authenticate`` call and dropped. Before a
spawn, and whenever the auth state is older than ``auth_refresh_age``, :meth:`refresh_user`
exchanges the token for a new one of the same login (``bearer``) when it expires within
``renew_margin``; once the gateway refuses (the login reached its maximum age), the user
logs in again. :meth:`pre_spawn_start` puts the token, the gateway, its CA and the site into
the spawner's environment, so that the user's server (``jupyterhub-singleuser`` with the
mesh_collab extension) is a mesh node acting for that user alone; that server renews its
copy of the token itself.

For an OIDC login (SWAN: Keycloak through ``GenericOAuthenticator``), the access token the
OAuth flow gets is exchanged the same way by :func:`exchange_oidc_token`, used as the OAuth
authenticator's ``post_auth_hook``, and :func:`spawner_environment` as the spawner's
``auth_state_hook`` (``docs/deploy.md``).
"""

# jupyterhub and tornado are untyped.
# mypy: disable-error-code="no-untyped-call,misc"

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import CaselessStrEnum, Float, Unicode, default

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, token_expiry
from mesh_collab.cs3.filesystem import CA_ENV as GATEWAY_CA_ENV
from mesh_collab.cs3.filesystem import GATEWAY_ENV, TOKEN_ENV
from mesh_collab.hub.nodes import HubNodes

#: The site's name, for the user's server (``MeshCollabApp.site``'s fallback).
SITE_ENV = "MESH_COLLAB_SITE"


def _auth_state(token: str, user: Any) -> dict[str, Any]:
    """The auth state of one CS3 login (see the module docstring)."""
    return {
        "cs3_token": token,
        "cs3_token_expires": token_expiry(token),
        "cs3_user_id": f"{user.id.idp}/{user.id.opaque_id}",
    }


async def _exchange(
    gateway: str, ca_file: str, auth_type: str, client_id: str, secret: str
) -> tuple[str, Any]:
    """One ``Authenticate`` call on a client made for it."""
    async with CS3Client(gateway, ca_file=ca_file or None) as cs3:
        return await cs3.authenticate(auth_type, client_id, secret)


class CS3Authenticator(Authenticator):
    """Log in to JupyterHub with the site's CS3 gateway (see the module docstring)."""

    gateway = Unicode(
        help="""gRPC address of the site's CS3 gateway: "grpcs://host:port" (TLS) or
        "host:port" (plaintext, loopback only). Default MESH_COLLAB_GATEWAY, or
        "127.0.0.1:19000". Passed on to every user's server.""",
    ).tag(config=True)

    gateway_ca = Unicode(
        help="""CA bundle (PEM) that the gateway's certificate is verified with; "" for the
        default roots. Default MESH_COLLAB_GATEWAY_CA. Passed on to every user's server,
        which must be able to read the file.""",
    ).tag(config=True)

    site = Unicode(
        help="""This site's name, given to every user's server (MeshCollabApp.site).
        Default MESH_COLLAB_SITE, or "site-a".""",
    ).tag(config=True)

    login_type = CaselessStrEnum(
        ["basic", "bearer"],
        default_value="basic",
        help="""What the login form's password field holds: "basic", the user's CS3
        password; "bearer", an access token that the gateway exchanges (Reva's OIDC auth
        manager); the user name must then match the token's user.""",
    ).tag(config=True)

    renew_margin = Float(
        600.0,
        help="""Renew a user's CS3 token when it expires within this many seconds (at a
        spawn, and when auth_refresh_age has passed).""",
    ).tag(config=True)

    mesh_directory = Unicode(
        "",
        help="""The mesh directory file the hub keeps, listing every user's server as a node
        of this site (its id is the user name, its URL node_url, its key one the hub makes
        and hands over at each spawn). Servers read it (MESH_COLLAB_PEERS), so that a
        user's server links to the one holding a notebook's Reva lock. "": user servers are
        no mesh nodes of each other.""",
    ).tag(config=True)

    mesh_keys_dir = Unicode(
        "",
        help="""Where the hub keeps the user servers' private node keys (0700; default
        node-keys/ beside mesh_directory). Only the hub reads it.""",
    ).tag(config=True)

    mesh_sites = Unicode(
        "",
        help="""A mesh directory file with the other sites' entries, copied into
        mesh_directory after this site's entry. "": this site only.""",
    ).tag(config=True)

    domain = Unicode(
        "",
        help="""This site's CS3/OCM domain (what OCM shares from this site name as the
        owner's provider), for its directory entry.""",
    ).tag(config=True)

    node_url = Unicode(
        help="""A user server's URL as the other nodes reach it, with {username}. Default:
        the hub's public URL (or bind URL) followed by user/{username}/.""",
    ).tag(config=True)

    @default("node_url")
    def _default_node_url(self) -> str:
        hub = self.parent
        base = getattr(hub, "public_url", "") or getattr(hub, "bind_url", "") or (
            "http://127.0.0.1:8000/")
        return base.rstrip("/") + "/user/{username}/"

    @default("gateway")
    def _default_gateway(self) -> str:
        return os.environ.get(GATEWAY_ENV) or "127.0.0.1:19000"

    @default("gateway_ca")
    def _default_gateway_ca(self) -> str:
        return os.environ.get(GATEWAY_CA_ENV, "")

    @default("site")
    def _default_site(self) -> str:
        return os.environ.get(SITE_ENV) or "site-a"

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self) -> bool:
        return True  # a server never starts with a token about to expire

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.enable_auth_state:
            # Without it the token would have nowhere to live but a password would.
            raise ValueError(
                "mesh-collab authenticator: set c.Authenticator.enable_auth_state = True "
                "(and JUPYTERHUB_CRYPT_KEY): the user's CS3 token lives in the auth state"
            )
        # Fail at start, not at the first login, on a bad address or CA file.
        CS3Client(self.gateway, ca_file=self.gateway_ca or None)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> dict[str, Any] | None:
        """Check the form's credentials with the gateway; None when they are refused."""
        username = (data.get("username") or "").strip()
        secret = data.get("password") or ""
        if not username or not secret:
            return None
        try:
            token, user = await _exchange(
                self.gateway, self.gateway_ca, self.login_type, username, secret
            )
        except (errors.PermissionDenied, errors.NotFound, errors.Unauthenticated):
            self.log.info("CS3 login refused for user=%s", username)
            return None  # one answer for an unknown user and a wrong password
        except errors.StorageError as exc:
            self.log.warning("CS3 login of user=%s failed: %s", username, exc.code)
            raise web.HTTPError(503, "the storage service cannot be reached; try again") from None
        if self.login_type == "bearer" and user.username != username:
            self.log.info("CS3 token of user=%s presented as user=%s", user.username, username)
            return None
        return {"name": user.username, "auth_state": _auth_state(token, user)}

    async def refresh_user(self, user: Any, handler: Any = None) -> bool | dict[str, Any]:
        """Renew the user's CS3 token when it expires within ``renew_margin``.

        Returns True (still good), a new auth state, or False (log in again).
        """
        state = await user.get_auth_state()
        if not state or not state.get("cs3_token"):
            return False
        expires = float(state.get("cs3_token_expires") or 0.0)
        now = time.time()
        if not expires or expires - now > self.renew_margin:
            return True
        try:
            token, cs3_user = await _exchange(
                self.gateway, self.gateway_ca, "bearer", "", state["cs3_token"]
            )
        except errors.StorageUnavailable:
            return expires > now  # the gateway is away: what is left of the token serves
        except errors.StorageError as exc:
            self.log.info("CS3 token of user=%s not renewed (%s)", user.name, exc.code)
            return False
        if token_expiry(token) <= expires:
            # Past the login's maximum age, the exchange no longer extends the token.
            return expires - now > 60.0
        self.log.info("CS3 token of user=%s renewed", user.name)
        return {"auth_state": {**state, **_auth_state(token, cs3_user)}}

    async def pre_spawn_start(self, user: Any, spawner: Any) -> None:
        """Give the user's server this user's CS3 session (and nothing of anybody else's)."""
        state = await user.get_auth_state()
        if not state or not state.get("cs3_token"):
            raise web.HTTPError(403, "no CS3 session for this user: log in again")
        env = spawner_environment(state, gateway=self.gateway, gateway_ca=self.gateway_ca,
                                  site=self.site)
        if self.mesh_directory:
            env.update(self._nodes().environment(user.name, state.get("cs3_user_id", "")))
        spawner.environment.update(env)

    def _nodes(self) -> HubNodes:
        directory = Path(self.mesh_directory)
        return HubNodes(
            site=self.site, domain=self.domain, url_template=self.node_url,
            directory=directory,
            keys_dir=Path(self.mesh_keys_dir) if self.mesh_keys_dir
            else directory.with_name("node-keys"),
            sites_file=Path(self.mesh_sites) if self.mesh_sites else None,
        )


def spawner_environment(
    auth_state: dict[str, Any], *, gateway: str, gateway_ca: str = "", site: str = ""
) -> dict[str, str]:
    """The environment that makes a single-user server a mesh node of ``auth_state``'s user.

    Raises:
        KeyError: the auth state holds no CS3 token.
    """
    env = {TOKEN_ENV: auth_state["cs3_token"], GATEWAY_ENV: gateway}
    if gateway_ca:
        env[GATEWAY_CA_ENV] = str(Path(gateway_ca).absolute())
    if site:
        env[SITE_ENV] = site
    return env


def exchange_oidc_token(
    gateway: str, gateway_ca: str = ""
) -> Callable[[Any, Any, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """A ``post_auth_hook`` for an OAuth authenticator: exchange its access token for CS3's.

    The OAuth flow's ``auth_state["access_token"]`` (Keycloak's, for SWAN) goes to the
    gateway's ``bearer`` ``Authenticate``; the CS3 token is added to the auth state (the keys
    of the module docstring). A refused token refuses the login.
    """

    async def hook(authenticator: Any, handler: Any, auth_model: dict[str, Any]) -> dict[str, Any]:
        state = auth_model.get("auth_state") or {}
        access_token = state.get("access_token") or ""
        if not access_token:
            raise web.HTTPError(403, "the identity provider gave no access token")
        try:
            token, user = await _exchange(gateway, gateway_ca, "bearer", "", access_token)
        except errors.StorageError as exc:
            authenticator.log.info("CS3 exchange refused for %s (%s)", auth_model.get("name"),
                                   exc.code)
            raise web.HTTPError(403, "the storage service refused this login") from None
        auth_model["auth_state"] = {**state, **_auth_state(token, user)}
        return auth_model

    return hook
