"""Port forwarding through the SSH door: what `ssh -L` may reach, and nothing else.

One kind of forwarding is allowed: `direct-tcpip` (`ssh -L`) to a port's RFC 2217 endpoint
(`[ports.NAME] rfc2217 = "127.0.0.1:4001"`, bridge.rfc2217), for a user who may write that port
(and, for a user with TOTP, only once the code was given on this connection: by
keyboard-interactive, or in a session). The RFC 2217 endpoint itself has no authentication and
listens on loopback; this is how a remote labgrid or pyserial client reaches it with the SSH
door's keys, certificates and audit. The destination may be named as configured or, for a
loopback endpoint, as `localhost`; the bridge connects to the configured address itself.
Remote forwarding, unix sockets, agent and X11 forwarding are refused elsewhere (bridge.ssh.auth,
bridge.ssh.server).

While a forward is allowed, the connection is an open console of that port
(bridge.access.consoles): if the user's credential ends, the connection is dropped.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import asyncssh

from bridge.access.gate import Denied, Refusal
from bridge.access.policy import Identity, Permission
from bridge.ssh.context import Door, Login

log = logging.getLogger(__name__)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _loopback(host: str) -> bool:
    if host.lower() == "localhost" or host in WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_for(door: Door, host: str, port: int) -> tuple[str, tuple[str, int]] | None:
    """The port whose RFC 2217 endpoint (as it listens now) `host:port` names, and the address
    to connect to."""
    for name, (bound, number) in door.rfc2217_endpoints().items():
        if number != port:
            continue
        names = {bound.lower()} | (LOOPBACK_NAMES if _loopback(bound) else set())
        if host.lower().strip("[]") in names:
            return name, (WILDCARDS.get(bound, bound), port)
    return None


class Forward:
    """An SSH connection forwarding to a port's RFC 2217 endpoint, as an OpenConsole."""

    def __init__(self, conn: asyncssh.SSHServerConnection, identity: Identity, port: str) -> None:
        self.conn, self._identity, self._port = conn, identity, port
        self._closed = False

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def port_name(self) -> str:
        return self._port

    @property
    def last_input(self) -> float:
        return 0.0

    @property
    def closed(self) -> bool:
        return self._closed

    async def end(self, reason: str, going_away: bool = False) -> None:
        self._closed = True
        self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)


def may_forward(
    door: Door,
    login: Login,
    conn: asyncssh.SSHServerConnection,
    forwards: dict[str, Forward],
    host: str,
    port: int,
) -> Any:
    """What asyncssh's `connection_requested` returns to accept: a connection to the endpoint;
    refused with ChannelOpenError ("administratively prohibited", and why). Audited; an allowed
    forward is registered as an open console."""
    where = {"user": login.user, "peer": login.peer, "to": f"{host}:{port}"}
    found = endpoint_for(door, host, port)
    if found is None:
        door.audit.record("forward", **where, result="refused: not an RFC 2217 endpoint")
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "only RFC 2217 endpoints may be forwarded"
        )
    name, address = found
    gate = door.gate
    identity = gate.identify_ssh(login.user, login.credential, login.mfa, login.generation)
    user = gate.users.get(login.user)
    try:
        if identity is None or (user is not None and user.totp_secret and not login.mfa):
            raise Denied(Refusal.FORBIDDEN, "give your one-time code first (in a session)")
        gate.authorise(identity, Permission.WRITE, name)
    except Denied as denied:
        door.audit.record("forward", **where, port=name, result=f"refused: {denied.message}")
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, denied.message
        ) from None
    door.audit.record("forward", **where, port=name, result="ok")
    if name not in forwards:
        forwards[name] = Forward(conn, identity, name)
        door.consoles.add(forwards[name])
    return conn.forward_connection(*address)
