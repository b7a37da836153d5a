"""`serial-bridge udev-rule` against fake sysfs trees shaped like the kernel's.

Each fake tree has what the kernel shows for a USB-UART: the USB device directory (idVendor,
idProduct, serial, bNumInterfaces...), the interface directory (bInterfaceNumber), the tty below it,
/sys/class/tty/NAME as a relative symlink to the tty's class directory, its `device` link, and
/dev/serial/by-id links as udev makes them. /dev nodes are plain files (their names are used).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.service import udev

PCI = "sys/devices/pci0000:00/0000:00:14.0/usb1"


@dataclass
class FakeUsb:
    vendor: str
    product_id: str
    serial: str | None
    manufacturer: str
    product: str
    port: str  # "1-2"
    ttys: dict[int, str]  # interface number -> tty name
    driver_layer: bool = True  # usb-serial (ttyUSB) has a ttyUSBn dir under the interface
    by_id: dict[str, str] = field(default_factory=dict)  # by-id name -> tty name


def build(root: Path, usb: FakeUsb) -> None:
    dev_dir = root / PCI / usb.port
    dev_dir.mkdir(parents=True)
    attrs = {
        "idVendor": usb.vendor,
        "idProduct": usb.product_id,
        "manufacturer": usb.manufacturer,
        "product": usb.product,
        "bNumInterfaces": f"{len(usb.ttys):2d}",  # the kernel pads it: " 4"
    }
    if usb.serial is not None:
        attrs["serial"] = usb.serial
    for name, value in attrs.items():
        (dev_dir / name).write_text(value + "\n")
    (root / "sys/class/tty").mkdir(parents=True, exist_ok=True)
    (root / "dev/serial/by-id").mkdir(parents=True, exist_ok=True)
    for number, tty in usb.ttys.items():
        intf = dev_dir / f"{usb.port}:1.{number}"
        intf.mkdir()
        (intf / "bInterfaceNumber").write_text(f"{number:02x}\n")
        hw = intf / tty if usb.driver_layer else intf  # ttyACM's device is the interface
        class_dir = hw / "tty" / tty
        class_dir.mkdir(parents=True)
        (class_dir / "dev").write_text("188:0\n")
        os.symlink(os.path.relpath(hw, class_dir), class_dir / "device")
        os.symlink(os.path.relpath(class_dir, root / "sys/class/tty"), root / "sys/class/tty" / tty)
        (root / "dev" / tty).write_text("")
    for link, tty in usb.by_id.items():
        os.symlink(f"../../{tty}", root / "dev/serial/by-id" / link)


FT232R = FakeUsb(
    "0403",
    "6001",
    "A50285BI",
    "FTDI",
    "FT232R USB UART",
    "1-1.3",
    {0: "ttyUSB0"},
    by_id={"usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0": "ttyUSB0"},
)
CP2102 = FakeUsb(
    "10c4",
    "ea60",
    "0001",
    "Silicon Labs",
    "CP2102 USB to UART Bridge Controller",
    "1-1.4",
    {0: "ttyUSB1"},
    by_id={"usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0": "ttyUSB1"},
)
FT4232H = FakeUsb(
    "0403",
    "6011",
    "FT4Z9K1Q",
    "FTDI",
    "Quad RS232-HS",
    "1-1.2",
    {0: "ttyUSB2", 1: "ttyUSB3", 2: "ttyUSB4", 3: "ttyUSB5"},
    by_id={"usb-FTDI_Quad_RS232-HS_FT4Z9K1Q-if02-port0": "ttyUSB4"},
)
CH340 = FakeUsb("1a86", "7523", None, "", "USB Serial", "1-1.1", {0: "ttyUSB6"})
PICO_ACM = FakeUsb(
    "2e8a",
    "000a",
    "E6614C311B7A3C2F",
    "Raspberry Pi",
    "Pico",
    "3-1",
    {0: "ttyACM0"},
    driver_layer=False,
)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    for usb in (FT232R, CP2102, FT4232H, CH340, PICO_ACM):
        build(tmp_path, usb)
    # A built-in UART on the platform bus (a Pi's PL011) and a virtual console.
    platform = tmp_path / "sys/devices/platform/soc/fe201000.serial"
    class_dir = platform / "tty/ttyAMA0"
    class_dir.mkdir(parents=True)
    os.symlink("../../../fe201000.serial", class_dir / "device")
    os.symlink(
        "../../devices/platform/soc/fe201000.serial/tty/ttyAMA0", tmp_path / "sys/class/tty/ttyAMA0"
    )
    (tmp_path / "dev/ttyAMA0").write_text("")
    virtual = tmp_path / "sys/devices/virtual/tty/tty1"
    virtual.mkdir(parents=True)
    os.symlink("../../devices/virtual/tty/tty1", tmp_path / "sys/class/tty/tty1")
    (tmp_path / "dev/tty1").write_text("")
    return tmp_path


def cli(sysfs: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="serial-bridge")
    udev.register(parser.add_subparsers())
    args = parser.parse_args(["udev-rule", *argv, "--sysfs-root", str(sysfs)])
    result: int = args.func(args)
    return result


def rule_line(text: str) -> str:
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(rules) == 1, text
    return rules[0]


def matches(rule: str) -> dict[str, str]:
    """KEY==value pairs of a rule line."""
    return dict(re.findall(r'([A-Z_]+(?:\{[A-Za-z_]+\})?)=="([^"]*)"', rule))


def test_ft232r_by_id(sysfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(sysfs, "lab1", "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0") == 0
    out = capsys.readouterr().out
    rule = rule_line(out)
    assert matches(rule) == {
        "SUBSYSTEM": "tty",
        "ATTRS{idVendor}": "0403",
        "ATTRS{idProduct}": "6001",
        "ATTRS{serial}": "A50285BI",
    }
    assert 'SYMLINK+="serial-bridge/lab1"' in rule
    assert 'GROUP="dialout"' in rule
    assert 'MODE="0660"' in rule
    assert "FTDI FT232R USB UART" in out
    assert 'device = "/dev/serial-bridge/lab1"' in out
    assert "warning" not in out


def test_same_rule_from_dev_node_or_kernel_name(
    sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(sysfs, "lab1", "/dev/ttyUSB0") == 0
    by_node = capsys.readouterr().out
    assert cli(sysfs, "lab1", "ttyUSB0") == 0
    assert capsys.readouterr().out == by_node
    assert rule_line(by_node).count("A50285BI") == 1


def test_cp2102_with_factory_default_serial(
    sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = "/dev/serial/by-id/usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0"
    assert cli(sysfs, "rack4-node2", link) == 0
    out = capsys.readouterr().out
    m = matches(rule_line(out))
    assert (m["ATTRS{idVendor}"], m["ATTRS{idProduct}"], m["ATTRS{serial}"]) == (
        "10c4",
        "ea60",
        "0001",
    )
    assert "ENV{ID_USB_INTERFACE_NUM}" not in m
    assert "factory default" in out


def test_ft4232h_picks_the_interface(sysfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(sysfs, "node3", "/dev/serial/by-id/usb-FTDI_Quad_RS232-HS_FT4Z9K1Q-if02-port0") == 0
    out = capsys.readouterr().out
    m = matches(rule_line(out))
    assert m["ATTRS{idProduct}"] == "6011"
    assert m["ATTRS{serial}"] == "FT4Z9K1Q"
    assert m["ENV{ID_USB_INTERFACE_NUM}"] == "02"
    assert "interface 02 of 4" in out
    # Each port of the chip gets its own interface number.
    for number, tty in FT4232H.ttys.items():
        assert cli(sysfs, f"p{number}", f"/dev/{tty}") == 0
        assert matches(rule_line(capsys.readouterr().out))["ENV{ID_USB_INTERFACE_NUM}"] == (
            f"{number:02x}"
        )


def test_ch340_without_serial_is_tied_to_the_usb_socket(
    sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(sysfs, "cheap", "/dev/ttyUSB6") == 0
    out = capsys.readouterr().out
    m = matches(rule_line(out))
    assert "ATTRS{serial}" not in m
    assert m["KERNELS"] == "1-1.1"
    assert "no serial number" in out


def test_cdc_acm_device(sysfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(sysfs, "pico", "/dev/ttyACM0") == 0
    m = matches(rule_line(capsys.readouterr().out))
    assert (m["ATTRS{idVendor}"], m["ATTRS{serial}"]) == ("2e8a", "E6614C311B7A3C2F")


def test_glob_characters_in_a_serial_are_neutralised() -> None:
    adapter = udev.UsbSerialAdapter("ttyUSB0", "0403", "6001", 'A*B"C', None, None, "1-1", "00", 1)
    m = matches(rule_line(udev.render_rule("x", adapter)))
    assert m["ATTRS{serial}"] == "A?B?C"


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("/dev/serial/by-id/usb-nothing-if00-port0", "no such device"),
        ("/dev/ttyUSB9", "no such device"),
        ("ttyUSB9", "not a serial port known to sysfs"),
        ("/dev/ttyAMA0", "not a USB adapter"),
        ("/dev/tty1", "virtual terminal"),
    ],
)
def test_clear_errors(
    sysfs: Path, capsys: pytest.CaptureFixture[str], device: str, reason: str
) -> None:
    assert cli(sysfs, "lab1", device) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert reason in captured.err
    assert captured.err.startswith("serial-bridge udev-rule: ")


@pytest.mark.parametrize("name", ["", "bad name", "_lead", ".hidden", "../etc", "a/b", "x" * 65])
def test_port_name_validated_like_the_config(
    sysfs: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert cli(sysfs, name, "/dev/ttyUSB0") == 1
    assert "port names use" in capsys.readouterr().err


def test_shipped_rules_file_is_well_formed() -> None:
    """Each rule in udev/99-serial-bridge.rules (active, or a commented-out `#SUBSYSTEM` example)
    is a comma-separated list of KEY op "value"."""
    path = Path(__file__).resolve().parent.parent / "udev" / "99-serial-bridge.rules"
    item = re.compile(r'[A-Z_]+(\{[A-Za-z0-9_]+\})?(==|!=|\+=|:=|=)"[^"]*"')
    text = path.read_text()
    active = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    examples = [line[1:] for line in text.splitlines() if line.startswith("#SUBSYSTEM==")]
    assert active
    assert len(examples) >= 4
    for line in active + examples:
        for part in line.split(", "):
            assert item.fullmatch(part.strip()), f"{part!r} in {line!r}"
    assert all('SYMLINK+="serial-bridge/' in line for line in examples)
    assert any("ENV{ID_USB_INTERFACE_NUM}" in line for line in examples)
    assert 'KERNEL=="gpiochip*"' in text
    assert 'GROUP="gpio"' in text
    assert "/dev/ttyUSB0" not in text


def test_generated_rule_matches_the_shipped_examples(
    sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prints rules in the same form as the documented examples."""
    path = Path(__file__).resolve().parent.parent / "udev" / "99-serial-bridge.rules"
    examples = [line[1:] for line in path.read_text().splitlines() if line.startswith("#SUBSYS")]
    assert cli(sysfs, "lab1", "/dev/ttyUSB0") == 0
    assert rule_line(capsys.readouterr().out) in examples
    assert cli(sysfs, "rack4-node3", "/dev/ttyUSB4") == 0
    assert rule_line(capsys.readouterr().out) in examples


def test_char_device_resolved_by_number(sysfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real device node is looked up by major:minor in /sys/dev/char, not by its file name."""
    node = sysfs / "dev/console-adapter"  # a name that says nothing about the tty
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(188, 4))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    (sysfs / "sys/dev/char").mkdir(parents=True)
    os.symlink(
        "../../devices/pci0000:00/0000:00:14.0/usb1/1-1.2/1-1.2:1.2/ttyUSB4/tty/ttyUSB4",
        sysfs / "sys/dev/char/188:4",
    )
    assert cli(sysfs, "node3", "/dev/console-adapter") == 0
    assert matches(rule_line(capsys.readouterr().out))["ENV{ID_USB_INTERFACE_NUM}"] == "02"


def test_registered_in_the_cli(sysfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.service.cli import main

    argv = ["udev-rule", "lab1", "/dev/ttyUSB0", "--sysfs-root", str(sysfs)]
    assert main(argv) == 0
    assert 'SYMLINK+="serial-bridge/lab1"' in capsys.readouterr().out


HOSTILE = FakeUsb(
    "0403",
    "6001",
    'X1\nRUN+="/bin/sh -c id"\r\\',
    'Evil\nSUBSYSTEM=="tty", RUN+="/bin/touch /tmp/pwned"\n#',
    "Gadget\x1b]0;owned\x07\x1b[2J\u2028\u202e\x9b",
    "1-1.7",
    {0: "ttyUSB7"},
)


def test_hostile_usb_strings_cannot_add_rules_or_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A BadUSB adapter (or a target's USB gadget) chooses its own manufacturer, product and
    serial strings: newlines must not start new rule lines and controls must not reach the
    admin's terminal, in the comments and in the match values alike (#18.1)."""
    build(tmp_path, HOSTILE)
    assert cli(tmp_path, "lab1", "/dev/ttyUSB7") == 0
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert all(ch.isprintable() or ch == "\n" for ch in text), repr(text)
    lines = captured.out.splitlines()
    rule = rule_line(captured.out)
    assert all(line.startswith("#") for line in lines if line != rule)
    assert not any(line.rstrip().endswith("\\") for line in lines)  # no line continuation
    assert rule == (
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", '
        'ATTRS{serial}=="X1?RUN+=?/bin/sh -c id???", '
        'SYMLINK+="serial-bridge/lab1", GROUP="dialout", MODE="0660"'
    )
    assert "Evil\\x{a}SUBSYSTEM" in captured.out  # shown, escaped, in a comment


def test_the_fake_tree_in_hw_uart_md_gives_the_rule_it_shows(tmp_path: Path) -> None:
    """hw/uart.md documents --sysfs-root with a shell recipe for a fake tree: run it as written."""
    doc = (Path(__file__).resolve().parent.parent / "hw" / "uart.md").read_text()
    recipe = doc[doc.index("R=/tmp/fake-sysfs") :]
    recipe = recipe[: recipe.index("serial-bridge udev-rule")]
    script = recipe.replace("R=/tmp/fake-sysfs", f"R={tmp_path}")
    subprocess.run(["sh", "-ec", script], check=True, env={"PATH": os.defpath})
    shown = doc[doc.index("# lab1: FTDI") :]
    shown = shown[: shown.index("```")]
    parser = argparse.ArgumentParser(prog="serial-bridge")
    udev.register(parser.add_subparsers())
    link = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    args = parser.parse_args(["udev-rule", "lab1", link, "--sysfs-root", str(tmp_path)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert args.func(args) == 0
    assert out.getvalue() == shown
