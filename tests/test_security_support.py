"""Helpers shared by the security tests (no tests here): logins, raw TLS sockets, the CLI in a
subprocess, a settable clock."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from bridge.access import totp
from tests.conftest import PASSWORDS, Bridge

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def login(
    bridge: Bridge, session: aiohttp.ClientSession, user: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    """POST /api/login; returns (status, JSON body)."""
    body = {"username": user, "password": PASSWORDS.get(user, "nope"), **extra}
    async with session.post(f"{bridge.base}/api/login", json=body) as resp:
        return resp.status, await resp.json()


async def logged_in(bridge: Bridge, user: str, **extra: Any) -> tuple[aiohttp.ClientSession, str]:
    """A client session logged in as `user`; returns it and its CSRF token."""
    session = bridge.session()
    status, body = await login(bridge, session, user, **extra)
    assert status == 200, body
    return session, body["csrf"]


def cookie_of(session: aiohttp.ClientSession) -> str:
    for cookie in session.cookie_jar:
        if cookie.key == "__Host-sb_session":
            return cookie.value
    raise AssertionError("no session cookie")


def client_tls(
    maximum: ssl.TLSVersion | None = None, minimum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if maximum is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL offer the old protocols at all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/1.1 are deprecated
            ctx.minimum_version = minimum or ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = maximum
    return ctx


async def raw_request(bridge: Bridge, head: str, timeout: float = 10.0) -> bytes:
    """Send a hand-written request head over TLS; everything the server sends back."""
    host, port = bridge.daemon.addresses[0]
    reader, writer = await asyncio.open_connection(host, port, ssl=client_tls())
    try:
        writer.write(head.encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


def write_cli_config(bridge_state: Path, path: Path) -> Path:
    path.write_text(f'[server]\nstate_dir = "{bridge_state}"\n')
    return path


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`serial-bridge ARGS` in a subprocess (the real entry point, as an admin would run it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


async def acli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`cli` without blocking the event loop the daemon under test runs in."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: cli(*args, stdin=stdin))


def cli_totp(
    config: Path, user: str, answers: Callable[[str], list[str]] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """`serial-bridge user totp USER` answered as its user would: read the otpauth:// URI it
    prints, then type the code the app shows (or the lines `answers(secret)` gives). Returns the
    result (stdout includes the URI line) and the secret ("" when no URI came)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "user", "totp", user, "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert proc.stdout is not None
    uri = proc.stdout.readline()  # no QR code: stdout is not a terminal
    secret = parse_qs(urlsplit(uri.strip()).query).get("secret", [""])[0]
    lines = answers(secret) if answers else [totp.code_at(secret, time.time())] if secret else []
    out, err = proc.communicate("".join(f"{line}\n" for line in lines), timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, uri + out, err), secret


async def acli_totp(config: Path, user: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`cli_totp` without blocking the event loop the daemon under test runs in."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: cli_totp(config, user))


async def closed_within(ws: aiohttp.ClientWebSocketResponse, limit: float) -> tuple[float, int]:
    """Wait for the server to close `ws`; (seconds it took, close code)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        msg = await ws.receive(timeout=limit)
        if msg.type == aiohttp.WSMsgType.CLOSE:  # data: the code the server sent
            return time.monotonic() - start, int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return time.monotonic() - start, ws.close_code or 0
    raise AssertionError(f"websocket still open after {limit} s")
