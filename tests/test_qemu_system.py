"""System test: the whole bridge in front of a real Linux kernel, used only as a user would.

A QEMU guest (Debian's cloud kernel, busybox initramfs; bridge/hw/qemu_target.py) is one port of a
real daemon: ttyS0 on QEMU's telnet chardev, the control lines through QMP. Everything below goes
through the bridge's public API (websocket, HTTP, the `serial-bridge` CLI): the boot log, a shell
command, SysRq `h` (websocket) and `t` (HTTP) and `h` again (CLI), NMI, reset and the second boot,
SysRq `o` (power off) and power on (a third boot), the lab tools (tests/qemu_lab.py: pyserial's
rfc2217:// client, the example lab test under the pytest plugin with a fifth boot, the pexpect
console across a dropped link) after a panic (SysRq c) that raises the kernel-panic alert, and
then the same story in the port's history (`/log` as text and as jsonl with event markers). Plain
OpenSSH is one of the users: through the SSH door, `~B` then `h` is a SysRq.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Bridge, BridgeFactory, WsReader
from tests.qemu_guest import BOOT_MARKER, PROMPT, QemuGuest, require_qemu
from tests.qemu_lab import example_test_step, lab_env, resume_step, rfc2217_step
from tests.ssh_helpers import keygen, require_openssh, ssh_target, user_keys
from tests.tmux import TmuxPane, require_tmux

BOOT_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0
PORT = "vm"
CLI = [sys.executable, "-m", "bridge"]


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[QemuGuest]:
    require_qemu()
    async with QemuGuest(tmp_path / "guest") as running:
        yield running


class Screen:
    """What a console websocket showed, searchable from an offset into it."""

    def __init__(self, reader: WsReader) -> None:
        self.reader = reader

    @property
    def end(self) -> int:
        return len(self.reader.data)

    async def wait_for(self, text: str, start: int, timeout: float = STEP_TIMEOUT) -> int:
        """Offset just after the first `text` at or after `start`; fails showing the output."""
        needle = text.encode()
        try:
            await self.reader.until(lambda r: r.data.find(needle, start) >= 0, timeout)
        except AssertionError:
            tail = bytes(self.reader.data[max(start, self.end - 1500) :])
            raise AssertionError(
                f"{text!r} not seen within {timeout} s; output:\n{tail.decode(errors='replace')}"
            ) from None
        return self.reader.data.find(needle, start) + len(needle)


async def post(
    http: aiohttp.ClientSession, bridge: Bridge, what: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{bridge.base}/api/ports/{PORT}/{what}", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 200, (what, resp.status, answer)
        assert isinstance(answer, dict)
        return answer


async def wait_online(http: aiohttp.ClientSession, bridge: Bridge) -> None:
    """Poll GET /api/ports (the public view) until the port says online."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            async with http.get(f"{bridge.base}/api/ports") as resp:
                ports = {p["name"]: p for p in await resp.json()}
            if ports[PORT]["online"]:
                return
            await asyncio.sleep(0.05)


@pytest.mark.qemu
@pytest.mark.filterwarnings("ignore:setDaemon\\(\\) is deprecated:DeprecationWarning")  # pyserial
@pytest.mark.filterwarnings("ignore:setName\\(\\) is deprecated:DeprecationWarning")
async def test_real_kernel_through_the_bridge(
    guest: QemuGuest, bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    bridge = await bridge_factory(
        ports={
            PORT: {
                "device": guest.telnet_url,
                "lines": {"qmp": guest.qmp_path},
                "rfc2217": "127.0.0.1:0",
                "rfc2217_takeover": True,
            }
        },
        log={"enabled": True, "size": "1MiB", "flush_interval": "1s"},
        ssh={"listen": ["127.0.0.1:0"]},
    )
    timings: dict[str, float] = {}
    async with (
        bridge.session("operator") as operator,
        bridge.session("admin") as admin,
        bridge.session("viewer") as viewer,
    ):
        await wait_online(viewer, bridge)
        ws = await bridge.ws(operator, PORT, mode="rw", **{"from": "0"})
        reader = WsReader(ws)
        hello = await reader.message("hello")
        assert hello["mode"] == "rw"
        screen = Screen(reader)

        # Boot: the kernel's first line, our init's marker, the shell prompt.
        started = time.monotonic()
        await guest.cont()
        at = await screen.wait_for("Linux version", 0, BOOT_TIMEOUT)
        first_boot = at
        at = await screen.wait_for(BOOT_MARKER, at, BOOT_TIMEOUT)
        at = await screen.wait_for(PROMPT, at, BOOT_TIMEOUT)
        timings["cont to shell"] = time.monotonic() - started
        power = await post(admin, bridge, "power", {"action": "status"})
        assert power["power"] == "on" and power["qemu_status"] == "running"

        # A command typed on the websocket; match the computed answer, not the echo.
        await ws.send_bytes(b"echo RT$((40+2))\r")
        at = await screen.wait_for("RT42", at)
        at = await screen.wait_for(PROMPT, at)

        # SysRq h through the websocket message.
        sent = time.monotonic()
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "h"}))
        at = await screen.wait_for("sysrq: HELP", at)
        timings["ws sysrq h -> HELP"] = time.monotonic() - sent
        result = await reader.message("result", action="sysrq")
        assert result["keys"] == "h" and result["user"] == "operator"
        assert result["break_ms"] == 250

        # SysRq t through the HTTP API: the kernel dumps its tasks.
        sent = time.monotonic()
        answer = await post(operator, bridge, "sysrq", {"keys": "T"})
        assert answer["action"] == "sysrq" and answer["keys"] == "t"
        at = await screen.wait_for("sysrq: Show State", at)
        timings["POST sysrq t -> Show State"] = time.monotonic() - sent
        at = await screen.wait_for("task:", at)

        # SysRq h through the CLI, as a script would run it.
        env = {
            **os.environ,
            "SERIAL_BRIDGE_TOKEN": bridge.tokens["operator"],
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        }
        sent = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "sysrq",
            f"{bridge.base}/{PORT}",
            "h",
            "--json",
            "--fingerprint",
            bridge.daemon.fingerprint,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["keys"] == "h"
        at = await screen.wait_for("sysrq: HELP", at)
        timings["CLI sysrq h -> HELP"] = time.monotonic() - sent

        # `serial-bridge connect` in a real terminal (tmux answers the ESC[6n busybox prints after
        # each prompt): Enter, then ~B h is a SysRq, not text for the shell; ~. disconnects and
        # leaves the terminal as it was.
        at = await connect_in_a_terminal(bridge, env, screen, at, tmp_path / "tmux")
        await ws.send_str(json.dumps({"type": "takeover"}))  # connect took the lease
        await reader.message("status", event="takeover")

        # Plain OpenSSH through the SSH door: take the lease at the escape prompt, Enter, then
        # ~B (an RFC 4335 break request) and h: the kernel takes the h as SysRq.
        sent = time.monotonic()
        at = await ssh_in_a_terminal(bridge, screen, at, tmp_path / "ssh")
        timings["ssh ~B h -> HELP"] = time.monotonic() - sent
        seen = len(reader.messages)
        await ws.send_str(json.dumps({"type": "takeover"}))  # the ssh session had the lease
        await reader.until(lambda r: any(m.get("mode") == "rw" for m in r.messages[seen:]))

        # NMI through the HTTP API: the kernel reports an NMI nobody claimed.
        sent = time.monotonic()
        answer = await post(admin, bridge, "nmi", {})
        assert answer["action"] == "nmi" and answer["qmp"] == "inject-nmi"
        at = await screen.wait_for("NMI received for unknown reason", at)
        timings["POST nmi -> NMI received"] = time.monotonic() - sent
        nmi_seen = at

        # Reset through the power endpoint: the boot log starts again, the shell comes back.
        sent = time.monotonic()
        answer = await post(admin, bridge, "power", {"action": "reset"})
        assert answer["action"] == "reset" and answer["qmp"] == "system_reset"
        at = await screen.wait_for("Linux version", at, BOOT_TIMEOUT)
        second_boot = at
        at = await screen.wait_for(PROMPT, at, BOOT_TIMEOUT)
        timings["POST reset -> shell"] = time.monotonic() - sent
        await ws.send_bytes(b"echo RT$((50+5))\r")
        at = await screen.wait_for("RT55", at)
        assert first_boot < nmi_seen < second_boot

        # SysRq o powers the guest off (QEMU stays, -no-shutdown); power on boots it again.
        await post(operator, bridge, "sysrq", {"keys": "o"})
        at = await screen.wait_for("reboot: Power down", at)
        async with asyncio.timeout(STEP_TIMEOUT):
            while (await post(viewer, bridge, "power", {"action": "status"}))["power"] != "off":
                await asyncio.sleep(0.1)
        answer = await post(admin, bridge, "power", {"action": "on"})
        assert (answer["action"], answer["power"]) == ("on", "on")
        at = await screen.wait_for("Linux version", at, BOOT_TIMEOUT)
        at = await screen.wait_for(PROMPT, at, BOOT_TIMEOUT)

        # A real panic (SysRq c): the shipped kernel-panic alert reaches the open console;
        # panic=-1 reboots the guest (a fourth boot; the example lab test's reset is the fifth).
        await post(operator, bridge, "sysrq", {"keys": "c"})
        at = await screen.wait_for("Kernel panic - not syncing", at)
        alert = await reader.message("event", event="alert", rule="kernel-panic")
        assert alert["severity"] == "critical" and "sysrq triggered crash" in alert["line"]
        at = await screen.wait_for("Linux version", at, BOOT_TIMEOUT)
        at = await screen.wait_for(PROMPT, at, BOOT_TIMEOUT)

        # Lab tools (tests/qemu_lab.py): pyserial's rfc2217:// client types a command and sends
        # BREAK + h (it takes the lease over: rfc2217_takeover); the example lab test resets the
        # guest through the pytest plugin (a fifth boot) and checks a command's answer; the
        # pexpect console reads on across a link the bridge drops.
        sent = time.monotonic()
        at = await rfc2217_step(bridge, PORT, screen, at)
        timings["rfc2217 command + SysRq"] = time.monotonic() - sent
        sent = time.monotonic()
        at = await example_test_step(bridge, PORT, screen, at, lab_env(env))
        timings["example lab test (reset, shell, command)"] = time.monotonic() - sent
        at = await resume_step(bridge, PORT, screen, at, tmp_path)
        await ws.close()

        # The same story in the port's history, as text ...
        async with viewer.get(
            f"{bridge.base}/api/ports/{PORT}/log", params={"format": "text"}
        ) as resp:
            assert resp.status == 200
            text = await resp.text()
        boots = [m.start() for m in re.finditer("Linux version", text)]
        assert len(boots) == 5, "\n----\n".join(text[b - 300 : b + 200] for b in boots)
        for needle in ("RT42", "sysrq: HELP", "sysrq: Show State", "NMI received", "RT55"):
            assert needle in text, needle
        assert boots[0] < text.index("NMI received") < boots[1]
        assert text.index("sysrq: HELP") < boots[1]

        # ... and as jsonl, with a marker per action naming who did it.
        async with viewer.get(
            f"{bridge.base}/api/ports/{PORT}/log", params={"format": "jsonl"}
        ) as resp:
            assert resp.status == 200
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        async with viewer.get(
            f"{bridge.base}/api/ports/{PORT}/log", params={"format": "raw"}
        ) as resp:
            raw_from = int(resp.headers["X-Log-From"])
            raw = await resp.read()
    markers = [(m["event"], m.get("user"), m.get("keys")) for m in lines if "event" in m]
    actions = [m for m in markers if m[0] in ("sysrq", "nmi", "reset")]
    assert ("power", "admin", None) in markers
    assert actions == [
        ("sysrq", "operator", "h"),
        ("sysrq", "operator", "t"),
        ("sysrq", "operator", "h"),
        ("nmi", "admin", None),
        ("reset", "admin", None),
        ("sysrq", "operator", "o"),
        ("sysrq", "operator", "c"),
        ("reset", "admin", None),  # the example lab test
    ]
    (panic,) = [m for m in lines if m.get("event") == "alert" and m["rule"] == "kernel-panic"]
    assert b"Kernel panic - not syncing" in raw[panic["at"] - raw_from : panic["offset"] - raw_from]
    assert markers[0][0] == "online"
    # The reset marker sits at the right place in the byte stream: after the NMI report, before
    # the second boot. (The NMI marker may follow its report: the kernel answers within
    # milliseconds, the marker is written once QMP has confirmed the command.)
    reset_at = next(m["offset"] for m in lines if m.get("event") == "reset")
    assert raw_from + raw.index(b"NMI received") < reset_at
    assert raw_from + raw.rindex(b"Linux version") >= reset_at
    print("timings:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})


async def ssh_in_a_terminal(bridge: Bridge, screen: Screen, at: int, workdir: Path) -> int:
    require_openssh()
    workdir.mkdir()
    key = keygen(workdir / "id_operator")
    user_keys(bridge, {"operator": key})
    door = await ssh_target(bridge, workdir)
    async with door.terminal(key, f"operator:{PORT}") as term:
        seen = await term.until(b"read-only: operator is writing")  # the websocket's lease
        term.type(b"\x1d" + b"takeover\r")  # Ctrl-]: the bridge's command prompt
        seen = await term.until(b"[y/N] ", seen)
        term.type(b"y\r")
        seen = await term.until(b"you have the write lease", seen)
        term.type(b"\r")
        at = await screen.wait_for(PROMPT, at)
        term.type(b"~B")  # after Enter, as every OpenSSH escape
        term.type(b"h")
        at = await screen.wait_for("sysrq: HELP", at)
        await term.until(b"sysrq: HELP", seen)
        term.type(b"\r~.")
        await term.wait()
    assert b"~B" not in bytes(screen.reader.data), "the escape reached the shell as text"
    return at


async def connect_in_a_terminal(
    bridge: Bridge, env: dict[str, str], screen: Screen, at: int, workdir: Path
) -> int:
    require_tmux()
    pane = TmuxPane(workdir)
    connect = shlex.join(
        [*CLI, "connect", f"{bridge.base}/{PORT}", "--takeover", "--fingerprint",
         bridge.daemon.fingerprint]
    )  # fmt: skip
    saved = {name: shlex.quote(str(workdir / name)) for name in ("before", "after")}
    script = (
        f"stty -g > {saved['before']}; {connect}; rc=$?; stty -g > {saved['after']}; "
        "echo connect-exit=$rc"
    )
    wanted = ("SERIAL_BRIDGE_TOKEN", "XDG_CONFIG_HOME", "PYTHONPATH", "PATH", "HOME")
    try:
        await pane.start(["sh", "-c", script], {k: env[k] for k in wanted if k in env})
        await pane.until_screen(f"connected to {PORT} (rw)")
        asked = pane.raw().count(b"\x1b[6n")
        await pane.keys("Enter")
        at = await screen.wait_for(PROMPT, at)
        await pane.until_raw(b"\x1b[6n", asked + 1)  # tmux read the query, so it has answered
        await pane.type("~B")
        await pane.type("h")
        at = await screen.wait_for("sysrq: HELP", at)
        await pane.until_screen("sysrq: HELP")
        await pane.keys("Enter")
        at = await screen.wait_for(PROMPT, at)
        await pane.until_raw(b"\x1b[6n", asked + 2)
        await pane.type("~.")
        shown = await pane.until_screen("connect-exit=")
        assert "connect-exit=0" in shown and "[serial-bridge] disconnected" in shown
        before, after = (workdir / "before").read_text(), (workdir / "after").read_text()
        assert before == after, "the terminal was not restored"
    finally:
        await pane.close()
    assert b"~B" not in bytes(screen.reader.data), "the escape reached the shell as text"
    return at


def test_demo_qemu_says_which_packages_are_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [*CLI, "demo", "--qemu", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert "qemu-system-x86_64" in done.stderr
    assert "apt-get install --no-install-recommends qemu-system-x86 busybox-static" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.qemu
async def test_demo_qemu_runs_a_real_kernel_and_stops_it(tmp_path: Path) -> None:
    require_qemu()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "demo",
        "--qemu",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = bytearray()

    async def drain_stderr(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):  # a full pipe would block the demo
            errors.extend(chunk)

    draining = asyncio.create_task(drain_stderr(proc.stderr))
    try:
        banner: dict[str, str] = {}
        async with asyncio.timeout(120):
            while "qemu pid" not in banner:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before printing its banner"
                key, sep, value = line.strip().partition(":")
                if sep:
                    banner[key.strip()] = value.strip().split()[0] if value.strip() else ""
        url, password = banner["browser"].rstrip("/"), banner["password"]
        qemu_pid = int(banner["qemu pid"])
        fp = bytes.fromhex(banner["fingerprint"].removeprefix("SHA256:"))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp)),
            headers={"Origin": url},
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as http:
            async with http.post(
                f"{url}/api/login", json={"username": "admin", "password": password}
            ) as resp:
                assert resp.status == 200
                csrf = (await resp.json())["csrf"]
            http.headers["X-CSRF-Token"] = csrf

            async def history() -> str:
                async with http.get(f"{url}/api/ports/demo/log?format=text") as resp:
                    return await resp.text()

            async def wait_history(needle: str, timeout: float) -> None:
                text = ""
                try:
                    async with asyncio.timeout(timeout):
                        while needle not in (text := await history()):
                            await asyncio.sleep(0.2)
                except TimeoutError:
                    raise AssertionError(
                        f"{needle!r} not in the demo's log within {timeout} s:\n{text[-2000:]}"
                    ) from None

            await wait_history(PROMPT, BOOT_TIMEOUT)
            async with http.post(f"{url}/api/ports/demo/sysrq", json={"keys": "h"}) as resp:
                assert resp.status == 200, await resp.text()
            await wait_history("sysrq: HELP", STEP_TIMEOUT)
            async with http.post(f"{url}/api/ports/demo/nmi") as resp:
                assert resp.status == 200, await resp.text()
            await wait_history("NMI received", STEP_TIMEOUT)
        assert Path(f"/proc/{qemu_pid}").exists()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert not Path(f"/proc/{qemu_pid}").exists(), "QEMU outlived the demo"
    except BaseException:
        print("demo stderr:", errors[-3000:].decode(errors="replace"))
        raise
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await asyncio.wait_for(draining, 10)
