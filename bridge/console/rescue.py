"""The recovery playbook runner of one port (playbooks themselves: bridge.console.playbook).

`Rescue.start` runs a playbook in its own task, so it goes on (and ends cleanly) whatever happens
to the request that started it; front doors wait for `PlaybookRun.done` and may listen to its
progress. One playbook at a time per port.

While it runs the playbook is a client of the hub holding the writer lease, pinned: nobody can
take it over or let it expire (bridge.console.lease); the one who started it, or an admin,
cancels it. Everyone attached sees `status` messages with `playbook` = {name, user, step, of,
title} ("playbook grub-rescue running, step 3/11"). Each step is a marker in the ring log and an
audit event (`playbook-step`); the start and the end are `playbook` events, the end with the
result: `ok`, `failed` (the step, its `fail` message and what the console showed last) or
`cancelled`. Typed text is never recorded.

Output is matched as text (escape sequences removed, `^`/`$` per line) or, for full-screen
programs such as GRUB's menu and editor, on a VT100 screen kept by pyte (80x24, what GRUB assumes
of a serial terminal, grown to the largest cursor position the output addresses: a UEFI firmware
draws its console, and GRUB's when GRUB uses it, in 80x25, 80x50 or 100x31), a condition on it
counting once it has held for SETTLE (through any output meanwhile): a program drawing a screen
passes the cursor over every line it prints. A reset, power or restart action starts both afresh:
output from before it never satisfies a later step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.config import parse_duration
from bridge.console.errors import ActionBusy, NotAllowed, PortError, PortOffline
from bridge.console.fanout import Chunk
from bridge.console.lease import Attachment
from bridge.console.playbook import Playbook, PlaybookError, Step, keystrokes, substitute
from bridge.hw.interfaces import UnsupportedAction

log = logging.getLogger(__name__)

KEEP = 64 * 1024  # output kept for matching
TAIL = 1024  # characters of the last output a failure shows
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# GRUB's editor: "...\| " then " |..." goes on; the border is "|" on a serial terminal, a box
# drawing character through a UEFI firmware's console (CP437 from a PC-ANSI one: not UTF-8)
_BORDER = "[|\u2502\ufffd]"
_WRAPPED = re.compile(rf"\\{_BORDER}? *\n ?{_BORDER}?")
_POSITION = re.compile(rb"\x1b\[([0-9]{1,4})(?:;([0-9]{1,4}))?[Hf]")  # cursor to row;column
SCREEN = (80, 24)  # columns, lines: a serial terminal's size unless the output addresses more
MAX_SCREEN = (250, 100)  # no larger, whatever a garbled sequence asks for
RESTARTS = {"reset", "power-cycle", "power-on", "restart"}
SETTLE = 0.3  # a screen condition counts once it has held this long (s): not half drawn
CALM_WAIT = 2.0  # at most this long a cursor move waits for the target's redraw to end (s)


class StepFailed(Exception):
    """A step that did not do what it should: the message says what."""


@dataclass
class PlaybookRun:
    """One run: what, for whom, where it is, and (when `done`) how it ended."""

    playbook: Playbook
    args: dict[str, str]
    user: str
    peer: str
    step: int = 0
    started: float = field(default_factory=time.monotonic)
    result: dict[str, Any] | None = None
    cancelled_by: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        steps = self.playbook.steps
        title = steps[self.step - 1].describe() if self.step else "starting"
        return {
            "name": self.playbook.name,
            "user": self.user,
            "step": self.step,
            "of": len(steps),
            "title": title,
        }

    @property
    def patterns(self) -> dict[str, str]:
        """The arguments as inserted into patterns (literal ones escaped)."""
        return self.playbook.pattern_values(self.args)

    def tell(self, message: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(message)


class _Console:
    """What the runner sees of the console: the text since the last match, and a screen."""

    def __init__(self) -> None:
        import pyte  # only while a playbook runs (with prometheus-client, 2 MiB of start-up memory)

        self.text = ""
        self.screen = pyte.Screen(*SCREEN)
        self.stream = pyte.ByteStream(self.screen)
        self.carry = b""  # the end of the last output: a cursor move cut in two is still seen
        self.changed = asyncio.Event()
        self.tail = ""
        self.fed_at = 0.0  # time.monotonic() of the last output

    def feed(self, data: bytes) -> None:
        text = _ESCAPES.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n")
        self.text = (self.text + text)[-KEEP:]
        self.tail = (self.tail + text)[-TAIL * 4 :]
        self.fit(data)
        with contextlib.suppress(Exception):  # a sequence pyte cannot parse changes nothing
            self.stream.feed(data)
        self.fed_at = time.monotonic()
        self.changed.set()

    def fit(self, data: bytes) -> None:
        """Grow the screen to the largest row and column a cursor move in `data` addresses (up
        to MAX_SCREEN), before the move is drawn: on a screen too small pyte would stop the
        cursor at the last row, and a menu drawn there would overwrite itself."""
        screen, seen = self.screen, self.carry + data
        self.carry = seen[-12:]
        columns, lines = screen.columns, screen.lines
        for move in _POSITION.finditer(seen):
            lines = max(lines, int(move[1] or 1))
            columns = max(columns, int(move[2] or 1))
        if (columns, lines) != (screen.columns, screen.lines):
            screen.resize(min(lines, MAX_SCREEN[1]), min(columns, MAX_SCREEN[0]))

    def reset(self) -> None:
        self.text = ""
        self.carry = b""
        self.screen.resize(SCREEN[1], SCREEN[0])
        self.screen.reset()

    def search(self, pattern: str, on_screen: bool) -> bool:
        """Does `pattern` match (consuming the text up to the match)?"""
        if on_screen:
            screen = _WRAPPED.sub("", "\n".join(self.screen.display))
            return re.search(pattern, screen, re.M) is not None
        found = re.search(pattern, self.text.replace("\r", ""), re.M)
        if found is not None:
            self.text = self.text.replace("\r", "")[found.end() :]
        return found is not None

    def cursor_line(self) -> str:
        return str(self.screen.display[self.screen.cursor.y])

    def last_output(self) -> str:
        return _CONTROLS.sub("", self.tail)[-TAIL:]


class _Outlet:
    """The runner as a client of the hub's fan-out (bridge.console.fanout.Outlet, lease.Viewer)."""

    def __init__(self, console: _Console) -> None:
        self.console = console

    def send_chunk(self, chunk: Chunk) -> None:
        self.console.feed(chunk.data)

    def send_history(self, offset: int, data: bytes) -> None:
        self.console.feed(data)

    def send_gap(self, start: int, end: int) -> None:
        return None

    def send_message(self, message: dict[str, Any]) -> None:
        return None

    def backlog(self) -> int:
        return 0

    def cut_off(self) -> None:
        return None

    async def drained(self) -> None:
        return None


class Rescue:
    """Runs playbooks on one port (`port`: the hub, bridge.console.port.Port)."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.current: PlaybookRun | None = None
        self.last: dict[str, Any] | None = None

    def status(self) -> dict[str, Any] | None:
        return self.current.describe() if self.current is not None else None

    def start(self, playbook: Playbook, given: dict[str, str], user: str, peer: str) -> PlaybookRun:
        """Start `playbook` with the arguments `given` (PortError: one runs already, a bad
        argument, the port offline or disabled)."""
        port = self.port
        if self.current is not None:
            what = self.current.describe()
            raise ActionBusy(
                f"port {port.name} is running playbook {what['name']} for {what['user']} "
                f"(step {what['step']}/{what['of']}); cancel it first"
            )
        try:
            args = playbook.arguments(given)
        except PlaybookError as exc:
            raise PortError(str(exc)) from None
        port.check_enabled()
        if not port.online:
            raise PortOffline(f"port {port.name} is offline")
        run = PlaybookRun(playbook, args, user, peer)
        console = _Console()
        att: Attachment = port.attach(  # TooManyClients, PortDisabled: refused here
            _Outlet(console), user, peer, "rw", True, port.offset, privileged=True
        )
        port.lease.pinned = att
        self.current = run
        run.task = asyncio.get_running_loop().create_task(self._run(run, att, console))
        return run

    def cancel(self, user: str, any_user: bool) -> dict[str, Any]:
        """Stop the running playbook (its starter, or an admin: `any_user`)."""
        run = self.current
        if run is None or run.task is None:
            raise ActionBusy(f"no playbook is running on port {self.port.name}")
        if run.user != user and not any_user:
            raise NotAllowed(f"only an admin or {run.user} may cancel playbook {run.playbook.name}")
        run.cancelled_by = user
        run.task.cancel()
        return {"action": "cancel", "port": self.port.name, "cancelled": run.describe()}

    async def stop(self, why: str) -> None:
        """The port closes: a running playbook is cancelled (`why`) and has ended on return."""
        run = self.current
        if run is not None and run.task is not None:
            run.cancelled_by = why
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task

    async def _run(self, run: PlaybookRun, att: Attachment, console: _Console) -> None:
        port, book = self.port, run.playbook
        where = {"user": run.user, "playbook": book.name}
        port.events.record("playbook", {**where, "args": run.args, "result": "started"})
        result: dict[str, Any] = {"result": "ok"}
        try:
            for number, step in enumerate(book.steps, start=1):
                run.step = number
                port.announce("playbook", run.user)
                fields = {**where, "step": number, "of": len(book.steps), "title": step.describe()}
                port.events.record("playbook-step", fields)
                run.tell({"type": "step", **fields})
                await self._step(step, run, att, console)
        except (StepFailed, PortError, UnsupportedAction, re.error, ValueError) as exc:
            step = book.steps[run.step - 1]
            message = step.fail or str(exc)
            result = {"result": "failed", "step": run.step, "title": step.describe()}
            result |= {"message": message, "output": console.last_output()}
        except asyncio.CancelledError:
            result = {"result": "cancelled", "step": run.step, "by": run.cancelled_by}
            if run.cancelled_by is None:
                raise
        finally:
            result |= {"seconds": round(time.monotonic() - run.started, 3)}
            run.result = {"playbook": book.name, "port": port.name, "user": run.user, **result}
            port.lease.pinned = None
            self.current, self.last = None, run.result
            await port.detach(att)
            end = {k: v for k, v in run.result.items() if k not in ("port", "output")}
            port.events.record("playbook", end)
            port.announce("playbook-done", run.user)
            run.tell({"type": "result", **run.result})
            run.done.set()

    async def _step(self, step: Step, run: PlaybookRun, att: Attachment, console: _Console) -> None:
        args = run.args
        pattern = substitute(step.value, run.patterns if step.kind == "expect" else args)
        timeout = parse_duration(substitute(step.timeout, args))
        if step.kind == "pause":
            await asyncio.sleep(parse_duration(pattern))
        elif step.kind == "send":
            await self.port.write(att, keystrokes(step.value, args))
        elif step.kind == "action":
            await self._action(pattern, step, run, console)
        elif step.kind == "expect":
            found = lambda: console.search(pattern, step.screen)  # noqa: E731
            seen = await self._wait(console, found, timeout, SETTLE if step.screen else 0.0)
            if not seen and not step.optional:
                raise StepFailed(f"{pattern!r} not seen within {timeout:g} s")
        else:
            await self._repeat(step, run, att, console, timeout)

    async def _repeat(
        self, step: Step, run: PlaybookRun, att: Attachment, console: _Console, within: float
    ) -> None:
        args = run.args
        until, cursor = substitute(step.until, run.patterns), substitute(step.cursor, run.patterns)
        times = int(substitute(step.times, args)) if step.times else None
        every = parse_duration(substitute(step.every, args))
        deadline = time.monotonic() + within

        def reached() -> bool:
            if until and console.search(until, step.screen):
                return True
            return bool(cursor) and re.search(cursor, console.cursor_line()) is not None

        settle = SETTLE if step.screen or cursor else 0.0
        sent = 0
        data = keystrokes(step.value, args)
        while not (until or cursor) or not await self._wait(console, reached, 0.0, settle):
            if times is not None and sent >= times:
                if until or cursor:
                    raise StepFailed(f"not reached after {sent} times")
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"not reached within {within:g} s")
            pressed = time.monotonic()
            await self.port.write(att, data)
            sent += 1
            if cursor:  # one key at a time: wait for the answer, judge the screen it leaves
                answered = lambda at=pressed: console.fed_at >= at  # noqa: E731
                if await self._wait(console, answered, every):
                    await self._quiet(console, settle, CALM_WAIT)
            elif until:
                if await self._wait(console, reached, every, settle):
                    return
            else:
                await asyncio.sleep(every)

    async def _action(self, name: str, step: Step, run: PlaybookRun, console: _Console) -> None:
        port, user = self.port, run.user
        supported = port.lines.supported()
        if name == "restart":
            name = (
                "reset" if "reset" in supported else "power-cycle" if "cycle" in supported else ""
            )
            if not name:
                port.announce("playbook", user)  # the target restarts by itself: wait for it
                return
        if name in ("none", ""):
            return
        if name in RESTARTS:
            console.reset()
        if name == "break":
            await port.send_break(user)
        elif name == "sysrq":
            await port.sysrq(substitute(step.keys, run.args), 0.0, user)
        elif name == "nmi" or name == "reset":
            await port.line_action(name, user)
        elif name.startswith("power-"):
            await port.line_action("power:" + name.removeprefix("power-"), user)
        else:
            raise StepFailed(f"unknown action {name!r}")

    @staticmethod
    async def _quiet(console: _Console, settle: float, within: float) -> None:
        """Wait until no output came for `settle` s (at most `within` s)."""
        deadline = time.monotonic() + within
        while (now := time.monotonic()) < deadline and now - console.fed_at < settle:
            console.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(console.changed.wait(), settle - (now - console.fed_at))

    @staticmethod
    async def _wait(
        console: _Console, done: Callable[[], bool], within: float, settle: float = 0.0
    ) -> bool:
        """Wait until `done()` (asked at once and after each new output), up to `within` s; with
        `settle`, until it has held that long, through any output meanwhile (a screen half drawn
        is not judged: the cursor passes every line as it is printed). A condition seen before
        `within` ends gets `settle` more to prove itself."""
        deadline = time.monotonic() + within
        since: float | None = None  # when done() began to hold
        while True:
            console.changed.clear()
            now = time.monotonic()
            if done():
                since = min(now, console.fed_at) if since is None else since  # no output since
                if now - since >= settle:
                    return True
                left = min(since + settle, deadline + settle) - now
            else:
                since = None
                left = deadline - now
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(console.changed.wait(), left)
