"""The client library for the bridge's HTTPS/websocket API, used by the CLI and by lab scripts.

The server's certificate is pinned: by `--fingerprint SHA256:...`, or by a known_hosts-style file
(`~/.config/serial-bridge/known_hosts`), with a loud refusal when a known bridge presents a
different certificate later. A first-seen bridge is trusted only when the caller's `trust`
callback says so (the CLI shows the fingerprint and asks, as ssh does, or was given
`--trust-on-first-use`) — before any credential is sent; without one it is refused. Credentials:
an API token (`SERIAL_BRIDGE_TOKEN`, or a token file), or a user name and password that log in
for a session cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

# How long an idle connection is kept for the next request (s): under the bridge's 15 s
# (bridge.access.throttle.SERVER_LIMITS), so a request never goes out on one the bridge is closing.
KEEPALIVE = 10.0


class ClientError(Exception):
    """A failure the CLI reports in one line (and exits non-zero)."""


class PinMismatch(ClientError):
    """The bridge presented a certificate other than the pinned one."""


class UnknownBridge(ClientError):
    """A first-seen bridge whose certificate nobody confirmed: nothing was sent to it."""


class ApiError(ClientError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "serial-bridge"


@dataclass(frozen=True)
class Target:
    """`https://HOST:PORT/PORTNAME` split into its parts."""

    base: str  # https://host:port
    host: str
    port: int
    name: str | None

    @property
    def hostport(self) -> str:
        return self.base.removeprefix("https://")


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ClientError(f"{url!r}: expected https://HOST:PORT/PORTNAME")
    port = parts.port or 443
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    name = parts.path.strip("/") or None
    return Target(f"https://{shown}:{port}", host, port, name)


class KnownHosts:
    """`host:port SHA256:hex` lines: the certificates this user has trusted."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "known_hosts"

    def get(self, hostport: str) -> str | None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == hostport:
                return parts[1]
        return None

    def add(self, hostport: str, fingerprint: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(f"{hostport} {fingerprint}\n")


async def peer_fingerprint(host: str, port: int, wait: float = 10.0) -> str:
    """The SHA-256 fingerprint of the certificate a TLS server presents (no verification)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), wait)
    except (OSError, TimeoutError) as exc:
        raise ClientError(f"cannot reach {host}:{port}: {exc}") from exc
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _fp_bytes(fingerprint: str) -> bytes:
    hexpart = fingerprint.removeprefix("SHA256:").replace(":", "").lower()
    try:
        digest = bytes.fromhex(hexpart)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ClientError(f"{fingerprint!r} is not a SHA256:<64 hex digits> fingerprint")
    return digest


def normalise_fingerprint(fingerprint: str) -> str:
    return "SHA256:" + _fp_bytes(fingerprint).hex()


class BridgeClient:
    """An authenticated connection to one bridge."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        totp: str | None = None,
        fingerprint: str | None = None,
        known_hosts: KnownHosts | None = None,
        notice: Any = None,
        trust: Callable[[str, str], bool] | None = None,
    ) -> None:
        """`trust(hostport, fingerprint)` decides about a bridge not in known_hosts (True: trust
        it and remember it); without it such a bridge is refused (UnknownBridge)."""
        self.target = parse_url(url)
        self.use_credentials(token=token, user=user, password=password, totp=totp)
        self.fingerprint = normalise_fingerprint(fingerprint) if fingerprint else None
        self.known_hosts = known_hosts or KnownHosts()
        self.notice = notice or (lambda text: print(text, file=sys.stderr))
        self.trust = trust
        self.session: aiohttp.ClientSession | None = None
        self.csrf: str | None = None
        self._pinned: str | None = None

    def use_credentials(
        self,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        totp: str | None = None,
    ) -> None:
        """Set the credentials (before entering the client); the CLI asks for a password only
        once the certificate is settled."""
        self.token, self.user, self.password, self.totp = token, user, password, totp

    async def pin(self) -> str:
        """The certificate fingerprint to accept, settled once (and before any credential)."""
        if self._pinned is None:
            self._pinned = await self._decide_pin()
        return self._pinned

    async def _decide_pin(self) -> str:
        if self.fingerprint:
            return self.fingerprint
        known = self.known_hosts.get(self.target.hostport)
        if known:
            return known
        hostport = self.target.hostport
        seen = await peer_fingerprint(self.target.host, self.target.port)
        if self.trust is None or not self.trust(hostport, seen):
            raise UnknownBridge(
                f"{hostport} is not a known bridge (its certificate is {seen}); nothing was "
                "sent to it. Compare that with `serial-bridge cert show` on the bridge, then "
                f"pass --fingerprint {seen} (or --trust-on-first-use)"
            )
        self.known_hosts.add(hostport, seen)
        self.notice(
            f"serial-bridge: trusting {hostport} from now on (saved in {self.known_hosts.path})"
        )
        return seen

    async def __aenter__(self) -> BridgeClient:
        pin = await self.pin()
        connector = aiohttp.TCPConnector(
            ssl=aiohttp.Fingerprint(_fp_bytes(pin)), keepalive_timeout=KEEPALIVE
        )
        headers = {"Origin": self.target.base}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.session = aiohttp.ClientSession(
            connector=connector, headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        try:
            if not self.token and self.user is not None:
                body = await self.request("POST", "/api/login", self._login_body())
                self.csrf = body.get("csrf")
        except BaseException:
            await self.session.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def _login_body(self) -> dict[str, str]:
        body = {"username": self.user or "", "password": self.password or ""}
        if self.totp:
            body["totp"] = self.totp
        return body

    def _headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf} if self.csrf else {}

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        try:
            async with self.session.request(
                method, self.target.base + path, json=body, headers=self._headers()
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ApiError(resp.status, _error_text(text))
                return json.loads(text) if text else None
        except aiohttp.ServerFingerprintMismatch as exc:
            raise PinMismatch(_mismatch(self.target.hostport, self.known_hosts.path)) from exc
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(f"{self.target.base}: {exc}") from exc

    async def stream(
        self, path: str, query: dict[str, str], method: str = "GET", body: Any = None
    ) -> aiohttp.ClientResponse:
        """A streaming request (the caller reads `resp.content` and closes it)."""
        assert self.session is not None
        url = f"{self.target.base}{path}?{urlencode(query)}" if query else self.target.base + path
        try:
            resp = await self.session.request(
                method,
                url,
                json=body,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise PinMismatch(_mismatch(self.target.hostport, self.known_hosts.path)) from exc
        if resp.status >= 400:
            text = await resp.text()
            resp.release()
            raise ApiError(resp.status, _error_text(text))
        return resp

    async def console(
        self,
        port: str,
        mode: str | None = None,
        takeover: bool = False,
        start: int | None = None,
        replay: int = 0,
    ) -> aiohttp.ClientWebSocketResponse:
        """The console websocket. `mode` None: the bridge picks (rw if the role may write).
        `start`: resume at that offset; else `replay` bytes of history from a line start."""
        assert self.session is not None
        query = {"takeover": "1" if takeover else "0"}
        if mode is not None:
            query["mode"] = mode
        if start is not None:
            query["from"] = str(start)
        elif replay > 0:
            query["replay"] = str(replay)
        url = f"{self.target.base}/api/ports/{port}/console?{urlencode(query)}"
        try:
            return await self.session.ws_connect(
                url, headers=self._headers(), max_msg_size=0, autoping=True, heartbeat=30.0
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            raise PinMismatch(_mismatch(self.target.hostport, self.known_hosts.path)) from exc
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status >= 400:  # the refusal's reason is in the body, which aiohttp drops:
                await self.request("GET", f"/api/ports/{port}/access")  # ask why, once
            raise ApiError(exc.status, exc.message or "websocket refused") from exc


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:200]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)


def _mismatch(hostport: str, path: Path) -> str:
    return (
        f"REFUSED: the certificate of {hostport} is not the one pinned in {path}.\n"
        "Someone may be intercepting the connection, or the bridge's certificate changed. "
        "Check its fingerprint on the bridge (`serial-bridge cert show`), then remove the "
        "old line from that file or pass --fingerprint."
    )
