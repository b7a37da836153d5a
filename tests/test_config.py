"""Config parsing: defaults, units, and errors that name the file, the key path and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bridge.config import (
    ConfigError,
    Framing,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

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
    assert port.client_buffer == 1024 * 1024 and port.scrollback == 128 * 1024  # ring log on


def test_scrollback_defaults_to_1mib_without_a_ring_log(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("[log]\n", "[log]\nenabled = false\n")))
    assert cfg.ports["lab1"].scrollback == 1024 * 1024


@pytest.mark.parametrize(
    ("snippet", "key", "reason"),
    [
        (
            '[ports.a]\ndevice = "/dev/x"\nbuad = 9600',
            "ports.a.buad",
            "unknown key — did you mean baud?",
        ),
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
        ("[sever]\nlisten = []", "sever", "unknown key — did you mean server?"),
        ('[ports.a]\ndevice = "/dev/x"\ncolour = 1', "ports.a.colour", "unknown key"),
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


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert all(p.startswith(f"{path}: ") for p in exc.value.problems)
    return [p.removeprefix(f"{path}: ") for p in exc.value.problems]


def test_an_unknown_key_far_from_every_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    assert problems_of(tmp_path, '[ports.a]\ndevice = "/dev/x"\ncolour = 1') == [
        "ports.a.colour: unknown key"
    ]


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        (["0.0.0.0:8443", "0.0.0.0:8443"], "0.0.0.0:8443 is listed twice"),
        (["0.0.0.0:8443", "127.0.0.1:8443"], "127.0.0.1:8443 overlaps 0.0.0.0:8443"),
        (["[::1]:8443", "[::]:8443"], "[::]:8443 overlaps [::1]:8443"),
        (["[::1]:8443", "[0:0:0:0:0:0:0:1]:8443"], "overlaps [::1]:8443"),
        (["localhost:8443", "LOCALHOST:8443"], "overlaps localhost:8443"),
    ],
)
def test_a_listen_address_taken_twice_is_refused(
    tmp_path: Path, listen: list[str], problem: str
) -> None:
    text = f"[server]\nlisten = {listen!r}\n".replace("'", '"')
    (line,) = problems_of(tmp_path, text)
    assert line.startswith("server.listen: ") and problem in line


@pytest.mark.parametrize(
    "listen",
    [
        ["0.0.0.0:8443", "[::]:8443"],  # one socket per family (IPV6_V6ONLY)
        ["127.0.0.1:8443", "[::1]:8443"],
        ["127.0.0.1:0", "127.0.0.1:0"],  # two free ports
        ["0.0.0.0:8443", "0.0.0.0:9443"],
    ],
)
def test_listen_addresses_that_can_coexist_are_accepted(tmp_path: Path, listen: list[str]) -> None:
    text = f"[server]\nlisten = {listen!r}\n".replace("'", '"')
    assert len(load_config(write(tmp_path, text)).server.listen) == 2


def test_one_gpio_for_two_lines_is_refused_within_and_across_ports(tmp_path: Path) -> None:
    text = (
        '[ports.a]\ndevice = "/dev/a"\n[ports.a.lines]\n'
        "nmi = { gpio = 17 }\nreset = { gpio = 17 }\n"
        '[ports.b]\ndevice = "/dev/b"\n[ports.b.lines]\npower_sense = { gpio = 17 }\n'
        "power = { gpio = 22 }\n"
    )
    assert problems_of(tmp_path, text) == [
        "ports.a.lines.reset.gpio: GPIO 17 is already used by ports.a.lines.nmi"
        " (one GPIO drives one line)",
        "ports.b.lines.power_sense.gpio: GPIO 17 is already used by ports.a.lines.nmi"
        " (one GPIO drives one line)",
    ]


def test_two_ports_on_one_device_are_refused_also_through_a_link(tmp_path: Path) -> None:
    tty = tmp_path / "ttyAMA0"
    tty.touch()
    (tmp_path / "serial0").symlink_to(tty)
    text = (
        f'[ports.a]\ndevice = "{tty}"\n'
        f'[ports.b]\ndevice = "{tmp_path / "serial0"}"\n'
        '[ports.c]\ndevice = "telnet://127.0.0.1:7001"\n'
        '[ports.d]\ndevice = "telnet://127.0.0.1:7001"\n'
        '[ports.e]\ndevice = "virtual:shell"\n'
        '[ports.f]\ndevice = "virtual:shell"\n'  # each port gets its own virtual target
    )
    assert problems_of(tmp_path, text) == [
        f"ports.b.device: '{tmp_path / 'serial0'}' leads to {tty}, which is already the device"
        " of port a (one port per console device)",
        "ports.d.device: 'telnet://127.0.0.1:7001' is already the device of port c"
        " (one port per console device)",
    ]


@pytest.mark.parametrize(
    "doc",
    ["README.md", "docs/config.md", "docs/install-pi.md", "docs/ssh.md", "hw/control-lines.md"],
)
def test_the_example_configs_in_the_documents_are_valid(doc: str) -> None:
    """Every ```toml block of the user docs is a whole config that check-config accepts."""
    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    blocks = [part.split("```", 1)[0] for part in text.split("```toml\n")[1:]]
    assert blocks
    for block in blocks:
        parse_config(tomllib.loads(block), doc)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("x = " + "[" * 30_000, "x"),  # too deep for tomllib itself
        ('[ports.lab]\ndevice = "/dev/null"\nbaud = ' + "{a = " * 3_000, "ports.lab.baud"),
        ('[ports.lab]\ndevice = "/dev/null"\nbaud.' + ".".join(["a"] * 2_000) + " = 1", None),
        ("x = " + "[" * 100 + "]" * 100, "x"),  # parsed, then refused before anything walks it
    ],
)
def test_nesting_bombs_get_a_file_key_reason_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str | None
) -> None:
    """`check-config` on a deeply nested file used to die with RecursionError (#18.19)."""
    from bridge.service.cli import main

    path = tmp_path / "deep.toml"
    path.write_text(body + "\n")
    with pytest.raises(SystemExit) as done:
        main(["check-config", "--config", str(path)])
    assert done.value.code == 2
    (line,) = [ln.strip() for ln in capsys.readouterr().err.splitlines() if ln.startswith("  ")]
    where, _, reason = line.rpartition(": ")
    assert reason == "values nested more than 16 levels deep (a config needs 4 at most)"
    assert where.startswith(f"{path}: {key or 'ports.lab.baud.a.a.a'}")
    assert len(line) < 300


def test_low_latency_is_on_unless_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).ports["lab1"].low_latency is True
    off = GOOD.replace("baud = 115200\n", "baud = 115200\nlow_latency = false\n", 1)
    assert load_config(write(tmp_path, off)).ports["lab1"].low_latency is False
