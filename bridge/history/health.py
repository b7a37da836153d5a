"""Write faults of the state directory: how a failing disk is reported, once, and its recovery.

The writers of `state_dir` (each ring log's writer, the audit trail, the users and tokens
files) each own a `WriteHealth` and tell it about every write that fails (`failed`) and when
writes work again (`recovered`). The first failure of an outage logs one ERROR line naming the
file and the error; later failures of the same outage are only counted; the recovery logs one
line saying how long the outage lasted and how many writes failed. An outage beginning less than
REPORT_EVERY after the last one was reported is counted and shown but not logged again, so a
card that keeps failing and working gives at most one pair of lines a minute. `status()` is what
`/api/ports` (admins), `/healthz` and `/metrics` show. Safe to call from any thread (a ring
log's writer reports from the one writer thread, bridge.history.ringwriter).
"""

from __future__ import annotations

import datetime
import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
REPORT_EVERY = 60.0  # seconds between two logged outages of one file at most
# what a failing, full or read-only disk answers, or a process out of file descriptors (ulimit
# -n): retried or worked around, never fatal (any other OSError, such as ELOOP for a planted
# symlink, stays an error)
DISK_ERRORS = frozenset(
    {errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}
)


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds")


class WriteHealth:
    """Whether the writes of one file (or family of files) currently work."""

    def __init__(
        self,
        what: str,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.what = what  # "ring log /var/lib/serial-bridge/logs/lab.ring"
        self._monotonic, self._wall = monotonic, wall
        self._lock = threading.Lock()
        self.failures = 0  # writes that failed, ever (the metrics' counter)
        self.outages = 0
        self.error: str | None = None  # the first error of the outage in progress
        self._began = 0.0  # monotonic start of the outage in progress
        self._since = 0.0  # its wall-clock start, for people
        self._failed_now = 0  # failures of the outage in progress
        self._logged = False  # the outage in progress was logged
        self._last_report: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, exc: OSError, doing: str = "write") -> None:
        """A write (or sync, rename, ...: `doing`) of this file failed with `exc`."""
        with self._lock:
            self.failures += 1
            if self.error is not None:
                self._failed_now += 1
                return
            now = self._monotonic()
            self.error = f"{doing} failed: {exc.strerror or exc}"
            self._began, self._since, self._failed_now = now, self._wall(), 1
            self.outages += 1
            quiet = self._last_report is not None and now - self._last_report < REPORT_EVERY
            self._logged = not quiet
            if self._logged:
                self._last_report = now
        if self._logged:
            log.error("%s: %s (the consoles carry on)", self.what, self.error)

    def recovered(self) -> None:
        """Writes of this file work again (cheap when they never stopped)."""
        if self.error is None:
            return
        with self._lock:
            if self.error is None:
                return
            lasted, failed, logged = self._monotonic() - self._began, self._failed_now, self._logged
            self.error = None
        if logged:
            log.warning(
                "%s: writes work again after %.0f s (%d failed writes retried or reported)",
                *(self.what, lasted, failed),
            )

    def status(self) -> dict[str, Any]:
        """{ok, error, since, failures}: `error` and `since` (ISO 8601, UTC) while failing."""
        with self._lock:
            if self.error is None:
                return {"ok": True, "failures": self.failures}
            return {
                "ok": False,
                "error": self.error,
                "since": _iso(self._since),
                "failures": self.failures,
            }
