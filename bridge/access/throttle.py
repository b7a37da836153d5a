"""Request limits: the HTTP server's time and size limits, and login throttling.

`SERVER_LIMITS` go to aiohttp's request handler (`web.AppRunner(**SERVER_LIMITS)`). In aiohttp
3.14 `keepalive_timeout` is armed when a connection is made, and fires while no complete request
head has arrived, so it is also the header-read timeout: a client that trickles its request line
and headers (slowloris) is disconnected after it. Bodies have their own bound (bridge.web.api).

Login throttling: a per-account delay that doubles after a few failures, and a per-source cap.

- Account: the first `free` failures (5) cost nothing; after that, each failure blocks the account
  for 1 s, 2 s, 4 s, ... up to `cap` (15 min), counted from that failure. A success resets it.
  Unknown user names are tracked exactly like real ones, so the answers cannot tell them apart.
- Source: a client address with `per_source` (10) failures within `window` (60 s) is refused until
  the oldest of them leaves the window.

Every door goes through `LoginThrottle.attempt(user, source)` before it checks a password or a TOTP
code (an SSH connection's keys: `source_attempt`, below): the attempt is *reserved* — counted as a
failure at once, and un-counted only when it succeeds — so parallel guesses see each other: a burst
of 40 from one address gets at most `free + 1` checks for an account and `per_source` for the
address, and the rest are refused without any hashing. While blocked, every attempt is refused (HTTP
429 with `Retry-After`) *before* the password is looked at, so the right password does not help an
attacker either. Pending checks are bounded too: `max_pending_per_source` (4) per address, so a
flood from one address cannot queue ahead of other users' logins (scrypt runs two at a time), and
`max_pending` (32) in all; beyond that an attempt is refused as busy (HTTP 503).

Memory is bounded: beyond `max_entries` accounts (or sources) the stalest are forgotten first —
but never one that is blocking now, so failures on many other names cannot unlock a locked
account. Blocks end within `cap`, so the blocking entries a flood can hold are bounded by the
failure rate the limits allow. The clock is injectable.

SSH keys and certificates (`source_attempt`) are limited by source only, one attempt per
connection: a key cannot be guessed, so the account's limit would protect nothing and would let
anyone who can type a password lock a key user (automation) out; and a key login must not reset
the account's password failures. The source's limit bounds an attacker's key offers
(bridge.ssh.auth).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SERVER_LIMITS: dict[str, Any] = {
    "keepalive_timeout": 15.0,  # idle keep-alive and header-read bound, seconds
    "max_line_size": 8190,  # request line / header line, bytes
    "max_field_size": 8190,
}


class Throttled(Exception):
    """An attempt refused before any work: retry after `retry_after` seconds. `busy`: the bridge
    as a whole has too many checks pending (not this caller's failures)."""

    def __init__(self, retry_after: int, busy: bool = False) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after, self.busy = retry_after, busy


class Attempt:
    """One reserved login attempt: already counted as a failure; `succeeded()` takes that back.
    A context manager: leaving it ends the attempt (it no longer counts as pending)."""

    def __init__(
        self, throttle: LoginThrottle, user: str | None, source: str, stamp: float, pending: bool
    ) -> None:
        self._throttle, self.user, self.source, self._stamp = throttle, user, source, stamp
        self._pending = pending

    def succeeded(self) -> None:
        self._throttle._succeeded(self.user, self.source, self._stamp)

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending:
            self._pending = False
            self._throttle._finished(self.source)


@dataclass
class _Account:
    failures: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        free: int = 5,
        first_delay: float = 1.0,
        cap: float = 15 * 60.0,
        per_source: int = 10,
        window: float = 60.0,
        max_entries: int = 10_000,
        max_pending_per_source: int = 4,
        max_pending: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.first_delay, self.cap = free, first_delay, cap
        self.per_source, self.window = per_source, window
        self.max_entries = max_entries
        self.max_pending_per_source, self.max_pending = max_pending_per_source, max_pending
        self.clock = clock
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        self._sources: OrderedDict[str, deque[float]] = OrderedDict()
        self._pending: dict[str, int] = {}  # source -> attempts being checked now

    def attempt(self, user: str, source: str) -> Attempt:
        """Reserve an attempt before any credential is checked, or raise `Throttled`."""
        wait = self.retry_after(user, source)
        if wait:
            raise Throttled(wait)
        if self._pending.get(source, 0) >= self.max_pending_per_source:
            raise Throttled(1)
        if sum(self._pending.values()) >= self.max_pending:
            raise Throttled(1, busy=True)
        self._pending[source] = self._pending.get(source, 0) + 1
        self.failure(user, source)
        return Attempt(self, user, source, self._sources[source][-1], pending=True)

    def source_attempt(self, source: str) -> Attempt:
        """Reserve an attempt governed by the source's limit alone (an SSH connection offering
        keys), or raise `Throttled`. It is not pending (a key is checked at once, nothing
        queues), and the account is neither consulted nor counted."""
        wait = self.retry_after(None, source)
        if wait:
            raise Throttled(wait)
        self.failure(None, source)
        return Attempt(self, None, source, self._sources[source][-1], pending=False)

    def _succeeded(self, user: str | None, source: str, stamp: float) -> None:
        if user is not None:
            self.success(user)
        times = self._sources.get(source)
        if times is not None and stamp in times:
            times.remove(stamp)

    def _finished(self, source: str) -> None:
        left = self._pending.get(source, 0) - 1
        if left > 0:
            self._pending[source] = left
        else:
            self._pending.pop(source, None)

    @staticmethod
    def _account_key(user: str) -> str:
        return user.lower()  # look-alike case variants share one counter

    def retry_after(self, user: str | None, source: str) -> int:
        """Seconds the caller must wait before this attempt may be checked; 0 = go ahead.
        `user` None: the source's limit only."""
        now = self.clock()
        wait = 0.0
        account = self._accounts.get(self._account_key(user)) if user is not None else None
        if account is not None and account.blocked_until > now:
            wait = account.blocked_until - now
        times = self._recent(source, now)
        if times is not None and len(times) >= self.per_source:
            wait = max(wait, times[0] + self.window - now)
        return math.ceil(wait) if wait > 0 else 0

    def _recent(self, source: str, now: float) -> deque[float] | None:
        times = self._sources.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._sources[source]
            return None
        return times

    def failure(self, user: str | None, source: str) -> None:
        """Count a failure of `user`'s account (None: none) and of `source`."""
        now = self.clock()
        if user is not None:
            key = self._account_key(user)
            account = self._accounts.pop(key, None) or _Account()
            account.failures += 1
            over = account.failures - self.free
            if over > 0:
                delay = min(self.first_delay * 2 ** min(over - 1, 64), self.cap)
                account.blocked_until = now + delay
            self._accounts[key] = account  # most recent last
        times = self._sources.pop(source, None) or deque()
        times.append(now)
        while len(times) > self.per_source:
            times.popleft()
        self._sources[source] = times
        self._bound()

    def success(self, user: str) -> None:
        self._accounts.pop(self._account_key(user), None)

    def _bound(self) -> None:
        now = self.clock()
        _evict(self._accounts, self.max_entries, lambda a: a.blocked_until > now)
        _evict(
            self._sources,
            self.max_entries,
            lambda t: len(t) >= self.per_source and t[0] > now - self.window,
        )


def _evict(table: OrderedDict[str, Any], limit: int, blocking: Callable[[Any], bool]) -> None:
    """Forget the stalest entries beyond `limit`, skipping those that block now."""
    excess = len(table) - limit
    if excess <= 0:
        return
    stale = []
    for key, entry in table.items():  # oldest first
        if not blocking(entry):
            stale.append(key)
            if len(stale) == excess:
                break
    for key in stale:
        del table[key]
