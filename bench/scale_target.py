"""The appliance-scale target: N ptys streaming at line rates, and one more pty that echoes.

`StreamTargets` runs one process owning the master sides of N pty pairs. Each port writes the
deterministic payload paced at its own line rate in packets of 62 bytes (what an FTDI adapter
hands the host at 115200 baud; about 12 bytes a millisecond with its latency timer at 1 ms), at
a phase of its own so the ports do not all wake the bridge at the same instant, as independent
targets would not. Before the payload every port writes sync tokens (clients count as attached
once they see one) until the orchestrator says go, then a start marker.

`EchoTarget` runs another process owning one pty that writes back every byte it reads, at once
(a blocking loop of its own, so its latency does not depend on the streaming process).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import select
import termios
import time
import tty
from multiprocessing.connection import Connection
from typing import Any

from bench.common import payload, start_marker, sync_token
from bench.pty_target import USB_PACKET

CHUNK = 64 * 1024
SYNC_INTERVAL = 0.05


def _open_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


def _write_some(fd: int, data: memoryview | bytes) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def _drain(fd: int) -> None:
    for _ in range(64):
        try:
            if not os.read(fd, CHUNK):
                return
        except OSError:
            return


def _streams_main(conn: Connection, n: int, size: int) -> None:
    data = memoryview(payload(size))
    pairs = [_open_pty() for _ in range(n)]
    masters = [m for m, _ in pairs]
    conn.send(("ready", [os.ttyname(s) for _, s in pairs]))
    while True:
        try:
            cmd, kw = conn.recv()
        except EOFError:
            return
        if cmd == "quit":
            return
        if cmd == "flush":
            for m, s in pairs:
                _drain(m)
                termios.tcflush(s, termios.TCIOFLUSH)
            conn.send(("ok", None))
        elif cmd == "stream":
            conn.send(("done", _stream(conn, masters, data, **kw)))


def _stream(
    conn: Connection, masters: list[int], data: memoryview, nonce: str, rates: list[float],
    seconds: float, packet: int = USB_PACKET,
) -> dict[str, Any]:  # fmt: skip
    """Sync tokens until "go", then each port's start marker and paced payload for `seconds`."""
    masters = masters[: len(rates)]  # the first N of the ports
    token = sync_token(nonce)
    end_sync = time.monotonic() + 300
    while True:
        for m in masters:
            _write_some(m, token)
            _drain(m)
        if conn.poll(SYNC_INTERVAL):
            if conn.recv()[0] != "go":
                return {"aborted": True}
            break
        if time.monotonic() > end_sync:
            return {"aborted": True}
    marker = start_marker(nonce)
    for m in masters:
        view = memoryview(marker)
        for _ in range(1000):
            view = view[_write_some(m, view) :]
            if not view:
                break
            time.sleep(0.001)
    n = len(masters)
    t0 = time.monotonic()
    ticks = [max(0.001, packet / r) for r in rates]
    starts = [t0 + ticks[i] * i / n for i in range(n)]  # each port at its own phase
    next_t = list(starts)
    offs = [0] * n
    max_lag = [0] * n
    end = t0 + seconds
    limit = len(data)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for i in range(n):
            if now < next_t[i]:
                continue
            due = min(limit, int(rates[i] * (now - starts[i])) + 1)
            if due > offs[i]:
                off = offs[i]
                offs[i] = off + _write_some(masters[i], data[off : off + min(due - off, CHUNK)])
                max_lag[i] = max(max_lag[i], due - offs[i])
            next_t[i] = max(next_t[i] + ticks[i], now)
        delay = min(next_t) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return {"written": offs, "max_lag": max_lag, "seconds": time.monotonic() - t0}


class StreamTargets:
    """The orchestrator's side of the streaming process."""

    def __init__(self, ctx: Any, n: int, size: int) -> None:
        self.conn, child = mp.Pipe()
        self.proc = ctx.Process(target=_streams_main, args=(child, n, size), daemon=True)
        self.proc.start()
        child.close()
        tag, self.paths = self._recv(120)
        assert tag == "ready"

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("stream target did not answer")
        return self.conn.recv()

    def flush(self) -> None:
        self.conn.send(("flush", {}))
        self._recv(30)

    def start(self, nonce: str, rates: list[float], seconds: float, packet: int) -> None:
        kw = {"nonce": nonce, "rates": rates, "seconds": seconds, "packet": packet}
        self.conn.send(("stream", kw))

    def go(self) -> None:
        self.conn.send(("go", {}))

    def abort(self) -> None:
        self.conn.send(("abort", {}))

    def wait(self, timeout: float) -> dict[str, Any]:
        tag, rep = self._recv(timeout)
        assert tag == "done", tag
        return dict(rep)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit", {}))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)


def _echo_main(conn: Connection) -> None:
    master, slave = _open_pty()
    conn.send(("ready", os.ttyname(slave)))
    poller = select.poll()
    poller.register(master, select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)
    while True:
        for fd, _ev in poller.poll(1000):
            if fd == master:
                try:
                    data = os.read(master, CHUNK)
                except (BlockingIOError, OSError):
                    continue
                view = memoryview(data)
                for _ in range(1000):
                    view = view[_write_some(master, view) :]
                    if not view:
                        break
                    time.sleep(0.0005)
            elif conn.poll(0):
                try:
                    cmd, _ = conn.recv()
                except EOFError:
                    return
                if cmd == "quit":
                    return


class EchoTarget:
    """The orchestrator's side of the echoing process."""

    def __init__(self, ctx: Any) -> None:
        self.conn, child = mp.Pipe()
        self.proc = ctx.Process(target=_echo_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(60):
            raise TimeoutError("echo target did not start")
        tag, self.path = self.conn.recv()
        assert tag == "ready"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit", {}))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
