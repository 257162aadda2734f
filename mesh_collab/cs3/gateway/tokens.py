"""Access tokens and transfer tokens: JWTs signed with HS256, like Reva's.

*Access tokens* follow ``pkg/token/manager/jwt/jwt.go`` of Reva: claims ``exp``, ``iat``,
``iss`` (the user's idp), ``aud`` = ``"reva"``, ``user`` (the User as a JSON dict) and
``scope``. cs3client decodes them without verifying the signature and checks ``exp``
(spec §1.2), so they must be real JWTs. They also carry ``auth_time`` (the OIDC claim): when
the user gave their password. A token renewed through the ``bearer`` exchange keeps the
``auth_time`` of the token it replaces, and no token lives past ``auth_time + max_age``, so
a chain of renewals ends ``max_age`` after the login.

*Transfer tokens* follow the gateway's ``sign`` (spec §1.5): a short-lived JWT naming the
operation and its target, put in the ``/datagateway/<token>`` URL. They use a second secret
so that an access token can never be replayed as a transfer token and the other way round.
Each one has an id (``jti``) and names the run of the gateway that issued it (``run``): an
upload token is spent by the first PUT that presents it (:meth:`TokenSigner.spend_transfer`),
and the record of spent tokens lives in memory, so upload tokens of an earlier run (at most
``transfer_lifetime`` old) are refused rather than taken for unused.

Both secrets are generated once and kept in the metadata database, so access tokens survive
a restart of the gateway.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from .status import PERMISSION_DENIED, UNAUTHENTICATED, GatewayError

AUDIENCE = "reva"
TRANSFER_AUDIENCE = "reva-datagateway"
#: Validity of a transfer token, in seconds: the time between InitiateFileUpload/Download and
#: the start of the HTTP request (the body may take longer). Reva's default is 6000 s.
TRANSFER_LIFETIME = 60.0
#: Longest time, in seconds, that renewals of one login may keep it going (7 days).
MAX_AGE = 7 * 86400.0
_ALGORITHM = "HS256"
#: Spent upload token ids are forgotten once expired; sweep them at most this often (s).
_SWEEP_INTERVAL = 10.0


class TokenSigner:
    """Issues and verifies the gateway's JWTs.

    Usage::

        signer = TokenSigner(db.secret("jwt"), db.secret("transfer"), lifetime=86400)
        token = signer.issue(user.to_claims(), idp=user.idp)
        renewed = signer.issue(user.to_claims(), idp=user.idp,
                               auth_time=signer.renewable(token))

    Args:
        access_secret: HS256 key of access tokens.
        transfer_secret: HS256 key of transfer tokens.
        lifetime: validity of access tokens, in seconds (Reva's default is 86400).
        max_age: longest life of a login and its renewals, in seconds (default 7 days).
        transfer_lifetime: validity of transfer tokens, in seconds (default 60).
        clock: the time source (``time.time``); tests pass a fake one.
    """

    def __init__(
        self,
        access_secret: str,
        transfer_secret: str,
        *,
        lifetime: float,
        max_age: float = MAX_AGE,
        transfer_lifetime: float = TRANSFER_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_secret or not transfer_secret or access_secret == transfer_secret:
            raise ValueError("TokenSigner needs two different, non-empty secrets")
        if max_age <= 0 or transfer_lifetime <= 0:
            raise ValueError(
                f"max_age and transfer_lifetime must be positive: {max_age!r}, "
                f"{transfer_lifetime!r}"
            )
        self._access_secret = access_secret
        self._transfer_secret = transfer_secret
        self._lifetime = lifetime
        self._max_age = max(1, round(max_age))
        self._transfer_lifetime = transfer_lifetime
        self._clock = clock
        self._run = secrets.token_urlsafe(12)
        self._spent: dict[str, float] = {}  # upload token id -> its exp
        self._swept = 0.0

    def issue(
        self, user_claims: dict[str, Any], *, idp: str, auth_time: int | None = None
    ) -> str:
        """Return a new access token for the user described by ``user_claims``.

        Args:
            auth_time: when the user logged in (a renewal passes the one of the token it
                replaces, see :meth:`renewable`); None for a login now.
        """
        now = int(self._clock())
        auth = now if auth_time is None else int(auth_time)
        claims = {
            "iss": idp,
            "aud": AUDIENCE,
            "iat": now,
            "exp": min(now + max(1, round(self._lifetime)), auth + self._max_age),
            "auth_time": auth,
            "user": user_claims,
            "scope": {"user": {"role": "owner"}},
        }
        return jwt.encode(claims, self._access_secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid access token.

        Raises:
            GatewayError: PERMISSION_DENIED if the token is malformed, forged or expired.
        """
        return self._decode(token, self._access_secret, AUDIENCE, "access token")

    def renewable(self, token: str) -> int:
        """Return the ``auth_time`` that a renewal of the access token ``token`` keeps.

        A token without ``auth_time`` (issued by an older version) counts from its ``iat``.

        Raises:
            GatewayError: UNAUTHENTICATED when the login is ``max_age`` old, or the token
                already lives until then (a renewal would not extend it): the user must log
                in again. PERMISSION_DENIED when the token is malformed, forged or expired.
        """
        claims = self._decode(token, self._access_secret, AUDIENCE, "access token",
                              expired_ok=True)
        auth = claims.get("auth_time", claims["iat"])
        if not _number(auth):
            raise GatewayError(PERMISSION_DENIED, "access token is invalid")
        end = int(auth) + self._max_age
        # The age is checked before the expiry: a login past its maximum age is told so,
        # whatever state its last token is in.
        if self._clock() >= end or claims["exp"] >= end:
            raise GatewayError(
                UNAUTHENTICATED, "the login has reached its maximum age: log in again"
            )
        if claims["exp"] <= self._clock():
            raise GatewayError(PERMISSION_DENIED, "access token expired")
        return int(auth)

    def issue_transfer(self, claims: dict[str, Any], *, lifetime: float | None = None) -> str:
        """Return a transfer token carrying ``claims`` (op, target, user, lock id, ...).

        Args:
            lifetime: its validity in seconds; default ``transfer_lifetime``.
        """
        now = int(self._clock())
        life = self._transfer_lifetime if lifetime is None else lifetime
        body = dict(
            claims, aud=TRANSFER_AUDIENCE, iat=now, exp=now + max(1, round(life)),
            jti=secrets.token_urlsafe(16), run=self._run,
        )
        return jwt.encode(body, self._transfer_secret, algorithm=_ALGORITHM)

    def verify_transfer(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid transfer token.

        Raises:
            GatewayError: PERMISSION_DENIED if the token is malformed, forged or expired.
        """
        return self._decode(token, self._transfer_secret, TRANSFER_AUDIENCE, "transfer token")

    def spend_transfer(self, claims: dict[str, Any]) -> None:
        """Mark the transfer token of ``claims`` (verified) as used: it serves once.

        Raises:
            GatewayError: PERMISSION_DENIED if it was used before, or was issued by an
                earlier run of the gateway (whose record of used tokens is gone), or has no
                id.
        """
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or claims.get("run") != self._run:
            raise GatewayError(PERMISSION_DENIED, "transfer token is not valid any more")
        now = self._clock()
        if now - self._swept >= _SWEEP_INTERVAL:
            self._spent = {k: exp for k, exp in self._spent.items() if exp > now}
            self._swept = now
        if jti in self._spent:
            raise GatewayError(PERMISSION_DENIED, "transfer token already used")
        self._spent[jti] = float(claims["exp"])

    def _decode(
        self, token: str, secret: str, audience: str, what: str, *, expired_ok: bool = False
    ) -> dict[str, Any]:
        if not token:
            raise GatewayError(PERMISSION_DENIED, f"{what} missing")
        try:
            # exp and iat are checked below against this signer's clock.
            claims = jwt.decode(
                token,
                secret,
                algorithms=[_ALGORITHM],
                audience=audience,
                options={"require": ["exp", "iat", "aud"], "verify_exp": False,
                         "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise GatewayError(PERMISSION_DENIED, f"{what} is invalid") from exc
        if not isinstance(claims, dict) or not all(_number(claims[k]) for k in ("exp", "iat")):
            raise GatewayError(PERMISSION_DENIED, f"{what} is invalid")
        if not expired_ok and claims["exp"] <= self._clock():
            raise GatewayError(PERMISSION_DENIED, f"{what} expired")
        return claims


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
