"""Which event loop the daemon runs on: asyncio's own, or uvloop's.

SERIAL_BRIDGE_LOOP=asyncio|uvloop chooses; unset, the daemon uses asyncio's loop. uvloop is an
optional extra (`pip install serial-bridge[uvloop]`: wheels exist for x86-64 and aarch64, not for
32-bit Raspberry Pi OS, armv7l); asking for it where it is not installed is an error that says so.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "SERIAL_BRIDGE_LOOP"
CHOICES = ("asyncio", "uvloop")


class LoopChoiceError(RuntimeError):
    """SERIAL_BRIDGE_LOOP names a loop that is not known or not installed."""


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `choice` (default: $SERIAL_BRIDGE_LOOP, else asyncio: None)."""
    choice = (choice if choice is not None else os.environ.get(ENV, "")) or "asyncio"
    if choice not in CHOICES:
        raise LoopChoiceError(f"{ENV}={choice}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        raise LoopChoiceError(
            f"{ENV}=uvloop but uvloop is not installed (pip install 'serial-bridge[uvloop]'; "
            "there is no wheel for 32-bit ARM)"
        ) from exc
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the chosen loop (LoopChoiceError before anything runs)."""
    try:
        factory = loop_factory()
    except LoopChoiceError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
