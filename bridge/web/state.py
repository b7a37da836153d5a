"""The web front door's shared state: what every handler may use, and the JSON error helper.

Route modules import from here (never from `bridge.web.app`), so the arrows point one way:
app -> routes -> state.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

from aiohttp import web

from bridge.access.consoles import OpenConsoles
from bridge.access.gate import Gate
from bridge.access.sessions import SessionStore
from bridge.access.store import UserStore
from bridge.config import Config
from bridge.console.port import Port, PortError
from bridge.history.audit import Auditor, NullAudit
from bridge.history.health import WriteHealth
from bridge.history.shipping import Sink


@dataclass
class AppState:
    """What every handler may use: config, ports, users, sessions, audit, TLS identity."""

    config: Config
    ports: dict[str, Port]
    users: UserStore
    sessions: SessionStore
    gate: Gate
    consoles: OpenConsoles  # open console clients of every door (websockets, SSH sessions)
    audit: Auditor = field(default_factory=NullAudit)
    fingerprint: str = ""
    audit_sinks: tuple[Sink, ...] = ()  # where audit copies go (metrics count them)
    started: float = field(default_factory=time.time)

    def storage(self, ports: bool = True, bridge: bool = True) -> dict[str, WriteHealth]:
        """The write health of the stores under state_dir (bridge.history.health) by name:
        `log:PORT` for each ring log (`ports`), `audit` and `users` (`bridge`)."""
        found: dict[str, WriteHealth] = {}
        audit = getattr(self.audit, "health", None)
        if bridge:
            found["users"] = self.users.health
            if isinstance(audit, WriteHealth):
                found["audit"] = audit
        for name, port in sorted(self.ports.items()) if ports else ():
            if port.ringlog is not None:
                found[f"log:{name}"] = port.ringlog.health
        return found

    def allowed_hosts(self) -> set[str]:
        """Host names/addresses (lower case, no port) this bridge answers to."""
        hosts = {
            "localhost",
            "127.0.0.1",
            "::1",
            socket.gethostname().lower(),
            socket.getfqdn().lower(),
        }
        hosts.update(h.lower() for h in self.config.server.hostnames)
        for host, _port in self.config.server.listen:
            if host not in ("0.0.0.0", "::", ""):
                hosts.add(host.lower())
        return hosts


STATE: web.AppKey[AppState] = web.AppKey("state", AppState)


def port_error(exc: PortError) -> web.HTTPException:
    """The HTTP answer to a port's refusal (busy 409, offline/disabled/full 503, not writer 403)."""
    cls = {409: web.HTTPConflict, 503: web.HTTPServiceUnavailable, 403: web.HTTPForbidden}.get(
        exc.status, web.HTTPBadRequest
    )
    return api_error(cls, str(exc))


def api_error(
    cls: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose body is `{"error": message}`."""
    return cls(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )
