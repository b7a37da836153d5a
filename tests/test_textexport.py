"""format=text neutralisation: nothing in the output can drive the reader's terminal."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.history.textexport import TextExporter, to_text


def assert_safe(text: str) -> None:
    for ch in text:
        if ch in "\n\t":
            continue
        assert unicodedata.category(ch) != "Cc", f"raw control {ch!r} in {text!r}"


@pytest.mark.parametrize(
    ("name", "raw", "visible"),
    [
        ("osc title", b"\x1b]0;pwned title\x07rest", "\\x1b]0;pwned title\\x07rest"),
        ("csi cursor", b"a\x1b[2J\x1b[10;20Hb", "a\\x1b[2J\\x1b[10;20Hb"),
        ("decrqss", b"\x1bP$qm\x1b\\", "\\x1bP$qm\\x1b\\"),
        ("osc 52", b"\x1b]52;c;ZWNobyBoaQ==\x07", "\\x1b]52;c;ZWNobyBoaQ==\\x07"),
        ("c1 csi raw byte", b"x\x9b31mred", "x\ufffd31mred"),
        ("c1 csi utf-8", "x\u009b31mred".encode(), "x\\u009b31mred"),
        ("c1 osc utf-8", "\u009d0;t\u009c".encode(), "\\u009d0;t\\u009c"),
        ("del and nul", b"a\x7fb\x00c", "a\\x7fb\\x00c"),
        ("lone cr", b"progress 10%\rprogress 20%", "progress 10%\\x0dprogress 20%"),
        ("crlf", b"line1\r\nline2\r\n", "line1\nline2\n"),
        ("cr cr lf", b"a\r\r\nb", "a\\x0d\nb"),
        ("tab and newline kept", b"a\tb\nc", "a\tb\nc"),
        ("invalid utf-8", b"ok\xff\xfe\xc3(", "ok\ufffd\ufffd\ufffd("),
        ("utf-8 kept", "héllo → ✓".encode(), "héllo → ✓"),
    ],
)
def test_neutralises(name: str, raw: bytes, visible: str) -> None:
    out = to_text(raw)
    assert out == visible
    assert "\x1b" not in out
    assert_safe(out)


def test_crlf_split_across_feeds_gives_one_newline() -> None:
    exp = TextExporter()
    out = exp.feed(b"abc\r") + exp.feed(b"\ndef") + exp.finish()
    assert out == "abc\ndef"


def test_cr_at_the_very_end_is_a_lone_cr() -> None:
    exp = TextExporter()
    assert exp.feed(b"abc\r") == "abc"
    assert exp.finish() == "\\x0d"


def test_utf8_split_across_feeds() -> None:
    raw = "€✓é".encode()
    exp = TextExporter()
    out = "".join(exp.feed(raw[i : i + 1]) for i in range(len(raw))) + exp.finish()
    assert out == "€✓é"


def test_cut_utf8_sequence_at_finish_is_replaced() -> None:
    exp = TextExporter()
    assert exp.feed(b"a\xe2\x82") == "a"
    assert exp.finish() == "\ufffd"


def test_c1_in_utf8_split_across_feeds_is_escaped() -> None:
    exp = TextExporter()
    out = exp.feed(b"\xc2") + exp.feed(b"\x9b") + exp.finish()
    assert out == "\\u009b"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_chunking_never_changes_output_and_output_is_safe(data: bytes, cuts: list[int]) -> None:
    whole = to_text(data)
    assert_safe(whole)
    exp = TextExporter()
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [exp.feed(data[a:b]) for a, b in itertools.pairwise(points)]
    assert "".join(pieces) + exp.finish() == whole


def strip(*chunks: bytes) -> str:
    exp = TextExporter(strip=True)
    return "".join(exp.feed(chunk) for chunk in chunks) + exp.finish()


def test_strip_drops_sequences_and_controls_for_a_readable_log() -> None:
    busybox = b"\x1b[?2004l\rguest# \x1b[6necho hi\r\nhi\r\n\x1b[?2004h\x1b]0;t\x07guest# "
    assert strip(busybox) == "guest# echo hi\nhi\nguest# "
    assert (
        strip(b"\x1b[1;31mred\x1b[0m \x1bP$qm\x1b\\\x1b]52;c;eA==\x1b\\ok\x07\x08\x7f") == "red ok"
    )
    assert strip("x\u009b31m\u009d0;t\u009c y".encode()) == "x31m0;t y"  # C1: the control goes
    assert strip(b"progress 10%\rprogress 20%\r\n") == "progress 10%progress 20%\n"
    assert strip("héllo → ✓ ".encode() + b"\xff") == "héllo → ✓ \ufffd"


def test_strip_handles_sequences_split_across_feeds() -> None:
    data = b"a\x1b]0;title\x1b\\b\x1b[38;5;12mc\xc2\x9bd\r\ne"
    assert strip(*[data[i : i + 1] for i in range(len(data))]) == strip(data) == "abcd\ne"
    assert strip(b"tail \x1b[3") == "tail "  # a sequence cut by the end of the log is dropped


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_strip_is_safe_and_chunking_never_changes_it(data: bytes, cuts: list[int]) -> None:
    whole = strip(data)
    assert_safe(whole)
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    assert strip(*[data[a:b] for a, b in itertools.pairwise(points)]) == whole
