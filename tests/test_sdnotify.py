"""bridge.service.sdnotify against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service import sdnotify


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket; NOTIFY_SOCKET points at it (short path: sun_path is 108 bytes)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        path = Path(tmp) / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        try:
            yield sock
        finally:
            sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on the socket right now."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


async def receive(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=10)


def test_ready_reaches_the_socket(notify_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert drain(notify_socket) == [b"READY=1"]


def test_other_messages(notify_socket: socket.socket) -> None:
    assert sdnotify.stopping()
    assert sdnotify.status("2 ports online\nlab1 offline")
    assert sdnotify.reloading()
    stop, stat, reload = drain(notify_socket)
    assert stop == b"STOPPING=1"
    assert stat == b"STATUS=2 ports online lab1 offline"
    lines = reload.decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert 0 < int(value) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"serial-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert drain(sock) == [b"READY=1"]


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_unreachable_socket_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert sdnotify.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("30000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        value = {"self": str(os.getpid()), "other": str(os.getppid())}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert sdnotify.watchdog_interval() == expected


async def test_watchdog_pings_arrive(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    task = asyncio.create_task(sdnotify.run_watchdog())
    try:
        for _ in range(3):
            assert await receive(notify_socket) == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_pid_of_another_process_disables_pings(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    # Returns at once instead of pinging forever; the wait_for turns a hang into a failure.
    await asyncio.wait_for(sdnotify.run_watchdog(), timeout=10)
    assert drain(notify_socket) == []


async def test_stalled_event_loop_stops_pings(notify_socket: socket.socket) -> None:
    interval = 0.1  # a ping every 50 ms while the loop runs
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(sdnotify.watchdog_pinger(interval))
    try:
        # The loop runs: pings arrive.
        for _ in range(2):
            assert await receive(notify_socket) == b"WATCHDOG=1"

        during_stall: list[bytes] = []
        stalled = loop.create_future()

        def blocking_callback() -> None:
            drain(notify_socket)  # everything sent before the stall
            time.sleep(10 * interval / 2)  # ten ping periods with the loop blocked
            during_stall.extend(drain(notify_socket))
            stalled.set_result(None)

        loop.call_soon(blocking_callback)
        await stalled
        assert during_stall == []

        # The loop runs again: pings resume.
        assert await receive(notify_socket) == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_pinger_rejects_nonsense_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await sdnotify.watchdog_pinger(0)
