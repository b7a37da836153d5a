"""Shared fixtures: real ptys standing in for UARTs, a real daemon on 127.0.0.1 with real TLS, and
authenticated clients (bearer tokens or a logged-in session) pinned to its certificate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.access.passwords import hash_password
from bridge.access.store import UserStore
from bridge.client.http import KEEPALIVE
from bridge.config import Config, parse_config
from bridge.service import eventloop
from bridge.service.daemon import Daemon

PASSWORDS = {"admin": "admin-pass-1", "operator": "operator-pass-1", "viewer": "viewer-pass-1"}

if eventloop.chosen() == "uvloop":
    # The suite runs on the daemon's loop (uvloop where installed; SERIAL_BRIDGE_LOOP=asyncio
    # pytest for asyncio's): the daemons it starts choose the same way, in-process tests follow.
    def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
        return {"uvloop": eventloop.loop_factory("uvloop")}


_HASHES: dict[str, str] = {}


class PtyDevice:
    """A pty pair: the bridge opens `path` (a symlink to the slave); the test is the target and
    reads/writes the master. `replace()` puts a fresh pty behind the same path (replug)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = -1
        self._open()

    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.symlink_to(name)

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def replace(self) -> None:
        self.unplug()
        self._open()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    async def awrite(self, data: bytes, piece: int = 65536) -> None:
        """Write without blocking the event loop (the bridge runs in the same loop)."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view[:piece])
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[n:]
            await asyncio.sleep(0)

    async def read_until(self, predicate: Callable[[bytes], bool], timeout: float = 10) -> bytes:
        """What the bridge wrote to the target, until `predicate(all_so_far)` holds."""
        got = bytearray()
        deadline = time.monotonic() + timeout
        while not predicate(bytes(got)):
            if time.monotonic() > deadline:
                raise AssertionError(f"target did not get the expected bytes; got {len(got)}")
            try:
                got += os.read(self.master, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.002)
        return bytes(got)

    def drain_input(self) -> bytes:
        got = bytearray()
        while True:
            try:
                got += os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                return bytes(got)

    def close(self) -> None:
        self.unplug()


@pytest.fixture
def pty_device(tmp_path: Path) -> Any:
    dev = PtyDevice(tmp_path / "ttyTEST")
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An SSH key pair (ssh-keygen, ed25519) for each user, shared by the tests of a module;
    `ssh_bridge(..., keys=keys)` registers them."""
    from tests.ssh_helpers import keygen, require_openssh  # it imports this module

    require_openssh()
    home = tmp_path_factory.mktemp("keys")
    return {name: keygen(home / f"id_{name}") for name in PASSWORDS}


@pytest.fixture
def mock_pins() -> Any:
    """gpiozero's shared MockFactory, with every pin's history cleared before and after."""
    from bridge.hw.lines import mock_pin_factory

    mock = mock_pin_factory()
    mock.reset()
    yield mock
    mock.reset()


def pin_states(gpio: int) -> list[bool]:
    """The full state history of a mock pin (not gpiozero's zip-based assert_states)."""
    from bridge.hw.lines import mock_pin_factory

    return [s.state for s in mock_pin_factory().pin(gpio).states]


def user_hash(name: str) -> str:
    if name not in _HASHES:
        _HASHES[name] = hash_password(PASSWORDS[name])
    return _HASHES[name]


def make_config(state_dir: Path, ports: dict[str, dict[str, Any]], **sections: Any) -> Config:
    server = {"listen": ["127.0.0.1:0"], "state_dir": str(state_dir), **sections.pop("server", {})}
    log = {"enabled": False, **sections.pop("log", {})}
    audit = {"journal": False, **sections.pop("audit", {})}  # not this machine's journal
    data = {"server": server, "log": log, "ports": ports, "audit": audit, **sections}
    return parse_config(data, "<test>")


@dataclass
class Bridge:
    """A running daemon plus what a test needs to talk to it."""

    daemon: Daemon
    state_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.daemon.urls()[0]

    @property
    def origin(self) -> str:
        return self.base

    def ssl_pin(self) -> aiohttp.Fingerprint:
        return aiohttp.Fingerprint(bytes.fromhex(self.daemon.fingerprint.removeprefix("SHA256:")))

    def session(self, token_user: str | None = None, **kwargs: Any) -> aiohttp.ClientSession:
        headers = {"Origin": self.origin}
        if token_user is not None:
            headers["Authorization"] = f"Bearer {self.tokens[token_user]}"
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_pin(), keepalive_timeout=KEEPALIVE),
            headers=headers,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            **kwargs,
        )

    async def ws(
        self, session: aiohttp.ClientSession, port: str, **query: Any
    ) -> aiohttp.ClientWebSocketResponse:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        ws = await session.ws_connect(f"{self.base}/api/ports/{port}/console?{q}")
        self.sockets.append(ws)
        return ws

    async def close_sockets(self) -> None:
        """Close the websockets `ws` opened that a test left open. Closing their session does
        not release their connections: aiohttp then warns "Unclosed connection" whenever the
        garbage collector finalises the connection before its response (it does on 3.13)."""
        for ws in self.sockets:
            await ws.close()
        self.sockets.clear()

    @property
    def port(self) -> Any:
        return next(iter(self.daemon.state.ports.values())) if self.daemon.state else None


BridgeFactory = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def bridge_factory(tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """`await bridge_factory(ports={...}, server={...}, log={...})` -> a running Bridge with users
    admin/operator/viewer (passwords in PASSWORDS) and a bearer token for each. A
    `transport_factory` replaces the real transports (a recording fake, say)."""
    running: list[Bridge] = []

    async def start(
        ports: dict[str, dict[str, Any]],
        transport_factory: Callable[[Any], Any] | None = None,
        **sections: Any,
    ) -> Bridge:
        state_dir = tmp_path / f"state{len(running)}"  # a test may have put files there
        state_dir.mkdir(exist_ok=True)
        users = UserStore(state_dir)
        tokens = {}
        for name in PASSWORDS:
            users.add(name, name, user_hash(name), None)
            tokens[name] = users.create_token(name, f"{name}-test")
        config = make_config(state_dir, ports, **sections)
        daemon = Daemon(config, transport_factory) if transport_factory else Daemon(config)
        await daemon.start()
        running.append(Bridge(daemon, state_dir, tokens))
        return running[-1]

    yield start
    for bridge in running:
        await bridge.close_sockets()
        await bridge.daemon.stop()


@pytest.fixture
async def bridge(bridge_factory: BridgeFactory, pty_device: PtyDevice) -> Bridge:
    """A daemon with one port `lab` on a pty at 4 Mbaud, waiting until the port is online."""
    b = await bridge_factory(ports={"lab": {"device": str(pty_device.path), "baud": 4_000_000}})
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    return b


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class WsReader:
    """Collects what a console websocket receives: output bytes and JSON messages, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data = bytearray()
        self.messages: list[dict[str, Any]] = []
        self.closed = False

    async def pump(self, timeout: float = 0.05) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await self.ws.receive(timeout=timeout)
                self._take(msg)
                if self.closed:
                    return

    def _take(self, msg: aiohttp.WSMessage) -> None:
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.data += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            self.messages.append(json.loads(msg.data))
        else:
            self.closed = True

    async def until(self, predicate: Callable[[WsReader], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(
                    f"websocket: condition not met; {len(self.data)} bytes, "
                    f"messages {self.messages[-5:]}, closed={self.closed}"
                )
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue
            self._take(msg)

    async def message(self, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        def found(r: WsReader) -> bool:
            return any(
                m.get("type") == kind and all(m.get(k) == v for k, v in match.items())
                for m in r.messages
            )

        await self.until(found, timeout)
        return next(
            m
            for m in self.messages
            if m.get("type") == kind and all(m.get(k) == v for k, v in match.items())
        )


def client_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
