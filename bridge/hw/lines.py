"""GPIO control lines of a port (NMI, reset, power buttons and the power-sense input) via gpiozero.

Owns `GpioLines` (the `ControlLines` implementation for real hardware and for gpiozero's
`MockFactory`), the pulse timing, the power on/off/cycle logic, and the errors for lines that
cannot be set up (`LineSetupError`) or are in use by another action (`LinesBusy`).

Safety rules (design invariant 4): outputs are created with `initial_value=False` (inactive, at
the configured polarity), every pulse returns the line to inactive in a `finally` (so an exception
or a cancelled task never leaves a button pressed), `close()` drives every output inactive before
releasing it, and a failed set-up releases the lines already created.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from bridge.config import LineConfig, LinesConfig
from bridge.hw.interfaces import ActionResult, UnsupportedAction

DEFAULT_CYCLE_GAP = 2.0
"""Seconds between the force-off and the power-on press of a `cycle`."""

OUTPUT_LINES = ("nmi", "reset", "power")

log = logging.getLogger(__name__)


class LineSetupError(Exception):
    """A configured line cannot be driven on this machine; the message names port, line, GPIO.
    `key` is the line's config key (`ports.NAME.lines.LINE`), `cause` the rest of the message."""

    def __init__(self, message: str, key: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.key, self.cause = key, cause or message


class LinesBusy(Exception):
    """Another action is running on this port's lines (answer 409, do not queue)."""


_mock_factory: Any = None


def mock_pin_factory() -> Any:
    """The process-wide gpiozero `MockFactory` used by `pin_factory = "mock"` (demo and tests).

    Tests read pin histories with `mock_pin_factory().pin(17).states`."""
    global _mock_factory
    if _mock_factory is None:
        from gpiozero.pins.mock import MockFactory

        _mock_factory = MockFactory()
    return _mock_factory


@contextmanager
def _gpio_warnings(notes: list[str]) -> Iterator[None]:
    """Collect gpiozero's warnings (pin factory fallbacks and the like) instead of letting them
    escape: they become part of the error message if set-up fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            notes.extend(str(w.message) for w in caught)


_named_factories: dict[str, Any] = {}


def _named_factory(name: str) -> Any:
    """A gpiozero pin factory by its entry-point name (`lgpio`, `rpigpio`, `pigpio`, `native`),
    one per process so that pin reservations are shared by all ports."""
    if name in _named_factories:
        return _named_factories[name]
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name.lower() == name.lower():
            factory = _named_factories[name] = ep.load()()
            return factory
    raise LookupError(f"gpiozero has no pin factory named {name!r}")


@dataclass
class _Output:
    name: str
    cfg: LineConfig
    device: Any  # gpiozero.DigitalOutputDevice

    def describe(self, action: str, seconds: float) -> ActionResult:
        return {
            "action": action,
            "line": self.name,
            "gpio": self.cfg.gpio,
            "active_high": self.cfg.active_high,
            "pulse_ms": round(seconds * 1000),
        }


class GpioLines:
    """A port's GPIO lines. Build with `GpioLines.create(port, lines_config, pin_factory)`.

    One action at a time: a second action while one runs raises `LinesBusy`."""

    def __init__(
        self,
        port: str,
        outputs: dict[str, _Output],
        sense: Any | None,
        cycle_gap: float = DEFAULT_CYCLE_GAP,
    ) -> None:
        self.port = port
        self._outputs = outputs
        self._sense = sense
        self.cycle_gap = cycle_gap
        self._running: str | None = None
        self._closed = False

    @classmethod
    def create(
        cls,
        port: str,
        lines: LinesConfig,
        pin_factory: str = "default",
        *,
        cycle_gap: float = DEFAULT_CYCLE_GAP,
    ) -> GpioLines:
        """Claim the configured lines, all inactive. Raises LineSetupError naming the port and
        the first line that failed; lines claimed before the failure are released."""
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        wanted: list[tuple[str, LineConfig]] = [
            (name, cfg)
            for name in (*OUTPUT_LINES, "power_sense")
            if (cfg := getattr(lines, name)) is not None
        ]
        created: list[Any] = []
        outputs: dict[str, _Output] = {}
        sense: Any | None = None
        notes: list[str] = []
        current = wanted[0] if wanted else ("?", LineConfig(gpio=-1))
        try:
            with _gpio_warnings(notes):
                factory: Any = None
                if pin_factory == "mock":
                    factory = mock_pin_factory()
                elif pin_factory != "default":
                    factory = _named_factory(pin_factory)
                for current in wanted:
                    name, cfg = current
                    if name == "power_sense":
                        # Pull towards the inactive level, so an unconnected input reads "off".
                        sense = DigitalInputDevice(
                            cfg.gpio, pull_up=not cfg.active_high, pin_factory=factory
                        )
                        created.append(sense)
                    else:
                        device = DigitalOutputDevice(
                            cfg.gpio,
                            active_high=cfg.active_high,
                            initial_value=False,
                            pin_factory=factory,
                        )
                        created.append(device)
                        outputs[name] = _Output(name, cfg, device)
        except Exception as exc:
            for device in reversed(created):
                _release(device)
            name, cfg = current
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if notes:
                reason += " (" + "; ".join(dict.fromkeys(notes)) + ")"
            raise LineSetupError(
                f"port {port}: line {name} (GPIO {cfg.gpio}): {reason}"
                f" [pin_factory = {pin_factory!r}]",
                key=f"ports.{port}.lines.{name}",
                cause=f"GPIO {cfg.gpio}: {reason} [gpio.pin_factory = {pin_factory!r}]",
            ) from exc
        for note in dict.fromkeys(notes):
            log.warning("port %s: gpiozero: %s", port, note)
        return cls(port, outputs, sense, cycle_gap)

    # -- ControlLines -------------------------------------------------------------------------

    def supported(self) -> frozenset[str]:
        actions: set[str] = {"status"}
        if "nmi" in self._outputs:
            actions.add("nmi")
        if "reset" in self._outputs:
            actions.add("reset")
        if "power" in self._outputs:
            actions.update({"on", "off", "force-off", "cycle"})
        return frozenset(actions)

    def power_state(self) -> str:
        if self._sense is None or self._closed:
            return "unknown"
        return "on" if self._sense.is_active else "off"

    async def nmi(self) -> ActionResult:
        with self._exclusive("nmi"):
            line = self._line("nmi")
            await self._pulse(line, line.cfg.pulse)
            return line.describe("nmi", line.cfg.pulse)

    async def reset(self) -> ActionResult:
        with self._exclusive("reset"):
            line = self._line("reset")
            await self._pulse(line, line.cfg.pulse)
            return line.describe("reset", line.cfg.pulse)

    async def power(self, action: str) -> ActionResult:
        if action == "reset":
            return await self.reset()
        if action == "status":
            return {"action": "status", "power": self.power_state()}
        if action not in ("on", "off", "force-off", "cycle"):
            raise UnsupportedAction(f"unknown power action {action!r}")
        with self._exclusive(action):
            line = self._line("power", action)
            if action == "cycle":
                return await self._cycle(line)
            before = self.power_state()
            if (action == "on" and before == "on") or (action != "on" and before == "off"):
                return {
                    "action": action,
                    "line": "power",
                    "gpio": line.cfg.gpio,
                    "pulse_ms": 0,
                    "power": before,
                    "note": f"power_sense says the target is already {before}; nothing pressed",
                }
            seconds = line.cfg.long_pulse if action == "force-off" else line.cfg.pulse
            await self._pulse(line, seconds)
            result = line.describe(action, seconds)
            result["power"] = self.power_state()
            return result

    async def close(self) -> None:
        """Drive every output inactive and release all lines. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for line in self._outputs.values():
            _release(line.device)
        if self._sense is not None:
            _release(self._sense)

    # -- internals ----------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self, action: str) -> Iterator[None]:
        if self._closed:
            raise LinesBusy(f"port {self.port}: lines are closed")
        if self._running is not None:
            raise LinesBusy(f"port {self.port}: {self._running} is in progress")
        self._running = action
        try:
            yield
        finally:
            self._running = None

    def _line(self, name: str, action: str | None = None) -> _Output:
        line = self._outputs.get(name)
        if line is None:
            raise UnsupportedAction(
                f"port {self.port} has no {name} line configured"
                + (f" (needed for power {action})" if action else "")
            )
        return line

    async def _pulse(self, line: _Output, seconds: float) -> None:
        """Press: active for `seconds`, then inactive whatever happens (exception, cancel).
        If `close()` ran meanwhile it has already released the line: nothing left to do."""
        if self._closed:
            raise LinesBusy(f"port {self.port}: lines are closed")
        try:
            line.device.on()
            await asyncio.sleep(seconds)
        finally:
            if not self._closed:
                line.device.off()

    async def _cycle(self, line: _Output) -> ActionResult:
        steps: list[ActionResult] = []
        if self.power_state() != "off":
            await self._pulse(line, line.cfg.long_pulse)
            steps.append(line.describe("force-off", line.cfg.long_pulse))
            await asyncio.sleep(self.cycle_gap)
        if self.power_state() != "on":
            await self._pulse(line, line.cfg.pulse)
            steps.append(line.describe("on", line.cfg.pulse))
        return {
            "action": "cycle",
            "line": "power",
            "gpio": line.cfg.gpio,
            "gap_ms": round(self.cycle_gap * 1000),
            "steps": steps,
            "power": self.power_state(),
        }


def _release(device: Any) -> None:
    """Drive an output inactive (if it is one) and close it, never raising."""
    try:
        if hasattr(device, "off"):
            device.off()
    except Exception:
        pass
    try:
        device.close()
    except Exception:
        pass
