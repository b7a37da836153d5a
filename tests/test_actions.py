"""Actions through the real daemon and its HTTP/websocket API, on fake hardware.

Control lines: gpiozero's MockFactory (`[gpio] pin_factory = "mock"`); every check compares the
FULL state history of a pin (gpiozero's `assert_states` zips and passes on a list of the wrong
length). BREAK and SysRq: a recording fake transport plugged in with
`Daemon(config, transport_factory=...)` that notes when each BREAK started, how long it was asked
to last and when each byte was written.

Timing checks are lower bounds only (a pulse lasted at least its configured time, a key came at
least `break_duration` after its BREAK started, keys are at least `interval` apart).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bridge.config import PortConfig
from bridge.hw.interfaces import TransportSink
from bridge.hw.lines import mock_pin_factory
from tests.conftest import Bridge, BridgeFactory, WsReader, wait_for
from tests.conftest import pin_states as states

NMI, RESET, POWER, SENSE = 17, 27, 22, 23
EPS = 0.002  # timer granularity: a sleep may end this much before its deadline


# ---- fakes ------------------------------------------------------------------------------------


@dataclass
class Event:
    at: float
    kind: str  # "break" | "break-end" | "write"
    data: bytes = b""
    duration: float = 0.0


class RecordingTransport:
    """A ConsoleTransport that records what the port does with it. A BREAK lasts the asked
    duration, as a UART holding the break condition would."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.description = "recording fake"
        self.sink: TransportSink | None = None

    async def open(self, sink: TransportSink) -> None:
        self.sink = sink

    async def write(self, data: bytes) -> None:
        self.recorder.note(Event(time.monotonic(), "write", bytes(data)))

    async def drain(self) -> None:
        return None

    async def send_break(self, duration: float) -> None:
        self.recorder.note(Event(time.monotonic(), "break", duration=duration))
        await asyncio.sleep(duration)
        self.recorder.note(Event(time.monotonic(), "break-end"))

    def break_unsupported(self) -> str | None:
        return None

    async def close(self) -> None:
        self.sink = None


class Recorder:
    """The transport factory handed to the Daemon; keeps one event list for the port."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    def __call__(self, cfg: PortConfig) -> RecordingTransport:
        return RecordingTransport(self)

    def note(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def kinds(self) -> list[tuple[str, bytes]]:
        return [(e.kind, e.data) for e in self.events]

    async def wait(self, predicate: Callable[[list[Event]], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                self.changed.clear()
                await self.changed.wait()


# ---- fixtures ---------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("mock_pins")


def lasted(gpio: int, index: int) -> float:
    """How long the pin held the state it had before change `index` (gpiozero's MockPin stores
    the time since the previous change with each new state)."""
    return float(mock_pin_factory().pin(gpio).states[index].timestamp)


StartBridge = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def start_bridge(bridge_factory: BridgeFactory) -> StartBridge:
    """`await start_bridge(ports, recorder=Recorder(), gpio=...)`: a running daemon whose ports
    use the recording fake transport, users admin/operator/viewer with bearer tokens."""

    async def start(
        ports: dict[str, dict[str, Any]], recorder: Recorder | None = None, **sections: Any
    ) -> Bridge:
        sections.setdefault("gpio", {"pin_factory": "mock"})
        bridge = await bridge_factory(ports, recorder or Recorder(), **sections)
        state = bridge.daemon.state
        await wait_for(lambda: state is not None and all(p.online for p in state.ports.values()))
        return bridge

    return start


def gpio_lines(active_high: bool = True, sense: bool = True) -> dict[str, Any]:
    lines: dict[str, Any] = {
        "nmi": {"gpio": NMI, "pulse": "100ms", "active_high": active_high},
        "reset": {"gpio": RESET, "pulse": "150ms", "active_high": active_high},
        "power": {
            "gpio": POWER,
            "pulse": "120ms",
            "long_pulse": "600ms",
            "active_high": active_high,
        },
    }
    if sense:
        lines["power_sense"] = {"gpio": SENSE, "active_high": active_high}
    return lines


async def call(
    bridge: Bridge, user: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /api/ports/{path} as `user` (bearer token); (status, JSON answer)."""
    async with (
        bridge.session(user) as http,
        http.post(f"{bridge.base}/api/ports/{path}", json=body or {}) as resp,
    ):
        return resp.status, await resp.json()


IDLE_HIGH = [False]  # an active-high output: created low, never touched
IDLE_LOW = [False, True]  # an active-low output: the mock pin starts low, inactive is high


# ---- control lines ----------------------------------------------------------------------------


async def test_start_and_stop_drive_no_line(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines()}})
    assert [states(g) for g in (NMI, RESET, POWER)] == [IDLE_HIGH] * 3
    await bridge.daemon.stop()
    assert [states(g) for g in (NMI, RESET, POWER)] == [IDLE_HIGH] * 3


async def test_active_low_lines_idle_high_through_start_and_stop(
    start_bridge: StartBridge,
) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines(False)}})
    assert [states(g) for g in (NMI, RESET, POWER)] == [IDLE_LOW] * 3
    await bridge.daemon.stop()
    assert [states(g) for g in (NMI, RESET, POWER)] == [IDLE_LOW] * 3


@pytest.mark.parametrize("active_high", [True, False], ids=["active-high", "active-low"])
@pytest.mark.parametrize(
    "path,gpio,pulse", [("nmi", NMI, 0.1), ("reset", RESET, 0.15)], ids=["nmi", "reset"]
)
async def test_nmi_and_reset_are_one_pulse_of_the_configured_length(
    start_bridge: StartBridge, active_high: bool, path: str, gpio: int, pulse: float
) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines(active_high)}})
    before = time.time()
    status, answer = await call(bridge, "admin", f"lab/{path}")
    after = time.time()
    assert status == 200, answer
    assert before <= answer.pop("time") <= after
    assert answer == {
        "port": "lab",
        "user": "admin",
        "action": path,
        "line": path,
        "gpio": gpio,
        "active_high": active_high,
        "pulse_ms": round(pulse * 1000),
    }
    idle = IDLE_HIGH if active_high else IDLE_LOW
    active = not idle[-1]
    assert states(gpio) == [*idle, active, not active]
    assert lasted(gpio, len(idle) + 1) >= pulse - EPS
    others = {NMI, RESET, POWER} - {gpio}
    assert all(states(g) == idle for g in others)


async def test_power_actions_follow_the_sense_line(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines()}})
    sense = mock_pin_factory().pin(SENSE)

    status, answer = await call(bridge, "viewer", "lab/power", {"action": "status"})
    assert (status, answer["power"]) == (200, "off")
    status, answer = await call(bridge, "admin", "lab/power", {"action": "off"})
    assert status == 200 and answer["pulse_ms"] == 0 and "already off" in answer["note"]
    assert states(POWER) == IDLE_HIGH  # sensed off: nothing pressed

    status, answer = await call(bridge, "admin", "lab/power", {"action": "on"})
    assert (status, answer["action"], answer["pulse_ms"]) == (200, "on", 120)
    assert states(POWER) == [False, True, False]
    assert lasted(POWER, 2) >= 0.12 - EPS

    sense.drive_high()
    status, answer = await call(bridge, "viewer", "lab/power", {"action": "status"})
    assert answer["power"] == "on"
    status, answer = await call(bridge, "admin", "lab/power", {"action": "on"})
    assert answer["pulse_ms"] == 0 and "already on" in answer["note"]
    status, answer = await call(bridge, "admin", "lab/power", {"action": "force-off"})
    assert (status, answer["action"], answer["pulse_ms"]) == (200, "force-off", 600)
    assert states(POWER) == [False, True, False, True, False]
    assert lasted(POWER, 4) >= 0.6 - EPS
    status, answer = await call(bridge, "admin", "lab/power", {"action": "off"})
    assert (answer["action"], answer["pulse_ms"]) == ("off", 120)
    assert states(POWER) == [False, True, False, True, False, True, False]
    assert lasted(POWER, 6) >= 0.12 - EPS
    assert states(NMI) == states(RESET) == IDLE_HIGH


async def test_active_low_sense_line(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines(False)}})
    status, answer = await call(bridge, "viewer", "lab/power", {"action": "status"})
    assert answer["power"] == "off"  # pulled up: an idle active-low input reads off
    mock_pin_factory().pin(SENSE).drive_low()
    status, answer = await call(bridge, "viewer", "lab/power", {"action": "status"})
    assert (status, answer["power"]) == (200, "on")


async def test_cycle_is_force_off_then_on(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines(sense=False)}})
    status, answer = await call(bridge, "admin", "lab/power", {"action": "cycle"})
    assert status == 200, answer
    assert [(s["action"], s["pulse_ms"]) for s in answer["steps"]] == [
        ("force-off", 600),
        ("on", 120),
    ]
    assert states(POWER) == [False, True, False, True, False]
    assert lasted(POWER, 2) >= 0.6 - EPS
    assert lasted(POWER, 3) >= answer["gap_ms"] / 1000 - EPS
    assert lasted(POWER, 4) >= 0.12 - EPS


async def test_a_second_action_while_one_runs_gets_409(start_bridge: StartBridge) -> None:
    lines = gpio_lines(sense=False)
    lines["power"]["long_pulse"] = "3s"
    bridge = await start_bridge({"lab": {"device": "fake", "lines": lines}})
    force_off = asyncio.create_task(call(bridge, "admin", "lab/power", {"action": "force-off"}))
    await wait_for(lambda: states(POWER) == [False, True])
    refused = await asyncio.gather(
        call(bridge, "admin", "lab/nmi"),
        call(bridge, "admin", "lab/reset"),
        call(bridge, "admin", "lab/power", {"action": "on"}),
        call(bridge, "operator", "lab/sysrq", {"keys": "h"}),
        call(bridge, "operator", "lab/break"),
    )
    assert states(POWER) == [False, True], "the refusals came after the press ended"
    assert [status for status, _ in refused] == [409] * 5, refused
    assert all("busy" in answer["error"] for _, answer in refused), refused
    assert states(NMI) == states(RESET) == IDLE_HIGH
    status, answer = await force_off
    assert (status, answer["pulse_ms"]) == (200, 3000)
    assert states(POWER) == [False, True, False]
    status, _ = await call(bridge, "admin", "lab/nmi")  # free again
    assert status == 200
    assert states(NMI) == [False, True, False]


async def test_stop_during_a_press_releases_the_line_at_once(start_bridge: StartBridge) -> None:
    lines = gpio_lines(sense=False)
    lines["power"]["long_pulse"] = "60s"
    bridge = await start_bridge({"lab": {"device": "fake", "lines": lines}})
    force_off = asyncio.create_task(call(bridge, "admin", "lab/power", {"action": "force-off"}))
    await wait_for(lambda: states(POWER) == [False, True])
    await bridge.daemon.stop()
    assert states(POWER) == [False, True, False]
    assert lasted(POWER, 2) < 30  # released by the stop, long before the 60 s press would end
    force_off.cancel()
    with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
        await force_off
    assert states(POWER) == [False, True, False]
    assert states(NMI) == states(RESET) == IDLE_HIGH


async def test_roles(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines()}}, recorder)
    for path, body in [
        ("lab/nmi", None),
        ("lab/reset", None),
        ("lab/power", {"action": "on"}),
        ("lab/power", {"action": "cycle"}),
    ]:
        for user in ("operator", "viewer"):
            status, answer = await call(bridge, user, path, body)
            assert status == 403, (user, path, answer)
    for path, body in [("lab/sysrq", {"keys": "h"}), ("lab/break", None)]:
        status, answer = await call(bridge, "viewer", path, body)
        assert status == 403, (path, answer)
    assert [states(g) for g in (NMI, RESET, POWER)] == [IDLE_HIGH] * 3
    assert recorder.events == []
    status, _ = await call(bridge, "operator", "lab/sysrq", {"keys": "h"})
    assert status == 200
    status, answer = await call(bridge, "operator", "lab/power", {"action": "status"})
    assert (status, answer["power"]) == (200, "off")


async def test_port_without_lines_answers_501(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"bare": {"device": "fake"}})
    for path, body in [
        ("bare/nmi", None),
        ("bare/reset", None),
        ("bare/power", {"action": "on"}),
        ("bare/power", {"action": "force-off"}),
        ("bare/power", {"action": "cycle"}),
    ]:
        status, answer = await call(bridge, "admin", path, body)
        assert status == 501, (path, answer)
        assert "no" in answer["error"] and "line" in answer["error"]
    status, answer = await call(bridge, "admin", "bare/power", {"action": "status"})
    assert (status, answer["power"]) == (200, "unknown")


async def test_actions_are_audited_with_user_and_result(start_bridge: StartBridge) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "lines": gpio_lines()}})
    assert (await call(bridge, "admin", "lab/nmi"))[0] == 200
    assert (await call(bridge, "operator", "lab/nmi"))[0] == 403
    assert (await call(bridge, "operator", "lab/sysrq", {"keys": "REI", "interval": "0s"}))[
        0
    ] == 200
    async with bridge.session("admin") as http, http.get(f"{bridge.base}/api/audit") as resp:
        events = await resp.json()
    mine = [
        (e["event"], e.get("user"), e.get("keys"), e.get("result"))
        for e in events
        if e["event"] in ("nmi", "sysrq")
    ]
    assert mine == [("nmi", "admin", None, "ok"), ("sysrq", "operator", "rei", "ok")]


# ---- BREAK and SysRq --------------------------------------------------------------------------


def breaks_and_keys(recorder: Recorder) -> list[tuple[Event, Event]]:
    """(BREAK, key write) pairs, checking the strict alternation break, break-end, write."""
    events = recorder.events
    assert [e.kind for e in events] == ["break", "break-end", "write"] * (len(events) // 3)
    return [(events[i], events[i + 2]) for i in range(0, len(events), 3)]


async def test_sysrq_is_break_then_key_after_break_duration(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "300ms"}}, recorder)
    before = time.time()
    status, answer = await call(bridge, "operator", "lab/sysrq", {"keys": "H"})
    assert status == 200, answer
    assert before <= answer.pop("time") <= time.time()
    assert answer == {
        "port": "lab",
        "user": "operator",
        "action": "sysrq",
        "keys": "h",
        "interval_ms": 1000,
        "break_ms": 300,
    }
    [(brk, key)] = breaks_and_keys(recorder)
    assert brk.duration == 0.3
    assert key.data == b"h"
    assert key.at - brk.at >= 0.3 - EPS


async def test_reisub_sequence_keeps_the_interval(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "100ms"}}, recorder)
    status, answer = await call(
        bridge, "operator", "lab/sysrq", {"keys": "REISUB", "interval": "200ms"}
    )
    assert status == 200, answer
    assert (answer["keys"], answer["interval_ms"], answer["break_ms"]) == ("reisub", 200, 100)
    pairs = breaks_and_keys(recorder)
    assert b"".join(key.data for _, key in pairs) == b"reisub"
    for brk, key in pairs:
        assert brk.duration == 0.1
        assert key.at - brk.at >= 0.1 - EPS
    for (_, previous_key), (brk, _) in itertools.pairwise(pairs):
        assert brk.at - previous_key.at >= 0.2 - EPS


async def test_bad_and_denied_keys_are_refused_with_400(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "sysrq_deny": ["c"]}}, recorder)
    for body, reason in [
        ({"keys": "c"}, "denied"),
        ({"keys": "hC"}, "denied"),
        ({"keys": "a"}, "not a SysRq key"),
        ({"keys": ""}, "no SysRq key"),
        ({"keys": "h", "interval": "soon"}, "not a duration"),
        ({"keys": "hh", "interval": "11s"}, "from 0 to 10s"),
        ({"keys": "h" * 33, "interval": "0s"}, "at most 32"),
    ]:
        status, answer = await call(bridge, "operator", "lab/sysrq", body)
        assert status == 400, (body, answer)
        assert reason in answer["error"], (body, answer)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "c"}))
        error = await reader.message("error")
        assert "denied" in error["message"]
        await ws.close()
    assert recorder.events == []


@pytest.mark.parametrize("keys", [None, True])
async def test_keys_that_are_not_a_string_are_refused(
    start_bridge: StartBridge, keys: object
) -> None:
    """str(None) would be "None": SysRq n, o (power off), n, e (terminate all tasks)."""
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "10ms"}}, recorder)
    status, answer = await call(bridge, "operator", "lab/sysrq", {"keys": keys, "interval": "0s"})
    assert (status, recorder.events) == (400, []), answer
    assert "must be a string" in answer["error"]


@pytest.mark.parametrize("keys", [None, True])
async def test_websocket_keys_that_are_not_a_string_are_refused(
    start_bridge: StartBridge, keys: object
) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "10ms"}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await ws.send_str(json.dumps({"type": "sysrq", "keys": keys, "interval": "0s"}))
        await ws.send_str(json.dumps({"type": "ping"}))
        await reader.message("pong")
        await asyncio.sleep(0.3)  # a wrongly accepted sequence would be under way by now
        await reader.pump()
        await ws.close()
    assert recorder.events == []
    assert any("must be a string" in m.get("message", "") for m in reader.messages)


async def test_websocket_break_and_sysrq(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "200ms"}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        await ws.send_str(json.dumps({"type": "break"}))
        result = await reader.message("result", action="break")
        assert (result["duration_ms"], result["user"]) == (200, "operator")
        assert recorder.kinds() == [("break", b""), ("break-end", b"")]
        assert recorder.events[0].duration == 0.2
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "t"}))
        result = await reader.message("result", action="sysrq")
        assert result["keys"] == "t"
        assert recorder.kinds()[2:] == [("break", b""), ("break-end", b""), ("write", b"t")]
        await ws.close()


async def test_keystrokes_wait_until_the_key_is_sent(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "500ms"}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        reader = WsReader(ws)
        assert (await reader.message("hello"))["mode"] == "rw"
        sysrq = asyncio.create_task(call(bridge, "operator", "lab/sysrq", {"keys": "h"}))
        await recorder.wait(lambda events: any(e.kind == "break" for e in events))
        typed_at = time.monotonic()
        await ws.send_bytes(b"ls\r")  # typed during the BREAK
        status, _ = await sysrq
        assert status == 200
        await recorder.wait(lambda events: any(e.data == b"ls\r" for e in events))
        await ws.close()
    assert recorder.kinds() == [
        ("break", b""),
        ("break-end", b""),
        ("write", b"h"),
        ("write", b"ls\r"),
    ]
    brk, _end, key, typed = recorder.events
    assert typed_at < brk.at + 0.5  # it really was typed inside the BREAK+key window
    assert typed.at >= key.at >= brk.at + 0.5 - EPS


async def test_sysrq_while_a_sequence_runs_gets_409(start_bridge: StartBridge) -> None:
    recorder = Recorder()
    bridge = await start_bridge(
        {"lab": {"device": "fake", "break_duration": "50ms", "lines": gpio_lines()}}, recorder
    )
    sequence = asyncio.create_task(
        call(bridge, "operator", "lab/sysrq", {"keys": "sub", "interval": "1s"})
    )
    await recorder.wait(lambda events: any(e.data == b"s" for e in events))
    refused = await asyncio.gather(
        call(bridge, "operator", "lab/sysrq", {"keys": "h"}), call(bridge, "admin", "lab/break")
    )
    assert not sequence.done(), "the refusals came after the sequence ended"
    assert [status for status, _ in refused] == [409, 409], refused
    assert "operator's SysRq sub" in refused[0][1]["error"]  # says what it is busy with
    status, answer = await sequence
    assert (status, answer["keys"]) == (200, "sub")
    assert [e.data for e in recorder.events if e.kind == "write"] == [b"s", b"u", b"b"]
    assert states(NMI) == IDLE_HIGH


async def test_a_sequence_finishes_and_is_audited_when_its_client_leaves(
    start_bridge: StartBridge,
) -> None:
    recorder = Recorder()
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "10ms"}}, recorder)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "lab", mode="rw")
        await ws.send_str(json.dumps({"type": "sysrq", "keys": "reisub", "interval": "200ms"}))
        await recorder.wait(lambda events: any(e.data == b"r" for e in events))
        await ws.close()
    await recorder.wait(lambda events: any(e.data == b"b" for e in events), timeout=5)
    assert [e.data for e in recorder.events if e.kind == "write"] == [bytes([k]) for k in b"reisub"]
    async with bridge.session("admin") as http, http.get(f"{bridge.base}/api/audit") as resp:
        audited = [e for e in await resp.json() if e["event"] == "sysrq"]
    assert [(e["user"], e["keys"], e["result"]) for e in audited] == [("operator", "reisub", "ok")]


async def test_device_lost_during_sysrq_answers_503_and_is_audited(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await start_bridge({"lab": {"device": "fake", "break_duration": "10ms"}})

    async def gone(self: RecordingTransport, data: bytes) -> None:
        raise ConnectionResetError("device gone")

    monkeypatch.setattr(RecordingTransport, "write", gone)
    status, answer = await call(bridge, "operator", "lab/sysrq", {"keys": "h"})
    assert status == 503, answer
    async with bridge.session("admin") as http, http.get(f"{bridge.base}/api/audit") as resp:
        audited = [e for e in await resp.json() if e["event"] == "sysrq"]
    assert len(audited) == 1 and audited[0]["result"].startswith("refused")


async def test_audited_records_every_ending_with_any_field_names() -> None:
    """The one audit wrapper of every front door: ok, refused and interrupted are all recorded,
    and a field may be called "action" (the power endpoint's is)."""
    from bridge.console.actions import audited
    from bridge.console.errors import ActionBusy

    records: list[tuple[str, dict[str, Any]]] = []

    def record(event: str, /, **fields: Any) -> None:
        records.append((event, fields))

    async def done() -> dict[str, Any]:
        return {"power": "on"}

    async def busy() -> dict[str, Any]:
        raise ActionBusy("another action is running")

    assert await audited(record, "power", done(), action="on") == {"power": "on"}
    with pytest.raises(ActionBusy):
        await audited(record, "power", busy(), action="off")
    task = asyncio.ensure_future(audited(record, "sysrq", asyncio.sleep(10), keys="b"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert records == [
        ("power", {"action": "on", "result": "ok"}),
        ("power", {"action": "off", "result": "refused: another action is running"}),
        ("sysrq", {"keys": "b", "result": "interrupted"}),
    ]
