"""The `rfc2217` port key: loopback only unless the network is declared insecure, one address per
endpoint, and `check-config` saying so with the key's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config


def write(tmp_path: Path, port_body: str, server: str = 'listen = ["127.0.0.1:8443"]') -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\n{server}\n[ports.lab]\ndevice = "/dev/ttyX"\n{port_body}')
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [p.removeprefix(f"{path}: ") for p in exc.value.problems]


@pytest.mark.parametrize(
    ("value", "host"),
    [("127.0.0.1:4001", "127.0.0.1"), ("127.0.0.2:4001", "127.0.0.2"), ("[::1]:4001", "::1"),
     ("localhost:4001", "localhost")],
)  # fmt: skip
def test_a_loopback_endpoint_is_accepted(tmp_path: Path, value: str, host: str) -> None:
    cfg = load_config(write(tmp_path, f'rfc2217 = "{value}"\n'))
    port = cfg.ports["lab"]
    assert port.rfc2217 == (host, 4001)
    assert (port.rfc2217_insecure_network, port.rfc2217_takeover) == (False, False)


def test_no_endpoint_by_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).ports["lab"].rfc2217 is None


@pytest.mark.parametrize("value", ["0.0.0.0:4001", "192.0.2.7:4001", "[::]:4001", "lab.example:1"])
def test_a_network_endpoint_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    (line,) = problems(write(tmp_path, f'rfc2217 = "{value}"\n'))
    assert line.startswith("ports.lab.rfc2217: ")
    assert "is not a loopback address" in line and "rfc2217_insecure_network = true" in line


def test_a_network_endpoint_is_accepted_when_declared_insecure(tmp_path: Path) -> None:
    body = 'rfc2217 = "0.0.0.0:4001"\nrfc2217_insecure_network = true\nrfc2217_takeover = true\n'
    port = load_config(write(tmp_path, body)).ports["lab"]
    assert port.rfc2217 == ("0.0.0.0", 4001)
    assert port.rfc2217_insecure_network and port.rfc2217_takeover


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('rfc2217 = "4001"\n', "ports.lab.rfc2217: '4001' is not host:port"),
        ("rfc2217 = 4001\n", "ports.lab.rfc2217: expected host:port, got 4001"),
        ('rfc2217 = "127.0.0.1:4001"\nrfc2217_takeover = "yes"\n',
         "ports.lab.rfc2217_takeover: expected true or false"),
    ],
)  # fmt: skip
def test_malformed_values_name_the_key(tmp_path: Path, body: str, problem: str) -> None:
    (line,) = problems(write(tmp_path, body))
    assert line.startswith(problem), line


def test_an_endpoint_on_a_taken_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\nlisten = ["0.0.0.0:8443"]\n'
        '[ports.a]\ndevice = "/dev/a"\nrfc2217 = "127.0.0.1:8443"\n'
        '[ports.b]\ndevice = "/dev/b"\nrfc2217 = "127.0.0.1:4001"\n'
        '[ports.c]\ndevice = "/dev/c"\nrfc2217 = "127.0.0.1:4001"\n'
        '[ports.d]\ndevice = "/dev/d"\nrfc2217 = "127.0.0.1:0"\n'  # any free port: no clash
        '[ports.e]\ndevice = "/dev/e"\nrfc2217 = "127.0.0.1:0"\n'
    )
    assert problems(path) == [
        "ports.a.rfc2217: 127.0.0.1:8443 is already taken by server.listen (0.0.0.0:8443)",
        "ports.c.rfc2217: 127.0.0.1:4001 is already taken by ports.b.rfc2217 (127.0.0.1:4001)",
    ]


def test_check_config_refuses_a_network_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, 'rfc2217 = "0.0.0.0:4001"\n')
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert done.returncode == 2
    assert f"{path}: ports.lab.rfc2217: 0.0.0.0 is not a loopback address" in done.stderr
    good = write(tmp_path, 'rfc2217 = "127.0.0.1:4001"\n')
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr
