"""Telnet framing and the COM-PORT option as pure functions: any split of a stream parses the same,
IAC doubling round-trips, negotiation never loops, malformed input is an error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.common.telnet import (
    BRK,
    COM_PORT,
    DO,
    DONT,
    ECHO,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    Command,
    Data,
    Event,
    Negotiation,
    Options,
    Subnegotiation,
    TelnetError,
    TelnetParser,
    escape,
    subnegotiation,
)
from bridge.rfc2217 import comport
from bridge.rfc2217.session import OPTIONS


def parse(chunks: list[bytes]) -> list[Event]:
    parser = TelnetParser()
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    merged: list[Event] = []  # data split across reads comes as several Data events
    for event in events:
        if isinstance(event, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
def test_data_round_trips_through_escape_in_any_split(data: bytes, cuts: list[int]) -> None:
    wire = escape(data)
    assert parse(splits(wire, cuts)) == ([Data(data)] if data else [])


@given(st.binary(max_size=40), st.lists(st.integers(min_value=0), max_size=6))
def test_a_mixed_stream_parses_the_same_in_any_split(payload: bytes, cuts: list[int]) -> None:
    wire = (
        b"ab\xff\xffc"
        + bytes((IAC, WILL, COM_PORT, IAC, BRK))
        + subnegotiation(COM_PORT, payload)
        + b"z"
    )
    expected = [
        Data(b"ab\xffc"),
        Negotiation(WILL, COM_PORT),
        Command(BRK),
        Subnegotiation(COM_PORT, payload),
        Data(b"z"),
    ]
    assert parse(splits(wire, cuts)) == expected


@pytest.mark.parametrize(
    "wire",
    [
        bytes((IAC, SE)),  # SE outside a subnegotiation
        bytes((IAC, SB, COM_PORT, 1, IAC, WILL)),  # a command inside one
        bytes((IAC, SB, COM_PORT)) + b"x" * 300,  # too long
    ],
)
def test_malformed_framing_is_an_error(wire: bytes) -> None:
    with pytest.raises(TelnetError):
        TelnetParser().feed(wire)


def test_negotiation_answers_once_and_refuses_what_is_not_offered() -> None:
    options = Options(OPTIONS, OPTIONS)
    assert options.answer(DO, COM_PORT) == bytes((IAC, WILL, COM_PORT))
    assert options.answer(DO, COM_PORT) == b""  # already on: no answer, so no loop
    assert options.answer(WILL, COM_PORT) == bytes((IAC, DO, COM_PORT))
    assert options.answer(DO, ECHO) == bytes((IAC, WONT, ECHO))  # the target echoes, not us
    assert options.answer(WILL, 99) == bytes((IAC, DONT, 99))
    assert options.answer(DONT, COM_PORT) == bytes((IAC, WONT, COM_PORT))
    assert options.answer(DONT, COM_PORT) == b""
    assert options.answer(WONT, ECHO) == b""


def test_com_port_requests_and_answers() -> None:
    assert comport.parse_request(bytes((1, 0, 1, 0xC2, 0))) == comport.Request(1, 115200)
    assert comport.parse_request(bytes((5, 8))) == comport.Request(5, 8)
    assert comport.parse_request(bytes((7,))) == comport.Request(7, None)  # a modem-state poll
    assert comport.parse_request(b"\x00hello") == comport.Request(0, None, b"hello")
    for bad in (b"", bytes((1, 0, 0)), bytes((2, 8, 8))):
        with pytest.raises(comport.ComPortError):
            comport.parse_request(bad)
    # the answer's code is the request's + 100; a value with 0xFF in it is doubled
    assert comport.answer(1, 9600) == bytes((IAC, SB, COM_PORT, 101, 0, 0, 0x25, 0x80, IAC, SE))
    assert comport.answer(1, 0xFF) == bytes((IAC, SB, COM_PORT, 101, 0, 0, 0, IAC, IAC, IAC, SE))
