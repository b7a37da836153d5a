"""A port's past output: read from the port's one history store, and where a replay starts.

A port keeps its history in one place: the ring log (bridge.history.ringlog; its newest pages stay
in memory, older ones are read from flash) or, when it keeps no log, the in-memory scrollback
(bridge.console.scrollback). `History` answers over either, so a front door sees one history
whatever its age; the hub hands it the store it has now (a reload may replace the scrollback) and
the offset of the next byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

REPLAY_SEARCH = 64 * 1024  # how far into a replay a line start is looked for


class Store(Protocol):
    """What History reads: a Scrollback or a RingLog."""

    @property
    def oldest_offset(self) -> int: ...

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]: ...

    def start_of_last(self, nbytes: int) -> int | None: ...


@dataclass
class History:
    """Reads over one port's history store (`end`: the offset of the next byte)."""

    store: Store
    end: int

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """Up to `max_bytes` from `offset` (clamped up to the oldest byte held)."""
        return self.store.read(offset, max_bytes)

    @property
    def oldest(self) -> int:
        return self.store.oldest_offset

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
        """Where the last `nbytes` bytes held start (a hole counts for nothing)."""
        start = self.store.start_of_last(nbytes)
        return self.end if start is None else start

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
