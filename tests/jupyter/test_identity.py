"""Identity: single-user token mode, multi-user CS3 login form, sessions, no secrets in logs."""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp
import httpx
import pytest
from tornado.web import HTTPError
from traitlets import TraitError

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.jupyter.identity import LOGIN_THROTTLE_SETTING, MeshUser, Sessions
from mesh_collab.throttle import LoginThrottle
from tests.jupyter.conftest import TOKEN

Node = Any
NodeFactory = Any

LOGGERS = ("", "ServerApp", "MeshCollabApp", "tornado", "mesh_collab", "grpc", "httpx", "httpcore")


@pytest.fixture
async def multi(node_factory: NodeFactory, gateway: EmbeddedGateway) -> Node:
    """A multi-user node on site-a."""
    return await node_factory(gateway, auth_mode="multi-user")


def browser() -> httpx.AsyncClient:
    """A client with no Jupyter token: it authenticates with the login cookie only."""
    return httpx.AsyncClient(timeout=30)


async def test_single_user_me_is_einstein_with_site(node: Node) -> None:
    response = await node.api("GET", "me")
    assert response.status_code == 200
    identity = response.json()["identity"]
    assert identity["username"] == "einstein"
    assert identity["site"] == "site-a"
    idp, _, opaque = identity["cs3_user_id"].rpartition("/")
    assert idp and opaque
    assert "session_key" not in identity
    assert identity["initials"]


async def test_single_user_needs_the_token(node: Node) -> None:
    async with browser() as http:
        assert (await node.api("GET", "me", http=http)).status_code == 403
        assert (await node.api("GET", "contents", http=http)).status_code == 403
        # the token once, then the login cookie it sets
        first = await http.get(f"{node.url}api/me", params={"token": node.token})
        assert first.status_code == 200
        again = await node.api("GET", "me", http=http)
        assert again.status_code == 200 and again.json()["identity"]["username"] == "einstein"


async def test_single_user_login_form_takes_the_token(node: Node) -> None:
    async with browser() as http:
        page, xsrf = await node.login_form(http)
        assert page.status_code == 200
        wrong = await http.post(
            f"{node.url}login", data={"password": "nope", "_xsrf": xsrf}, follow_redirects=False
        )
        assert wrong.status_code == 401
        right = await http.post(
            f"{node.url}login",
            data={"password": node.token, "_xsrf": xsrf},
            follow_redirects=False,
        )
        assert right.status_code == 302
        me = await node.api("GET", "me", http=http)
        assert me.status_code == 200 and me.json()["identity"]["username"] == "einstein"


async def test_single_user_with_a_cs3_token(
    node_factory: NodeFactory, gateway: EmbeddedGateway, cs3: CS3Client
) -> None:
    marie = await cs3.login("marie", "radioactivity")
    token = await marie.tokens.token()
    node = await node_factory(gateway, cs3_username="", cs3_password="", cs3_token=token)
    identity = (await node.api("GET", "me")).json()["identity"]
    assert identity["username"] == "marie"


async def test_patch_me_updates_the_color(node: Node) -> None:
    response = await node.api("PATCH", "me", body={"color": "#123456"})
    assert response.status_code == 200, response.text
    assert (await node.api("GET", "me")).json()["identity"]["color"] == "#123456"


async def test_multi_user_login_page(multi: Node) -> None:
    async with browser() as http:
        page, xsrf = await multi.login_form(http)
        assert page.status_code == 200 and xsrf
        assert 'name="username"' in page.text and 'type="password"' in page.text
        assert "site-a" in page.text


async def test_multi_user_good_login(multi: Node, einstein: Any) -> None:
    await einstein.files.write("/home/einstein/mine.txt", b"e")
    async with browser() as http:
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        response = await multi.login(http, "einstein", "relativity")
        assert response.status_code == 302, response.text
        assert any(c.startswith("username-") for c in http.cookies)
        me = await multi.api("GET", "me", http=http)
        assert me.status_code == 200
        identity = me.json()["identity"]
        assert (identity["username"], identity["site"]) == ("einstein", "site-a")
        assert identity["cs3_user_id"].endswith("/einstein") or identity["cs3_user_id"]
        listing = (await multi.api("GET", "contents", http=http)).json()
        assert "mine.txt" in [m["name"] for m in listing["content"]]


async def test_multi_user_each_user_sees_their_own_home(multi: Node, einstein: Any) -> None:
    await einstein.files.write("/home/einstein/only-einstein.txt", b"e")
    async with browser() as e_http, browser() as m_http:
        assert (await multi.login(e_http, "einstein", "relativity")).status_code == 302
        assert (await multi.login(m_http, "marie", "radioactivity")).status_code == 302
        e_list = (await multi.api("GET", "contents", http=e_http)).json()
        m_list = (await multi.api("GET", "contents", http=m_http)).json()
        assert "only-einstein.txt" in [m["name"] for m in e_list["content"]]
        assert "only-einstein.txt" not in [m["name"] for m in m_list["content"]]
        assert (await multi.api("GET", "me", http=m_http)).json()["identity"][
            "username"
        ] == "marie"


async def test_multi_user_bad_password(multi: Node) -> None:
    async with browser() as http:
        response = await multi.login(http, "einstein", "not-the-password")
        assert response.status_code == 401
        assert "Wrong user name or password" in response.text
        assert 'name="password"' in response.text  # the form again
        assert not any(c.startswith("username-") for c in http.cookies)
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        unknown = await multi.login(http, "nobody", "whatever")
        assert unknown.status_code == 401


class FakeClock:
    """A monotonic clock that moves only when told to (login throttles)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_multi_user_failed_logins_are_throttled(
    node_factory: NodeFactory, gateway_factory: Any
) -> None:
    clock = FakeClock()
    gateway = await gateway_factory(site="site-a", login_throttle=LoginThrottle(clock=clock))
    node = await node_factory(gateway, auth_mode="multi-user")
    node.app.web_app.settings[LOGIN_THROTTLE_SETTING] = LoginThrottle(clock=clock)
    async with browser() as http:
        for _ in range(5):
            assert (await node.login(http, "einstein", "guess")).status_code == 401
        # The right password now gets a clear refusal, not a login (nor a wait).
        refused = await node.login(http, "einstein", "relativity")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "300"
        assert "Too many failed logins. Try again in 300 seconds." in refused.text
        assert 'name="password"' in refused.text  # the form again
        assert not any(c.startswith("username-") for c in http.cookies)
    async with browser() as other:  # another user from the same address is not affected
        assert (await node.login(other, "marie", "radioactivity")).status_code == 302
    clock.now += 300
    async with browser() as http:
        assert (await node.login(http, "einstein", "relativity")).status_code == 302


async def test_multi_user_login_refused_by_a_throttling_gateway_is_429(
    node_factory: NodeFactory, gateway_factory: Any, cs3_client_factory: Any
) -> None:
    gateway = await gateway_factory(site="site-a", login_throttle=LoginThrottle())
    node = await node_factory(gateway, auth_mode="multi-user")
    cs3 = await cs3_client_factory(gateway.grpc_address)
    for _ in range(5):  # guesses made at the gateway itself, past the node
        with pytest.raises(errors.PermissionDenied):
            await cs3.login("einstein", "guess")
    async with browser() as http:
        response = await node.login(http, "einstein", "relativity")
        assert response.status_code == 429
        assert "Too many failed logins. Try again later." in response.text


async def test_single_user_login_form_is_throttled_per_address(node: Node) -> None:
    node.app.web_app.settings[LOGIN_THROTTLE_SETTING] = LoginThrottle(max_per_address=3)
    async with browser() as http:
        _, xsrf = await node.login_form(http)
        for password in ("a", "b", "c", node.token):
            response = await http.post(f"{node.url}login",
                                       data={"password": password, "_xsrf": xsrf},
                                       follow_redirects=False)
        assert response.status_code == 429
        assert "Too many failed logins" in response.text


async def test_multi_user_ignores_the_jupyter_token(multi: Node) -> None:
    assert (await multi.api("GET", "me")).status_code == 403  # node.http sends the token


async def test_multi_user_token_stands_for_the_configured_default_user(
    node_factory: Any, gateway: Any
) -> None:
    node = await node_factory(
        gateway, auth_mode="multi-user", cs3_username="einstein", cs3_password="relativity"
    )
    me = await node.api("GET", "me")
    assert me.status_code == 200
    assert me.json()["identity"]["username"] == "einstein"
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{node.url}api/me")).status_code in (401, 403)
        await node.login(http, "marie", "radioactivity")
        marie = await http.get(f"{node.url}api/me")
        assert marie.json()["identity"]["username"] == "marie"


async def test_multi_user_tokenized_link_logs_the_browser_in_for_its_websockets(
    node_factory: Any, gateway: Any
) -> None:
    """The demo prints ``<node>/lab?token=...``: the cookie that link sets must carry the
    browser's next requests and websockets (which send no token) as the default user."""
    node = await node_factory(
        gateway, auth_mode="multi-user", cs3_username="einstein", cs3_password="relativity"
    )
    async with browser() as http:
        # (Only mesh_collab is loaded here, not /lab: the browser test opens the real link.)
        page = await http.get(f"{node.url}api/status?token={TOKEN}")
        assert page.status_code == 200
        me = await http.get(f"{node.url}api/me")  # the cookie alone
        assert me.status_code == 200, me.text
        assert me.json()["identity"]["username"] == "einstein"
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        ws_url = node.url.replace("http://", "ws://") + "api/collaboration/room/" + (
            "JupyterLab:globalAwareness"
        )
        async with aiohttp.ClientSession() as ws_http, ws_http.ws_connect(
            ws_url, headers={"Cookie": cookie}
        ) as ws:
            first = await ws.receive(timeout=10)
            assert first.type is aiohttp.WSMsgType.BINARY, first
        # Logging out ends this login only; the link logs in again.
        await http.get(f"{node.url}logout")
        assert (await http.get(f"{node.url}api/me")).status_code == 403
        again = await http.get(f"{node.url}api/me", params={"token": TOKEN})
        assert again.status_code == 200


async def test_contents_without_a_session_is_401_in_multi_user_mode(multi: Node) -> None:
    """Outside a request (no session in the context) there is no fallback user."""
    with pytest.raises(HTTPError) as caught:
        await multi.app.contents_manager.get("")
    assert caught.value.status_code == 401


async def test_multi_user_logout(multi: Node) -> None:
    async with browser() as http, browser() as other:
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        assert (await multi.login(other, "einstein", "relativity")).status_code == 302
        assert len(multi.state.sessions) == 1  # one CS3 session per user
        cookie = dict(http.cookies)
        logout = await http.get(f"{multi.url}logout")
        assert logout.status_code == 200
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        # the copied cookie of the logged-out login is dead on the server side too
        async with browser() as replay:
            replay.cookies.update(cookie)
            assert (await multi.api("GET", "me", http=replay)).status_code == 403
        # the other login of the same user still works
        assert (await multi.api("GET", "me", http=other)).status_code == 200


async def test_no_secret_in_logs(multi: Node, caplog: pytest.LogCaptureFixture) -> None:
    password = "relativity"
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    async with browser() as http:
        bad = await multi.login(http, "einstein", "wrong-" + password)
        assert bad.status_code == 401
        assert (await multi.login(http, "einstein", password)).status_code == 302
        assert (await multi.api("GET", "contents", http=http)).status_code == 200
        # a save and a read go through the data gateway, whose URLs hold transfer tokens
        xsrf = http.cookies.get("_xsrf", "")
        body = {"type": "file", "format": "text", "content": "x"}
        saved = await multi.api(
            "PUT", "contents/t.txt", body=body, http=http, headers={"X-XSRFToken": xsrf}
        )
        assert saved.status_code == 201, saved.text
        assert (await multi.api("GET", "contents/t.txt", http=http)).status_code == 200
        cookie_values = [v for k, v in http.cookies.items() if k.startswith("username-")]
    session = multi.state.sessions.get("einstein")
    assert session is not None
    cs3_token = await session.tokens.token()
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "op=login user=einstein" in text  # the login was logged...
    assert password not in text  # ...without the password,
    assert cs3_token not in text  # the CS3 token,
    assert "/datagateway/<redacted>" in text  # transfer tokens in URLs,
    assert not re.search(r"/datagateway/(?!<redacted>)\w", text)
    # The session key travels in the cookie only. (httpcore's debug trace of the *test's*
    # client shows the Set-Cookie header it received; that is not the server logging it.)
    server_text = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("httpcore")
    )
    keys = list(multi.state.sessions._keys)
    assert keys and not any(k in server_text for k in keys)
    assert cookie_values and not any(v in server_text for v in cookie_values)


def test_sessions_registry() -> None:
    from mesh_collab.cs3.models import User, UserId

    class FakeSession:  # only .user is read by the registry
        def __init__(self, name: str) -> None:
            self.user = User(id=UserId(idp="site-a", opaque_id=name), username=name)

    sessions = Sessions()
    first = FakeSession("einstein")
    key1 = sessions.add(first)  # type: ignore[arg-type]
    key2 = sessions.add(FakeSession("einstein"))  # type: ignore[arg-type]
    assert key1 != key2 and len(sessions) == 1
    assert sessions.for_key("einstein", key2) is first  # the first session is kept
    assert sessions.for_key("marie", key1) is None and sessions.for_key("einstein", "") is None
    sessions.remove_key(key1)
    assert sessions.get("einstein") is first
    sessions.remove_key(key2)
    assert sessions.get("einstein") is None
    assert "einstein" not in repr(sessions) or "key" not in repr(sessions)


def test_mesh_user_fields() -> None:
    user = MeshUser(username="u", site="s", cs3_user_id="idp/u", session_key="k")
    assert "k" not in repr(user).replace("username", "").replace("cs3_user_id", "")
    assert user.name == "u" and user.display_name == "u"


# ---- login lifetimes (multi-user) ------------------------------------------------------------


def cookie_of(http: httpx.AsyncClient) -> str:
    return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


async def handshake_status(node: Node, cookie: str) -> int:
    """The HTTP status of a websocket handshake to the global awareness (101: served)."""
    url = (node.url.replace("http://", "ws://")
           + "api/collaboration/room/JupyterLab:globalAwareness")
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers={"Cookie": cookie}) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def fake_clocked(node: Node, *, max_age: float, idle_timeout: float) -> FakeClock:
    """Give ``node`` a login registry on a fake clock, with the lifetimes set as settings."""
    clock = FakeClock()
    node.state.sessions = Sessions(clock=clock)
    provider = node.app.identity_provider
    provider.session_max_age = max_age
    provider.session_idle_timeout = idle_timeout
    assert (node.state.sessions.max_age, node.state.sessions.idle_timeout) == (
        max_age, idle_timeout)
    return clock


async def test_multi_user_login_ends_after_the_idle_timeout(
    multi: Node, einstein: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await einstein.files.write("/home/einstein/mine.txt", b"e")
    clock = fake_clocked(multi, max_age=3600, idle_timeout=600)
    caplog.set_level(logging.INFO, logger="mesh_collab.jupyter.identity")
    async with browser() as http:
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        for _ in range(3):  # every request counts as activity
            clock.now += 599
            assert (await multi.api("GET", "me", http=http)).status_code == 200
        cookie = cookie_of(http)
        assert await handshake_status(multi, cookie) == 101
        clock.now += 600
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        assert "op=login ended user=einstein reason=idle" in caplog.text
        # The cookie is dead on the server side, wherever it is replayed from.
        assert await handshake_status(multi, cookie) == 403
        page = await http.get(f"{multi.url}view/mine.txt", follow_redirects=False)
        assert page.status_code == 302 and "/login?next=" in page.headers["Location"]
        assert "einstein" not in multi.state.sessions
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        assert (await multi.api("GET", "me", http=http)).status_code == 200


async def test_multi_user_login_ends_at_its_maximum_age_however_active(multi: Node) -> None:
    clock = fake_clocked(multi, max_age=3600, idle_timeout=600)
    async with browser() as http, browser() as later:
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        clock.now += 500
        assert (await multi.login(later, "einstein", "relativity")).status_code == 302
        assert (await multi.api("GET", "me", http=http)).status_code == 200
        while clock.now + 500 < 1000 + 3600:
            clock.now += 500
            assert (await multi.api("GET", "me", http=http)).status_code == 200
            assert (await multi.api("GET", "me", http=later)).status_code == 200
        clock.now += 500
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        # Each login counts from its own start: the later one lives on.
        assert (await multi.api("GET", "me", http=later)).status_code == 200


class EndedLogin:
    """The token source of a CS3 session whose token expired and cannot be renewed."""

    async def token(self) -> str:
        raise errors.Unauthenticated("the CS3 login has expired: log in again")


async def test_multi_user_login_ends_with_its_cs3_token(
    multi: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """The node keeps no password: when the user's CS3 token can no longer be renewed (the
    gateway's maximum age), the browser is sent back to /login."""
    caplog.set_level(logging.INFO, logger="mesh_collab.jupyter.identity")
    async with browser() as http:
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        cookie = cookie_of(http)
        session = multi.state.sessions.get("einstein")
        assert session is not None
        session.tokens = EndedLogin()
        assert (await multi.api("GET", "me", http=http)).status_code == 403
        assert "op=login ended user=einstein site=site-a reason=cs3-token" in caplog.text
        assert "einstein" not in multi.state.sessions
        assert await handshake_status(multi, cookie) == 403
        page = await http.get(f"{multi.url}view/mine.txt", follow_redirects=False)
        assert page.status_code == 302 and "/login?next=" in page.headers["Location"]
        # Logging in again gives a new CS3 session.
        assert (await multi.login(http, "einstein", "relativity")).status_code == 302
        assert (await multi.api("GET", "me", http=http)).status_code == 200
        assert multi.state.sessions.get("einstein") is not session


def test_login_lifetimes_are_settings_with_defaults() -> None:
    from traitlets.config import Config

    from mesh_collab.jupyter.identity import CS3IdentityProvider

    provider = CS3IdentityProvider()
    assert (provider.session_max_age, provider.session_idle_timeout) == (12 * 3600, 2 * 3600)
    sessions = Sessions()
    assert (sessions.max_age, sessions.idle_timeout) == (12 * 3600, 2 * 3600)
    configured = CS3IdentityProvider(config=Config(
        {"CS3IdentityProvider": {"session_max_age": 0, "session_idle_timeout": 60}}))
    assert (configured.session_max_age, configured.session_idle_timeout) == (0, 60)
    for bad in (-1, float("nan")):
        with pytest.raises(TraitError):
            CS3IdentityProvider(session_idle_timeout=bad)


def test_sessions_without_limits_never_end() -> None:
    from mesh_collab.cs3.models import User, UserId

    class FakeSession:
        user = User(id=UserId(idp="site-a", opaque_id="marie"), username="marie")

    clock = FakeClock()
    sessions = Sessions(max_age=0, idle_timeout=0, clock=clock)
    key = sessions.add(FakeSession())  # type: ignore[arg-type]
    clock.now += 10**9
    assert sessions.for_key("marie", key) is not None
    sessions.set_lifetimes(max_age=10, idle_timeout=0)
    assert sessions.for_key("marie", key) is None and "marie" not in sessions


async def test_multi_user_mode_gives_nobody_a_terminal(gateway: Any, node_factory: Any) -> None:
    """The review's probe: marie logs in and asks for a terminal (a shell as the server's
    OS user, which could read the other users' sessions and the node's keys)."""
    with_terminals = {
        "jpserver_extensions": {"mesh_collab.jupyter": True, "jupyter_server_terminals": True},
        "terminals_enabled": True,
    }
    multi = await node_factory(gateway, auth_mode="multi-user", server_config=with_terminals)
    assert multi.app.terminals_enabled is False
    async with browser() as http:
        assert (await multi.login(http, "marie", "radioactivity")).status_code == 302
        xsrf = http.cookies.get("_xsrf", "")
        created = await multi.api("POST", "terminals", http=http, headers={"X-XSRFToken": xsrf})
        assert created.status_code == 404, created.text
    # A single-user node (one user, the normal Jupyter model) keeps its terminals.
    single = await node_factory(gateway, server_config=with_terminals)
    assert single.app.terminals_enabled is True
    assert (await single.api("GET", "terminals")).status_code == 200
