"""Access tokens and transfer tokens: JWTs signed with HS256, like Reva's.

*Access tokens* follow ``pkg/token/manager/jwt/jwt.go`` of Reva: claims ``exp``, ``iat``,
``iss`` (the user's idp), ``aud`` = ``"reva"``, ``user`` (the User as a JSON dict) and
``scope``. cs3client decodes them without verifying the signature and checks ``exp``
(spec §1.2), so they must be real JWTs.

*Transfer tokens* follow the gateway's ``sign`` (spec §1.5): a short-lived JWT naming the
operation and its target, put in the ``/datagateway/<token>`` URL. They use a second secret
so that an access token can never be replayed as a transfer token and the other way round.

Both secrets are generated once and kept in the metadata database, so tokens survive a
restart of the gateway.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from .status import PERMISSION_DENIED, GatewayError

AUDIENCE = "reva"
TRANSFER_AUDIENCE = "reva-datagateway"
TRANSFER_LIFETIME = 600.0
_ALGORITHM = "HS256"


class TokenSigner:
    """Issues and verifies the gateway's JWTs.

    Args:
        access_secret: HS256 key of access tokens.
        transfer_secret: HS256 key of transfer tokens.
        lifetime: validity of access tokens, in seconds (Reva's default is 86400).
    """

    def __init__(self, access_secret: str, transfer_secret: str, *, lifetime: float) -> None:
        if not access_secret or not transfer_secret or access_secret == transfer_secret:
            raise ValueError("TokenSigner needs two different, non-empty secrets")
        self._access_secret = access_secret
        self._transfer_secret = transfer_secret
        self._lifetime = lifetime

    def issue(self, user_claims: dict[str, Any], *, idp: str) -> str:
        """Return a new access token for the user described by ``user_claims``."""
        now = int(time.time())
        claims = {
            "iss": idp,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + max(1, round(self._lifetime)),
            "user": user_claims,
            "scope": {"user": {"role": "owner"}},
        }
        return jwt.encode(claims, self._access_secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid access token.

        Raises:
            GatewayError: PERMISSION_DENIED if the token is malformed, forged or expired.
        """
        return _decode(token, self._access_secret, AUDIENCE, "access token")

    def issue_transfer(
        self, claims: dict[str, Any], *, lifetime: float = TRANSFER_LIFETIME
    ) -> str:
        """Return a transfer token carrying ``claims`` (op, target, user, lock id, ...)."""
        now = int(time.time())
        body = dict(claims, aud=TRANSFER_AUDIENCE, iat=now, exp=now + max(1, round(lifetime)))
        return jwt.encode(body, self._transfer_secret, algorithm=_ALGORITHM)

    def verify_transfer(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid transfer token.

        Raises:
            GatewayError: PERMISSION_DENIED if the token is malformed, forged or expired.
        """
        return _decode(token, self._transfer_secret, TRANSFER_AUDIENCE, "transfer token")


def _decode(token: str, secret: str, audience: str, what: str) -> dict[str, Any]:
    if not token:
        raise GatewayError(PERMISSION_DENIED, f"{what} missing")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=audience,
            options={"require": ["exp", "iat", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise GatewayError(PERMISSION_DENIED, f"{what} expired") from exc
    except jwt.PyJWTError as exc:
        raise GatewayError(PERMISSION_DENIED, f"{what} is invalid") from exc
    if not isinstance(claims, dict):
        raise GatewayError(PERMISSION_DENIED, f"{what} is invalid")
    return claims
