"""The `serial-bridge` command as a user runs it: admin, config checks, `connect` in a pty."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import re
import signal
import subprocess
import sys
import termios
import time
from asyncio.subprocess import Process
from pathlib import Path

from bridge.access.throttle import SERVER_LIMITS
from bridge.client.http import KEEPALIVE
from tests.conftest import Bridge, BridgeFactory, PtyDevice, wait_for

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


def own_terminal(fd: int) -> None:  # in the child: the pty `fd` becomes its controlling tty
    if os.getsid(0) != os.getpid():  # uvloop runs preexec_fn before start_new_session's setsid
        os.setsid()  # (and before stdin/stdout are the pty: hence `fd`, the pty itself)
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


class PtyScreen:
    """A terminal for a CLI subprocess: the test types into and reads from the pty master. The
    pty is the subprocess's controlling terminal (/dev/tty), in a session of its own, so what the
    CLI asks there (a first-seen bridge, a password) lands on this screen, never on the test
    runner's terminal."""

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
            start_new_session=True,
            preexec_fn=functools.partial(own_terminal, self.slave),
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
            start_new_session=True,
            preexec_fn=functools.partial(own_terminal, self.slave),
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
    await screen.until(b"Trust this bridge and continue (yes/no/[fingerprint])? ")
    assert bridge.daemon.fingerprint.encode() in screen.seen  # shown before anything is sent
    screen.type(b"yes\r")
    await screen.until(b"connected to lab (rw)")
    assert b"trusting" in screen.seen and b"from now on" in screen.seen
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


def test_the_client_lets_idle_connections_go_before_the_bridge_closes_them() -> None:
    """aiohttp does not retry a POST that went out on a kept-alive connection the server was
    closing: with equal idle timeouts (aiohttp's default is the bridge's 15 s) a lab script's
    power() after 15 s of quiet could fail now and then. The client's is shorter."""
    assert SERVER_LIMITS["keepalive_timeout"] > KEEPALIVE


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
    for session in state.consoles:
        await session.ws.close(code=1012, message=b"restarting")  # type: ignore[attr-defined]
    pty_device.write(b"printed while the link was down\r\n")
    await screen.until(b"reconnecting")
    await screen.until(b"printed while the link was down\r\n")
    assert screen.seen.count(b"line one") == 1, "resumed from the wrong offset (repeated output)"
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    screen.close()


async def test_connect_stops_when_the_bridge_ends_the_session(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    """A session the bridge ends (its credential revoked: close 1008) is not reconnected: connect
    says so and exits 1."""
    screen = PtyScreen()
    proc = await screen.connect(
        bridge, bridge.tokens["viewer"], tmp_path / "xdg", "--read-only",
        "--fingerprint", bridge.daemon.fingerprint,
    )  # fmt: skip
    await screen.until(b"connected to lab (ro)")
    assert bridge.daemon.state is not None
    consoles = bridge.daemon.state.consoles
    await consoles.end(list(consoles), "revoked")
    assert await asyncio.wait_for(proc.wait(), 20) == 1
    await screen.until(b"the session ended")
    assert b"reconnecting" not in screen.seen
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
    assert output.strip() == b"lab: power is unknown"


def test_demo_banner_prints_a_connect_command_that_runs(tmp_path: Path) -> None:
    """The banner's command works from a second terminal, where `.venv/bin` is not on the PATH.
    A Ctrl-C sent as soon as the banner shows stops the demo, also when it was started with
    SIGINT ignored, as a shell starts a background job (it was lost when it came before the
    demo's handler: the demo ran on, seen in CI)."""
    demo = subprocess.Popen(
        [*CLI, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
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
        try:
            demo.communicate(timeout=30)  # waits and closes the pipe
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate()
            raise AssertionError("the demo did not stop on SIGINT") from None
    version = subprocess.run(
        f"{command} --version",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert version.returncode == 0 and version.stdout.startswith("serial-bridge "), version.stderr


SLOW_START = """
import asyncio, signal, sys
from bridge.service import daemon
from bridge.service.cli import main

start = daemon.Daemon.start

async def slow_start(self, *args, **kwargs):
    print("starting", file=sys.stderr, flush=True)
    await asyncio.sleep(1.0)  # a Ctrl-C arrives now, while the bridge starts
    return await start(self, *args, **kwargs)

daemon.Daemon.start = slow_start
sys.exit(main(["demo", "--port", "0"]))
"""


def test_a_ctrl_c_while_the_demo_starts_stops_it() -> None:
    """SIGINT ignored as a shell's background job has it, and a slow start (forced by patching
    Daemon.start) to send it in: the demo stops once started, cleanly, instead of running on."""
    demo = subprocess.Popen(
        [sys.executable, "-c", SLOW_START],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert demo.stderr is not None
        for line in demo.stderr:  # ends when the demo exits: bounded
            if line.strip() == "starting":
                break
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.communicate()
        raise AssertionError("a Ctrl-C sent while the demo started was lost") from None
    assert demo.returncode == 0, err
    assert "serial-bridge demo is running" in out and "stopping the demo" in err
    assert "Traceback" not in err


async def test_a_first_seen_bridge_is_confirmed_before_the_password_is_asked(
    bridge: Bridge, tmp_path: Path
) -> None:
    from tests.conftest import PASSWORDS

    home = tmp_path / "xdg"
    known = home / "serial-bridge" / "known_hosts"
    screen = PtyScreen()
    proc = await screen.connect(bridge, "", home, "--user", "operator")
    await screen.until(b"(yes/no/[fingerprint])? ")
    screen.type(b"no\r")
    assert await asyncio.wait_for(proc.wait(), 20) == 1
    await screen.until(b"not trusted; nothing was sent")
    assert b"Password" not in screen.seen and not known.exists()
    screen.close()

    # pasting the fingerprint one has checked is a yes; then, and only then, the password
    screen = PtyScreen()
    proc = await screen.connect(bridge, "", home, "--user", "operator")
    await screen.until(b"(yes/no/[fingerprint])? ")
    assert b"Password" not in screen.seen
    screen.type(bridge.daemon.fingerprint.encode() + b"\r")
    await screen.until(b"Password for operator: ")
    screen.type(PASSWORDS["operator"].encode() + b"\r")
    await screen.until(b"connected to lab (rw)")
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert bridge.daemon.fingerprint in known.read_text()
    screen.close()


async def cli(*args: str, env: dict[str, str], stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """The CLI with no terminal at all (a new session, pipes): as cron or CI runs it."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out, err


async def test_without_a_terminal_a_first_seen_bridge_needs_a_pin_or_explicit_trust(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    bridge = await bridge_factory(ports={"lab": {"device": "virtual:shell"}})  # takes a BREAK
    port = bridge.daemon.state.ports["lab"]
    await wait_for(lambda: port.online)
    env = {"SERIAL_BRIDGE_TOKEN": bridge.tokens["operator"], "XDG_CONFIG_HOME": str(tmp_path)}
    url = f"{bridge.base}/lab"
    code, out, err = await cli("sysrq", url, "h", env=env)
    assert code == 1 and out == b""
    assert b"no terminal to ask" in err
    assert f"--fingerprint {bridge.daemon.fingerprint}".encode() in err
    assert not (tmp_path / "serial-bridge" / "known_hosts").exists()
    assert port.transport.events == []  # nothing reached the target

    code, out, err = await cli("sysrq", url, "h", "--trust-on-first-use", env=env)
    assert code == 0, err
    assert re.fullmatch(
        rb"lab: SysRq h sent \(BREAK 250 ms \+ key\) by operator at [\d:]{8}\n", out
    )
    assert b"--trust-on-first-use" in err
    assert ("sysrq", "h") in port.transport.events
    # remembered: the next run needs neither, and prints JSON when asked
    code, out, err = await cli("sysrq", url, "h", "--json", env=env)
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["action"], answer["keys"], answer["user"]) == ("sysrq", "h", "operator")


async def test_connect_with_password_stdin_reads_keys_from_the_terminal(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    from tests.conftest import PASSWORDS

    password = PASSWORDS["operator"].encode() + b"\n"
    args = ["connect", f"{bridge.base}/lab", "--user", "operator", "--password-stdin"]
    args += ["--fingerprint", bridge.daemon.fingerprint]
    code, _out, err = await cli(*args, env={}, stdin=password)  # no terminal: refused, clearly
    assert code == 1
    assert b"--password-stdin reads your keys from the terminal, and there is none" in err

    screen = PtyScreen()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=screen.slave,
        stderr=screen.slave,
        start_new_session=True,
        preexec_fn=functools.partial(own_terminal, screen.slave),
    )
    assert proc.stdin is not None
    proc.stdin.write(password)
    proc.stdin.close()
    await screen.until(b"connected to lab (rw)")
    screen.type(b"echo typed\r")
    await pty_device.read_until(lambda b: b"echo typed\r" in b)
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    screen.close()


async def test_a_viewer_is_told_it_watches_read_only_without_an_error(
    bridge: Bridge, tmp_path: Path
) -> None:
    screen = PtyScreen()
    proc = await screen.connect_to(bridge, "lab", bridge.tokens["viewer"], tmp_path / "xdg")
    await screen.until(b"connected to lab (ro: the viewer role may only watch); ~? for help")
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert b"error" not in screen.seen
    screen.close()


def test_action_answers_read_as_one_line() -> None:
    from bridge.client.results import describe

    at = time.mktime((2026, 11, 23, 14, 2, 11, 0, 0, -1))
    who = {"port": "node2", "user": "alice", "time": at}
    assert (
        describe({**who, "action": "sysrq", "keys": "reisub", "interval_ms": 1000, "break_ms": 250})
        == "node2: SysRq r e i s u b sent (BREAK 250 ms + key, 1000 ms apart) by alice at 14:02:11"
    )
    nmi = {**who, "action": "nmi", "line": "nmi", "gpio": 17, "pulse_ms": 200}
    assert describe(nmi) == "node2: NMI done (GPIO 17 pulsed 200 ms) by alice at 14:02:11"
    assert describe({**who, "action": "reset", "qmp": "system_reset"}) == (
        "node2: reset done (QMP system_reset) by alice at 14:02:11"
    )
    on = {**who, "action": "on", "gpio": 22, "pulse_ms": 0, "power": "on", "note": "already on"}
    assert describe(on) == (
        "node2: power on done (GPIO 22 not pulsed); power is on by alice at 14:02:11 — already on"
    )
    status = {**who, "action": "status", "power": "off", "qemu_status": "shutdown"}
    assert describe(status) == "node2: power is off (QEMU: shutdown)"
