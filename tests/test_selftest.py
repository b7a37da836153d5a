"""`serial-bridge selftest` on a pseudo-terminal standing in for a looped-back adapter.

The test holds the pty's master side and echoes back whatever the self-test writes, which is what a
TX-RX jumper does. A pty cannot carry a BREAK, so the BREAK check must say FAIL (not PASS) there.
GPIO lines run on gpiozero's MockFactory (`pin_factory = "mock"`), whose pin history shows what was
driven.
"""

from __future__ import annotations

import argparse
import os
import select
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.service import selftest


class Loopback:
    """A pty whose master echoes every byte back (optionally transformed) from a thread."""

    def __init__(self, transform: Callable[[bytes], bytes] = lambda data: data) -> None:
        self.master, self.slave = os.openpty()  # the slave stays open: no hang-up between opens
        self.device = os.ttyname(self.slave)
        self.transform = transform
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()

    def _echo(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                continue
            os.write(self.master, self.transform(data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    lb = Loopback()
    yield lb
    lb.close()


def selftest_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="serial-bridge")
    selftest.register(parser.add_subparsers())
    args = parser.parse_args(["selftest", *argv])
    result: int = args.func(args)
    return result


def result_lines(out: str) -> dict[str, str]:
    """check name -> status, from the `STATUS  check: detail` lines."""
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in ("PASS", "FAIL", "SKIP"):
            found[rest.split(":")[0]] = status.strip()
    return found


def test_round_trip_passes_and_break_fails_honestly_on_a_pty(
    loopback: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    assert selftest_cli("--device", loopback.device) == 1
    out = capsys.readouterr().out
    results = result_lines(out)
    for baud in (9600, 115200, 921600, 3000000):
        assert results[f"round trip at {baud} baud"] == "PASS"
    assert results["BREAK (250 ms at 115200 baud)"] == "FAIL"
    assert "pseudo-terminal" in out
    assert out.splitlines()[-1] == "result: FAIL (5 passed, 1 failed, 0 skipped)"


def test_without_break_check_a_good_loopback_passes(
    loopback: Loopback, capsys: pytest.CaptureFixture[str]
) -> None:
    assert selftest_cli("--device", loopback.device, "--no-break") == 0
    out = capsys.readouterr().out
    assert result_lines(out)["BREAK"] == "SKIP"
    assert out.splitlines()[-1] == "result: PASS (5 passed, 0 failed, 1 skipped)"


def test_corrupted_data_fails(capsys: pytest.CaptureFixture[str]) -> None:
    lb = Loopback(transform=lambda data: bytes(b ^ 0x10 for b in data))
    try:
        assert selftest_cli("--device", lb.device, "--no-break") == 1
    finally:
        lb.close()
    out = capsys.readouterr().out
    assert result_lines(out)["round trip at 9600 baud"] == "FAIL"
    assert "first difference at byte 0" in out


def test_missing_device_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert selftest_cli("--device", str(tmp_path / "ttyUSB-nothing")) == 1
    out = capsys.readouterr().out
    assert result_lines(out) == {"open": "FAIL"}
    assert "result: FAIL" in out


def test_nothing_to_do_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert selftest_cli() == 2
    assert "--device" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"\xff\x00\x00", "PASS", "1 break mark"),
        (b"\xff\x00\x00\xff\x00\x00", "PASS", "2 break marks"),
        (b"\x00", "FAIL", "as data"),
        (b"\xff\xff\x00\x00", "FAIL", "as data"),  # a data FF (doubled) then NULs: not a break
        (b"\xff\x00\x41", "FAIL", "framing error"),  # a character with a framing error
        (b"ab", "FAIL", "no break"),
        (b"", "FAIL", "nothing arrived"),
    ],
)
def test_classify_break(data: bytes, status: str, words: str) -> None:
    got_status, detail = selftest.classify_break(data)
    assert (got_status, words in detail) == (status, True)


def test_parse_marked() -> None:
    assert selftest.parse_marked(b"a\xff\xffb\xff\x00\x00c\xff\x00zd") == (1, 1, b"a\xffbcd")


def test_compare() -> None:
    assert selftest.compare(b"abc", b"abc") is None
    assert selftest.compare(b"abc", b"abd") == "3 of 3 bytes came back, first difference at byte 2"
    assert selftest.compare(b"abc", b"ab") == "2 of 3 bytes came back, no corrupted byte"


def presses(states: list[bool], active_high: bool) -> tuple[int, bool]:
    """(number of presses, whether the line ended inactive) from a pin's level history."""
    levels = [s if active_high else not s for s in states]
    runs = [v for i, v in enumerate(levels) if i == 0 or v != levels[i - 1]]
    return sum(runs), not levels[-1]


def test_lines_on_mock_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.hw.lines import mock_pin_factory

    monkeypatch.delenv("LG_WD", raising=False)
    cwd = os.getcwd()

    config = tmp_path / "config.toml"
    config.write_text(
        """
[gpio]
pin_factory = "mock"
[ports.lab1]
device = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
[ports.lab1.lines]
nmi = { gpio = 5, active_high = true, pulse = "200ms" }
reset = { gpio = 6, active_high = false, pulse = "250ms" }
power = { gpio = 12, active_high = true, pulse = "500ms", long_pulse = "5s" }
power_sense = { gpio = 13, active_high = true }
"""
    )
    factory = mock_pin_factory()
    before = {gpio: len(factory.pin(gpio).states) for gpio in (5, 6, 12)}
    argv = ("--lines", "--config", str(config), "--yes", "--hold", "0.01", "--repeat", "2")
    assert selftest_cli(*argv) == 0
    out = capsys.readouterr().out
    results = result_lines(out)
    for name in ("nmi", "reset", "power", "power_sense"):
        assert results[f"line lab1.{name}"] == "PASS"
    assert "GPIO5 (header pin 29), active high: 2 x 0.01 s active" in out
    assert "power_sense: GPIO13 (header pin 33), active high: reads off" in out
    for gpio, active_high in ((5, True), (6, False), (12, True)):
        history = [s.state for s in factory.pin(gpio).states[before[gpio] :]]
        assert presses(history, active_high) == (2, True), (gpio, history)
    # The lgpio working directory was temporary: cwd and environment are as before.
    assert os.getcwd() == cwd
    assert "LG_WD" not in os.environ


def test_lines_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text("[ports.lab1]\nbaud = 'fast'\n")
    monkeypatch.chdir(tmp_path)  # a relative --config still names the same file
    assert selftest_cli("--lines", "--config", "config.toml", "--yes") == 1
    out = capsys.readouterr().out
    assert result_lines(out) == {"config": "FAIL"}
    assert "ports.lab1.baud" in out


def test_registered_in_the_cli(loopback: Loopback, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.service.cli import main

    assert main(["selftest", "--device", loopback.device, "--no-break"]) == 0
    assert "result: PASS" in capsys.readouterr().out
