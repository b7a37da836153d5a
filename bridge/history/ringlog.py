"""Flash-friendly, crash-safe circular console log: one preallocated file per port.

This module owns the on-disk console history of a port and its API (`RingLog`); the layout is in
bridge.history.ringformat, the page images being built (the block being filled, blocks an append
fills whole) in bridge.history.ringpage, the writing (one writer thread for every ring: pwrite runs,
fdatasync, the bounded queue, deferred errors) in bridge.history.ringwriter, the recovery scan in
bridge.history.ringscan, the block index and reads in bridge.history.ringread. The hub owns the
timers and calls :meth:`RingLog.flush` every ``flush_interval`` when there was output. All methods
are called from one thread (the event loop); none of them waits for the device, except :meth:`close`
and, as a last resort when the device falls a full writer queue behind, append().

Writes are whole, page-aligned 4 KiB pages at page-aligned positions: a block is written when it
fills, and by flush() (which rewrites the partial block in place, then fdatasync). A silent
console causes no I/O at all. append()/add_marker()/flush() only build page images in memory and
hand a copy of each to the writer thread, the process's one (O_DIRECT with ``durable``, the
default); a page handed over but not yet written, and the newest pages `keep` asks for, are read
from memory; reads of older blocks pread() the file on the calling thread, as do open() (recovery
scan, preallocation) and close() (it waits for the writer's queue and last sync).

Errors: a failed page write or sync never reaches the caller: the writer keeps the page, writes
it again until the disk works (reads see it meanwhile) and reports the fault once through
``health`` (bridge.history.health, bridge.history.ringwriter); ``stats`` counts them.

Crash semantics: a kill -9 loses the block being filled and the queue (QUEUE_PAGES); a power cut
also the last ``flush_interval``. After either, offsets go on CRASH_GAP further (ringscan), also
when none of the process's pages reached the disk: before it returns, open() has an open record
written and synced (one page, one fdatasync; a failed write is kept and retried as any page is),
so the newest record on disk is a close record only after a clean close().

Consecutive appends within ``time_resolution`` seconds share one record (times are kept at that
granularity). Disk use is exactly ``nblocks * 4096 <= size`` bytes. The ring keeps the newest
``nblocks - 1`` written blocks plus the block being filled; a block's old content is dropped from
reads as soon as its position starts being refilled.

If the file was written with another ``nblocks`` (the configured size changed), its records are
copied into a new file of the new size (the two files coexist during the copy) that replaces it.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bridge.history import ringpage, ringread
from bridge.history.ringformat import (
    BLOCK_SIZE,
    FULL,
    KIND_CLOSE,
    KIND_DATA,
    KIND_MARKER,
    KIND_OPEN,
    MAX_MARKER_BYTES,
    RH,
    LogRecord,
    Rec,
)
from bridge.history.ringjob import SYNC, Job, RecentPages
from bridge.history.ringscan import CRASH_GAP, Block, open_locked, scan
from bridge.history.ringstats import WriteStats
from bridge.history.ringwriter import QUEUE_PAGES, PageWriter

__all__ = ["BLOCK_SIZE", "CRASH_GAP", "QUEUE_PAGES", "LogRecord", "RingLog", "WriteStats"]


class RingLog:
    """A bounded console log of one port (format: bridge.history.ringformat; behaviour: above)."""

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
        self._fd = fd  # buffered: reads, preallocation; page writes go through _writer
        self._buf = mmap.mmap(-1, BLOCK_SIZE)
        self.path = path
        self._n = nblocks
        self.flush_interval = flush_interval
        self._clock = clock
        self._res = time_resolution
        self._blocks = ringread.BlockIndex()
        self._next = 0
        self._next_seq = 0
        self._pend: ringpage.Pending | None = None
        self._unsynced = False
        self._closed = False
        self._clean = False  # the newest record is a close record: nothing new since
        self.crash_gap: tuple[int, int] | None = None  # offsets skipped by recovery after a crash
        self._cache: tuple[int, bytes, list[Rec]] | None = None
        self._recent = RecentPages()  # newest page images handed over (see keep)
        self._writer = PageWriter(fd, path, durable)
        self.stats: WriteStats = self._writer.stats
        self.health = self._writer.health

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
        record_open: bool = True,
    ) -> RingLog:
        """Create and preallocate the ring file, or open it and recover its records by scanning.

        ``size`` is authoritative: a file written with another size is converted to this one.
        The file is locked (flock) while open: a second RingLog on it raises OSError(EBUSY).

        ``durable``: pages are written with O_DIRECT where the file system allows it and flush()
        has the writer thread call fdatasync (bridge.history.ringwriter). Only tests turn it off.

        Opening scans (and, for a new file, preallocates) the whole file on the calling thread,
        then writes the open record (``record_open``; see Crash semantics) and waits until the
        writer has written and synced it. A resize's copies do without: they hand out no offset.
        """
        nblocks = size // BLOCK_SIZE
        if nblocks < 2:
            raise ValueError(f"ring log size {size} is below the minimum of {2 * BLOCK_SIZE}")
        path = Path(path)
        fd = open_locked(path)
        try:
            ring = cls(fd, path, nblocks, flush_interval, clock, time_resolution, durable)
            other = ring._recover()
            if other is None and durable:
                ring._writer.open_direct()
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
        if record_open:  # on the card before an offset is handed out (see Crash semantics)
            ring._put(KIND_OPEN, b"\x00", ring._next, ring._clock(), coalesce=False)
            ring._flush_submit()
            ring._writer.wait_idle()
        return ring

    def _recover(self) -> int | None:
        """Scan the file; returns another geometry (nblocks) if the file was written with one."""
        got = scan(self._fd, self._n)
        if got.other_geometry is not None:
            return got.other_geometry
        self._blocks = ringread.BlockIndex(got.blocks)
        self._next, self._next_seq = got.next_offset, got.next_seq
        self._clean, self.crash_gap = got.clean, got.crash_gap
        if got.resume is not None:
            self._pend = ringpage.resume(self._buf, got.resume)
        return None

    @classmethod
    def _migrate(
        cls, path: Path, old_nblocks: int, size: int, time_resolution: float, durable: bool
    ) -> None:
        """Copy a ring written with another geometry into a new file of ``size``."""
        tmp = path.with_name(path.name + ".resize")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        with (
            cls.open(path, old_nblocks * BLOCK_SIZE, durable=durable, record_open=False) as old,
            cls.open(
                tmp, size, time_resolution=time_resolution, durable=durable, record_open=False
            ) as new,
        ):
            for rec in old.records(old.oldest_offset):
                kind, data = KIND_DATA, rec.data
                if rec.marker is not None:
                    kind, data = KIND_MARKER, json.dumps(rec.marker, separators=(",", ":")).encode()
                new._put(kind, data, rec.offset, rec.time, coalesce=False)
            new._next = max(new._next, old.next_offset)
        if not new.health.ok:  # the copy is incomplete: keep the old file
            tmp.unlink(missing_ok=True)
            raise OSError(errno.EIO, f"{new.health.what}: resizing failed: {new.health.error}")
        os.replace(tmp, path)

    @property
    def next_offset(self) -> int:
        """Offset the next appended byte gets."""
        return self._next

    @property
    def oldest_offset(self) -> int:
        """Oldest offset still readable (unflushed data included)."""
        oldest = self._blocks.oldest
        return self._next if oldest is None else oldest.first

    @property
    def dirty(self) -> bool:
        """True when flush() has something to write or sync."""
        p = self._pend
        return self._unsynced or (p is not None and p.used > p.written)

    def keep(self, nbytes: int) -> None:
        """Keep the page images of the newest ``nbytes`` (whole pages) in memory once written:
        recent history (replays, clients catching up) is read without the file. They are the
        images built for the writer, so this is the port's only in-memory copy of its output
        (a fast console's are built in runs of up to RUN_PAGES pages, and a run's memory goes
        with its last page kept: up to RUN_PAGES - 1 pages more)."""
        self._recent.limit = max(1, -(-nbytes // BLOCK_SIZE))
        self._recent.trim()

    # ------------------------------------------------------------------ writing
    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add console bytes; the blocks (4 KiB) it fills go to the writer thread together. Never
        waits for the device unless the writer queue is full (see the module docstring); a
        failed block write is retried and reported by the writer, never raised."""
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
        done: list[Job] = []  # the blocks filled, handed over together at the end
        while mv:
            if self._pend is None and kind == KIND_DATA and len(mv) >= FULL:
                count = min(len(mv) // FULL, self._n)  # whole blocks: the fast path
                done += ringpage.full_jobs(
                    self._blocks, self._n, self._next_seq, self._next, when, mv[: count * FULL]
                )
                self._next_seq, self._next = self._next_seq + count, self._next + count * FULL
                mv = mv[count * FULL :]
                continue
            p = self._pend if self._pend is not None else self._new_block()
            r = p.open_rec
            if not (coalesce and r is not None and 0 <= when - r.time < self._res):
                p.seal()
                need = RH + (len(mv) if kind == KIND_MARKER else 1)
                if p.used + need > BLOCK_SIZE:
                    self._retire(p, done)
                    continue
                r = Rec(kind, self._next, when, p.used + RH, 0)
                p.recs.append(r)
                p.open_rec = r
                if p.entry is None:
                    p.entry = Block(p.seq, r.offset, r.offset, when)
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
                p.entry.held += n
            else:
                p.seal()
            if p.used == BLOCK_SIZE or (p.open_rec is None and BLOCK_SIZE - p.used <= RH):
                p.seal()  # full: nothing more fits
                self._retire(p, done)
        if done:
            self._hand_over(*done)

    def _new_block(self) -> ringpage.Pending:
        seq = self._next_seq
        self._next_seq += 1
        self._blocks.drop_through(seq - self._n)  # its position is being refilled
        self._pend = ringpage.new_block(self._buf, self._n, seq)
        return self._pend

    def _retire(self, p: ringpage.Pending, done: list[Job]) -> None:
        """Move on from a full block, its page to be handed to the writer (added to `done`)
        unless a flush has written all of it. A failed write does not stop appending (offsets
        must stay in step with the hub's): the block is lost from disk, reads see a hole there
        once it has left the writer queue."""
        self._pend = None
        if p.used > p.written:
            done.append(self._job(p, flush=False))

    def _job(self, p: ringpage.Pending, *, flush: bool) -> Job:
        """A copy of the block's page for the writer (rewritten in place on flush)."""
        p.written = p.used
        return Job(p.seq, (p.seq % self._n) * BLOCK_SIZE, bytes(p.page), p.recs, p.used, flush)

    def _hand_over(self, *jobs: Job) -> None:
        """Hand page images to the writer thread, and keep them among the newest (see keep)."""
        self._recent.add(jobs)
        self._writer.submit(*jobs)
        self._unsynced = True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the writer has done all it was handed (False on timeout); tests, bench."""
        return self._writer.wait_idle(timeout)

    def flush(self) -> None:
        """Hand the partial block to the writer and have written blocks made durable; no I/O if
        nothing is pending. Does not wait for the device (nor raise its errors: see `health`)."""
        self._check_open()
        self._flush_submit()

    def _flush_submit(self) -> None:
        p = self._pend
        if p is not None and p.used > p.written:
            p.seal()
            self._hand_over(self._job(p, flush=True))
        if self._unsynced:
            self._writer.submit(SYNC)
            self._unsynced = False

    def close(self) -> None:
        """Record a clean shutdown, flush, wait for the writer (one last try of failed writes)
        and close the file; further calls do nothing."""
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
                self._writer.stop()
            finally:
                self._closed = True
                os.close(self._fd)
                self._buf.close()

    def __enter__(self) -> RingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("ring log is closed")

    # ------------------------------------------------------------------ reading
    def _block_data(self, b: Block) -> tuple[bytes | memoryview | mmap.mmap, list[Rec]]:
        p = self._pend
        if p is not None and p.seq == b.seq:
            return p.page, p.recs
        if (image := self._recent.image(b.seq) or self._writer.in_flight(b.seq)) is not None:
            return image
        if self._cache is None or self._cache[0] != b.seq:
            self._cache = (b.seq, *ringread.read_block(self._fd, self._n, b.seq))
        return self._cache[1], self._cache[2]

    def records(self, start: int, end: int | None = None) -> Iterator[LogRecord]:
        """Data and marker records overlapping [start, end) in offset order.

        Data records are trimmed to the range; markers at ``start <= offset < end`` are included
        (with ``end=None``: every marker from ``start`` on, and data appended while iterating).
        Reads one block at a time; safe to suspend between items while the ring is appended to.
        """
        self._check_open()
        start = max(start, self.oldest_offset)
        yield from ringread.records(self._blocks, self._block_data, start, end)

    def read(self, start: int, max_bytes: int) -> tuple[int, bytes]:
        """Console bytes from ``start`` (clamped up to oldest_offset): (actual_start, data).

        The bytes returned are contiguous; a hole left by damage ends the answer (a start inside
        a hole moves to the next byte held). ``(next_offset, b"")`` at the end of the log.
        """
        start = max(start, self.oldest_offset)
        if max_bytes <= 0 or start >= self._next:
            return min(start, self._next), b""
        return ringread.contiguous(self.records(start), max_bytes, self._next)

    def start_of_last(self, nbytes: int, end: int | None = None) -> int | None:
        """Where the last ``nbytes`` console bytes held before ``end`` (default: all) start,
        counting only bytes held (a hole, such as the offsets skipped after a crash, counts for
        nothing); the oldest byte held if fewer are; None if none is held before ``end``."""
        self._check_open()
        end = self._next if end is None else end
        return ringread.start_of_last(self._blocks, self._block_data, nbytes, end)

    def offset_at(self, when: float) -> int:
        """First offset received at or after wall time ``when`` (next_offset if none).

        Times are kept at ``time_resolution`` granularity (a record's time is its first byte's).
        """
        self._check_open()
        return ringread.offset_at(self._blocks, self._block_data, when, self._next)
