"""`connect`'s screen filter (bridge.common.screen, on bridge.common.termseq): a hostile
target's clipboard writes and type-back requests never reach the operator's terminal; what
full-screen programs use does, unchanged; sequences split across reads are handled and held
bytes are bounded."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.common.screen import ScreenFilter, csi_allowed, osc_allowed
from bridge.common.termseq import Kind, Splitter
from tests.conftest import Bridge, PtyDevice
from tests.test_cli import PtyScreen

KEPT = [
    b"\x1b[1;31mred\x1b[0m",  # colours
    b"\x1b[38;2;10;20;30m",  # true colour
    b"\x1b[10;20H\x1b[2J\x1b[K\x1b[3A\x1b[?25l\x1b[?25h",  # cursor, erase, visibility
    b"\x1b[?1049h\x1b[?1049l",  # alternate screen
    b"\x1b[?2004h\x1b[?2004l",  # bracketed paste mode, set by the target
    b"\x1b[?1000h\x1b[?1006h\x1b[?1004h",  # mouse and focus reporting
    b"\x1b[5;20r",  # scrolling region
    b"\x1b[6n\x1b[c\x1b[>c\x1b[5n\x1b[?2004$p",  # numeric-answer queries line editors use
    b"\x1b7\x1b8\x1b(0q\x1b(B\x1bc\x1b=\x1b>\x1bM",  # save/restore, charsets, reset, keypad
    b"\x1b]0;vim - notes.txt\x07",  # window title
    b"\x1b]2;title\x1b\\",  # ... ST-terminated
    b"\x1b]8;;https://example.org/\x1b\\link\x1b]8;;\x1b\\",  # hyperlink
    b"\x1b]133;A\x07",  # prompt mark
    b"\x1b]4;1;rgb:ff/00/00\x07\x1b]104\x07",  # set and reset a palette colour
    b"\x1b[22;0t\x1b[23;0t\x1b[18t\x1b[8;24;80t",  # title stack, size report, resize
    b"caf\xc3\xa9 \xc2\xa9 \xe2\x94\x80\r\n\t\x07\x08",  # UTF-8 (C2 A9 too), C0 controls
]
DROPPED = [
    b"\x1b]52;c;ZWNobyBwd25lZAo=\x07",  # OSC 52 clipboard write
    b"\x1b]52;c;ZWNobyBwd25lZAo=\x1b\\",
    b"\x1b]52;c;?\x07",  # clipboard read
    b"\x1b[21t",  # title report: types back the title the target set
    b"\x1b[20t",  # icon label report
    b"\x1bP$qm\x1b\\",  # DECRQSS
    b"\x1bP+q544e\x1b\\",  # XTGETTCAP
    b"\x1bP0;1|17/6162\x1b\\",  # DECUDK: redefine the operator's function keys
    b"\x05",  # ENQ: answer-back
    b"\x1b]50;?\x07",  # font query
    b"\x1b]11;?\x07",  # colour query
    b"\x1b]4;1;?\x1b\\",
    b"\x1b]1337;File=name=eA==:eA==\x07",  # iTerm2 file transfer
    b"\x1b]9;you have been pwned\x07",  # desktop notification
    b"\x1b_Ga=T,t=f;L2V0Yy9wYXNzd2Q=\x1b\\",  # kitty graphics: read a file on the operator's box
    b"\x1b^privacy message\x1b\\",  # PM
    b"\x1bXstring\x1b\\",  # SOS
    b"\x1b[3;0;0t\x1b[2t\x1b[9;1t\x1b[100t",  # move, iconify, maximise, resize to 100 lines
    b"\x1b[?46h",  # xterm: start logging to a file
    b"\x1b[5i",  # printer controller on
    b"\xc2\x9b21t"[:2],  # C1 CSI in UTF-8 (what follows it is plain text)
    b"\xc2\x9d",  # C1 OSC
]


def run(*chunks: bytes) -> bytes:
    screen = ScreenFilter()
    return b"".join(screen.feed(chunk) for chunk in chunks)


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_what_full_screen_programs_use_passes_unchanged() -> None:
    for seq in KEPT:
        assert run(seq) == seq, seq
        assert run(*byte_by_byte(seq)) == seq, seq


def test_clipboard_and_type_back_requests_are_dropped() -> None:
    for seq in DROPPED:
        data = b"before " + seq + b" after"
        assert run(data) == b"before  after", seq
        assert run(*byte_by_byte(data)) == b"before  after", seq


def test_a_sequence_cut_short_cannot_smuggle_another() -> None:
    # a terminal aborts the title at the second ESC ] and obeys the OSC 52 that follows
    smuggled = b"\x1b]0;x\x1b]52;c;ZXZpbA==\x07"
    assert b"52" not in run(smuggled) and b"52" not in run(*byte_by_byte(smuggled))
    # xterm reads U+009D (C2 9D) inside a title as a new OSC
    assert run(b"\x1b]0;x\xc2\x9d52;c;ZXZpbA==\x07") == b""
    # a C2 kept before a dropped sequence and a continuation byte after it would form a C1
    assert b"\xc2\x9b" not in run(b"\xc2\x1bP$q\x1b\\\x9b21t")


def test_held_bytes_are_bounded() -> None:
    screen = ScreenFilter()
    held_at_most = 0
    assert screen.feed(b"start ") == b"start "
    for _ in range(256):  # 1 MiB clipboard write that never seems to end
        assert screen.feed(b"\x1b]52;c;" if _ == 0 else b"QUFB" * 1024) == b""
        held_at_most = max(held_at_most, len(screen._splitter._pending))
    assert screen.feed(b"\x07 end") == b" end"
    assert held_at_most <= 4096
    # an over-long sequence that is otherwise harmless is dropped too, and the stream goes on
    assert run(b"\x1b]0;" + b"t" * 5000 + b"\x07ok") == b"ok"


def test_splitter_tokens() -> None:
    splitter = Splitter()
    tokens = splitter.feed(b"a\x1b[1mb\x1b]0;t\x07c\x1bP$q\x1b\\d\x1b(Be\x1b[")
    assert tokens == [
        (Kind.TEXT, b"a"),
        (Kind.CSI, b"\x1b[1m"),
        (Kind.TEXT, b"b"),
        (Kind.OSC, b"\x1b]0;t\x07"),
        (Kind.TEXT, b"c"),
        (Kind.STRING, b"\x1bP$q\x1b\\"),
        (Kind.TEXT, b"d"),
        (Kind.ESCAPE, b"\x1b(B"),
        (Kind.TEXT, b"e"),
    ]
    assert not splitter.idle
    assert splitter.feed(b"2J") == [(Kind.CSI, b"\x1b[2J")]
    assert splitter.feed(b"x\x1b[3") == [(Kind.TEXT, b"x")]
    assert splitter.finish() == []  # a partial sequence at the end is dropped


FRAGMENTS = st.one_of(
    st.sampled_from(KEPT + DROPPED),
    st.binary(max_size=12),
    st.sampled_from([b"\x1b", b"\x1b[", b"\x1b]", b"\x1bP", b"\x07", b"\x1b\\", b"\xc2", b"\x9b"]),
)


def dangerous(output: bytes) -> list[bytes]:
    """What a terminal that parses like bridge.common.termseq would find unsafe in `output`."""
    splitter = Splitter(max_sequence=1 << 30)
    safe = {
        Kind.STRING: lambda piece: False,
        Kind.CSI: csi_allowed,
        Kind.OSC: osc_allowed,
        Kind.ESCAPE: lambda piece: True,
        Kind.TEXT: lambda piece: b"\x05" not in piece and not re.search(rb"\xc2[\x80-\x9f]", piece),
    }
    bad = [
        piece
        for kind, piece in [*splitter.feed(output), *splitter.finish()]
        if not safe[kind](piece)
    ]
    return bad


@settings(max_examples=300)
@given(st.lists(FRAGMENTS, max_size=16), st.integers(min_value=1, max_value=9))
def test_any_stream_in_any_pieces_is_safe_and_the_same(fragments: list[bytes], size: int) -> None:
    data = b"".join(fragments)
    whole = run(data)
    assert run(*[data[i : i + size] for i in range(0, len(data), size)]) == whole
    assert dangerous(whole) == []


async def test_connect_filters_what_reaches_the_terminal(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    screen = PtyScreen()
    proc = await screen.connect_to(
        bridge, "lab", bridge.tokens["viewer"], tmp_path / "xdg", "--read-only", "--replay", "0"
    )
    await screen.until(b"~? for help")
    hostile = b"\x1b]52;c;cm0gLXJmIH4K\x07\x1b[21t\x1bP$qm\x1b\\\x05"
    pty_device.write(b"one " + hostile[:9])  # the clipboard write split across reads
    pty_device.write(hostile[9:] + b"\x1b[1mtwo\x1b[0m\r\n")
    await screen.until(b"two\x1b[0m\r\n")
    assert b"one \x1b[1mtwo" in screen.seen
    assert b"\x1b]52" not in screen.seen and b"\x1b[21t" not in screen.seen
    assert b"\x1bP" not in screen.seen and b"\x05" not in screen.seen
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    screen.close()
