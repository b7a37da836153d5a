"""Nobody can hold a port's actions hostage (#18.4-6, #18.18), through the real daemon on fake
hardware: bounded sequences, non-finite numbers refused wherever JSON is read, an admin's cancel,
NMI/reset/power pre-empting a sequence, sequences that end with their credential, `sysrq_deny`
after a plain BREAK, every action audited whatever ends it, and client slots kept for those who
may write. Timing checks are lower bounds only."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import pytest

from bridge.access.store import UserStore
from bridge.common import strictjson
from bridge.config import ConfigError
from bridge.console import actions
from tests.conftest import Bridge, WsReader, make_config, wait_for
from tests.conftest import pin_states as states
from tests.served import CLI
from tests.test_actions import (
    EPS,
    NMI,
    Recorder,
    RecordingTransport,
    StartBridge,
    call,
    gpio_lines,
    start_bridge,
)

__all__ = ["start_bridge"]  # the fixture, used by name
pytestmark = pytest.mark.usefixtures("mock_pins")
SLOW = {"device": "fake", "break_duration": "10ms"}


def written(recorder: Recorder) -> list[bytes]:
    return [e.data for e in recorder.events if e.kind == "write"]


async def audited(bridge: Bridge, event: str) -> list[dict[str, Any]]:
    async with bridge.session("admin") as http, http.get(f"{bridge.base}/api/audit") as resp:
        return [e for e in await resp.json() if e["event"] == event]


async def post_raw(bridge: Bridge, user: str, path: str, text: str) -> tuple[int, Any]:
    async with (
        bridge.session(user) as http,
        http.post(
            f"{bridge.base}/api/ports/{path}",
            data=text,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, await resp.json()


# ---- bounds and non-finite numbers ------------------------------------------------------------


def test_strict_json_refuses_what_json_itself_does_not_allow() -> None:
    for text in ["NaN", "[Infinity]", '{"a": -Infinity}', '{"a": 1e400}', "[" * 100_000]:
        with pytest.raises(ValueError):
            strictjson.loads(text)
    assert strictjson.loads('{"a": 1.5, "b": [1, "x"]}') == {"a": 1.5, "b": [1, "x"]}


@pytest.mark.parametrize("interval", ["NaN", "Infinity", "1e400", "-1e400"])
async def test_a_non_finite_http_interval_is_400_and_touches_nothing(
    start_bridge: StartBridge, interval: str
) -> None:
    """NaN used to send the first key and then answer 500, unaudited."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    status, answer = await post_raw(
        bridge, "operator", "lab/sysrq", f'{{"keys": "hh", "interval": {interval}}}'
    )
    assert status == 400, answer
    assert "JSON" in answer["error"]
    assert recorder.events == []


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "sysrq", "keys": "hh", "interval": 1e400}',
        '{"type": "sysrq", "keys": "hh", "interval": NaN}',
        '{"type": "sysrq", "keys": "' + "h" * 33 + '", "interval": 0}',
        '{"type": "sysrq", "keys": "hh", "interval": "11s"}',
        "[" * 30_000,
    ],
)
async def test_websocket_sequences_are_bounded(start_bridge: StartBridge, message: str) -> None:
    """An infinite interval used to hold the action lock for ever, 33 keys were all sent."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await ws.send_str(message)
        await reader.message("error")
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "t", "interval": 0}))
        result = await reader.message("result", action="sysrq")  # the port is not busy
        assert result["keys"] == "t"
        await ws.close()
    assert written(recorder) == [b"t"]


async def test_a_json_nesting_bomb_at_login_is_400(start_bridge: StartBridge) -> None:
    """Unauthenticated: `[` x 30000 used to be a 500 with a RecursionError traceback."""
    bridge = await start_bridge({"lab": SLOW})
    async with (
        bridge.session() as http,
        http.post(
            f"{bridge.base}/api/login",
            data="[" * 30_000,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
        assert "nested too deeply" in (await resp.json())["error"]


# ---- cancel, pre-emption, credentials -----------------------------------------------------------


async def test_an_admin_cancels_a_running_sequence_and_both_are_audited(
    start_bridge: StartBridge,
) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    sequence = asyncio.create_task(
        call(bridge, "operator", "lab/sysrq", {"keys": "reisub", "interval": "10s"})
    )
    await recorder.wait(lambda events: any(e.data == b"r" for e in events))
    status, answer = await call(bridge, "viewer", "lab/cancel")
    assert status == 403, answer
    status, answer = await call(bridge, "admin", "lab/cancel")
    assert status == 200, answer
    assert answer["cancelled"].startswith("operator's SysRq reisub")
    async with asyncio.timeout(5):  # not the 50 s the sequence would take
        status, answer = await sequence
    assert status == 409 and "cancelled by admin after 1 of 6 keys" in answer["error"], answer
    assert written(recorder) == [b"r"]
    [sysrq] = await audited(bridge, "sysrq")
    assert (sysrq["user"], sysrq["sent"]) == ("operator", "r")
    assert sysrq["result"].startswith("cancelled: SysRq reisub cancelled by admin")
    [cancel] = await audited(bridge, "cancel")
    assert (cancel["user"], cancel["result"]) == ("admin", "ok")
    status, _ = await call(bridge, "operator", "lab/sysrq", {"keys": "h"})
    assert status == 200
    status, answer = await call(bridge, "admin", "lab/cancel")
    assert status == 409 and "no SysRq sequence" in answer["error"]


async def test_the_cli_cancels_a_running_sequence(start_bridge: StartBridge) -> None:
    """`serial-bridge cancel URL`: one human line naming what it stopped."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    sequence = asyncio.create_task(
        call(bridge, "operator", "lab/sysrq", {"keys": "reisub", "interval": "10s"})
    )
    await recorder.wait(lambda events: any(e.data == b"r" for e in events))
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "cancel",
        f"{bridge.base}/lab",
        "--fingerprint",
        bridge.daemon.fingerprint,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERIAL_BRIDGE_TOKEN": bridge.tokens["admin"]},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert out.decode().startswith("lab: cancelled operator's SysRq reisub"), out
    async with asyncio.timeout(5):
        status, answer = await sequence
    assert status == 409 and "cancelled by admin" in answer["error"], answer
    assert written(recorder) == [b"r"]


async def test_a_sequence_is_cancelled_over_the_websocket(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    async with bridge.session("operator") as op, bridge.session("admin") as adm:
        ws = await bridge.ws(op, "lab", mode="rw")
        mine = WsReader(ws)
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "reisub", "interval": "10s"}))
        await recorder.wait(lambda events: any(e.data == b"r" for e in events))
        admin_ws = await bridge.ws(adm, "lab", mode="ro")
        theirs = WsReader(admin_ws)
        await admin_ws.send_str(json.dumps({"type": "cancel"}))
        result = await theirs.message("result", action="cancel")
        assert result["user"] == "admin"
        error = await mine.message("error")
        assert "cancelled by admin" in error["message"]
        await ws.close()
        await admin_ws.close()
    assert written(recorder) == [b"r"]


@pytest.mark.parametrize("action", ["nmi", "reset"])
async def test_lines_pre_empt_a_sequence(start_bridge: StartBridge, action: str) -> None:
    """NMI and reset used to get 409 until a sequence ended, however long it was."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": {**SLOW, "lines": gpio_lines()}}, recorder)
    sequence = asyncio.create_task(
        call(bridge, "operator", "lab/sysrq", {"keys": "reisub", "interval": "10s"})
    )
    await recorder.wait(lambda events: any(e.data == b"r" for e in events))
    async with asyncio.timeout(5):
        status, answer = await call(bridge, "admin", f"lab/{action}")
        assert status == 200, answer
        status, answer = await sequence
    assert status == 409 and f"pre-empted by admin's {action}" in answer["error"], answer
    assert written(recorder) == [b"r"]
    if action == "nmi":
        assert states(NMI) == [False, True, False]
    [sysrq] = await audited(bridge, "sysrq")
    assert sysrq["result"].startswith("cancelled:") and sysrq["sent"] == "r"


async def test_an_http_sequence_stops_when_its_token_is_revoked(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    sequence = asyncio.create_task(
        call(bridge, "operator", "lab/sysrq", {"keys": "reisub", "interval": "10s"})
    )
    await recorder.wait(lambda events: any(e.data == b"r" for e in events))
    UserStore(bridge.state_dir).revoke_token("operator-test")  # as `serial-bridge token revoke`
    async with asyncio.timeout(5):
        status, answer = await sequence
    assert status == 409 and "credential ended" in answer["error"], answer
    assert written(recorder) == [b"r"]
    [sysrq] = await audited(bridge, "sysrq")
    assert "stopped because its credential ended" in sysrq["result"]


async def test_a_websocket_sequence_stops_when_its_user_is_deleted(
    start_bridge: StartBridge,
) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "reisub", "interval": "10s"}))
        await recorder.wait(lambda events: any(e.data == b"r" for e in events))
        UserStore(bridge.state_dir).delete("operator")
        async with asyncio.timeout(5):
            await wait_for(lambda: bridge.daemon.state.ports["lab"].actions.running is None)
        await ws.close()
    assert written(recorder) == [b"r"]
    [sysrq] = await audited(bridge, "sysrq")
    assert "stopped because its credential ended" in sysrq["result"]


# ---- input after a BREAK -------------------------------------------------------------------------


async def test_the_next_key_after_a_break_is_checked_against_sysrq_deny(
    start_bridge: StartBridge,
) -> None:
    """BREAK then typing `b` used to be SysRq-b (reboot) on a port that denies it."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": {**SLOW, "sysrq_deny": ["b"]}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await reader.message("hello")
        for refused in (b"b", b"Break"):
            await ws.send_str(json.dumps({"type": "break"}))
            await reader.message("result", action="break")
            await ws.send_bytes(refused)
            error = await reader.message("error")
            assert "denied on this port" in error["message"]
            reader.messages.clear()
        await ws.send_bytes(b"h")  # an allowed SysRq key: sent, and the window is over
        await ws.send_bytes(b"b")  # an ordinary keystroke now
        await recorder.wait(lambda events: written(recorder) == [b"h", b"b"])
        await ws.close()


async def test_on_release_waits_for_the_sysrq_window_of_a_break(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exit` right after a BREAK would be SysRq-e (terminate all tasks)."""
    monkeypatch.setattr(actions, "SYSRQ_WINDOW", 0.5)
    recorder = Recorder()
    bridge = await start_bridge({"lab": {**SLOW, "on_release": "exit\r"}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await ws.send_str(json.dumps({"type": "break"}))
        await reader.message("result", action="break")
        await ws.send_str(json.dumps({"type": "release"}))
        await recorder.wait(lambda events: written(recorder) == [b"exit\r"])
        await ws.close()
    end = next(e for e in recorder.events if e.kind == "break-end")
    logout = next(e for e in recorder.events if e.kind == "write")
    assert logout.at >= end.at + 0.5 - EPS


# ---- audit whatever ends an action ---------------------------------------------------------------


async def test_an_action_that_fails_half_way_is_audited(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport failing with something other than OSError used to give a 500 and no audit
    record, although the first key had reached the target."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": SLOW}, recorder)
    original = RecordingTransport.send_break
    calls = 0

    async def second_fails(self: RecordingTransport, duration: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("driver bug")
        await original(self, duration)

    monkeypatch.setattr(RecordingTransport, "send_break", second_fails)
    status, _ = await call(bridge, "operator", "lab/sysrq", {"keys": "hh", "interval": 0})
    assert status == 500
    assert written(recorder) == [b"h"]
    [sysrq] = await audited(bridge, "sysrq")
    assert (sysrq["keys"], sysrq["result"]) == ("hh", "failed: RuntimeError")


# ---- client slots ------------------------------------------------------------------------------


async def test_viewers_cannot_fill_the_slots_kept_for_operators_and_admins(
    start_bridge: StartBridge,
) -> None:
    bridge = await start_bridge({"lab": {**SLOW, "max_clients": 4}})  # reserved_clients: 2
    async with (
        bridge.session("viewer") as v,
        bridge.session("operator") as o,
        bridge.session("admin") as a,
    ):
        viewers = [await bridge.ws(v, "lab") for _ in range(2)]
        for ws in viewers:
            await WsReader(ws).message("hello")
        third = await bridge.ws(v, "lab")
        msg = await third.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
        assert "kept for operators and admins" in msg.extra
        kept = [await bridge.ws(o, "lab"), await bridge.ws(a, "lab")]
        for ws in kept:
            await WsReader(ws).message("hello")
        over = await bridge.ws(a, "lab")
        msg = await over.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
        for ws in [*viewers, *kept]:
            await ws.close()


def test_reserved_clients_is_a_count(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"ports\.lab\.reserved_clients"):
        make_config(tmp_path, {"lab": {"device": "x", "reserved_clients": -1}})
