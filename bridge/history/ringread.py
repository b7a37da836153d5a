"""Reading a ring log: records in offset order, contiguous console bytes, and time -> offset.

Pure functions over the ring's in-memory block index (bridge.history.ringscan.Block, oldest
first) and a `PageSource` that gives a block's page image and parsed records: the ring answers
from the block being filled, from a page still queued for the writer, or from the file
(bridge.history.ringlog), so readers see the same thing whether or not a page reached the disk.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Callable, Iterable, Iterator

from bridge.history.ringformat import (
    BLOCK_SIZE,
    KIND_CLOSE,
    KIND_DATA,
    KIND_MARKER,
    LogRecord,
    Rec,
    marker,
    parse_header,
    parse_records,
)
from bridge.history.ringscan import Block

PageSource = Callable[[Block], tuple[bytes | mmap.mmap, list[Rec]]]


def read_block(fd: int, nblocks: int, seq: int) -> tuple[bytes, list[Rec]]:
    """Block ``seq`` as in the file, with its records (none if the position holds another)."""
    page = os.pread(fd, BLOCK_SIZE, (seq % nblocks) * BLOCK_SIZE)
    head = parse_header(page) if len(page) == BLOCK_SIZE else None
    return page, parse_records(page, seq) if head == (nblocks, seq) else []


def records(
    index: list[Block], page_of: PageSource, start: int, end: int | None
) -> Iterator[LogRecord]:
    """Data and marker records overlapping [start, end) in offset order (see RingLog.records).

    ``index`` is the ring's live index, changed in place while the caller is suspended between
    items: it is searched again for every block, never held by position.
    """
    data_end = start
    seq, idx = -1, 0  # resume point: record index idx of block seq
    while True:
        if seq < 0:
            i = bisect.bisect_left(index, start, key=lambda b: b.end)
        else:
            i = bisect.bisect_left(index, seq, key=lambda b: b.seq)
        if i >= len(index):
            return
        block = index[i]
        if block.seq != seq:
            seq, idx = block.seq, 0
        page, recs = page_of(block)
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


def contiguous(recs: Iterable[LogRecord], max_bytes: int, end: int) -> tuple[int, bytes]:
    """Up to ``max_bytes`` contiguous console bytes from the first data record of ``recs``:
    (its offset, data); a hole ends the answer; ``(end, b"")`` when there is no data."""
    parts: list[bytes] = []
    actual = at = end
    for rec in recs:
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
        return end, b""
    return actual, b"".join(parts)


def start_of_last(index: list[Block], page_of: PageSource, nbytes: int, end: int) -> int | None:
    """Offset at which the last ``nbytes`` console bytes held before ``end`` start (the oldest
    held if fewer are; None if none is). Whole blocks count by their ``held`` total; only the
    block where the count is reached (and one straddling ``end``) have their records read."""
    need, start = nbytes, None
    for i in range(bisect.bisect_left(index, end, key=lambda b: b.first) - 1, -1, -1):
        block = index[i]
        if block.end <= end and block.held < need:
            if block.held:
                need -= block.held
                start = block.first
            continue
        _page, recs = page_of(block)
        for rec in reversed(recs):
            if rec.kind == KIND_DATA and rec.offset < end:
                n = min(rec.end, end) - rec.offset
                if n >= need:
                    return rec.offset + n - need
                need -= n
                start = rec.offset
    return start


def offset_at(index: list[Block], page_of: PageSource, when: float, end: int) -> int:
    """First offset received at or after wall time ``when`` (``end`` if none)."""
    for block in index:
        if block.tmax >= when:
            _page, recs = page_of(block)
            for rec in recs:
                if rec.time >= when and rec.kind != KIND_CLOSE:
                    return rec.offset
    return end
