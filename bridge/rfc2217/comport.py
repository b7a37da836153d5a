"""The COM-PORT option (RFC 2217): what its subnegotiations say, and how answers are written.

Owns the numbers of RFC 2217 and their meaning: request codes (client -> server, 0-12) and their
answers (code + 100), the parity/stop-size/control values, the modem-state bits, and the
conversion between them and the port's line settings (bridge.hw.interfaces.LineSettings). No I/O
and no policy: the session decides what to apply and answers with what is in force.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.common.telnet import COM_PORT, subnegotiation

(
    SIGNATURE, SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL,
    NOTIFY_LINESTATE, NOTIFY_MODEMSTATE, FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME,
    SET_LINESTATE_MASK, SET_MODEMSTATE_MASK, PURGE_DATA,
) = range(13)  # fmt: skip
SERVER = 100  # an answer's code is the request's plus this

# SET_CONTROL values
FLOW_QUERY, FLOW_NONE, FLOW_XONXOFF, FLOW_RTSCTS = 0, 1, 2, 3
BREAK_QUERY, BREAK_ON, BREAK_OFF = 4, 5, 6
DTR_QUERY, DTR_ON, DTR_OFF = 7, 8, 9
RTS_QUERY, RTS_ON, RTS_OFF = 10, 11, 12
INBOUND_QUERY, INBOUND_NONE, INBOUND_XONXOFF, INBOUND_RTSCTS = 13, 14, 15, 16
LAST_CONTROL = 19  # 17-19: DCD / DTR / DSR flow control, never offered

# PURGE_DATA values
PURGE_RECEIVE, PURGE_TRANSMIT, PURGE_BOTH = 1, 2, 3

# NOTIFY_MODEMSTATE bits
MODEM_CTS, MODEM_DSR, MODEM_RI, MODEM_CD = 0x10, 0x20, 0x40, 0x80

PARITY = {1: "N", 2: "O", 3: "E", 4: "M", 5: "S"}
PARITY_CODE = {letter: code for code, letter in PARITY.items()}
STOP_BITS = {1: 1, 2: 2}  # 3 (1.5 stop bits) is not offered: the answer says what is in force
FLOW_CODE = {"none": FLOW_NONE, "xonxoff": FLOW_XONXOFF, "rtscts": FLOW_RTSCTS}
FLOW = {code: name for name, code in FLOW_CODE.items()}
INBOUND_CODE = {"none": INBOUND_NONE, "xonxoff": INBOUND_XONXOFF, "rtscts": INBOUND_RTSCTS}


class ComPortError(ValueError):
    """A malformed COM-PORT subnegotiation; the session closes that client."""


@dataclass(frozen=True)
class Request:
    """One client request: its code and numeric value (None for a signature's text)."""

    code: int
    value: int | None
    text: bytes = b""


def parse_request(payload: bytes) -> Request:
    """The payload of `IAC SB 44 ... IAC SE` (option byte already removed) -> a Request."""
    if not payload:
        raise ComPortError("empty COM-PORT subnegotiation")
    code, rest = payload[0], payload[1:]
    if code == SIGNATURE:
        return Request(code, None, rest)
    if code == SET_BAUDRATE:
        if len(rest) != 4:
            raise ComPortError(f"SET-BAUDRATE needs 4 bytes, got {len(rest)}")
        return Request(code, struct.unpack("!I", rest)[0])
    if code == NOTIFY_MODEMSTATE and not rest:
        return Request(code, None)  # a poll: "send me the modem state now"
    if code in (FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME) and not rest:
        return Request(code, None)
    if code > PURGE_DATA:
        return Request(code, None, rest)  # unknown: the session ignores it
    if len(rest) != 1:
        raise ComPortError(f"COM-PORT request {code} needs 1 value byte, got {len(rest)}")
    return Request(code, rest[0])


def answer(code: int, value: int) -> bytes:
    """The server's answer to request `code` carrying `value` (4 bytes for the baud rate)."""
    body = struct.pack("!I", value) if code == SET_BAUDRATE else bytes((value,))
    return subnegotiation(COM_PORT, bytes((code + SERVER,)) + body)


def signature(text: str) -> bytes:
    return subnegotiation(COM_PORT, bytes((SIGNATURE + SERVER,)) + text.encode()[:200])


def modem_state(bits: int) -> bytes:
    return answer(NOTIFY_MODEMSTATE, bits)
