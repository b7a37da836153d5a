"""Flash-friendly, crash-safe circular console log: one preallocated file per port.

This module owns the on-disk console history of a port; the block and record layout is in
bridge/ringformat.py. The hub owns the timers and calls :meth:`RingLog.flush` every
``flush_interval`` when there was output. All methods are called from one thread (the event
loop); none of them waits for the device, except :meth:`close` and, as a last resort when the
device falls far behind, a full writer queue (see below).

Writes are whole, page-aligned 4 KiB pages at page-aligned positions: a block is written when it
fills, and by flush() (which rewrites the partial block in place, then fdatasync). A silent
console causes no I/O at all. With ``durable`` (the default) the pages go out with O_DIRECT, so
exactly one page reaches the device per page written whatever the page cache's folio size (on
kernels with large ext4 folios a buffered 4 KiB write can dirty, and write back, 64 KiB or more).

Writer thread: append()/add_marker()/flush() only build page images in memory and hand a copy of
each to a background thread of this RingLog (started at the first write, stopped by close()),
which performs the pwrite()s strictly in the order they were handed over (consecutive pages at
consecutive positions go out as one pwrite of up to RUN_PAGES pages) and the fdatasync()s, each
after every write handed over before it. A page handed over but not yet written stays readable
from memory (records()/read()/offset_at() see exactly what they would see if it were on disk).
At most QUEUE_PAGES pages (1 MiB) may be waiting or being written; a caller that hands over a
page beyond that waits until the writer has made room (counted in ``stats.stalls`` and
``stats.stall_seconds``): console data is never dropped. At 115200 baud or at a 12-Mbaud line
rate the device keeps up and the queue stays a few pages deep; only a device that is slower than
the console for more than a full queue (1 MiB) makes the caller wait. The writer holds the GIL
only to take a run and copy it into its page-aligned buffer (pwrite and fdatasync release it).
Reads of blocks already written still pread() the file on the calling thread (from the page
cache as a rule), as do open() (recovery scan, preallocation) and close() (it waits for the
writer's queue and last sync).

Errors: a page write that fails in the writer is logged and counted in ``stats.errors`` (append()
never raises for it; the block is lost from disk and reads of it see a hole once it has left the
queue); if it was written for a flush(), or an fdatasync fails, the error is also kept and raised
(OSError) by the next flush() or by close(), like an error of a deferred write on close(2), and
the next flush() writes a block whose flush write failed again if it is still being filled.

Crash semantics: the writer drains its queue as fast as the device allows, so what a kill -9 loses
is the block being filled plus the pages still queued (at most QUEUE_PAGES + 1 pages); a power
cut loses at most the last ``flush_interval`` of output plus the queue.

Recovery scans every block header and record once at open (no index or metadata file exists);
the position of the write head, offsets and times come from the scan. A record that fails its
checksum ends its block; the other blocks are kept. Offsets never decrease: the next append
continues after the highest recovered offset, and when the newest record is not a clean-close
record (kill -9, power cut) CRASH_GAP (2 MiB) further on, so offsets handed out for data that
never reached the disk are not reused: CRASH_GAP covers everything a kill -9 can lose (the writer
queue plus one block) and a power cut's ``flush_interval`` (5 s) at up to 3 Mbaud. Readers see
the gap as a hole.

Consecutive appends within ``time_resolution`` seconds share one record (times are kept at that
granularity). Disk use is exactly ``nblocks * 4096 <= size`` bytes. The ring keeps the newest
``nblocks - 1`` written blocks plus the block being filled; a block's old content is dropped from
reads as soon as its position starts being refilled.

If the file was written with another ``nblocks`` (the configured size changed), its records are
copied into a new file of the new size (the two files coexist during the copy) that replaces it.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.history.ringformat import (
    BH,
    BLOCK_SIZE,
    KIND_CLOSE,
    KIND_DATA,
    KIND_MARKER,
    MAX_MARKER_BYTES,
    RH,
    LogRecord,
    Rec,
    block_header,
    marker,
    parse_header,
    parse_records,
    seal_record,
)

__all__ = ["BLOCK_SIZE", "CRASH_GAP", "QUEUE_PAGES", "LogRecord", "RingLog", "WriteStats"]

log = logging.getLogger(__name__)

QUEUE_PAGES = 256  # pages handed to the writer and not yet written: at most 1 MiB
RUN_PAGES = 64  # consecutive pages written by one pwrite (256 KiB)
CRASH_GAP = 1 << 21
assert CRASH_GAP >= (QUEUE_PAGES + 1) * BLOCK_SIZE  # a kill -9 loses at most this much
_SCAN_CHUNK = 256 * BLOCK_SIZE
_ZEROS = bytes(BLOCK_SIZE)


@dataclass
class WriteStats:
    """Counters of what this RingLog handed to the file system (for tests and the bench)."""

    writes: int = 0  # pages written
    bytes_written: int = 0
    syncs: int = 0
    errors: int = 0  # page writes and syncs that failed (append() does not raise for them)
    write_calls: int = 0  # pwrite() calls (a call writes up to RUN_PAGES consecutive pages)
    queue_peak: int = 0  # most pages waiting for the writer at once (<= QUEUE_PAGES)
    stalls: int = 0  # times the caller waited for room in a full queue
    stall_seconds: float = 0.0  # caller time spent waiting so


@dataclass(slots=True)
class _Block:
    """In-memory index entry of one block holding at least one record."""

    seq: int
    first: int
    end: int
    tmax: float


@dataclass(slots=True)
class _Pending:
    """The block being filled (in memory; the writer has been handed its first ``written``
    bytes)."""

    seq: int
    page: mmap.mmap
    recs: list[Rec] = field(default_factory=list)
    used: int = BH
    written: int = 0
    open_rec: Rec | None = None
    entry: _Block | None = None


@dataclass(slots=True)
class _Job:
    """A page image handed to the writer (``seq`` -1: an fdatasync after every earlier job)."""

    seq: int
    position: int
    page: bytes
    recs: list[Rec]  # the records of the page, for reads while it is in flight
    used: int
    flush: bool  # written for flush(): a failure is raised by the next flush()/close()


_SYNC = _Job(-1, 0, b"", [], 0, True)


class RingLog:
    """A bounded console log of one port (format: bridge/ringformat.py; behaviour: above)."""

    def __init__(
        self,
        fd: int,
        path: Path,
        nblocks: int,
        flush_interval: float,
        clock: Callable[[], float],
        time_resolution: float,
        durable: bool,
    ) -> None:
        self._fd = fd  # buffered: reads, preallocation, fdatasync
        self._wfd = fd  # page writes (writer thread): O_DIRECT where the file system allows it
        self._buf = mmap.mmap(-1, BLOCK_SIZE)
        self.path = path
        self._n = nblocks
        self.flush_interval = flush_interval
        self._clock = clock
        self._res = time_resolution
        self._durable = durable
        self._blocks: list[_Block] = []
        self._next = 0
        self._next_seq = 0
        self._pend: _Pending | None = None
        self._unsynced = False
        self._closed = False
        self._clean = False  # the newest record is a close record: nothing new since
        self._cache: tuple[int, bytes, list[Rec]] | None = None
        self.stats = WriteStats()
        # Writer thread state, guarded by _cv.
        self._cv = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._inflight: dict[int, _Job] = {}  # seq -> newest image handed over, until written
        self._queued = 0  # pages in _jobs or being written
        self._busy = False  # the writer is performing a job
        self._stopping = False
        self._discard = False  # stop without writing what is queued (tests: a crash)
        self._error: OSError | None = None  # to raise from the next flush()/close()
        self._rewrite: set[int] = set()  # blocks whose flush write failed: the next flush retries
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ open / recovery
    @classmethod
    def open(
        cls,
        path: Path,
        size: int,
        flush_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        *,
        time_resolution: float = 1.0,
        durable: bool = True,
    ) -> RingLog:
        """Create and preallocate the ring file, or open it and recover its records by scanning.

        ``size`` is authoritative: a file written with another size is converted to this one.
        The file is locked (flock) while open: a second RingLog on it raises OSError(EBUSY).

        ``durable``: blocks are written with O_DIRECT (where the file system allows it: exactly
        one page reaches the device per page written, whatever the page cache's folio size) and
        flush() has the writer thread call fdatasync. Turn it off only in tests.

        Opening scans (and, for a new file, preallocates) the whole file on the calling thread.
        """
        nblocks = size // BLOCK_SIZE
        if nblocks < 2:
            raise ValueError(f"ring log size {size} is below the minimum of {2 * BLOCK_SIZE}")
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                msg = f"ring log {path} is open elsewhere (one writer only)"
                raise OSError(errno.EBUSY, msg) from None
            ring = cls(fd, path, nblocks, flush_interval, clock, time_resolution, durable)
            other = ring._recover()
            if other is None and durable:
                ring._open_direct()
        except BaseException:
            os.close(fd)
            raise
        if other is not None:
            ring._closed = True
            ring._buf.close()
            os.close(fd)
            cls._migrate(path, other, size, time_resolution, durable)
            return cls.open(
                path, size, flush_interval, clock, time_resolution=time_resolution, durable=durable
            )
        return ring

    def _recover(self) -> int | None:
        """Scan the file; returns another geometry (nblocks) if the file was written with one."""
        length = os.fstat(self._fd).st_size
        found: list[tuple[int, int, list[Rec]]] = []  # (seq, position, records)
        geometries: dict[int, int] = {}
        for base in range(0, min(length, self._n * BLOCK_SIZE), _SCAN_CHUNK):
            raw = os.pread(self._fd, _SCAN_CHUNK, base)
            if len(raw) % BLOCK_SIZE:  # a file cut short: the missing bytes read as zeros
                raw += bytes(BLOCK_SIZE - len(raw) % BLOCK_SIZE)
            chunk = memoryview(raw)
            for at in range(0, len(chunk) - BLOCK_SIZE + 1, BLOCK_SIZE):
                page = chunk[at : at + BLOCK_SIZE]
                head = parse_header(page)
                if head is None:
                    continue
                nblocks, seq = head
                geometries[seq] = nblocks
                if nblocks == self._n and seq % self._n == (base + at) // BLOCK_SIZE:
                    found.append((seq, (base + at) // BLOCK_SIZE, parse_records(page, seq)))
        if geometries:
            newest_geometry = geometries[max(geometries)]
            if newest_geometry != self._n:
                return newest_geometry
        if length < self._n * BLOCK_SIZE:
            self._preallocate(length)
        if not found:
            return None
        found.sort()
        for seq, _pos, recs in found:
            if not recs or recs[0].offset < self._next:
                continue
            self._blocks.append(
                _Block(seq, recs[0].offset, recs[-1].end, max(r.time for r in recs))
            )
            self._next = recs[-1].end
        top_seq, top_pos, top_recs = found[-1]
        kept_top = bool(top_recs and self._blocks) and self._blocks[-1].seq == top_seq
        self._clean = kept_top and top_recs[-1].kind == KIND_CLOSE
        if self._blocks and not self._clean:
            self._next += CRASH_GAP  # offsets handed out but never flushed are not reused
        self._next_seq = top_seq + 1
        last = top_recs[-1] if top_recs else None
        room = BLOCK_SIZE - (last.pos + last.length if last else BH)
        usable = not top_recs or kept_top
        if usable and room >= RH + 1:
            # Resume filling the newest block; the next write rewrites it with the same prefix.
            used = BLOCK_SIZE - room
            self._buf[:] = bytes(BLOCK_SIZE)
            self._buf[:used] = os.pread(self._fd, used, top_pos * BLOCK_SIZE)
            entry = self._blocks[-1] if top_recs else None
            self._pend = _Pending(top_seq, self._buf, list(top_recs), used, used, None, entry)
        return None

    def _preallocate(self, start: int) -> None:
        """Write zeros once, page by page (small page-cache folios if O_DIRECT is unavailable)."""
        zeros = bytes(BLOCK_SIZE)
        total = self._n * BLOCK_SIZE
        os.ftruncate(self._fd, total)
        for at in range(-(-start // BLOCK_SIZE) * BLOCK_SIZE, total, BLOCK_SIZE):
            os.pwrite(self._fd, zeros, at)
        os.fsync(self._fd)

    def _open_direct(self) -> None:
        try:
            self._wfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self._wfd = self._fd

    @classmethod
    def _migrate(
        cls, path: Path, old_nblocks: int, size: int, time_resolution: float, durable: bool
    ) -> None:
        """Copy a ring written with another geometry into a new file of ``size``."""
        tmp = path.with_name(path.name + ".resize")
        tmp.unlink(missing_ok=True)
        with (
            cls.open(path, old_nblocks * BLOCK_SIZE, durable=durable) as old,
            cls.open(tmp, size, time_resolution=time_resolution, durable=durable) as new,
        ):
            for rec in old.records(old.oldest_offset):
                if rec.marker is None:
                    new._put(KIND_DATA, rec.data, rec.offset, rec.time, coalesce=False)
                else:
                    payload = json.dumps(rec.marker, separators=(",", ":")).encode()
                    new._put(KIND_MARKER, payload, rec.offset, rec.time, coalesce=False)
            new._next = max(new._next, old.next_offset)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ properties
    @property
    def next_offset(self) -> int:
        """Offset the next appended byte gets."""
        return self._next

    @property
    def oldest_offset(self) -> int:
        """Oldest offset still readable (unflushed data included)."""
        return self._blocks[0].first if self._blocks else self._next

    @property
    def dirty(self) -> bool:
        """True when flush() has something to write or sync."""
        p = self._pend
        if p is not None and p.seq in self._rewrite:
            return True
        return self._unsynced or (p is not None and p.used > p.written)

    # ------------------------------------------------------------------ writing
    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add console bytes; a block is handed to the writer thread when it fills (4 KiB). Never
        waits for the device unless the writer queue is full (see the module docstring); a
        failed block write is logged and counted in ``stats.errors``, not raised."""
        if data:
            self._put(KIND_DATA, data, self._next, self._clock(), coalesce=True)

    def add_marker(self, event: dict[str, Any]) -> None:
        """Add an event marker at the current next_offset."""
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        if len(payload) > MAX_MARKER_BYTES:
            raise ValueError(f"marker is {len(payload)} bytes, the limit is {MAX_MARKER_BYTES}")
        self._put(KIND_MARKER, payload, self._next, self._clock(), coalesce=False)

    def _put(
        self,
        kind: int,
        data: bytes | bytearray | memoryview,
        offset: int,
        when: float,
        *,
        coalesce: bool,
    ) -> None:
        self._check_open()
        if offset < self._next:
            raise ValueError("offsets must not go backwards")
        self._clean = kind == KIND_CLOSE
        self._next = offset
        mv = memoryview(data)
        while mv:
            p = self._pend if self._pend is not None else self._new_block()
            r = p.open_rec
            if not (coalesce and r is not None and 0 <= when - r.time < self._res):
                self._seal(p)
                need = RH + (len(mv) if kind == KIND_MARKER else 1)
                if p.used + need > BLOCK_SIZE:
                    self._retire(p)
                    continue
                r = Rec(kind, self._next, when, p.used + RH, 0)
                p.recs.append(r)
                p.open_rec = r
                if p.entry is None:
                    p.entry = _Block(p.seq, r.offset, r.offset, when)
                    self._blocks.append(p.entry)
                p.entry.tmax = max(p.entry.tmax, when)
            n = min(BLOCK_SIZE - r.pos - r.length, len(mv))
            at = r.pos + r.length
            p.page[at : at + n] = mv[:n]
            r.length += n
            p.used = at + n
            mv = mv[n:]
            if kind == KIND_DATA:
                self._next += n
                assert p.entry is not None
                p.entry.end = self._next
            else:
                self._seal(p)
            if p.used == BLOCK_SIZE or (p.open_rec is None and BLOCK_SIZE - p.used <= RH):
                self._seal(p)  # full: nothing more fits
                self._retire(p)

    def _new_block(self) -> _Pending:
        seq = self._next_seq
        self._next_seq += 1
        while self._blocks and self._blocks[0].seq <= seq - self._n:
            self._blocks.pop(0)  # its position is being refilled
        page = self._buf
        page[:] = _ZEROS
        page[:BH] = block_header(self._n, seq)
        self._pend = _Pending(seq, page)
        return self._pend

    def _seal(self, p: _Pending) -> None:
        r = p.open_rec
        if r is not None:
            p.open_rec = None
            seal_record(p.page, p.seq, r)

    def _retire(self, p: _Pending) -> None:
        """Hand a full block to the writer and move on. A failed write does not stop appending
        (offsets must stay in step with the hub's): the block is lost from disk, reads see a
        hole there once it has left the writer queue."""
        self._pend = None
        self._write(p, flush=False)

    def _write(self, p: _Pending, *, flush: bool) -> None:
        """Hand a copy of the block's page to the writer (rewritten in place on flush)."""
        if p.used <= p.written:
            return
        position = (p.seq % self._n) * BLOCK_SIZE
        self._submit(_Job(p.seq, position, bytes(p.page), p.recs, p.used, flush))
        p.written = p.used
        self._unsynced = True

    def _submit(self, job: _Job) -> None:
        with self._cv:
            if job.seq >= 0 and self._queued >= QUEUE_PAGES:
                # Last resort: the device is more than a full queue behind the console. Wait
                # for room rather than drop console data or let memory grow.
                began = time.perf_counter()
                while self._queued >= QUEUE_PAGES:
                    self._cv.wait()
                self.stats.stalls += 1
                self.stats.stall_seconds += time.perf_counter() - began
            self._jobs.append(job)
            if job.seq >= 0:
                self._inflight[job.seq] = job
                self._queued += 1
                self.stats.queue_peak = max(self.stats.queue_peak, self._queued)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._writer, name=f"ringlog {self.path.name}", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def _writer(self) -> None:
        """The writer thread: performs the jobs in order, merging consecutive pages."""
        cv = self._cv
        # page-aligned, as O_DIRECT wants (freed with the thread: slices may outlive a write)
        view = memoryview(mmap.mmap(-1, RUN_PAGES * BLOCK_SIZE))
        while True:
            with cv:
                while not self._jobs and not self._stopping:
                    cv.wait()
                if self._discard or not self._jobs:
                    self._jobs.clear()
                    self._inflight.clear()
                    self._queued = 0
                    cv.notify_all()
                    return
                batch = [self._jobs.popleft()]
                while (
                    batch[0].seq >= 0
                    and len(batch) < RUN_PAGES
                    and self._jobs
                    and self._jobs[0].seq >= 0
                    and self._jobs[0].position == batch[-1].position + BLOCK_SIZE
                ):
                    batch.append(self._jobs.popleft())
                self._busy = True
            try:
                if batch[0].seq < 0:
                    self._sync()
                else:
                    self._write_run(batch, view)
            except Exception:  # a bug must not leave the caller waiting for room forever
                log.exception("ring log %s: writer failed", self.path)
            with cv:
                for job in batch:
                    if job.seq >= 0:
                        self._queued -= 1
                        if self._inflight.get(job.seq) is job:
                            del self._inflight[job.seq]
                self._busy = False
                cv.notify_all()

    def _write_run(self, batch: list[_Job], view: memoryview) -> None:
        for i, job in enumerate(batch):
            view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = job.page
        try:
            self._write_page(batch[0].position, view[: len(batch) * BLOCK_SIZE])
            return
        except OSError as exc:
            if len(batch) == 1:
                self._failed(batch[0], exc)
                return
        for i, job in enumerate(batch):  # find the pages that cannot be written
            try:
                self._write_page(job.position, view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            except OSError as exc:
                self._failed(job, exc)

    def _failed(self, job: _Job, exc: OSError) -> None:
        self.stats.errors += 1
        log.error("ring log %s: block write failed, %d bytes lost: %s", self.path, job.used, exc)
        if job.flush:
            with self._cv:
                self._error = self._error or exc
                self._rewrite.add(job.seq)

    def _sync(self) -> None:
        try:
            if self._durable:
                os.fdatasync(self._fd)
        except OSError as exc:
            self.stats.errors += 1
            log.error("ring log %s: fdatasync failed: %s", self.path, exc)
            with self._cv:
                self._error = self._error or exc
            return
        self.stats.syncs += 1

    def _write_page(self, position: int, page: bytes | memoryview) -> None:
        """Write whole pages at a page-aligned position (writer thread)."""
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

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every page and sync handed to the writer is done (False on timeout).
        For tests and benchmarks; callers on the event loop never need it."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def flush(self) -> None:
        """Hand the partial block to the writer and have written blocks made durable; no I/O if
        nothing is pending. Does not wait for the device: raises (OSError) an error of an
        earlier flush's write or sync instead."""
        self._check_open()
        self._flush_submit()
        self._raise_error()

    def _flush_submit(self) -> None:
        p = self._pend
        if self._rewrite:
            with self._cv:
                if p is not None and p.seq in self._rewrite:
                    p.written = 0  # its last write failed: write it again
                self._rewrite.clear()
        if p is not None and p.used > p.written:
            self._seal(p)
            self._write(p, flush=True)
        if self._unsynced:
            self._submit(_SYNC)
            self._unsynced = False

    def _raise_error(self) -> None:
        with self._cv:
            exc, self._error = self._error, None
        if exc is not None:
            raise OSError(exc.errno, f"ring log {self.path}: write failed: {exc.strerror}")

    def _stop_writer(self, *, discard: bool = False) -> None:
        """Stop the writer thread once its queue is written (``discard``: without writing it)."""
        with self._cv:
            self._stopping = True
            self._discard = discard
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def close(self) -> None:
        """Record a clean shutdown, flush, wait for the writer and close the file; further calls
        do nothing. Raises (OSError) an error of a flush's write or sync not raised before."""
        if self._closed:
            return
        try:
            p = self._pend
            if not self._clean and p is not None and p.used + RH + 1 <= BLOCK_SIZE:
                # (where it does not fit, no new block is started for it: that would evict the
                # oldest block; the next open then treats the shutdown as a crash)
                self._put(KIND_CLOSE, b"\x00", self._next, self._clock(), coalesce=False)
            self._flush_submit()
        finally:
            try:
                self._stop_writer()
            finally:
                self._closed = True
                if self._wfd != self._fd:
                    os.close(self._wfd)
                os.close(self._fd)
                self._buf.close()
        self._raise_error()

    def __enter__(self) -> RingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("ring log is closed")

    # ------------------------------------------------------------------ reading
    def _block_data(self, b: _Block) -> tuple[bytes | mmap.mmap, list[Rec]]:
        p = self._pend
        if p is not None and p.seq == b.seq:
            return p.page, p.recs
        if self._inflight:
            with self._cv:  # the writer removes a job only once its page is in the file
                job = self._inflight.get(b.seq)
            if job is not None:
                return job.page, job.recs
        if self._cache is not None and self._cache[0] == b.seq:
            return self._cache[1], self._cache[2]
        page = os.pread(self._fd, BLOCK_SIZE, (b.seq % self._n) * BLOCK_SIZE)
        head = parse_header(page) if len(page) == BLOCK_SIZE else None
        recs = parse_records(page, b.seq) if head == (self._n, b.seq) else []
        self._cache = (b.seq, page, recs)
        return page, recs

    def records(self, start: int, end: int | None = None) -> Iterator[LogRecord]:
        """Data and marker records overlapping [start, end) in offset order.

        Data records are trimmed to the range; markers at ``start <= offset < end`` are included
        (with ``end=None``: every marker from ``start`` on, and data appended while iterating).
        Reads one block at a time; safe to suspend between items while the ring is appended to.
        """
        self._check_open()
        start = max(start, self.oldest_offset)
        data_end = start
        seq, idx = -1, 0  # resume point: record index idx of block seq
        while True:
            if seq < 0:
                i = bisect.bisect_left(self._blocks, start, key=lambda b: b.end)
            else:
                i = bisect.bisect_left(self._blocks, seq, key=lambda b: b.seq)
            if i >= len(self._blocks):
                return
            block = self._blocks[i]
            if block.seq != seq:
                seq, idx = block.seq, 0
            page, recs = self._block_data(block)
            out: list[LogRecord] = []
            stop = False
            for j in range(idx, len(recs)):
                rec = recs[j]
                if end is not None and rec.offset >= end:
                    stop = True
                    break
                if rec.kind == KIND_CLOSE:
                    idx = j + 1
                    continue
                if rec.kind == KIND_MARKER:
                    if rec.offset >= start:
                        out.append(LogRecord(rec.offset, rec.time, b"", marker(page, rec)))
                    idx = j + 1
                    continue
                lo = max(rec.offset, data_end)
                hi = rec.end if end is None else min(rec.end, end)
                if lo < hi:
                    a = rec.pos + lo - rec.offset
                    out.append(LogRecord(lo, rec.time, bytes(page[a : a + hi - lo])))
                    data_end = hi
                idx = j  # the newest data record may still grow: look at it again
            yield from out
            if stop:
                return
            if not out:
                seq, idx = seq + 1, 0

    def read(self, start: int, max_bytes: int) -> tuple[int, bytes]:
        """Console bytes from ``start`` (clamped up to oldest_offset): (actual_start, data).

        The bytes returned are contiguous; a hole left by damage ends the answer (a start inside
        a hole moves to the next byte held). ``(next_offset, b"")`` at the end of the log.
        """
        start = max(start, self.oldest_offset)
        if max_bytes <= 0 or start >= self._next:
            return min(start, self._next), b""
        parts: list[bytes] = []
        actual = at = start
        for rec in self.records(start):
            if rec.marker is not None:
                continue
            if not parts:
                actual = at = rec.offset
            elif rec.offset != at:
                break
            take = rec.data[: max_bytes - (at - actual)]
            parts.append(take)
            at += len(take)
            if at - actual >= max_bytes:
                break
        if not parts:  # nothing held from start on: a hole up to the end
            return self._next, b""
        return actual, b"".join(parts)

    def offset_at(self, when: float) -> int:
        """First offset received at or after wall time ``when`` (next_offset if none).

        Times are kept at ``time_resolution`` granularity (a record's time is its first byte's).
        """
        self._check_open()
        for block in self._blocks:
            if block.tmax >= when:
                _page, recs = self._block_data(block)
                for rec in recs:
                    if rec.time >= when and rec.kind != KIND_CLOSE:
                        return rec.offset
        return self._next
