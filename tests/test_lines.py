"""GpioLines on gpiozero's MockFactory: exact pin histories, pulse lengths, polarity, power logic,
busy refusal, and that nothing is driven at creation, close, failure or cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import LineConfig, LinesConfig
from bridge.hw.interfaces import UnsupportedAction
from bridge.hw.lines import GpioLines, LinesBusy, LineSetupError, mock_pin_factory
from tests.conftest import pin_states as states

NMI, RESET, POWER, SENSE = 17, 27, 22, 23
PULSE, LONG = 0.05, 0.15
GAP = 0.05
SLACK = 0.25  # scheduling delay allowed on a busy 2-core machine


pytestmark = pytest.mark.usefixtures("mock_pins")


def durations(gpio: int) -> list[float]:
    """How long each state after the first lasted before the next change (or until now)."""
    times = [s.timestamp for s in mock_pin_factory().pin(gpio).states]
    return times[2:]


def lines_config(active_high: bool = True, sense: bool | None = None) -> LinesConfig:
    def out(gpio: int) -> LineConfig:
        return LineConfig(gpio, active_high, PULSE, LONG)

    return LinesConfig(
        nmi=out(NMI),
        reset=out(RESET),
        power=out(POWER),
        power_sense=None if sense is None else LineConfig(SENSE, sense),
    )


@pytest.fixture
async def lines() -> AsyncIterator[GpioLines]:
    created = GpioLines.create("lab1", lines_config(), "mock", cycle_gap=GAP)
    yield created
    await created.close()


def assert_pulse(seconds: float, expected: float) -> None:
    assert expected * 0.95 <= seconds <= expected + SLACK, (seconds, expected)


async def test_creation_and_close_drive_nothing() -> None:
    lines = GpioLines.create("lab1", lines_config(), "mock")
    for gpio in (NMI, RESET, POWER):
        assert states(gpio) == [False]
    await lines.close()
    await lines.close()
    for gpio in (NMI, RESET, POWER):
        assert states(gpio) == [False]


async def test_active_low_lines_idle_high_and_stay_there() -> None:
    lines = GpioLines.create("lab1", lines_config(active_high=False), "mock")
    for gpio in (NMI, RESET, POWER):
        assert states(gpio) == [False, True]  # the mock pin starts low; inactive is high
    await lines.close()
    for gpio in (NMI, RESET, POWER):
        assert states(gpio) == [False, True]


@pytest.mark.parametrize("action,gpio", [("nmi", NMI), ("reset", RESET)])
async def test_pulse_is_exactly_one_press_of_the_configured_length(
    lines: GpioLines, action: str, gpio: int
) -> None:
    result = await getattr(lines, action)()
    assert result == {
        "action": action,
        "line": action,
        "gpio": gpio,
        "active_high": True,
        "pulse_ms": 50,
    }
    assert states(gpio) == [False, True, False]
    assert_pulse(durations(gpio)[0], PULSE)
    others = {NMI, RESET, POWER} - {gpio}
    assert all(states(g) == [False] for g in others)


async def test_active_low_pulse_goes_low_for_the_pulse() -> None:
    lines = GpioLines.create("lab1", lines_config(active_high=False), "mock")
    try:
        result = await lines.nmi()
        assert result["active_high"] is False
        assert states(NMI) == [False, True, False, True]
        assert_pulse(mock_pin_factory().pin(NMI).states[3].timestamp, PULSE)
    finally:
        await lines.close()
    assert states(NMI) == [False, True, False, True]


async def test_cancelled_pulse_releases_the_line() -> None:
    slow = LinesConfig(nmi=LineConfig(NMI, True, pulse=30.0))
    lines = GpioLines.create("lab1", slow, "mock")
    task = asyncio.create_task(lines.nmi())
    await asyncio.sleep(0)  # the task presses and sleeps
    assert states(NMI) == [False, True]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert states(NMI) == [False, True, False]
    await lines.close()
    assert states(NMI) == [False, True, False]


async def test_close_during_a_pulse_releases_at_once_and_the_action_ends_quietly() -> None:
    lines = GpioLines.create("lab1", lines_config(), "mock", cycle_gap=GAP)
    pulse = asyncio.create_task(lines.nmi())
    await asyncio.sleep(0)
    assert states(NMI) == [False, True]
    await lines.close()
    assert states(NMI) == [False, True, False]
    async with asyncio.timeout(5):
        assert (await pulse)["action"] == "nmi"
    assert states(NMI) == [False, True, False]

    lines = GpioLines.create("lab1", lines_config(), "mock", cycle_gap=GAP)
    cycle = asyncio.create_task(lines.power("cycle"))
    await asyncio.sleep(0)
    await lines.close()
    with pytest.raises(LinesBusy, match="closed"):
        async with asyncio.timeout(5):
            await cycle  # the second press of the cycle is not made
    assert states(POWER) == [False, True, False]
    with pytest.raises(LinesBusy, match="closed"):
        await lines.reset()


async def test_timeout_during_long_press_releases_the_line(lines: GpioLines) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(LONG / 3):
            await lines.power("force-off")
    assert states(POWER) == [False, True, False]
    assert (await lines.nmi())["action"] == "nmi"  # not left busy


async def test_second_action_while_one_runs_is_refused(lines: GpioLines) -> None:
    first = asyncio.create_task(lines.power("force-off"))
    await asyncio.sleep(0)
    with pytest.raises(LinesBusy, match="lab1: force-off is in progress"):
        await lines.reset()
    with pytest.raises(LinesBusy):
        await lines.power("on")
    assert (await lines.power("status"))["power"] == "unknown"  # status is not an action
    await first
    assert states(RESET) == [False]
    assert states(POWER) == [False, True, False]
    await lines.reset()
    assert states(RESET) == [False, True, False]


async def test_power_without_sense_always_presses(lines: GpioLines) -> None:
    on = await lines.power("on")
    assert on["pulse_ms"] == 50
    assert on["power"] == "unknown"
    off = await lines.power("off")
    assert off["pulse_ms"] == 50
    force = await lines.power("force-off")
    assert force["pulse_ms"] == 150
    assert states(POWER) == [False, True, False, True, False, True, False]
    d = durations(POWER)
    assert_pulse(d[0], PULSE)
    assert_pulse(d[2], PULSE)
    assert_pulse(d[4], LONG)
    assert await lines.power("status") == {"action": "status", "power": "unknown"}
    assert lines.power_state() == "unknown"


@pytest.mark.parametrize("active_high", [True, False])
async def test_power_with_sense_presses_only_when_needed(active_high: bool) -> None:
    lines = GpioLines.create("lab1", lines_config(sense=active_high), "mock")
    sense = mock_pin_factory().pin(SENSE)
    try:
        (sense.drive_low if active_high else sense.drive_high)()  # target off
        assert lines.power_state() == "off"
        assert (await lines.power("off"))["pulse_ms"] == 0
        assert (await lines.power("force-off"))["pulse_ms"] == 0
        assert states(POWER) == [False]
        assert (await lines.power("on"))["pulse_ms"] == 50
        assert states(POWER) == [False, True, False]

        (sense.drive_high if active_high else sense.drive_low)()  # target on
        assert (await lines.power("status"))["power"] == "on"
        skipped = await lines.power("on")
        assert skipped["pulse_ms"] == 0
        assert "already on" in skipped["note"]
        assert states(POWER) == [False, True, False]
        assert (await lines.power("off"))["power"] == "on"
        assert states(POWER) == [False, True, False, True, False]
    finally:
        await lines.close()


async def test_cycle_without_sense_is_long_press_gap_short_press(lines: GpioLines) -> None:
    result = await lines.power("cycle")
    assert [s["action"] for s in result["steps"]] == ["force-off", "on"]
    assert result["gap_ms"] == 50
    assert states(POWER) == [False, True, False, True, False]
    long_press, gap, short_press = durations(POWER)
    assert_pulse(long_press, LONG)
    assert_pulse(gap, GAP)
    assert_pulse(short_press, PULSE)


async def test_cycle_with_sense_skips_what_is_not_needed() -> None:
    lines = GpioLines.create("lab1", lines_config(sense=True), "mock", cycle_gap=GAP)
    sense = mock_pin_factory().pin(SENSE)
    try:
        sense.drive_low()  # off: only the power-on press
        result = await lines.power("cycle")
        assert [s["action"] for s in result["steps"]] == ["on"]
        assert states(POWER) == [False, True, False]
        sense.drive_high()  # on and it stays on: force-off, then no press that would power it
        result = await lines.power("cycle")
        assert [s["action"] for s in result["steps"]] == ["force-off"]
        assert result["power"] == "on"
        assert states(POWER) == [False, True, False, True, False]
    finally:
        await lines.close()


async def test_supported_follows_the_configured_lines() -> None:
    only_nmi = GpioLines.create("lab1", LinesConfig(nmi=LineConfig(NMI)), "mock")
    try:
        assert only_nmi.supported() == frozenset({"nmi", "status"})
        with pytest.raises(UnsupportedAction, match="lab1 has no reset line"):
            await only_nmi.reset()
        with pytest.raises(UnsupportedAction, match="no power line"):
            await only_nmi.power("on")
        with pytest.raises(UnsupportedAction, match="unknown power action"):
            await only_nmi.power("explode")
    finally:
        await only_nmi.close()
    full = GpioLines.create("lab1", lines_config(), "mock")
    assert full.supported() == {"nmi", "reset", "on", "off", "force-off", "cycle", "status"}
    await full.close()


async def test_setup_error_names_port_and_line_and_releases_the_others() -> None:
    clash = LinesConfig(nmi=LineConfig(NMI), reset=LineConfig(RESET), power=LineConfig(NMI))
    with pytest.raises(LineSetupError, match=r"^port lab1: line power \(GPIO 17\): GPIOPinInUse"):
        GpioLines.create("lab1", clash, "mock")
    assert states(NMI) == [False]
    assert states(RESET) == [False]
    again = GpioLines.create("lab1", clash.__class__(nmi=LineConfig(NMI)), "mock")
    await again.close()  # GPIO 17 was released by the failed set-up


def test_setup_error_for_a_pin_that_does_not_exist() -> None:
    with pytest.raises(LineSetupError, match=r"port lab2: line nmi \(GPIO 99\)"):
        GpioLines.create("lab2", LinesConfig(nmi=LineConfig(99)), "mock")


@pytest.mark.skipif(
    Path("/proc/device-tree/model").exists(), reason="this machine may have real GPIO"
)
def test_default_factory_without_gpio_is_a_clear_error_not_a_warning() -> None:
    with pytest.raises(LineSetupError) as info:
        GpioLines.create("rack4", LinesConfig(reset=LineConfig(RESET)), "default")
    message = str(info.value)
    assert message.startswith("port rack4: line reset (GPIO 27): ")
    assert "pin_factory = 'default'" in message


def test_unknown_named_factory_is_a_clear_error() -> None:
    with pytest.raises(LineSetupError, match=r"port lab1: line nmi .*no pin factory named"):
        GpioLines.create("lab1", LinesConfig(nmi=LineConfig(NMI)), "nosuch")
