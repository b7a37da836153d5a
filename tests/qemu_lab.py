"""Lab tools against the shared QEMU guest of tests/test_qemu_system.py (one boot for the suite):
pyserial's `rfc2217://` client (a command, then send_break + `h` as SysRq), the example lab test
under the pytest plugin (reset, shell, command), and the pexpect console resuming after the
bridge drops its link. Each step takes the screen offset it starts at and returns where it ended.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import serial

from bridge.client.expect import BridgeConsole
from bridge.client.http import KnownHosts
from tests.conftest import Bridge
from tests.qemu_guest import PROMPT

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "test_lab_example.py"


class Screen(Protocol):
    async def wait_for(self, text: str, start: int, timeout: float = ...) -> int: ...


def _pyserial_session(url: str) -> bytes:
    """What a lab script does: open, run a command, BREAK + h (SysRq help), close."""
    ser = serial.serial_for_url(url, baudrate=115200, timeout=10)
    seen = bytearray()

    def until(needle: bytes) -> None:
        deadline = time.monotonic() + 10
        while needle not in seen and time.monotonic() < deadline:
            seen.extend(ser.read(ser.in_waiting or 1))
        assert needle in seen, f"{needle!r} not read through rfc2217://; got {bytes(seen[-500:])!r}"

    try:
        ser.write(b"echo RF$((40+2))\r")
        until(b"RF42")
        until(PROMPT.encode())
        ser.send_break(0.25)
        ser.write(b"h")
        until(b"sysrq: HELP")
    finally:
        ser.close()
    return bytes(seen)


async def rfc2217_step(bridge: Bridge, port: str, screen: Screen, at: int) -> int:
    assert bridge.daemon.rfc2217 is not None
    host, number = bridge.daemon.rfc2217.endpoints[port].address
    seen = await asyncio.to_thread(_pyserial_session, f"rfc2217://{host}:{number}")
    assert b"\xff" not in seen  # telnet commands never leak into the data
    at = await screen.wait_for("RF42", at)
    return await screen.wait_for("sysrq: HELP", at)


def plugin_args() -> list[str]:
    """Load the plugin by name when the installed package does not register it already."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "serial_bridge" in installed else ["-p", "bridge.client.pytest_plugin"]


async def example_test_step(bridge: Bridge, port: str, screen: Screen, at: int, env: Any) -> int:
    """docs/examples/test_lab_example.py, run by pytest with the serial_console fixture set from
    the environment: it resets the guest, waits for the shell and checks a command's answer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider",
        *plugin_args(), "--serial-bridge-timeout", "20",
        env={
            **env,
            "SERIAL_BRIDGE_URL": f"{bridge.base}/{port}",
            "SERIAL_BRIDGE_TOKEN": bridge.tokens["admin"],
            "SERIAL_BRIDGE_FINGERPRINT": bridge.daemon.fingerprint,
            "LAB_SHELL_PROMPT": PROMPT,
            "LAB_BOOT_TIMEOUT": "60",
        },
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    assert "1 passed" in out.decode()
    at = await screen.wait_for("Linux version", at, 60)
    return await screen.wait_for("LAB42", at)


def _resume(console: BridgeConsole, drop: Any) -> None:
    console.sendline("sleep 1; echo DROP$((3+4))")
    drop()  # the bridge closes this console's websocket while the guest is still sleeping
    console.expect(r"DROP7\r\n", timeout=20)
    console.expect_exact(PROMPT)


async def resume_step(bridge: Bridge, port: str, screen: Screen, at: int, tmp_path: Path) -> int:
    """The pexpect console keeps reading across a link the bridge drops: the answer printed
    meanwhile arrives once, and nothing is lost (no gap)."""
    state = bridge.daemon.state
    assert state is not None
    loop = asyncio.get_running_loop()
    console = await asyncio.to_thread(
        BridgeConsole,
        f"{bridge.base}/{port}",
        token=bridge.tokens["admin"],
        fingerprint=bridge.daemon.fingerprint,
        known_hosts=KnownHosts(tmp_path / "known_hosts"),
        takeover=True,
        timeout=20,
    )

    def drop() -> None:
        mine = state.consoles.of(user="admin")
        ending = state.consoles.end(mine, "restart", going_away=True)
        asyncio.run_coroutine_threadsafe(ending, loop).result(10)

    console.logfile_read = io.BytesIO()
    try:
        await asyncio.to_thread(_resume, console, drop)
        assert console.reconnects == 1 and console.gaps == []
        assert console.logfile_read.getvalue().count(b"DROP7") == 1  # once: none lost, none twice
    finally:
        await asyncio.to_thread(console.close)
    return await screen.wait_for("DROP7", at)


def lab_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "SERIAL_BRIDGE_TOKEN"} | {
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))
    }
