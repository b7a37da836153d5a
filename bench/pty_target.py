"""The simulated serial target: a process that owns the master side of a pty pair.

The bridge under test (ser2net, serial-bridge, or nothing for the raw baseline) opens the slave
side as its "UART". The target writes test streams into the master as fast as the pty accepts
(or paced at a line rate), and in echo mode writes every byte it reads straight back.

It runs in its own process (`TargetHandle` starts it) so its writes never share an interpreter
with the clients or the orchestrator, and it answers commands over a multiprocessing pipe.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import select
import termios
import time
import tty
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.common import background_payload, payload, start_marker, sync_token

CHUNK = 64 * 1024
SYNC_INTERVAL = 0.02
USB_PACKET = 62  # payload bytes of one FTDI full-speed USB packet


def pace_tick(rate: float) -> float:
    """Write interval for a paced stream: one USB packet's worth, but at most 1000 writes/s."""
    return max(0.001, USB_PACKET / rate)


@dataclass
class StreamReport:
    """What the target did during one stream command."""

    written: int
    t_first: float  # time.monotonic() of the first payload write
    t_last: float  # time.monotonic() after the last payload write
    max_block: float  # longest time the pty refused writes (s): the "UART" was stalled
    max_lag: int  # paced mode: largest backlog behind the line rate (bytes)
    deadline_hit: bool


class _Target:
    def __init__(self, conn: Connection, size: int) -> None:
        self.conn = conn
        self.size = size
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.poll = select.poll()
        self.poll.register(self.master, select.POLLIN)
        self.poll.register(conn.fileno(), select.POLLIN)

    # -- helpers -------------------------------------------------------------------------------
    def drain_input(self) -> int:
        """Discard whatever the bridge wrote towards the device."""
        n = 0
        while True:
            try:
                data = os.read(self.master, CHUNK)
            except (BlockingIOError, OSError):
                return n
            if not data:
                return n
            n += len(data)

    def write_some(self, data: memoryview) -> int:
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0

    def wait_writable(self, timeout: float) -> bool:
        p = select.poll()
        p.register(self.master, select.POLLOUT)
        return bool(p.poll(max(0.0, timeout) * 1000))

    def command_waiting(self) -> bool:
        return self.conn.poll(0)

    # -- commands ------------------------------------------------------------------------------
    def flush(self) -> None:
        self.drain_input()
        termios.tcflush(self.slave, termios.TCIOFLUSH)
        self.drain_input()

    def sync_phase(self, nonce: str, timeout: float) -> bool:
        """Write the sync token until the orchestrator says go (True) or abort/timeout (False)."""
        token = memoryview(sync_token(nonce))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.write_some(token)
            self.drain_input()
            if self.conn.poll(SYNC_INTERVAL):
                msg = self.conn.recv()
                return bool(msg[0] == "go")
        return False

    def write_all(self, data: memoryview, end: float) -> bool:
        off = 0
        while off < len(data):
            if time.monotonic() >= end:
                return False
            off += self.write_some(data[off:])
            if off < len(data):
                self.wait_writable(0.05)
        return True

    def stream(
        self,
        n: int,
        deadline: float,
        nonce: str | None,
        rate: float | None,
        background: bool = False,
    ) -> StreamReport | None:
        data = memoryview(background_payload(self.size) if background else payload(self.size))
        if nonce is not None:
            if not self.sync_phase(nonce, timeout=180.0):
                return None
            if not self.write_all(memoryview(start_marker(nonce)), time.monotonic() + 10):
                return StreamReport(0, 0.0, 0.0, 10.0, 0, True)
        t_first = time.monotonic()
        end = t_first + deadline
        off = 0
        max_block = 0.0
        max_lag = 0
        blocked_since: float | None = None
        tick = pace_tick(rate) if rate else 0.0
        next_tick = t_first
        deadline_hit = False
        while off < n:
            now = time.monotonic()
            if now >= end:
                deadline_hit = True
                break
            if rate:
                due = min(n, int(rate * (now - t_first)) + 1)
                if due > off:
                    want = due - off
                    w = self.write_some(data[off : off + min(want, CHUNK)])
                    off += w
                    max_lag = max(max_lag, due - off)
                    if w < want:
                        blocked_since = blocked_since or now
                        self.wait_writable(min(tick, end - now))
                        continue
                if blocked_since is not None:
                    max_block = max(max_block, now - blocked_since)
                    blocked_since = None
                next_tick += tick
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
            else:
                w = self.write_some(data[off : min(n, off + CHUNK)])
                off += w
                if w == 0:
                    blocked_since = blocked_since or now
                    self.wait_writable(min(0.05, end - now))
                elif blocked_since is not None:
                    max_block = max(max_block, now - blocked_since)
                    blocked_since = None
        t_last = time.monotonic()
        if blocked_since is not None:
            max_block = max(max_block, t_last - blocked_since)
        return StreamReport(off, t_first, t_last, max_block, max_lag, deadline_hit)

    def echo(self, bg_rate: float, limit: float) -> dict[str, Any]:
        """Echo every byte read from the master; optionally stream a paced background beside it."""
        bg = memoryview(background_payload(self.size))
        bg_off = 0
        echoed = 0
        t0 = time.monotonic()
        tick = pace_tick(bg_rate) if bg_rate else 1.0
        bg_sent = 0
        end = t0 + limit
        while time.monotonic() < end:
            events = self.poll.poll(tick * 1000)
            for fd, _ev in events:
                if fd == self.master:
                    try:
                        data = os.read(self.master, CHUNK)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data:
                        mv = memoryview(data)
                        while mv:
                            w = self.write_some(mv)
                            mv = mv[w:]
                            if mv:
                                self.wait_writable(0.05)
                        echoed += len(data)
                elif self.conn.poll(0):
                    self.conn.recv()  # "stop"
                    return {"echoed": echoed, "background": bg_sent}
            if bg_rate:
                due = int(bg_rate * (time.monotonic() - t0))
                want = due - bg_sent
                if want > 0:
                    if bg_off + want > len(bg):
                        bg_off = 0
                    w = self.write_some(bg[bg_off : bg_off + min(want, CHUNK)])
                    bg_off += w
                    bg_sent += w
        return {"echoed": echoed, "background": bg_sent, "timeout": True}

    def trickle(self, interval: float, limit: float) -> int:
        """One byte every interval until told to stop: for cold-start timing."""
        n = 0
        end = time.monotonic() + limit
        while time.monotonic() < end:
            n += self.write_some(memoryview(b"."))
            self.drain_input()
            if self.conn.poll(interval):
                self.conn.recv()
                break
        return n

    def run(self) -> None:
        self.conn.send(("ready", os.ttyname(self.slave)))
        while True:
            try:
                cmd, kw = self.conn.recv()
            except EOFError:
                return
            if cmd == "quit":
                return
            if cmd == "flush":
                self.flush()
                self.conn.send(("ok", None))
            elif cmd == "stream":
                self.conn.send(("done", self.stream(**kw)))
            elif cmd == "echo":
                self.conn.send(("done", self.echo(**kw)))
            elif cmd == "trickle":
                self.conn.send(("done", self.trickle(**kw)))
            else:
                self.conn.send(("error", f"unknown command {cmd}"))


def _target_main(conn: Connection, size: int) -> None:
    payload(size)
    background_payload(size)
    _Target(conn, size).run()


class TargetHandle:
    """The orchestrator's side of the target process."""

    def __init__(self, ctx: Any, size: int) -> None:
        self.conn, child = mp.Pipe()
        self.proc = ctx.Process(target=_target_main, args=(child, size), daemon=True)
        self.proc.start()
        child.close()
        tag, self.slave_path = self._recv(120)
        assert tag == "ready"

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("pty target did not answer")
        return self.conn.recv()

    def flush(self) -> None:
        self.conn.send(("flush", {}))
        self._recv(10)

    def start_stream(
        self,
        n: int,
        deadline: float,
        nonce: str | None,
        rate: float | None = None,
        background: bool = False,
    ) -> None:
        kw = {"n": n, "deadline": deadline, "nonce": nonce, "rate": rate, "background": background}
        self.conn.send(("stream", kw))

    def go(self) -> None:
        self.conn.send(("go", {}))

    def abort(self) -> None:
        self.conn.send(("abort", {}))

    def wait_stream(self, timeout: float) -> StreamReport | None:
        tag, rep = self._recv(timeout)
        assert tag == "done", tag
        return rep

    def start_echo(self, bg_rate: float, limit: float) -> None:
        self.conn.send(("echo", {"bg_rate": bg_rate, "limit": limit}))

    def start_trickle(self, interval: float, limit: float) -> None:
        self.conn.send(("trickle", {"interval": interval, "limit": limit}))

    def stop(self, timeout: float = 10) -> Any:
        self.conn.send(("stop", {}))
        return self._recv(timeout)[1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit", {}))
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
