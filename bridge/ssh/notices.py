"""What the hub tells an SSH session, as the `[serial-bridge]` lines its user reads.

The hub sends every client status messages (bridge.console.port): the port went online or
offline, the line settings changed, the port closed, and who holds the write lease. An SSH
session shows one line for each change that matters to its user, on its own terminal only. A
lease change is worded from this session's point of view: its own mode (two sessions of the same
user have the same name, so names alone cannot say whose lease it is), else the other writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Notice:
    """What one hub message means for the session."""

    lines: list[str]
    closed: bool = False  # the port closed: the session ends
    lease_changed: bool = False


class Notices:
    """Turns a session's hub messages into lines; remembers its mode and the writer."""

    def __init__(self, mode: str, writer: str | None) -> None:
        self.mode, self.writer = mode, writer

    def read(self, message: dict[str, Any]) -> Notice:
        if message.get("type") == "error":
            return Notice([str(message.get("message", ""))])
        if message.get("type") == "event" and message.get("event") == "alert":
            what = f"alert {message.get('rule')} ({message.get('severity')})"
            return Notice([f"{what}: {message.get('line', '')}"])
        if message.get("type") == "event" and message.get("event") == "playbook":
            result = message.get("result")
            if result != "started":
                at = f" at step {message.get('step')}" if result != "ok" else ""
                return Notice([f"playbook {message.get('playbook')}: {result}{at}"])
        if message.get("type") != "status":
            return Notice([])
        event, actor = message.get("event"), message.get("actor")
        notice = Notice([])
        if event == "online":
            notice.lines.append("the port is online")
        elif event == "offline":
            notice.lines.append(f"the port is offline ({message.get('reason', 'device gone')})")
        elif event in ("line-settings", "line-restored"):
            by = f" (by {actor})" if actor and event == "line-settings" else ""
            notice.lines.append(f"line settings now {message.get('line')}{by}")
        elif event == "playbook" and isinstance(run := message.get("playbook"), dict):
            notice.lines.append(
                f"playbook {run['name']} running, step {run['step']}/{run['of']}: {run['title']}"
                f" ({run['user']})"
            )
        elif event == "closed":
            notice.lines.append(f"the port closed: {message.get('reason', '')}")
            notice.closed = True
        lease = self._lease(str(message.get("mode")), message.get("writer"), event, actor)
        if lease is not None:
            notice.lines.append(lease)
            notice.lease_changed = True
        return notice

    def _lease(self, mode: str, writer: str | None, event: Any, actor: Any) -> str | None:
        text = None
        if mode != self.mode:  # this session's own lease changed
            if mode == "rw":
                text = "you have the write lease"
            elif writer:
                text = f"{writer} has the write lease; you are read-only"
            elif event == "idle-release":
                text = "your write lease expired (idle); you are read-only"
            else:
                text = "you released the write lease; you are read-only"
        elif writer != self.writer:  # someone else's
            if writer:
                text = f"{writer} has the write lease"
            elif event == "idle-release":
                text = f"the write lease of {actor} expired (idle); nobody is writing"
            else:
                text = f"{actor or 'the writer'} released the write lease; nobody is writing"
        self.mode, self.writer = mode, writer
        return text
