"""`connect`'s escape parser (bridge.client.keys): typed keys move the after-newline state,
terminal answers mixed into the input (cursor reports, device attributes, OSC replies, focus
events, paste markers, mouse reports) do not — in one read or split byte by byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.client.keys import EscapeParser

CPR = b"\x1b[24;8R"  # what a terminal answers to ESC[6n (busybox asks after every prompt)
ANSWERS = [
    CPR,
    b"\x1b[?1;2c",  # device attributes (DA1)
    b"\x1b[>41;390;0c",  # secondary DA
    b"\x1b[0n",  # status report
    b"\x1b[?2004;1$y",  # DECRPM mode report
    b"\x1b[8;24;80t",  # window size report
    b"\x1b]11;rgb:0000/0000/0000\x1b\\",  # OSC colour answer, ST-terminated
    b"\x1b]10;rgb:ffff/ffff/ffff\x07",  # ... BEL-terminated
    b"\x1b]52;c;aGVsbG8=\x07",  # clipboard answer
    b"\x1bP1$r0m\x1b\\",  # DECRQSS answer
    b"\x1b_Gi=1;OK\x1b\\",  # APC (kitty graphics) answer
    b"\x1b]11;?\x1b[I",  # an OSC cut short by the next sequence (focus in)
    b"\x1b[I",  # focus in
    b"\x1b[O",  # focus out
    b"\x1b[<0;10;5M",  # SGR mouse press
    b"\x1b[M ~~",  # X10 mouse report: raw bytes, one of them a tilde
    b"\x1b[200~\x1b[201~",  # bracketed paste start and end (an empty paste)
]
KEYS = [
    b"\x1b[A",
    b"\x1bOP",
    b"\x1b[3~",
    b"\x1b[1;5C",
    b"\x1bx",
    b"a",
]  # up, F1, Del, Ctrl-right, Alt-x


def run(parser: EscapeParser, *chunks: bytes) -> tuple[bytes, list[str]]:
    """Feeds the chunks; returns everything sent to the target and the escape commands, in order
    (a command also appears in the sent bytes as `<name>` so their order can be checked)."""
    sent, actions = bytearray(), []
    for chunk in chunks:
        for action, payload in parser.feed(chunk):
            if action == "send":
                sent += payload
            else:
                actions.append(action)
                sent += f"<{action}>".encode()
    return bytes(sent), actions


def test_a_cursor_report_after_enter_keeps_the_escape_working() -> None:
    # the bug of issue 17: Enter, busybox asks ESC[6n, the terminal answers, ~B typed
    sent, actions = run(EscapeParser(), b"\r", CPR, b"~B", b"h")
    assert actions == ["break"]
    assert sent == b"\r" + CPR + b"<break>h"
    sent, actions = run(EscapeParser(), b"\r" + CPR + b"~.")
    assert actions == ["disconnect"] and sent == b"\r" + CPR + b"<disconnect>"


def test_every_kind_of_answer_leaves_the_state_alone() -> None:
    for answer in ANSWERS:
        for chunks in ([answer], [bytes([b]) for b in answer]):  # whole, and byte by byte
            sent, actions = run(EscapeParser(), b"ls\r", *chunks, b"~", b"B")
            assert actions == ["break"], answer
            assert sent == b"ls\r" + answer + b"<break>", answer


def test_keys_are_typed_and_move_the_state() -> None:
    for key in KEYS:
        for chunks in ([key], [bytes([b]) for b in key]):
            sent, actions = run(EscapeParser(), b"\r", *chunks, b"~.")
            assert actions == [], key
            assert sent == b"\r" + key + b"~.", key


def test_an_answer_between_the_tilde_and_its_key_is_held_in_order() -> None:
    sent, actions = run(EscapeParser(), b"\r~", CPR, b"B")
    assert actions == ["break"] and sent == b"\r" + CPR + b"<break>"
    # the tilde turns out to be text: it goes first, then the held answer, then the key
    sent, actions = run(EscapeParser(), b"\r~", CPR, b"x")
    assert actions == [] and sent == b"\r~" + CPR + b"x"
    # a key (not an answer) after the tilde: both are typed, in order
    sent, actions = run(EscapeParser(), b"\r~", b"\x1b[A", b"~.")
    assert actions == [] and sent == b"\r~\x1b[A~."


def test_ssh_style_escapes() -> None:
    assert run(EscapeParser(), b"~.") == (b"<disconnect>", ["disconnect"])  # at the start
    assert run(EscapeParser(), b"a~.") == (b"a~.", [])  # not after a newline
    assert run(EscapeParser(), b"\n~~x") == (b"\n~x", [])  # ~~ is one tilde
    assert run(EscapeParser(), b"\r~?~b") == (b"\r<help><break>", ["help", "break"])
    assert run(EscapeParser(), b"\r~\r~.") == (b"\r~\r<disconnect>", ["disconnect"])
    assert run(EscapeParser(), b"x\r~.rest") == (b"x\r<disconnect>", ["disconnect"])


def test_a_stray_escape_key_never_locks_the_escapes_out() -> None:
    # Esc then `]` looks like the start of an OSC answer; Enter ends it as typed text
    sent, actions = run(EscapeParser(), b"\x1b]", b"abc", b"\r", b"~.")
    assert actions == ["disconnect"] and sent == b"\x1b]abc\r<disconnect>"
    # Esc alone at the end of a read, then a normal key
    sent, actions = run(EscapeParser(), b"\r\x1b", b"~.")
    assert actions == [] and sent == b"\r\x1b~."
    # an endless "parameter" run is not an answer
    sent, actions = run(EscapeParser(), b"\r\x1b[" + b"1" * 5000 + b"R", b"~.")
    assert actions == []


def test_inside_a_bracketed_paste_a_tilde_is_text() -> None:
    paste = b"\x1b[200~echo one\r~.\recho two\r\x1b[201~"
    sent, actions = run(EscapeParser(), b"\r", paste, b"~.")
    assert sent == b"\r" + paste + b"<disconnect>"  # the paste ended with Enter
    assert actions == ["disconnect"]


@given(
    st.lists(
        st.one_of(
            st.sampled_from([*ANSWERS, *KEYS]),
            st.binary(max_size=20).map(lambda b: b.replace(b"~", b"")),
        ),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_without_a_tilde_every_byte_reaches_the_target_unchanged(
    pieces: list[bytes], size: int
) -> None:
    data = b"".join(p for p in pieces if p != b"\x1b[M ~~")
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    sent, actions = run(EscapeParser(), *chunks)
    assert actions == [] and sent == data
