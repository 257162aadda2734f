"""Authentication and tokens, through mesh_collab's client (contract suite)."""

from __future__ import annotations

import time

import anyio
import jwt
import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import CS3Client, token_expiry
from mesh_collab.pytest_plugin import Site


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


async def test_unknown_user_is_not_found(cs3: CS3Client) -> None:
    with pytest.raises(errors.NotFound):
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
    # A Login renews an expired token by itself.
    assert (await einstein.files.stat("/home/einstein")).is_dir
