"""QmpClient and QmpLines against a small fake QEMU on a unix socket that speaks real QMP: greeting,
capabilities negotiation, commands with ids, error replies and asynchronous events."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.hw.interfaces import DeviceUnavailable, UnsupportedAction
from bridge.hw.lines import LinesBusy
from bridge.hw.qmp import QmpClient, QmpError, QmpLines, chardev_send_break, qmp_execute

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}


class FakeQemu:
    """Enough of QEMU's QMP server: a VM state, a log of commands, an event before each reply."""

    def __init__(self, path: Path, status: str = "running") -> None:
        self.path = path
        self.status = status
        self.commands: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None  # when set, inject-nmi waits for it
        self.nmi_started = asyncio.Event()
        self.no_nmi = False  # like qemu-system-aarch64 -M virt
        self.greet = True
        self.before_greeting: list[dict[str, Any]] = []  # sent ahead of the greeting
        self.hang_up_after_greeting = False
        self.server: asyncio.Server | None = None
        self.clients: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self.serve, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for client in self.clients:
                client.close()
            await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\r\n")

        self.clients.append(writer)
        if not self.greet:
            await reader.read()  # say nothing at all
            return
        for message in self.before_greeting:
            send(message)
        send(GREETING)
        if self.hang_up_after_greeting:
            writer.close()
            return
        negotiated = False
        while line := await reader.readline():
            request = json.loads(line)
            self.commands.append(request)
            name = request["execute"]
            reply: dict[str, Any] = {"return": {}}
            if not negotiated and name != "qmp_capabilities":
                reply = _error("CommandNotFound", "Expecting capabilities negotiation")
            elif name == "qmp_capabilities":
                negotiated = True
            elif name == "query-status":
                reply = {"return": {"status": self.status, "running": self.status == "running"}}
            elif name == "cont":
                self.status = "running"
            elif name == "inject-nmi" and self.no_nmi:
                reply = _error("GenericError", "this feature or command is not currently supported")
            elif name == "inject-nmi" and self.hold is not None:
                self.nmi_started.set()
                await self.hold.wait()
            elif name == "chardev-send-break":
                if request.get("arguments", {}).get("id") != "s0":
                    reply = _error("GenericError", "Chardev 'x' not found")
            elif name not in ("inject-nmi", "system_reset", "system_powerdown"):
                reply = _error("CommandNotFound", f"The command {name} has not been found")
            send({"event": "NOISE", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})
            if "id" in request:
                reply["id"] = request["id"]
            send(reply)
            await writer.drain()
        writer.close()

    def executed(self) -> list[str]:
        return [c["execute"] for c in self.commands if c["execute"] != "qmp_capabilities"]


def _error(cls: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


@pytest.fixture
async def qemu(tmp_path: Path) -> AsyncIterator[FakeQemu]:
    fake = FakeQemu(tmp_path / "qmp.sock")
    await fake.start()
    yield fake
    await fake.stop()


async def test_client_negotiates_and_skips_events(qemu: FakeQemu) -> None:
    async with QmpClient(str(qemu.path)) as qmp:
        assert qmp.greeting == GREETING
        assert await qmp.execute("query-status") == {"status": "running", "running": True}
        with pytest.raises(QmpError, match="query-nothing: CommandNotFound") as info:
            await qmp.execute("query-nothing")
        assert info.value.error_class == "CommandNotFound"
    assert qemu.commands[0] == {"execute": "qmp_capabilities", "id": "sb-1"}
    assert [c["id"] for c in qemu.commands] == ["sb-1", "sb-2", "sb-3"]


async def test_one_shot_helpers(qemu: FakeQemu) -> None:
    assert await qmp_execute(str(qemu.path), "system_reset") == {}
    await chardev_send_break(str(qemu.path), "s0")
    assert qemu.commands[-1]["arguments"] == {"id": "s0"}
    with pytest.raises(QmpError, match="not found"):
        await chardev_send_break(str(qemu.path), "x")


@pytest.mark.parametrize(
    "call,command",
    [("nmi", "inject-nmi"), ("reset", "system_reset"), ("off", "system_powerdown")],
)
async def test_actions_map_to_qmp_commands(qemu: FakeQemu, call: str, command: str) -> None:
    lines = QmpLines(str(qemu.path), port="vm1")
    result = await (getattr(lines, call)() if call != "off" else lines.power("off"))
    assert result == {"action": call, "qmp": command, "power": "on"}
    assert qemu.executed() == [command, "query-status"]
    assert lines.power_state() == "on"


async def test_status_and_power_on(qemu: FakeQemu) -> None:
    lines = QmpLines(str(qemu.path), port="vm1")
    assert lines.power_state() == "unknown"
    qemu.status = "paused"
    assert await lines.power("status") == {
        "action": "status",
        "power": "off",
        "qemu_status": "paused",
    }
    on = await lines.power("on")
    assert on == {"action": "on", "qmp": "cont", "power": "on"}
    again = await lines.power("on")
    assert again["qmp"] is None
    assert "already running" in again["note"]
    assert (
        qemu.executed()
        == ["query-status", "query-status", "cont", "query-status"] + ["query-status"] * 2
    )
    assert await lines.power("reset") == {"action": "reset", "qmp": "system_reset", "power": "on"}


@pytest.mark.parametrize("action", ["force-off", "cycle", "explode"])
async def test_unsupported_power_actions(qemu: FakeQemu, action: str) -> None:
    lines = QmpLines(str(qemu.path))
    assert action not in lines.supported()
    with pytest.raises(UnsupportedAction, match=action):
        await lines.power(action)
    assert qemu.commands == []


async def test_second_action_while_one_runs_is_refused(qemu: FakeQemu) -> None:
    lines = QmpLines(str(qemu.path), port="vm1")
    qemu.hold = asyncio.Event()
    first = asyncio.create_task(lines.nmi())
    async with asyncio.timeout(5):
        await qemu.nmi_started.wait()
    with pytest.raises(LinesBusy, match="vm1: nmi is in progress"):
        await lines.reset()
    qemu.hold.set()
    assert (await first)["qmp"] == "inject-nmi"
    await lines.reset()


async def test_reconnects_after_qemu_restarts(qemu: FakeQemu) -> None:
    lines = QmpLines(str(qemu.path))
    await lines.nmi()
    await qemu.stop()
    with pytest.raises(DeviceUnavailable, match=r"qmp\.sock"):
        await lines.nmi()
    restarted = FakeQemu(qemu.path)
    await restarted.start()
    try:
        assert (await lines.nmi())["qmp"] == "inject-nmi"
    finally:
        await restarted.stop()


async def test_missing_socket_and_silent_server(tmp_path: Path, qemu: FakeQemu) -> None:
    with pytest.raises(DeviceUnavailable, match=r"nothing\.sock"):
        await qmp_execute(str(tmp_path / "nothing.sock"), "query-status")
    qemu.greet = False
    with pytest.raises(DeviceUnavailable, match=r"no answer within 0\.2 s"):
        await qmp_execute(str(qemu.path), "query-status", timeout_s=0.2)


async def test_machine_without_nmi_is_unsupported_not_a_crash(qemu: FakeQemu) -> None:
    qemu.no_nmi = True
    lines = QmpLines(str(qemu.path), port="arm1")
    with pytest.raises(UnsupportedAction, match="arm1: this QEMU machine cannot nmi: this feature"):
        await lines.nmi()
    assert (await lines.reset())["qmp"] == "system_reset"  # not left busy


async def test_qemu_hanging_up_is_device_unavailable(qemu: FakeQemu) -> None:
    qemu.hang_up_after_greeting = True
    with pytest.raises(DeviceUnavailable, match=r"qmp\.sock: (Connection lost|QEMU closed)"):
        await QmpLines(str(qemu.path)).nmi()


async def test_a_late_reply_of_the_previous_connection_before_the_greeting_is_skipped(
    qemu: FakeQemu,
) -> None:
    """QEMU's monitor outlives a connection: what it answered or announced to the client before
    can reach the next one ahead of its greeting (a power-status poll in CI met it)."""
    qemu.before_greeting = [
        {"return": {"status": "shutdown", "running": False}, "id": "sb-2"},
        {"event": "SHUTDOWN", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}},
    ]
    async with QmpClient(str(qemu.path)) as qmp:
        assert qmp.greeting == GREETING
        assert await qmp.execute("query-status") == {"status": "running", "running": True}


async def test_a_server_that_is_not_qmp_is_named_in_the_error(qemu: FakeQemu) -> None:
    qemu.before_greeting = [{"hello": "I am not QEMU"}]
    wanted = re.escape('not a QMP greeting: {"hello": "I am not QEMU"}')
    with pytest.raises(DeviceUnavailable, match=wanted):
        await qmp_execute(str(qemu.path), "query-status")
