"""Recovery playbooks: the files (shipped, site, refused ones) and the runner through the public
API with a pty as the target: it holds the writer lease pinned while it runs, everyone sees its
progress, each step is marked and audited (never the typed text), a failing step says what the
console showed last, and an admin cancels it. Fake GRUBs check the screen it keeps: a slow one
drawing its editor in pieces, one on a UEFI firmware's taller console with CP437 box lines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.console.playbook import KEYS, PlaybookError, available, keystrokes, load_playbook
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for
from tests.ssh_helpers import keygen, ssh_bridge, user_keys

CLI = [sys.executable, "-m", "bridge"]

SITE = {
    "talk": """
description = "Answer a test target"
[params.word]
default = "hello"
pattern = '[a-z]+'
[[steps]]
title = "wait for the prompt"
expect = 'ready> ?$'
[[steps]]
send = "say ${word}<enter>"
[[steps]]
title = "press up until pong"
repeat = "<up>"
until = 'pong'
every = "100ms"
timeout = "10s"
[[steps]]
expect = 'done'
fail = "the target never said done"
timeout = "${wait}"
[params.wait]
default = "10s"
""",
    "slow": """
description = "Waits"
[[steps]]
pause = "1m"
""",
    "menu": """
description = "Wait for a boot menu under a clock that never stops"
[[steps]]
expect = '^Boot Menu'
screen = true
timeout = "3s"
""",
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "playbooks"
    folder.mkdir()
    for name, text in SITE.items():
        (folder / f"{name}.toml").write_text(text)
    return folder


# ---- the files ------------------------------------------------------------------------------


def test_shipped_playbooks_load_with_their_defaults() -> None:
    books = available(None)
    assert {"grub-rescue", "grub-entry", "sysrq-safe-reboot"} <= set(books)
    rescue = books["grub-rescue"]
    assert rescue.arguments({})["arg"] == "systemd.unit=rescue.target"
    assert rescue.arguments({"arg": "systemd.unit=emergency.target"})["restart"] == "restart"
    with pytest.raises(PlaybookError, match="does not match"):
        rescue.arguments({"arg": "x; reboot"})
    with pytest.raises(PlaybookError, match="no parameter"):
        rescue.arguments({"nope": "1"})
    assert keystrokes("<ctrl-e> ${arg}<lt><enter>", {"arg": "<ctrl-x>"}) == b"\x05 <ctrl-x><\r"
    assert KEYS["f10"] == b"\x1b[21~" and KEYS["down"] == b"\x1b[B"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('description = "x"\n[[steps]]\nexpect = "a"\nsend = "b"\n', "exactly one of"),
        ('description = "x"\n[[steps]]\nsend = "<hyper>"\n', "unknown key <hyper>"),
        ('description = "x"\n[[steps]]\naction = "explode"\n', "is not one of"),
        ('description = "x"\n[[steps]]\nsend = "${who}"\n', "not a parameter"),
        (
            'description = "x"\n[params.root_password]\n[[steps]]\nsend = "a"\n',
            "never take secrets",
        ),
        ('description = "x"\n[[steps]]\nexpect = "("\n', "missing \\)"),
        ('description = "x"\n[[steps]]\nrepeat = "a"\n', "needs until, cursor or times"),
        ('description = "x"\n[[steps]]\npause = "soon"\n', "steps\\[0\\].pause"),
    ],
)
def test_bad_playbooks_are_refused_naming_the_step(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PlaybookError, match=problem):
        load_playbook(path)


def test_a_site_playbook_replaces_a_shipped_one_and_a_bad_one_is_left_out(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (site / "grub-entry.toml").write_text(SITE["slow"])
    (site / "broken.toml").write_text("description = 1\n")
    books = available(site)
    assert books["grub-entry"].description == "Waits" and "broken" not in books
    assert "talk" in books and "broken.toml" in caplog.text


# ---- the runner, through the API ------------------------------------------------------------


async def run_playbook(
    http: aiohttp.ClientSession, bridge: Bridge, name: str, args: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    body = {"playbook": name, "args": args or {}}
    async with http.post(f"{bridge.base}/api/ports/lab/rescue", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in resp.content]


async def target(pty: PtyDevice) -> None:
    """The test target: a prompt, then it answers `say WORD` and, on the third up arrow, pong."""
    await pty.awrite(b"booting\r\nready> ")
    await pty.read_until(lambda got: b"say hello\r" in got)
    await pty.awrite(b"say hello\r\nhello\r\n")
    await pty.read_until(lambda got: got.count(b"\x1b[A") >= 3)
    await pty.awrite(b"pong\r\nall done\r\n")


@pytest.fixture
async def lab(bridge_factory: BridgeFactory, pty_device: PtyDevice, site: Path) -> Bridge:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}},
        log={"enabled": True, "size": "256KiB"},
        playbooks={"dir": str(site)},
    )
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    return b


async def test_a_playbook_runs_holding_the_lease_and_everyone_sees_its_steps(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    async with lab.session("admin") as admin, lab.session("operator") as operator:
        async with admin.get(f"{lab.base}/api/playbooks") as resp:
            names = [b["name"] for b in await resp.json()]
        assert {"talk", "grub-rescue"} <= set(names)
        reader = WsReader(await lab.ws(operator, "lab", mode="rw"))
        assert (await reader.message("hello"))["mode"] == "rw"
        running = asyncio.create_task(run_playbook(admin, lab, "talk"))
        step = await reader.message("status", event="playbook")
        answering = asyncio.create_task(target(pty_device))  # it sees output from its start on
        assert step["playbook"]["name"] == "talk" and step["playbook"]["of"] == 4
        assert step["mode"] == "ro" and step["writer"] == "admin"  # the lease went to the run
        await reader.ws.send_str(json.dumps({"type": "takeover"}))
        refused = await reader.message("error")
        assert "playbook holds the write lease" in refused["message"]
        lines = await asyncio.wait_for(running, 30)
        await answering
        done = await reader.message("status", event="playbook-done")
        assert done["playbook"] is None and done["writer"] is None
        await reader.ws.send_str(json.dumps({"type": "takeover"}))  # free again
        await reader.message("status", event="takeover")

        async with admin.get(f"{lab.base}/api/ports/lab/log?format=jsonl") as resp:
            log = [json.loads(x) for x in (await resp.text()).splitlines()]
        async with admin.get(f"{lab.base}/api/audit?port=lab") as resp:
            audit = [e for e in await resp.json() if e["event"].startswith("playbook")]
    assert [x["type"] for x in lines] == ["step"] * 4 + ["result"]
    assert lines[-1]["result"] == "ok" and lines[-1]["playbook"] == "talk"
    assert [x["title"] for x in lines[:4]] == [
        "wait for the prompt", "send keys", "press up until pong", "expect done",
    ]  # fmt: skip
    steps = [x["step"] for x in log if x.get("event") == "playbook-step"]
    assert steps == [1, 2, 3, 4]
    assert [e["event"] for e in audit] == ["playbook"] + ["playbook-step"] * 4 + ["playbook"]
    assert audit[0]["args"] == {"word": "hello", "wait": "10s"} and audit[-1]["result"] == "ok"
    recorded = json.dumps(audit) + json.dumps([x for x in log if "event" in x])
    assert "say hello" not in recorded  # typed text is never recorded


async def test_a_failing_step_says_which_and_what_the_console_showed(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    async with lab.session("admin") as admin:
        running = asyncio.create_task(run_playbook(admin, lab, "talk", {"wait": "1s"}))
        await wait_for(lambda: lab.port.rescue.current is not None)
        await pty_device.awrite(b"ready> ")
        await pty_device.read_until(lambda got: b"say hello\r" in got)
        await pty_device.awrite(b"pong\r\nkernel: something else entirely\r\n")
        lines = await asyncio.wait_for(running, 30)
    result = lines[-1]
    assert result["result"] == "failed" and result["step"] == 4
    assert result["message"] == "the target never said done"
    assert "something else entirely" in result["output"]


async def test_an_admin_cancels_a_running_playbook_and_others_may_not_run_one(
    lab: Bridge,
) -> None:
    async with lab.session("admin") as admin, lab.session("operator") as operator:
        async with operator.post(
            f"{lab.base}/api/ports/lab/rescue", json={"playbook": "slow"}
        ) as resp:
            assert resp.status == 403
        running = asyncio.create_task(run_playbook(admin, lab, "slow"))
        port = lab.port
        await wait_for(lambda: port.rescue.current is not None)
        async with admin.post(
            f"{lab.base}/api/ports/lab/rescue", json={"playbook": "talk"}
        ) as resp:
            assert resp.status == 409 and "cancel it first" in (await resp.json())["error"]
        async with admin.post(f"{lab.base}/api/ports/lab/rescue/cancel") as resp:
            assert resp.status == 200
        lines = await asyncio.wait_for(running, 10)
        assert lines[-1]["result"] == "cancelled" and lines[-1]["by"] == "admin"
        assert port.writer is None and port.lease.pinned is None


# ---- the CLI and the SSH door ---------------------------------------------------------------


async def test_the_cli_runs_and_lists_playbooks(
    lab: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SERIAL_BRIDGE_TOKEN": lab.tokens["admin"],
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    pin = ["--fingerprint", lab.daemon.fingerprint]

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "rescue", f"{lab.base}/lab", *args, *pin, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    status, out, _ = await cli("--list")
    assert status == 0 and "grub-rescue: " in out and "--param arg=..." in out
    running = asyncio.create_task(cli("talk", "--param", "word=hello"))
    await wait_for(lambda: lab.port.rescue.current is not None, 30)
    await target(pty_device)
    status, out, err = await running
    assert status == 0, err
    assert out.splitlines()[0] == "step 1/4: wait for the prompt"
    assert out.splitlines()[-1].startswith("talk on lab: done in ")
    status, _, err = await cli("talk", "--arg", "x")
    assert status == 1 and "talk has no parameter 'arg'" in err


async def test_ssh_rescue_at_the_prompt_and_as_a_command(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, site: Path, tmp_path: Path
) -> None:
    bridge, door = await ssh_bridge(
        bridge_factory, pty_device, tmp_path, playbooks={"dir": str(site)}
    )
    keys = {name: keygen(tmp_path / name) for name in ("admin", "operator")}
    user_keys(bridge, keys)
    status, _, err = await door.run(keys["operator"], "operator:lab", "rescue", "list")
    assert status == 1 and "may not do this" in err
    status, out, _ = await door.run(keys["admin"], "admin:lab", "rescue", "list")
    assert status == 0 and "talk: Answer a test target" in out

    # as a command: followed to its end
    running = asyncio.create_task(
        door.run(keys["admin"], "admin:lab", "rescue", "talk", "--param", "word=hello")
    )
    await wait_for(lambda: bridge.port.rescue.current is not None, 30)
    await target(pty_device)
    status, out, err = await running
    assert status == 0, err
    assert "step 3/4: press up until pong" in out and "talk done in" in out

    # at the escape prompt: it starts, and its steps show as status lines in the console
    async with door.terminal(keys["admin"], "admin:lab") as term:
        await term.until(b"lab: read-write")
        term.type(b"\x1d")
        await term.until(b"command (^] again sends it)")
        term.type(b"rescue slow\r")
        await term.until(b"run slow on lab? It may reset it. [y/N]")
        term.type(b"y\r")
        at = await term.until(b"slow started")
        await term.until(b"playbook slow running, step 1/1: pause 1m (admin)", at)
        await wait_for(lambda: bridge.port.rescue.current is not None)
        status, out, _ = await door.run(keys["admin"], "admin:lab", "rescue", "cancel")
        assert status == 0 and out == "cancelled slow\n"
        await term.until(b"playbook slow: cancelled at step 1", at)


async def test_a_playbook_ends_cleanly_when_its_port_closes(lab: Bridge) -> None:
    async with lab.session("admin") as admin:
        running = asyncio.create_task(run_playbook(admin, lab, "slow"))
        await wait_for(lambda: lab.port.rescue.current is not None)
        assert lab.daemon.state is not None
        await lab.daemon.reload(dataclasses.replace(lab.daemon.config, ports={}))
        lines = await asyncio.wait_for(running, 10)
    assert lines[-1]["result"] == "cancelled"
    assert lines[-1]["by"] == "port removed from the configuration"


# ---- targets that draw like GRUB: judged on a settled screen --------------------------------


class FakeGrub:
    """Just enough of GRUB for grub-rescue: Esc shows the menu; `e` opens the editor with the
    cursor on the first of `lines`; <down>, Ctrl-E, typed text and Ctrl-X work as in GRUB. How
    it draws is the subclass's; `run` returns the linux line Ctrl-X booted."""

    def __init__(self, lines: list[str]) -> None:
        self.lines, self.row = lines, 0

    async def run(self, pty: PtyDevice) -> str:
        editing, pending = False, b""
        while True:
            pending += await pty.read_until(lambda got: bool(got), 60)
            while pending:
                if pending.startswith(b"\x1b[B") and editing:
                    key, pending = b"down", pending[3:]
                else:
                    key, pending = pending[:1], pending[1:]
                if not editing:
                    if key == b"\x1b":
                        await pty.awrite(self.menu())
                    elif key == b"e":
                        editing = True
                        await self.editor(pty)
                elif key == b"down":
                    self.row = min(self.row + 1, len(self.lines) - 1)
                    await pty.awrite(self.line_start())
                elif key == b"\x05":
                    await pty.awrite(self.line_end())
                elif key == b"\x18":
                    await pty.awrite(f"\x1b[2J\x1b[1;1Hbooting: {self.lines[2]}\r\n# ".encode())
                    return self.lines[2]
                elif key.isascii() and key.decode().isprintable():
                    self.lines[self.row] += key.decode()
                    await pty.awrite(self.typed())

    def menu(self) -> bytes:
        return b"\x1b[2J\x1b[1;20HGNU GRUB  version 2.06\x1b[3;3H*Linux\x1b[3;3H"

    async def editor(self, pty: PtyDevice) -> None:
        raise NotImplementedError

    def line_start(self) -> bytes:
        return f"\x1b[{3 + self.row};3H".encode()

    def line_end(self) -> bytes:
        return f"\x1b[{3 + self.row};{3 + len(self.lines[self.row])}H".encode()

    def typed(self) -> bytes:
        return f"\x1b[{3 + self.row};3H{self.lines[self.row]}".encode()


class SlowGrub(FakeGrub):
    """GRUB on a slow machine: the editor comes in two pieces with a pause after the linux line
    (the cursor passes that line as it is printed, as GRUB's does), then the cursor goes to the
    first line."""

    async def editor(self, pty: PtyDevice) -> None:
        top = "".join(f"\x1b[{3 + i};3H{line}" for i, line in enumerate(self.lines[:3]))
        await pty.awrite(f"\x1b[2J\x1b[1;20HGNU GRUB  version 2.06{top}".encode())
        await asyncio.sleep(0.1)  # a slow GRUB, its cursor still on the linux line
        await pty.awrite(f"\x1b[6;3H{self.lines[3]}\x1b[20;1HMinimum Emacs\x1b[3;3H".encode())


class UefiConsoleGrub(FakeGrub):
    """GRUB on a UEFI firmware's console, 80x50: the menu, then the editor in rows TOP and on,
    its box lines CP437, the linux line wrapped once it no longer fits."""

    TOP = 30

    def first_row(self, index: int) -> int:
        return self.TOP + sum((max(len(line), 1) + 75) // 76 for line in self.lines[:index])

    def menu(self) -> bytes:
        menu = b"\x1b[2J\x1b[02;24HGNU GRUB  version 2.06\x1b[05;03H*Linux"
        return menu + b"\x1b[45;07HUse the ^ and v keys to select\x1b[05;03H"

    async def editor(self, pty: PtyDevice) -> None:
        box = firmware_console_editor(self.lines, self.TOP)
        await pty.awrite(b"\x1b[2J\x1b[02;24HGNU GRUB  version 2.06" + box)
        await pty.awrite(f"\x1b[{self.TOP};5H".encode())

    def line_start(self) -> bytes:
        return f"\x1b[{self.first_row(self.row)};5H".encode()

    def line_end(self) -> bytes:
        line = self.lines[self.row]
        last = (max(len(line), 1) - 1) // 76
        return f"\x1b[{self.first_row(self.row) + last};{3 + len(line) - 76 * last}H".encode()

    def typed(self) -> bytes:
        return firmware_console_editor(self.lines, self.TOP) + self.line_end()


def firmware_console_editor(lines: list[str], top: int) -> bytes:
    """GRUB's editor as a UEFI firmware's console draws it (tests/test_rescue_grub.py sees it on
    OVMF): from row `top` of a screen taller than a serial terminal's 24, inside a CP437 box
    (bytes that are not UTF-8), a line longer than the box's 76 columns wrapped with `\\`."""
    out = [f"\x1b[{top - 1};2H".encode() + b"\xda" + b"\xc4" * 78 + b"\xbf"]
    row = top
    for line in lines:
        chunks = [line[i : i + 76] for i in range(0, max(len(line), 1), 76)]
        for n, chunk in enumerate(chunks):
            mark = b"\\" if n < len(chunks) - 1 else b" "
            out.append(f"\x1b[{row};2H\xb3".encode("latin-1") + chunk.ljust(76).encode())
            out.append(mark + b"\xb3")
            row += 1
    return b"".join(out)


async def rescue_through(lab: Bridge, pty: PtyDevice, grub: FakeGrub) -> str:
    """grub-rescue (no restart) against the fake `grub`: its result must be ok; the linux line
    it booted."""
    async with lab.session("admin") as admin:
        args = {"restart": "none", "arg": "dyndbg=+p rd.break", "shell": "^# ?$"}
        running = asyncio.create_task(run_playbook(admin, lab, "grub-rescue", args))
        await wait_for(lambda: lab.port.rescue.current is not None)
        booting = asyncio.create_task(grub.run(pty))
        lines = await asyncio.wait_for(running, 60)
    assert lines[-1]["result"] == "ok", lines[-1]
    return await asyncio.wait_for(booting, 5)


async def test_grub_rescue_edits_the_line_a_slow_grub_shows_not_one_it_was_drawing(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    lines = [
        "setparams 'Linux'",
        "",
        "  linux /boot/vmlinuz console=ttyS0",
        "  initrd /boot/initrd",
    ]
    booted = await rescue_through(lab, pty_device, SlowGrub(lines))
    assert booted == "  linux /boot/vmlinuz console=ttyS0 dyndbg=+p rd.break"


async def test_grub_rescue_on_a_uefi_firmwares_taller_console_with_cp437_box_lines(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    """The playbook's screen grows to the rows the output addresses (an 80x24 one would stack
    the whole editor on its last row) and joins a wrapped row behind a border that is not `|`."""
    linux = f"  linux /boot/vmlinuz {'console=ttyS0,115200 ' * 2}x=1"
    lines = ["setparams 'Linux'", "", linux, "  initrd /boot/initrd"]
    booted = await rescue_through(lab, pty_device, UefiConsoleGrub(lines))
    assert booted.endswith(" x=1 dyndbg=+p rd.break") and len(booted) > 76


async def test_a_screen_that_never_goes_quiet_is_judged_once_the_match_has_held(
    lab: Bridge, pty_device: PtyDevice
) -> None:
    """Firmware that redraws a clock ten times a second never leaves the screen alone for the
    0.3 s a screen condition must hold: the menu under it is still found, in time."""
    async with lab.session("admin") as admin:
        running = asyncio.create_task(run_playbook(admin, lab, "menu"))
        await wait_for(lambda: lab.port.rescue.current is not None)
        await pty_device.awrite(b"\x1b[2J\x1b[1;1HBoot Menu")
        for tick in range(60):  # 6 s, twice the step's timeout
            if running.done():
                break
            await pty_device.awrite(f"\x1b[24;70H12:00:{tick % 60:02d}".encode())
            await asyncio.sleep(0.1)
        lines = await asyncio.wait_for(running, 10)
    assert lines[-1]["result"] == "ok", lines[-1]
