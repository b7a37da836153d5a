"""`serial-bridge selftest`: bench checks of a serial adapter (TX-RX loopback) and GPIO lines.

Owns the hardware self-test. It talks to the device with pyserial and termios directly (it is a
bench tool, not part of the daemon) and to the lines through `bridge.hw.lines.GpioLines`. Stop the
service first: the daemon holds its UARTs and lines exclusively.

Checks, each printed as one `PASS` / `FAIL` / `SKIP` line; exit status 0 only if nothing failed:
- round trip: a random pattern written at 9600, 115200, 921600 and 3000000 baud must come back
  byte for byte. The last rate is optional: a driver that refuses it is a SKIP. A loopback proves
  that TX and RX agree, not that the rate is exact.
- BREAK: the line is held in the break condition for 250 ms; the receive side must report it.
  With IGNBRK and BRKINT off and PARMRK on (set for this check only), Linux delivers a received
  break as the three bytes FF 00 00, which no data byte can produce (a data FF arrives doubled
  as FF FF). Drivers that do not report received breaks fail this check although the bridge may
  still send breaks through them; a pseudo-terminal cannot carry a break at all (the bridge
  refuses BREAK and SysRq on one: `bridge.hw.uart.break_problem`).
- lines (`--lines`): each configured output line of the config's ports is driven active a few
  times, slowly, for a meter or an LED on the optocoupler output; power_sense is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config import ConfigError, LineConfig, LinesConfig, load_config
from bridge.hw.uart import is_pty
from bridge.service.cli import add_config_arg, config_path

BAUD_RATES = (9600, 115200, 921600)
OPTIONAL_BAUD_RATES = (3000000,)
BREAK_SECONDS = 0.25
_HEADER_PIN = {  # BCM GPIO -> physical pin of the Pi's 40-pin header
    0: 27, 1: 28, 2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23, 12: 32,
    13: 33, 14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40, 22: 15, 23: 16,
    24: 18, 25: 22, 26: 37, 27: 13,
}  # fmt: skip


@dataclass
class Report:
    """Collects check results and prints one line per check as it completes."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def result(self, status: str, check: str, detail: str) -> None:
        if status == "PASS":
            self.passed += 1
        elif status == "FAIL":
            self.failed += 1
        else:
            self.skipped += 1
        print(f"{status:4}  {check}: {detail}", flush=True)

    def summary(self) -> int:
        verdict = "FAIL" if self.failed or not self.passed else "PASS"
        print(
            f"result: {verdict} ({self.passed} passed, {self.failed} failed,"
            f" {self.skipped} skipped)"
        )
        return 0 if verdict == "PASS" else 1


def pattern_length(baud: int) -> int:
    """About a quarter of a second of data at `baud` (8N1), between 64 and 4096 bytes."""
    return max(64, min(4096, baud // 10 // 4))


def compare(sent: bytes, received: bytes) -> str | None:
    """None if equal, else what went wrong in words."""
    if sent == received:
        return None
    first = next((i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b), None)
    where = f"first difference at byte {first}" if first is not None else "no corrupted byte"
    return f"{len(received)} of {len(sent)} bytes came back, {where}"


def parse_marked(data: bytes) -> tuple[int, int, bytes]:
    """Split input read with PARMRK set into (breaks, error marks, data bytes).

    The line discipline escapes its marks: FF FF is a data FF, FF 00 00 a break, FF 00 c a
    character c received with a parity or framing error; every other byte is data.
    """
    breaks = errors = 0
    plain = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0xFF and data[i + 1 : i + 2] == b"\xff":
            plain.append(0xFF)
            i += 2
        elif data[i] == 0xFF and data[i + 1 : i + 2] == b"\x00" and i + 2 < len(data):
            if data[i + 2] == 0:
                breaks += 1
            else:
                errors += 1
            i += 3
        else:
            plain.append(data[i])
            i += 1
    return breaks, errors, bytes(plain)


def classify_break(data: bytes) -> tuple[str, str]:
    """What the receive side delivered during and after a break -> (status, detail)."""
    breaks, errors, plain = parse_marked(data)
    if breaks:
        return "PASS", f"break received ({breaks} break mark{'s' if breaks > 1 else ''})"
    if errors or b"\x00" in plain:
        return "FAIL", (
            f"{len(data)} bytes arrived (NULs or error marks) but no break mark: the driver "
            "reports the break as data or as a framing error, not as a break"
        )
    if plain:
        return "FAIL", f"{len(data)} bytes arrived but no break: {data[:16].hex(' ')}"
    return "FAIL", "nothing arrived: the receive side did not report the break"


@contextlib.contextmanager
def _break_reporting(fd: int) -> Iterator[None]:
    """Breaks delivered as FF 00 00 while inside; the previous termios settings restored after."""
    saved = termios.tcgetattr(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.ISTRIP)
    attrs[0] |= termios.PARMRK
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _read_for(ser: Any, count: int, seconds: float) -> bytes:
    """Up to `count` bytes, waiting at most `seconds` in all."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ser.timeout = left
        data += ser.read(count - len(data))
    return bytes(data)


def round_trip(ser: Any, baud: int, optional: bool, report: Report) -> None:
    check = f"round trip at {baud} baud"
    try:
        ser.baudrate = baud
    except (ValueError, OSError) as exc:
        status = "SKIP" if optional else "FAIL"
        report.result(status, check, f"the driver refuses this rate ({exc})")
        return
    time.sleep(0.05)  # let an adapter settle after a rate change before listening
    ser.reset_input_buffer()
    sent = secrets.token_bytes(pattern_length(baud))
    received = bytearray()
    # Write in chunks and collect what is back meanwhile, so neither side's buffer fills up.
    for start in range(0, len(sent), 256):
        ser.write(sent[start : start + 256])
        if waiting := ser.in_waiting:
            received += ser.read(waiting)
    seconds = 2.0 + 2 * len(sent) * 10 / baud
    received += _read_for(ser, len(sent) - len(received), seconds)
    problem = compare(sent, bytes(received))
    if problem is None:
        report.result("PASS", check, f"{len(sent)} random bytes came back unchanged")
    else:
        report.result("FAIL", check, problem + " (is the TX-RX jumper in place?)")


def break_check(ser: Any, report: Report) -> None:
    check = f"BREAK ({round(BREAK_SECONDS * 1000)} ms at 115200 baud)"
    ser.baudrate = 115200
    fd = ser.fileno()
    with _break_reporting(fd):
        ser.reset_input_buffer()
        ser.break_condition = True
        try:
            time.sleep(BREAK_SECONDS)
        finally:
            ser.break_condition = False
        data = _read_for(ser, 4096, 0.5)
    status, detail = classify_break(data)
    if status == "FAIL" and is_pty(fd):
        detail += " (this is a pseudo-terminal: a pty never carries a break)"
    report.result(status, check, detail)


def check_device(device: str, check_break: bool, report: Report) -> None:
    import serial

    print(f"device {device}: loopback test, TX must be wired to RX of the same adapter")
    try:
        ser = serial.Serial(device, 9600, timeout=1, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        report.result(
            "FAIL",
            "open",
            f"{exc} (is the service running? `systemctl stop serial-bridge` first;"
            " permission: be in group dialout)",
        )
        return
    with ser:
        report.result("PASS", "open", f"{device} opened exclusively")
        try:
            for baud in BAUD_RATES:
                round_trip(ser, baud, optional=False, report=report)
            for baud in OPTIONAL_BAUD_RATES:
                round_trip(ser, baud, optional=True, report=report)
            if check_break:
                break_check(ser, report)
            else:
                report.result("SKIP", "BREAK", "not checked (--no-break)")
        except (serial.SerialException, OSError) as exc:
            report.result("FAIL", "device", f"{exc} (unplugged during the test?)")


def _where(cfg: LineConfig) -> str:
    pin = _HEADER_PIN.get(cfg.gpio)
    level = "high" if cfg.active_high else "low"
    return f"GPIO{cfg.gpio}" + (f" (header pin {pin})" if pin else "") + f", active {level}"


async def _toggle(port: str, name: str, cfg: LineConfig, factory: str, args: Any) -> str:
    """Drive one output line active `args.repeat` times for `args.hold` seconds each."""
    from bridge.hw.lines import GpioLines

    held = dataclasses.replace(cfg, pulse=args.hold, long_pulse=args.hold)
    # A one-line GpioLines; power without a sense line always presses.
    only = {
        "nmi": LinesConfig(nmi=held),
        "reset": LinesConfig(reset=held),
        "power": LinesConfig(power=held),
    }[name]
    lines = GpioLines.create(port, only, factory)
    try:
        for i in range(args.repeat):
            if i:
                await asyncio.sleep(args.hold)
            if name == "power":
                await lines.power("force-off")
            elif name == "reset":
                await lines.reset()
            else:
                await lines.nmi()
    finally:
        await lines.close()
    return f"{_where(cfg)}: {args.repeat} x {args.hold:g} s active, inactive now"


@contextlib.contextmanager
def _lgpio_workdir() -> Iterator[None]:
    """lgpio (gpiozero's default pin factory on Pi OS) creates a FIFO in the working directory,
    or in $LG_WD, when it is first imported, and fails in a directory the user cannot write (for
    example `sudo -u serial-bridge` from someone's home). Run the line checks in a private
    temporary directory; the systemd unit does the same with /run/serial-bridge."""
    saved_cwd, saved_env = os.getcwd(), os.environ.get("LG_WD")
    with tempfile.TemporaryDirectory(prefix="serial-bridge-selftest-") as tmp:
        os.chdir(tmp)
        os.environ["LG_WD"] = tmp
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            if saved_env is None:
                os.environ.pop("LG_WD", None)
            else:
                os.environ["LG_WD"] = saved_env


def check_lines(args: argparse.Namespace, report: Report) -> None:
    path = config_path(args).absolute()  # before the working directory changes
    with _lgpio_workdir():
        _check_lines(args, path, report)


def _check_lines(args: argparse.Namespace, path: Path, report: Report) -> None:
    from bridge.hw.lines import LineSetupError

    try:
        config = load_config(path)
    except ConfigError as exc:
        report.result("FAIL", "config", str(exc))
        return
    ports = [p for p in config.ports.values() if args.port in (None, p.name)]
    if args.port and not ports:
        report.result("FAIL", "lines", f"no port {args.port!r} in {path}")
        return
    gpio_ports = [p for p in ports if any(getattr(p.lines, n) for n in _LINE_NAMES)]
    if not gpio_ports:
        report.result("SKIP", "lines", f"no GPIO lines configured in {path}")
        return
    print(
        "lines: each output is driven active as a button press. Disconnect the targets or"
        " watch a meter/LED on the optocoupler outputs: a power press can switch a machine off."
    )
    if not args.yes and input("drive the lines now? [y/N] ").strip().lower() != "y":
        report.result("SKIP", "lines", "not confirmed")
        return
    factory = config.gpio.pin_factory
    for port in gpio_ports:
        for name in ("nmi", "reset", "power"):
            cfg = getattr(port.lines, name)
            if cfg is None:
                continue
            check = f"line {port.name}.{name}"
            print(f"{check}: {_where(cfg)}: watch it now", flush=True)
            try:
                report.result(
                    "PASS", check, asyncio.run(_toggle(port.name, name, cfg, factory, args))
                )
            except LineSetupError as exc:
                report.result("FAIL", check, str(exc))
        if (sense := port.lines.power_sense) is not None:
            check = f"line {port.name}.power_sense"
            try:
                lines = _sense_lines(port.name, sense, factory)
                state = lines.power_state()
                asyncio.run(lines.close())
                report.result("PASS", check, f"{_where(sense)}: reads {state}")
            except LineSetupError as exc:
                report.result("FAIL", check, str(exc))


_LINE_NAMES = ("nmi", "reset", "power", "power_sense")


def _sense_lines(port: str, cfg: LineConfig, factory: str) -> Any:
    from bridge.hw.lines import GpioLines

    return GpioLines.create(port, LinesConfig(power_sense=cfg), factory)


def run(args: argparse.Namespace) -> int:
    if not args.device and not args.lines:
        print("serial-bridge selftest: give --device DEV, --lines, or both", file=sys.stderr)
        return 2
    report = Report()
    if args.device:
        check_device(args.device, not args.no_break, report)
    if args.lines:
        check_lines(args, report)
    return report.summary()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `selftest` subcommand."""
    parser = sub.add_parser(
        "selftest",
        help="bench test: UART loopback round trip and BREAK, and GPIO lines",
        description=(
            "Test a serial adapter with a jumper from its TX to its RX (data at several baud "
            "rates, BREAK detection) and, with --lines, drive each configured GPIO line for a "
            "meter or LED. Stop the service first. Exit status 0 only if every check passed."
        ),
    )
    parser.add_argument("--device", metavar="DEV", help="the adapter, e.g. /dev/serial/by-id/...")
    parser.add_argument("--no-break", action="store_true", help="skip the BREAK check")
    parser.add_argument("--lines", action="store_true", help="drive the config's GPIO lines")
    add_config_arg(parser)
    parser.add_argument("--port", metavar="NAME", help="only this port's lines")
    parser.add_argument(
        "--hold",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long each press lasts (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N", help="presses per line (default: %(default)s)"
    )
    parser.add_argument("--yes", action="store_true", help="drive the lines without asking")
    parser.set_defaults(func=run)
