"""The UART transport: a real serial device (or pyserial URL) read and written from the event loop.

Reads: the device fd is registered with `loop.add_reader`; each wake-up does one non-blocking
`os.read` of up to 64 KiB, so there is no thread per port and no busy loop. A read that returns no
data, or fails, means the device is gone: the sink's `connection_lost` is called. Small reads (a
keystroke's echo, a line) go to the hub at once. A tty hands over at most ~4 KiB per read, so
while reads come back large (bulk output) the transport gathers a few more, one event-loop turn
apart, up to 64 KiB, before handing them on (one frame per 64 KiB instead of per 4 KiB). While
output trickles in as small packets and nobody types, it is read on a tick instead of at every
packet (bridge.hw.pacing: why, and the overrun bound); a write makes reads immediate again.

Writes: paced at the line rate (baud / bits per character) by a token bucket that lets a short
burst (a keystroke, a line) through at once, and wait for `add_writer` readiness when the kernel's
tty buffer is full, so a 1 MiB paste reaches the target complete and in order without blocking the
loop. BREAK is the break condition held for a duration we time ourselves (pyserial's
`send_break(duration)` ignores the duration on Linux); a device that goes away meanwhile fails
it (DeviceUnavailable), rather than it being reported as sent.

Which devices cannot carry a BREAK (`break_unsupported`): a pseudo-terminal (a pty has no line to
hold in the break condition: the kernel accepts the request and nothing happens, so a SysRq key
would reach the target as a plain character), pyserial's `socket://` and `loop://` (pyserial
ignores it), and an adapter whose driver refuses the request (newer kernels report an error where
older ones silently did nothing; see firmware-notes/sysrq-nmi.md).

Line errors: `line_errors()` reads the driver's interrupt counters (TIOCGICOUNT: overruns, framing
and parity errors, BREAKs received, buffer overruns) where the driver keeps them (8250, most USB
adapters' drivers); a pty or a pyserial URL has none.

pyserial URLs (`rfc2217://`, `socket://`, `loop://`) have no usable fd for the event loop; their
reads run in the default executor with a short timeout instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
from typing import Any

import serial

from bridge.config import PortConfig
from bridge.hw.interfaces import (
    DeviceUnavailable,
    LineSettings,
    ModemState,
    TransportSink,
    UnsupportedAction,
)
from bridge.hw.pacing import SMALL_READ, LinePacer, ReadTicks

READ_SIZE = 64 * 1024
BULK_READ = SMALL_READ  # a read at least this large means output is streaming: gather more
_PARITY = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
}
_BYTESIZE = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}
_STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}
TIOCGICOUNT = 0x545D
# struct serial_icounter_struct: cts dsr rng dcd rx tx frame overrun parity brk buf_overrun
# reserved[9], all int
_ICOUNT = struct.Struct("20i")
_ICOUNT_FIELDS = {"framing": 6, "overrun": 7, "parity": 8, "break": 9, "buffer_overrun": 10}


def decode_icount(raw: bytes) -> dict[str, int]:
    """The error counters of a `serial_icounter_struct` as TIOCGICOUNT fills it."""
    values = _ICOUNT.unpack(raw[: _ICOUNT.size])
    return {name: values[i] for name, i in _ICOUNT_FIELDS.items()}


def _pyserial_settings(settings: LineSettings) -> dict[str, Any]:
    framing = settings.framing
    return dict(
        baudrate=settings.baud,
        bytesize=_BYTESIZE[framing.data_bits],
        parity=_PARITY[framing.parity],
        stopbits=_STOPBITS[framing.stop_bits],
        rtscts=settings.flow == "rtscts",
        xonxoff=settings.flow == "xonxoff",
    )


PTY_MAJORS = range(136, 144)  # Unix98 pty slaves (/dev/pts/N)
NO_BREAK_URLS = ("socket://", "loop://")  # pyserial URLs that ignore the break condition
NO_BREAK_ERRNOS = {errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


def is_pty(fd: int) -> bool:
    """True when `fd` is a pseudo-terminal (it cannot carry a BREAK)."""
    return os.major(os.fstat(fd).st_rdev) in PTY_MAJORS


def break_problem(device: str, fd: int) -> str | None:
    """Why a device opened as `fd` (-1: a pyserial URL) cannot carry a BREAK, or None."""
    if fd >= 0 and is_pty(fd):
        return (
            f"{device} is a pseudo-terminal, which cannot carry a BREAK (so no SysRq either): "
            "use a serial adapter or a telnet console"
        )
    if device.startswith(NO_BREAK_URLS):
        return f"{device.split('://')[0]}:// connections carry no BREAK"
    return None


class UartTransport:
    """A serial device opened exclusively with the port's baud, framing and flow control."""

    def __init__(self, cfg: PortConfig) -> None:
        self.cfg = cfg
        self.description = f"{cfg.device} {cfg.baud} {cfg.framing}"
        self._serial: Any = None
        self._fd = -1
        self._sink: TransportSink | None = None
        self._pacer = LinePacer(cfg.baud / cfg.framing.bits_per_char)
        self._ticks = ReadTicks(self._pacer.rate)  # immediate reads, or on a tick
        self._write_lock = asyncio.Lock()
        self._writable: asyncio.Future[None] | None = None
        self._url_reader: asyncio.Task[None] | None = None
        self._closed = False
        self._gathered: bytearray | None = None
        self._no_break: str | None = None

    def _make_serial(self) -> Any:
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            **_pyserial_settings(LineSettings.of(cfg)),
            timeout=0,
            write_timeout=0,
        )
        if "://" in cfg.device:
            kwargs["timeout"] = 0.1
            return serial.serial_for_url(cfg.device, do_not_open=True, **kwargs)
        ser = serial.Serial(None, exclusive=True, **kwargs)
        ser.port = cfg.device
        return ser

    async def open(self, sink: TransportSink) -> None:
        try:
            ser = self._make_serial()
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"{self.cfg.device}: {exc}") from exc
        self._serial, self._sink = ser, sink
        loop = asyncio.get_running_loop()
        fd = getattr(ser, "fd", None)
        if isinstance(fd, int) and fd >= 0:
            self._fd = fd
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_readable)
        else:
            self._url_reader = asyncio.create_task(self._read_url())
        self._no_break = break_problem(self.cfg.device, self._fd)
        if self.cfg.low_latency and self._fd >= 0 and not is_pty(self._fd):
            with contextlib.suppress(ValueError, OSError):  # a driver without the flag
                ser.set_low_latency_mode(True)  # ASYNC_LOW_LATENCY (hw/uart.md)
                self.description += " low-latency"

    def break_unsupported(self) -> str | None:
        return self._no_break

    def _read(self, ready: bool) -> bytes | None:
        """One non-blocking read: data, or None (nothing now, or the device is gone). A tty with
        VMIN=0 returns 0 bytes when it is merely empty, so an empty read means "gone" only when
        the fd was `ready` and poll() confirms a hang-up (a USB unplug) or an error."""
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._lost(exc)
            return None
        if not data:
            if ready and self._hung_up():
                self._lost(None)
            return None
        return data

    def _hung_up(self) -> bool:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        events = poller.poll(0)
        return bool(events) and bool(events[0][1] & (select.POLLHUP | select.POLLERR))

    def _on_readable(self) -> None:
        data = self._read(ready=True)
        if data is None:
            return
        if self._gathered is not None:
            self._gathered += data
            if len(self._gathered) >= READ_SIZE:
                self._hand_on()
        elif len(data) < BULK_READ:
            assert self._sink is not None
            self._sink.data_received(data)
            self._ticks.started(len(data), asyncio.get_running_loop(), self._fd, self._on_tick)
        else:
            self._gathered = bytearray(data)
            asyncio.get_running_loop().call_soon(self._gather)

    def _on_tick(self) -> None:
        """A read on the tick: everything that arrived since (less than half the tty buffer)."""
        data = self._read(ready=False) if self._fd >= 0 else None
        if data is not None and self._sink is not None:
            self._sink.data_received(data)
        if self._fd >= 0:  # not closed, nor lost during the read
            loop, n = asyncio.get_running_loop(), len(data or b"")
            self._ticks.ticked(n, loop, self._fd, self._on_tick, self._on_readable)

    def _gather(self) -> None:
        """One loop turn after a large read: read again; keep gathering while reads are large."""
        if self._gathered is None or self._fd < 0:
            return
        data = self._read(ready=False)
        if data is not None and self._gathered is not None:
            self._gathered += data
            if len(data) >= BULK_READ and len(self._gathered) < READ_SIZE:
                asyncio.get_running_loop().call_soon(self._gather)
                return
        self._hand_on()

    def _hand_on(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered and self._sink is not None:
            self._sink.data_received(bytes(gathered))

    async def _read_url(self) -> None:
        loop = asyncio.get_running_loop()
        ser = self._serial
        try:
            while not self._closed:
                data = await loop.run_in_executor(None, lambda: ser.read(READ_SIZE))
                if data and self._sink is not None:
                    self._sink.data_received(data)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        sink = self._sink
        gathered, self._gathered = self._gathered, None
        if gathered and sink is not None:
            sink.data_received(bytes(gathered))
        self._release()
        if sink is not None:
            sink.connection_lost(exc)

    def _on_writable(self) -> None:
        asyncio.get_running_loop().remove_writer(self._fd)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    async def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        self._writable = loop.create_future()
        loop.add_writer(self._fd, self._on_writable)
        try:
            await self._writable
        finally:
            self._writable = None

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._ticks.wrote(loop, self._fd, self._on_readable)
        async with self._write_lock:
            view = memoryview(data)
            while view:
                if self._serial is None:
                    raise DeviceUnavailable(f"{self.cfg.device}: not open")
                allowed = self._pacer.allowance(loop.time())
                if allowed <= 0:
                    await asyncio.sleep(self._pacer.wait_for(len(view)))
                    continue
                piece = view[:allowed]
                if self._fd < 0:
                    n = await loop.run_in_executor(None, self._serial.write, bytes(piece))
                else:
                    try:
                        n = os.write(self._fd, piece)
                    except (BlockingIOError, InterruptedError):
                        await self._wait_writable()
                        continue
                    except OSError as exc:
                        raise DeviceUnavailable(f"{self.cfg.device}: {exc}") from exc
                self._pacer.spend(n)
                view = view[n:]

    async def drain(self) -> None:
        """Wait (bounded) until the kernel's output queue is empty, so a BREAK comes after it."""
        deadline = asyncio.get_running_loop().time() + 2.0
        while self._serial is not None and asyncio.get_running_loop().time() < deadline:
            try:
                if not self._serial.out_waiting:
                    return
            except (OSError, serial.SerialException, AttributeError, NotImplementedError):
                return
            await asyncio.sleep(0.005)

    async def send_break(self, duration: float) -> None:
        """Hold the break condition for `duration`. DeviceUnavailable if the device is not
        open, fails, or goes away meanwhile (a USB adapter unplugged during the BREAK)."""
        ser = self._serial
        if ser is None:
            raise DeviceUnavailable(f"{self.cfg.device}: not open")
        async with self._write_lock:
            try:
                try:
                    ser.break_condition = True
                except OSError as exc:
                    if exc.errno not in NO_BREAK_ERRNOS:
                        raise DeviceUnavailable(f"{self.cfg.device}: {exc}") from exc
                    self._no_break = f"{self.cfg.device}: its driver cannot send a BREAK ({exc})"
                    raise UnsupportedAction(self._no_break) from exc
                await asyncio.sleep(duration)
                if self._serial is not ser:
                    raise DeviceUnavailable(f"{self.cfg.device}: gone during the BREAK")
            finally:
                with contextlib.suppress(OSError, serial.SerialException):
                    if self._serial is ser:
                        ser.break_condition = False

    async def configure(
        self, settings: LineSettings | None = None, dtr: bool | None = None, rts: bool | None = None
    ) -> None:
        """New speed/framing/flow (bytes already written leave first, at the old speed) and the
        DTR/RTS outputs. A setting the device refuses leaves the old ones in force."""
        if self._serial is None:
            raise DeviceUnavailable(f"{self.cfg.device}: not open")
        async with self._write_lock:
            if settings is not None:
                await self.drain()
                ser = self._serial
                if ser is None:
                    raise DeviceUnavailable(f"{self.cfg.device}: not open")
                old = ser.get_settings()
                try:
                    ser.apply_settings(_pyserial_settings(settings))
                except (ValueError, OSError, termios.error, serial.SerialException) as exc:
                    # (termios.error is no OSError; a pty refuses parity and 5-7 data bits)
                    with contextlib.suppress(
                        ValueError, OSError, termios.error, serial.SerialException
                    ):
                        ser.apply_settings(old)
                    raise ValueError(f"{self.cfg.device}: {settings} refused: {exc}") from exc
                self._pacer = LinePacer(settings.baud / settings.framing.bits_per_char)
                self._ticks.tick = ReadTicks(self._pacer.rate).tick
                self.description = f"{self.cfg.device} {settings}"
            try:
                if dtr is not None and self._serial is not None:
                    self._serial.dtr = dtr
                if rts is not None and self._serial is not None:
                    self._serial.rts = rts
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOTTY):  # a pty: no modem lines
                    raise UnsupportedAction(f"{self.cfg.device} has no DTR/RTS lines") from exc
                raise ValueError(f"{self.cfg.device}: control lines refused: {exc}") from exc
            except serial.SerialException as exc:
                raise ValueError(f"{self.cfg.device}: control lines refused: {exc}") from exc

    def modem_state(self) -> ModemState | None:
        ser = self._serial
        if ser is None:
            return None
        try:
            return ModemState(cts=ser.cts, dsr=ser.dsr, ri=ser.ri, cd=ser.cd)
        except (OSError, serial.SerialException, NotImplementedError, AttributeError):
            return None  # a pty, or a URL transport without modem lines

    def line_errors(self) -> dict[str, int] | None:
        """The driver's line error counters (TIOCGICOUNT), or None where it keeps none."""
        if self._fd < 0:
            return None
        try:
            raw = fcntl.ioctl(self._fd, TIOCGICOUNT, bytes(_ICOUNT.size))
        except OSError:  # ENOTTY/EINVAL: a pty, or a driver without the counters
            return None
        return decode_icount(raw)

    def _release(self) -> None:
        ser, self._serial, self._sink = self._serial, None, None
        self._ticks.cancel()
        if self._fd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            self._fd = -1
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(DeviceUnavailable(f"{self.cfg.device}: closed"))
        if ser is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                ser.close()

    async def close(self) -> None:
        self._closed = True
        task, self._url_reader = self._url_reader, None
        self._sink = None
        self._release()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
