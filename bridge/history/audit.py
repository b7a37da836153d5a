"""Audit trail: who did what, append-only JSON lines under ``state_dir/audit/``.

This module owns the audit files: ``audit.jsonl`` (current) and ``audit.jsonl.1`` ...
``audit.jsonl.<keep>`` (older; rotated when the current file would exceed ``max_bytes``, the
oldest is deleted), and likewise ``connections.jsonl`` for ``attach``/``detach``, which any
client can cause at will: kept apart and coalesced (bridge.history.churn) so that churn cannot
rotate the security events away; throttled login refusals are coalesced too.

Directory mode 0700, files 0600. Each line is one JSON object with at least ``time`` (ISO-8601
UTC, milliseconds, ``Z``) and ``event``; each line goes to the file in a single unbuffered
``write`` (not fsync'ed: the SD card is spared, the kernel writes it back within
seconds). Several processes (the daemon and a ``serial-bridge user`` command) may share the
directory: writes and rotation hold an ``flock`` on the directory. Once written, an event is
handed to the ``sinks`` (the system journal, a syslog collector: bridge.history.shipping).

A disk that refuses the write (EIO, ENOSPC, EDQUOT, EROFS) never makes :meth:`AuditLog.record`
fail: the line waits in memory (at most BACKLOG lines; beyond that the oldest are dropped and
counted, and an ``audit-lost`` line says how many), is written before the next one and retried
every RETRY seconds, and the fault is reported once through ``health``
(bridge.history.health). The sinks get the event at once either way.

Never a secret: :meth:`AuditLog.record` raises ``ValueError`` (a programming error) for a field
named password, token, secret, totp, code, cookie or keystrokes, or ending in ``_<that>``, at any
depth. Name what was changed instead (``name="ci-bot"`` for a token, never its value).

Events and their fields (``peer`` is the client address; ``by`` says who acted when that is not
``user``, e.g. ``"cli"`` or an admin's name; callers may add fields such as ``result``):

- ``login`` — ``user`` (None for an unknown name), ``peer``, ``ok`` (bool), ``reason`` on failure;
  over SSH also ``via="ssh"``, ``method`` (publickey, certificate, password, totp) and the key's
  ``key`` fingerprint, or a certificate's ``cert_id``, ``cert_serial`` and ``ca`` fingerprint; a
  failed SSH connection whose keys were refused: ``keys``, their fingerprints
- ``logout`` — ``user``, ``peer``
- ``attach`` / ``detach`` — ``user``, ``port``, ``mode`` ("ro"|"rw"), ``peer``
- ``takeover`` — ``user``, ``port`` (and whom the lease was taken from, where known)
- ``break`` — ``user``, ``port``; ``sysrq`` — ``user``, ``port``, ``keys``
- ``nmi``, ``reset`` — ``user``, ``port``; ``power`` — ``user``, ``port``, ``action``
- ``user-add`` / ``user-set`` / ``user-del`` / ``user-passwd`` / ``user-totp`` — ``user`` (the
  account changed),
  ``by``, and ``role`` / ``ports`` / ``enrolled`` where relevant
- ``forward`` — ``user``, ``peer``, ``to`` (host:port asked for), ``port`` (when it is a port's RFC
  2217 endpoint), ``result`` ("ok" or "refused: why"): an `ssh -L` forwarding request
- ``user-key`` — ``user``, ``added`` or ``removed`` (an SSH key's fingerprint), ``by``
- ``token-create`` / ``token-revoke`` — ``user`` (the token's owner), ``label`` (its name), ``by``
- ``config-reload`` — ``changes`` or ``ok`` / ``reason``
- ``line-settings`` — ``user``, ``port``, ``line`` (e.g. "9600 8N1": a client changed the UART's
  speed/framing/flow); ``line-restored`` — the same, when the configured settings came back
- ``control-lines`` — ``user``, ``port``, ``dtr`` and/or ``rts`` (bool)
- ``write-dropped`` — ``user``, ``port``, ``peer``, ``bytes``, ``reason`` (the first keystrokes of a
  read-only RFC 2217 client that were dropped), or ``total: true`` with the count when it left
- ``port-enabled`` / ``port-disabled`` — ``port``, ``by`` (``"config-reload"``): a reload
  changed the port's ``enabled``
- ``unclean-stop`` — ``port``, ``from``, ``to``: the port's console log was not closed cleanly
  (a crash or power cut); output after ``from`` may be lost, offsets continue at ``to``
- ``audit-lost`` — ``events``: how many audit lines a long disk fault made this log drop
- ``clock-step`` — ``by`` (seconds, signed), ``to`` (the new time): the wall clock was stepped
  (NTP on a bridge without a real-time clock); events before it are dated by the old clock
- ``alert`` — ``port``, ``rule``, ``severity``, ``at`` (offset of the line), ``line``, and
  ``suppressed`` / ``boot_seconds`` when they apply (bridge.console.alerts)
- ``playbook`` — ``port``, ``user``, ``playbook``, and ``args`` with ``result: "started"``, or at
  its end ``result`` (ok, failed, cancelled), ``step``, ``seconds``, ``message`` / ``by``;
  ``playbook-step`` — ``port``, ``user``, ``playbook``, ``step``, ``of``, ``title``
  (bridge.console.rescue; never the text typed)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bridge.history.churn import CONNECTION_EVENTS, CONNECTIONS_FILE, Coalescer
from bridge.history.health import DISK_ERRORS, WriteHealth
from bridge.history.shipping import Sink
from bridge.history.statedir import open_private, private_dir

log = logging.getLogger(__name__)

FILE_NAME = "audit.jsonl"
FORBIDDEN_FIELDS = frozenset(
    {"password", "token", "secret", "totp", "code", "cookie", "keystrokes"}
)
EVENTS = (
    "login", "logout", "attach", "detach", "takeover", "break", "sysrq", "nmi", "reset", "power",
    "user-add", "user-set", "user-del", "user-passwd", "user-totp", "user-key", "token-create",
    "token-revoke", "config-reload", "line-settings", "line-restored", "control-lines",
    "write-dropped", "port-enabled", "port-disabled", "forward", "unclean-stop", "audit-lost",
    "clock-step", "alert", "playbook", "playbook-step",
)  # fmt: skip
BACKLOG = 10_000  # audit lines kept in memory while the disk refuses them
RETRY = 5.0  # seconds between attempts to write them


def _check_fields(fields: dict[str, Any], path: str = "") -> None:
    for key, value in fields.items():
        name = str(key).lower()
        if name in FORBIDDEN_FIELDS or name.rsplit("_", 1)[-1] in FORBIDDEN_FIELDS:
            raise ValueError(f"audit field {path}{key!r} may carry a secret; refusing to record it")
        if isinstance(value, dict):
            _check_fields(value, f"{path}{key}.")


def iso_time(when: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-23T06:00:00.000Z."""
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _parse_time(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Auditor(Protocol):
    """What records audit events: `AuditLog`, or `NullAudit` where nothing is kept."""

    def record(self, event: str, **fields: Any) -> None: ...


class NullAudit:
    def record(self, event: str, **fields: Any) -> None:
        return None


class _Trail:
    """One size-bounded file (`name`) and its rotated copies `name.1` ... `name.<keep>`."""

    def __init__(self, directory: Path, name: str, max_bytes: int, keep: int) -> None:
        self.directory, self.name, self.max_bytes, self.keep = directory, name, max_bytes, keep
        self.path = directory / name
        self._torn = False  # the last write was cut short: the file ends mid-line

    def append(self, line: bytes) -> None:
        """Write one line, rotating first when it would not fit (the caller holds the lock)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            data = b"\n" + line if self._torn else line  # end a line cut short on its own
            self._torn = os.write(fd, data) != len(data)
            if self._torn:  # a full disk took part of it
                raise OSError(errno.ENOSPC, "No space left on device (a short write)")
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        self.numbered(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.numbered(n), self.numbered(n + 1))
        os.replace(self.path, self.numbered(1))

    def numbered(self, n: int) -> Path:
        return self.directory / f"{self.name}.{n}"

    def files(self) -> list[Path]:
        """Existing files, newest first."""
        paths = [self.path, *(self.numbered(n) for n in range(1, self.keep + 1))]
        return [p for p in paths if p.exists()]

    def newest(
        self, user: str | None, port: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to `limit` matching events, newest first."""
        found: list[dict[str, Any]] = []
        for path in self.files():
            try:
                lines = path.read_bytes().splitlines()
            except FileNotFoundError:
                continue  # rotated away meanwhile
            older = False
            for raw in reversed(lines):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if since is not None:
                    when = _parse_time(entry.get("time"))
                    if when is None:
                        continue
                    if when < since:
                        older = True
                        continue
                if user is not None and user not in (entry.get("user"), entry.get("by")):
                    continue
                if port is not None and entry.get("port") != port:
                    continue
                found.append(entry)
                if len(found) >= limit:
                    return found
            if older:
                break  # files are in time order: the older ones hold nothing newer
        return found


class AuditLog:
    """Append-only, size-bounded audit trail in one directory: the security events in
    `audit.jsonl`, attach/detach apart in `connections.jsonl` (each `max_bytes` x `keep`)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 5,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[Sink] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` dates the events; `monotonic` times the churn windows (a wall clock that is
        stepped, as on a bridge without a real-time clock, must not stretch or cut them)."""
        if max_bytes <= 0 or keep < 1:
            raise ValueError("max_bytes must be positive and keep at least 1")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self.sinks = tuple(sinks)  # copies: journal, syslog (bridge.history.shipping)
        private_dir(self.directory)
        self._events = _Trail(self.directory, FILE_NAME, max_bytes, keep)
        self._connections = _Trail(self.directory, CONNECTIONS_FILE, max_bytes, keep)
        self._coalescer = Coalescer(monotonic)
        self.path = self._events.path
        self.health = WriteHealth(f"audit log {self.directory}")
        self._backlog: deque[tuple[_Trail, bytes]] = deque()  # lines the disk refused, in order
        self.dropped = 0  # lines dropped from a full backlog, not yet recorded as such
        self._retry: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_private(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event line; raises ValueError for a field that may hold a secret. A
        churn-prone record past its budget is only counted (bridge.history.churn)."""
        _check_fields(fields)
        if "time" in fields:
            raise ValueError("audit field 'time' is reserved")
        repeated = self._coalescer.admit(event, fields)
        if repeated is None:
            return
        entry = {"time": iso_time(self._clock()), "event": event, **fields}
        if repeated:
            entry["repeated"] = repeated
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        trail = self._connections if event in CONNECTION_EVENTS else self._events
        self._backlog.append((trail, line))
        if len(self._backlog) > BACKLOG:
            self._backlog.popleft()
            self.dropped += 1
        self._write_backlog()
        for sink in self.sinks:
            try:
                sink.ship(entry)
            except Exception:  # a copy failing must never lose or stop the record
                log.exception("audit: shipping to %s failed", sink.name)

    def _write_backlog(self) -> None:
        """Write the waiting lines, oldest first; on a disk error keep the rest for later."""
        try:
            with self._locked():
                if self.dropped:
                    entry = {"time": iso_time(self._clock()), "event": "audit-lost"}
                    lost = json.dumps({**entry, "events": self.dropped}) + "\n"
                    self._events.append(lost.encode())
                    self.dropped = 0
                while self._backlog:
                    trail, line = self._backlog[0]
                    trail.append(line)
                    self._backlog.popleft()
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            self.health.failed(exc)
            self._retry_later()
            return
        self.health.recovered()

    def _retry_later(self) -> None:
        """Try the backlog again in RETRY seconds (when an event loop runs this)."""
        if self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a command-line process: the next record() tries again
        self._retry = loop.call_later(RETRY, self._retried)

    def _retried(self) -> None:
        self._retry = None
        if self._backlog or self.dropped:
            self._write_backlog()

    def files(self) -> list[Path]:
        """Existing files of the security events, newest first."""
        return self._events.files()

    def connection_files(self) -> list[Path]:
        """Existing files of attach/detach records, newest first."""
        return self._connections.files()

    def query(
        self,
        user: str | None = None,
        port: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` matching events of both files, oldest first.

        ``user`` matches the ``user`` or ``by`` field (so an admin's own actions are found too);
        ``since`` is a wall-clock time; unreadable lines (a torn last line) are skipped.
        """
        found = [
            *reversed(self._events.newest(user, port, since, limit)),
            *reversed(self._connections.newest(user, port, since, limit)),
        ]
        # ISO-8601 UTC sorts as text; a stable sort keeps each file's order within a millisecond
        found.sort(key=lambda e: str(e.get("time", "")))
        return found[-limit:] if limit > 0 else []
