"""The one access decision every front door asks: who is this, and may they do that here?

A front door (web, ssh, rfc2217) extracts a credential in its own protocol's way — a bearer
header, a session cookie, a client certificate, an SSH key, a typed password — and hands it to
`Gate`, which turns it into an `Identity` (or nothing), and decides whether that identity may use
a permission on a port. Nothing here knows about HTTP, websockets or SSH: a rule changed here
holds at every door.

- `identify_token`, `identify_session`, `identify_certificate`, `identify_ssh`: credential ->
  `Identity` or None; `ssh_authorized_keys`: the keys and CAs that may log in as a user over SSH
  (bridge.access.sshkeys).
- `login`: user name + password (+ TOTP code) from a source address -> `User`, throttled per
  account and per source; every failure looks and costs the same and is audited.
  `check_password` then `check_code`: the same in two steps (SSH keyboard-interactive asks for
  the code in a second round; after a key login the session asks for it), same throttle.
  `reserve_ssh_key`: an SSH connection's key offers, under the same throttle's per-source limit.
- `identify_oidc`: verified claims of an identity provider's token -> `Identity` or None, by
  `[oidc] groups` (the first group listed that the claims name decides role and ports). The
  browser's single sign-on keeps that grant in its session; an IdP access token used as a bearer
  token (`identify_token`, after `prepare_token` fetched the provider's keys) is checked each time.
- `authorise`: `Identity` + `Permission` (+ port) -> the identity, or `Denied` saying why.
- `still_valid`: whether an identity taken earlier (an open console's) would be granted now;
  `granted_now` the same against the users file as it is (a running SysRq sequence asks it).

Every identification and login is counted in `auth_counts` by method (`AUTH_METHODS`: how the
credential came) and result (`AUTH_RESULTS`; a login refused by the throttle before any check is
"throttled"), whichever door asked; the metrics read them. SSH keys and certificates are counted
as the throttle counts them, once per connection (bridge.ssh.auth), not per refused offer. A
one-time code is counted with its password login, or as "totp" when asked for inside an SSH
session after a key or certificate login (which was counted when it logged in).
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.access import totp
from bridge.access.oidc import OidcClient, OidcError, looks_like_jwt
from bridge.access.passwords import verify_async
from bridge.access.policy import Identity, Permission, allowed, needs_second_factor
from bridge.access.sessions import SessionStore
from bridge.access.sshkeys import Credential, SshKey, TrustedCas, authorized_keys, parse_key
from bridge.access.store import User, UserStore
from bridge.access.throttle import Attempt, LoginThrottle, Throttled
from bridge.config import Config
from bridge.history.audit import Auditor

LOGIN_FAILED = "wrong user name, password or code"
AUTH_METHODS = (
    "password", "token", "session", "certificate", "ssh-key", "ssh-certificate", "oidc", "totp",
)  # fmt: skip
AUTH_RESULTS = ("success", "failure", "throttled")
THROTTLED_METHODS = ("password", "ssh-key", "ssh-certificate", "totp")  # the login throttle's


class Refusal(enum.Enum):
    """Why a decision went against a caller; each door maps it to its own protocol's answer."""

    UNAUTHENTICATED = "unauthenticated"  # HTTP 401
    NOT_FOUND = "not found"  # HTTP 404: a port the identity may not see does not exist for it
    FORBIDDEN = "forbidden"  # HTTP 403
    THROTTLED = "throttled"  # HTTP 429, with retry_after
    BUSY = "busy"  # HTTP 503, with retry_after: too much pending work, nobody's fault in particular


class Denied(Exception):
    def __init__(self, refusal: Refusal, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.refusal, self.message, self.retry_after = refusal, message, retry_after


def identity_for(user: User, via: str, mfa: bool, **ids: Any) -> Identity:
    ports = frozenset(user.ports) if user.ports is not None else None
    return Identity(user.name, user.role, ports, via, mfa=mfa, **ids)


@dataclass
class Gate:
    """Identities and decisions over the users file, the sessions and the current config."""

    users: UserStore
    sessions: SessionStore
    config: Callable[[], Config]  # the config in force (it changes on reload)
    audit: Auditor
    throttle: LoginThrottle
    # (method, result) -> how many; see AUTH_METHODS and AUTH_RESULTS
    auth_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    ssh_cas: TrustedCas = field(default_factory=TrustedCas)  # [ssh] trusted_user_ca_keys
    oidc: OidcClient | None = None  # [oidc]: the identity provider

    def count(self, method: str, identity: Identity | None) -> Identity | None:
        """Count one identification by `method` as a success or failure; returns `identity`."""
        self.count_login(method, identity is not None)
        return identity

    def count_login(self, method: str, ok: bool) -> None:
        """Count one login or identification by `method` as a success or failure."""
        self.auth_counts[method, "success" if ok else "failure"] += 1

    def _second_factor_ok(self, identity: Identity | None) -> Identity | None:
        if identity is not None and needs_second_factor(
            identity, self.config().server.require_totp
        ):
            return None  # server.require_totp: nobody without a second factor gets in
        return identity

    async def prepare_token(self, secret: str) -> None:
        """Before `identify_token` of an IdP access token: have the provider's keys (fetched
        when first needed, and again for an unknown `kid`, rate-limited)."""
        if self.oidc is not None and looks_like_jwt(secret.strip()):
            with contextlib.suppress(OidcError):  # unreachable provider: the token fails later
                await self.oidc.prepare(secret.strip())

    def identify_oidc(self, claims: dict[str, Any], via: str = "oidc") -> Identity | None:
        """The identity verified claims grant: their user name and the first `[oidc] groups`
        entry they are a member of; None for no user name or no mapped group."""
        cfg = self.config().oidc
        if cfg is None:
            return None
        name = claims.get(cfg.username_claim)
        if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isprintable():
            return None
        groups = claims.get(cfg.groups_claim, [])
        groups = [groups] if isinstance(groups, str) else groups
        if not isinstance(groups, list):
            return None
        amr = claims.get("amr")
        mfa = isinstance(amr, list) and bool({"mfa", "otp", "hwk"} & set(map(str, amr)))
        exp = claims.get("exp")
        expires = float(exp) if via == "oidc-token" and isinstance(exp, int | float) else None
        for group, grant in cfg.groups.items():
            if group in groups:
                ports = frozenset(grant.ports) if grant.ports is not None else None
                identity = Identity(name, grant.role, ports, via, mfa=mfa, expires=expires)
                return self._second_factor_ok(identity)
        return None

    def identify_token(self, secret: str) -> Identity | None:
        cfg = self.config().oidc
        if self.oidc is not None and cfg is not None and looks_like_jwt(secret.strip()):
            try:
                claims = self.oidc.verify(secret.strip(), cfg.audience or cfg.client_id)
            except OidcError:
                return self.count("oidc", None)
            return self.count("oidc", self.identify_oidc(claims, "oidc-token"))
        token = self.users.check_token(secret.strip())
        user = self.users.get(token.user) if token is not None else None
        if token is None or user is None:
            return self.count("token", None)
        identity = identity_for(user, "token", user.totp_secret is not None, token_id=token.id)
        return self.count("token", self._second_factor_ok(identity))

    def identify_session(self, session_id: str) -> Identity | None:
        session = self.sessions.get(session_id)
        if session is None:
            return self.count("session", None)
        if session.grant is not None:  # single sign-on: what the provider's claims granted
            role, ports = session.grant
            identity = Identity(session.user, role, ports, "session", session.key, mfa=session.mfa)
            return self.count("session", self._second_factor_ok(identity))
        user = self.users.get(session.user)
        if user is None or user.generation != session.generation:
            self.sessions.end(session)
            return self.count("session", None)
        identity = identity_for(user, "session", session.mfa, session_id=session.key)
        return self.count("session", self._second_factor_ok(identity))

    def identify_certificate(self, names: list[str]) -> Identity | None:
        """A verified client certificate's names (CN first, then SANs): the first that is a user.
        No names (no certificate presented) is not an attempt and is not counted."""
        if not names:
            return None
        for name in names:
            user = self.users.get(name)
            if user is not None:
                identity = identity_for(user, "certificate", user.totp_secret is not None)
                return self.count("certificate", self._second_factor_ok(identity))
        return self.count("certificate", None)

    def trusted_cas(self) -> list[SshKey]:
        ssh = self.config().ssh
        return self.ssh_cas.load(ssh.trusted_user_ca_keys if ssh is not None else None)

    def ssh_authorized_keys(self, username: str) -> str:
        """authorized_keys text for an SSH login as `username`: their keys and the trusted CAs
        (for certificates naming them); empty for an unknown user."""
        user = self.users.get(username)
        if user is None:
            return ""
        return authorized_keys(user.name, self.users.ssh_keys(user.name), self.trusted_cas())

    def identify_ssh(
        self, username: str, credential: Credential | None, mfa: bool, generation: int | None
    ) -> Identity | None:
        """The identity behind an SSH login as `username`: a key or certificate the SSH server
        verified (checked again against the keys and CAs trusted now), or a password (None) of
        credential `generation`. None when no longer valid, or when TOTP is required but absent.
        Not counted: the login was (bridge.ssh.auth), and this only checks it again."""
        user = self.users.get(username)
        if user is None:
            return None
        if credential is None:
            if generation != user.generation:
                return None
            identity = identity_for(user, "ssh-password", mfa, generation=generation)
            return self._second_factor_ok(identity)
        if credential.certificate:
            trusted = credential.ca in {ca.fingerprint for ca in self.trusted_cas()}
            identity = identity_for(user, "ssh-cert", mfa, credential=credential.ca)
        else:
            trusted = credential.fingerprint in {
                k.fingerprint for k in self.users.ssh_keys(user.name)
            }
            identity = identity_for(user, "ssh-key", mfa, credential=credential.fingerprint)
        return self._second_factor_ok(identity) if trusted else None

    async def check_code(
        self, username: str, code: str, peer: str, first: Attempt | None = None
    ) -> None:
        """A TOTP code typed after an SSH login (keyboard-interactive's second prompt, with its
        `first` attempt from `check_password`; or inside the session after a key). `Denied` as
        for `login`, under the same throttle; counted with the password, or as "totp"."""
        method = "password" if first is not None else "totp"
        with self._reserve(username, peer, method) as attempt:
            user = self.users.get(username)
            step = None
            if user is not None and user.totp_secret and totp.well_formed(code):
                step = totp.verify(user.totp_secret, code, user.totp_last_step, used=user.totp_used)
            if user is None or step is None or not self.users.use_totp_step(user.name, step):
                self.auth_counts[method, "failure"] += 1
                self.audit_login_failure(username, peer, "wrong, reused or missing TOTP code")
                raise Denied(Refusal.UNAUTHENTICATED, LOGIN_FAILED)
            attempt.succeeded()
            self.auth_counts[method, "success"] += 1
            if first is not None:  # the end of a password login
                first.succeeded()

    async def login(self, username: str, password: str, code: str | None, peer: str) -> User:
        """Check a password (+ TOTP code when enrolled) from `peer`; the user, or `Denied`
        (THROTTLED or BUSY before anything is checked, UNAUTHENTICATED the same for every
        failure). The attempt is reserved with the throttle first, so parallel guesses count."""
        with self._reserve(username, peer) as attempt:
            user, reason = await self._check(username, password, code)
            if user is None:
                self.auth_counts["password", "failure"] += 1
                self.audit_login_failure(username, peer, reason)
                raise Denied(Refusal.UNAUTHENTICATED, LOGIN_FAILED)
            attempt.succeeded()
            self.auth_counts["password", "success"] += 1
            return user

    async def check_password(
        self, username: str, password: str, peer: str
    ) -> tuple[User, Attempt | None]:
        """The first factor alone (SSH keyboard-interactive asks for the code next): the user,
        and for a user with TOTP the attempt, which stays counted as a failure until
        `check_code(..., first=attempt)` succeeds. `Denied` as for `login`."""
        with self._reserve(username, peer) as attempt:
            user, reason = await self._check(username, password, None, code_next=True)
            if user is None:
                self.auth_counts["password", "failure"] += 1
                self.audit_login_failure(username, peer, reason)
                raise Denied(Refusal.UNAUTHENTICATED, LOGIN_FAILED)
            if user.totp_secret:
                return user, attempt
            attempt.succeeded()
            self.auth_counts["password", "success"] += 1
            return user, None

    def reserve_ssh_key(self, username: str, peer: str, method: str) -> Attempt:
        """Before an SSH connection's first key or certificate (`method`: "ssh-key" or
        "ssh-certificate") is checked: one attempt for the connection, limited and counted by
        `peer` alone (bridge.access.throttle says why not by account), which stays a failure
        unless the connection logs in. `Denied` THROTTLED while the address is blocked."""
        try:
            return self.throttle.source_attempt(peer)
        except Throttled as refused:
            raise self._refused(refused, username, peer, method, via="ssh") from None

    def _reserve(self, username: str, peer: str, method: str = "password") -> Attempt:
        try:
            return self.throttle.attempt(username, peer)
        except Throttled as refused:
            raise self._refused(refused, username, peer, method) from None

    def _refused(
        self, refused: Throttled, username: str, peer: str, method: str, **fields: Any
    ) -> Denied:
        """A throttle refusal, counted and audited, as the `Denied` to raise."""
        wait = refused.retry_after
        refusal, what = (
            (Refusal.BUSY, "too many logins in progress")
            if refused.busy
            else (Refusal.THROTTLED, "too many failed logins")
        )
        self.auth_counts[method, "throttled"] += 1
        self.audit_login_failure(username, peer, refusal.value, **fields)
        return Denied(refusal, f"{what}; try again in {wait} s", wait)

    async def _check(
        self, username: str, password: str, code: str | None, code_next: bool = False
    ) -> tuple[User | None, str]:
        """The user if password and second factor are right, else None and why (for the audit)."""
        user = self.users.get(username)
        ok = await verify_async(password, user.password if user else None)
        if not ok or user is None:
            return None, "wrong password" if user else "unknown user"
        if user.totp_secret and code_next:
            return user, ""
        if user.totp_secret:
            step = (
                totp.verify(user.totp_secret, code, user.totp_last_step, used=user.totp_used)
                if code
                else None
            )
            if step is None or not self.users.use_totp_step(user.name, step):
                return None, "wrong, reused or missing TOTP code"
        elif self.config().server.require_totp:
            return None, "TOTP required but not enrolled"
        return user, ""

    def audit_login_failure(self, username: str, peer: str, reason: str, **fields: Any) -> None:
        """Audit a failed login with its source (and the door's `fields`). The name is recorded
        only when it is a real user's: what was typed for an unknown one may be a password typed
        into the wrong field."""
        known = self.users.get(username) is not None
        self.audit.record(
            "login", user=username if known else None, peer=peer, ok=False, reason=reason, **fields
        )

    def authorise(
        self, identity: Identity | None, permission: Permission, port: str | None = None
    ) -> Identity:
        """The identity when it may use `permission` (on `port`), else `Denied`. A port the
        identity may not see is NOT_FOUND, exactly like a port that does not exist."""
        if identity is None:
            raise Denied(Refusal.UNAUTHENTICATED, "authentication required")
        config = self.config()
        if port is not None and (port not in config.ports or not identity.may_see_port(port)):
            raise Denied(Refusal.NOT_FOUND, f"no port {port!r}")
        if not allowed(identity, permission, port):
            raise Denied(Refusal.FORBIDDEN, f"your role ({identity.role}) may not do this")
        if port is not None and needs_second_factor(identity, config.ports[port].require_totp):
            raise Denied(Refusal.FORBIDDEN, f"port {port!r} requires TOTP: log in with a code")
        return identity

    def granted_now(self, identity: Identity, port: str | None = None) -> bool:
        """`still_valid` against the users file as it is now: for what outlasts the request that
        started it (a SysRq sequence stops when this turns false)."""
        return self.still_valid(identity, self.users.users(), self.users.token_ids(), port)

    def still_valid(
        self,
        identity: Identity,
        users: dict[str, User],
        token_ids: set[str],
        port: str | None = None,
    ) -> bool:
        """Whether an identity taken earlier (an open console's) would still be granted now: the
        session is alive, the token not revoked, the user not deleted, re-keyed or re-roled, and
        the second factor a port or the server requires is still behind it. A single sign-on
        identity holds while its session lives (its grant unchanged) or its token is unexpired."""
        if identity.expires is not None and time.time() >= identity.expires:
            return False
        session = self.sessions.by_key(identity.session_id or "") if identity.session_id else None
        if identity.via == "oidc-token" or (session is not None and session.grant is not None):
            if identity.via != "oidc-token" and (
                session is None or session.grant != (identity.role, identity.ports)
            ):
                return False
            return self._factors_still_ok(identity, port)
        user = users.get(identity.user)
        if user is None:
            return False
        current = identity_for(user, identity.via, identity.mfa)
        if (current.role, current.ports) != (identity.role, identity.ports):
            return False
        if identity.via == "session":
            session = self.sessions.by_key(identity.session_id or "")
            if session is None or session.generation != user.generation:
                return False
        elif identity.via == "token" and identity.token_id not in token_ids:
            return False
        elif identity.via == "ssh-key":
            keys = {parse_key(line).fingerprint for line in user.ssh_keys}
            if identity.credential not in keys:
                return False
        elif identity.via == "ssh-cert":
            if identity.credential not in {ca.fingerprint for ca in self.trusted_cas()}:
                return False
        elif identity.via == "ssh-password" and identity.generation != user.generation:
            return False
        return self._factors_still_ok(identity, port)

    def _factors_still_ok(self, identity: Identity, port: str | None) -> bool:
        config = self.config()
        if needs_second_factor(identity, config.server.require_totp):
            return False
        port_cfg = config.ports.get(port) if port is not None else None
        return not (port_cfg is not None and needs_second_factor(identity, port_cfg.require_totp))
