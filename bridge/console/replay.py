"""A port's past output: read from the scrollback or the ring log, and where a replay starts.

The hub keeps the newest output in memory (bridge.console.scrollback) and as much as the ring log
holds on flash (bridge.history.ringlog). `History` answers from whichever holds the bytes asked
for, so a front door sees one history whatever its age; the hub hands it the scrollback and ring
log it has now (a reload may replace the scrollback) and the offset of the next byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.console.scrollback import Scrollback
from bridge.history.ringlog import RingLog

REPLAY_SEARCH = 64 * 1024  # how far into a replay a line start is looked for


@dataclass
class History:
    """Reads over one port's scrollback and ring log (`end`: the offset of the next byte)."""

    scrollback: Scrollback
    ringlog: RingLog | None
    end: int

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """History from `offset`: scrollback when it holds it, else the ring log."""
        scrollback, ringlog = self.scrollback, self.ringlog
        if offset >= scrollback.start or ringlog is None:
            return scrollback.read(offset, max_bytes)
        start, data = ringlog.read(offset, min(max_bytes, scrollback.start - offset))
        if not data:
            return scrollback.read(offset, max_bytes)
        return start, data

    @property
    def oldest(self) -> int:
        if self.ringlog is not None:
            return min(self.ringlog.oldest_offset, self.scrollback.start)
        return self.scrollback.start

    def resolve_from(self, value: int | None) -> int:
        """A `from` parameter -> the first offset to send, always a byte held (or the live end):
        None = live, negative = the last N bytes held (a hole, such as the offsets skipped after
        a crash, counts for nothing), older than held = oldest held, in a hole = after it."""
        if value is None:
            return self.end
        if value < 0:
            value = self._start_of_last(-value)
        at, data = self.read(min(max(value, self.oldest), self.end), 1)
        return at if data else self.end

    def _start_of_last(self, nbytes: int) -> int:
        """Where the last `nbytes` bytes held start: the scrollback's (contiguous), then the ring
        log's before it."""
        start, in_memory = self.scrollback.start, self.end - self.scrollback.start
        if nbytes <= in_memory or self.ringlog is None:
            return max(self.end - nbytes, start)
        older = self.ringlog.start_of_last(nbytes - in_memory, start)
        return start if older is None else older

    def replay_start(self, nbytes: int) -> int:
        """Where "the last `nbytes`" start, moved forward to the first line start among them so a
        replay never opens mid-line (offset 0, the first byte ever, is a line start). With no line
        start in the first `REPLAY_SEARCH` bytes (one endless line, a full-screen program), all
        of them. 0 = live output only."""
        start = self.resolve_from(-nbytes) if nbytes > 0 else self.end
        if start == 0 or start >= self.end:
            return start
        at, data = self.read(start - 1, min(nbytes, REPLAY_SEARCH) + 1)
        if at == start - 1:
            if data[:1] == b"\n":
                return start
            data = data[1:]
        cut = data.find(b"\n")
        return start if cut < 0 else min(start + cut + 1, self.end)
