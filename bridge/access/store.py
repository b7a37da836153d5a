"""Users and API tokens on disk: `state_dir/users.json` and `state_dir/tokens.json`, mode 0600.

Only hashes are stored: scrypt for passwords, SHA-256 for tokens (a token is 256 random bits, so a
fast hash is enough). Each user carries a random `generation`: sessions remember the one they were
made under and end when it changes — on a password change, a TOTP enrolment or removal, and when
the user is deleted and re-added (a new record draws a new random value, so a re-added user never
inherits the old one's sessions; deletion also removes the user's tokens).

Files are replaced atomically (write, fsync, rename) and re-read when they change on disk, so
`serial-bridge user ...` run beside the daemon takes effect at once. A change that cannot be
saved (EIO, a full or read-only disk) raises OSError and leaves the file as it was. The one write
a login makes, the TOTP step just used, does not fail a login on such a disk: it is kept in
memory (a code still works once) and the fault is reported through `health`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bridge.access import totp
from bridge.access.policy import ROLES
from bridge.access.sshkeys import SshKey, parse_key
from bridge.history.health import DISK_ERRORS, WriteHealth
from bridge.history.statedir import open_private, private_dir, replace_private

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
TOKEN_PREFIX = "sbt_"


class StoreError(Exception):
    """A user or token operation that cannot be done (unknown name, bad role, ...)."""


def new_generation() -> int:
    """A random credential generation (63 bits): never repeats the old user's, unlike a counter."""
    return secrets.randbits(63)


ALL_PORTS = "*"


def parse_ports(text: str | None) -> list[str] | None:
    """A `--ports` argument: None (not given) or `*` -> every port; `a,b` -> those ports. A list
    that names no port is an error, never "every port" (it must not fail open)."""
    if text is None or text.strip() == ALL_PORTS:
        return None
    ports = [p.strip() for p in text.split(",") if p.strip()]
    if not ports:
        raise StoreError(f"--ports names no port; give P1,P2,... or {ALL_PORTS!r} for every port")
    return ports


@dataclass
class User:
    name: str
    role: str
    password: str  # scrypt hash
    ports: list[str] | None = None
    totp_secret: str | None = None
    totp_last_step: int = 0
    totp_used: list[int] = field(default_factory=list)  # the last steps used (access.totp)
    created: float = field(default_factory=time.time)
    generation: int = field(default_factory=new_generation)  # new on credential change
    ssh_keys: list[str] = field(default_factory=list)  # OpenSSH public key lines (access.sshkeys)


@dataclass
class Token:
    id: str
    name: str
    user: str
    hash: str
    created: float = field(default_factory=time.time)


def write_private(path: Path, data: Any) -> None:
    """Atomically replace `path` with JSON `data`, mode 0600 (through an O_EXCL temporary)."""
    private_dir(path.parent, top=True)
    replace_private(path, json.dumps(data, indent=1, sort_keys=True).encode())


class _JsonFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.data: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        try:
            st = self.path.lstat()  # cheap, each time; a symlink fails the open below
        except FileNotFoundError:
            self._stamp, self.data = None, {}
            return self.data
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            with os.fdopen(open_private(self.path, os.O_RDONLY), "rb") as f:
                self.data = json.loads(f.read())
            self._stamp = stamp
        return self.data

    def save(self, data: dict[str, Any]) -> None:
        write_private(self.path, data)
        self.data = data
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_ino)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class UserStore:
    """Users and tokens of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._users = _JsonFile(state_dir / "users.json")
        self._tokens = _JsonFile(state_dir / "tokens.json")
        self.health = WriteHealth(f"users and tokens files in {state_dir}")
        self._unsaved: dict[str, tuple[int, list[int]]] = {}  # TOTP steps the disk refused

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the files between the daemon and `serial-bridge user`
        commands (an exclusive flock on `state_dir/.users.lock`). On a disk that cannot be
        written at all the lock file cannot be opened either: then nobody can write, and the
        caller goes on unlocked to find that out for itself."""
        private_dir(self.state_dir, top=True)
        try:
            fd = open_private(self.state_dir / ".users.lock", os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # users
    def users(self) -> dict[str, User]:
        return {name: User(**u) for name, u in self._users.load().items()}

    def get(self, name: str) -> User | None:
        raw = self._users.load().get(name)
        return User(**raw) if raw is not None else None

    def put(self, user: User) -> None:
        with self._locked():
            data = dict(self._users.load())
            data[user.name] = asdict(user)
            self._users.save(data)

    def _change(self, name: str, **fields: Any) -> User:
        """Replace fields of one user's record under the lock; StoreError if there is none."""
        with self._locked():
            data = dict(self._users.load())
            if name not in data:
                raise StoreError(f"no user {name!r}")
            user = User(**{**data[name], **fields})
            data[name] = asdict(user)
            self._users.save(data)
            return user

    def set_totp(self, name: str, secret: str | None) -> None:
        """Enroll (or with None remove) a TOTP secret; the used-step memory starts afresh and the
        user's sessions end (they were made with the old second factor, or without one)."""
        self._change(
            name, totp_secret=secret, totp_last_step=0, totp_used=[], generation=new_generation()
        )

    def set_role(self, name: str, role: str) -> User:
        """A new role. Sessions stay (each request is judged with the new role); the daemon's
        socket watcher closes open consoles whose identity no longer matches."""
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        return self._change(name, role=role)

    def set_ports(self, name: str, ports: list[str] | None) -> User:
        """A new port list (None: every port); like `set_role` for sessions and consoles."""
        return self._change(name, ports=ports)

    def use_totp_step(self, name: str, step: int, now: float | None = None) -> bool:
        """Record that the code of `step` was used; False (nothing written) if it may not be
        (`totp.fresh`: used already, or older than the last one). Atomic across processes, so
        a code works exactly once. On a disk that refuses the write the step is kept in memory
        (and still counts) until a later one can be saved."""
        now_step = totp.step_of(time.time() if now is None else now)
        with self._locked():
            data = dict(self._users.load())
            raw = data.get(name)
            if raw is None:
                return False
            last, used = int(raw.get("totp_last_step", 0)), list(raw.get("totp_used", []))
            if name in self._unsaved:
                last, kept = self._unsaved[name]
                used = sorted({*used, *kept})
            if not totp.fresh(step, last, used, now_step):
                return False
            used = [*used, step][-totp.USED_KEPT :]
            data[name] = {**raw, "totp_last_step": step, "totp_used": used}
            self._unsaved[name] = (step, used)
            try:
                self._users.save(data)
            except OSError as exc:
                if exc.errno not in DISK_ERRORS:
                    raise
                self.health.failed(exc, "saving the TOTP step just used (kept in memory)")
            else:
                del self._unsaved[name]
                self.health.recovered()
            return True

    def add(self, name: str, role: str, password_hash: str, ports: list[str] | None) -> User:
        if not USER_NAME.fullmatch(name):
            raise StoreError(f"invalid user name {name!r} (letters, digits, _ . @ -; max 64)")
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        if self.get(name) is not None:
            raise StoreError(f"user {name!r} exists already")
        user = User(name=name, role=role, password=password_hash, ports=ports)
        self.put(user)
        return user

    def delete(self, name: str) -> None:
        with self._locked():
            data = dict(self._users.load())
            if data.pop(name, None) is None:
                raise StoreError(f"no user {name!r}")
            self._users.save(data)
            tokens = {k: v for k, v in self._tokens.load().items() if v["user"] != name}
            self._tokens.save(tokens)

    def set_password(self, name: str, password_hash: str) -> None:
        """A new password; the user's sessions end."""
        self._change(name, password=password_hash, generation=new_generation())

    # SSH public keys
    def add_ssh_key(self, name: str, key: SshKey) -> None:
        """Give `name` an SSH public key; refused when any user has that key already (a key
        names one person)."""
        with self._locked():
            data = dict(self._users.load())
            if name not in data:
                raise StoreError(f"no user {name!r}")
            for other, raw in data.items():
                for line in raw.get("ssh_keys", []):
                    if parse_key(line).fingerprint == key.fingerprint:
                        raise StoreError(f"key {key.fingerprint} is already {other}'s")
            keys = [*data[name].get("ssh_keys", []), key.line()]
            data[name] = {**data[name], "ssh_keys": keys}
            self._users.save(data)

    def del_ssh_key(self, name: str, which: str) -> SshKey:
        """Remove one key of `name`, named by its fingerprint or its comment; their SSH sessions
        that logged in with it end (bridge.access.consoles)."""
        with self._locked():
            data = dict(self._users.load())
            if name not in data:
                raise StoreError(f"no user {name!r}")
            keys = [parse_key(line) for line in data[name].get("ssh_keys", [])]
            found = [k for k in keys if which in (k.fingerprint, k.comment)]
            if len(found) != 1:
                what = "no key" if not found else f"{len(found)} keys"
                raise StoreError(f"{what} of {name} match {which!r} (give the fingerprint)")
            data[name] = {**data[name], "ssh_keys": [k.line() for k in keys if k != found[0]]}
            self._users.save(data)
            return found[0]

    def ssh_keys(self, name: str) -> list[SshKey]:
        user = self.get(name)
        return [parse_key(line) for line in user.ssh_keys] if user is not None else []

    # tokens
    def create_token(self, user: str, name: str) -> str:
        """A new token for `user`; returns the secret, which is never stored."""
        if self.get(user) is None:
            raise StoreError(f"no user {user!r}")
        token_id = secrets.token_hex(6)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        with self._locked():
            data = dict(self._tokens.load())
            data[token_id] = asdict(Token(token_id, name, user, hash_token(secret)))
            self._tokens.save(data)
        return secret

    def token_ids(self) -> set[str]:
        return set(self._tokens.load())

    def tokens(self) -> list[Token]:
        return [Token(**t) for t in self._tokens.load().values()]

    def revoke_token(self, token_id_or_name: str) -> Token:
        with self._locked():
            data = dict(self._tokens.load())
            for key, raw in data.items():
                if token_id_or_name in (key, raw["name"]):
                    del data[key]
                    self._tokens.save(data)
                    return Token(**raw)
        raise StoreError(f"no token {token_id_or_name!r}")

    def check_token(self, secret: str) -> Token | None:
        """The token for a presented secret, compared in constant time; None if unknown."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        token_id = secret[len(TOKEN_PREFIX) :].split("_", 1)[0]
        raw = self._tokens.load().get(token_id)
        if raw is None:
            hmac.compare_digest(hash_token(secret), hash_token(""))
            return None
        if not hmac.compare_digest(raw["hash"], hash_token(secret)):
            return None
        return Token(**raw)
