"""Telnet framing (RFC 854/855) for both ends: the RFC 2217 door (a server) and the telnet
console transport bridge.hw.telnet (a client of ser2net, terminal servers, QEMU).

Owns the telnet layer only: data bytes with `IAC IAC` undoubled, commands such as `IAC BRK` (what
microcom and `labgrid-client console` send for a BREAK), option negotiation
(`IAC WILL|WONT|DO|DONT opt`, answered by `Options` under a policy its user gives) and
subnegotiations (`IAC SB opt ... IAC SE`). What the COM-PORT option's subnegotiations mean is
bridge.rfc2217.comport's job; what to do with the events, each user's.

The parser keeps its state between `feed()` calls, so a sequence split across TCP segments is
parsed the same as one in a single read. Data is passed through 8-bit clean: no CR/NUL
translation, since pyserial and labgrid send raw bytes. Broken framing is an error for a strict
parser (the door closes that client) and skipped by a lenient one (the console transport reads on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SE, NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, SB = range(240, 251)
WILL, WONT, DO, DONT, IAC = range(251, 256)
BINARY, ECHO, SGA, COM_PORT = 0, 1, 3, 44
MAX_SUBNEGOTIATION = 256  # the longest COM-PORT request is a signature text; ours are < 10 bytes


class TelnetError(ValueError):
    """The peer broke the telnet framing (raised by a strict parser)."""


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
    """Bytes from the network -> events, across reads.

    `strict`: broken framing raises TelnetError; otherwise it is skipped (a stray `IAC SE` is
    ignored, a command inside a subnegotiation is dropped, a payload is cut at
    MAX_SUBNEGOTIATION bytes)."""

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
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
                    self._malformed("IAC SE outside a subnegotiation")
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
                    self._malformed(f"IAC {byte} inside a subnegotiation (expected IAC SE)")
                    self._state = _SB
        flush()
        return events

    def _add_payload(self, byte: int) -> None:
        if len(self._payload) >= MAX_SUBNEGOTIATION:
            self._malformed(f"subnegotiation longer than {MAX_SUBNEGOTIATION} bytes")
        else:
            self._payload.append(byte)

    def _malformed(self, reason: str) -> None:
        if self.strict:
            raise TelnetError(reason)


def escape(data: bytes) -> bytes:
    """Data for the peer: every 0xFF doubled."""
    return data.replace(b"\xff", b"\xff\xff")


def negotiation(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def subnegotiation(option: int, payload: bytes) -> bytes:
    return bytes((IAC, SB, option)) + escape(payload) + bytes((IAC, SE))


class Options:
    """Which telnet options are on, each side, and the answers negotiation needs.

    `we_do`: the options we perform when asked (DO is answered WILL); `they_may`: the options we
    let the peer perform (WILL is answered DO); everything else is refused. A request for a state
    already in force gets no answer, and neither does the answer to one of our `offer()`s, so two
    peers cannot loop (the rule of RFC 1143, without its queue).
    """

    def __init__(self, we_do: frozenset[int], they_may: frozenset[int]) -> None:
        self.we_do, self.they_may = we_do, they_may
        self.local: dict[int, bool] = {}  # options we perform (WILL) and their state
        self.remote: dict[int, bool] = {}  # options the peer performs
        self._asked_local: set[int] = set()
        self._asked_remote: set[int] = set()

    def offer(self, options: Iterable[int]) -> bytes:
        """Our opening offers: WILL and DO each of `options` (a plain TCP peer just sees bytes)."""
        out = bytearray()
        for option in options:
            self._asked_local.add(option)
            self._asked_remote.add(option)
            out += negotiation(WILL, option) + negotiation(DO, option)
        return bytes(out)

    def answer(self, verb: int, option: int) -> bytes:
        """The reply to `IAC verb option`; b"" when none is due."""
        ours = verb in (DO, DONT)  # about an option we perform
        table = self.local if ours else self.remote
        asked = self._asked_local if ours else self._asked_remote
        allowed = self.we_do if ours else self.they_may
        yes, no = (WILL, WONT) if ours else (DO, DONT)
        was_asked = option in asked
        asked.discard(option)
        reply = b""
        if verb in (DO, WILL):
            if option in allowed:
                if not table.get(option) and not was_asked:
                    reply = negotiation(yes, option)
                table[option] = True
            elif not was_asked:
                reply = negotiation(no, option)
        else:
            if table.get(option) and not was_asked:
                reply = negotiation(no, option)
            table[option] = False
        return reply
