"""Actions through the SSH door with the real OpenSSH client, on fake hardware (the recording
transport of test_actions, gpiozero's mock pins): OpenSSH's `~B` as a BREAK in its place among
the keystrokes, the escape prompt's commands with their y/N questions, and exec commands with
their exit status — each audited like the web's actions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import BridgeFactory, pin_states, wait_for
from tests.ssh_helpers import SshTarget, ssh_bridge
from tests.test_actions import Recorder

NMI, POWER = 17, 22
ESC = b"\x1d"
pytestmark = pytest.mark.usefixtures("mock_pins")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def door(
    bridge_factory: BridgeFactory, recorder: Recorder, tmp_path: Path, keys: dict[str, Path]
) -> AsyncIterator[SshTarget]:
    ports = {
        "lab": {
            "device": "fake",
            "break_duration": "50ms",
            "lines": {"nmi": {"gpio": NMI, "pulse": "10ms"}, "power": {"gpio": POWER}},
        },
        "other": {"device": "fake2"},
    }
    _bridge, target = await ssh_bridge(
        bridge_factory, None, tmp_path, keys=keys, ports=ports,
        transport_factory=recorder, gpio={"pin_factory": "mock"},
    )  # fmt: skip
    yield target


def audit(target: SshTarget, event: str) -> list[dict[str, object]]:
    path = target.bridge.state_dir / "audit" / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if e["event"] == event]


async def test_tilde_b_is_a_break_in_its_place_among_the_keystrokes(
    door: SshTarget, keys: dict[str, Path], recorder: Recorder
) -> None:
    async with door.terminal(keys["operator"], "operator:lab") as term:
        await term.until(b"lab: read-write")
        term.type(b"a\r")  # (OpenSSH sends what precedes `~B` in the same read after it)
        await recorder.wait(lambda ev: any(e.data.endswith(b"\r") for e in ev))
        term.type(b"~B")  # OpenSSH: an RFC 4335 break request...
        term.type(b"h")  # ...and the key typed next: SysRq h on a real serial line
        await recorder.wait(lambda ev: any(e.data == b"h" for e in ev))
        assert recorder.kinds()[-3:] == [("break", b""), ("break-end", b""), ("write", b"h")]
        marks = [e for e in audit(door, "break") if e.get("via") == "ssh"]
        assert marks[-1]["user"] == "operator" and marks[-1]["result"] == "ok"
        term.type(b"\r~.")
        await term.wait()


async def test_a_viewers_tilde_b_is_refused_and_said_so(
    door: SshTarget, keys: dict[str, Path], recorder: Recorder
) -> None:
    async with door.terminal(keys["viewer"], "viewer:lab") as term:
        at = await term.until(b"read-only")
        term.type(b"~B")
        await term.until(b"your role (viewer) may not do this", at)
        assert not [e for e in recorder.events if e.kind == "break"]
        term.type(b"~.")
        await term.wait()


async def test_prompt_commands_ask_before_nmi_and_destructive_sysrq(
    door: SshTarget, keys: dict[str, Path], recorder: Recorder
) -> None:
    async with door.terminal(keys["admin"], "admin:lab") as term:
        at = await term.until(b"lab: read-write")
        term.type(ESC + b"nmi\r")
        at = await term.until(b"send NMI to lab? The target may panic. [y/N] ", at)
        term.type(b"\r")  # the default is no
        at = await term.until(b"(^] help)", 0)
        assert pin_states(NMI) == [False]
        term.type(ESC + b"nmi\r")
        at = await term.until(b"[y/N] ", at)
        term.type(b"y\r")
        at = await term.until(b"nmi done on lab", at)
        assert pin_states(NMI) == [False, True, False]
        term.type(ESC + b"sysrq b\r")  # reboot: destructive
        at = await term.until(b"b (reboot): destructive on lab; send sysrq b? [y/N] ", at)
        term.type(b"no\r")
        term.type(ESC + b"sysrq h\r")  # help: sent at once
        at = await term.until(b"sysrq h sent to lab", at)
        assert [e.data for e in recorder.events if e.kind == "write"] == [b"h"]
        term.type(ESC + b"who\r")
        at = await term.until(b"admin                rw (you)", at)
        term.type(ESC + b"bogus\r")
        at = await term.until(b"unknown command 'bogus' (`help` lists them)", at)
        term.type(ESC + b"quit\r")
        assert await term.wait() == 0
    nmis = audit(door, "nmi")
    assert [(e["user"], e["result"], e["via"]) for e in nmis] == [("admin", "ok", "ssh")]


async def test_exec_commands_and_their_exit_status(
    door: SshTarget, keys: dict[str, Path], recorder: Recorder
) -> None:
    port = door.bridge.daemon.state.ports["lab"]
    port.data_received(b"one\r\ntwo\r\nthree\r\n")  # as if the target had printed it
    await wait_for(lambda: port.offset == 17)
    run = door.run
    status, out, err = await run(keys["operator"], "operator:lab", "log", "2")
    assert (status, out, err) == (0, "two\nthree\n", "")
    status, out, _ = await run(keys["viewer"], "viewer", "ports")
    assert status == 0 and out.startswith("lab\tonline\twriter=-")
    status, out, _ = await run(keys["operator"], "operator:lab", "sysrq", "s")
    assert status == 0 and out == "sysrq s sent to lab (BREAK 50 ms + key)\n"
    status, out, _ = await run(keys["admin"], "admin:lab", "power", "status")
    assert status == 0 and "power is" in out
    status, _, err = await run(keys["operator"], "operator:lab", "power", "cycle")
    assert status == 1 and err == "serial-bridge: your role (operator) may not do this\n"
    status, _, err = await run(keys["viewer"], "viewer:lab", "break")
    assert status == 1 and "may not do this" in err
    status, _, err = await run(keys["admin"], "admin:lab", "power", "sideways")
    assert status == 2 and "power on|off|force-off|cycle|reset|status" in err
    status, _, err = await run(keys["admin"], "admin:lab", "takeover")
    assert status == 2 and "escape prompt" in err
    status, _, err = await run(keys["admin"], "admin", "sysrq", "h")
    assert status == 2 and "name a port" in err
    status, _, err = await run(keys["admin"], "admin:nope", "log")
    assert status == 1 and err == "serial-bridge: no port 'nope'\n"
    assert [e.data for e in recorder.events if e.kind == "write"] == [b"s"]
    assert audit(door, "sysrq")[-1]["via"] == "ssh"


async def test_cancel_stops_a_running_sequence_from_another_ssh_session(
    door: SshTarget, keys: dict[str, Path], recorder: Recorder
) -> None:
    """`cancel` (exec or at the prompt): an operator's long REISUB, started by one ssh command,
    is stopped by an admin's `cancel` from another; a viewer may not; both audited."""
    sequence = asyncio.create_task(
        door.run(keys["operator"], "operator:lab", "sysrq", "reisub", "10s")
    )
    await recorder.wait(lambda events: any(e.data == b"r" for e in events))
    status, _, err = await door.run(keys["viewer"], "viewer:lab", "cancel")
    assert status == 1 and "may not do this" in err
    status, out, err = await door.run(keys["admin"], "admin:lab", "cancel")
    assert status == 0 and out.startswith("cancelled operator's SysRq reisub"), (out, err)
    async with asyncio.timeout(10):  # not the 50 s the sequence would take
        status, _, err = await sequence
    assert status == 1 and "cancelled by admin" in err
    assert [e.data for e in recorder.events if e.kind == "write"] == [b"r"]
    assert audit(door, "cancel")[-1]["user"] == "admin"
    assert audit(door, "sysrq")[-1]["result"].startswith("cancelled")
