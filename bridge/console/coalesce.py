"""Output coalescing: a stream's small reads become fewer, larger chunks; typing is never delayed.

A UART at 12 Mbaud delivers a boot log as many small reads; sending each as its own frame to 100
watchers costs most of a core. Output that follows other output within STREAM_GAP, with no
keystroke in the last TYPING seconds, is gathered for up to BATCH_WINDOW or BATCH_LIMIT bytes
before the hub publishes it. While someone types (echoes) and after a pause, output goes out at
once, so interactive latency is untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

STREAM_GAP = 0.02  # output this soon after earlier output, with no keystroke between, is a stream
BATCH_WINDOW = 0.05  # a stream's output is sent at least this often...
BATCH_LIMIT = 16 * 1024  # ...or as soon as this much is gathered
TYPING = 1.0  # for this long after a keystroke nothing is gathered: echoes go out at once


class Coalescer:
    """Sits between a transport's reads and the hub's `publish`."""

    def __init__(self, publish: Callable[[bytes], None]) -> None:
        self._publish = publish
        self._batch = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._last_output = 0.0
        self._last_typed = 0.0

    def feed(self, data: bytes) -> None:
        """Output read from the transport: published now, or gathered with what follows."""
        now = time.monotonic()
        streaming = now - self._last_output < STREAM_GAP and now - self._last_typed > TYPING
        self._last_output = now
        if self._batch:
            self._batch += data
            if not streaming or len(self._batch) >= BATCH_LIMIT:
                self.flush()
        elif streaming and len(data) < BATCH_LIMIT:
            self._batch = bytearray(data)
            self._timer = asyncio.get_running_loop().call_later(BATCH_WINDOW, self.flush)
        else:
            self._publish(data)

    def typed(self, at: float) -> None:
        """A keystroke at monotonic time `at`: publish what is gathered, gather nothing for a
        while (the echo must go out at once)."""
        self._last_typed = at
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, bytearray()
        if batch:
            self._publish(bytes(batch))
