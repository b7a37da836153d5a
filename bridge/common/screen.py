"""The screen filter: a hostile target's output may not drive an operator's terminal.

A target's console output goes to the operator's own terminal emulator, which obeys escape
sequences. Some sequences reach beyond the screen: OSC 52 writes (or reads) the operator's
clipboard, and several make the terminal *type back* text the target chose — a title report
(`CSI 21 t` answers with the window title the target just set, a command of its choosing),
DECRQSS and XTGETTCAP (DCS), the answer-back message (ENQ), font and colour queries (OSC 50, OSC
4/10/11 `?`). Others move, resize or iconify the operator's window, or start xterm's logging.

The filter drops those and passes everything full-screen programs use: text, C0 controls but
ENQ, cursor movement, colours and attributes, scrolling regions, modes (alternate screen,
bracketed paste, mouse and focus reporting, application keypad), charsets, window titles, OSC 8
hyperlinks, the shell-integration marks, and the queries whose answers are only numbers (cursor
position, device attributes, mode and status reports), which line editors and full-screen
programs ask. Dropped whole: DCS, APC, PM and SOS strings, every OSC not on the allow list, and
the UTF-8 form of a C1 control (`C2 80`-`C2 9F`), which some terminals read as CSI, OSC or ST.

It works on the stream as it arrives (bridge.common.termseq): a sequence split across reads is held
until complete, at most `MAX_SEQUENCE` bytes; what is longer is dropped. Output with nothing to
look at (no ESC, ENQ or C2 byte) passes through untouched.
"""

from __future__ import annotations

import re

from bridge.common.termseq import Kind, Splitter

MAX_SEQUENCE = 4096
# ENQ (answer-back); C1 controls in UTF-8, and a C2 byte that does not start a valid character,
# so that no C1 control can be formed by what is kept on both sides of a dropped sequence
_TEXT_DROP = re.compile(rb"\x05|\xc2[\x80-\x9f]|\xc2(?![\xa0-\xbf])")
_C1 = re.compile(rb"\xc2[\x80-\x9f]")
_NEEDS_A_LOOK = re.compile(rb"[\x05\x1b\xc2]")
_CSI = re.compile(rb"\x1b\[([\x30-\x3f]*)([\x20-\x2f]*)([\x40-\x7e])")
# window operations (CSI Ps t) that only report numbers or manage the title stack; 8 resizes the
# text area (in characters), as `resize` and some full-screen programs do
_WINDOW_OPS_KEPT = {b"8", b"11", b"13", b"14", b"15", b"16", b"18", b"19", b"22", b"23"}
_XTERM_LOGGING = 46
_OSC_KEPT = {b"0", b"1", b"2", b"7", b"8", b"133"}  # titles, cwd, hyperlinks, prompt marks
_OSC_COLOURS = {b"4", b"104", *(str(n).encode() for n in (*range(10, 20), *range(110, 120)))}


def csi_allowed(seq: bytes) -> bool:
    if seq[-1] not in b"thil":  # the common case (colours, cursor movement) at once
        return True
    match = _CSI.fullmatch(seq)
    if match is None:
        return False
    params, intermediates, final = match.groups()
    if final == b"t":  # window manipulation and reports
        first = params.split(b";", 1)[0]
        return not intermediates and first in _WINDOW_OPS_KEPT
    if final == b"i":  # media copy: printer controller mode
        return False
    if final in (b"h", b"l") and params.startswith(b"?"):
        modes = params[1:].split(b";")
        return not any(m.isdigit() and int(m) == _XTERM_LOGGING for m in modes)
    return True


def osc_allowed(seq: bytes) -> bool:
    body = seq[2:-1] if seq.endswith(b"\x07") else seq[2:-2]
    if _C1.search(body):
        return False
    number, _, rest = body.partition(b";")
    if number in _OSC_KEPT:
        return True
    if number in _OSC_COLOURS:  # setting a colour is fine; a query makes the terminal answer
        return b"?" not in rest.split(b";")
    return False


class ScreenFilter:
    """Feed the target's output, write what comes back to the operator's terminal."""

    def __init__(self) -> None:
        self._splitter = Splitter(MAX_SEQUENCE)

    def reset(self) -> None:
        """The stream has a gap: a sequence cut by it is dropped."""
        self._splitter.reset()

    def feed(self, data: bytes) -> bytes:
        if self._splitter.idle and not _NEEDS_A_LOOK.search(data):
            return data
        kept = []
        for kind, piece in self._splitter.feed(data):
            if kind is Kind.TEXT:
                kept.append(_TEXT_DROP.sub(b"", piece) if _NEEDS_A_LOOK.search(piece) else piece)
            elif (
                kind is Kind.ESCAPE
                or (kind is Kind.CSI and csi_allowed(piece))
                or (kind is Kind.OSC and osc_allowed(piece))
            ):
                kept.append(piece)
        return b"".join(kept)
