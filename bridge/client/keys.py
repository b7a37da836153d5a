"""`connect`'s keyboard: escape commands; what the person types told from what the terminal answers.

Escapes work after a newline, as in ssh: `~.` disconnect, `~B` send BREAK, `~?` help, `~~` a literal
tilde. "After a newline" means after the last key the person typed was Enter. The operator's
terminal also writes bytes of its own to standard input, answering queries in the target's output:
a cursor position report (`ESC [ row ; col R`, which busybox asks for after every prompt), device
attributes (`ESC [ ? … c`), status and mode reports (`… n`, `… $ y`), window reports (`… t`), OSC,
DCS and APC answers (colours, clipboard), focus events (`ESC [ I`, `ESC [ O`), mouse reports and the
bracketed-paste markers (`ESC [ 200~`, `ESC [ 201~`). Those go to the target unchanged but leave the
escape state alone; keys (arrows, function keys, Alt-x, ordinary characters) move it. Inside a
bracketed paste `~` is an ordinary character.

A `~` typed at a line start is held until the next key decides what it is; terminal answers that
arrive in between are held with it (up to `MAX_HELD` bytes) so the order of what reaches the
target is kept. A sequence that breaks its grammar (a person pressing Esc and then other keys) is
a typed key; a control character such as Enter ends it, so the escape state can always be reached
again. Nothing is buffered except the held `~`: bytes are forwarded as they arrive.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

ESC, BEL, CAN, SUB = 0x1B, 0x07, 0x18, 0x1A
TILDE = 0x7E
MAX_HELD = 256
MAX_SEQUENCE = 4096  # longer "sequences" are treated as typed (a terminal answer never is)


class _State(enum.Enum):
    GROUND = enum.auto()
    ESC = enum.auto()  # after ESC
    CSI = enum.auto()  # ESC [ parameters / intermediates
    SS3 = enum.auto()  # ESC O: one more byte (F1-F4, keypad)
    STRING = enum.auto()  # OSC / DCS / APC / PM / SOS body, up to BEL or ESC \
    STRING_ESC = enum.auto()  # ESC inside a string
    MOUSE = enum.auto()  # the three raw bytes of an X10 mouse report (ESC [ M b x y)


def is_terminal_answer(params: bytes, intermediates: bytes, final: int) -> bool:
    """Whether `ESC [ params intermediates final` is something a terminal sends by itself (an
    answer, a report or an event) rather than a key. Shift-F3 (`ESC [ 1 ; 2 R`) looks like a
    cursor report and counts as one."""
    f = chr(final)
    if f in "Rcnt" or f == "x":  # cursor, device attributes, status, window, DECREPTPARM
        return True
    if f == "y" and intermediates == b"$":  # DECRPM: a mode report
        return True
    if f == "~" and params in (b"200", b"201"):  # bracketed paste start / end
        return True
    if f in "IO" and not params and not intermediates:  # focus in / out
        return True
    if f in "Mm" and params.startswith(b"<"):  # SGR mouse report
        return True
    return f == "u" and params.startswith(b"?")  # keyboard-protocol flags report


class EscapeParser:
    """Splits keyboard input into bytes to send and escape commands; see the module docstring."""

    def __init__(self) -> None:
        self.line_start = True
        self.tilde = False  # a `~` at a line start, waiting for the next key
        self.pasting = False
        self._state = _State.GROUND
        self._seq = bytearray()  # the sequence being read, for telling answers from keys
        self._held = bytearray()  # what arrived after a held `~` (not sent yet)
        self._mouse_left = 0

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        """Yields ("send", bytes), ("disconnect", b""), ("break", b""), ("help", b"")."""
        plain = self._state is _State.GROUND and not self.tilde and ESC not in data
        if plain and (TILDE not in data or self.pasting):  # fast path: no escape, no sequence
            if data:
                self.line_start = data[-1] in (0x0D, 0x0A)
                yield "send", data
            return
        out = bytearray()
        for byte in data:
            action = self._byte(byte, out)
            if action:
                if out:
                    yield "send", bytes(out)
                    out.clear()
                yield action, b""
                if action == "disconnect":
                    return
        if out:
            yield "send", bytes(out)

    # -- sequences -----------------------------------------------------------------------------

    def _byte(self, byte: int, out: bytearray) -> str | None:
        """Takes one byte; returns an escape command when it completes one."""
        if self._state is _State.GROUND:
            if byte != ESC:
                return self._typed(byte, out)
            self._state, self._seq = _State.ESC, bytearray()
            verdict: str | None = None
        else:
            verdict = self._step(byte)
            if verdict == "abort":  # the byte belongs to no sequence: what came before was typed
                self._finish(False, out)
                return self._byte(byte, out)
            if verdict == "restart":  # ESC + other than a backslash: the string ended
                self._finish(True, out)
                self._state, self._seq = _State.ESC, bytearray(b"\x1b")
                return self._byte(byte, out)
        self._seq.append(byte)
        if self.tilde:
            self._held.append(byte)
            if len(self._held) > MAX_HELD:
                self._release_tilde(out)
        else:
            out.append(byte)
        if verdict is not None:
            self._finish(verdict == "answer", out)
        elif len(self._seq) > MAX_SEQUENCE:
            self._finish(False, out)
        return None

    def _step(self, byte: int) -> str | None:
        """The state machine: None (more to come), "answer", "key", "abort" or "restart"."""
        state = self._state
        if state is _State.ESC:
            if byte < 0x20:
                return "abort"
            nxt = {0x5B: _State.CSI, 0x4F: _State.SS3}.get(byte)
            if nxt is None and byte in b"]P_^X":
                nxt = _State.STRING
            if nxt is None:
                return "key"  # Alt + key
            self._state = nxt
            return None
        if state is _State.CSI:
            if 0x20 <= byte <= 0x3F:
                return None
            if not 0x40 <= byte <= 0x7E:
                return "abort"
            body = bytes(self._seq[2:])
            split = len(body) - len(body.lstrip(bytes(range(0x30, 0x40))))
            params, intermediates = body[:split], body[split:]
            if byte == 0x4D and not body:  # X10 mouse: three raw bytes follow
                self._state, self._mouse_left = _State.MOUSE, 3
                return None
            if byte == TILDE and params in (b"200", b"201"):
                self.pasting = params == b"200"
            return "answer" if is_terminal_answer(params, intermediates, byte) else "key"
        if state is _State.SS3:
            return "key" if byte >= 0x20 else "abort"
        if state is _State.MOUSE:
            self._mouse_left -= 1
            return "answer" if self._mouse_left == 0 else None
        if state is _State.STRING:
            if byte in (BEL, CAN, SUB):
                return "answer"
            if byte == ESC:
                self._state = _State.STRING_ESC
                return None
            return "abort" if byte < 0x20 else None  # Enter inside "an answer": typed
        return "answer" if byte == 0x5C else "restart"  # STRING_ESC

    def _finish(self, answer: bool, out: bytearray) -> None:
        """The sequence is complete: an answer leaves the state alone, a key moves it."""
        self._state, self._seq = _State.GROUND, bytearray()
        if not answer:
            self._release_tilde(out)
            self.line_start = False

    # -- typed keys and the tilde --------------------------------------------------------------

    def _release_tilde(self, out: bytearray) -> None:
        """The held `~` was an ordinary character: send it and what was held with it."""
        if self.tilde:
            self.tilde = False
            out += b"~" + self._held
            self._held.clear()
            self.line_start = False

    def _typed(self, byte: int, out: bytearray) -> str | None:
        if self.tilde:
            self.tilde = False
            command = {0x2E: "disconnect", 0x42: "break", 0x62: "break", 0x3F: "help"}.get(byte)
            if command is None:
                out += b"~" + self._held
                if byte != TILDE:  # `~~` is one tilde
                    out.append(byte)
                self.line_start = byte in (0x0D, 0x0A)
            else:
                out += self._held
            self._held.clear()
            return command
        if byte == TILDE and self.line_start and not self.pasting:
            self.tilde = True
            return None
        out.append(byte)
        self.line_start = byte in (0x0D, 0x0A)
        return None
