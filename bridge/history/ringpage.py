"""The block a ring log is filling (bridge.history.ringlog): its page image in memory, the records
in it, and its entry in the ring's index. A record's header is written (sealed) once the record
grows no more or the page is handed to the writer (bridge.history.ringformat: why). Also the
blocks an append fills whole, built in one go (`full_jobs`)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

from bridge.history.ringformat import (
    BH,
    BLOCK_SIZE,
    FULL,
    Rec,
    block_header,
    full_blocks,
    seal_record,
)
from bridge.history.ringjob import Job
from bridge.history.ringread import BlockIndex
from bridge.history.ringscan import Block, Resume
from bridge.history.ringwriter import RUN_PAGES

_ZEROS = bytes(BLOCK_SIZE)


@dataclass(slots=True)
class Pending:
    """The block being filled, in memory; the writer has been handed its first ``written`` bytes."""

    seq: int
    page: mmap.mmap
    recs: list[Rec] = field(default_factory=list)
    used: int = BH
    written: int = 0
    open_rec: Rec | None = None
    entry: Block | None = None

    def seal(self) -> None:
        """Write the header of the open record, if any: it grows no more."""
        r = self.open_rec
        if r is not None:
            self.open_rec = None
            seal_record(self.page, self.seq, r)


def new_block(page: mmap.mmap, nblocks: int, seq: int) -> Pending:
    """Block ``seq`` started in ``page``: its header, then zeros."""
    page[:] = _ZEROS
    page[:BH] = block_header(nblocks, seq)
    return Pending(seq, page)


def resume(page: mmap.mmap, found: Resume) -> Pending:
    """The newest block as recovery found it, in ``page``, to be filled further."""
    used = len(found.image)
    page[:] = _ZEROS
    page[:used] = found.image
    return Pending(found.seq, page, found.recs, used, used, None, found.entry)


def full_jobs(
    blocks: BlockIndex, nblocks: int, first: int, offset: int, when: float, payload: memoryview
) -> list[Job]:
    """The ring's append fast path for data that fills fresh blocks: blocks ``first``,
    ``first + 1``, ... (at most a ring's worth) each holding one data record of FULL bytes of
    ``payload`` from ``offset`` on, as the general path would build them, as jobs for the
    writer: runs of consecutive positions, at most RUN_PAGES pages each; their entries join
    ``blocks`` (those of the blocks whose positions they refill go)."""
    count = len(payload) // FULL
    blocks.drop_through(first + count - 1 - nblocks)  # their positions are being refilled
    jobs, items = [], blocks.items
    seq, end = first, first + count
    while seq < end:
        n = min(end - seq, RUN_PAGES, nblocks - seq % nblocks)  # (a run stops at the file's end)
        at = (seq - first) * FULL
        image = full_blocks(nblocks, seq, offset, when, payload[at : at + n * FULL])
        jobs.append(Job(seq, (seq % nblocks) * BLOCK_SIZE, image, [], BLOCK_SIZE, False, n))
        for s in range(seq, seq + n):
            items.append(Block(s, offset, offset + FULL, when, FULL))
            offset += FULL
        seq += n
    return jobs
