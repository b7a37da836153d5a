"""Config parsing: defaults, units, and errors that name the file, the key path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, Framing, load_config, parse_duration, parse_size

GOOD = """
[server]
listen = ["0.0.0.0:8443", "[::1]:9443"]
state_dir = "/var/lib/serial-bridge"

[log]
size = "16MiB"
flush_interval = "5s"

[ports.lab1]
device = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
baud = 115200
framing = "7E1"
flow = "rtscts"
description = "rack 4, node 2"
sysrq_deny = "c"
[ports.lab1.lines]
nmi   = { gpio = 17, active_high = true, pulse = "200ms" }
power = { gpio = 22, active_high = false, pulse = "500ms", long_pulse = "5s" }
power_sense = { gpio = 23 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_full_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.server.listen == (("0.0.0.0", 8443), ("::1", 9443))
    assert cfg.log.size == 16 * 1024 * 1024 and cfg.log.flush_interval == 5.0
    port = cfg.ports["lab1"]
    assert port.framing == Framing(7, "E", 1) and port.framing.bits_per_char == 10
    assert port.flow == "rtscts" and port.sysrq_deny == frozenset("c")
    assert port.lines.nmi is not None and port.lines.nmi.pulse == pytest.approx(0.2)
    assert port.lines.power is not None and port.lines.power.active_high is False
    assert port.lines.power.long_pulse == 5.0
    assert port.client_buffer == 1024 * 1024 and port.scrollback == 1024 * 1024


@pytest.mark.parametrize(
    ("snippet", "key", "reason"),
    [
        ('[ports.a]\ndevice = "/dev/x"\nbuad = 9600', "ports.a.buad", "unknown key"),
        ('[ports.a]\ndevice = "/dev/x"\nbaud = -5', "ports.a.baud", "positive integer"),
        ('[ports.a]\ndevice = "/dev/x"\nframing = "9X1"', "ports.a.framing", "not a framing"),
        ('[ports.a]\ndevice = "/dev/x"\nflow = "rts"', "ports.a.flow", "not one of"),
        ("[ports.a]\nbaud = 9600", "ports.a.device", "missing"),
        ('[log]\nsize = "lots"', "log.size", "not a size"),
        ('[log]\nflush_interval = "5 fortnights"', "log.flush_interval", "not a duration"),
        ('[server]\nlisten = ["8443"]', "server.listen", "host:port"),
        (
            '[ports.a]\ndevice = "/dev/x"\n[ports.a.lines]\nnmi = { pulse = "1s" }',
            "ports.a.lines.nmi.gpio",
            "missing",
        ),
        ('[ports.a]\ndevice = "/dev/x"\nsysrq_deny = ["?"]', "ports.a.sysrq_deny", "SysRq"),
        ("[sever]\nlisten = []", "sever", "unknown key"),
    ],
)
def test_errors_name_file_key_and_reason(
    tmp_path: Path, snippet: str, key: str, reason: str
) -> None:
    path = write(tmp_path, snippet)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    line = next(p for p in exc.value.problems if f": {key}:" in p)
    assert line.startswith(f"{path}: {key}: ") and reason in line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[ports.a]\ndevice = "/dev/x"\nbaud = 0\nflow = "x"\ncolour = 1')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert len(exc.value.problems) == 3


def test_toml_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax"):
        load_config(write(tmp_path, "[ports\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_units() -> None:
    assert parse_size("64KiB") == 65536 and parse_size("1 GiB") == 1 << 30 and parse_size(7) == 7
    assert (
        parse_duration("250ms") == 0.25 and parse_duration("2m") == 120 and parse_duration(3) == 3
    )
    for bad in ("", "-1s", "1y", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
