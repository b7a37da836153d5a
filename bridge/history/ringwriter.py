"""The ring logs' writer thread: the only place page images become pwrite()s and fdatasync()s.

bridge.history.ringlog builds page images in memory and hands a copy of each to the `PageWriter` of
its RingLog, whose close() stops it (its queue written, failed writes tried once more). One thread
per process, "ringlog writer", serves every ring's PageWriter: started at the first write of any
ring, it then lives with the process (a daemon thread), asleep while no ring has work due; a ring
with nothing queued costs it nothing, and a stopped ring's departure does not stop it.
For each ring it performs the pwrite()s strictly in the order they were handed over (consecutive
pages at consecutive positions go out as one pwrite of up to RUN_PAGES pages) and the fdatasync()s,
each after every write handed to that ring before it. A full page waits up to HOLD (1 s) for the
next ones, so a slow console's pages go out as one write a second instead of one each (BATCH_PAGES
waiting, a flush, a sync, wait_idle or stop() have them written at once). Each time it wakes, the
thread takes the rings whose work is due in turn (one run or one sync of a ring, then the next
ring's) and sleeps until the nearest deadline of any ring. A ring whose device is slow delays the
others by its own writes only, acceptable as every ring lives in the one `state_dir` (one device,
where their writes would queue up anyway). 48 ports: one thread and one page-aligned run buffer,
not 48 of each (#19). A page handed over but not yet written stays readable from memory
(`in_flight`), so the ring's readers see exactly what they would see if it were on disk. One
Condition (`_cv`) guards the thread's list and every PageWriter's state; it is held to hand a job
over, take it or account for it, never across a pwrite or fdatasync.

Bounded queue: at most QUEUE_PAGES pages (1 MiB) of a ring may be waiting or being written; a caller
that hands over a page beyond that waits until the thread has made room (counted in
``stats.stalls`` and ``stats.stall_seconds``): console data is never dropped. At 115200 baud or at a
12-Mbaud line rate the device keeps up and the queue stays a few pages deep; only a device that is
slower than the console for more than a full queue (1 MiB) makes the caller wait. The thread holds
the GIL only to take a run and copy it into its buffer (pwrite and fdatasync release it).

Page writes use a second descriptor opened with O_DIRECT where the file system allows it (exactly
one page reaches the device per page written, whatever the page cache's folio size: on kernels
with large ext4 folios a buffered 4 KiB write can dirty, and write back, 64 KiB or more); if the
file system refuses O_DIRECT writes after all (EINVAL), they fall back to the buffered descriptor.

Errors: a page write or fdatasync that fails is counted in ``stats.errors`` and reported to
the ring's `WriteHealth` (bridge.history.health: one log line per outage, a status for the
API), never raised to the caller. The page is kept and written again, every RETRY_INTERVAL while
that ring has nothing else queued (its newest image: a later page for the same position replaces
it), and stays readable from memory meanwhile, so a disk that fails for a while loses nothing;
at most RETRY_PAGES pages (1 MiB) are kept so, beyond that the oldest is dropped (counted in
``stats.lost_pages``; reads then see a hole there). A failed fdatasync is retried the same way.
The health recovers once every kept page is written and a sync has worked.

Crash semantics: the thread drains a ring's queue as fast as the device allows once its pages are
due, so what a kill -9 loses is the ring's block being filled plus the pages still queued: the last
HOLD of full pages (at most BATCH_PAGES) and, on a device that lags, at most QUEUE_PAGES + 1 pages.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import threading
import time
from collections import deque
from pathlib import Path

from bridge.history.health import WriteHealth
from bridge.history.ringformat import BLOCK_SIZE, Rec
from bridge.history.ringjob import Job
from bridge.history.ringstats import WriteStats

log = logging.getLogger(__name__)

QUEUE_PAGES = 256  # pages of a ring handed to the writer and not yet written: at most 1 MiB
RUN_PAGES = 64  # consecutive pages written by one pwrite (256 KiB)
RETRY_PAGES = 256  # pages of a ring whose write failed, kept to be written again: at most 1 MiB
RETRY_INTERVAL = 1.0  # seconds between attempts to write them while writes fail
HOLD = 1.0  # a full page waits up to this long for more, so they go out as one write...
BATCH_PAGES = 64  # ...unless a run of this many waits, or a flush or sync (or wait_idle) asks
THREAD_NAME = "ringlog writer"


_cv = threading.Condition()  # guards the service below and the state of every PageWriter


class _Service:
    """The one writer thread and the writers with work for it (guarded by _cv)."""

    def __init__(self) -> None:
        self.active: list[PageWriter] = []  # with jobs, kept pages, a failed sync or a stop
        self.wake_at = -math.inf  # when the thread will look at them again (-inf: it is awake)
        self.thread: threading.Thread | None = None

    def enlist(self, writer: PageWriter, due: float) -> None:
        """(Holding _cv.) `writer` has work due at `due` (time.monotonic): serve it, waking the
        thread if it sleeps past that."""
        if not writer._enlisted:
            writer._enlisted = True
            self.active.append(writer)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self.thread.start()
        elif due < self.wake_at:
            _cv.notify_all()

    def delist(self, writer: PageWriter) -> None:
        """(Holding _cv.) `writer` has no work left."""
        self.active.remove(writer)
        writer._enlisted = False

    def _next_due(self) -> PageWriter:
        """(Holding _cv.) Wait for a writer with work due; the first found, it moves to the
        end of the line, so every ring gets its turn."""
        while True:
            now = time.monotonic()
            wake = math.inf
            for i, writer in enumerate(self.active):
                at = writer._due_at()
                if at <= now:
                    self.active.append(self.active.pop(i))
                    self.wake_at = -math.inf
                    return writer
                wake = min(wake, at)
            self.wake_at = wake
            _cv.wait(None if wake == math.inf else wake - now)

    def _run(self) -> None:
        """Perform the writers' due work, one run (or sync, or retry) at a time."""
        # page-aligned, as O_DIRECT wants; one for every ring, kept for the thread's life
        view = memoryview(mmap.mmap(-1, RUN_PAGES * BLOCK_SIZE))
        while True:
            with _cv:
                writer = self._next_due()
                batch = writer._take()
            if batch is None:
                continue  # discarded
            try:
                writer._perform(batch, view)
            except Exception:  # a bug must not leave a caller waiting for room forever
                log.exception("ring log %s: writer failed", writer.path)
            with _cv:
                writer._done(batch)


_service = _Service()


class PageWriter:
    """The writing of one ring file (``fd``: the ring's buffered descriptor), done by the one
    writer thread."""

    def __init__(self, fd: int, path: Path, durable: bool) -> None:
        self._fd = fd  # buffered: fdatasync, and page writes where O_DIRECT is refused
        self._wfd = fd  # page writes: O_DIRECT where the file system allows it
        self.path = path
        self._durable = durable
        self.stats = WriteStats()
        # Shared with the thread, guarded by _cv (one for every ring).
        self._cv = _cv
        self._jobs: deque[Job] = deque()
        self._inflight: dict[int, Job] = {}  # seq -> newest image handed over, until written
        self._queued = 0  # pages in _jobs or being written
        self._busy = False  # the thread is performing a job of this ring
        self._enlisted = False  # among the writers the thread serves
        self._stopping = False
        self._since = 0.0  # when the oldest job still queued was handed over
        self._urgent = False  # a flush, a sync or wait_idle wants the queue written now
        self._discard = False  # stop without writing what is queued (tests: a crash)
        self._retry: dict[int, Job] = {}  # position -> newest page whose write failed
        self._sync_due = False  # an fdatasync failed: to be done again
        self._retry_at = 0.0  # when to try them again
        self.health = WriteHealth(f"ring log {path}")

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

    def submit(self, *jobs: Job) -> None:
        """Hand pages (or SYNC) over, in order; waits only while QUEUE_PAGES pages are queued.
        Several at once (a fast console's full pages) take the lock and wake the thread once."""
        with _cv:
            for job in jobs:
                if job.seq >= 0 and self._queued + job.count > QUEUE_PAGES:
                    # Last resort (the device is a full queue behind): wait, never drop data.
                    began = time.perf_counter()
                    self._urgent = True  # what is queued is due now: the thread makes room
                    _service.enlist(self, -math.inf)
                    while self._queued + job.count > QUEUE_PAGES:
                        _cv.wait()
                    self.stats.stalls += 1
                    self.stats.stall_seconds += time.perf_counter() - began
                if not self._jobs:
                    self._since = time.monotonic()
                self._jobs.append(job)
                if job.count > 1:
                    self._inflight.update(dict.fromkeys(range(job.seq, job.seq + job.count), job))
                elif job.seq >= 0:
                    self._inflight[job.seq] = job
                if job.seq >= 0:
                    self._queued += job.count
                self._urgent |= job.seq < 0 or job.flush
            self.stats.queue_peak = max(self.stats.queue_peak, self._queued)
            self._urgent |= self._queued >= BATCH_PAGES
            # (a later job of a queue is due no sooner than its first, which the thread knows)
            _service.enlist(self, -math.inf if self._urgent else self._since + HOLD)

    def in_flight(self, seq: int) -> tuple[bytes | memoryview, list[Rec]] | None:
        """The newest image of block ``seq`` handed over and not yet in the file, if any, with
        its records."""
        if not self._inflight:
            return None
        with _cv:  # the thread removes a job only once its page is in the file
            job = self._inflight.get(seq)
        return None if job is None else job.image(seq)

    @property
    def retrying(self) -> int:
        """Pages whose write failed, kept to be written again."""
        return len(self._retry)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every page and sync handed over is done (False on timeout)."""
        with _cv:
            if self._jobs:
                self._urgent = True
                _cv.notify_all()
            return _cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def stop(self, *, discard: bool = False) -> None:
        """Wait until this ring's queue is written (``discard``: dropped) and its failed writes
        tried once more, then close the O_DIRECT descriptor; the ring closes its own."""
        with _cv:
            self._stopping = True
            self._discard = discard
            if self._enlisted:
                _cv.notify_all()
                _cv.wait_for(lambda: not self._enlisted)
        # (not reached if the wait is interrupted: the thread may still write through _wfd)
        if self._wfd != self._fd:
            os.close(self._wfd)
            self._wfd = self._fd

    # ---- on the writer thread -----------------------------------------------------------------

    def _due_at(self) -> float:
        """(Holding _cv.) When this ring's next work is due: at once if urgent, stopping or
        BATCH_PAGES are queued, when its oldest job has waited HOLD, or when to retry."""
        if self._stopping:
            return -math.inf
        if self._jobs:
            if self._urgent or self._queued >= BATCH_PAGES:
                return -math.inf
            return self._since + HOLD
        return self._retry_at if self._retry or self._sync_due else math.inf

    def _take(self) -> list[Job] | None:
        """(Holding _cv.) The next batch: the oldest job with the pages at the positions that
        follow, or [] (retry the failed writes); None when stopped without writing the queue."""
        if self._discard:
            self._jobs.clear()
            self._inflight.clear()
            self._queued = 0
            _service.delist(self)
            _cv.notify_all()
            return None
        jobs = self._jobs
        batch: list[Job] = [jobs.popleft()] if jobs else []
        if batch and batch[0].seq >= 0:  # with the pages at the positions that follow
            n = batch[0].count
            at = batch[0].position + n * BLOCK_SIZE  # (never 0, the position SYNC has)
            while jobs and jobs[0].position == at and n + jobs[0].count <= RUN_PAGES:
                batch.append(job := jobs.popleft())
                n += job.count
                at += job.count * BLOCK_SIZE
        if jobs:
            self._since = time.monotonic()
        else:
            self._urgent = False
        self._busy = True
        return batch

    def _perform(self, batch: list[Job], view: memoryview) -> None:
        if not batch:
            self._retry_failed(view)
        elif batch[0].seq < 0:
            self._sync()
        else:
            self._write_run(batch, view)

    def _done(self, batch: list[Job]) -> None:
        """(Holding _cv.) Account for a batch; delist the ring once it has no work left."""
        if batch and batch[0].seq >= 0:  # (a batch is pages, or one SYNC)
            inflight, retry = self._inflight, self._retry
            for job in batch:
                self._queued -= job.count
                if retry.get(job.position) is not job:  # (kept to be written again: readable)
                    for seq in range(job.seq, job.seq + job.count):
                        if inflight.get(seq) is job:
                            del inflight[seq]
        self._busy = False
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        if self._stopping:
            done = not self._jobs and not batch
        else:
            done = not self._jobs and not self._retry and not self._sync_due
        if done:
            _service.delist(self)
        _cv.notify_all()

    def _write_run(self, batch: list[Job], view: memoryview) -> None:
        at = 0
        for job in batch:
            view[at : at + len(job.page)] = job.page
            at += len(job.page)
        try:
            self.write_page(batch[0].position, view[:at])
        except OSError as exc:
            pages = [page for job in batch for page in job.pages()]
            if len(pages) == 1:
                self._failed(pages[0], exc)
                return
            for i, page in enumerate(pages):  # find the pages that cannot be written
                try:
                    self.write_page(page.position, view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                except OSError as exc:
                    self._failed(page, exc)
                else:
                    self._written(page)
            return
        if self._retry:
            for job in batch:
                for i in range(job.count):
                    self._keep(job.position + i * BLOCK_SIZE, None)
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
        with _cv:
            old = self._retry.pop(position, None)
            if old is not None and old is not job and self._inflight.get(old.seq) is old:
                del self._inflight[old.seq]
            if job is None:
                return
            self._retry[position] = job
            held = self._inflight.get(job.seq)
            if held is None or not held.recs:  # (a page of a run is kept on its own)
                self._inflight[job.seq] = job
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
