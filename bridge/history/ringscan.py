"""Opening a ring log file: the lock, and recovery by one scan of every block (no index file).

The position of the write head, the offsets and the times all come from the scan
(bridge.history.ringformat describes what is scanned). A record that fails its checksum ends its
block; the other blocks are kept. Offsets never decrease: the next append continues after the
highest recovered offset, and when the newest record is not a clean-close record (kill -9, power
cut) CRASH_GAP (2 MiB) further on, so offsets handed out for data that never reached the disk are
not reused: CRASH_GAP covers everything a kill -9 can lose (the writer queue plus one block, see
bridge.history.ringwriter) and a power cut's ``flush_interval`` (5 s) at up to 3 Mbaud. Readers see
the gap as a hole. Every writer puts an open record on disk before it hands out an offset, so a
crash that left none of its pages there is still seen as one: the newest record is that open
record, not the close record (or nothing) the ring held before.

A file shorter than its geometry is preallocated (zeros written once, page by page). A file whose
newest block was written with another ``nblocks`` is reported (`Recovered.other_geometry`) for the
ring to convert; nothing else is read from it here.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from bridge.history.ringformat import (
    BH,
    BLOCK_SIZE,
    KIND_CLOSE,
    KIND_DATA,
    RH,
    Rec,
    parse_header,
    parse_records,
)
from bridge.history.ringwriter import QUEUE_PAGES

CRASH_GAP = 1 << 21
assert CRASH_GAP >= (QUEUE_PAGES + 1) * BLOCK_SIZE  # a kill -9 loses at most this much
_SCAN_CHUNK = 256 * BLOCK_SIZE


@dataclass(slots=True)
class Block:
    """In-memory index entry of one block holding at least one record."""

    seq: int
    first: int
    end: int
    tmax: float
    held: int = 0  # console bytes in its records (less than end - first across a hole)


@dataclass
class Resume:
    """The newest block, to be filled further: the next write rewrites it with the same prefix."""

    seq: int
    image: bytes  # its first `len(image)` bytes as on disk
    recs: list[Rec]
    entry: Block | None


@dataclass
class Recovered:
    """What a scan found: the index, where appending continues, and whether shutdown was clean."""

    blocks: list[Block] = field(default_factory=list)
    next_offset: int = 0
    next_seq: int = 0
    clean: bool = False  # the newest record is a close record: nothing new since
    crash_gap: tuple[int, int] | None = None  # not clean: the offsets skipped, [from, to)
    resume: Resume | None = None
    other_geometry: int | None = None  # the file was written with this nblocks instead


def open_locked(path: Path) -> int:
    """Open (or create, 0600) the ring file locked (flock): a second opener gets OSError(EBUSY)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        msg = f"ring log {path} is open elsewhere (one writer only)"
        raise OSError(errno.EBUSY, msg) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def scan(fd: int, nblocks: int) -> Recovered:
    """Scan the ring file open on ``fd`` (``nblocks`` blocks), preallocating what is missing."""
    length = os.fstat(fd).st_size
    found: list[tuple[int, int, list[Rec]]] = []  # (seq, position, records)
    geometries: dict[int, int] = {}
    for base in range(0, min(length, nblocks * BLOCK_SIZE), _SCAN_CHUNK):
        raw = os.pread(fd, _SCAN_CHUNK, base)
        if len(raw) % BLOCK_SIZE:  # a file cut short: the missing bytes read as zeros
            raw += bytes(BLOCK_SIZE - len(raw) % BLOCK_SIZE)
        chunk = memoryview(raw)
        for at in range(0, len(chunk) - BLOCK_SIZE + 1, BLOCK_SIZE):
            page = chunk[at : at + BLOCK_SIZE]
            head = parse_header(page)
            if head is None:
                continue
            geometry, seq = head
            geometries[seq] = geometry
            if geometry == nblocks and seq % nblocks == (base + at) // BLOCK_SIZE:
                found.append((seq, (base + at) // BLOCK_SIZE, parse_records(page, seq)))
    got = Recovered()
    if geometries:
        newest_geometry = geometries[max(geometries)]
        if newest_geometry != nblocks:
            got.other_geometry = newest_geometry
            return got
    if length < nblocks * BLOCK_SIZE:
        preallocate(fd, nblocks, length)
    if not found:
        return got
    found.sort()
    for seq, _pos, recs in found:
        if not recs or recs[0].offset < got.next_offset:
            continue
        held = sum(r.length for r in recs if r.kind == KIND_DATA)
        tmax = max(r.time for r in recs)
        got.blocks.append(Block(seq, recs[0].offset, recs[-1].end, tmax, held))
        got.next_offset = recs[-1].end
    top_seq, top_pos, top_recs = found[-1]
    kept_top = bool(top_recs and got.blocks) and got.blocks[-1].seq == top_seq
    got.clean = kept_top and top_recs[-1].kind == KIND_CLOSE
    if got.blocks and not got.clean:
        got.crash_gap = (got.next_offset, got.next_offset + CRASH_GAP)
        got.next_offset += CRASH_GAP  # offsets handed out but never flushed are not reused
    got.next_seq = top_seq + 1
    last = top_recs[-1] if top_recs else None
    room = BLOCK_SIZE - (last.pos + last.length if last else BH)
    usable = not top_recs or kept_top
    if usable and room >= RH + 1:
        used = BLOCK_SIZE - room
        image = os.pread(fd, used, top_pos * BLOCK_SIZE)
        entry = got.blocks[-1] if top_recs else None
        got.resume = Resume(top_seq, image, list(top_recs), entry)
    return got


def preallocate(fd: int, nblocks: int, start: int) -> None:
    """Write zeros once from ``start`` on, page by page (small page-cache folios if O_DIRECT is
    unavailable), and sync."""
    zeros = bytes(BLOCK_SIZE)
    total = nblocks * BLOCK_SIZE
    os.ftruncate(fd, total)
    for at in range(-(-start // BLOCK_SIZE) * BLOCK_SIZE, total, BLOCK_SIZE):
        os.pwrite(fd, zeros, at)
    os.fsync(fd)
