"""Authentication and tokens, through mesh_collab's client (contract suite); then the
embedded gateway's own login rules: one answer for any refusal, throttling, no default
users, the users file."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import anyio
import argon2
import grpc
import jwt
import pytest
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.rpc.v1beta1 import code_pb2

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, token_expiry
from mesh_collab.cs3.gateway.users import UserDirectory, UsersFileError
from mesh_collab.pytest_plugin import Site
from mesh_collab.throttle import LoginThrottle


async def test_login_gives_a_jwt_with_expiry_and_the_user(site: Site, cs3: CS3Client) -> None:
    session = await cs3.login("einstein", site.users["einstein"])
    assert session.user is not None and session.user.username == "einstein"
    token = await session.tokens.token()
    assert token_expiry(token) > time.time()  # cs3client rejects tokens without a valid exp
    me = await session.whoami()
    assert me.id == session.user.id


async def test_wrong_password_is_permission_denied(site: Site, cs3: CS3Client) -> None:
    with pytest.raises(errors.PermissionDenied):
        await cs3.login("einstein", "not-" + site.users["einstein"])


async def test_unknown_user_is_refused(cs3: CS3Client) -> None:
    # A real Reva answers NOT_FOUND; the embedded gateway the same as a wrong password.
    with pytest.raises((errors.PermissionDenied, errors.NotFound)):
        await cs3.login("nobody-such-user", "whatever")


async def test_unknown_auth_type_is_refused(cs3: CS3Client) -> None:
    with pytest.raises(errors.StorageError) as info:
        await cs3.authenticate("no-such-type", "einstein", "x")
    assert not isinstance(info.value, errors.Unauthenticated | errors.NotFound)


async def test_bearer_login_with_a_valid_token(site: Site, cs3: CS3Client) -> None:
    if not site.embedded:
        pytest.skip("a real Reva's bearer type needs its OIDC provider")
    einstein = await cs3.login("einstein", site.users["einstein"])
    again = await cs3.login_bearer(await einstein.tokens.token())
    assert again.user is not None and again.user.username == "einstein"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="missing"),
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param(
            jwt.encode(
                {"exp": time.time() + 600, "aud": "reva", "user": {}}, "forged-" * 8, "HS256"
            ),
            id="forged-signature",
        ),
    ],
)
async def test_bad_tokens_are_unauthenticated(site: Site, cs3: CS3Client, token: str) -> None:
    session = cs3.session(token)
    with pytest.raises(errors.Unauthenticated):
        await session.files.stat(site.home("einstein"))


async def test_expired_token_is_unauthenticated(
    gateway_factory, cs3_client_factory
) -> None:
    gw = await gateway_factory(token_lifetime=1)
    client = await cs3_client_factory(gw.grpc_address)
    einstein = await client.login("einstein", "relativity")
    token = await einstein.tokens.token()
    deadline = token_expiry(token)
    # The thing tested is expiry itself: wait until the token's exp has passed.
    await anyio.sleep(max(0.0, deadline - time.time()) + 1.1)
    with pytest.raises(errors.Unauthenticated):
        await client.session(token).files.stat("/home/einstein")
    # A Login keeps no password, and an expired token cannot be renewed: the login ended.
    with pytest.raises(errors.Unauthenticated):
        await einstein.files.stat("/home/einstein")


# ---- the embedded gateway's login rules ------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def authenticate(address: str, username: str, password: str) -> gw.AuthenticateResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await gw_grpc.GatewayAPIStub(channel).Authenticate(
            gw.AuthenticateRequest(type="basic", client_id=username, client_secret=password),
            timeout=10,
        )


async def test_unknown_user_and_wrong_password_get_one_answer(gateway_factory) -> None:
    gateway = await gateway_factory()
    unknown = await authenticate(gateway.grpc_address, "nobody-such-user", "relativity")
    wrong = await authenticate(gateway.grpc_address, "einstein", "not-relativity")
    assert unknown.status.code == code_pb2.CODE_PERMISSION_DENIED
    assert (unknown.status.code, unknown.status.message) == (
        wrong.status.code, wrong.status.message
    )


async def test_failed_logins_are_throttled_per_account(
    gateway_factory, cs3_client_factory
) -> None:
    clock = FakeClock()
    gateway = await gateway_factory(login_throttle=LoginThrottle(clock=clock))
    cs3 = await cs3_client_factory(gateway.grpc_address)
    for _ in range(5):
        with pytest.raises(errors.PermissionDenied):
            await cs3.login("einstein", "guess")
    # Now even the right password is refused (so the answer tells nothing), at once, with
    # the time to wait.
    with anyio.fail_after(5), pytest.raises(errors.QuotaExceeded) as refused:
        await cs3.login("einstein", "relativity")
    assert refused.value.code == "CODE_RESOURCE_EXHAUSTED"
    assert "try again in 300 s" in str(refused.value)
    # Other accounts are not affected.
    assert (await cs3.login("marie", "radioactivity")).user is not None
    clock.now += 300
    assert (await cs3.login("einstein", "relativity")).user is not None


async def test_a_good_login_clears_the_account_count(gateway_factory, cs3_client_factory) -> None:
    clock = FakeClock()
    gateway = await gateway_factory(login_throttle=LoginThrottle(clock=clock))
    cs3 = await cs3_client_factory(gateway.grpc_address)
    for _ in range(2):
        for _ in range(4):
            with pytest.raises(errors.PermissionDenied):
                await cs3.login("einstein", "typo")
        await cs3.login("einstein", "relativity")  # 8 failures, never 5 in a row
    for _ in range(5):
        with pytest.raises(errors.PermissionDenied):
            await cs3.login("einstein", "typo")
    with pytest.raises(errors.QuotaExceeded):
        await cs3.login("einstein", "relativity")


async def test_failed_logins_are_throttled_per_address(
    gateway_factory, cs3_client_factory
) -> None:
    throttle = LoginThrottle(max_per_address=3, clock=FakeClock())
    gateway = await gateway_factory(login_throttle=throttle)
    cs3 = await cs3_client_factory(gateway.grpc_address)
    for name in ("einstein", "marie", "nobody"):  # one guess on each of many accounts
        with pytest.raises(errors.PermissionDenied):
            await cs3.login(name, "password1")
    with pytest.raises(errors.QuotaExceeded):
        await cs3.login("richard", "superfluidity")


async def test_cli_gateway_needs_users_or_demo_users(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0", "--data-port", "0",
            "--root", str(tmp_path / "data")]
    with anyio.fail_after(30):
        done = await anyio.run_process(args, check=False)
    assert done.returncode == 2
    assert done.stdout == b""  # no address announced: nothing served
    assert b"--users" in done.stderr and b"--demo-users" in done.stderr
    assert not (tmp_path / "data").exists()


def write_users(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD = '{"username": "einstein", "secret": "relativity"}'


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        pytest.param('{"username": "marie", "secret": ""}', "'secret'", id="empty-secret"),
        pytest.param('{"username": "marie", "secret": ["hunter2"]}', "'secret'",
                     id="secret-not-a-string"),
        pytest.param('{"username": "hunter2/", "secret": "x"}', "'username'",
                     id="bad-username"),
        pytest.param('"marie:hunter2"', "JSON object", id="not-an-object"),
        pytest.param('{"username": "marie", "secret": "argon2:hunter2"}', "argon2",
                     id="bad-hash"),
        pytest.param('{"username": "einstein", "secret": "hunter2"}', "'username'",
                     id="duplicate"),
    ],
)
def test_users_file_names_the_bad_entry_not_its_content(
    tmp_path: Path, entry: str, field: str
) -> None:
    path = write_users(tmp_path / "users.json", f"[\n {GOOD},\n\n {entry}\n]\n")
    with pytest.raises(UsersFileError) as info:
        UserDirectory.load(path, idp="example.org")
    message = str(info.value)
    assert "entry 2 (line 4)" in message and field in message
    assert "hunter2" not in "".join(traceback.format_exception(info.value))


def test_users_file_with_broken_json_gives_the_line(tmp_path: Path) -> None:
    path = write_users(tmp_path / "users.json",
                       f'[\n {GOOD},\n {{"username": "marie" "secret": "hunter2"}}\n]')
    with pytest.raises(UsersFileError) as info:
        UserDirectory.load(path, idp="example.org")
    assert "line 3" in str(info.value)
    assert "hunter2" not in "".join(traceback.format_exception(info.value))


async def test_cli_gateway_refuses_a_bad_users_file_without_echoing_it(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.json",
                        f'[{GOOD},\n {{"username": "marie", "secret": "", "x": "hunter2"}}]')
    args = [sys.executable, "-m", "mesh_collab", "gateway", "--port", "0", "--data-port", "0",
            "--root", str(tmp_path / "data"), "--users", str(users)]
    with anyio.fail_after(30):
        done = await anyio.run_process(args, check=False)
    assert done.returncode == 1 and done.stdout == b""
    assert b"entry 2 (line 2)" in done.stderr and b"'secret'" in done.stderr
    assert b"hunter2" not in done.stderr and b"Traceback" not in done.stderr


async def test_hashed_secrets(tmp_path: Path, gateway_factory, cs3_client_factory) -> None:
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    entries = [{"username": "ada", "secret": "argon2:" + hasher.hash("analytical engine")}]
    users = write_users(tmp_path / "users.json", json.dumps(entries))
    gateway = await gateway_factory(users=users)
    cs3 = await cs3_client_factory(gateway.grpc_address)
    session = await cs3.login("ada", "analytical engine")
    assert session.user is not None and session.user.username == "ada"
    for guess in ("analytical", entries[0]["secret"]):  # the hash itself is no password
        with pytest.raises(errors.PermissionDenied):
            await cs3.login("ada", guess)
