"""`serial-bridge udev-rule PORTNAME DEVICE`: a udev rule giving a USB-UART a stable name.

Owns: finding the USB device behind a tty in sysfs and printing a rule for
/etc/udev/rules.d/99-serial-bridge.rules that creates `/dev/serial-bridge/PORTNAME` from the
adapter's idVendor / idProduct / serial (plus the interface number on multi-port chips such as the
FT2232H and FT4232H), group dialout, mode 0660. Reads sysfs only; never opens the device.

How the walk goes (the same shape on a Pi and a PC):
    /dev/serial/by-id/usb-FTDI_...-if00-port0  ->  /dev/ttyUSB0
    /sys/class/tty/ttyUSB0 -> /sys/devices/.../1-1.3/1-1.3:1.0/ttyUSB0/tty/ttyUSB0
    .../tty/ttyUSB0/device -> .../1-1.3:1.0/ttyUSB0        (ttyACM: the interface itself)
    up to .../1-1.3:1.0     bInterfaceNumber                (the USB interface)
    up to .../1-1.3         idVendor idProduct serial ...   (the USB device)
`--sysfs-root` points all of this at another tree (tests build a fake one).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from bridge.config import ConfigError, parse_config

RULES_FILE = "/etc/udev/rules.d/99-serial-bridge.rules"
_GLOB_CHARS = set('*?[]"\\|')


class UdevRuleError(Exception):
    """The device cannot be described by a rule; the message says why and what to do."""


@dataclass(frozen=True)
class UsbSerialAdapter:
    """What sysfs says about the USB device behind one tty."""

    tty: str  # kernel name: ttyUSB0, ttyACM1
    vendor_id: str  # "0403"
    product_id: str  # "6001"
    serial: str | None  # None when the chip has none (most CH340s)
    manufacturer: str | None
    product: str | None
    usb_port: str  # kernel name of the USB device = its physical port path, "1-1.3"
    interface: str | None  # bInterfaceNumber, "00"
    num_interfaces: int  # bNumInterfaces of the active configuration


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _class_dir(device: str, root: Path) -> Path:
    """The tty's class directory in sysfs (…/tty/ttyUSB0), from a /dev path or a bare name."""
    if "/" not in device:
        name = device
    else:
        dev_path = _under(root, device)
        if not os.path.lexists(dev_path):
            raise UdevRuleError(
                f"{device}: no such device (is the adapter plugged in? "
                "see `ls -l /dev/serial/by-id/`)"
            )
        real = Path(os.path.realpath(dev_path))
        try:
            st = real.stat()
        except OSError as exc:
            raise UdevRuleError(f"{device}: {exc.strerror}") from exc
        if stat.S_ISCHR(st.st_mode):
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            by_number = root / "sys" / "dev" / "char" / f"{major}:{minor}"
            if by_number.exists():
                return Path(os.path.realpath(by_number))
        name = real.name
    class_dir = root / "sys" / "class" / "tty" / name
    if not class_dir.exists():
        raise UdevRuleError(
            f"{device}: {name} is not a serial port known to sysfs "
            f"(no {class_dir}); is the adapter plugged in?"
        )
    return Path(os.path.realpath(class_dir))


def find_adapter(device: str, sysfs_root: Path = Path("/")) -> UsbSerialAdapter:
    """The USB adapter behind `device`: a /dev path, a by-id link or a name like ttyUSB0."""
    class_dir = _class_dir(device, sysfs_root)
    tty = class_dir.name
    link = class_dir / "device"
    if not link.exists():
        raise UdevRuleError(
            f"{device}: {tty} is a virtual terminal (no hardware device behind it in sysfs)"
        )
    devices_root = Path(os.path.realpath(sysfs_root / "sys" / "devices"))
    here = Path(os.path.realpath(link))
    interface: str | None = None
    while here != devices_root and devices_root in here.parents:
        if interface is None and (number := _read(here / "bInterfaceNumber")) is not None:
            interface = number
        vendor, product = _read(here / "idVendor"), _read(here / "idProduct")
        if vendor and product:
            try:
                num_interfaces = int(_read(here / "bNumInterfaces") or "1")
            except ValueError:
                num_interfaces = 1
            return UsbSerialAdapter(
                tty=tty,
                vendor_id=vendor,
                product_id=product,
                serial=_read(here / "serial") or None,
                manufacturer=_read(here / "manufacturer") or None,
                product=_read(here / "product") or None,
                usb_port=here.name,
                interface=interface,
                num_interfaces=num_interfaces,
            )
        here = here.parent
    bus = Path(os.path.realpath(link))
    raise UdevRuleError(
        f"{device}: {tty} is not a USB adapter (its device is {bus.name}, not on USB). "
        "Built-in UARTs already have stable names: /dev/serial0 on a Raspberry Pi up to the 4, "
        "/dev/ttyAMA0 for GPIO14/15 on a Pi 5 (see hw/uart.md), /dev/ttyS0 or /dev/ttyAMA0 "
        "elsewhere; use that path in the config directly."
    )


def _match_value(value: str) -> str:
    """A udev match value: characters that udev would treat as glob or quoting match any one."""
    return "".join("?" if ch in _GLOB_CHARS or not ch.isprintable() else ch for ch in value)


def _shown(value: str) -> str:
    """Attribute text for a comment line: what is not printable (newlines, ESC, C1 controls,
    bidi overrides...) and the backslash become visible escapes, so a hostile USB string
    descriptor can neither add a line to the rules file nor reach the admin's terminal."""
    return "".join(ch if ch.isprintable() and ch != "\\" else f"\\x{{{ord(ch):x}}}" for ch in value)


def render_rule(name: str, adapter: UsbSerialAdapter) -> str:
    """The comment lines and the rule line for one port (ends with a newline).

    Every attribute read from the device passes `_shown` (comments) or `_match_value` (the rule),
    so the output is exactly: comment lines and the one rule line."""
    what = " ".join(x for x in (adapter.manufacturer, adapter.product) if x) or "USB serial"
    serial = _shown(adapter.serial) if adapter.serial else None
    lines = [
        f"# {name}: {_shown(what)} {_shown(adapter.vendor_id)}:{_shown(adapter.product_id)}"
        + (f", serial {serial}" if serial else ", no serial number")
        + f", USB port {_shown(adapter.usb_port)}"
        + (
            f", interface {_shown(adapter.interface)} of {adapter.num_interfaces}"
            if adapter.num_interfaces > 1 and adapter.interface is not None
            else ""
        )
        + f" (now {_shown(adapter.tty)})"
    ]
    match = [
        'SUBSYSTEM=="tty"',
        f'ATTRS{{idVendor}}=="{_match_value(adapter.vendor_id)}"',
        f'ATTRS{{idProduct}}=="{_match_value(adapter.product_id)}"',
    ]
    if adapter.serial:
        match.append(f'ATTRS{{serial}}=="{_match_value(adapter.serial)}"')
        if len(adapter.serial) <= 4 or set(adapter.serial) <= {"0", "1"}:
            lines.append(
                f"# warning: serial '{serial}' looks like a factory default that other"
                " adapters share; if you have two, match KERNELS (the USB port) instead"
            )
    else:
        # Without a serial number the only stable property is the physical USB socket.
        match.append(f'KERNELS=="{_match_value(adapter.usb_port)}"')
        lines.append(
            "# this adapter has no serial number: the rule is tied to the USB socket it is"
            f" plugged into ({_shown(adapter.usb_port)}); moving it to another socket loses"
            " the name"
        )
    if adapter.num_interfaces > 1 and adapter.interface is not None:
        # bInterfaceNumber lives on another sysfs parent than idVendor, and udev wants all ATTRS
        # of one rule on one parent: use the property the usb_id builtin sets (60-serial.rules).
        match.append(f'ENV{{ID_USB_INTERFACE_NUM}}=="{_match_value(adapter.interface)}"')
    action = [f'SYMLINK+="serial-bridge/{name}"', 'GROUP="dialout"', 'MODE="0660"']
    lines.append(", ".join(match + action))
    lines.append(f'# config: [ports.{name}] device = "/dev/serial-bridge/{name}"')
    return "\n".join(lines) + "\n"


def check_port_name(name: str) -> None:
    """Port names follow the config's rule (letters, digits, '_', '-', '.'; max 64)."""
    try:
        parse_config({"ports": {name: {"device": "/dev/null"}}}, "PORTNAME")
    except ConfigError as exc:
        raise UdevRuleError(
            f"{name!r}: port names use letters, digits, '_', '-', '.' (max 64), "
            "starting with a letter or digit"
        ) from exc


def run(args: argparse.Namespace) -> int:
    """Print the rule for args.device named args.portname; 0 on success, 1 with a reason."""
    try:
        check_port_name(args.portname)
        adapter = find_adapter(args.device, Path(args.sysfs_root))
    except UdevRuleError as exc:
        print(f"serial-bridge udev-rule: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_rule(args.portname, adapter))
    print(
        f"\nappend the lines above to {RULES_FILE}, then run:\n"
        "  sudo udevadm control --reload && sudo udevadm trigger --action=add "
        "--subsystem-match=tty",
        file=sys.stderr,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `udev-rule` subcommand."""
    parser = sub.add_parser(
        "udev-rule",
        help="print a udev rule giving a plugged-in USB-UART the name /dev/serial-bridge/PORTNAME",
        description=(
            "Read the adapter's USB attributes from sysfs and print a udev rule that creates "
            f"/dev/serial-bridge/PORTNAME for it. Append the output to {RULES_FILE}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("portname", metavar="PORTNAME", help="the port's name in the config")
    parser.add_argument(
        "device",
        metavar="DEVICE",
        help="the adapter now: /dev/serial/by-id/..., /dev/ttyUSB0 or ttyUSB0",
    )
    parser.add_argument(
        "--sysfs-root",
        default="/",
        metavar="PATH",
        help="read PATH/sys and PATH/dev instead of /sys and /dev (tests, or a copy of another"
        " machine's tree; the layout it needs is in hw/uart.md)",
    )
    parser.set_defaults(func=run)
