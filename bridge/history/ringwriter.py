"""The ring log's writer thread: the only place page images become pwrite()s and fdatasync()s.

bridge.history.ringlog builds page images in memory and hands a copy of each to the `PageWriter` of
its RingLog (started at the first write, stopped by RingLog.close()), which performs the pwrite()s
strictly in the order they were handed over (consecutive pages at consecutive positions go out as
one pwrite of up to RUN_PAGES pages) and the fdatasync()s, each after every write handed over
before it. A full page waits up to HOLD (1 s) for the next ones, so a slow console's pages go out
as one write a second instead of one each, with one wake-up of the writer (BATCH_PAGES waiting, a
flush, a sync, wait_idle or close() have them written at once). A page handed over but not yet
written stays readable from memory (`in_flight`), so the ring's readers see exactly what they would
see if it were on disk.

Bounded queue: at most QUEUE_PAGES pages (1 MiB) may be waiting or being written; a caller that
hands over a page beyond that waits until the writer has made room (counted in ``stats.stalls``
and ``stats.stall_seconds``): console data is never dropped. At 115200 baud or at a 12-Mbaud line
rate the device keeps up and the queue stays a few pages deep; only a device that is slower than
the console for more than a full queue (1 MiB) makes the caller wait. The writer holds the GIL
only to take a run and copy it into its page-aligned buffer (pwrite and fdatasync release it).

Page writes use a second descriptor opened with O_DIRECT where the file system allows it (exactly
one page reaches the device per page written, whatever the page cache's folio size: on kernels
with large ext4 folios a buffered 4 KiB write can dirty, and write back, 64 KiB or more); if the
file system refuses O_DIRECT writes after all (EINVAL), they fall back to the buffered descriptor.

Errors: a page write or fdatasync that fails is counted in ``stats.errors`` and reported to
the ring's `WriteHealth` (bridge.history.health: one log line per outage, a status for the
API), never raised to the caller. The page is kept and written again, every RETRY_INTERVAL while
the writer has nothing else to do (its newest image: a later page for the same position replaces
it), and stays readable from memory meanwhile, so a disk that fails for a while loses nothing;
at most RETRY_PAGES pages (1 MiB) are kept so, beyond that the oldest is dropped (counted in
``stats.lost_pages``; reads then see a hole there). A failed fdatasync is retried the same way.
The health recovers once every kept page is written and a sync has worked.

Crash semantics: the writer drains its queue as fast as the device allows once pages are due, so
what a kill -9 loses is the ring's block being filled plus the pages still queued: the last HOLD
of full pages (at most BATCH_PAGES) and, on a device that lags, at most QUEUE_PAGES + 1 pages.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bridge.history.health import WriteHealth
from bridge.history.ringformat import BLOCK_SIZE, Rec

log = logging.getLogger(__name__)

QUEUE_PAGES = 256  # pages handed to the writer and not yet written: at most 1 MiB
RUN_PAGES = 64  # consecutive pages written by one pwrite (256 KiB)
RETRY_PAGES = 256  # pages whose write failed, kept to be written again: at most 1 MiB
RETRY_INTERVAL = 1.0  # seconds between attempts to write them while writes fail
HOLD = 1.0  # a full page waits up to this long for more, so they go out as one write...
BATCH_PAGES = 16  # ...unless this many are waiting, or a flush or sync (or wait_idle) asks


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


@dataclass(slots=True)
class Job:
    """A page image handed to the writer (``seq`` -1: an fdatasync after every earlier job)."""

    seq: int
    position: int
    page: bytes
    recs: list[Rec]  # the records of the page, for reads while it is in flight
    used: int
    flush: bool  # written for a flush (the partial block; SYNC follows)


SYNC = Job(-1, 0, b"", [], 0, True)


class PageWriter:
    """The background writer of one ring file (``fd``: the ring's buffered descriptor)."""

    def __init__(self, fd: int, path: Path, durable: bool) -> None:
        self._fd = fd  # buffered: fdatasync, and page writes where O_DIRECT is refused
        self._wfd = fd  # page writes: O_DIRECT where the file system allows it
        self.path = path
        self._durable = durable
        self.stats = WriteStats()
        # Shared with the thread, guarded by _cv.
        self._cv = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._inflight: dict[int, Job] = {}  # seq -> newest image handed over, until written
        self._queued = 0  # pages in _jobs or being written
        self._busy = False  # the writer is performing a job
        self._stopping = False
        self._since = 0.0  # when the oldest job still queued was handed over
        self._urgent = False  # a flush, a sync or wait_idle wants the queue written now
        self._discard = False  # stop without writing what is queued (tests: a crash)
        self._retry: dict[int, Job] = {}  # position -> newest page whose write failed
        self._sync_due = False  # an fdatasync failed: to be done again
        self.health = WriteHealth(f"ring log {path}")
        self._thread: threading.Thread | None = None

    def open_direct(self) -> None:
        """Write pages through a second, O_DIRECT descriptor where the file system allows it."""
        try:
            wfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (OSError, AttributeError):
            return
        a, b = os.fstat(wfd), os.fstat(self._fd)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            self._wfd = wfd
        else:  # the name points elsewhere now: keep writing through the locked descriptor
            os.close(wfd)

    # ---- the caller's side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Hand a page (or SYNC) over; waits only when QUEUE_PAGES pages are already queued."""
        with self._cv:
            if job.seq >= 0 and self._queued >= QUEUE_PAGES:
                # Last resort: the device is more than a full queue behind the console. Wait
                # for room rather than drop console data or let memory grow.
                began = time.perf_counter()
                while self._queued >= QUEUE_PAGES:
                    self._cv.wait()
                self.stats.stalls += 1
                self.stats.stall_seconds += time.perf_counter() - began
            if not self._jobs:
                self._since = time.monotonic()
            self._jobs.append(job)
            if job.seq >= 0:
                self._inflight[job.seq] = job
                self._queued += 1
                self.stats.queue_peak = max(self.stats.queue_peak, self._queued)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"ringlog {self.path.name}", daemon=True
                )
                self._thread.start()
            if job.seq < 0 or job.flush or len(self._jobs) >= BATCH_PAGES:
                self._urgent = True
                if not self._busy:  # (a busy writer looks at the queue before it waits again)
                    self._cv.notify_all()  # else the writer wakes when the oldest waited HOLD

    def in_flight(self, seq: int) -> Job | None:
        """The newest image of block ``seq`` handed over and not yet in the file, if any."""
        if not self._inflight:
            return None
        with self._cv:  # the writer removes a job only once its page is in the file
            return self._inflight.get(seq)

    @property
    def retrying(self) -> int:
        """Pages whose write failed, kept to be written again."""
        return len(self._retry)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every page and sync handed over is done (False on timeout)."""
        with self._cv:
            self._urgent = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def stop(self, *, discard: bool = False) -> None:
        """Stop the thread once its queue is written (``discard``: without writing it) and close
        the O_DIRECT descriptor; the ring closes its own."""
        with self._cv:
            self._stopping = True
            self._discard = discard
            self._cv.notify_all()
            thread = self._thread
        try:
            if thread is not None:
                thread.join()
        finally:
            if self._wfd != self._fd:
                os.close(self._wfd)
                self._wfd = self._fd

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """Perform the jobs in order, merging consecutive pages; retry failed ones when idle."""
        cv = self._cv
        # page-aligned, as O_DIRECT wants (freed with the thread: slices may outlive a write)
        view = memoryview(mmap.mmap(-1, RUN_PAGES * BLOCK_SIZE))
        while True:
            with cv:
                self._wait_for_work()
                if self._discard:
                    self._jobs.clear()
                    self._inflight.clear()
                    self._queued = 0
                    cv.notify_all()
                    return
                jobs = self._jobs
                batch: list[Job] = [jobs.popleft()] if jobs else []
                if batch and batch[0].seq >= 0:  # with the pages at the positions that follow
                    at = batch[0].position + BLOCK_SIZE  # (never 0, the position SYNC has)
                    while len(batch) < RUN_PAGES and jobs and jobs[0].position == at:
                        batch.append(jobs.popleft())
                        at += BLOCK_SIZE
                if jobs:
                    self._since = time.monotonic()
                else:
                    self._urgent = False
                self._busy = True
            try:
                if not batch:
                    self._retry_failed(view)
                elif batch[0].seq < 0:
                    self._sync()
                else:
                    self._write_run(batch, view)
            except Exception:  # a bug must not leave the caller waiting for room forever
                log.exception("ring log %s: writer failed", self.path)
            with cv:
                if batch and batch[0].seq >= 0:  # (a batch is pages, or one SYNC)
                    self._queued -= len(batch)
                    inflight, retry = self._inflight, self._retry
                    for job in batch:
                        if inflight.get(job.seq) is job and retry.get(job.position) is not job:
                            del inflight[job.seq]
                self._busy = False
                cv.notify_all()
                if self._stopping and not self._jobs and not batch:
                    return  # the last retry was made

    def _wait_for_work(self) -> None:
        """(Holding the lock.) Return when jobs are due (urgent, BATCH_PAGES of them, or the
        oldest has waited HOLD), when stopping, or when it is time to retry failed writes."""
        while not self._stopping:
            if self._jobs:
                left = self._since + HOLD - time.monotonic()
                if self._urgent or len(self._jobs) >= BATCH_PAGES or left <= 0:
                    return
                self._cv.wait(left)
            elif self._retry or self._sync_due:
                if not self._cv.wait(RETRY_INTERVAL):
                    return  # time to try the failed writes again
            else:
                self._cv.wait()

    def _write_run(self, batch: list[Job], view: memoryview) -> None:
        for i, job in enumerate(batch):
            view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = job.page
        try:
            self.write_page(batch[0].position, view[: len(batch) * BLOCK_SIZE])
        except OSError as exc:
            if len(batch) == 1:
                self._failed(batch[0], exc)
                return
            for i, job in enumerate(batch):  # find the pages that cannot be written
                try:
                    self.write_page(job.position, view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                except OSError as exc:
                    self._failed(job, exc)
                else:
                    self._written(job)
            return
        if self._retry:
            for job in batch:
                self._keep(job.position, None)
        self._check_recovered()

    def _written(self, job: Job) -> None:
        """`job`'s page is in the file: an older failed page for its position is obsolete."""
        if self._retry:
            self._keep(job.position, None)
        self._check_recovered()

    def _failed(self, job: Job, exc: OSError) -> None:
        self.stats.errors += 1
        self.health.failed(exc, f"writing block {job.seq} ({job.used} bytes)")
        self._keep(job.position, job)

    def _keep(self, position: int, job: Job | None) -> None:
        """Keep `job` (None: nothing) as the page to write again at `position`; beyond
        RETRY_PAGES the oldest kept page is dropped (lost from disk and from reads)."""
        with self._cv:
            old = self._retry.pop(position, None)
            if old is not None and old is not job and self._inflight.get(old.seq) is old:
                del self._inflight[old.seq]
            if job is None:
                return
            self._retry[position] = job
            self._inflight.setdefault(job.seq, job)
            if len(self._retry) > RETRY_PAGES:
                oldest = min(self._retry.values(), key=lambda j: j.seq)
                del self._retry[oldest.position]
                if self._inflight.get(oldest.seq) is oldest:
                    del self._inflight[oldest.seq]
                self.stats.lost_pages += 1

    def _retry_failed(self, view: memoryview) -> None:
        """Write the kept pages again, oldest first, stopping at the first that fails; then a
        failed sync."""
        for job in sorted(self._retry.values(), key=lambda j: j.seq):
            view[:BLOCK_SIZE] = job.page
            try:
                self.write_page(job.position, view[:BLOCK_SIZE])
            except OSError as exc:
                self.stats.errors += 1
                self.health.failed(exc, f"writing block {job.seq} again")
                return
            self.stats.retried += 1
            self._keep(job.position, None)
        if self._sync_due:
            self._sync()
        self._check_recovered()

    def _check_recovered(self) -> None:
        if not self._retry and not self._sync_due:
            self.health.recovered()

    def _sync(self) -> None:
        try:
            if self._durable:
                started = time.monotonic()
                os.fdatasync(self._fd)
                self.stats.sync_times.observe(time.monotonic() - started)
        except OSError as exc:
            self.stats.errors += 1
            self.health.failed(exc, "fdatasync")
            self._sync_due = True
            return
        self.stats.syncs += 1
        self._sync_due = False
        self._check_recovered()

    def write_page(self, position: int, page: bytes | memoryview) -> None:
        """Write whole pages at a page-aligned position (on the writer thread)."""
        try:
            written = os.pwrite(self._wfd, page, position)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self._wfd == self._fd:
                raise
            os.close(self._wfd)  # O_DIRECT refused after all: fall back to buffered writes
            self._wfd = self._fd
            written = os.pwrite(self._fd, page, position)
        if written != len(page):
            raise OSError(errno.EIO, f"short write to {self.path}: {written} of {len(page)} bytes")
        self.stats.writes += len(page) // BLOCK_SIZE
        self.stats.bytes_written += len(page)
        self.stats.write_calls += 1
