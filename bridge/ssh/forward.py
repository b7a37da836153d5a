"""Port forwarding through the SSH door: what `ssh -L` may reach.

Nothing yet: every forwarding request is refused.
"""

from __future__ import annotations

from bridge.ssh.context import Door, Login


def may_forward(door: Door, login: Login, host: str, port: int) -> bool:
    return False
