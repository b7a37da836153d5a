"""What happened on a port, recorded: markers in the ring log, `event` messages to its clients,
audit events, and the boot clock of its alerts.

The hub (bridge.console.port) and what it composes (actions, line settings, alerts, playbooks)
report through `PortEvents.record`: the event becomes a marker in the ring log at the current
offset (the timeline and `/log?format=jsonl` read them back), an `{"type": "event", ...}` message
to every attached client (the console page's timeline and notifications, the SSH door's status
lines), and, when asked, an audit event (the daemon's sink also posts alerts to the webhook).
Attach and detach are only audited. A reset or power-on starts timing a boot
(bridge.console.alerts). Alerts are marked right after their line (`log`), then announced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bridge.console.alerts import Alert, AlertWatch
from bridge.console.lease import Attachment
from bridge.history.ringlog import RingLog

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
BOOTING_POWER = ("on", "cycle", "reset")


class EventSource(Protocol):
    """What is recorded needs of the hub: its name, log, clients, offset and alert watch."""

    name: str
    ringlog: RingLog | None
    offset: int
    watch: AlertWatch

    @property
    def attachments(self) -> Mapping[int, Attachment]: ...


class PortEvents:
    """The recorder of one port's events."""

    def __init__(self, port: EventSource, on_event: EventSink | None) -> None:
        self.port = port
        self.on_event = on_event  # the audit (and, for alerts, the webhook)

    def record(
        self, kind: str, fields: dict[str, Any], audit: bool = True, mark: bool = True
    ) -> None:
        """Mark (unless `mark` is false: already done), announce and, if `audit`, audit."""
        port = self.port
        if kind == "reset" or (kind == "power" and fields.get("action") in BOOTING_POWER):
            port.watch.boot_started()
        if kind not in ("attach", "detach"):
            event = {"event": kind, **fields}
            if mark:
                self.mark(event)
            message = {"type": "event", "port": port.name, "offset": port.offset, **event}
            message["time"] = time.time()
            for att in port.attachments.values():
                att.viewer.send_message(message)
        if audit and self.on_event is not None:
            self.on_event(kind, {"port": port.name, **fields})

    def mark(self, event: dict[str, Any]) -> None:
        """A marker at the ring log's current end; a failure is logged, never raised."""
        if self.port.ringlog is not None:
            try:
                self.port.ringlog.add_marker(event)
            except (OSError, ValueError) as exc:  # a failing disk; a marker too long
                log.error("port %s: ring log marker failed: %s", self.port.name, exc)

    def log(self, data: bytes, start: int, hits: list[Alert]) -> None:
        """`data` (output from offset `start`) into the ring log, each alert's marker right
        after its line."""
        ringlog = self.port.ringlog
        assert ringlog is not None
        at = 0
        for hit in hits:
            ringlog.append(data[at : hit.end - start])
            at = hit.end - start
            self.mark({"event": "alert", **hit.fields()})
        ringlog.append(data[at:])
