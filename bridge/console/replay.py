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
        """A `from` parameter -> the first offset to send: None = live, negative = last N bytes,
        older than held = oldest held."""
        if value is None:
            return self.end
        if value < 0:
            value = self.end + value
        return min(max(value, self.oldest), self.end)

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
