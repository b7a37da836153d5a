"""systemd's notification protocol (sd_notify) and watchdog, with no dependency beyond the stdlib.

Owns: talking to `$NOTIFY_SOCKET` (READY, RELOADING, STOPPING, STATUS, WATCHDOG) and deciding
whether systemd asked for watchdog pings (`WATCHDOG_USEC`, `WATCHDOG_PID`). Every function is a
harmless no-op when the daemon does not run under systemd (no `NOTIFY_SOCKET`).

The watchdog pinger is an asyncio task on purpose: it pings from the event loop, so a loop that is
blocked (a stuck callback, a blocking call in async code) stops the pings and systemd restarts the
daemon after `WatchdogSec=`. A thread would keep pinging for a dead daemon.

The protocol: one datagram per message, `KEY=VALUE` lines, sent to the unix socket named in
`NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). See sd_notify(3).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

__all__ = [
    "notify",
    "ready",
    "reloading",
    "run_watchdog",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_pinger",
]


def _socket_address(value: str) -> str | None:
    """`NOTIFY_SOCKET` -> an address for `socket.connect`, or None if we cannot use it."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and other forms are not used on the machines we run on


def notify(message: str) -> bool:
    """Send one notification datagram; True if it was sent, False if unset or it failed.

    Non-blocking: this is called from the event loop, so a full socket queue drops the message
    instead of stalling the daemon (systemd drains its queue promptly; a dropped watchdog ping is
    made up by the next one, sent at half the watchdog interval).
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    address = _socket_address(value) if value else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode("utf-8"))
    except OSError:
        return False
    return True


def ready() -> bool:
    """Start-up is complete (listening sockets open) — or a reload finished."""
    return notify("READY=1")


def reloading() -> bool:
    """A reload (SIGHUP) started; send `ready()` once it is done, whether it succeeded or not.

    systemd 253+ requires MONOTONIC_USEC (CLOCK_MONOTONIC when the reload began) for
    `Type=notify-reload`; older versions ignore the extra field.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Graceful shutdown started."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One line of free text shown by `systemctl status` (newlines become spaces)."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog() -> bool:
    """One watchdog keep-alive."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds systemd allows between pings, or None when no watchdog is asked of this process.

    Follows sd_watchdog_enabled(3): `WATCHDOG_USEC` must be a positive integer, and when
    `WATCHDOG_PID` is set it must be our pid (otherwise the variables were inherited from a parent
    that is the one being watched).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return value / 1_000_000


async def watchdog_pinger(interval: float) -> None:
    """Send WATCHDOG=1 now and then every `interval / 2` seconds, from the event loop, forever."""
    if interval <= 0:
        raise ValueError("watchdog interval must be positive")
    while True:
        watchdog()
        await asyncio.sleep(interval / 2)


async def run_watchdog() -> None:
    """Ping forever if systemd asked for a watchdog for this process; return at once otherwise."""
    interval = watchdog_interval()
    if interval is None:
        return
    await watchdog_pinger(interval)
