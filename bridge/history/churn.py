"""Audit records a client can cause at will, kept from crowding out the others.

Connecting and closing a websocket (or an SSH session) in a loop writes an `attach` and a
`detach` per round, a script hammering `/api/login` while throttled writes a refused `login` per
request, and an operator repeating a BREAK while another action runs writes a refused `break` per
message. Left alone, that churn would rotate the security events (logins, actions, user
changes) out of the size-bounded trail within minutes and write GiB a day to the SD card. So:

- `attach`/`detach` go to their own file (`CONNECTIONS_FILE`, bridge.history.audit): however
  many there are, they rotate only each other away;
- churn-prone records are *coalesced* (`Coalescer`): per key — (event, user, port) for
  connections and refused actions, (peer) for throttled logins — at most a few a minute are
  written; the rest are counted, and the next one written carries `repeated`: how many like it
  were left out before it. Actions that ran are never coalesced.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONNECTIONS_FILE = "connections.jsonl"
CONNECTION_EVENTS = frozenset({"attach", "detach"})
WINDOW = 60.0
CONNECTION_BURST = 30  # a person reconnecting never comes near this in a minute
REFUSED_LOGIN_BURST = 5  # per address; the throttle's own failures (10 a minute) are all kept
REFUSED_ACTION_BURST = 10  # per user, port and action: refused (busy, offline...) or unsupported
MAX_KEYS = 10_000


def churn_key(event: str, fields: dict[str, Any]) -> tuple[Any, ...] | None:
    """The coalescing key of a churn-prone record, or None for a record always written."""
    if event in CONNECTION_EVENTS:
        return (event, fields.get("user"), fields.get("port"))
    if event == "login" and fields.get("reason") in ("throttled", "busy"):
        return (event, fields.get("peer"))
    result = fields.get("result")
    if isinstance(result, str) and (result.startswith("refused") or result == "unsupported"):
        return (event, fields.get("user"), fields.get("port"), "refused")
    return None


@dataclass
class _Budget:
    start: float
    written: int = 0
    left_out: int = 0


class Coalescer:
    """Per key, at most `burst` records per `WINDOW`; `admit` says whether to write one now."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._keys: OrderedDict[tuple[Any, ...], _Budget] = OrderedDict()

    def admit(self, event: str, fields: dict[str, Any]) -> int | None:
        """None: leave this record out (it is counted). Otherwise write it, with `repeated` set
        to the returned count when that is not 0."""
        key = churn_key(event, fields)
        if key is None:
            return 0
        now = self._clock()
        budget = self._keys.pop(key, None)
        if budget is None or now - budget.start >= WINDOW:
            budget = _Budget(now, left_out=budget.left_out if budget else 0)
        self._keys[key] = budget  # most recently used last
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)
        burst = (
            CONNECTION_BURST
            if event in CONNECTION_EVENTS
            else REFUSED_LOGIN_BURST
            if event == "login"
            else REFUSED_ACTION_BURST
        )
        if budget.written >= burst:
            budget.left_out += 1
            return None
        budget.written += 1
        left_out, budget.left_out = budget.left_out, 0
        return left_out
