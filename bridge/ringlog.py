"""Flash-friendly, crash-safe circular console log: one preallocated file per port.

This module owns the on-disk console history of a port. It is synchronous: the hub owns the
timers and calls :meth:`RingLog.flush` every ``flush_interval`` when there was output.

On-disk format (all integers little-endian)
-------------------------------------------
The file is ``nblocks = size // 4096`` blocks of 4096 bytes, allocated once (zeros written) when
the file is created. Block number ``seq`` (a counter that only grows) lives at file position
``(seq % nblocks) * 4096``; the newest block is the valid block with the highest ``seq``.

Block header, 24 bytes, written once per block life and identical on every rewrite::

    magic   4s  b"SBRL"
    version B   1
    pad     3x
    nblocks I   ring geometry the block was written with
    seq     Q   block sequence number
    crc     I   zlib.crc32 of the 20 bytes above

Then records, back to back; a kind byte of 0 (the zero padding) ends the block. Record header,
24 bytes, followed by ``length`` payload bytes::

    kind    B   1 = console data, 2 = event marker (payload: a JSON object, UTF-8),
                3 = clean close (payload: one zero byte; written by close())
    pad     x
    length  H   payload length (>= 1)
    offset  Q   console offset of the first payload byte (a marker: the offset it sits at)
    time    d   wall-clock time.time() when the first byte was received
    crc     I   zlib.crc32 of (block seq as 8 bytes) + the 20 header bytes above + payload

Records never span blocks: a chunk that does not fit is split, the rest starts the next block
with its own offset and time. Consecutive appends within ``time_resolution`` seconds share one
record (times are kept at that granularity). A record is sealed (its header written) when it is
written to disk, so rewriting the current block on flush only ever adds bytes after what the
previous write held: a write torn at any byte cannot damage records that were already on disk.
Mixing the block ``seq`` into every record checksum means stale records from an older lap that
survive a torn write can never be mistaken for current ones.

Writes are whole, page-aligned 4 KiB pages at page-aligned positions: a block is written when it
fills, and by flush() (which rewrites the partial block in place, then fdatasync). A silent
console causes no I/O at all. With ``durable`` (the default) the pages go out with O_DIRECT, so
exactly one page reaches the device per write whatever the page cache's folio size (on kernels
with large ext4 folios a buffered 4 KiB write can dirty, and write back, 64 KiB or more).

Recovery scans every block header and record once at open (no index or metadata file exists);
the position of the write head, offsets and times come from the scan. A record that fails its
checksum ends its block; the other blocks are kept. Offsets never decrease: the next append
continues after the highest recovered offset, and when the newest record is not a clean-close
record (kill -9, power cut) CRASH_GAP (64 KiB) further on, so offsets handed out for data that
never reached the disk are not reused: a kill -9 loses less than one block, a power cut at most
one ``flush_interval`` of output (64 KiB covers 5 s at 115200 baud). Readers see the gap as a
hole.

Disk use is exactly ``nblocks * 4096 <= size`` bytes. The ring keeps the newest ``nblocks - 1``
written blocks plus the block being filled; a block's old content is dropped from reads as soon
as its position starts being refilled.

If the file was written with another ``nblocks`` (the configured size changed), its records are
copied into a new file of the new size (the two files coexist during the copy) that replaces it.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import math
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOCK_SIZE = 4096
MAGIC = b"SBRL"
VERSION = 1
MAX_MARKER_BYTES = 1024

_BLOCK_HDR = struct.Struct("<4sB3xIQI")
_REC_HDR = struct.Struct("<BxHQdI")
_SEQ = struct.Struct("<Q")
BH = _BLOCK_HDR.size
RH = _REC_HDR.size
KIND_DATA = 1
KIND_MARKER = 2
KIND_CLOSE = 3
CRASH_GAP = 1 << 16
_SCAN_CHUNK = 256 * BLOCK_SIZE


@dataclass(frozen=True)
class LogRecord:
    """One record as recovered or read: console bytes, or an event marker at an offset."""

    offset: int
    time: float
    data: bytes
    marker: dict[str, Any] | None = None


@dataclass
class WriteStats:
    """Counters of what this RingLog handed to the file system (for tests and the bench)."""

    writes: int = 0
    bytes_written: int = 0
    syncs: int = 0
    errors: int = 0  # full-block writes that failed (append() does not raise for them)


@dataclass(slots=True)
class _Rec:
    kind: int
    offset: int
    time: float
    pos: int  # payload position within the block
    length: int

    @property
    def end(self) -> int:
        return self.offset + (self.length if self.kind == KIND_DATA else 0)


@dataclass(slots=True)
class _Block:
    """In-memory index entry of one block holding at least one record."""

    seq: int
    first: int
    end: int
    tmax: float


@dataclass(slots=True)
class _Pending:
    """The block being filled (in memory; the disk copy holds its first ``written`` bytes)."""

    seq: int
    page: mmap.mmap  # page-aligned, as O_DIRECT wants
    recs: list[_Rec] = field(default_factory=list)
    used: int = BH
    written: int = 0
    open_rec: _Rec | None = None
    entry: _Block | None = None


def _block_header(nblocks: int, seq: int) -> bytes:
    head = _BLOCK_HDR.pack(MAGIC, VERSION, nblocks, seq, 0)[: BH - 4]
    return head + struct.pack("<I", zlib.crc32(head))


def _parse_header(page: memoryview | bytes) -> tuple[int, int] | None:
    """(nblocks, seq) of a block with a valid header, else None."""
    magic, version, nblocks, seq, crc = _BLOCK_HDR.unpack_from(page, 0)
    if magic != MAGIC or version != VERSION or zlib.crc32(page[: BH - 4]) != crc:
        return None
    return nblocks, seq


def _parse_records(page: memoryview | bytes, seq: int) -> list[_Rec]:
    """The valid records of a block, in order; parsing stops at the first invalid one."""
    recs: list[_Rec] = []
    seq_crc = zlib.crc32(_SEQ.pack(seq))
    pos = BH
    end = -1
    while pos + RH < BLOCK_SIZE:
        kind, length, offset, when, crc = _REC_HDR.unpack_from(page, pos)
        if kind not in (KIND_DATA, KIND_MARKER, KIND_CLOSE) or length == 0:
            break
        p = pos + RH
        if p + length > BLOCK_SIZE or offset < end or not math.isfinite(when):
            break
        if zlib.crc32(page[p : p + length], zlib.crc32(page[pos : p - 4], seq_crc)) != crc:
            break
        rec = _Rec(kind, offset, when, p, length)
        recs.append(rec)
        end = rec.end
        pos = p + length
    return recs


def _marker(page: memoryview | bytes | mmap.mmap, rec: _Rec) -> dict[str, Any]:
    value = json.loads(bytes(page[rec.pos : rec.pos + rec.length]))
    return value if isinstance(value, dict) else {"event": value}


class RingLog:
    """A bounded console log of one port; see the module docstring for the format."""

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
        self._fd = fd  # buffered: reads, preallocation
        self._wfd = fd  # block writes: O_DIRECT where the file system supports it
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
        self._cache: tuple[int, bytes, list[_Rec]] | None = None
        self.stats = WriteStats()

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
        one page reaches the device per write, whatever the page cache's folio size) and flush()
        calls fdatasync. Turn it off only in tests.
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
        found: list[tuple[int, int, list[_Rec]]] = []  # (seq, position, records)
        geometries: dict[int, int] = {}
        for base in range(0, min(length, self._n * BLOCK_SIZE), _SCAN_CHUNK):
            raw = os.pread(self._fd, _SCAN_CHUNK, base)
            if len(raw) % BLOCK_SIZE:  # a file cut short: the missing bytes read as zeros
                raw += bytes(BLOCK_SIZE - len(raw) % BLOCK_SIZE)
            chunk = memoryview(raw)
            for at in range(0, len(chunk) - BLOCK_SIZE + 1, BLOCK_SIZE):
                page = chunk[at : at + BLOCK_SIZE]
                head = _parse_header(page)
                if head is None:
                    continue
                nblocks, seq = head
                geometries[seq] = nblocks
                if nblocks == self._n and seq % self._n == (base + at) // BLOCK_SIZE:
                    found.append((seq, (base + at) // BLOCK_SIZE, _parse_records(page, seq)))
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
        return self._unsynced or (p is not None and p.used > p.written)

    # ------------------------------------------------------------------ writing
    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add console bytes; touches the disk only when a 4 KiB block fills (a failed block
        write is logged and counted in ``stats.errors``, not raised; flush() does raise)."""
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
                r = _Rec(kind, self._next, when, p.used + RH, 0)
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
        page[:] = bytes(BLOCK_SIZE)
        page[:BH] = _block_header(self._n, seq)
        self._pend = _Pending(seq, page)
        return self._pend

    def _seal(self, p: _Pending) -> None:
        r = p.open_rec
        if r is None:
            return
        p.open_rec = None
        at = r.pos - RH
        _REC_HDR.pack_into(p.page, at, r.kind, r.length, r.offset, r.time, 0)
        crc = zlib.crc32(_SEQ.pack(p.seq))
        crc = zlib.crc32(p.page[at : r.pos - 4], crc)
        crc = zlib.crc32(p.page[r.pos : r.pos + r.length], crc)
        struct.pack_into("<I", p.page, r.pos - 4, crc)

    def _retire(self, p: _Pending) -> None:
        """Write a full block and move on. An I/O error does not stop appending (offsets must
        stay in step with the hub's): the block is lost from disk, reads see a hole there."""
        self._pend = None
        try:
            self._write(p)
        except OSError as exc:
            self.stats.errors += 1
            log.error("ring log %s: block write failed, %d bytes lost: %s", self.path, p.used, exc)

    def _write(self, p: _Pending) -> None:
        """Write the whole page of the block (it is one page, rewritten in place on flush)."""
        if p.used <= p.written:
            return
        self._write_page((p.seq % self._n) * BLOCK_SIZE, p.page)
        p.written = p.used
        self._unsynced = True

    def _write_page(self, position: int, page: bytes | mmap.mmap) -> None:
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
        self.stats.writes += 1
        self.stats.bytes_written += len(page)

    def flush(self) -> None:
        """Write the partial block and make written blocks durable; no I/O if nothing is pending."""
        self._check_open()
        p = self._pend
        if p is not None and p.used > p.written:
            self._seal(p)
            self._write(p)
        if self._unsynced:
            if self._durable:
                os.fdatasync(self._fd)
            self.stats.syncs += 1
            self._unsynced = False

    def close(self) -> None:
        """Record a clean shutdown, flush and close the file; further calls do nothing."""
        if self._closed:
            return
        try:
            p = self._pend
            if not self._clean and p is not None and p.used + RH + 1 <= BLOCK_SIZE:
                # (where it does not fit, no new block is started for it: that would evict the
                # oldest block; the next open then treats the shutdown as a crash)
                self._put(KIND_CLOSE, b"\x00", self._next, self._clock(), coalesce=False)
            self.flush()
        finally:
            self._closed = True
            if self._wfd != self._fd:
                os.close(self._wfd)
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
    def _block_data(self, b: _Block) -> tuple[bytes | mmap.mmap, list[_Rec]]:
        p = self._pend
        if p is not None and p.seq == b.seq:
            return p.page, p.recs
        if self._cache is not None and self._cache[0] == b.seq:
            return self._cache[1], self._cache[2]
        page = os.pread(self._fd, BLOCK_SIZE, (b.seq % self._n) * BLOCK_SIZE)
        head = _parse_header(page) if len(page) == BLOCK_SIZE else None
        recs = _parse_records(page, b.seq) if head == (self._n, b.seq) else []
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
                        out.append(LogRecord(rec.offset, rec.time, b"", _marker(page, rec)))
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
