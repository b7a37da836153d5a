"""`serial-bridge user key add|del|list NAME`: the SSH public keys a user logs in with.

Keys are stored with the user in `state_dir/users.json` (bridge.access.store); the daemon sees a
change at once, and removing a key ends the SSH sessions that logged in with it. `add` reads the
key from a file, from the command line (`ssh-ed25519 AAAA... comment`), or from standard input
(`-` or nothing); a file or input with several keys adds them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bridge.access.sshkeys import BadKey, SshKey, parse_keys
from bridge.access.store import StoreError, UserStore
from bridge.history.audit import AuditLog

USAGE = (
    "user key add NAME [FILE|-|KEY...] | user key del NAME FINGERPRINT|COMMENT | user key list NAME"
)


def read_keys(source: list[str]) -> list[SshKey]:
    """Keys from the `add` arguments: a key line, a file, or standard input."""
    text: str
    if not source or source == ["-"]:
        text = sys.stdin.read()
    elif len(source) > 1 or source[0].split(None, 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
        text = " ".join(source)
    else:
        try:
            text = Path(source[0]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read {source[0]}: {getattr(exc, 'strerror', exc)}") from None
    try:
        keys = parse_keys(text)
    except BadKey as exc:
        raise StoreError(str(exc)) from None
    if not keys:
        raise StoreError("no public key given (a line such as `ssh-ed25519 AAAA... you@host`)")
    return keys


def run_key(users: UserStore, audit: AuditLog, action: str | None, rest: list[str]) -> None:
    if action not in ("add", "del", "list") or not rest:
        raise StoreError(f"usage: serial-bridge {USAGE}")
    name = rest[0]
    if users.get(name) is None:
        raise StoreError(f"no user {name!r}")
    if action == "list":
        for key in users.ssh_keys(name):
            print(f"{key.fingerprint}\t{key.type}\t{key.comment}")
    elif action == "add":
        for key in read_keys(rest[1:]):
            users.add_ssh_key(name, key)
            audit.record("user-key", user=name, added=key.fingerprint, by="cli")
            print(f"added {key.type} key {key.fingerprint} to {name}")
    else:
        if len(rest) != 2:
            raise StoreError("user key del NAME FINGERPRINT|COMMENT (see `user key list NAME`)")
        key = users.del_ssh_key(name, rest[1])
        audit.record("user-key", user=name, removed=key.fingerprint, by="cli")
        print(f"removed key {key.fingerprint} from {name}; SSH sessions that used it end")
