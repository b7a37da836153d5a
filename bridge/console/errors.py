"""What the console refuses: the exceptions the hub, the lease and the actions raise.

Each carries the HTTP status that fits, so every front door maps them the same way (the web answers
that status; a websocket or an SSH channel sends the message as an error).
"""

from __future__ import annotations


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
