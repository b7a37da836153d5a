"""What every connection and session of the SSH door uses: config, access, ports, audit.

Built once by the daemon (bridge.service.daemon) and handed to the listener; nothing here is
per connection. `ports` is the daemon's own dict, so ports added or removed by a reload are seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.access.consoles import OpenConsoles
from bridge.access.gate import Gate
from bridge.access.sshkeys import Credential
from bridge.config import Config, SshConfig
from bridge.console.port import Port
from bridge.history.audit import Auditor


@dataclass
class Door:
    """The SSH door's shared state."""

    config: Callable[[], Config]  # the config in force (it changes on reload)
    gate: Gate
    ports: dict[str, Port]
    audit: Auditor
    consoles: OpenConsoles
    # port -> the address its RFC 2217 endpoint listens on now (bridge.rfc2217, via the daemon)
    rfc2217_endpoints: Callable[[], Mapping[str, tuple[str, int]]] = dict
    pending: int = 0  # connections that have not authenticated yet
    connections: set[Any] = field(default_factory=set)  # open ones (bridge.ssh.auth.Connection)

    @property
    def ssh(self) -> SshConfig:
        """The `[ssh]` section in force; its defaults (no passwords) if a reload dropped it: the
        listener itself stays until a restart."""
        return self.config().ssh or SshConfig()

    def visible_ports(self, user_ports: frozenset[str] | None) -> list[Port]:
        """The ports an identity with this port list may see, by name."""
        return [
            p for name, p in sorted(self.ports.items()) if user_ports is None or name in user_ports
        ]


@dataclass
class Login:
    """How a connection logged in; shared by its sessions (one may add the second factor)."""

    user: str
    port: str | None  # the PORT of `USER:PORT`; None: show the menu
    peer: str
    method: str  # "publickey", "certificate" or "password"
    credential: Credential | None  # the key or certificate; None for a password
    generation: int | None  # password logins: the user's credential generation
    mfa: bool  # a TOTP code was given (keyboard-interactive, or later in a session)
