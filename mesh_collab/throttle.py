"""Login throttling: failed logins counted per account and per client address.

Like Nextcloud's brute-force throttler, failures are counted in a sliding window and a
successful login clears its account's count. Unlike it, an attempt over the limit is not
delayed (a held request is still a request): it is refused at once, with the time to wait.

Two counts apply to every attempt, and either refuses it:

* per **account**: ``max_per_account`` failures in ``window`` seconds (default 5 in 5 min).
  This is what stops guessing one user's password from many addresses;
* per **address**: ``max_per_address`` failures in ``window`` seconds (default 20 in 5 min),
  whatever the account. This is what stops trying one password on many accounts. IPv6
  addresses count per /64 network, as one host usually holds a whole /64.

A success clears the account's count only: an attacker who also holds a valid account must
not be able to clear their address's count between guesses. An attempt that is refused is
not a guess (the password is not checked, so a right one is refused as well, and the answer
tells nothing) and is not counted.

Plain Python (no I/O, no transport): the Jupyter ``/login`` form and the embedded gateway's
``Authenticate`` each keep one :class:`LoginThrottle`.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: Longest part of a user name used as a key: a huge name must not cost memory.
_MAX_KEY = 256


class LoginThrottle:
    """Counts failed logins and says when the next attempt may be tried.

    Usage::

        throttle = LoginThrottle()
        wait = throttle.retry_after(username, address)
        if wait:
            ...  # refuse: "too many failed logins, try again in {ceil(wait)} s"
        elif password_ok:
            throttle.succeeded(username, address)
        else:
            throttle.failed(username, address)

    Args:
        max_per_account: failures of one account in ``window`` after which its logins are
            refused; 0 disables the per-account count.
        max_per_address: failures from one address in ``window`` after which its logins are
            refused; 0 disables the per-address count.
        window: seconds a failure counts for.
        max_keys: accounts and addresses remembered at most (the oldest are forgotten first),
            so that made-up user names cannot fill the memory.
        clock: monotonic seconds (tests pass a fake one).
    """

    max_per_account: int
    max_per_address: int
    window: float

    def __init__(
        self,
        *,
        max_per_account: int = 5,
        max_per_address: int = 20,
        window: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_per_account < 0 or max_per_address < 0 or window <= 0 or max_keys <= 0:
            raise ValueError(
                f"bad throttle limits: max_per_account={max_per_account!r}, "
                f"max_per_address={max_per_address!r}, window={window!r}, "
                f"max_keys={max_keys!r}"
            )
        self.max_per_account = max_per_account
        self.max_per_address = max_per_address
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        # key -> times of its last failures (at most its limit: older ones cannot matter)
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def retry_after(self, account: str | None, address: str) -> float:
        """Return the seconds until a login of ``account`` from ``address`` may be tried.

        0 means now. ``account`` None checks the address only (a form without user name).
        """
        now = self._clock()
        return max(
            (self._wait(key, limit, now) for key, limit in self._keys(account, address)),
            default=0.0,
        )

    def failed(self, account: str | None, address: str) -> None:
        """Count a failed login (wrong password or unknown account)."""
        now = self._clock()
        for key, limit in self._keys(account, address):
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=limit)
            times.append(now)
            self._failures[key] = times  # now the newest key
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, account: str | None, address: str) -> None:
        """Clear the failures of ``account`` (not those of ``address``)."""
        if account is not None:
            self._failures.pop(("account", account[:_MAX_KEY]), None)

    def _keys(self, account: str | None, address: str) -> list[tuple[tuple[str, str], int]]:
        keys = []
        if account is not None and self.max_per_account:
            keys.append((("account", account[:_MAX_KEY]), self.max_per_account))
        if self.max_per_address:
            keys.append((("address", address_key(address)), self.max_per_address))
        return keys

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        times = self._failures.get(key)
        if times is None:
            return 0.0
        if now - times[-1] >= self.window:
            del self._failures[key]  # every failure of it has aged out
            return 0.0
        if len(times) < limit:
            return 0.0
        # The oldest kept failure is the limit-th most recent: once it ages out, one more
        # attempt fits in the window.
        return max(0.0, times[0] + self.window - now)


def address_key(address: str) -> str:
    """Return the throttling key of a client address.

    IPv4 addresses (also IPv4-mapped IPv6 ones) count alone, IPv6 addresses per /64; text
    that is not an IP address (a Unix socket peer) is its own key.
    """
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:_MAX_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
