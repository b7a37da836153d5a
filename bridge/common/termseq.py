"""Terminal output split into text and control sequences, incrementally and with bounded memory.

Used wherever a target's output is inspected on its way to a person: `connect`'s screen filter
(bridge.common.screen) and the log's readable text (bridge.history.textexport). The splitter only
finds where sequences begin and end — ECMA-48 / xterm grammar, 7-bit introducers:

- CSI `ESC [` parameters (0x30-0x3F), intermediates (0x20-0x2F), a final byte (0x40-0x7E);
- OSC `ESC ]` printable payload, ended by BEL or ST (`ESC \\`);
- DCS, APC, PM, SOS (`ESC P`, `ESC _`, `ESC ^`, `ESC X`) up to ST;
- any other escape: `ESC`, intermediates, a final byte (charsets, `ESC 7`, `ESC c`, ...).

Everything else is TEXT (C0 controls and UTF-8 included; the UTF-8 form of a C1 control, `C2 80`
to `C2 9F`, is never split across two pieces so the caller can see it whole). A sequence broken
by a byte its grammar does not allow (a person's Esc key, line noise, a hostile `ESC ] 0 ; x ESC ]
52 ...`) is discarded up to that byte, and the byte starts afresh — as a terminal aborts it. A
sequence split across reads is held until it is complete, at most `max_sequence` bytes; a longer
one is discarded whole, however long it runs, without holding it.
"""

from __future__ import annotations

import enum
import re


class Kind(enum.Enum):
    TEXT = "text"
    CSI = "csi"
    OSC = "osc"
    STRING = "string"  # DCS, APC, PM, SOS
    ESCAPE = "escape"  # any other ESC sequence


_SEQUENCE = re.compile(
    rb"""
      (?P<csi> \x1b\[ [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e] )
    | (?P<osc> \x1b\] [^\x00-\x1f\x7f]* (?: \x07 | \x1b\\ ) )
    | (?P<string> \x1b[P_^X] [^\x1b\x18\x1a]* \x1b\\ )
    | (?P<escape> \x1b [\x20-\x2f]* [\x30-\x4f\x51-\x57\x59\x5a\x5c\x60-\x7e] )
    """,
    re.VERBOSE,
)
# The longest beginning of a sequence that is still valid; with the optional ESC of an ST, what
# may continue in the next read.
_BODY = (
    rb"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*|\][^\x00-\x1f\x7f]*|[P_^X][^\x1b\x18\x1a]*|[\x20-\x2f]*)"
)
_VALID_PREFIX = re.compile(_BODY)
_INCOMPLETE = re.compile(_BODY + rb"\x1b?")
_KINDS = {"csi": Kind.CSI, "osc": Kind.OSC, "string": Kind.STRING, "escape": Kind.ESCAPE}

Token = tuple[Kind, bytes]


class Splitter:
    """`feed(bytes)` -> tokens, in order; `finish()` at the end of the stream."""

    def __init__(self, max_sequence: int = 4096) -> None:
        self.max_sequence = max_sequence
        self._pending = b""  # an incomplete sequence, or a trailing C2 (the first half of a C1)
        self._discarding = False  # the pending sequence grew too long: drop it when it ends

    @property
    def idle(self) -> bool:
        """Nothing held back: the next byte starts a new token."""
        return not self._pending

    def reset(self) -> None:
        """Forget a held partial sequence (the stream has a gap)."""
        self._pending, self._discarding = b"", False

    def feed(self, data: bytes) -> list[Token]:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        tokens: list[Token] = []
        pos, end = 0, len(buf)
        while pos < end:
            esc = buf.find(b"\x1b", pos)
            if esc != pos:  # text up to the next ESC (or the end)
                stop = end if esc < 0 else esc
                if esc < 0 and buf[stop - 1] == 0xC2:  # maybe the first half of a C1 control
                    stop -= 1
                    self._pending = buf[stop:]
                if stop > pos:
                    tokens.append((Kind.TEXT, buf[pos:stop]))
                if esc < 0:
                    break
                pos = esc
            match = _SEQUENCE.match(buf, pos)
            if match is not None:
                if not self._discarding and match.end() - pos <= self.max_sequence:
                    tokens.append((_KINDS[match.lastgroup or "escape"], match.group()))
                self._discarding = False
                pos = match.end()
                continue
            if _INCOMPLETE.fullmatch(buf, pos):  # continues in the next read
                held = buf[pos:]
                if len(held) > self.max_sequence:  # keep the introducer (and an ESC of an ST)
                    self._discarding = True
                    held = held[:2] + (b"\x1b" if held.endswith(b"\x1b") and len(held) > 2 else b"")
                self._pending = held
                break
            valid = _VALID_PREFIX.match(buf, pos)
            assert valid is not None  # `\x1b` alone always matches
            self._discarding = False
            pos = max(valid.end(), pos + 1)  # drop the broken sequence; its breaker starts afresh
        return tokens

    def finish(self) -> list[Token]:
        """The end of the stream: a held C2 is text, a held partial sequence is dropped."""
        held, self._pending = self._pending, b""
        self._discarding = False
        return [(Kind.TEXT, held)] if held and not held.startswith(b"\x1b") else []
