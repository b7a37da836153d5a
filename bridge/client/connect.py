"""`serial-bridge connect`: an interactive terminal onto a port, like `ssh` to a console server.

The local terminal is put in raw mode and restored on every exit path (escape, server gone,
signal, exception). Escapes are recognised after a newline, as in ssh: `~.` disconnect, `~B` send
BREAK, `~?` help, `~~` a literal tilde; answers the terminal types by itself (the cursor position
report a busybox prompt asks for, say) do not count as typing (bridge.client.keys). The target's
output passes a filter that keeps it from reaching beyond the screen (clipboard writes, requests
that make the terminal type back; bridge.common.screen). On attach the last few KiB of output are
replayed from a line start, then live output. A dropped link reconnects by itself and resumes from
the last offset received, so nothing the target printed meanwhile is missed or shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.client.http import ApiError, BridgeClient, ClientError
from bridge.client.keys import EscapeParser
from bridge.common.screen import ScreenFilter

HELP = (
    "\r\nSupported escapes (after a newline):\r\n"
    "  ~.  disconnect\r\n  ~B  send BREAK (then a key for SysRq)\r\n"
    "  ~?  this help\r\n  ~~  send a literal ~\r\n"
)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on a tty for the duration; always restored."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _describe_mode(hello: dict[str, Any], options: Options) -> str:
    """How the hello's mode reads to the person: why they are read-only, if they are."""
    if hello.get("mode") == "rw":
        text = "rw"
    elif options.read_only:
        text = "ro"
    elif hello.get("role") == "viewer":
        text = "ro: the viewer role may only watch"
    elif hello.get("writer"):
        text = f"ro, writer: {hello['writer']}; --takeover to take the lease"
    else:
        text = "ro"
    return text + ("" if hello.get("online") else ", port OFFLINE")


def _say(text: str) -> None:
    os.write(sys.stderr.fileno(), f"\r\n[serial-bridge] {text}\r\n".encode())


@dataclass(frozen=True)
class Options:
    """What `serial-bridge connect` was asked for."""

    read_only: bool = False
    takeover: bool = False
    replay: int = 0  # bytes of history shown on attach, from a line start (0: none)
    keyboard: int = 0  # the fd keys are read from (see keyboard())


def keyboard(password_on_stdin: bool) -> int:
    """The fd to read keys from: standard input, or the terminal (/dev/tty) when standard input
    is not one and carried the password. Refuses (ClientError) when there is no terminal then:
    the keys would be the end of a pipe, and connect would end at once."""
    if not password_on_stdin or os.isatty(0):
        return 0
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise ClientError(
            "connect with --password-stdin reads your keys from the terminal, and there is "
            "none (/dev/tty); for scripts use an API token (SERIAL_BRIDGE_TOKEN or --token-file)"
        ) from None


class Terminal:
    def __init__(self, client: BridgeClient, port: str, options: Options) -> None:
        self.client, self.port, self.options = client, port, options
        self.takeover = options.takeover
        self.offset: int | None = None
        self.keys = options.keyboard
        self.parser = EscapeParser()
        self.screen = ScreenFilter()
        self.quit = asyncio.Event()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.out_fd = sys.stdout.fileno()
        self.outbox: asyncio.Queue[bytes | str] = asyncio.Queue()

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "hello":
            self.offset = int(msg["offset"])
            _say(f"connected to {self.port} ({_describe_mode(msg, self.options)}); ~? for help")
        elif kind == "status":
            event = msg.get("event")
            if event in ("online", "offline"):
                _say(f"port {self.port} is {event}")
            elif event in ("takeover", "release", "idle-release", "lease", "closed"):
                _say(
                    f"{event} by {msg.get('actor', '?')}; you are {msg.get('mode')}"
                    + (f" ({msg['reason']})" if msg.get("reason") else "")
                )
        elif kind == "gap":
            _say(f"output missing: offsets {msg['from']}..{msg['to']} are not held")
            self.screen.reset()
            self.offset = int(msg["to"])
        elif kind == "error":
            _say(f"error: {msg.get('message')}")
        elif kind == "result":
            _say(f"{msg.get('action')} done")

    def _on_stdin(self) -> None:
        try:
            data = os.read(self.keys, 65536)
        except OSError:
            data = b""
        if not data:
            self.quit.set()
            return
        for action, payload in self.parser.feed(data):
            if action == "disconnect":
                self.quit.set()
                return
            self._act(action, payload)

    def _act(self, action: str, payload: bytes) -> None:
        ws = self.ws
        if action == "help":
            os.write(sys.stderr.fileno(), HELP.encode())
        elif ws is None or ws.closed:
            return
        elif action == "break":
            self.outbox.put_nowait(json.dumps({"type": "break"}))
        else:
            self.outbox.put_nowait(payload)

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Sends keyboard input in order; a closed socket ends it (the session reconnects)."""
        while True:
            item = await self.outbox.get()
            if isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_bytes(item)

    async def _session(self) -> str:
        """One websocket session; returns why it ended: "quit", "lost" or "denied"."""
        ws = await self.client.console(
            self.port,
            mode="ro" if self.options.read_only else None,
            takeover=self.takeover,
            start=self.offset,  # after a reconnect: exactly where the last session ended
            replay=self.options.replay,
        )
        self.takeover = False
        self.ws = ws
        quit_wait = asyncio.ensure_future(self.quit.wait())
        sender = asyncio.ensure_future(self._send_loop(ws))
        try:
            while True:
                receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait(
                    {receive, quit_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if quit_wait in done:
                    receive.cancel()
                    return "quit"
                msg = receive.result()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    shown = self.screen.feed(msg.data)
                    if shown:
                        os.write(self.out_fd, shown)
                    if self.offset is not None:
                        self.offset += len(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_message(json.loads(msg.data))
                else:  # the code from the close frame: ws.close_code turns into 1006 when
                    # aiohttp's reply cannot go out (a bridge before the close handshake
                    # dropped the link at once; as in bridge.client.expect)
                    code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
                    if code == 1008:
                        _say("closed by the bridge: the session ended")
                        return "denied"
                    return "lost"
        finally:
            quit_wait.cancel()
            sender.cancel()
            self.ws = None
            await ws.close()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.quit.set)
        loop.add_reader(self.keys, self._on_stdin)
        delay = 0.5
        try:
            while not self.quit.is_set():
                try:
                    why = await self._session()
                except ApiError as exc:
                    _say(str(exc))
                    return 1
                except (ClientError, aiohttp.ClientError, OSError) as exc:
                    why = "lost"
                    _say(f"connection failed: {exc}")
                if why == "quit":
                    return 0
                if why == "denied":
                    return 1
                _say(f"link lost; reconnecting in {delay:.1f}s (resuming at offset {self.offset})")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.quit.wait(), delay)
                delay = min(delay * 2, 5.0)
            return 0
        finally:
            loop.remove_reader(self.keys)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)


async def interactive(client: BridgeClient, port: str, options: Options) -> int:
    with raw_terminal(options.keyboard):
        try:
            return await Terminal(client, port, options).run()
        finally:
            os.write(sys.stderr.fileno(), b"\r\n[serial-bridge] disconnected\r\n")
