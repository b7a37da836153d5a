"""Benchmark clients: raw pty, raw TCP, TLS TCP and TLS websocket, run in worker processes.

One worker process runs many clients on one asyncio loop; the orchestrator starts several workers
for large client counts so the client side is not the bottleneck (each worker reports its own CPU
seconds so the orchestrator can say whether the clients saturated a core).

Worker protocol over a multiprocessing pipe (worker -> orchestrator unless noted):
  ("connected", n_ok, first_error) -> ("synced", None) [stream mode] -> orchestrator sends
  ("final", {"length": N, "grace": s}) -> ("result", {...}).  Drain/idle modes wait for ("stop", {})
  and echo mode for ("echo", {"count": N, "limit": s}) instead.

A stalled client (connects, never reads) is a plain blocking socket in the orchestrator:
`open_stalled` and `read_stalled_for_gap`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.common import ECHO_BYTE, self_cpu, start_marker, sync_token

READ_SIZE = 256 * 1024
COALESCE = 0.001
ATTACH_WAIT = 3.0
ECHO = bytes([ECHO_BYTE])


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client connects."""

    kind: str  # "pty" | "tcp" | "tls" | "ws"
    host: str = "127.0.0.1"
    port: int = 0
    path: str = ""  # pty: the slave device; ws: the URL path with query
    token: str = ""

    @property
    def url(self) -> str:
        return f"wss://{self.host}:{self.port}{self.path}"

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.port}"


def client_ssl_context() -> ssl.SSLContext:
    """TLS for the bench clients: same defaults for every server; the certs are throwaway."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Sink:
    """Consumes one client's byte stream: finds the start marker, then counts and CRCs."""

    nonce: str | None
    count: int = 0
    crc: int = 0
    t_first: float = 0.0
    t_last: float = 0.0
    gaps: int = 0
    gap_bytes: int = 0
    texts: int = 0
    closed: bool = False
    error: str = ""
    hello: dict[str, Any] | None = None
    synced: bool = False
    started: bool = False
    _buf: bytes = b""
    _sync: bytes = b""
    _start: bytes = b""
    echo_waiter: asyncio.Future[int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.nonce is None:
            self.synced = self.started = True
        else:
            self._sync = sync_token(self.nonce)
            self._start = start_marker(self.nonce)

    def feed(self, data: bytes) -> None:
        if self.started:
            if not self.count:
                self.t_first = time.monotonic()
            self.count += len(data)
            self.t_last = time.monotonic()
            if self.nonce is not None:
                self.crc = zlib.crc32(data, self.crc)
            elif (w := self.echo_waiter) is not None and ECHO in data and not w.done():
                w.set_result(time.perf_counter_ns())
            self.changed.set()
            return
        buf = self._buf + data
        if not self.synced and self._sync in buf:
            self.synced = True
            self.changed.set()
        i = buf.find(self._start)
        if i >= 0:
            self.synced = self.started = True
            self._buf = b""
            self.changed.set()
            rest = buf[i + len(self._start) :]
            if rest:
                self.feed(rest)
            return
        self._buf = buf[-(len(self._start) + len(self._sync)) :]

    def on_text(self, text: str) -> None:
        self.texts += 1
        try:
            msg = json.loads(text)
        except ValueError:
            return
        kind = msg.get("type")
        if kind == "hello":
            self.hello = msg
        elif kind == "gap":
            self.gaps += 1
            if self.started:
                try:
                    self.gap_bytes += int(msg["to"]) - int(msg["from"])
                except (KeyError, TypeError, ValueError):
                    pass
            self.changed.set()

    def lost(self, why: str) -> None:
        self.closed = True
        self.error = self.error or why
        self.changed.set()
        if self.echo_waiter is not None and not self.echo_waiter.done():
            self.echo_waiter.set_exception(ConnectionError(why))


class _StreamProto(asyncio.Protocol):
    """A TCP/TLS client. With `coalesce`, reading pauses for COALESCE seconds after each read so
    the kernel gathers small segments (ser2net as shipped sends 64-byte ones) into one large read:
    the client side then costs per millisecond, not per segment, and does not become the limit."""

    def __init__(self, sink: Sink, coalesce: bool) -> None:
        self.sink = sink
        self.coalesce = coalesce
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.sink.feed(data)
        if self.coalesce and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(COALESCE, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.lost(f"connection lost: {exc}")


class Client:
    """One connected client of any kind."""

    def __init__(self, ep: Endpoint, sink: Sink, coalesce: bool = False) -> None:
        self.ep = ep
        self.sink = sink
        self.coalesce = coalesce
        self._closers: list[Any] = []
        self._send: Any = None

    async def connect(self, ssl_ctx: ssl.SSLContext, session: Any) -> None:
        loop = asyncio.get_running_loop()
        if self.ep.kind == "pty":
            fd = os.open(self.ep.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

            def readable() -> None:
                while True:
                    try:
                        data = os.read(fd, READ_SIZE)
                    except BlockingIOError:
                        return
                    except OSError as e:
                        loop.remove_reader(fd)
                        self.sink.lost(str(e))
                        return
                    if not data:
                        return
                    self.sink.feed(data)

            def close_pty() -> None:
                loop.remove_reader(fd)
                os.close(fd)

            loop.add_reader(fd, readable)
            self._closers.append(close_pty)

            async def send_pty(b: bytes) -> None:
                os.write(fd, b)

            self._send = send_pty
        elif self.ep.kind in ("tcp", "tls"):
            transport, _ = await loop.create_connection(
                lambda: _StreamProto(self.sink, self.coalesce),
                self.ep.host,
                self.ep.port,
                ssl=ssl_ctx if self.ep.kind == "tls" else None,
            )
            self._closers.append(transport.close)

            async def send_tcp(b: bytes) -> None:
                transport.write(b)

            self._send = send_tcp
        elif self.ep.kind == "ws":
            import aiohttp

            ws = await session.ws_connect(
                self.ep.url,
                headers={"Authorization": f"Bearer {self.ep.token}", "Origin": self.ep.origin},
                ssl=ssl_ctx,
                max_msg_size=0,
                autoping=True,
                compress=0,
            )
            sink = self.sink

            async def pump() -> None:
                try:
                    while True:
                        msg = await ws.receive()
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            sink.feed(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            sink.on_text(msg.data)
                        elif msg.type in (
                            aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.ERROR,
                        ):
                            sink.lost(f"websocket {msg.type.name}: {msg.extra}")
                            return
                except Exception as e:  # the measurement records it, the worker goes on
                    sink.lost(repr(e))

            task = asyncio.create_task(pump())
            self._closers.append(task.cancel)
            self._closers.append(lambda: asyncio.ensure_future(ws.close()))
            self._send = ws.send_bytes
        else:
            raise ValueError(self.ep.kind)

    async def send(self, data: bytes) -> None:
        await self._send(data)

    def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                c()


# --- the worker process -----------------------------------------------------------------------


class _Mailbox:
    """Messages from the orchestrator, readable with await."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        while self.conn.poll(0):
            try:
                self.queue.put_nowait(self.conn.recv())
            except EOFError:
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
                self.queue.put_nowait(("stop", {}))
                return

    async def get(self, timeout: float) -> tuple[str, Any]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return ("timeout", {})


async def _wait_until(sinks: list[Sink], pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        if all(pred(s) for s in sinks):
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        for s in sinks:
            s.changed.clear()
        waiters = [asyncio.ensure_future(s.changed.wait()) for s in sinks if not pred(s)]
        await asyncio.wait(waiters, timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()


async def _worker(conn: Connection, ep: Endpoint, n: int, mode: str, nonce: str | None) -> None:
    box = _Mailbox(conn)
    ssl_ctx = client_ssl_context()
    session: Any = None
    if ep.kind == "ws":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ssl_ctx))
    sinks = [Sink(nonce if mode == "stream" else None) for _ in range(n)]
    clients = [Client(ep, s, coalesce=mode in ("stream", "drain")) for s in sinks]
    # ser2net listens with a backlog of 5: a burst of raw TCP connects overflows it and the
    # kernel then completes some handshakes only after SYN-ACK retries (seconds), so raw TCP
    # connects go one at a time per worker.
    sem = asyncio.Semaphore(1 if ep.kind == "tcp" else 16)

    async def connect(c: Client) -> str:
        async with sem:
            try:
                await asyncio.wait_for(c.connect(ssl_ctx, session), 30)
                return ""
            except Exception as e:
                c.sink.lost(repr(e))
                return repr(e)

    async def attach(i: int) -> str:
        """Stream mode: connect, then wait for the sync token the target is already writing;
        a client that sees none within ATTACH_WAIT is not attached: reconnect it."""
        err = ""
        for _attempt in range(4):
            c = clients[i]
            err = await connect(c)
            if not err:
                await _wait_until([c.sink], lambda s: s.synced or s.closed, ATTACH_WAIT)
                if c.sink.synced:
                    return ""
                err = c.sink.error or f"no data within {ATTACH_WAIT}s of connecting"
            c.close()
            sinks[i] = Sink(nonce)
            clients[i] = Client(ep, sinks[i], coalesce=True)
            await asyncio.sleep(0.05)
        return err

    result: dict[str, Any] = {}
    if mode == "cold":
        # Retry until the server listens, then wait for the first console byte.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                await asyncio.wait_for(clients[0].connect(ssl_ctx, session), 5)
                break
            except Exception as e:
                sinks[0].error = repr(e)
                await asyncio.sleep(0.005)
        sinks[0].error = ""
        await _wait_until(
            sinks, lambda s: s.count > 0 or s.closed, max(0.0, end - time.monotonic())
        )
    else:
        if mode == "stream":
            errors = await asyncio.gather(*(attach(i) for i in range(n)))
        else:
            errors = await asyncio.gather(*(connect(c) for c in clients))
        ok = sum(1 for e in errors if not e)
        conn.send(("connected", (ok, next((e for e in errors if e), ""))))
    try:
        if mode == "stream":
            await _wait_until(sinks, lambda s: s.synced or s.closed, 60)
            conn.send(("synced", None))
            cpu0 = self_cpu()
            t0 = time.monotonic()
            msg, kw = await box.get(3600)
            while msg == "progress":  # counts so far, without ending the measurement
                conn.send(("progress", [(s.count, s.t_last) for s in sinks]))
                msg, kw = await box.get(3600)
            if msg == "final":
                length = kw["length"]
                await _wait_until(
                    sinks, lambda s: s.closed or s.count + s.gap_bytes >= length, kw["grace"]
                )
            result["cpu"] = self_cpu() - cpu0
            result["wall"] = time.monotonic() - t0
        elif mode in ("drain", "idle"):
            cpu0 = self_cpu()
            t0 = time.monotonic()
            await box.get(3600)
            result["cpu"] = self_cpu() - cpu0
            result["wall"] = time.monotonic() - t0
        elif mode == "echo":
            msg, kw = await box.get(3600)
            if msg == "echo":
                result.update(await _echo(clients[0], kw["count"], kw["warmup"], kw["limit"]))
        result["clients"] = [
            {
                "count": s.count,
                "crc": s.crc,
                "t_first": s.t_first,
                "t_last": s.t_last,
                "gaps": s.gaps,
                "gap_bytes": s.gap_bytes,
                "closed": s.closed,
                "error": s.error,
                "started": s.started,
                "hello": s.hello is not None,
                "synced": s.synced,
            }
            for s in sinks
        ]
        conn.send(("result", result))
    finally:
        for c in clients:
            c.close()
        if session is not None:
            await asyncio.sleep(0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 2)


async def _echo(client: Client, count: int, warmup: int, limit: float) -> dict[str, Any]:
    """Sequential keystroke round trips; returns latencies in microseconds."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    end = time.monotonic() + limit
    timeouts = 0
    for i in range(count + warmup):
        if time.monotonic() > end or client.sink.closed:
            break
        fut: asyncio.Future[int] = loop.create_future()
        client.sink.echo_waiter = fut
        t0 = time.perf_counter_ns()
        await client.send(ECHO)
        try:
            t1 = await asyncio.wait_for(fut, 2.0)
        except TimeoutError:
            timeouts += 1
            continue
        except ConnectionError:
            break
        finally:
            client.sink.echo_waiter = None
        if i >= warmup:
            lat.append((t1 - t0) / 1000)
    return {"latencies_us": lat, "timeouts": timeouts}


def worker_main(conn: Connection, ep: Endpoint, n: int, mode: str, nonce: str | None) -> None:
    """Entry point of a client worker process."""
    try:
        asyncio.run(_worker(conn, ep, n, mode, nonce))
    except Exception as e:
        with contextlib.suppress(Exception):
            conn.send(("error", repr(e)))


# --- the stalled client (blocking, lives in the orchestrator) --------------------------------


def open_stalled(ep: Endpoint, rcvbuf: int = 4096) -> socket.socket:
    """Connect (TCP, TLS or websocket upgrade) and then never read."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect((ep.host, ep.port))
    if ep.kind == "tcp":
        return raw
    sock = client_ssl_context().wrap_socket(raw)
    if ep.kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {ep.path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {ep.token}\r\nOrigin: {ep.origin}\r\n\r\n"
        )
        sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = sock.recv(1)  # byte by byte: nothing after the headers is consumed
            if not b:
                raise ConnectionError("websocket upgrade: connection closed")
            head += b
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"websocket upgrade refused: {head[:80]!r}")
    return sock


def read_stalled_for_gap(sock: socket.socket, timeout: float) -> dict[str, Any]:
    """Start reading a stalled websocket and parse frames until a gap message or timeout."""
    sock.settimeout(0.2)
    buf = b""
    end = time.monotonic() + timeout
    out: dict[str, Any] = {"bytes": 0, "binary_frames": 0, "texts": [], "gap": None}
    while time.monotonic() < end and out["gap"] is None:
        try:
            data = sock.recv(READ_SIZE)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except OSError as e:
            out["error"] = repr(e)
            break
        if not data:
            out["closed"] = True
            break
        out["bytes"] += len(data)
        buf += data
        while len(buf) >= 2:
            op = buf[0] & 0x0F
            ln = buf[1] & 0x7F
            hdr = 2
            if ln == 126:
                if len(buf) < 4:
                    break
                ln = struct.unpack(">H", buf[2:4])[0]
                hdr = 4
            elif ln == 127:
                if len(buf) < 10:
                    break
                ln = struct.unpack(">Q", buf[2:10])[0]
                hdr = 10
            if len(buf) < hdr + ln:
                break
            body = buf[hdr : hdr + ln]
            buf = buf[hdr + ln :]
            if op == 2:
                out["binary_frames"] += 1
            elif op == 1:
                text = body.decode(errors="replace")
                out["texts"].append(text[:200])
                with contextlib.suppress(ValueError):
                    msg = json.loads(text)
                    if isinstance(msg, dict) and msg.get("type") == "gap":
                        out["gap"] = msg
    return out


def lean_echo(
    ep: Endpoint, count: int, warmup: int, limit: float, interval: float = 0.0
) -> dict[str, Any]:
    """Keystroke round trips from a minimal blocking client (no event loop, no aiohttp): the
    same path through the server with as little client-side time in the figure as possible.
    With `interval`, a pause of 0.5-1.5 x interval (random) between round trips, so keystrokes
    land at random moments of whatever else the server is doing."""
    fd = -1
    sock: socket.socket | None = None
    if ep.kind == "pty":
        fd = os.open(ep.path, os.O_RDWR | os.O_NOCTTY)
    else:
        sock = open_stalled(ep, rcvbuf=1 << 20)
        sock.settimeout(5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ep.kind == "ws":
        mask = os.urandom(4)
        msg = bytes([0x82, 0x81]) + mask + bytes([ECHO_BYTE ^ mask[0]])
    else:
        msg = ECHO
    lat: list[float] = []
    timeouts = 0
    end = time.monotonic() + limit
    try:
        for i in range(count + warmup):
            if time.monotonic() > end:
                break
            t0 = time.perf_counter_ns()
            if sock is None:
                os.write(fd, msg)
            else:
                sock.sendall(msg)
            while True:
                try:
                    data = os.read(fd, READ_SIZE) if sock is None else sock.recv(READ_SIZE)
                except TimeoutError:
                    timeouts += 1
                    data = ECHO
                if not data:
                    raise ConnectionError("closed")
                if ECHO in data:
                    break
            if i >= warmup:
                lat.append((time.perf_counter_ns() - t0) / 1000)
            if interval:
                time.sleep(interval * random.uniform(0.5, 1.5))
    finally:
        if sock is not None:
            sock.close()
        if fd >= 0:
            os.close(fd)
    return {"latencies_us": lat, "timeouts": timeouts}
