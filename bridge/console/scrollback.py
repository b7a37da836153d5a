"""In-memory scrollback: the newest N bytes of a port's output, addressed by console offset.

A port's history when it keeps no ring log (with one, the ring log's newest pages stay in memory
instead: bridge.history.ringlog `keep`). A fixed bytearray used as a ring: appending is one or two
slice copies per chunk, reading by offset is the same; no per-chunk objects are kept, so small
chunks cost no extra memory.
"""

from __future__ import annotations


class Scrollback:
    """Holds output offsets [start, end); `end` is the offset of the next byte to arrive."""

    def __init__(self, capacity: int, start_offset: int = 0) -> None:
        if capacity <= 0:
            raise ValueError("scrollback capacity must be positive")
        self.capacity = capacity
        self._buf = bytearray(capacity)
        self._base = start_offset  # nothing before this offset was ever held
        self.end = start_offset

    @property
    def start(self) -> int:
        return max(self._base, self.end - self.capacity)

    oldest_offset = start  # the name bridge.console.replay reads (as a RingLog has it)

    def start_of_last(self, nbytes: int) -> int:
        """Where the last `nbytes` bytes held start (the oldest held if fewer are)."""
        return max(self.end - nbytes, self.start)

    def append(self, data: bytes) -> None:
        n = len(data)
        cap = self.capacity
        if n >= cap:
            tail = data[n - cap :]
            shift = (self.end + n) % cap  # index where the oldest kept byte belongs
            self._buf[shift:] = tail[: cap - shift]
            self._buf[:shift] = tail[cap - shift :]
        else:
            pos = self.end % cap
            first = min(n, cap - pos)
            self._buf[pos : pos + first] = data[:first]
            if first < n:
                self._buf[: n - first] = data[first:]
        self.end += n

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """Up to `max_bytes` from `offset` (clamped up to `start`): (actual_start, data)."""
        offset = max(offset, self.start)
        n = min(max_bytes, self.end - offset)
        if n <= 0:
            return offset, b""
        cap = self.capacity
        pos = offset % cap
        first = min(n, cap - pos)
        if first == n:
            return offset, bytes(self._buf[pos : pos + n])
        return offset, bytes(self._buf[pos:]) + bytes(self._buf[: n - first])
