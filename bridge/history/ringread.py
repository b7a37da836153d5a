"""Reading a ring log: records in offset order, contiguous console bytes, and time -> offset.

The ring's in-memory block index (`BlockIndex` of bridge.history.ringscan.Block, oldest first),
and pure functions over it and a `PageSource` that gives a block's page image and parsed records:
the ring answers from the block being filled, from a page still queued for the writer, or from the
file (bridge.history.ringlog), so readers see the same thing whether or not a page reached the disk.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
from collections.abc import Callable, Iterable, Iterator

from bridge.history.ringformat import (
    BLOCK_SIZE,
    KIND_CLOSE,
    KIND_DATA,
    KIND_MARKER,
    KIND_OPEN,
    LogRecord,
    Rec,
    marker,
    parse_header,
    parse_records,
)
from bridge.history.ringscan import Block

PageSource = Callable[[Block], tuple[bytes | memoryview | mmap.mmap, list[Rec]]]


class BlockIndex:
    """The index entries of the blocks holding records, oldest first: ``items[start:]``.

    Dropping the oldest entries only moves ``start`` on; the list is trimmed once they are half
    of it. So a ring that has wrapped drops an entry per block in O(1) (list.pop(0) moves every
    entry: microseconds per block at 16k blocks) and readers still bisect a plain list.
    """

    __slots__ = ("items", "start")

    def __init__(self, items: list[Block] | None = None) -> None:
        self.items: list[Block] = [] if items is None else items
        self.start = 0

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __iter__(self) -> Iterator[Block]:
        return itertools.islice(self.items, self.start, None)

    @property
    def oldest(self) -> Block | None:
        return self.items[self.start] if self.start < len(self.items) else None

    def append(self, block: Block) -> None:
        self.items.append(block)

    def drop_through(self, seq: int) -> None:
        """Drop the entries of blocks ``seq`` and older."""
        items, i = self.items, self.start
        while i < len(items) and items[i].seq <= seq:
            i += 1
        if i * 2 > len(items):
            del items[:i]
            i = 0
        self.start = i


def read_block(fd: int, nblocks: int, seq: int) -> tuple[bytes, list[Rec]]:
    """Block ``seq`` as in the file, with its records (none if the position holds another)."""
    page = os.pread(fd, BLOCK_SIZE, (seq % nblocks) * BLOCK_SIZE)
    head = parse_header(page) if len(page) == BLOCK_SIZE else None
    return page, parse_records(page, seq) if head == (nblocks, seq) else []


def records(
    index: BlockIndex, page_of: PageSource, start: int, end: int | None
) -> Iterator[LogRecord]:
    """Data and marker records overlapping [start, end) in offset order (see RingLog.records).

    ``index`` is the ring's live index, changed in place while the caller is suspended between
    items: it is searched again for every block, never held by position.
    """
    data_end = start
    seq, idx = -1, 0  # resume point: record index idx of block seq
    while True:
        items = index.items
        if seq < 0:
            i = bisect.bisect_left(items, start, index.start, key=lambda b: b.end)
        else:
            i = bisect.bisect_left(items, seq, index.start, key=lambda b: b.seq)
        if i >= len(items):
            return
        block = items[i]
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
            if rec.kind in (KIND_CLOSE, KIND_OPEN):  # no console bytes, no event
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


def start_of_last(index: BlockIndex, page_of: PageSource, nbytes: int, end: int) -> int | None:
    """Offset at which the last ``nbytes`` console bytes held before ``end`` start (the oldest
    held if fewer are; None if none is). Whole blocks count by their ``held`` total; only the
    block where the count is reached (and one straddling ``end``) have their records read."""
    need, start, items = nbytes, None, index.items
    top = bisect.bisect_left(items, end, index.start, key=lambda b: b.first)
    for i in range(top - 1, index.start - 1, -1):
        block = items[i]
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


def offset_at(index: BlockIndex, page_of: PageSource, when: float, end: int) -> int:
    """First offset received at or after wall time ``when`` (``end`` if none)."""
    for block in index:
        if block.tmax >= when:
            _page, recs = page_of(block)
            for rec in recs:
                if rec.time >= when and rec.kind not in (KIND_CLOSE, KIND_OPEN):
                    return rec.offset
    return end
