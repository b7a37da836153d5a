"""Telnet framing for the RFC 2217 door: the byte stream a client sends, split into events.

Owns the telnet layer only (RFC 854/855): data bytes with `IAC IAC` undoubled, commands such as
`IAC BRK` (what microcom and `labgrid-client console` send for a BREAK), option negotiation
(`IAC WILL|WONT|DO|DONT opt`) and subnegotiations (`IAC SB opt ... IAC SE`). What the COM-PORT
option's subnegotiations mean is bridge.rfc2217.comport's job; what to do with them, the session's.

The parser keeps its state between `feed()` calls, so a sequence split across TCP segments is
parsed the same as one in a single read. Data is passed through 8-bit clean: no CR/NUL
translation, since pyserial and labgrid send raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

SE, NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, SB = range(240, 251)
WILL, WONT, DO, DONT, IAC = range(251, 256)
BINARY, ECHO, SGA, COM_PORT = 0, 1, 3, 44
MAX_SUBNEGOTIATION = 256  # the longest COM-PORT request is a signature text; ours are < 10 bytes


class TelnetError(ValueError):
    """The client broke the telnet framing; the session closes that client."""


@dataclass(frozen=True)
class Data:
    """Bytes for the target, IAC doubling removed."""

    data: bytes


@dataclass(frozen=True)
class Command:
    """A two-byte telnet command: `IAC BRK`, `IAC NOP`, `IAC AYT` ..."""

    code: int


@dataclass(frozen=True)
class Negotiation:
    """`IAC WILL|WONT|DO|DONT option`."""

    verb: int
    option: int


@dataclass(frozen=True)
class Subnegotiation:
    """`IAC SB option payload IAC SE`, IAC doubling in the payload removed."""

    option: int
    payload: bytes


Event = Data | Command | Negotiation | Subnegotiation

_DATA, _IAC, _VERB, _SB_OPTION, _SB, _SB_IAC = range(6)


class TelnetParser:
    """Bytes from the network -> events, across reads."""

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0
        self._option = 0
        self._payload = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _DATA and IAC not in data:
            return [Data(data)] if data else []  # fast path: keystrokes, pasted text
        events: list[Event] = []
        plain = bytearray()

        def flush() -> None:
            if plain:
                events.append(Data(bytes(plain)))
                plain.clear()

        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                end = data.find(IAC, i)
                if end < 0:
                    plain += data[i:]
                    break
                plain += data[i:end]
                self._state = _IAC
                i = end + 1
                continue
            byte = data[i]
            i += 1
            if state == _IAC:
                self._state = _DATA
                if byte == IAC:
                    plain.append(IAC)
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb, self._state = byte, _VERB
                elif byte == SB:
                    self._state = _SB_OPTION
                elif byte == SE:
                    raise TelnetError("IAC SE outside a subnegotiation")
                else:
                    flush()
                    events.append(Command(byte))
            elif state == _VERB:
                flush()
                events.append(Negotiation(self._verb, byte))
                self._state = _DATA
            elif state == _SB_OPTION:
                self._option, self._state = byte, _SB
                self._payload.clear()
            elif state == _SB:
                if byte == IAC:
                    self._state = _SB_IAC
                else:
                    self._add_payload(byte)
            else:  # _SB_IAC
                if byte == IAC:
                    self._add_payload(IAC)
                    self._state = _SB
                elif byte == SE:
                    flush()
                    events.append(Subnegotiation(self._option, bytes(self._payload)))
                    self._state = _DATA
                else:
                    raise TelnetError(f"IAC {byte} inside a subnegotiation (expected IAC SE)")
        flush()
        return events

    def _add_payload(self, byte: int) -> None:
        if len(self._payload) >= MAX_SUBNEGOTIATION:
            raise TelnetError(f"subnegotiation longer than {MAX_SUBNEGOTIATION} bytes")
        self._payload.append(byte)


def escape(data: bytes) -> bytes:
    """Data for the client: every 0xFF doubled."""
    return data.replace(b"\xff", b"\xff\xff")


def negotiation(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def subnegotiation(option: int, payload: bytes) -> bytes:
    return bytes((IAC, SB, option)) + escape(payload) + bytes((IAC, SE))


class Options:
    """Which telnet options are on, each side, and the answers negotiation needs.

    We offer and accept BINARY, SGA and COM-PORT-OPTION; everything else (ECHO included: the
    target echoes, not the bridge) is refused. A request for a state already in force gets no
    answer, so two peers cannot loop (the rule of RFC 1143, without its queue: we never start a
    negotiation ourselves).
    """

    SUPPORTED = frozenset({BINARY, SGA, COM_PORT})

    def __init__(self) -> None:
        self.local: set[int] = set()  # options we perform (they said DO, we said WILL)
        self.remote: set[int] = set()  # options they perform (they said WILL, we said DO)

    def answer(self, verb: int, option: int) -> bytes:
        """The reply to `IAC verb option`; b"" when none is due."""
        if verb == DO:
            if option not in self.SUPPORTED:
                return negotiation(WONT, option)
            if option in self.local:
                return b""
            self.local.add(option)
            return negotiation(WILL, option)
        if verb == WILL:
            if option not in self.SUPPORTED:
                return negotiation(DONT, option)
            if option in self.remote:
                return b""
            self.remote.add(option)
            return negotiation(DO, option)
        if verb == DONT:
            if option not in self.local:
                return b""
            self.local.discard(option)
            return negotiation(WONT, option)
        if option not in self.remote:  # WONT
            return b""
        self.remote.discard(option)
        return negotiation(DONT, option)
