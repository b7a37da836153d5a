"""Authorisation: roles and per-user port lists. Every route and websocket message asks here.

| permission | viewer | operator | admin |
| read (console, log)                      | yes | yes | yes |
| write (keys, BREAK, SysRq, takeover)     |     | yes | yes |
| lines (NMI, reset, power)                |     |     | yes |
| admin (users, tokens, audit)             |     |     | yes |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")


class Permission(enum.Enum):
    READ = "read"
    WRITE = "write"
    LINES = "lines"
    ADMIN = "admin"


_GRANTS: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset({Permission.READ, Permission.WRITE}),
    "admin": frozenset(Permission),
}


@dataclass(frozen=True)
class Identity:
    """An authenticated user as a request carries it."""

    user: str
    role: str
    ports: frozenset[str] | None  # None: every port
    via: str  # "session", "token", "certificate" (TLS), "ssh-key", "ssh-cert", "ssh-password",
    # "oidc-token" (an identity provider's access token)
    session_id: str | None = None  # the session's digest, never the cookie value
    token_id: str | None = None
    mfa: bool = False  # a second factor (TOTP) stands behind this identity
    credential: str | None = None  # ssh-key: the key's fingerprint; ssh-cert: the CA's
    generation: int | None = None  # ssh-password: the user's credential generation at login
    expires: float | None = None  # oidc-token: the token's exp (Unix time); past it, not valid

    def may_see_port(self, port: str) -> bool:
        return self.ports is None or port in self.ports


def allowed(identity: Identity, permission: Permission, port: str | None = None) -> bool:
    """True when `identity` holds `permission` (on `port`, when one is named)."""
    if permission not in _GRANTS.get(identity.role, frozenset()):
        return False
    return port is None or identity.may_see_port(port)


def needs_second_factor(identity: Identity, require_totp: bool) -> bool:
    """True when a port (or the server) requires TOTP and this identity has none behind it."""
    return require_totp and not identity.mfa
