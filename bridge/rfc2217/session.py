"""One RFC 2217 client on one port: a telnet connection attached to the port's hub like any client.

The client is attached as soon as it connects, asking for the write lease: it gets it when free,
takes it over when the port says `rfc2217_takeover = true`, and is read-only otherwise. A
read-only client sees all output; its keystrokes and BREAKs are dropped, and the first drop (then
a total when it leaves) goes to the audit log. What it sends is handled strictly in order, one
event at a time, so a key typed after a BREAK reaches the target after that BREAK (SysRq).

Output: the hub's chunks, 0xFF doubled (one encoding per chunk, shared by every RFC 2217 client).
A slow client is caught up from history by its Subscriber like a websocket client; telnet has no
gap message, so a gap is only counted. FLOWCONTROL-SUSPEND holds output until RESUME.

The COM-PORT requests are answered by bridge.rfc2217.requests; this module owns the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

from bridge.common import telnet
from bridge.console.actions import audited
from bridge.console.fanout import Chunk
from bridge.console.port import Attachment, Port, PortError
from bridge.history.audit import Auditor
from bridge.hw.interfaces import UnsupportedAction
from bridge.rfc2217 import comport
from bridge.rfc2217.requests import ComPortState, handle_request

log = logging.getLogger(__name__)
USER = "rfc2217"
LOW_WATER = 256 * 1024
MAX_QUEUED = 64  # events waiting to be handled before we stop reading from the client
MODEM_POLL = 1.0  # seconds between looks at the modem inputs, for NOTIFY-MODEMSTATE on change
OPTIONS = frozenset({telnet.BINARY, telnet.SGA, telnet.COM_PORT})
"""The telnet options we perform and let the client perform; everything else (ECHO included: the
target echoes, not the bridge) is refused. We never start a negotiation ourselves."""


class Rfc2217Viewer:
    """The connection as an Outlet/Viewer of the hub."""

    def __init__(self, session: Rfc2217Session, transport: asyncio.Transport) -> None:
        self.session = session
        self.transport = transport
        self.resumed = asyncio.Event()  # FLOWCONTROL-SUSPEND clears it
        self.resumed.set()
        self.gaps = 0

    def send_chunk(self, chunk: Chunk) -> None:
        if not self.transport.is_closing():
            self.transport.write(chunk.encoded(telnet.escape))

    def send_history(self, offset: int, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(telnet.escape(data))

    def send_gap(self, start: int, end: int) -> None:
        self.gaps += 1  # telnet cannot say so; the bytes are simply missing

    def send_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "status":
            self.session.status_changed(str(message.get("event", "")))

    def backlog(self) -> int:
        if not self.resumed.is_set():
            return 1 << 62  # suspended: the fan-out switches us to catching up
        return self.transport.get_write_buffer_size()

    async def drained(self) -> None:
        while (
            not self.resumed.is_set()
            or self.transport.is_closing()
            or self.transport.get_write_buffer_size() > LOW_WATER
        ):
            if not self.resumed.is_set():
                await self.resumed.wait()
            else:
                await asyncio.sleep(0.01)


class Rfc2217Session(asyncio.Protocol):
    """The protocol object of one client connection."""

    def __init__(self, port: Port, audit: Auditor) -> None:
        self.port = port
        self.audit = audit
        self.transport: asyncio.Transport | None = None
        self.viewer: Rfc2217Viewer | None = None
        self.att: Attachment | None = None
        self.peer = "?"
        self.parser = telnet.TelnetParser()
        self.options = telnet.Options(OPTIONS, OPTIONS)
        self.state = ComPortState()
        self.dropped = 0
        self._queue: asyncio.Queue[telnet.Event | None] = asyncio.Queue()
        self._paused = False
        self._worker: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._acting = False  # the worker is running an action (finish it even if the client left)
        self._modem_sent: int | None = None
        self.closed = asyncio.Event()
        self.on_close: Callable[[], None] | None = None  # the server forgets this session

    # ---- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; no isinstance: uvloop's do not subclass asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host, number = peer[0], peer[1]
            self.peer = f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
        self.viewer = Rfc2217Viewer(self, transport)
        cfg = self.port.cfg
        try:
            self.att = self.port.attach(
                self.viewer,
                USER,
                self.peer,
                "rw",
                cfg.rfc2217_takeover,
                self.port.offset,
                privileged=True,  # a writer's door: it may use the slots kept free of viewers
            )
        except PortError as exc:
            log.warning("rfc2217 %s: %s refused: %s", self.port.name, self.peer, exc)
            transport.close()
            self._closed()
            return
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._work(), name=f"rfc2217-{self.port.name}")
        self._poller = loop.create_task(self._poll_modem())

    def data_received(self, data: bytes) -> None:
        if self._worker is None:
            return
        try:
            events = self.parser.feed(data)
        except telnet.TelnetError as exc:
            self.fail(str(exc))
            return
        for event in events:
            self._queue.put_nowait(event)
        if self._queue.qsize() > MAX_QUEUED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._worker is None:
            self._closed()
            return
        while not self._queue.empty():  # what was not handled yet is dropped
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if not self._acting:
            self._worker.cancel()  # a half-written paste stops; an action runs to its end

    def fail(self, reason: str) -> None:
        """A protocol error: this client is closed; the port and other clients go on."""
        log.warning("rfc2217 %s: closing %s: %s", self.port.name, self.peer, reason)
        if self.transport is not None:
            self.transport.close()

    def suspend(self, on: bool) -> None:
        """FLOWCONTROL-SUSPEND (on) / RESUME (off): hold or release this client's output."""
        if self.viewer is not None:
            (self.viewer.resumed.clear if on else self.viewer.resumed.set)()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # ---- the worker: every event in order ------------------------------------------------------

    async def _work(self) -> None:
        try:
            while (event := await self._queue.get()) is not None:
                await self._handle(event)
                if self._paused and self._queue.qsize() <= MAX_QUEUED // 2:
                    self._paused = False
                    if self.transport is not None and not self.transport.is_closing():
                        self.transport.resume_reading()
        except (telnet.TelnetError, comport.ComPortError) as exc:
            self.fail(str(exc))
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here closes this client, never the port or the daemon
            log.exception(
                "rfc2217 %s: closing %s after an internal error", self.port.name, self.peer
            )
        finally:
            await self._leave()

    async def _leave(self) -> None:
        att, self.att = self.att, None
        if att is not None:
            if self.dropped:
                self._audit("write-dropped", bytes=self.dropped, total=True)
            await self.port.detach(att)
        if self.transport is not None:
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            if self.on_close is not None:
                self.on_close()

    async def _handle(self, event: telnet.Event) -> None:
        if isinstance(event, telnet.Data):
            await self.keystrokes(event.data)
        elif isinstance(event, telnet.Command):
            if event.code == telnet.BRK:
                await self.brk("IAC BRK")
        elif isinstance(event, telnet.Negotiation):
            was_on = self.com_port_on
            self.send(self.options.answer(event.verb, event.option))
            if self.com_port_on and not was_on:
                self.notify_modem(force=True)  # pyserial reads CTS/DSR/RI/CD from this
        elif event.option == telnet.COM_PORT:
            await handle_request(self, comport.parse_request(event.payload))

    @property
    def com_port_on(self) -> bool:
        return bool(
            self.options.local.get(telnet.COM_PORT) or self.options.remote.get(telnet.COM_PORT)
        )

    async def keystrokes(self, data: bytes) -> None:
        att = self.att
        if att is None:
            return
        if self.port.writer is not att:
            self.drop(len(data), "read-only")
            return
        try:
            await self.port.write(att, data)
        except PortError as exc:  # offline, or the lease was taken meanwhile
            self.drop(len(data), str(exc))

    def drop(self, count: int, reason: str) -> None:
        if not self.dropped:
            self._audit("write-dropped", bytes=count, reason=reason)
        self.dropped += count

    async def brk(self, via: str) -> bool:
        """A BREAK from the client: the port's BREAK action, for the lease holder only."""
        att = self.att
        if att is None:
            return False
        if self.port.writer is not att:
            self._audit("break", via=via, result="refused: read-only")
            return False
        self._acting = True
        try:  # audited whatever ends it (a device lost, the client gone), as every door does
            await audited(self._audit, "break", self.port.send_break(USER), via=via)
        except (PortError, UnsupportedAction):
            return False
        finally:
            self._acting = False
        return True

    def _audit(self, event: str, **fields: Any) -> None:
        self.audit.record(event, user=USER, port=self.port.name, peer=self.peer, **fields)

    # ---- modem state and hub status --------------------------------------------------------------

    def modem_bits(self) -> int:
        state = self.port.line.modem_state()
        if state is None:  # no readable modem inputs: CD/DSR/CTS say the port is online
            on = comport.MODEM_CD | comport.MODEM_DSR | comport.MODEM_CTS
            return on if self.port.online else 0
        return (
            (comport.MODEM_CTS if state.cts else 0)
            | (comport.MODEM_DSR if state.dsr else 0)
            | (comport.MODEM_RI if state.ri else 0)
            | (comport.MODEM_CD if state.cd else 0)
        )

    def notify_modem(self, force: bool = False) -> None:
        if not self.com_port_on:
            return
        bits = self.modem_bits()
        if force or bits != self._modem_sent:
            self._modem_sent = bits
            self.send(comport.modem_state(bits))

    def status_changed(self, event: str) -> None:
        if event == "closed":  # the port was removed, or the bridge stops
            if self.transport is not None:
                self.transport.close()
        elif event in ("online", "offline"):
            self.notify_modem()

    async def _poll_modem(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(MODEM_POLL)
                self.notify_modem()
