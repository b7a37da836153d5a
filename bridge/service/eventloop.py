"""Which event loop the daemon runs on: uvloop's where it is installed, else asyncio's own.

uvloop is a dependency wherever it has a wheel (x86-64, aarch64: a 64-bit Raspberry Pi OS); on
32-bit Raspberry Pi OS (armv7l) there is none and the daemon runs on asyncio's loop. Measured in
bench/ (README "Performance"): on uvloop a keystroke costs the daemon a third less CPU, one
client's throughput is about a fifth higher, and 48 streaming ports cost the same, for 1-2 MiB more
memory. SERIAL_BRIDGE_LOOP=asyncio|uvloop chooses explicitly; asking for uvloop where it is not
installed is an error that says so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "SERIAL_BRIDGE_LOOP"
CHOICES = ("asyncio", "uvloop")


class LoopChoiceError(RuntimeError):
    """SERIAL_BRIDGE_LOOP names a loop that is not known or not installed."""


def chosen(choice: str | None = None) -> str:
    """The loop to run: `choice`, else $SERIAL_BRIDGE_LOOP, else uvloop if installed."""
    choice = choice if choice is not None else os.environ.get(ENV, "")
    if not choice:
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if choice not in CHOICES:
        raise LoopChoiceError(f"{ENV}={choice}: expected one of {', '.join(CHOICES)}")
    return choice


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for the loop `chosen(choice)` names (None: asyncio's own)."""
    if chosen(choice) == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        raise LoopChoiceError(
            f"{ENV}=uvloop but uvloop is not installed (pip install uvloop; "
            "there is no wheel for 32-bit ARM)"
        ) from exc
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def running() -> str:
    """The running loop's name, as SERIAL_BRIDGE_LOOP spells it (the daemon logs it)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the chosen loop (LoopChoiceError before anything runs)."""
    try:
        factory = loop_factory()
    except LoopChoiceError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def run_command(main: Coroutine[Any, Any, int]) -> int:
    """run(main) for a command (`serve`, `demo`): its exit status, or 1 with the one line that
    says why the chosen loop cannot start."""
    try:
        return run(main)
    except LoopChoiceError as exc:
        print(f"serial-bridge: cannot start: {exc}", file=sys.stderr)
        return 1
