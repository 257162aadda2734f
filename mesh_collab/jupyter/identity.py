"""Who a browser is: Jupyter users backed by CS3 users, and their CS3 sessions.

Two modes (``MeshCollabApp.auth_mode``):

* **single-user** (default): the browser authenticates with the normal Jupyter token (or the
  login cookie the token sets), exactly as with the stock ``IdentityProvider``; the identity is
  the CS3 user of the node's configured credentials (``cs3_username``/``cs3_password`` or
  ``cs3_token``), logged in once at start-up.
* **multi-user**: ``/login`` is a small form (user name and password). A POST authenticates
  against the CS3 gateway (``Authenticate`` through :meth:`CS3Client.login`); on success the
  node keeps the user's CS3 :class:`~mesh_collab.cs3.client.Session` in :class:`Sessions` and
  sets a signed cookie holding the user name and a random session key, never the password. The
  Jupyter token identifies nobody in this mode. ``/logout`` clears the cookie and forgets the
  session key. A login ends after ``CS3IdentityProvider.session_max_age`` (12 h), after
  ``session_idle_timeout`` (2 h) without a request, and when the user's CS3 token expires
  and cannot be renewed (the node keeps no password): its cookie then identifies nobody, so
  pages redirect to ``/login`` and API requests and websocket handshakes answer 403.

:class:`MeshUser` is what ``/api/me`` returns and what collaborators see in awareness: the
Jupyter ``User`` fields plus ``site`` and ``cs3_user_id`` (``"<idp>/<opaque id>"``).

Request handlers get the CS3 session of their user with :func:`session_for`; the contents
manager, which jupyter_server shares between all users, gets it from :data:`current_session`,
a context variable that :meth:`CS3IdentityProvider.get_user` sets for the request's task.

No password, token or session key is ever logged.
"""

# jupyter_server and nbformat are untyped: calling into them is not an error here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import html
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.auth.login import LoginFormHandler
from jupyter_server.auth.logout import LogoutHandler
from tornado import web
from traitlets import Float, TraitError, default, observe, validate

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.rooms import valid_color
from mesh_collab.throttle import LoginThrottle

if TYPE_CHECKING:
    from mesh_collab.jupyter.app import MeshState

#: The CS3 session of the user of the request being handled (None outside requests or for an
#: unauthenticated one). Tornado runs a handler's ``prepare`` and its method in one task, and
#: each request in a task of its own, so the value never leaks from one request to another.
current_session: ContextVar[Session | None] = ContextVar("mesh_collab_session", default=None)


@dataclass
class MeshUser(User):
    """A Jupyter user backed by a CS3 user.

    ``/api/me`` serialises every dataclass field, so ``site`` and ``cs3_user_id`` reach the
    browser (and the collaborators' awareness) unchanged.
    """

    #: The site (``MeshCollabApp.site``) whose node authenticated this user.
    site: str = ""
    #: The CS3 user id, ``"<idp>/<opaque id>"`` (split with ``rpartition("/")``).
    cs3_user_id: str = ""
    #: The key of the login this user came with (multi-user mode); kept out of ``/api/me``.
    session_key: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_session(cls, session: Session, *, site: str, session_key: str = "") -> MeshUser:
        """Build the user of a CS3 session.

        Raises:
            RuntimeError: the session does not know its user.
        """
        cs3_user = session.user
        if cs3_user is None:
            raise RuntimeError("the CS3 session does not know its user")
        name = cs3_user.display_name or cs3_user.username
        return cls(
            username=cs3_user.username,
            name=name,
            display_name=name,
            initials="".join(w[0] for w in name.split()[:2]).upper() or None,
            site=site,
            cs3_user_id=f"{cs3_user.id.idp}/{cs3_user.id.opaque_id}",
            session_key=session_key,
        )


#: How long a multi-user login lasts at most, and without a request (seconds; defaults of
#: the identity provider's settings).
SESSION_MAX_AGE = 12 * 3600.0
SESSION_IDLE_TIMEOUT = 2 * 3600.0


@dataclass(slots=True)
class _Login:
    """One browser login: whose, when it began, when it was last used (``Sessions.clock``)."""

    username: str
    started: float
    seen: float


class Sessions:
    """The CS3 sessions of the node's users: one per user name, so one token renewal each.

    In single-user mode :attr:`default` is the session of the configured credentials. In
    multi-user mode each successful login adds a key (a random string kept in the login
    cookie) for the user's one session; logging out removes the key, and the session goes
    when its last key goes. A key also goes ``max_age`` seconds after its login, and
    ``idle_timeout`` seconds after it was last looked up (0: no such limit).

    Usage::

        key = sessions.add(await cs3.login("einstein", "relativity"))
        session = sessions.for_key("einstein", key)

    Args:
        max_age: the longest a login lasts, in seconds.
        idle_timeout: how long a login lasts without being looked up, in seconds.
        clock: the time source (``time.monotonic``); tests pass a fake one.
        log: the logger; default this module's.
    """

    def __init__(
        self,
        *,
        max_age: float = SESSION_MAX_AGE,
        idle_timeout: float = SESSION_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self._by_user: dict[str, Session] = {}
        self._keys: dict[str, _Login] = {}  # session key -> its login
        self.default: Session | None = None
        self.max_age = max_age
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.log = log or logging.getLogger(__name__)

    def set_lifetimes(self, *, max_age: float, idle_timeout: float) -> None:
        """Set the two limits of a login (seconds, 0: none); they apply to existing ones."""
        self.max_age = max_age
        self.idle_timeout = idle_timeout

    def set_default(self, session: Session) -> None:
        """Make ``session`` the single-user session."""
        if session.user is None:
            raise RuntimeError("the CS3 session does not know its user")
        self.default = session
        self._by_user[session.user.username] = session

    def add(self, session: Session) -> str:
        """Register a logged-in session and return a new session key for it.

        If the user already has a session, that one is kept (rooms may hold it) and the new
        one is dropped: the login only proved the password again. Logins past their limits
        are forgotten first.
        """
        if session.user is None:
            raise RuntimeError("the CS3 session does not know its user")
        now = self.clock()
        for key, login in list(self._keys.items()):
            if self._ended(login, now):
                self._expire(key, login, now)
        username = session.user.username
        self._by_user.setdefault(username, session)
        key = secrets.token_urlsafe(32)
        self._keys[key] = _Login(username, now, now)
        return key

    def get(self, username: str) -> Session | None:
        """Return the session of ``username``, if logged in."""
        return self._by_user.get(username)

    def for_key(self, username: str, key: str) -> Session | None:
        """Return the session of ``username`` if ``key`` is one of its live session keys.

        The lookup counts as activity of that login (see ``idle_timeout``).
        """
        login = self._keys.get(key) if key else None
        if login is None or login.username != username:
            return None
        now = self.clock()
        if self._ended(login, now):
            self._expire(key, login, now)
            return None
        login.seen = now
        return self._by_user.get(username)

    def remove_key(self, key: str) -> None:
        """Forget a session key (logout); drop the user's session when no key is left."""
        login = self._keys.pop(key, None)
        if login is None:
            return
        username = login.username
        default_user = self.default.user.username if self.default and self.default.user else None
        if username != default_user and not any(
            other.username == username for other in self._keys.values()
        ):
            self._by_user.pop(username, None)

    def end_user(self, username: str) -> None:
        """End every login of ``username`` (their CS3 session can no longer be used)."""
        for key in [k for k, login in self._keys.items() if login.username == username]:
            self.remove_key(key)

    def _ended(self, login: _Login, now: float) -> bool:
        return bool(
            (self.max_age and now - login.started >= self.max_age)
            or (self.idle_timeout and now - login.seen >= self.idle_timeout)
        )

    def _expire(self, key: str, login: _Login, now: float) -> None:
        reason = (
            "max-age" if self.max_age and now - login.started >= self.max_age else "idle"
        )
        self.remove_key(key)
        self.log.info("op=login ended user=%s reason=%s", login.username, reason)

    def __contains__(self, username: object) -> bool:
        return username in self._by_user

    def __len__(self) -> int:
        return len(self._by_user)

    def __repr__(self) -> str:
        return f"Sessions(users={sorted(self._by_user)!r})"


def mesh_state(handler: web.RequestHandler) -> MeshState:
    """Return the mesh_collab state of the server that ``handler`` belongs to.

    Raises:
        HTTPError: 503 when the mesh_collab extension is not loaded.
    """
    state = handler.settings.get("mesh_collab")
    if state is None or not hasattr(state, "sessions"):
        raise web.HTTPError(503, "the mesh_collab extension is not loaded")
    return state  # type: ignore[no-any-return]


def session_for(handler: web.RequestHandler) -> Session:
    """Return the CS3 session of the user of ``handler``'s request.

    Call it after authentication (in a handler method, or in ``prepare`` after
    ``super().prepare()``).

    Raises:
        HTTPError: 401 when the request has no user with a live CS3 session.
    """
    user = handler.current_user
    if not isinstance(user, MeshUser):
        raise web.HTTPError(401, "no CS3 session for this request")
    sessions = mesh_state(handler).sessions
    session = sessions.for_key(user.username, user.session_key) or (
        sessions.default
        if sessions.default is not None
        and sessions.default.user is not None
        and sessions.default.user.username == user.username
        else None
    )
    if session is None:
        raise web.HTTPError(401, "no CS3 session for this request")
    return session


class CS3IdentityProvider(IdentityProvider):
    """Identifies browsers as CS3 users (see the module docstring for the two modes).

    The mesh_collab app attaches its state (:meth:`attach`) when it initialises; until the
    node has logged in to CS3, requests wait up to ``rpc_timeout`` and then get 503.
    """

    _state: MeshState | None = None
    _overrides: dict[str, dict[str, str]]

    session_max_age = Float(
        SESSION_MAX_AGE,
        config=True,
        help="""Multi-user mode: the longest a login lasts, in seconds, however active its
        browser (default 43200: 12 h). Then the login cookie identifies nobody: pages
        redirect to /login, API requests and websocket handshakes answer 403, until the user
        logs in again. Open websockets are not closed. 0: no limit.""",
    )
    session_idle_timeout = Float(
        SESSION_IDLE_TIMEOUT,
        config=True,
        help="""Multi-user mode: a login ends after this many seconds without a request
        from its browser (default 7200: 2 h), as after session_max_age. An open JupyterLab
        polls the server, so a browser showing it is never idle. 0: no limit.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._overrides = {}  # user name -> fields set with PATCH /api/me

    @validate("session_max_age", "session_idle_timeout")
    def _valid_lifetime(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not math.isfinite(value) or value < 0:
            raise TraitError(
                f"{proposal['trait'].name} must be a number of seconds, 0 or more: {value!r}"
            )
        return value

    @observe("session_max_age", "session_idle_timeout")
    def _lifetimes_changed(self, change: Any) -> None:
        if self._state is not None:
            self._push_lifetimes(self._state)

    def _push_lifetimes(self, state: MeshState) -> None:
        state.sessions.set_lifetimes(
            max_age=self.session_max_age, idle_timeout=self.session_idle_timeout
        )

    @default("login_handler_class")
    def _default_login_handler_class(self) -> type[web.RequestHandler]:
        return CS3LoginHandler

    @default("logout_handler_class")
    def _default_logout_handler_class(self) -> type[web.RequestHandler]:
        return CS3LogoutHandler

    def attach(self, state: MeshState) -> None:
        """Connect the provider to the node's state (done by ``MeshCollabApp``)."""
        self._state = state
        self._push_lifetimes(state)

    @property
    def state(self) -> MeshState:
        """The node's state (503 before the app attached it)."""
        if self._state is None:
            raise web.HTTPError(503, "the mesh_collab extension is not initialised")
        return self._state

    @property
    def multi_user(self) -> bool:
        """Whether browsers log in with CS3 credentials (``auth_mode`` "multi-user")."""
        return bool(self.state.config.auth_mode == "multi-user")

    async def get_user(self, handler: web.RequestHandler) -> User | None:
        """Authenticate the request and set :data:`current_session` for it."""
        state = self.state
        if not self.multi_user:
            await state.wait_ready()
        user = await self._get_user(handler)
        session = None
        if isinstance(user, MeshUser):
            sessions = state.sessions
            logged_in = self.multi_user and bool(user.session_key)
            session = (
                sessions.for_key(user.username, user.session_key)
                if logged_in
                else sessions.default
            )
            if session is not None and logged_in and not await _usable(session):
                # The CS3 token expired and cannot be renewed: the user logs in again.
                sessions.end_user(user.username)
                self.clear_login_cookie(handler)
                self.log.info("op=login ended user=%s site=%s reason=cs3-token",
                              user.username, state.site)
                session = None
        if session is None:
            current_session.set(None)
            return None
        current_session.set(session)
        return user

    # -- tokens and cookies ---------------------------------------------------------------

    async def get_user_token(self, handler: web.RequestHandler) -> User | None:
        # The Jupyter token stands for the node's default CS3 user (always there in
        # single-user mode; in multi-user mode only when credentials are configured).
        if self.state.sessions.default is None:
            return None
        return await super().get_user_token(handler)

    def generate_anonymous_user(self, handler: web.RequestHandler) -> User:
        """Whoever holds the Jupyter token is the node's default CS3 user."""
        default_session = self.state.sessions.default
        if default_session is None:
            raise web.HTTPError(401, "no CS3 identity for this request")
        return self._user_for(default_session)

    def process_login_form(self, handler: web.RequestHandler) -> User | None:
        """Single-user mode's ``/login`` form: the Jupyter token as password.

        (jupyter_server's base class calls a ``user_for_token`` that only some subclasses
        have; the identity behind a valid token is the node's CS3 user.)
        """
        typed = handler.get_argument("password", default="")
        if self.multi_user or not self.token or not hmac.compare_digest(typed, self.token):
            return None
        return self.generate_anonymous_user(handler)

    def user_to_cookie(self, user: User) -> str:
        key = user.session_key if isinstance(user, MeshUser) else ""
        if not key and self.multi_user:
            # The Jupyter token logged in the node's default user (the tokenized link): the
            # cookie gets a session key of its own, as a form login would, so the browser's
            # next requests and websockets (which carry the cookie, not the token) are
            # that user's too, and logging out ends just this login.
            default_session = self.state.sessions.default
            if default_session is not None and default_session.user is not None:
                if default_session.user.username == user.username:
                    key = self.state.sessions.add(default_session)
        return json.dumps({"username": user.username, "key": key})

    def user_from_cookie(self, cookie_value: str) -> User | None:
        data = json.loads(cookie_value)
        username, key = str(data.get("username", "")), str(data.get("key", ""))
        sessions = self.state.sessions
        if self.multi_user:
            session = sessions.for_key(username, key)
            return None if session is None else self._user_for(session, key)
        default_session = sessions.default
        if default_session is None or default_session.user is None:
            return None
        if default_session.user.username != username:
            return None
        return self._user_for(default_session)

    def _user_for(self, session: Session, key: str = "") -> MeshUser:
        user = MeshUser.from_session(session, site=self.state.site, session_key=key)
        for name, value in self._overrides.get(user.username, {}).items():
            setattr(user, name, value)
        return user

    def page_config_hook(self, handler: web.RequestHandler, page_config: dict[str, Any]
                         ) -> dict[str, Any]:
        """JupyterLab's page config, without the Jupyter token in multi-user mode.

        JupyterLab writes the server's token into every page it serves, and its frontend
        sends it with every request. In multi-user mode the token stands for the node's
        default user: a page served to marie would act as einstein. Her page's requests
        carry her login cookie instead (and its ``_xsrf``), as with a password login.
        """
        if self._state is not None and self.multi_user:
            page_config["token"] = ""
        return page_config

    # -- /api/me ----------------------------------------------------------------------------

    def identity_model(self, user: User) -> dict[str, Any]:
        return identity_model(user)

    def update_user_model(self, current_user: User, user_data: dict[str, str]) -> User:  # type: ignore[override]
        """Apply ``PATCH /api/me`` fields (``updatable_fields``) for this node's lifetime.

        Raises:
            ValueError: ``color`` is neither a CSS hex color (``#rgb`` to ``#rrggbbaa``)
                nor empty (no color); the server answers 400 and changes nothing.
        """
        color = user_data.get("color")
        if color not in (None, "") and not valid_color(color):
            raise ValueError(f"color must be a hex color like #1a2b3c: {str(color)[:64]!r}")
        kept = self._overrides.setdefault(current_user.username, {})
        for name in self.updatable_fields:
            if name in user_data:
                setattr(current_user, name, user_data[name])
                kept[name] = user_data[name]
        return current_user

    def persist_user_model(self, handler: web.RequestHandler) -> None:
        """Nothing to persist: the overrides live in memory, keyed by user name."""

    # -- multi-user login -------------------------------------------------------------------

    async def login(self, username: str, password: str) -> MeshUser:
        """Authenticate at the CS3 gateway and register the session.

        Raises:
            PermissionDenied, NotFound, Unauthenticated: wrong user name or password.
            StorageUnavailable: the gateway cannot be reached.
        """
        state = self.state
        await state.wait_ready()
        async with asyncio.timeout(state.config.rpc_timeout):
            session = await state.cs3.login(username, password)
        key = state.sessions.add(session)
        kept = state.sessions.get(username) or session
        if kept is not session:
            # The rooms holding the user's session go on with this login's token.
            kept.adopt(session)
        self.log.info("op=login user=%s site=%s", username, state.site)
        return self._user_for(kept, key)

    def logout(self, handler: web.RequestHandler) -> None:
        """Forget the session key of the request's login (multi-user mode)."""
        user = handler.current_user
        if isinstance(user, MeshUser) and user.session_key and self._state is not None:
            self._state.sessions.remove_key(user.session_key)
            self.log.info("op=logout user=%s site=%s", user.username, self._state.site)


def identity_model(user: User) -> dict[str, Any]:
    """What ``/api/me`` says of ``user``: every field of a :class:`MeshUser` but its login's
    session key."""
    model = dataclasses.asdict(user)
    model.pop("session_key", None)
    return model


async def _usable(session: Session) -> bool:
    """Whether the session still has a token (renewing it when due)."""
    try:
        await session.tokens.token()
    except errors.Unauthenticated:
        return False
    return True


_FORM = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mesh_collab: log in</title>
<style>body{{font-family:sans-serif;max-width:22em;margin:4em auto}}
label,input,button{{display:block;width:100%;margin:.3em 0}}
.error{{color:#b00020}}</style></head>
<body><h1>Log in to {site}</h1>
<p>Use your account of this site's storage (CS3).</p>
{message}
<form method="post" action="{action}">
{xsrf}
<input type="hidden" name="next" value="{next}">
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" value="{username}" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
</form></body></html>
"""


#: Where the node's login throttle lives: the web application's settings (one per server;
#: a handler lives for one request).
LOGIN_THROTTLE_SETTING = "mesh_collab_login_throttle"


class CS3LoginHandler(LoginFormHandler):
    """``/login``: the token form in single-user mode, a CS3 user/password form in multi-user.

    A wrong user name or password shows the form again with a message and status 401; an
    unreachable gateway, status 503. The password goes to the gateway only.

    Failed logins are throttled (:class:`~mesh_collab.throttle.LoginThrottle`, kept in the
    settings under :data:`LOGIN_THROTTLE_SETTING`): after 5 failures of one user name, or 20
    from one client address, in 5 minutes, the form answers 429 with ``Retry-After`` and
    says how long to wait, without asking the gateway. A gateway that throttles (CS3
    RESOURCE_EXHAUSTED) gets the same 429. The token form counts per address only.
    """

    @property
    def _provider(self) -> CS3IdentityProvider | None:
        provider = self.identity_provider
        return provider if isinstance(provider, CS3IdentityProvider) else None

    def _multi_user(self) -> bool:
        provider = self._provider
        return provider is not None and provider._state is not None and provider.multi_user

    def _throttle(self) -> LoginThrottle:
        throttle = self.settings.setdefault(LOGIN_THROTTLE_SETTING, LoginThrottle())
        assert isinstance(throttle, LoginThrottle)
        return throttle

    def _render(self, message: dict[str, str] | None = None) -> None:
        if not self._multi_user():
            super()._render(message)
            return
        text = ""
        if message:
            kind, value = next(iter(message.items()))
            css = "error" if kind == "error" else "info"
            text = f'<p class="{css}" role="alert">{html.escape(value)}</p>'
        self.write(
            _FORM.format(
                site=html.escape(self.settings["mesh_collab"].site),
                message=text,
                action=html.escape(self.request.path),
                xsrf=self.xsrf_form_html(),
                next=html.escape(self.get_argument("next", default=self.base_url)),
                username=html.escape(self.get_argument("username", default="")),
            )
        )

    def _refuse_throttled(self, wait: float | None) -> None:
        self.set_status(429)
        if wait:
            seconds = math.ceil(wait)
            self.set_header("Retry-After", str(seconds))
            self._render({"error": f"Too many failed logins. Try again in {seconds} seconds."})
        else:
            self._render({"error": "Too many failed logins. Try again later."})

    @allow_unauthenticated
    async def post(self) -> None:
        provider = self._provider
        address = self.request.remote_ip or ""
        throttle = self._throttle()
        if provider is None or not self._multi_user():
            wait = throttle.retry_after(None, address)
            if wait:
                self.log.warning("op=login address=%s throttled", address)
                self._refuse_throttled(wait)
                return
            super().post()
            if self.get_status() == 401:
                throttle.failed(None, address)
            return
        username = self.get_argument("username", default="").strip()
        password = self.get_argument("password", default="")
        if not username or not password:
            self.set_status(401)
            self._render({"error": "Enter your user name and password."})
            return
        wait = throttle.retry_after(username, address)
        if wait:
            self.log.warning("op=login user=%r address=%s throttled", username, address)
            self._refuse_throttled(wait)
            return
        try:
            user = await provider.login(username, password)
        except (errors.PermissionDenied, errors.NotFound, errors.Unauthenticated):
            throttle.failed(username, address)
            self.log.info("op=login user=%r address=%s refused", username, address)
            self.set_status(401)
            self._render({"error": "Wrong user name or password."})
            return
        except errors.QuotaExceeded:
            # The gateway's own throttle (CS3 RESOURCE_EXHAUSTED, the HTTP 429 of gRPC).
            self.log.warning("op=login user=%r address=%s throttled by the storage",
                             username, address)
            self._refuse_throttled(None)
            return
        except (errors.StorageUnavailable, TimeoutError):
            self.log.warning("op=login user=%r storage unavailable", username)
            self.set_status(503)
            self._render({"error": "The storage of this site cannot be reached. Try again."})
            return
        throttle.succeeded(username, address)
        self.current_user = user
        provider.set_login_cookie(self, user)
        self._redirect_safe(self.get_argument("next", default=self.base_url))


class CS3LogoutHandler(LogoutHandler):
    """``/logout``: forgets the login's session key, then clears the cookie as usual."""

    @allow_unauthenticated
    def get(self) -> None:
        provider = self.identity_provider
        if isinstance(provider, CS3IdentityProvider):
            provider.logout(self)
        super().get()
