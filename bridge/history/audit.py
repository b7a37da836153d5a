"""Audit trail: who did what, append-only JSON lines under ``state_dir/audit/``.

This module owns the audit files: ``audit.jsonl`` (current) and ``audit.jsonl.1`` ...
``audit.jsonl.<keep>`` (older; rotated when the current file would exceed ``max_bytes``, the
oldest is deleted). Directory mode 0700, files 0600. Each line is one JSON object with at least
``time`` (ISO-8601 UTC, milliseconds, ``Z``) and ``event``; each line goes to the file in a single
unbuffered ``write`` (not fsync'ed: the SD card is spared, the kernel writes it back within
seconds). Several processes (the daemon and a ``serial-bridge user`` command) may share the
directory: writes and rotation hold an ``flock`` on the directory. Once written, an event is
handed to the ``sinks`` (the system journal, a syslog collector: bridge.history.shipping).

Never a secret: :meth:`AuditLog.record` raises ``ValueError`` (a programming error) for a field
named password, token, secret, totp, code, cookie or keystrokes, or ending in ``_<that>``, at any
depth. Name what was changed instead (``name="ci-bot"`` for a token, never its value).

Events and their fields (``peer`` is the client address; ``by`` says who acted when that is not
``user``, e.g. ``"cli"`` or an admin's name; callers may add fields such as ``result``):

- ``login`` — ``user`` (None for an unknown name), ``peer``, ``ok`` (bool), ``reason`` on failure;
  over SSH also ``via="ssh"``, ``method`` (publickey, certificate, password, totp) and the key's
  ``key`` fingerprint, or a certificate's ``cert_id``, ``cert_serial`` and ``ca`` fingerprint
- ``logout`` — ``user``, ``peer``
- ``attach`` / ``detach`` — ``user``, ``port``, ``mode`` ("ro"|"rw"), ``peer``
- ``takeover`` — ``user``, ``port`` (and whom the lease was taken from, where known)
- ``break`` — ``user``, ``port``; ``sysrq`` — ``user``, ``port``, ``keys``
- ``nmi``, ``reset`` — ``user``, ``port``; ``power`` — ``user``, ``port``, ``action``
- ``user-add`` / ``user-set`` / ``user-del`` / ``user-passwd`` / ``user-totp`` — ``user`` (the
  account changed),
  ``by``, and ``role`` / ``ports`` / ``enrolled`` where relevant
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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

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
    "write-dropped", "port-enabled", "port-disabled",
)  # fmt: skip


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


class AuditLog:
    """Append-only, size-bounded audit trail in one directory."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 5,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[Sink] = (),
    ) -> None:
        if max_bytes <= 0 or keep < 1:
            raise ValueError("max_bytes must be positive and keep at least 1")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self.sinks = tuple(sinks)  # copies: journal, syslog (bridge.history.shipping)
        private_dir(self.directory)
        self.path = self.directory / FILE_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_private(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event line; raises ValueError for a field that may hold a secret."""
        _check_fields(fields)
        if "time" in fields:
            raise ValueError("audit field 'time' is reserved")
        entry = {"time": iso_time(self._clock()), "event": event, **fields}
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        with self._locked():
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        for sink in self.sinks:
            try:
                sink.ship(entry)
            except Exception:  # a copy failing must never lose or stop the record
                log.exception("audit: shipping to %s failed", sink.name)

    def _rotate(self) -> None:
        self._numbered(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._numbered(n), self._numbered(n + 1))
        os.replace(self.path, self._numbered(1))

    def _numbered(self, n: int) -> Path:
        return self.directory / f"{FILE_NAME}.{n}"

    def files(self) -> list[Path]:
        """Existing audit files, newest first."""
        paths = [self.path, *(self._numbered(n) for n in range(1, self.keep + 1))]
        return [p for p in paths if p.exists()]

    def query(
        self,
        user: str | None = None,
        port: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` matching events, oldest first.

        ``user`` matches the ``user`` or ``by`` field (so an admin's own actions are found too);
        ``since`` is a wall-clock time; unreadable lines (a torn last line) are skipped.
        """
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
                    return found[::-1]
            if older:
                break  # files are in time order: the older ones hold nothing newer
        return found[::-1]
