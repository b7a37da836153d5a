"""What the console refuses: the exceptions the hub, the lease and the actions raise.

Each carries the HTTP status that fits, so every front door maps them the same way (the web answers
that status; a websocket or an SSH channel sends the message as an error). `result_of` names how
a refused action is counted in the metrics.
"""

from __future__ import annotations

from bridge.hw.interfaces import UnsupportedAction


class PortError(Exception):
    """A request the port cannot carry out; `status` is the HTTP status that fits."""

    status = 400


class PortOffline(PortError):
    status = 503


class PortDisabled(PortError):
    """The administrator disabled the port (`enabled = false`): no console, no actions."""

    status = 503


class NotWriter(PortError):
    status = 403


class NotAllowed(PortError):
    status = 403


class ActionBusy(PortError):
    status = 409


class TooManyClients(PortError):
    status = 503


class LinesFailed(PortError):
    """The control lines could not do the action (GPIO error, QEMU gone)."""

    status = 503


class ActionCancelled(PortError):
    """A SysRq sequence stopped before its end: cancelled, pre-empted, or its credential ended."""

    status = 409

    def __init__(self, message: str, sent: str) -> None:
        super().__init__(message)
        self.sent = sent  # the keys that did reach the target


class SysrqDenied(PortError):
    """A keystroke that the kernel would take as a SysRq key in `sysrq_deny`."""

    status = 403


RESULTS: dict[type[Exception], str] = {
    ActionBusy: "busy",
    ActionCancelled: "cancelled",
    PortOffline: "offline",
    PortDisabled: "disabled",
    UnsupportedAction: "unsupported",
    LinesFailed: "failed",
}


def result_of(exc: Exception) -> str:
    """How an action that raised `exc` is counted (metrics): busy, cancelled, offline, disabled,
    unsupported, failed or error."""
    return next((r for cls, r in RESULTS.items() if isinstance(exc, cls)), "error")
