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

While blocked, every attempt gets 429 with `Retry-After` *before* the password is looked at, so
the right password does not help an attacker either. Memory is bounded: beyond `max_entries`
accounts (or sources) the stalest are forgotten first — but never one that is blocking now, so
failures on many other names cannot unlock a locked account. Blocks end within `cap`, so the
blocking entries a flood can hold are bounded by the failure rate the limits allow. The clock is
injectable.
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.first_delay, self.cap = free, first_delay, cap
        self.per_source, self.window = per_source, window
        self.max_entries = max_entries
        self.clock = clock
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        self._sources: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def _account_key(user: str) -> str:
        return user.lower()  # look-alike case variants share one counter

    def retry_after(self, user: str, source: str) -> int:
        """Seconds the caller must wait before this attempt may be checked; 0 = go ahead."""
        now = self.clock()
        wait = 0.0
        account = self._accounts.get(self._account_key(user))
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

    def failure(self, user: str, source: str) -> None:
        now = self.clock()
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
