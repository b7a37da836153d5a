"""What the bridge does with each COM-PORT request, and what it answers.

The rule for every setting: the answer carries the value in force after the request, never one
that was not applied. A value of 0 asks for the current one. Speed, framing and flow control go to
the hub (`Port.change_line`), which applies them to the UART for as long as this client stays and
only for the lease holder; a read-only client, a busy port or a transport without a serial line
(telnet, virtual) gets the value in force, which pyserial reports as "remote rejected value".

SET-CONTROL: BREAK-ON runs the port's BREAK action (its configured `break_duration`, one action at
a time, audited) and is answered once the BREAK is over; BREAK-OFF is then only acknowledged.
DTR/RTS go to the hub as an action; on a device without those lines (a pty, telnet, virtual) the
client's choice is kept and acknowledged, like pins that are not wired. PURGE-DATA is answered
with its value: output already read from the device belongs to the shared history and is not
discarded (pyserial drops what it holds itself). Line-state and modem-state masks are stored and
acknowledged; FLOWCONTROL-SUSPEND/RESUME hold and release this client's output.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol

from bridge.console.port import Attachment, Port, PortError
from bridge.hw.interfaces import LineSettings, UnsupportedAction
from bridge.rfc2217 import comport as cp

log = logging.getLogger(__name__)


@dataclass
class ComPortState:
    """What one client set that the device does not keep for it."""

    dtr: bool = True  # as pyserial opens a port
    rts: bool = True
    linestate_mask: int = 0
    modemstate_mask: int = 255
    client_signature: bytes = b""


class Client(Protocol):
    """What answering a request needs of the session (bridge.rfc2217.session)."""

    port: Port
    att: Attachment | None
    peer: str
    state: ComPortState

    def send(self, data: bytes) -> None: ...

    async def brk(self, via: str) -> bool: ...

    def notify_modem(self, force: bool = False) -> None: ...

    def suspend(self, on: bool) -> None: ...


def _wanted(current: LineSettings, code: int, value: int) -> LineSettings | None:
    """The settings a SET request asks for; None for a query or a value never offered."""
    framing = current.framing
    if value == 0:
        return None
    if code == cp.SET_BAUDRATE:
        return dataclasses.replace(current, baud=value)
    if code == cp.SET_DATASIZE and 5 <= value <= 8:
        framing = dataclasses.replace(framing, data_bits=value)
    elif code == cp.SET_PARITY and value in cp.PARITY:
        framing = dataclasses.replace(framing, parity=cp.PARITY[value])
    elif code == cp.SET_STOPSIZE and value in cp.STOP_BITS:
        framing = dataclasses.replace(framing, stop_bits=cp.STOP_BITS[value])
    else:
        return None
    return dataclasses.replace(current, framing=framing)


def _value_of(settings: LineSettings, code: int) -> int:
    if code == cp.SET_BAUDRATE:
        return settings.baud
    if code == cp.SET_DATASIZE:
        return settings.framing.data_bits
    if code == cp.SET_PARITY:
        return cp.PARITY_CODE[settings.framing.parity]
    return settings.framing.stop_bits


async def _change(session: Client, wanted: LineSettings) -> LineSettings:
    port, att = session.port, session.att
    if att is None:
        return port.line.settings
    try:
        return await port.line.change(att, wanted)
    except (PortError, UnsupportedAction, ValueError) as exc:
        log.info("rfc2217 %s: %s from %s not applied: %s", port.name, wanted, session.peer, exc)
        return port.line.settings


async def _lines(session: Client, dtr: bool | None = None, rts: bool | None = None) -> None:
    port, att, state = session.port, session.att, session.state
    if att is None:
        return
    try:
        await port.line.set_lines(att, dtr=dtr, rts=rts)
    except UnsupportedAction:
        pass  # no such line on this device: keep the client's choice, like an unwired pin
    except (PortError, ValueError) as exc:
        log.info("rfc2217 %s: DTR/RTS from %s not applied: %s", port.name, session.peer, exc)
        return
    if dtr is not None:
        state.dtr = dtr
    if rts is not None:
        state.rts = rts


async def _control(session: Client, value: int) -> int | None:
    """A SET-CONTROL request -> the value to answer (None: no answer)."""
    settings, state = session.port.line.settings, session.state
    if value in (cp.FLOW_NONE, cp.FLOW_XONXOFF, cp.FLOW_RTSCTS):
        settings = await _change(session, dataclasses.replace(settings, flow=cp.FLOW[value]))
    if value <= cp.FLOW_RTSCTS:
        return cp.FLOW_CODE[settings.flow]
    if value == cp.BREAK_ON:
        return cp.BREAK_ON if await session.brk("SET-CONTROL") else cp.BREAK_OFF
    if value in (cp.BREAK_QUERY, cp.BREAK_OFF):
        return cp.BREAK_OFF  # a BREAK is over by the time BREAK-ON is answered
    if value in (cp.DTR_ON, cp.DTR_OFF):
        await _lines(session, dtr=value == cp.DTR_ON)
    if cp.DTR_QUERY <= value <= cp.DTR_OFF:
        return cp.DTR_ON if state.dtr else cp.DTR_OFF
    if value in (cp.RTS_ON, cp.RTS_OFF):
        await _lines(session, rts=value == cp.RTS_ON)
    if cp.RTS_QUERY <= value <= cp.RTS_OFF:
        return cp.RTS_ON if state.rts else cp.RTS_OFF
    if cp.INBOUND_QUERY <= value <= cp.LAST_CONTROL:
        return cp.INBOUND_CODE[settings.flow]  # inbound flow control follows the port's `flow`
    return None


async def handle_request(session: Client, request: cp.Request) -> None:
    code, value, port = request.code, request.value, session.port
    if code == cp.SIGNATURE:
        if request.text:
            session.state.client_signature = request.text[:64]
        else:
            session.send(cp.signature(f"serial-bridge {port.name}"))
    elif code in (cp.SET_BAUDRATE, cp.SET_DATASIZE, cp.SET_PARITY, cp.SET_STOPSIZE):
        assert value is not None
        wanted = _wanted(port.line.settings, code, value)
        applied = port.line.settings if wanted is None else await _change(session, wanted)
        session.send(cp.answer(code, _value_of(applied, code)))
    elif code == cp.SET_CONTROL:
        assert value is not None
        answer = await _control(session, value)
        if answer is not None:
            session.send(cp.answer(code, answer))
    elif code == cp.NOTIFY_MODEMSTATE:
        session.notify_modem(force=True)  # a poll (pyserial's `poll_modem`)
    elif code in (cp.FLOWCONTROL_SUSPEND, cp.FLOWCONTROL_RESUME):
        session.suspend(code == cp.FLOWCONTROL_SUSPEND)
    elif code == cp.SET_LINESTATE_MASK and value is not None:
        session.state.linestate_mask = value
        session.send(cp.answer(code, value))
    elif code == cp.SET_MODEMSTATE_MASK and value is not None:
        session.state.modemstate_mask = value
        session.send(cp.answer(code, value))
    elif code == cp.PURGE_DATA and value in (cp.PURGE_RECEIVE, cp.PURGE_TRANSMIT, cp.PURGE_BOTH):
        session.send(cp.answer(code, value))
