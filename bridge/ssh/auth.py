"""One SSH connection: who logs in, with which key, certificate or password, and what it may open.

The SSH user name is `USER:PORT` (attach to that port) or `USER` (a menu of ports). Decisions are
`bridge.access`'s: `Gate.ssh_authorized_keys` names the keys and CAs that may log in as USER,
in the authorized_keys form asyncssh enforces (a certificate must name USER as a principal — one
with no principals names nobody); passwords go through `Gate.login` with the web's throttle.

asyncssh facts this module is built on (docs: /work/shared/front-doors.md):
- `begin_auth` returning False would let the client in without any authentication: it always
  returns True.
- asyncssh verifies client signatures of every algorithm a key supports, `ssh-rsa` (SHA-1)
  included, and hands the server neither the signature algorithm nor the certificate after a
  login. The connection's `validate_public_key` is therefore wrapped: the wrapper refuses SHA-1
  signatures (by the user or by a certificate's CA) before asyncssh checks anything, notes which
  key or certificate signed (fingerprint, key id, serial, CA: for the audit trail) and counts
  failures.
- There is no MaxAuthTries: failures are counted here, and the connection is dropped after
  `[ssh] max_auth_tries`. Connections that have not logged in yet are capped at
  `[ssh] max_unauthenticated`; `[ssh] login_grace` bounds how long one may take.
- Keys share the login throttle of every door (bridge.access.throttle) by address: before a
  connection's first key is checked it reserves one attempt (`Gate.reserve_ssh_key`); a blocked
  address is disconnected there, whatever key it offers. The attempt is taken back when the
  connection logs in, by any method, and stays a failure when it does not. Per connection, not
  per refused offer: OpenSSH offers each key it has in turn, so a user with several keys would
  spend the address's 10 failures a minute in a few logins, while an attacker is still held to
  `max_auth_tries` offers in each of 10 connections a minute. Such a connection is audited once,
  with the fingerprints of the keys it offered and had refused, and counted once in the metrics
  (`ssh-key` or `ssh-certificate`, by the first credential it offered, `failure`); a connection
  that logs in with a key or certificate counts one `success`.
- There is no partial success ("key, then password"): a second factor after a key is asked for
  inside the session (bridge.ssh.session). Keyboard-interactive asks for the password, then — for
  a user with TOTP — for the code in a second round.

Forwarding: only `direct-tcpip` to a port's configured RFC 2217 endpoint, for a user who may write
that port (bridge.ssh.forward); everything else (remote forwarding, unix sockets, agent, X11)
is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncssh

from bridge.access.gate import Denied, Refusal
from bridge.access.sshkeys import SHA1_SIGNATURES, Credential, describe, signature_algorithm
from bridge.access.store import USER_NAME, User
from bridge.access.throttle import Attempt
from bridge.ssh.context import Door, Login
from bridge.ssh.forward import Forward, may_forward
from bridge.ssh.session import ConsoleChannel

log = logging.getLogger(__name__)
PASSWORD_PROMPT = "Password: "
CODE_PROMPT = "One-time code: "


def split_username(name: str) -> tuple[str, str | None]:
    """`alice:node2` -> ("alice", "node2"); `alice` (or `alice:`) -> ("alice", None)."""
    user, _sep, port = name.partition(":")
    return user, port or None


class Connection(asyncssh.SSHServer):
    """asyncssh's per-connection server object for the SSH door."""

    def __init__(self, door: Door) -> None:
        self.door = door
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "unknown"
        self.user: str = ""
        self.port: str | None = None
        self.failures = 0
        self.login: Login | None = None
        self._pending = False  # counted in door.pending
        self._signed: Credential | None = None
        self._password_user: User | None = None
        self._code_round = False
        self._first: Attempt | None = None  # the password attempt, counted until the code is right
        self._key_attempt: Attempt | None = None  # the keys' throttle attempt, until logged in
        self._key_method = "ssh-key"  # the first credential's kind: whose failure it counts as
        self._refused_keys: list[str] = []  # fingerprints of the keys offered and refused
        self._failure_audited = False
        self.forwards: dict[str, Forward] = {}  # port -> its allowed RFC 2217 forwarding

    # ---- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.door.connections.add(self)
        peer = conn.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"
        if self.door.pending >= self.door.ssh.max_unauthenticated:
            log.warning(
                "ssh: refusing %s: %d connections are still logging in",
                self.peer,
                self.door.pending,
            )
            conn.abort()
            return
        self.door.pending += 1
        self._pending = True
        original = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            credential = describe(key_data)
            certificate = credential is not None and credential.certificate
            method = "ssh-certificate" if certificate else "ssh-key"
            if not self._reserve_key_attempt(method):
                return False
            ok = (
                credential is not None
                and credential.ca_signature not in SHA1_SIGNATURES
                and (not signature or signature_algorithm(signature) not in SHA1_SIGNATURES)
                and await original(username, key_data, msg, signature)
            )
            if not ok:
                if credential is not None and credential.fingerprint not in self._refused_keys:
                    self._refused_keys.append(credential.fingerprint)
                self._failed()
            elif signature:
                self._signed = credential
            return ok

        conn.validate_public_key = validate_public_key  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        self._not_pending()
        if self.login is None and self._key_attempt is not None:  # one failure, as throttled
            self.door.gate.count_login(self._key_method, ok=False)
            self._audit_failure("key refused" if self._refused_keys else "no key signed")
        for forward in self.forwards.values():
            self.door.consoles.remove(forward)

    def _not_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.door.pending -= 1

    def _failed(self) -> None:
        self.failures += 1
        if self.failures >= self.door.ssh.max_auth_tries and self.conn is not None:
            self._audit_failure("too many authentication failures")
            self.conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures"
            )

    def _reserve_key_attempt(self, method: str) -> bool:
        """The connection's one throttle attempt for keys, taken before its first key is
        checked; False (and the connection dropped, saying why) while its address is blocked."""
        if self._key_attempt is not None:
            return True
        try:
            self._key_attempt = self.door.gate.reserve_ssh_key(self.user, self.peer, method)
            self._key_method = method
        except Denied as denied:
            if self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, denied.message)
            return False
        return True

    def _audit_failure(self, reason: str) -> None:
        """The connection's one failed-login record (passwords are also audited one by one, by
        the gate), with the fingerprints of refused keys: never more of a key than that."""
        if self._failure_audited:
            return
        self._failure_audited = True
        known = self.door.gate.users.get(self.user) is not None
        keys = {"keys": list(self._refused_keys)} if self._refused_keys else {}
        self.door.audit.record(
            "login",
            user=self.user if known else None,
            peer=self.peer,
            ok=False,
            via="ssh",
            reason=reason,
            **keys,
        )

    # ---- authentication ----------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        self.user, self.port = split_username(username)
        self._signed, self._password_user, self._code_round, self._first = None, None, False, None
        known = USER_NAME.fullmatch(self.user) is not None
        keys = self.door.gate.ssh_authorized_keys(self.user) if known else ""
        self.conn.set_authorized_keys(asyncssh.import_authorized_keys(keys))
        return True  # always: False would log the client in with no authentication at all

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False  # passwords only through keyboard-interactive, when allowed

    def kbdint_auth_supported(self) -> bool:
        return self.door.ssh.password_auth

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        self._password_user, self._code_round, self._first = None, False, None
        return "", "", "", [(PASSWORD_PROMPT, False)]

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """First round: the password; for a user with TOTP a second round asks for the code.
        Every failure looks the same, is throttled with the web's counters and is audited."""
        if not self.door.ssh.password_auth or len(responses) != 1:
            self._failed()
            return False
        gate = self.door.gate
        try:
            if not self._code_round:
                user, self._first = await gate.check_password(self.user, responses[0], self.peer)
                self._password_user = user
                if self._first is not None:
                    self._code_round = True
                    return "", "", "", [(CODE_PROMPT, False)]
            else:
                assert self._password_user is not None
                name, code = self._password_user.name, responses[0].strip()
                await gate.check_code(name, code, self.peer, first=self._first)
        except Denied as denied:
            self._password_user, self._code_round, self._first = None, False, None
            if denied.refusal is Refusal.THROTTLED and self.conn is not None:
                self.conn.send_auth_banner(f"serial-bridge: {denied.message}\r\n")
            self._failed()
            return False
        return True

    def auth_completed(self) -> None:
        self._not_pending()
        if self._key_attempt is not None:
            self._key_attempt.succeeded()
        password = self._password_user
        credential = None if password is not None else self._signed
        if password is not None:
            method = "password"
        elif credential is not None:
            method = "certificate" if credential.certificate else "publickey"
            self.door.gate.count_login(
                "ssh-certificate" if credential.certificate else "ssh-key", ok=True
            )
        else:  # pragma: no cover - asyncssh completes auth only after a method succeeded
            raise asyncssh.DisconnectError(asyncssh.DISC_PROTOCOL_ERROR, "no credential")
        self.login = Login(
            user=self.user,
            port=self.port,
            peer=self.peer,
            method=method,
            credential=credential,
            generation=password.generation if password else None,
            mfa=self._code_round,
        )
        self.door.audit.record(
            "login",
            user=self.user,
            peer=self.peer,
            ok=True,
            via="ssh",
            method=method,
            mfa=self._code_round,
            **(credential.audit_fields() if credential else {}),
        )
        log.info("ssh: %s logged in from %s (%s)", self.user, self.peer, method)

    # ---- what the client may open ------------------------------------------------------------

    def session_requested(self) -> Any:
        if self.login is None:  # pragma: no cover - asyncssh opens sessions only after auth
            return False
        return ConsoleChannel(self.door, self.login)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.login is None or self.conn is None:  # pragma: no cover - only after auth
            return False
        return may_forward(self.door, self.login, self.conn, self.forwards, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwarding

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False
