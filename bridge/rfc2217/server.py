"""The RFC 2217 listeners: one TCP server per port that has an `rfc2217` address.

Owns which endpoints are open and the sessions on them. `start` opens every configured endpoint
(a bind failure is an OSError naming the key, for the daemon's start-up message); `reload` closes
the endpoints whose port or address went away or changed and opens the new ones (a port that
stays, with its address, keeps its clients); `stop` closes everything. No TLS and no
authentication here: the config only allows loopback addresses unless told otherwise, and remote
users come through the SSH door's `-L` forwarding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.config import Config
from bridge.console.port import Port
from bridge.history.audit import Auditor
from bridge.rfc2217.session import Rfc2217Session

log = logging.getLogger(__name__)


class EndpointError(OSError):
    """An endpoint could not be opened; `key` names it (`ports.NAME.rfc2217`)."""

    def __init__(self, key: str, address: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.key, self.address, self.cause = key, address, exc


@dataclass
class Endpoint:
    """One listening endpoint and the sessions it accepted."""

    port: Port
    wanted: tuple[str, int]
    server: asyncio.Server
    sessions: set[Rfc2217Session] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port number when 0 was asked for)."""
        host, number = self.server.sockets[0].getsockname()[:2]
        return host, number


class Rfc2217Server:
    """Every RFC 2217 endpoint of the bridge."""

    def __init__(self, ports: Mapping[str, Port], audit: Auditor) -> None:
        self.ports = ports  # the daemon's live dict: a reload changes it in place
        self.audit = audit
        self.endpoints: dict[str, Endpoint] = {}

    async def start(self, config: Config) -> None:
        try:
            for name, cfg in config.ports.items():
                if cfg.rfc2217 is not None:
                    await self._open(name, cfg.rfc2217)
        except OSError:
            await self.stop()
            raise

    async def _open(self, name: str, wanted: tuple[str, int]) -> None:
        port = self.ports[name]
        endpoint: Endpoint | None = None

        def make_session() -> Rfc2217Session:
            session = Rfc2217Session(port, self.audit)
            if endpoint is not None:
                sessions = endpoint.sessions
                sessions.add(session)
                session.on_close = lambda: sessions.discard(session)
            return session

        host, number = wanted
        try:
            server = await asyncio.get_running_loop().create_server(
                make_session, host, number, reuse_address=True
            )
        except OSError as exc:
            shown = f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
            raise EndpointError(f"ports.{name}.rfc2217", shown, exc) from exc
        endpoint = Endpoint(port, wanted, server)
        self.endpoints[name] = endpoint
        log.info("port %s: RFC 2217 on %s:%d", name, *endpoint.address)

    async def _close(self, name: str) -> None:
        endpoint = self.endpoints.pop(name, None)
        if endpoint is None:
            return
        endpoint.server.close()
        for session in list(endpoint.sessions):
            if session.transport is not None:
                session.transport.close()
        await asyncio.gather(*(s.closed.wait() for s in list(endpoint.sessions)))
        await endpoint.server.wait_closed()

    async def reload(self, config: Config) -> list[str]:
        """Follow a new config; returns one line per endpoint opened or closed."""
        changes = []
        for name in list(self.endpoints):
            cfg = config.ports.get(name)
            endpoint = self.endpoints[name]
            if (
                cfg is None
                or cfg.rfc2217 != endpoint.wanted
                or self.ports.get(name) is not (endpoint.port)
            ):
                await self._close(name)
                changes.append(f"port {name}: RFC 2217 endpoint closed")
        for name, cfg in config.ports.items():
            if cfg.rfc2217 is not None and name not in self.endpoints:
                await self._open(name, cfg.rfc2217)
                changes.append(f"port {name}: RFC 2217 on {cfg.rfc2217[0]}:{cfg.rfc2217[1]}")
        return changes

    async def stop(self) -> None:
        for name in list(self.endpoints):
            await self._close(name)
