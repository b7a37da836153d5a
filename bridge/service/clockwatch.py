"""Wall-clock steps, noticed: a bridge without a real-time clock boots with a wrong time that NTP
(or a person) later steps, forwards or back.

Durations in the bridge (sessions, idle leases, throttling, retries, churn windows) use the
monotonic clock, which a step does not move; what the wall clock dates is the console history,
the audit trail and TOTP codes. So a step is worth knowing about: `watch_clock` compares how far
the wall clock moved with how far the monotonic clock did, every CHECK seconds, and a difference
of more than STEP seconds logs one line, records a `clock-step` audit event and puts a
`clock-step` marker (`by`: seconds, `to`: the new time) in every port's history, where the jsonl
log shows which records were dated by the old clock.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from bridge.console.port import Port
from bridge.history.audit import Auditor

log = logging.getLogger(__name__)
CHECK = 1.0  # seconds between looks
STEP = 2.0  # a difference beyond this is a step, not drift or a late wake-up


def step_seen(wall: float, mono: float, last_wall: float, last_mono: float) -> float | None:
    """How far the wall clock stepped between two looks, or None within STEP."""
    by = (wall - last_wall) - (mono - last_mono)
    return by if abs(by) > STEP else None


def watch_clock(
    ports: Callable[[], Mapping[str, Port]],
    audit: Auditor,
    wall: Callable[[], float] = time.time,
    mono: Callable[[], float] = time.monotonic,
) -> Coroutine[Any, Any, None]:
    """The watch, to run for the daemon's lifetime (cancel to stop). Its first look is taken now,
    not when its task first runs: on uvloop the daemon can log "listening" before that, and a
    step in between would go unseen."""
    return _watch(ports, audit, wall, mono, wall(), mono())


async def _watch(
    ports: Callable[[], Mapping[str, Port]],
    audit: Auditor,
    wall: Callable[[], float],
    mono: Callable[[], float],
    last_wall: float,
    last_mono: float,
) -> None:
    while True:
        await asyncio.sleep(CHECK)
        now_wall, now_mono = wall(), mono()
        by = step_seen(now_wall, now_mono, last_wall, last_mono)
        last_wall, last_mono = now_wall, now_mono
        if by is None:
            continue
        to = datetime.datetime.fromtimestamp(now_wall, datetime.UTC).isoformat(timespec="seconds")
        log.warning(
            "the wall clock stepped by %+.0f s (now %s): history from now on is dated by it",
            *(by, to),
        )
        fields: dict[str, Any] = {"by": round(by, 3), "to": to}
        audit.record("clock-step", **fields)
        for port in ports().values():
            if port.ringlog is not None:
                try:
                    port.ringlog.add_marker({"event": "clock-step", **fields})
                except (OSError, ValueError):  # a closed (removed) port's log
                    continue
