"""A console for test scripts: pexpect's API over the bridge's console websocket.

`BridgeConsole` is a pexpect `SpawnBase`, so `expect`, `expect_exact`, `before`/`after`/`match`,
timeouts, `logfile`/`logfile_read`/`logfile_send` and `encoding` behave as with `pexpect.spawn`;
`sendline` ends lines with `\\r` (a serial console's Enter). It adds `sysrq()`, `send_break()`,
`power()`, `nmi()` through the bridge's HTTP API, and keeps reading across a dropped link: every
output byte has an offset, and a reconnect asks for the stream from the first byte not yet
received, so nothing is lost or repeated (unless the bridge no longer holds it: `gaps` says so).

The websocket runs in a private thread with its own event loop (BridgeClient from
bridge.client.http: certificate pinning, token or password); pexpect's calls come from the
caller's thread and never block that loop.

    from bridge.client.expect import BridgeConsole
    with BridgeConsole("https://bridge:8443/lab1", token=..., fingerprint="SHA256:...") as c:
        c.power("reset")
        c.expect("login:", timeout=120)
        c.sendline("root")
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import aiohttp
from pexpect import EOF, TIMEOUT
from pexpect.spawnbase import SpawnBase

from bridge.client.http import ApiError, BridgeClient, ClientError, KnownHosts

NO_RESUME = {1008, 4000}  # the bridge ended this session or refused it: reconnecting is futile


class BridgeConsole(SpawnBase):
    """One console of one bridge port, driven like `pexpect.spawn`."""

    def __init__(
        self,
        url: str,
        *,
        port: str | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        fingerprint: str | None = None,
        known_hosts: KnownHosts | None = None,
        mode: str = "rw",
        takeover: bool = False,
        start: int | None = None,
        timeout: float = 30,
        maxread: int = 65536,
        searchwindowsize: int | None = None,
        logfile: Any = None,
        encoding: str | None = None,
        codec_errors: str = "strict",
        linesep: str = "\r",
        reconnect_for: float = 60.0,
    ) -> None:
        super().__init__(
            timeout=timeout,
            maxread=maxread,
            searchwindowsize=searchwindowsize,
            logfile=logfile,
            encoding=encoding,
            codec_errors=codec_errors,
        )
        self.linesep = linesep if encoding else linesep.encode()
        self.client = BridgeClient(
            url,
            token=token,
            user=user,
            password=password,
            fingerprint=fingerprint,
            known_hosts=known_hosts,
            notice=lambda text: None,
        )
        name = port or self.client.target.name
        if not name:
            raise ClientError(f"{url!r}: name the port (https://HOST:PORT/PORTNAME or port=)")
        self.port = name
        self.mode, self.takeover = mode, takeover
        self.offset = -1  # the offset of the next byte expected; -1 until the first hello
        self.hello: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []  # status/error messages, in order
        self.gaps: list[tuple[int, int]] = []  # output the bridge no longer held on a resume
        self.reconnects = 0
        self.reconnect_for = reconnect_for
        self._start = start
        self._incoming: queue.Queue[bytes | None] = queue.Queue()
        self._buf = self.string_type()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._linked = threading.Event()
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: Future[None] | None = None
        try:
            self._call(self._open(), timeout=max(timeout, 10))
        except BaseException:
            self._stop_loop()
            raise
        self._runner = asyncio.run_coroutine_threadsafe(self._pump(), self._loop)
        self.closed = False
        self.terminated = False

    # ---- the loop thread ----------------------------------------------------------------------

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        await self.client.__aenter__()
        await self._connect()

    async def _connect(self) -> None:
        start = self._start if self.offset < 0 else self.offset
        ws = await self.client.console(self.port, self.mode, self.takeover, start)
        try:
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ClientError(f"{self.port}: the bridge closed the console ({ws.close_code})")
            hello = json.loads(msg.data)
        except BaseException:
            await ws.close()  # never leave a connection behind (a timeout, a cancel, a bad hello)
            raise
        if self.offset >= 0 and hello["from"] > self.offset:
            self.gaps.append((self.offset, hello["from"]))
        self.offset, self.hello, self._ws = hello["from"], hello, ws
        self._linked.set()

    async def _pump(self) -> None:
        """Read the websocket; after a drop, reconnect from `offset` until `reconnect_for`."""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        self.offset += len(msg.data)
                        self._incoming.put(msg.data)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        self._message(json.loads(msg.data))
                    else:
                        break
                # The code the bridge sent, from its close frame: ws.close_code turns into 1006
                # when the connection is gone as aiohttp answers it (an older bridge dropped it).
                code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
                self._linked.clear()
                if self._closing or code in NO_RESUME or not await self._resume():
                    return
        finally:
            self._linked.clear()
            self._incoming.put(None)  # EOF for the reader

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "gap":
            self.gaps.append((message["from"], message["to"]))
            self.offset = message["to"]
        self.messages.append(message)

    async def _resume(self) -> bool:
        deadline = time.monotonic() + self.reconnect_for
        delay = 0.1
        while not self._closing and time.monotonic() < deadline:
            try:
                await self._connect()
            except ApiError as exc:
                if exc.status in (401, 403, 404):
                    return False  # no longer allowed, or the port is gone
            except (ClientError, aiohttp.ClientError, OSError, TimeoutError):
                pass
            else:
                self.reconnects += 1
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return False

    async def _send(self, data: bytes, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            ws = self._ws
            if ws is not None and not ws.closed and self._linked.is_set():
                try:
                    await ws.send_bytes(data)
                    return
                except (ConnectionError, aiohttp.ClientError):
                    pass
            if time.monotonic() >= deadline or self._runner is None or self._runner.done():
                raise EOF("the console link is down")
            await asyncio.sleep(0.05)

    # ---- pexpect's side --------------------------------------------------------------------------

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> Any:
        if timeout == -1:
            timeout = self.timeout
        if not self._buf:
            try:
                item = self._incoming.get(timeout=timeout)
            except queue.Empty:
                raise TIMEOUT("Timeout exceeded.") from None
            if item is None:
                self._incoming.put(None)  # stays at EOF
                self.flag_eof = True
                raise EOF("the console was closed")
            self._buf += self._decoder.decode(item, final=False)
            while len(self._buf) < size:  # take what else has arrived, without waiting
                try:
                    more = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._incoming.put(None)
                    break
                self._buf += self._decoder.decode(more, final=False)
        data, self._buf = self._buf[:size], self._buf[size:]
        self._log(data, "read")
        return data

    def send(self, s: Any) -> int:
        s = self._coerce_send_string(s)
        self._log(s, "send")
        data = self._encoder.encode(s, final=False)
        self._call(self._send(data, self.timeout or 30))
        return len(data)

    def sendline(self, s: Any = "") -> int:
        return self.send(s) + self.send(self.linesep)

    def write(self, s: Any) -> None:
        self.send(s)

    def writelines(self, sequence: Any) -> None:
        for s in sequence:
            self.send(s)

    def isalive(self) -> bool:
        return not self.closed and self._runner is not None and not self._runner.done()

    # ---- actions (HTTP API) ----------------------------------------------------------------------

    def _action(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        path = f"/api/ports/{self.port}/{what}"
        result: dict[str, Any] = self._call(self.client.request("POST", path, body or {}), 60)
        return result

    def sysrq(self, keys: str, interval: str | None = None) -> dict[str, Any]:
        """BREAK + key for each of `keys` (e.g. "h", "reisub"); `interval` like "1s"."""
        return self._action("sysrq", {"keys": keys, **({"interval": interval} if interval else {})})

    def send_break(self) -> dict[str, Any]:
        return self._action("break")

    def nmi(self) -> dict[str, Any]:
        return self._action("nmi")

    def power(self, action: str) -> dict[str, Any]:
        """on | off | force-off | reset | cycle | status."""
        return self._action("power", {"action": action})

    # ---- closing ---------------------------------------------------------------------------------

    async def _aclose(self) -> None:
        self._closing = True
        sock = None
        if self._ws is not None:
            sock = self._ws.get_extra_info("socket")
            await self._ws.close()
        if self._runner is not None:
            await asyncio.wrap_future(self._runner)
        await self.client.__aexit__(None, None, None)
        # The websocket's TLS connection closes only after the bridge's close_notify comes back;
        # stopping this private loop before that would leave its socket open (ResourceWarning).
        # aiohttp has released that connection, so no event of its says when: poll, bounded.
        deadline = time.monotonic() + 2.0
        while sock is not None and sock.fileno() != -1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def close(self, force: bool = True) -> None:
        if self.closed:
            return
        try:
            self._call(self._aclose(), timeout=10)
        finally:
            self._stop_loop()
            self.closed = self.terminated = True

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def terminate(self, force: bool = False) -> bool:
        self.close()
        return True

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()
