"""Audit shipping: every audit event also goes to the system journal and, when configured, to a
remote syslog collector, so whatever log pipeline a fleet runs carries them. The audit files in
state_dir stay the record; shipping is a copy that never holds anything up.

- `JournalSink`: one datagram per event to journald's native socket
  (/run/systemd/journal/socket), with structured fields: MESSAGE, PRIORITY,
  SYSLOG_IDENTIFIER=serial-bridge, SERIAL_BRIDGE_EVENT, one SERIAL_BRIDGE_<FIELD> per audit field
  (lists and objects as JSON) and SERIAL_BRIDGE_JSON, the whole event. Sent without blocking; an
  event the socket does not take now (no journal, a full buffer) is counted as dropped.
- `SyslogSink`: RFC 5424 messages over TLS (RFC 5425: octet-counted frames), facility authpriv,
  MSGID the event, the fields as structured data `[audit@32473 ...]` and the JSON event as MSG.
  Events wait in a bounded queue (`queue_size`); a task sends them, reconnecting with back-off
  while the collector is away. A full queue drops its oldest event and counts it: recording an
  event never waits for the network. An event leaves the queue only once written, so a broken
  connection resends it (at least once).

Each sink counts `sent` and `dropped` (the metrics show them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import struct
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from bridge.config import AuditConfig

log = logging.getLogger(__name__)

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "serial-bridge"
SD_ID = "audit@32473"  # 32473: the private enterprise number set aside for examples (RFC 5612)
FACILITY_AUTHPRIV = 10
INFO, NOTICE, WARNING = 6, 5, 4
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class Sink(Protocol):
    """Where a copy of each audit event goes. `ship` never blocks and never raises."""

    name: str
    sent: int
    dropped: int

    def ship(self, entry: dict[str, Any]) -> None: ...

    def start(self) -> None:
        """Begin sending (in the running event loop), where the sink sends in the background."""

    async def stop(self) -> None:
        """Send what is queued (briefly) and release the connection or socket."""


def sinks_for(cfg: AuditConfig) -> list[Sink]:
    """The sinks `[audit]` asks for."""
    sinks: list[Sink] = []
    if cfg.journal:
        sinks.append(JournalSink(cfg.journal_socket))
    if cfg.syslog is not None:
        context = ssl.create_default_context(cafile=cfg.syslog_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        host, port = cfg.syslog
        sinks.append(SyslogSink(host, port, context, cfg.syslog_queue))
    return sinks


def severity(entry: dict[str, Any]) -> int:
    """warning: a failed login or a refused action; info: everything else."""
    if entry.get("ok") is False or str(entry.get("result", "")).startswith("refused"):
        return WARNING
    return INFO


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def summary(entry: dict[str, Any]) -> str:
    """A one-line human reading of an event: `login user=alice peer=192.0.2.7 ok=false`."""
    parts = [str(entry.get("event", "?"))]
    parts += [f"{k}={_text(v)}" for k, v in entry.items() if k not in ("time", "event")]
    return " ".join(parts)


# ---- the journal -------------------------------------------------------------------------------


def journal_fields(entry: dict[str, Any]) -> dict[str, str]:
    fields = {
        "MESSAGE": f"audit: {summary(entry)}",
        "PRIORITY": str(severity(entry)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "SYSLOG_FACILITY": str(FACILITY_AUTHPRIV),
    }
    for key, value in entry.items():
        name = "SERIAL_BRIDGE_" + re.sub(r"[^A-Z0-9_]", "_", str(key).upper())
        fields[name[:64]] = _text(value)
    fields["SERIAL_BRIDGE_JSON"] = json.dumps(entry, ensure_ascii=False, default=str)
    return fields


def encode_journal(fields: dict[str, str]) -> bytes:
    """journald's native protocol: `NAME=value\\n`, or for a value with a newline `NAME\\n`, its
    length as 64-bit little-endian, the value, `\\n`."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSink:
    name = "journal"

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sent = self.dropped = 0
        self._sock: socket.socket | None = None
        self._warned = False

    def ship(self, entry: dict[str, Any]) -> None:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(encode_journal(journal_fields(entry)), str(self.path))
        except OSError as exc:
            self.dropped += 1
            if not self._warned:  # no journal on this machine is no news; anything else is
                missing = isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
                log.log(
                    logging.INFO if missing else logging.WARNING,
                    "audit: the journal (%s) does not take events: %s",
                    self.path,
                    exc,
                )
                self._warned = True
            return
        self.sent += 1
        self._warned = False

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ---- a remote syslog collector -----------------------------------------------------------------

_SD_NAME = re.compile(r"[^!-~]|[=\]\"]")


def _sd_value(value: Any) -> str:
    return re.sub(r'(["\\\]])', r"\\\1", _text(value))


def rfc5424(entry: dict[str, Any], hostname: str, pid: int) -> bytes:
    """One RFC 5424 message for an audit event."""
    pri = FACILITY_AUTHPRIV * 8 + severity(entry)
    msgid = _SD_NAME.sub("_", str(entry.get("event", "-")))[:32] or "-"
    params = "".join(
        f' {_SD_NAME.sub("_", str(k))[:32]}="{_sd_value(v)}"'
        for k, v in entry.items()
        if k != "time" and v is not None
    )
    host = _SD_NAME.sub("_", hostname)[:255] or "-"
    header = f"<{pri}>1 {entry.get('time', '-')} {host} {IDENTIFIER} {pid} {msgid}"
    body = json.dumps(entry, ensure_ascii=False, default=str)
    return f"{header} [{SD_ID}{params}] ".encode() + b"\xef\xbb\xbf" + body.encode()


class SyslogSink:
    name = "syslog"

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        queue_size: int = 1000,
        hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.context = host, port, context
        self.queue: deque[bytes] = deque()
        self.queue_size = queue_size
        self.hostname = hostname or socket.gethostname()
        self.sent = self.dropped = 0
        self.connected = False
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while everything queued has been written
        self._empty.set()
        self._task: asyncio.Task[None] | None = None

    def ship(self, entry: dict[str, Any]) -> None:
        message = rfc5424(entry, self.hostname, os.getpid())
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(b"%d " % len(message) + message)
        self._empty.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-syslog")

    async def stop(self, drain_within: float = 2.0) -> None:
        """Give the queue `drain_within` seconds to reach the collector, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        if self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), drain_within)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=self.context, server_hostname=self.host
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                log.warning(
                    "audit: syslog collector %s:%d unreachable: %s (retrying)",
                    self.host,
                    self.port,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            self.connected = True
            watcher = asyncio.get_running_loop().create_task(self._watch(reader))
            try:
                await self._send(writer, watcher)
            except (OSError, ssl.SSLError) as exc:
                log.warning("audit: syslog collector connection lost: %s", exc)
            finally:
                self.connected = False
                watcher.cancel()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Read (and ignore) what the collector sends, until it closes; then wake the sender."""
        with contextlib.suppress(OSError, ssl.SSLError):
            while await reader.read(4096):
                pass
        self._wake.set()

    async def _send(self, writer: asyncio.StreamWriter, watcher: asyncio.Task[None]) -> None:
        while True:
            if watcher.done():
                raise ConnectionResetError("closed by the collector")
            while self.queue:
                frame = self.queue[0]
                writer.write(frame)
                await writer.drain()
                if self.queue and self.queue[0] is frame:  # not dropped meanwhile
                    self.queue.popleft()
                self.sent += 1
            self._empty.set()
            self._wake.clear()
            await self._wake.wait()
