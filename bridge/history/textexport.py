"""Console bytes to terminal-safe text (the log API's ``format=text`` and the CLI log viewer).

This module owns the neutralisation contract: the output is UTF-8 text in which no character can
drive the reader's terminal. Invalid UTF-8 becomes U+FFFD; ``\\r\\n`` becomes ``\\n``; ESC, a
lone ``\\r``, the other C0 controls except ``\\n`` and ``\\t``, and DEL are shown as the visible
4-character escape ``\\xHH``; the C1 controls U+0080-U+009F as the 6-character ``\\u00HH``
(raw C1 bytes are invalid UTF-8 and already became U+FFFD). Escape sequences therefore arrive
as harmless text such as ``\\x1b]0;title\\x07``.

The readable mode (``strip=True``; ``format=text&strip=1``, ``serial-bridge log --strip``) drops
instead of showing: escape sequences vanish whole (CSI, OSC, DCS, ... as bridge.common.termseq finds
them), and so do the controls the default mode shows as escapes, a lone ``\\r`` included — what
is left is the text a person reads. It is just as safe for a terminal.

The converter is incremental: a UTF-8 sequence, an escape sequence or a ``\\r\\n`` pair split
across chunks is handled as if it came in one piece. The default mode's work is done by C-level
codec, ``str.replace`` and ``str.translate`` calls, with no per-character Python loop.
"""

from __future__ import annotations

import codecs

from bridge.common.termseq import Kind, Splitter


def _escape_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in [*range(0x20), 0x7F]:
        if chr(code) not in "\n\t":
            table[code] = f"\\x{code:02x}"
    for code in range(0x80, 0xA0):
        table[code] = f"\\u{code:04x}"
    return table


_TABLE = _escape_table()
_STRIP_TABLE: dict[int, None] = dict.fromkeys(_TABLE)  # what the default mode escapes, dropped


class TextExporter:
    """Incremental converter: feed() console bytes in chunks, then finish()."""

    def __init__(self, strip: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cr = False  # a "\r" held back: it may be the first half of "\r\n"
        self._splitter = Splitter() if strip else None
        self._table = _STRIP_TABLE if strip else _TABLE

    def feed(self, data: bytes) -> str:
        """Safe text for ``data``; may hold back an incomplete UTF-8 or escape sequence or a
        final ``\\r``."""
        if self._splitter is not None:
            data = _text_only(self._splitter.feed(data))
        text = self._decoder.decode(data)
        if self._cr:
            text = "\r" + text
        self._cr = text.endswith("\r")
        if self._cr:
            text = text[:-1]
        return text.replace("\r\n", "\n").translate(self._table)

    def finish(self) -> str:
        """Text for whatever was held back (a cut UTF-8 sequence becomes U+FFFD, a cut escape
        sequence is dropped)."""
        rest = _text_only(self._splitter.finish()) if self._splitter is not None else b""
        text = self._decoder.decode(rest, final=True)
        if self._cr:
            text = "\r" + text
            self._cr = False
        return text.replace("\r\n", "\n").translate(self._table)


def _text_only(tokens: list[tuple[Kind, bytes]]) -> bytes:
    return b"".join(piece for kind, piece in tokens if kind is Kind.TEXT)


def to_text(data: bytes) -> str:
    """Safe text for a complete byte string."""
    exporter = TextExporter()
    return exporter.feed(data) + exporter.finish()
