"""How often the UART transport (bridge.hw.uart) reads and how fast it writes.

Writes: `LinePacer`, a token bucket at the line rate that lets a short burst (a keystroke, a line)
through at once, so a 1 MiB paste reaches the target at the speed the line can carry.

Reads: `ReadTicks`. An event-loop wake-up per USB packet is the main cost of a console that
streams slowly: an FTDI adapter at 115200 baud hands the host 62 bytes every 5.4 ms, 185
wake-ups a second per port. While output trickles in like that (small reads in quick succession)
and nobody has typed for TYPING seconds, the transport stops waiting for readability and reads
on a tick instead (every `tick` seconds, TICK at most), so one wake-up carries everything that
arrived meanwhile. It goes back to immediate reads when a tick reads nothing (the output paused),
when a tick reads TICK_LIMIT bytes or more (three quarters of the tty buffer: the tick came late,
or output arrives faster than the configured baud; bulk reads take over), and at once when
anything is written (a keystroke's echo never waits for a tick).

The bound that keeps a real UART from overrunning: between two ticks the line delivers at most
`tick` x its byte rate, and `tick` is chosen so that is at most half the kernel's 4 KiB tty
buffer (N_TTY_BUF_SIZE), which the next tick empties; where that would make the tick shorter
than MIN_TICK (above about 3 Mbaud) the transport never ticks (hw/uart.md has the figures).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Callback = Callable[[], None]

TTY_BUFFER = 4096  # the kernel's n_tty read buffer per tty (N_TTY_BUF_SIZE)
TICK = 0.15  # read this often while output trickles in: 150 ms, measured (bench.scale, 48 ports)
MIN_TICK = 0.005  # a line too fast for ticks this long is always read immediately
TICK_LIMIT = TTY_BUFFER * 3 // 4  # a tick that reads this much: back to immediate reads
TRICKLE_GAP = 0.02  # a small read this soon after the previous one: output trickles in
SMALL_READ = 1024  # reads below this are small (a packet, a line)
TYPING = 1.0  # for this long after a write, reads stay immediate


class LinePacer:
    """Token bucket at the line rate: `allowance()` bytes may be written now."""

    def __init__(self, bytes_per_second: float, burst_seconds: float = 0.02) -> None:
        self.rate = bytes_per_second
        self.burst = max(64.0, bytes_per_second * burst_seconds)
        self.tokens = self.burst
        self.stamp = 0.0

    def allowance(self, now: float) -> int:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n

    def wait_for(self, n: int) -> float:
        """Seconds until `n` bytes (at most a burst) may be written."""
        return max(0.0, (min(n, self.burst) - self.tokens) / self.rate)


def tick_for(bytes_per_second: float) -> float:
    """The read tick for a line of this byte rate (0: never tick): at most TICK, and short enough
    that the line cannot fill more than half the tty buffer between two ticks."""
    tick = min(TICK, TTY_BUFFER / 2 / max(bytes_per_second, 1.0))
    return tick if tick >= MIN_TICK else 0.0


class ReadTicks:
    """The read policy of one tty: immediate reads (`loop.add_reader`), or one read every `tick`
    seconds (no reader meanwhile). The transport calls `started`, `ticked`, `wrote`, `cancel`."""

    def __init__(self, bytes_per_second: float) -> None:
        self.tick = tick_for(bytes_per_second)
        self.last_read = -1.0
        self.last_write = -TYPING
        self.handle: asyncio.TimerHandle | None = None  # the next tick, while ticking

    def started(self, n: int, loop: asyncio.AbstractEventLoop, fd: int, on_tick: Callback) -> None:
        """After an immediate read of `n` bytes: switch to ticks if output trickles in."""
        now = loop.time()
        trickle = n < SMALL_READ and now - self.last_read < TRICKLE_GAP
        self.last_read = now
        if trickle and self.tick > 0 and now - self.last_write >= TYPING and fd >= 0:
            loop.remove_reader(fd)
            self.handle = loop.call_later(self.tick, on_tick)

    def ticked(
        self, n: int, loop: asyncio.AbstractEventLoop, fd: int, on_tick: Callback,
        on_readable: Callback,
    ) -> None:  # fmt: skip
        """After a tick read `n` bytes: tick again, or back to immediate reads."""
        self.last_read = now = loop.time()
        self.handle = None
        if 0 < n < TICK_LIMIT and now - self.last_write >= TYPING:
            self.handle = loop.call_later(self.tick, on_tick)
        else:
            loop.add_reader(fd, on_readable)

    def wrote(self, loop: asyncio.AbstractEventLoop, fd: int, on_readable: Callback) -> None:
        """Before a write: immediate reads from now on (a keystroke's echo never waits)."""
        self.last_write = loop.time()
        if self.cancel() and fd >= 0:
            loop.add_reader(fd, on_readable)

    def cancel(self) -> bool:
        """Stop ticking (the device is closed); True if it was ticking."""
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
        return handle is not None
