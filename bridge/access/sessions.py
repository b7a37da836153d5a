"""Login sessions: random 256-bit ids, kept in memory only (a restart logs everyone out).

A session ends on logout, after `idle` seconds without activity (console input counts), after
`lifetime` seconds in all, or when its user's credential generation changes (a random value, new on
a password change or TOTP enrolment and for a re-added user) or the user is deleted.
The store keeps only SHA-256 digests of session ids, so even a memory dump shows no usable cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Session:
    key: str  # digest of the id
    user: str
    csrf: str
    generation: int
    created: float
    last_seen: float
    mfa: bool = False  # logged in with a TOTP code
    grant: tuple[str, frozenset[str] | None] | None = None  # single sign-on: (role, ports)


class SessionStore:
    def __init__(
        self, idle: float, lifetime: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle, self.lifetime, self.clock = idle, lifetime, clock
        self._sessions: dict[str, Session] = {}

    def create(self, user: str, generation: int, mfa: bool = False) -> tuple[str, Session]:
        """A new session with a fresh random id (never one the client offered)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(
            _digest(session_id), user, secrets.token_urlsafe(32), generation, now, now, mfa
        )
        self._sessions[session.key] = session
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session for an id (touching it), or None if unknown or expired."""
        if not session_id or len(session_id) > 128:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if not self.alive(session):
            del self._sessions[key]
            return None
        session.last_seen = self.clock()
        return session

    def by_key(self, key: str) -> Session | None:
        """The live session with this digest, without touching it (for the socket watcher)."""
        session = self._sessions.get(key)
        if session is None or not self.alive(session):
            return None
        return session

    def alive(self, session: Session) -> bool:
        now = self.clock()
        return (
            now - session.last_seen <= self.idle
            and now - session.created <= self.lifetime
            and session.key in self._sessions
        )

    def touch(self, session: Session) -> None:
        session.last_seen = self.clock()

    def end(self, session: Session) -> None:
        self._sessions.pop(session.key, None)

    def end_user(self, user: str) -> None:
        for key in [k for k, s in self._sessions.items() if s.user == user]:
            del self._sessions[key]

    def sweep(self) -> list[Session]:
        """Drop expired sessions; returns them (so their websockets can be closed)."""
        dead = [s for s in self._sessions.values() if not self.alive(s)]
        for s in dead:
            del self._sessions[s.key]
        return dead
