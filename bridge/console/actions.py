"""Actions on one target: BREAK, SysRq (BREAK + key) and NMI/reset/power through control lines.

Owns the one-at-a-time rule and what may interrupt it:

- A second action while one runs is refused (ActionBusy, 409) instead of queued, like a busy
  hardware button; a power status query neither waits for nor blocks one.
- NMI, reset and power are never held up by a SysRq sequence: they stop it before its next key
  (it ends with ActionCancelled, saying by whom) and run once the BREAK+key on the line is over.
- `cancel` stops a running SysRq sequence before its next key (the front door lets an admin, or
  the user who started it, do so). A sequence also stops, within CHECK_EVERY, once the `valid`
  callable its front door gave says the credential behind it has ended.
- Every bound is checked here, whatever the front door: at most MAX_KEYS keys, a finite interval
  of at most MAX_INTERVAL, keys valid and not in the port's `sysrq_deny`.

Input around BREAKs: during a BREAK+key step keystrokes wait (`quiet`), so a typed byte can never
land between the BREAK and its key. After a plain BREAK the kernel takes the next character it
receives within SYSRQ_WINDOW as a SysRq key: the writer's next keystroke is checked against
`sysrq_deny` (`check_typed`), and `on_release` bytes wait until the window has closed
(`between_steps`), so the "e" of "exit" never becomes SysRq-e. Neither waits for a whole
sequence, only for the step on the line.

Each action leaves a marker in the ring log; the front door that asked audits it, since it knows
the peer and the outcome. The electrical side is in bridge.hw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bridge.config import PortConfig
from bridge.console.errors import (
    ActionBusy,
    ActionCancelled,
    LinesFailed,
    NotAllowed,
    PortError,
    PortOffline,
    SysrqDenied,
    result_of,
)
from bridge.console.sysrq import SYSRQ_KEYS, validate_keys
from bridge.hw.interfaces import ActionResult, ConsoleTransport, ControlLines, UnsupportedAction

log = logging.getLogger(__name__)

MAX_KEYS = 32  # keys in one SysRq sequence
MAX_INTERVAL = 10.0  # seconds between the keys of a sequence
SYSRQ_WINDOW = 5.0  # Linux serial_core: a character within 5 s of a BREAK is a SysRq key
CHECK_EVERY = 0.5  # how often a waiting sequence asks whether its credential still holds
CREDENTIAL_ENDED = "stopped because its credential ended"

__all__ = ["ActionCancelled", "Actions", "SysrqDenied", "outcome"]  # what front doors take

Marker = Callable[[str, dict[str, Any]], None]
Validity = Callable[[], bool]


T = TypeVar("T")


async def audited(
    record: Callable[..., None], what: str, action: Awaitable[T], /, **fields: Any
) -> T:
    """Await a port action for a front door; `record(what, **fields, result=...)` (its audit
    trail) is called whatever ends it, with how it ended, before any error reaches the door: every
    action that may have touched the target is audited, a bug or a dropped request included.
    (Positional-only parameters: `fields` may well hold an "action".)"""
    failure: BaseException | None = None
    try:
        return await action
    except BaseException as exc:
        failure = exc
        raise
    finally:
        record(what, **fields, **outcome(failure))


def outcome(failure: BaseException | None) -> dict[str, str]:
    """How an action ended, as audit fields (see `audited`)."""
    if failure is None:
        return {"result": "ok"}
    if isinstance(failure, UnsupportedAction):
        return {"result": "unsupported"}
    if isinstance(failure, ActionCancelled):
        return {"result": f"cancelled: {failure}", "sent": failure.sent}
    if isinstance(failure, PortError):
        return {"result": f"refused: {failure}"}
    if isinstance(failure, asyncio.CancelledError):
        return {"result": "interrupted"}
    return {"result": f"failed: {type(failure).__name__}"}


class ActionTarget(Protocol):
    """What actions need of the hub: its name and config, and the device as it is now."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> PortConfig: ...

    @property
    def lines(self) -> ControlLines: ...

    @property
    def transport(self) -> ConsoleTransport | None: ...

    def check_enabled(self) -> None:
        """Raise PortDisabled when the administrator disabled the port."""


@dataclass
class Running:
    """The action a port is running: what, for whom, and how to stop it if it is a sequence."""

    kind: str  # "sysrq", "break", "nmi", "reset", "power"
    user: str
    keys: str = ""
    sent: str = ""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "sysrq":
            return f"{self.user}'s SysRq {self.keys} ({len(self.sent)} of {len(self.keys)} sent)"
        return f"{self.user}'s {self.kind}" if self.user else f"a change of {self.kind}"

    def cancel(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()


class Actions:
    """The actions of one port, one at a time."""

    def __init__(self, target: ActionTarget, mark: Marker) -> None:
        self._target = target
        self._mark = mark  # an event marker in the port's ring log
        self._lock = asyncio.Lock()  # one action at a time
        self._step = asyncio.Lock()  # a BREAK(+key) on the line, or on_release being written
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._window_until = 0.0  # monotonic end of the SysRq window a plain BREAK opened
        self._preempting = False
        self.running: Running | None = None
        # for the metrics: (action, result) -> n, and BREAK conditions sent (SysRq's included)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.breaks = 0

    @contextlib.contextmanager
    def _counted(self, action: str) -> Iterator[None]:
        """Count the action by its result; a disabled port refuses it here, first."""
        try:
            self._target.check_enabled()
            yield
        except Exception as exc:
            self.counts[action, result_of(exc)] += 1
            raise
        self.counts[action, "ok"] += 1

    # ---- input around BREAKs ----------------------------------------------------------------

    async def quiet(self) -> None:
        """Wait while a BREAK+key step is on the line (keystrokes do, before they are written)."""
        await self._quiet.wait()

    def check_typed(self, data: bytes) -> None:
        """Called just before keystrokes are written: inside the SysRq window of a plain BREAK
        their first byte is a SysRq key, refused (SysrqDenied) if `sysrq_deny` has it; once a
        byte goes out, the window is closed."""
        if not data or time.monotonic() >= self._window_until:
            return
        key = chr(data[0]).lower()
        if key in {k.lower() for k in self._target.cfg.sysrq_deny}:
            raise SysrqDenied(
                f"{key!r} typed within {SYSRQ_WINDOW:.0f} s of a BREAK is SysRq {key!r} "
                f"({SYSRQ_KEYS[key].name}), denied on this port (sysrq_deny)"
            )
        self._window_until = 0.0

    @contextlib.asynccontextmanager
    async def between_steps(self) -> AsyncIterator[None]:
        """Hold off BREAKs while bytes that must never be a SysRq key are written (`on_release`):
        waits for a BREAK+key step on the line and for a plain BREAK's window to close, never
        for a whole sequence."""
        async with self._step:
            left = self._window_until - time.monotonic()  # no BREAK can reopen it meanwhile
            if left > 0:
                await asyncio.sleep(left)
            yield

    # ---- the one-at-a-time rule -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self, run: Running, preempt: bool = False) -> AsyncIterator[Running]:
        current = self.running
        if self._lock.locked():
            if not (preempt and current is not None and current.kind in ("sysrq", "break")):
                raise ActionBusy(self._busy(current))
            if self._preempting:
                raise ActionBusy(self._busy(current))
            current.cancel(f"pre-empted by {run.user}'s {run.kind}")
            self._preempting = True
            try:
                await self._lock.acquire()  # the step on the line ends first
            finally:
                self._preempting = False
        else:
            await self._lock.acquire()
        self.running = run
        try:
            yield run
        finally:
            self.running = None
            self._lock.release()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The one-at-a-time guard for other operations that must not overlap an action (a
        change of line settings or DTR/RTS): ActionBusy while one runs."""
        async with self._exclusive(Running("line settings", "")):
            yield

    def _busy(self, current: Running | None) -> str:
        what = current.describe() if current is not None else "another action"
        return f"port {self._target.name} is busy with {what}; try again"

    def cancel(self, user: str, any_user: bool) -> ActionResult:
        """Stop the running SysRq sequence before its next key: ActionBusy if none runs,
        NotAllowed if it is another user's and not `any_user` (an admin)."""
        current = self.running
        if current is None or current.kind != "sysrq" or current.stop.is_set():
            what = "nothing" if current is None else current.describe()
            raise ActionBusy(f"no SysRq sequence to cancel on port {self._target.name} ({what})")
        if current.user != user and not any_user:
            raise NotAllowed(f"only an admin or {current.user} may cancel {current.describe()}")
        current.cancel(f"cancelled by {user}")
        self._mark("cancel", {"user": user, "of": current.user})
        return self._done({"action": "cancel", "cancelled": current.describe()}, user)

    # ---- BREAK and SysRq --------------------------------------------------------------------

    def _breakable(self) -> ConsoleTransport:
        """The transport, if it can send a BREAK: PortOffline, or UnsupportedAction saying why
        not (a pseudo-terminal), before anything reaches the line."""
        transport = self._target.transport
        if transport is None:
            raise PortOffline(f"port {self._target.name} is offline")
        reason = transport.break_unsupported()
        if reason:
            raise UnsupportedAction(f"port {self._target.name}: {reason}")
        return transport

    async def _break_then(self, key: bytes) -> None:
        name, transport = self._target.name, self._breakable()
        async with self._step:
            self._quiet.clear()
            window = self._window_until  # a BREAK without its key leaves the window open
            try:
                await transport.drain()
                self.breaks += 1
                window = time.monotonic() + SYSRQ_WINDOW
                await transport.send_break(self._target.cfg.break_duration)
                window = time.monotonic() + SYSRQ_WINDOW
                if key:
                    await transport.write(key)
                    window = 0.0
            except OSError as exc:  # DeviceUnavailable, ConnectionResetError: the device went away
                raise PortOffline(f"port {name}: BREAK failed: {exc}") from exc
            finally:  # also when cancelled half-way (the session of an SSH command ended)
                self._window_until = window
                self._quiet.set()

    async def send_break(self, user: str) -> ActionResult:
        with self._counted("break"):
            self._breakable()
            async with self._exclusive(Running("break", user)):
                await self._break_then(b"")
        result = {"action": "break", "duration_ms": round(self._target.cfg.break_duration * 1000)}
        self._mark("break", {"user": user})
        return self._done(result, user)

    def check_sysrq(self, keys: object, interval: object) -> tuple[str, float]:
        """Keys and interval as a sequence needs them, or PortError (400) naming the problem."""
        try:
            valid = validate_keys(keys, self._target.cfg.sysrq_deny)
        except ValueError as exc:
            raise PortError(str(exc)) from None
        if len(valid) > MAX_KEYS:
            raise PortError(f"{len(valid)} SysRq keys; at most {MAX_KEYS} in one sequence")
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or not 0 <= interval <= MAX_INTERVAL
        ):
            raise PortError(f"interval must be a duration from 0 to {MAX_INTERVAL:g}s")
        return valid, float(interval)

    async def sysrq(
        self, keys: str, interval: float, user: str, valid: Validity | None = None
    ) -> ActionResult:
        """BREAK + key for each key, `interval` seconds apart. Stops before the next key when
        cancelled, pre-empted or when `valid()` turns false (ActionCancelled)."""
        keys, interval = self.check_sysrq(keys, interval)
        with self._counted("sysrq"):
            self._breakable()  # refused as a whole, not after a first key sent as plain text
            await self._sequence(Running("sysrq", user, keys), interval, valid)
        return self._done(
            {
                "action": "sysrq",
                "keys": keys,
                "interval_ms": round(interval * 1000),
                "break_ms": round(self._target.cfg.break_duration * 1000),
            },
            user,
        )

    async def _sequence(self, run: Running, interval: float, valid: Validity | None) -> None:
        keys, user = run.keys, run.user
        async with self._exclusive(run):
            try:
                for i, key in enumerate(keys):
                    if i:
                        await self._pause(run, interval, valid)
                    elif valid is not None and not valid():
                        run.cancel(CREDENTIAL_ENDED)
                    if run.stop.is_set():
                        raise ActionCancelled(
                            f"SysRq {keys} {run.reason} after {len(run.sent)} of {len(keys)} "
                            f"keys ({run.sent or 'none'} sent)",
                            run.sent,
                        )
                    await self._break_then(key.encode("ascii"))
                    run.sent += key
            finally:
                if run.sent:
                    done = {"keys": run.sent, **({"stopped": run.reason} if run.reason else {})}
                    self._mark("sysrq", {"user": user, **done})

    @staticmethod
    async def _pause(run: Running, interval: float, valid: Validity | None) -> None:
        """Wait `interval`, cut short by a stop; every CHECK_EVERY, ask `valid()`."""
        deadline = time.monotonic() + interval
        while not run.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop.wait(), min(left, CHECK_EVERY))
            if valid is not None and not valid():
                run.cancel(CREDENTIAL_ENDED)

    # ---- control lines ----------------------------------------------------------------------

    async def line_action(self, action: str, user: str) -> ActionResult:
        """nmi | reset | power:on|off|force-off|cycle|status through the port's control lines.
        A status query does not wait for (or block) a running action; the others pre-empt a
        SysRq sequence or BREAK."""
        lines = self._target.lines
        if action == "power:status":
            self._target.check_enabled()
            if "status" not in lines.supported():
                return self._done({"action": "power", "power": lines.power_state()}, user)
            return self._done(await self._call_lines(action), user)
        kind = action.split(":")[0]
        with self._counted(action.replace(":", "-")):
            async with self._exclusive(Running(kind, user), preempt=True):
                result = await self._call_lines(action)
        self._mark(kind, {"user": user, **result})
        return self._done(result, user)

    async def _call_lines(self, action: str) -> ActionResult:
        lines, name = self._target.lines, self._target.name
        try:
            if action == "nmi":
                return await lines.nmi()
            if action == "reset":
                return await lines.reset()
            return await lines.power(action.removeprefix("power:"))
        except UnsupportedAction:
            raise
        except Exception as exc:
            log.exception("port %s: %s failed", name, action)
            raise LinesFailed(f"port {name}: {action} failed: {exc}") from exc

    def _done(self, result: ActionResult, user: str) -> ActionResult:
        return {"port": self._target.name, "user": user, "time": time.time(), **result}
