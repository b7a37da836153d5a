"""What a ring log hands its writer thread (bridge.history.ringwriter): a `Job` is the image of
one page, or of a run of consecutive full pages built together by a fast console's append
(bridge.history.ringpage), or SYNC; and `RecentPages`, the newest of them a ring keeps in memory
so recent history is read without the file (bridge.history.ringlog)."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

from bridge.history.ringformat import BLOCK_SIZE, Rec, parse_records


@dataclass(slots=True)
class Job:
    """Page images handed to the writer (``seq`` -1: an fdatasync after every earlier job):
    block ``seq`` at ``position``, or a run of ``count`` consecutive full blocks from there (a
    fast console's, built together: one job, one hand-over, one copy for the thread)."""

    seq: int
    position: int
    page: bytes | memoryview
    recs: list[Rec]  # the records of a one-page job ([] for a run), for reads in flight
    used: int
    flush: bool  # written for a flush (the partial block; SYNC follows)
    count: int = 1

    def image(self, seq: int) -> tuple[bytes | memoryview, list[Rec]]:
        """Block ``seq``'s page image and records (``seq`` is one of this job's blocks)."""
        if self.recs:
            return self.page, self.recs
        at = (seq - self.seq) * BLOCK_SIZE  # (a run's records are read from its image)
        page = memoryview(self.page)[at : at + BLOCK_SIZE]
        return page, parse_records(page, seq)

    def newest(self, n: int) -> Job:
        """The last ``n`` pages of a run, as a run (no copy)."""
        skip = self.count - n
        page = memoryview(self.page)[skip * BLOCK_SIZE :]
        return Job(
            self.seq + skip, self.position + skip * BLOCK_SIZE, page, [], BLOCK_SIZE, False, n
        )

    def pages(self) -> list[Job]:
        """The job as one-page jobs (to write, and keep, the pages of a run one by one)."""
        if self.recs:
            return [self]
        return [
            Job(s, self.position + i * BLOCK_SIZE, bytes(page), recs, BLOCK_SIZE, False)
            for i, s in enumerate(range(self.seq, self.seq + self.count))
            for page, recs in [self.image(s)]
        ]


SYNC = Job(-1, 0, b"", [], 0, True)


class RecentPages:
    """The newest page images handed over, at most ``limit`` pages (of the oldest run kept, its
    newest pages); a newer image of a block replaces the older (a flush's partial block)."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._pages = 0
        self.limit = 1

    def add(self, jobs: tuple[Job, ...]) -> None:
        kept = self._jobs
        if kept and kept[-1].seq == jobs[0].seq:
            self._pages -= kept.pop().count  # an older image of a partial block
        kept.extend(jobs)
        self._pages += sum(job.count for job in jobs)
        if self._pages > self.limit:
            self.trim()

    def trim(self) -> None:
        kept = self._jobs
        while (extra := self._pages - self.limit) > 0:
            oldest = kept[0]
            if oldest.count <= extra:
                kept.popleft()
                self._pages -= oldest.count
            else:
                kept[0] = oldest.newest(oldest.count - extra)
                self._pages -= extra

    def image(self, seq: int) -> tuple[bytes | memoryview, list[Rec]] | None:
        """Block ``seq``'s page image and records, if kept."""
        kept = self._jobs
        i = bisect_right(kept, seq, key=lambda job: job.seq) - 1
        if i >= 0 and seq < (job := kept[i]).seq + job.count:
            return job.image(seq)
        return None
