"""`serial-bridge serve` failing to start, as a user runs it: one line naming the key and the cause,
exit status 1, no traceback unless `--verbose`. Real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.access.store import UserStore
from bridge.service.tls import generate_self_signed
from tests.conftest import user_hash

CLI = [sys.executable, "-m", "bridge"]


def serve(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "serve", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line that says why; asserts exit 1 and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("serial-bridge:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A config with one user in its state_dir; tests append to its [server] or [ports]."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    UserStore(state).add("admin", "admin", user_hash("admin"), None)
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nstate_dir = "{state}"\n')
    yield path


def write(path: Path, server: str = 'listen = ["127.0.0.1:0"]', ports: str = "") -> Path:
    head = path.read_text().split("\n")[:2]
    path.write_text("\n".join(head) + f"\n{server}\n{ports}\n")
    return path


def test_gpio_lines_on_a_machine_without_gpio(config: Path, tmp_path: Path) -> None:
    ports = f'[ports.lab]\ndevice = "{tmp_path / "tty"}"\n[ports.lab.lines]\nnmi = {{ gpio = 17 }}'
    write(config, ports=ports)
    no_gpio = {"GPIOZERO_PIN_FACTORY": "no-such-factory"}  # as on a PC: gpiozero finds none
    line = failure_line(serve(config, env=no_gpio))
    assert line.startswith(f"serial-bridge: cannot start: {config}: ports.lab.lines.nmi: GPIO 17: ")
    assert "BadPinFactory" in line and "gpio.pin_factory = 'default'" in line

    verbose = serve(config, "--verbose", env=no_gpio)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert "BadPinFactory" in verbose.stderr.splitlines()[-1]


def test_an_address_in_use(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write(config, f'listen = ["127.0.0.1:0", "127.0.0.1:{port}"]')
        line = failure_line(serve(config))
    assert line.startswith(
        f"serial-bridge: cannot start: {config}: server.listen: 127.0.0.1:{port}: "
        "Address already in use"
    )


def test_a_duplicate_listen_address_is_a_config_error(config: Path) -> None:
    write(config, 'listen = ["127.0.0.1:18443", "127.0.0.1:18443"]')
    result = serve(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{config}: server.listen: 127.0.0.1:18443 is listed twice" in result.stderr
    checked = subprocess.run(
        [*CLI, "check-config", "--config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 2 and "is listed twice" in checked.stderr


def test_an_address_that_is_not_this_machines(config: Path) -> None:
    write(config, 'listen = ["192.0.2.1:8443"]')  # TEST-NET-1: never a local address
    line = failure_line(serve(config))
    assert "server.listen: 192.0.2.1:8443: Cannot assign requested address" in line


def test_unreadable_missing_or_mismatched_tls_files(config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    write(config, f'listen = ["127.0.0.1:0"]\ntls_cert = "{missing}"\ntls_key = "{missing}"')
    line = failure_line(serve(config))
    assert line.endswith(f"{config}: server.tls_cert: {missing}: No such file or directory")

    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    write(config, f'listen = ["127.0.0.1:0"]\ntls_cert = "{not_pem}"\ntls_key = "{not_pem}"')
    assert failure_line(serve(config)).endswith(
        f"server.tls_cert: {not_pem}: not a PEM certificate"
    )

    generate_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["localhost"])
    generate_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["localhost"])
    cert, key = tmp_path / "a.pem", tmp_path / "b.key"
    write(config, f'listen = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{not_pem}"')
    assert failure_line(serve(config)).endswith(f"server.tls_key: {not_pem}: not a PEM private key")
    write(config, f'listen = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{key}"')
    line = failure_line(serve(config))
    assert f"{config}: server.tls_key: {key}: " in line and "KEY_VALUES_MISMATCH" in line

    write(config, f'listen = ["127.0.0.1:0"]\nclient_ca = "{not_pem}"')
    assert failure_line(serve(config)).endswith(
        f"server.client_ca: {not_pem}: not a PEM CA certificate"
    )


def test_a_state_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    not_dir = tmp_path / "file"
    not_dir.write_text("")
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{not_dir}"\n')
    line = failure_line(serve(config))
    assert (
        line
        == f"serial-bridge: cannot start: {config}: server.state_dir: {not_dir}: Not a directory"
    )


def test_a_malformed_device_url(config: Path) -> None:
    """It used to start, then the port's task died silently (a traceback only at shutdown)."""
    write(config, ports='[ports.vm]\ndevice = "telnet://no-port-here"')
    line = failure_line(serve(config))
    assert line == (
        f"serial-bridge: cannot start: {config}: ports.vm.device: 'telnet://no-port-here' is not"
        " a telnet URL (example: telnet://127.0.0.1:2000)"
    )
