"""The block a ring log is filling (bridge.history.ringlog): its page image in memory, the records
in it, and its entry in the ring's index. A record's header is written (sealed) once the record
grows no more or the page is handed to the writer (bridge.history.ringformat: why)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

from bridge.history.ringformat import BH, BLOCK_SIZE, Rec, block_header, seal_record
from bridge.history.ringscan import Block, Resume

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
