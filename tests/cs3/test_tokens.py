"""Lifetimes of the gateway's tokens and of the client's logins.

Transfer tokens: short-lived, an upload token serves one PUT, and the rights are asked again
when the transfer comes. Access tokens: a renewal keeps the login's time and none outlives
the maximum age. The client keeps no password: it renews through the bearer exchange, and a
login it cannot renew ends with ``Unauthenticated``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.types.v1beta1 import types_pb2

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, Login, Session
from mesh_collab.cs3.gateway import EmbeddedGateway
from mesh_collab.cs3.gateway.status import PERMISSION_DENIED, UNAUTHENTICATED, GatewayError
from mesh_collab.cs3.gateway.tokens import TokenSigner
from mesh_collab.cs3.models import Ref, Role, User, UserId, reference

DAY = 86400
MAX_AGE = 7 * DAY


class FakeClock:
    """Wall-clock seconds that move only when told to (``offset`` from the real time, so
    that the gateway, which reads the real clock, still accepts the tokens)."""

    def __init__(self, *, real: bool = True) -> None:
        self.offset = 0.0
        self._base = 0.0 if real else 1_000_000.0

    def __call__(self) -> float:
        return (time.time() if not self._base else self._base) + self.offset


def secret_of(gateway: EmbeddedGateway, name: str) -> str:
    db = sqlite3.connect(gateway.root / "meta.sqlite")
    try:
        row = db.execute("SELECT value FROM settings WHERE key = ?", (f"secret:{name}",))
        return str(row.fetchone()[0])
    finally:
        db.close()


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def forge_login(gateway: EmbeddedGateway, token: str, *, auth_time: int, exp: int) -> str:
    """A token of the gateway, as the one of a login made at ``auth_time`` would be."""
    claims = claims_of(token)
    claims.update(auth_time=auth_time, iat=int(time.time()) - 10, exp=exp)
    return jwt.encode(claims, secret_of(gateway, "jwt"), algorithm="HS256")


async def initiate_upload(session: Session, ref: Ref, size: int) -> tuple[str, str]:
    opaque = types_pb2.Opaque(map={"Upload-Length": types_pb2.OpaqueEntry(
        decoder="plain", value=str(size).encode())})
    res = await session.call("InitiateFileUpload", sp.InitiateFileUploadRequest(
        ref=reference(ref), opaque=opaque))
    return res.protocols[0].upload_endpoint, res.protocols[0].token


async def initiate_download(session: Session, ref: Ref) -> tuple[str, str]:
    res = await session.call("InitiateFileDownload",
                             sp.InitiateFileDownloadRequest(ref=reference(ref)))
    return res.protocols[0].download_endpoint, res.protocols[0].token


async def put(endpoint: str, token: str, body: bytes) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(endpoint, headers={"X-Reva-Transfer": token}, content=body)
    return r.status_code


async def get(endpoint: str, token: str, **headers: str) -> tuple[int, bytes]:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(endpoint, headers={"X-Reva-Transfer": token, **headers})
    return r.status_code, r.content


@pytest.fixture
async def gw(gateway_factory: Any) -> EmbeddedGateway:
    return await gateway_factory(site="site-a")  # type: ignore[no-any-return]


@pytest.fixture
async def client(gw: EmbeddedGateway, cs3_client_factory: Any) -> CS3Client:
    return await cs3_client_factory(gw.grpc_address)  # type: ignore[no-any-return]


# ---- transfer tokens -----------------------------------------------------------------------


async def test_an_upload_token_serves_one_put(client: CS3Client) -> None:
    einstein = await client.login("einstein", "relativity")
    endpoint, token = await initiate_upload(einstein, "/home/einstein/once.txt", 5)
    assert await put(endpoint, token, b"first") == 200
    assert await put(endpoint, token, b"again") == 403
    assert await einstein.files.read("/home/einstein/once.txt") == b"first"


async def test_transfer_tokens_live_a_minute(client: CS3Client) -> None:
    einstein = await client.login("einstein", "relativity")
    await einstein.files.write("/home/einstein/t.txt", b"t")
    for _, token in (await initiate_upload(einstein, "/home/einstein/t.txt", 1),
                     await initiate_download(einstein, "/home/einstein/t.txt")):
        claims = claims_of(token)
        assert 0 < claims["exp"] - claims["iat"] <= 60


async def test_a_removed_share_refuses_the_transfer_tokens_issued_before(
    client: CS3Client,
) -> None:
    einstein = await client.login("einstein", "relativity")
    marie = await client.login("marie", "radioactivity")
    info = await einstein.files.write("/home/einstein/shared.txt", b"einstein 1")
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    up_endpoint, up_token = await initiate_upload(marie, info.id, 7)
    down_endpoint, down_token = await initiate_download(marie, info.id)
    # A download token may be used again while it lives (a retry, a range).
    assert await get(down_endpoint, down_token) == (200, b"einstein 1")
    assert await get(down_endpoint, down_token, Range="bytes=0-7") == (206, b"einstein")
    await einstein.shares.remove(share.id)
    assert await put(up_endpoint, up_token, b"marie 2") == 403
    assert (await get(down_endpoint, down_token))[0] == 403
    assert await einstein.files.read(info.id) == b"einstein 1"


async def test_upload_tokens_of_an_earlier_run_of_the_gateway_are_refused(
    tmp_path: Path, cs3_client_factory: Any,
) -> None:
    # The record of spent upload tokens lives in memory: after a restart it cannot tell a
    # used token from an unused one, so it takes neither.
    root = tmp_path / "gw"
    async with EmbeddedGateway(root=root) as first:
        cs3 = await cs3_client_factory(first.grpc_address)
        einstein = await cs3.login("einstein", "relativity")
        _, token = await initiate_upload(einstein, "/home/einstein/r.txt", 1)
    async with EmbeddedGateway(root=root) as second:
        assert await put(f"{second.http_url}/datagateway", token, b"x") == 403
        cs3 = await cs3_client_factory(second.grpc_address)
        einstein = await cs3.login("einstein", "relativity")
        endpoint, fresh = await initiate_upload(einstein, "/home/einstein/r.txt", 1)
        assert await put(endpoint, fresh, b"y") == 200


# ---- access tokens: renewal and its maximum age ------------------------------------------


def test_renewals_keep_the_login_time_and_end_at_the_maximum_age() -> None:
    clock = FakeClock(real=False)
    signer = TokenSigner("a" * 48, "b" * 48, lifetime=DAY, clock=clock)
    user = {"username": "einstein"}
    token = signer.issue(user, idp="site-a")
    login_time = claims_of(token)["auth_time"]
    assert login_time == int(clock())
    renewals = 0
    while True:
        clock.offset += DAY - 60  # a client renews a minute before the expiry
        try:
            auth_time = signer.renewable(token)
        except GatewayError as exc:
            assert exc.code == UNAUTHENTICATED
            break
        token = signer.issue(user, idp="site-a", auth_time=auth_time)
        renewals += 1
        claims = signer.verify(token)
        assert claims["auth_time"] == login_time
        assert claims["exp"] <= login_time + MAX_AGE
    assert renewals == 7 and claims_of(token)["exp"] == login_time + MAX_AGE
    # Past the maximum age the answer is the same, whatever the token's state.
    clock.offset = MAX_AGE + 1
    with pytest.raises(GatewayError) as refused:
        signer.renewable(token)
    assert refused.value.code == UNAUTHENTICATED
    with pytest.raises(GatewayError) as expired:
        signer.verify(token)
    assert expired.value.code == PERMISSION_DENIED


async def test_a_bearer_renewal_keeps_the_login_time(client: CS3Client) -> None:
    einstein = await client.login("einstein", "relativity")
    first = await einstein.tokens.token()
    renewed, user = await client.authenticate("bearer", "", first)
    assert user.username == "einstein"
    assert claims_of(renewed)["auth_time"] == claims_of(first)["auth_time"]
    assert claims_of(renewed)["exp"] <= claims_of(first)["auth_time"] + MAX_AGE


async def test_a_login_older_than_the_maximum_age_is_not_renewed(
    gw: EmbeddedGateway, client: CS3Client,
) -> None:
    einstein = await client.login("einstein", "relativity")
    token = await einstein.tokens.token()
    now = int(time.time())
    old = forge_login(gw, token, auth_time=now - MAX_AGE - 60, exp=now + 600)
    at_its_end = forge_login(gw, token, auth_time=now - MAX_AGE + 600, exp=now + 600)
    for refused in (old, at_its_end):
        with pytest.raises(errors.Unauthenticated):
            await client.authenticate("bearer", "", refused)
    # A younger login is renewed, up to its maximum age only.
    young = forge_login(gw, token, auth_time=now - MAX_AGE + 900, exp=now + 600)
    renewed, _ = await client.authenticate("bearer", "", young)
    assert claims_of(renewed)["exp"] == now - MAX_AGE + 900 + MAX_AGE


# ---- the client's logins --------------------------------------------------------------------


async def test_a_login_keeps_no_password_and_renews_through_bearer(
    gw: EmbeddedGateway, cs3_client_factory: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    cs3 = await cs3_client_factory(gw.grpc_address, clock=clock)
    einstein = await cs3.login("einstein", "relativity")
    assert not any("relativity" in repr(value) for value in vars(einstein.tokens).values())
    first = await einstein.tokens.token()
    caplog.set_level(logging.INFO, logger="mesh_collab.cs3.gateway")
    caplog.clear()
    clock.offset = claims_of(first)["exp"] - time.time() - 30  # inside the renewal margin
    await einstein.files.stat("/home/einstein")
    assert "op=Authenticate user=einstein type=bearer" in caplog.text
    assert "type=basic" not in caplog.text


async def test_a_token_handed_over_is_renewed_like_a_login(
    gw: EmbeddedGateway, cs3_client_factory: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # A JupyterHub user's server gets a token, not a password, and outlives its first hour.
    clock = FakeClock()
    cs3 = await cs3_client_factory(gw.grpc_address, clock=clock)
    handed_over = await (await cs3.login("marie", "radioactivity")).tokens.token()
    marie = cs3.resume(handed_over)
    assert (await marie.whoami()).username == "marie"
    assert await marie.tokens.token() == handed_over  # no call until the renewal is due
    caplog.set_level(logging.INFO, logger="mesh_collab.cs3.gateway")
    caplog.clear()
    clock.offset = claims_of(handed_over)["exp"] - time.time() - 30  # inside the margin
    await marie.files.stat("/home/marie")
    # (The gateway's clock is the real one: the new token may equal the old to the second.)
    assert "op=Authenticate user=marie type=bearer" in caplog.text
    assert "type=basic" not in caplog.text


async def test_a_session_ends_when_its_login_reaches_the_maximum_age(
    gw: EmbeddedGateway, cs3_client_factory: Any,
) -> None:
    clock = FakeClock()
    cs3 = await cs3_client_factory(gw.grpc_address, clock=clock)
    einstein = await cs3.login("einstein", "relativity")
    now = int(time.time())
    # A login made 7 days minus 5 minutes ago, whose token expires in 200 s.
    week_old = forge_login(gw, await einstein.tokens.token(), auth_time=now - MAX_AGE + 300,
                           exp=now + 200)
    session = await cs3.login_bearer(week_old)
    token = await session.tokens.token()
    assert claims_of(token)["exp"] == now + 300  # renewed up to the maximum age, no further
    clock.offset = 270  # renewal due: the gateway refuses it, the token serves on
    assert (await session.files.stat("/home/einstein")).is_dir
    assert await session.tokens.token() == token
    clock.offset = 301
    with pytest.raises(errors.Unauthenticated):
        await session.files.stat("/home/einstein")
    # A new login of the user brings the session back (rooms holding it go on).
    clock.offset = 0
    session.adopt(await cs3.login("einstein", "relativity"))
    clock.offset = 301
    assert (await session.files.stat("/home/einstein")).is_dir


def jwt_for(now: float, lifetime: float) -> str:
    return jwt.encode({"iat": int(now), "exp": int(now + lifetime)}, "k" * 32,
                      algorithm="HS256")


class ScriptedGateway:
    """Stands for a CS3Client in :class:`Login`: answers each auth type as told."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.log = logging.getLogger("test")
        self.calls: list[str] = []
        self.answers: dict[str, Exception | None] = {"basic": None, "bearer": None}

    async def authenticate(self, auth_type: str, client_id: str, secret: str) -> tuple[str, User]:
        self.calls.append(auth_type)
        refusal = self.answers[auth_type]
        if refusal is not None:
            raise refusal
        user = User(id=UserId(idp="site-a", opaque_id="einstein"), username="einstein")
        return jwt_for(self.clock(), 600), user


@pytest.mark.parametrize("keep_secret", [False, True])
async def test_a_login_refused_renewal_ends_it_unless_it_keeps_its_secret(
    keep_secret: bool,
) -> None:
    clock = FakeClock(real=False)
    gateway = ScriptedGateway(clock)
    login = Login(gateway, "basic", "einstein", "relativity",  # type: ignore[arg-type]
                  keep_secret=keep_secret)
    await login.token()
    assert ("relativity" in vars(login).values()) is keep_secret
    # The gateway cannot be reached: the token serves on, and renewal is tried again later.
    gateway.answers["bearer"] = errors.StorageUnavailable("down")
    clock.offset = 560
    first = await login.token()
    clock.offset = 562
    await login.token()
    assert gateway.calls == ["basic", "bearer"]
    # The gateway refuses the renewal (the login's maximum age).
    gateway.answers["bearer"] = errors.Unauthenticated("too old")
    clock.offset = 570
    if keep_secret:  # a node's configured account logs in again
        assert await login.token() != first
        assert gateway.calls == ["basic", "bearer", "bearer", "basic"]
        return
    assert await login.token() == first
    clock.offset = 601
    with pytest.raises(errors.Unauthenticated):
        await login.token()
    assert gateway.calls == ["basic", "bearer", "bearer"]
