"""The SSH channel as a terminal: what a session reads from its user and writes to them.

Input — keystrokes, RFC 4335 BREAK requests (OpenSSH's `~B`) and the end of input — arrives in
asyncssh callbacks and is queued in order; one task reads it, as chunks (the console), single
bytes, or edited lines (the escape prompt, the port menu, the one-time code). A paste faster than
the serial line can take it pauses reading from the channel once INPUT_HIGH bytes wait, so SSH
flow control holds the client back instead of memory filling up.

Output: `write` is the console stream; `show` and `say` are the bridge's own words (`say` prefixes
`[serial-bridge]`), shown only on this terminal, never in the target's byte stream. While a
prompt is open the console stream is *held*: its bytes wait here, and past the client's budget
the fan-out catches this client up from history later (the terminal is the hub's Outlet for it,
bridge.console.fanout), so output never overwrites what the user is typing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from bridge.common.screen import ScreenFilter
from bridge.console.fanout import Chunk

INPUT_HIGH = 64 * 1024
INPUT_LOW = 16 * 1024
OUTPUT_HIGH = 256 * 1024  # channel buffer: above this the client is "not reading"
OUTPUT_LOW = 64 * 1024
LINE_LIMIT = 256
TAG = "[serial-bridge] "


@dataclass(frozen=True)
class Break:
    """An RFC 4335 break request from the client, in its order among the keystrokes."""

    msec: int


class Cancelled:
    """A prompt the user left with Ctrl-C, Ctrl-D on an empty line or Escape."""


CANCELLED = Cancelled()
Input = bytes | Break | None  # None: the input ended


class Terminal:
    """Queued input and holdable output of one session channel."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        self.newline = b"\r\n"
        self.screen = ScreenFilter()  # the target's output may not reach beyond the screen
        self.closed = False
        self.on_message: Callable[[dict[str, Any]], None] = lambda message: None
        self._items: deque[Input] = deque()
        self._arrived = asyncio.Event()
        self._queued = 0
        self._reading_paused = False
        self._pending = bytearray()  # read but given back (`unread`)
        self._skip_lf = False  # a "\r" ended the last line: a "\n" right after it is the same key
        self._held: bytearray | None = None
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()

    # ---- input, from asyncssh's callbacks ----------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._items.append(data)
        self._queued += len(data)
        if self._queued > INPUT_HIGH and not self._reading_paused:
            self._reading_paused = True
            self.chan.pause_reading()
        self._arrived.set()

    def feed_break(self, msec: int) -> None:
        self._items.append(Break(msec))
        self._arrived.set()

    def feed_eof(self) -> None:
        self._items.append(None)
        self._arrived.set()

    # ---- input, for the session --------------------------------------------------------------

    async def _next(self) -> Input:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            return data
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items.popleft()
        if item is None:
            self._items.appendleft(None)  # the end stays the end for every later read
        elif isinstance(item, bytes):
            self._queued -= len(item)
            if self._reading_paused and self._queued < INPUT_LOW:
                self._reading_paused = False
                self.chan.resume_reading()
        return item

    def unread(self, data: bytes) -> None:
        self._pending[:0] = data

    async def read_chunk(self) -> Input:
        """Whatever input comes next: bytes as they came, a Break, or None at the end."""
        item = await self._next()
        if self._skip_lf and isinstance(item, bytes):
            self._skip_lf = False
            item = item[1:] if item.startswith(b"\n") else item
            if not item:
                return await self.read_chunk()
        return item

    async def read_byte(self) -> int | Break | None:
        item = await self.read_chunk()
        if not isinstance(item, bytes):
            return item
        self.unread(item[1:])
        return item[0]

    async def read_line(self, prompt: str = "", echo: bool = True) -> str | Cancelled | None:
        """One edited line (Backspace, Ctrl-U; Enter ends it): the text, CANCELLED (Ctrl-C,
        Ctrl-D on an empty line, Escape), or None when the input ended. BREAKs are ignored."""
        if prompt:
            self.show(prompt, end=False)
        line = bytearray()
        while True:
            key = await self.read_byte()
            if key is None:
                return None
            if isinstance(key, Break):
                continue
            if key in (0x0D, 0x0A):
                self._skip_lf = key == 0x0D
                self.show("")
                return line.decode("utf-8", "replace")
            if key in (0x7F, 0x08):
                if line:
                    while line and line.pop() & 0xC0 == 0x80:  # a whole UTF-8 character
                        pass
                    if echo:
                        self._direct(b"\b \b")
            elif key == 0x15:  # Ctrl-U
                if echo:
                    self._direct(b"\b \b" * len(line.decode("utf-8", "replace")))
                line.clear()
            elif key == 0x03 or (key == 0x04 and not line):
                self.show("")
                return CANCELLED
            elif key == 0x1B:
                if await self._escape_sequence():
                    continue
                self.show("")
                return CANCELLED
            elif key >= 0x20 and len(line) < LINE_LIMIT:
                line.append(key)
                if echo:
                    self._direct(bytes([key]))

    async def _escape_sequence(self) -> bool:
        """After ESC: swallow a cursor-key sequence (ESC [ ... or ESC O x) and return True;
        False for a lone Escape (the user wants out)."""
        if not self._pending and not self._items:
            return False  # Escape pressed alone: nothing follows in the same packet
        key = await self.read_byte()
        if key not in (ord("["), ord("O")):
            if isinstance(key, int):
                self.unread(bytes([key]))
            return False
        for _ in range(16):
            key = await self.read_byte()
            if not isinstance(key, int) or 0x40 <= key <= 0x7E:
                break
        return True

    # ---- output ------------------------------------------------------------------------------

    def _direct(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.chan.write(data)
        except (BrokenPipeError, OSError):
            self.closed = True

    def write(self, data: bytes) -> None:
        """Console bytes: as they are, or held while a prompt is open."""
        if self._held is not None:
            self._held += data
        else:
            self._direct(data)

    def show(self, text: str, end: bool = True) -> None:
        """The bridge's own text, now (never held); newlines as this terminal wants them."""
        data = text.encode("utf-8", "replace").replace(b"\n", self.newline)
        self._direct(data + (self.newline if end else b""))

    def say(self, text: str, held: bool = False) -> None:
        """A `[serial-bridge] ...` line of its own; `held` keeps it in order with console output
        held behind a prompt (status messages), else it shows now."""
        data = self.newline + (TAG + text).encode("utf-8", "replace") + self.newline
        if held:
            self.write(data)
        else:
            self._direct(data)

    def error(self, text: str) -> None:
        """A message for standard error (exec commands); a `say` line on an interactive one."""
        if self.newline == b"\n":
            with contextlib.suppress(BrokenPipeError, OSError):
                self.chan.write_stderr(("serial-bridge: " + text + "\n").encode())
        else:
            self.say(text)

    def hold(self) -> None:
        if self._held is None:
            self._held = bytearray()

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._direct(bytes(held))
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _wake(self) -> None:
        self._writable.set()

    def close(self) -> None:
        self.closed = True
        self.feed_eof()
        self._wake()

    # ---- the hub's Outlet and Viewer for this client (bridge.console.fanout / port) ---------

    def send_chunk(self, chunk: Chunk) -> None:
        self.write(self.screen.feed(chunk.data))

    def send_history(self, offset: int, data: bytes) -> None:
        self.write(self.screen.feed(data))

    def send_gap(self, start: int, end: int) -> None:
        self.screen.reset()  # a sequence cut by the gap is not completed by what follows it
        self.say(f"{end - start} bytes of output are lost here (this connection fell behind)", True)

    def send_message(self, message: dict[str, Any]) -> None:
        self.on_message(message)

    def backlog(self) -> int:
        held = len(self._held) if self._held is not None else 0
        return held + (0 if self.closed else self.chan.get_write_buffer_size())

    async def drained(self) -> None:
        while not self.closed and (self._held is not None or self._write_paused):
            self._writable.clear()
            await self._writable.wait()
