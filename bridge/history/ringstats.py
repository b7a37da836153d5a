"""The ring log's write counters: `WriteStats` (what a RingLog handed to the file system, its
write faults and the waits of a full writer queue) and `Durations` (the fdatasync histogram that
/metrics shows). Filled in by bridge.history.ringwriter, read by tests, the bench and /metrics.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

SYNC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Durations:
    """A histogram of durations (bucket counts and their sum), safe across threads."""

    def __init__(self, bounds: tuple[float, ...] = SYNC_BUCKETS) -> None:
        self.bounds = (*bounds, float("inf"))
        self._counts = [0] * len(self.bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """([(upper bound, observations <= it), ...] ending with +inf, sum of all)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip(self.bounds, counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return cumulative, total


@dataclass
class WriteStats:
    """Counters of what a RingLog handed to the file system (for tests and the bench)."""

    writes: int = 0  # pages written
    bytes_written: int = 0
    syncs: int = 0
    errors: int = 0  # page writes and syncs that failed (append() does not raise for them)
    retried: int = 0  # pages written by a retry after their first write failed
    lost_pages: int = 0  # failed pages dropped from a full retry buffer (a hole on disk)
    write_calls: int = 0  # pwrite() calls (a call writes up to RUN_PAGES consecutive pages)
    queue_peak: int = 0  # most pages waiting for the writer at once (<= QUEUE_PAGES)
    stalls: int = 0  # times the caller waited for room in a full queue
    stall_seconds: float = 0.0  # caller time spent waiting so
    sync_times: Durations = field(default_factory=Durations)  # fdatasync durations
