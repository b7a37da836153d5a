"""The alert webhook: each console alert POSTed as JSON to an HTTPS receiver (`[alerts.webhook]`).

An audit sink (bridge.history.shipping's `Sink`) that takes only `alert` events: the daemon adds it
to the audit's sinks, so an alert is posted as it is audited. Like the syslog sink, sending never
holds anything up: `ship` puts the alert in a bounded queue (`queue`; when full the oldest is
dropped and counted) and one task sends them in order. A post that fails (no connection, a TLS
error, a timeout, an answer other than 2xx; redirects are not followed) is tried again after
0.5 s, 1 s, 2 s ... up to `retries` times, then dropped and counted. The receiver is verified
against `ca_file` (or the system's CAs).

Secrets: the URL (its path or query may be a token) and the header values (`Authorization`) are
never logged: log lines name only the receiver's host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bridge.config.alerts import WebhookConfig
from bridge.history.audit import iso_time

log = logging.getLogger(__name__)
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class HeadersError(OSError):
    """A malformed headers_file (an OSError, as a start-up step reports it)."""


def read_headers(path: Path) -> dict[str, str]:
    """`Name: value` lines (blank lines and `#` comments skipped); HeadersError naming the
    line, never its value."""
    headers: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise HeadersError(f"line {number}: expected `Name: value`")
        headers[name.strip()] = value.strip()
    return headers


def post_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON an alert is posted as: bridge (host name), port, rule, severity, offset (of the
    line), time (ISO-8601 UTC), line, and suppressed / boot_seconds when the alert has them."""
    body = {
        "bridge": socket.gethostname(),
        "port": fields.get("port"),
        "rule": fields.get("rule"),
        "severity": fields.get("severity"),
        "offset": fields.get("at"),
        "time": iso_time(time.time()),
        "line": fields.get("line"),
    }
    body.update({k: fields[k] for k in ("suppressed", "boot_seconds") if k in fields})
    return body


def receiver(url: str) -> str:
    """What log lines may say about the URL: its host (and port)."""
    return urlsplit(url).hostname or "?"


class Webhook:
    """The webhook sender; counts `sent`, `failed` (attempts) and `dropped` (alerts given up)."""

    name = "webhook"

    def __init__(self, cfg: WebhookConfig, headers: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.headers = {**dict(cfg.headers), **(headers or {})}
        self.queue: deque[dict[str, Any]] = deque()
        self.sent = self.failed = self.dropped = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2

    @classmethod
    def from_config(cls, cfg: WebhookConfig) -> Webhook:
        """Reads `headers_file` and the CA: OSError (HeadersError) or ssl.SSLError if bad."""
        extra = read_headers(cfg.headers_file) if cfg.headers_file is not None else {}
        return cls(cfg, extra)

    def ship(self, entry: dict[str, Any]) -> None:
        """Queue an alert (other audit events are not this sink's); never blocks or raises."""
        if entry.get("event") != "alert":
            return
        alert = post_body(entry)
        if len(self.queue) >= self.cfg.queue:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(alert)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alert-webhook")

    async def stop(self, drain_within: float = 2.0) -> None:
        """Give what is queued `drain_within` seconds, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_within)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout)
        connector = aiohttp.TCPConnector(ssl=self._context, limit=1)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self.headers
        ) as http:
            while True:
                while self.queue:
                    alert = self.queue[0]
                    await self._deliver(http, alert)
                    if self.queue and self.queue[0] is alert:  # not dropped meanwhile
                        self.queue.popleft()
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()

    async def _deliver(self, http: aiohttp.ClientSession, alert: dict[str, Any]) -> None:
        delay = RETRY_FIRST
        body = json.dumps(alert, ensure_ascii=False).encode()
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            try:
                async with http.post(
                    self.cfg.url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
                why = type(exc).__name__
            self.failed += 1
            log.warning(
                "alert webhook (%s): %s (attempt %d of %d)",
                receiver(self.cfg.url),
                why,
                attempt + 1,
                self.cfg.retries + 1,
            )
        self.dropped += 1
        log.error("alert webhook (%s): alert %s dropped", receiver(self.cfg.url), alert.get("rule"))
