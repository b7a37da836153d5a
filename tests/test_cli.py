"""The `serial-bridge` command as a user runs it: admin, config checks, `connect` in a pty."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import termios
import time
from asyncio.subprocess import Process
from pathlib import Path

from tests.conftest import Bridge, PtyDevice

CLI = [sys.executable, "-m", "bridge"]


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[ports.lab]\ndevice = "{tmp_path / "tty"}"\n{body}'
    )
    return path


def test_serve_refuses_without_users(tmp_path: Path) -> None:
    result = run("serve", "--config", str(write_config(tmp_path)))
    assert result.returncode == 1
    assert "serial-bridge user add" in result.stderr


def test_check_config_names_file_and_key(tmp_path: Path) -> None:
    good = write_config(tmp_path)
    assert run("check-config", "--config", str(good)).returncode == 0
    bad = write_config(tmp_path, "baud = 0\n")
    result = run("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: ports.lab.baud: expected a positive integer" in result.stderr


def test_user_and_token_commands(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    added = run(
        "user",
        "add",
        "alice",
        "--role",
        "operator",
        "--ports",
        "lab",
        "--password-stdin",
        "--config",
        cfg,
        stdin="correct horse\n",
    )
    assert added.returncode == 0, added.stderr
    assert (
        run("user", "add", "bob", "--password-stdin", "--config", cfg, stdin="short\n").returncode
        == 1
    )
    for empty in ("", ",", " "):  # a list naming no port is an error, never every port (#18.17)
        refused = run(
            "user", "add", "carol", "--ports", empty, "--password-stdin", "--config", cfg,
            stdin="correct horse\n",
        )  # fmt: skip
        assert refused.returncode == 1 and "--ports names no port" in refused.stderr
    assert "warning" not in added.stderr
    typo = run(
        "user", "add", "dave", "--ports", "lab,node9", "--password-stdin", "--config", cfg,
        stdin="correct horse\n",
    )  # fmt: skip
    assert typo.returncode == 0  # a port may be added to the config later; access fails closed
    assert f"warning: no port node9 in {cfg} (its ports: lab)" in typo.stderr
    moved = run("user", "set", "dave", "--ports", "node9", "--config", cfg)
    assert moved.returncode == 0 and "warning: no port node9" in moved.stderr
    listed = run("user", "list", "--config", cfg)
    assert "alice\toperator\tports=lab" in listed.stdout and "bob" not in listed.stdout
    assert "carol" not in listed.stdout
    users_file = tmp_path / "state" / "users.json"
    assert users_file.stat().st_mode & 0o777 == 0o600
    assert "correct horse" not in users_file.read_text()
    token = run("token", "create", "alice", "--label", "ci", "--config", cfg)
    secret = token.stdout.strip()
    assert token.returncode == 0 and secret.startswith("sbt_")
    assert secret not in (tmp_path / "state" / "tokens.json").read_text()
    assert run("token", "revoke", "ci", "--config", cfg).returncode == 0
    assert run("user", "del", "alice", "--config", cfg).returncode == 0
    assert "alice" not in run("user", "list", "--config", cfg).stdout


class PtyScreen:
    """A terminal for a CLI subprocess: the test types into and reads from the pty master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.seen = bytearray()

    async def until(self, needle: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            assert time.monotonic() < deadline, f"{needle!r} not on screen: {bytes(self.seen)!r}"
            try:
                self.seen.extend(os.read(self.master, 4096))
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def connect(self, bridge: Bridge, token: str, home: Path, *args: str) -> Process:
        """`serial-bridge connect` to port `lab`, the certificate not pinned."""
        env = {**os.environ, "SERIAL_BRIDGE_TOKEN": token, "XDG_CONFIG_HOME": str(home)}
        return await asyncio.create_subprocess_exec(
            *CLI,
            "connect",
            f"{bridge.base}/lab",
            *args,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
        )

    async def connect_to(
        self, bridge: Bridge, port: str, token: str, home: Path, *args: str
    ) -> Process:
        """`serial-bridge connect` to `port` with the certificate pinned."""
        env = {**os.environ, "SERIAL_BRIDGE_TOKEN": token, "XDG_CONFIG_HOME": str(home)}
        return await asyncio.create_subprocess_exec(
            *CLI,
            "connect",
            f"{bridge.base}/{port}",
            "--fingerprint",
            bridge.daemon.fingerprint,
            *args,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
        )

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


async def test_connect_types_reads_and_restores_the_terminal(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    screen = PtyScreen()
    before = termios.tcgetattr(screen.slave)
    proc = await screen.connect(bridge, bridge.tokens["operator"], tmp_path / "xdg")
    await screen.until(b"connected to lab (rw)")
    assert b"first connection" in screen.seen  # trust on first use, announced
    screen.type(b"echo hello\r")
    await pty_device.read_until(lambda b: b"echo hello\r" in b)
    pty_device.write(b"echo hello\r\nhello\r\n$ ")
    await screen.until(b"hello\r\n$ ")
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert termios.tcgetattr(screen.slave) == before
    known = (tmp_path / "xdg" / "serial-bridge" / "known_hosts").read_text()
    assert bridge.daemon.fingerprint in known
    screen.close()


async def test_connect_refuses_a_changed_certificate(bridge: Bridge, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"{bridge.base.removeprefix('https://')} SHA256:{'ab' * 32}\n")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "sysrq",
        f"{bridge.base}/lab",
        "h",
        "--known-hosts",
        str(known),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERIAL_BRIDGE_TOKEN": bridge.tokens["operator"]},
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"REFUSED" in err


async def test_connect_reconnects_and_resumes_from_its_offset(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    screen = PtyScreen()
    proc = await screen.connect(
        bridge,
        bridge.tokens["viewer"],
        tmp_path / "xdg",
        "--read-only",
        "--fingerprint",
        bridge.daemon.fingerprint,
    )
    await screen.until(b"connected to lab (ro)")
    pty_device.write(b"line one\r\n")
    await screen.until(b"line one\r\n")
    state = bridge.daemon.state
    assert state is not None
    for session in list(state.sockets.values()):
        await session.ws.close(code=1012, message=b"restarting")
    pty_device.write(b"printed while the link was down\r\n")
    await screen.until(b"reconnecting")
    await screen.until(b"printed while the link was down\r\n")
    assert screen.seen.count(b"line one") == 1, "resumed from the wrong offset (repeated output)"
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    screen.close()


async def test_cli_login_with_a_one_time_code(bridge: Bridge, tmp_path: Path) -> None:
    from bridge.access.store import UserStore
    from bridge.access.totp import code_at, new_secret
    from tests.conftest import PASSWORDS

    users = UserStore(bridge.state_dir)
    admin = users.get("admin")
    assert admin is not None
    admin.totp_secret = new_secret()
    users.put(admin)

    async def power_status(stdin: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "power",
            f"{bridge.base}/lab",
            "status",
            "--user",
            "admin",
            "--totp",
            "--password-stdin",
            "--fingerprint",
            bridge.daemon.fingerprint,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 30)
        return proc.returncode or 0, out + err

    code, output = await power_status(f"{PASSWORDS['admin']}\n000000\n")
    assert code == 1 and b"401" in output
    code, output = await power_status(
        f"{PASSWORDS['admin']}\n{code_at(admin.totp_secret, time.time())}\n"
    )
    assert code == 0, output
    assert b'"power": "unknown"' in output


def test_demo_banner_prints_a_connect_command_that_runs(tmp_path: Path) -> None:
    """The banner's command works from a second terminal, where `.venv/bin` is not on the PATH."""
    demo = subprocess.Popen(
        [*CLI, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    try:
        assert demo.stdout is not None
        line = ""
        for line in demo.stdout:  # ends when the demo exits: bounded
            if "terminal:" in line:
                break
        command, _, rest = line.split("terminal:", 1)[1].strip().partition(" connect https://")
        assert rest.startswith("127.0.0.1:") and "--user admin --fingerprint SHA256:" in rest
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)  # waits and closes the pipe
    version = subprocess.run(
        f"{command} --version",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert version.returncode == 0 and version.stdout.startswith("serial-bridge "), version.stderr
