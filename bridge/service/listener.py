"""TLS listeners whose handshakes are bounded in time and in number per client address.

asyncio's own TLS server gives every connection 60 s to finish its handshake and takes any number
of them from one address, each with its TLS state and buffers. `BoundedTLSSite` (an aiohttp site,
used in place of `web.TCPSite`) accepts plain TCP connections itself, and for each one:

- closes it at once when its address already has `max_pending` (64) handshakes under way, before
  any TLS state exists (a browser opens about six connections at a time);
- otherwise runs the handshake with `loop.connect_accepted_socket(..., ssl_handshake_timeout=)`
  (5 s), which then hands the connection to aiohttp's request handler like `TCPSite` would.

`limit_tls_read_buffers` shrinks asyncio's per-connection TLS read buffer (256 KiB) to 16 KiB.

A connection whose handshake is done no longer counts; what it may do from then on is bounded by
the HTTP server's own limits (bridge.access.throttle.SERVER_LIMITS).

Out of file descriptors (`ulimit -n` reached: EMFILE, or the system's ENFILE), a new connection
cannot even be accepted, and left in the kernel's backlog it would hang until the client gives
up. So each site keeps one descriptor in reserve (/dev/null): it is closed to accept the waiting
connection and close it at once (the client sees the connection closed, not a hang), then taken
again. Consoles already open carry on. The refusals are logged at most once a second, with how
many there were since the last line.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from collections import Counter

from aiohttp import web

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0  # seconds for a client to finish its TLS handshake
MAX_PENDING_PER_SOURCE = 64  # handshakes under way from one address
ACCEPT_RETRY_DELAY = 1.0  # after an accept error that shedding cannot help with
REPORT_EVERY = 1.0  # seconds between two log lines about refused connections
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


# asyncio's TLS protocol gives every connection a 256 KiB read buffer (Python 3.11: 25 MiB for
# 100 idle clients). What clients send is keystrokes and small control messages; a larger TLS
# record or paste just takes more reads. 16 KiB: 65 KiB of RSS per idle client instead of 81
# (measured, bench --only idle). A class attribute read when a connection is made.
TLS_READ_BUFFER = 16 * 1024


def limit_tls_read_buffers() -> None:
    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class BoundedTLSSite(web.BaseSite):
    """Listen on `host:port` (every address it resolves to) with bounded TLS handshakes."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        backlog: int = 512,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._context = host, port, ssl_context
        self.sockets: list[socket.socket] = []
        self.pending: Counter[str] = Counter()  # address -> handshakes under way
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._reserve = -1  # a descriptor given up to refuse a connection when none are left
        self.refused = 0  # connections refused for want of file descriptors
        self._unreported = 0
        self._reported = -REPORT_EVERY

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, _, _, _, address in dict.fromkeys(infos):
                sock = socket.create_server(address, family=family, backlog=self._backlog)
                sock.setblocking(False)
                self.sockets.append(sock)
        except OSError:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()
            raise
        self._reserve = _take_reserve()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except OSError as exc:
                # EMFILE comes before the kernel even looks for a waiting connection
                if exc.errno not in OUT_OF_FILES or not await self._with_reserve(listening, exc):
                    log.warning("accept on %s failed: %s", self.name, exc.strerror or exc)
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            self._take(conn, address)

    def _take(self, conn: socket.socket, address: tuple[str, int]) -> None:
        source = str(address[0])
        if self.pending[source] >= MAX_PENDING_PER_SOURCE:
            conn.close()  # too many half-open handshakes from there: no TLS state for it
            return
        self.pending[source] += 1
        task = asyncio.get_running_loop().create_task(self._handshake(conn, source))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _with_reserve(self, listening: socket.socket, exc: OSError) -> bool:
        """Out of descriptors: wait for a connection, accept it with the reserve descriptor, and
        keep it if a descriptor is to be had again, else close it at once. False when there is
        no reserve (nor one to be had)."""
        if self._reserve < 0 and (reserve := _take_reserve()) >= 0:
            self._reserve = reserve
        if self._reserve < 0:
            return False
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(listening.fileno(), ready)
        try:
            await readable
        finally:
            loop.remove_reader(listening.fileno())
        os.close(self._reserve)
        try:
            conn, address = listening.accept()
        except OSError:  # taken meanwhile, or gone
            self._reserve = _take_reserve()
            return True
        self._reserve = _take_reserve()
        if self._reserve >= 0:  # descriptors were freed meanwhile: a connection like any other
            conn.setblocking(False)
            self._take(conn, address)
            return True
        conn.close()  # refused: the client sees the connection closed, not a hang
        self._reserve = _take_reserve()  # the descriptor it had
        self.refused += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            host, port = listening.getsockname()[:2]
            log.warning(
                "%s:%s: refused %d new connection(s): %s (ulimit -n); open consoles carry on",
                *(host, port, self._unreported, exc.strerror or exc),
            )
            self._unreported, self._reported = 0, now
        return True

    async def _handshake(self, conn: socket.socket, source: str) -> None:
        server = self._runner.server
        assert server is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server, conn, ssl=self._context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except OSError as exc:  # timed out (ConnectionAbortedError), reset, not TLS, bad TLS
            log.debug("TLS handshake from %s failed: %s", source, exc)
            conn.close()
        except Exception:
            log.exception("TLS connection from %s", source)
            conn.close()
        finally:
            self.pending[source] -= 1
            if self.pending[source] <= 0:
                del self.pending[source]

    async def stop(self) -> None:
        tasks = [*self._accepting, *self._handshakes]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sock in self.sockets:
            sock.close()
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        await super().stop()


def _take_reserve() -> int:
    """A spare descriptor, or -1 when none is to be had."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
