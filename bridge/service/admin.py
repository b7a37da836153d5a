"""`serial-bridge user ...` and `serial-bridge token ...`: managing who may use the bridge.

These commands edit the users/tokens files in the config's `state_dir` (the daemon picks changes up
at once) and record each change in the audit trail. Passwords are read from a prompt, or one line
of standard input with `--password-stdin`; they are never taken from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable

from bridge.access import totp
from bridge.access.passwords import hash_password
from bridge.access.policy import ROLES
from bridge.access.store import ALL_PORTS, StoreError, UserStore, parse_ports
from bridge.config import Config
from bridge.history.audit import AuditLog
from bridge.history.shipping import JournalSink
from bridge.history.statedir import private_dir
from bridge.service.cli import add_config_arg, load_or_exit
from bridge.service.userkeys import USAGE, run_key

MIN_PASSWORD = 8


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise StoreError("the passwords differ")
    if len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def _stores(config: Config) -> tuple[UserStore, AuditLog]:
    state_dir = config.server.state_dir
    try:
        private_dir(state_dir, top=True)
        journal = [JournalSink(config.audit.journal_socket)] if config.audit.journal else []
        return UserStore(state_dir), AuditLog(state_dir / "audit", sinks=journal)
    except OSError as exc:
        print(f"serial-bridge: server.state_dir: {exc.filename}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None


def warn_unknown_ports(ports: list[str] | None, config: Config) -> None:
    """Name the `--ports` entries the config does not have: a typo grants nothing (access fails
    closed), but it must not go unnoticed. Not refused: a port may be added to the config later."""
    unknown = [p for p in ports or () if p not in config.ports]
    if unknown:
        print(
            f"serial-bridge: warning: no port {', '.join(unknown)} in {config.path} (its ports:"
            f" {', '.join(config.ports) or 'none'}); the user gets it only once it is added there",
            file=sys.stderr,
        )


def reported(edit: Callable[[], None]) -> int:
    """Run one `user`/`token` command: a refusal or a disk fault is one line on stderr and exit 1
    (on a disk fault the file is left as it was: statedir writes it whole or not at all)."""
    try:
        edit()
    except StoreError as exc:
        print(f"serial-bridge: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"serial-bridge: could not save {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def run_user(args: argparse.Namespace) -> int:
    config = load_or_exit(args)
    users, audit = _stores(config)
    return reported(lambda: edit_users(users, audit, args, config))


def edit_users(users: UserStore, audit: AuditLog, args: argparse.Namespace, config: Config) -> None:
    if args.action in ("add", "set") and args.ports is not None:
        warn_unknown_ports(parse_ports(args.ports), config)
    if args.action == "list":
        for user in sorted(users.users().values(), key=lambda u: u.name):
            ports = ",".join(user.ports) if user.ports is not None else ALL_PORTS
            totp = " totp" if user.totp_secret else ""
            print(f"{user.name}\t{user.role}\tports={ports}{totp}")
    elif args.action == "key":
        run_key(users, audit, args.name, args.rest)
    elif not args.name:
        raise StoreError(f"user {args.action} needs a NAME")
    elif args.action == "add":
        only, role = parse_ports(args.ports), args.role or "viewer"
        users.add(args.name, role, hash_password(read_password(args)), only)
        audit.record("user-add", user=args.name, role=role, ports=only, by="cli")
        print(f"added user {args.name} ({role})")
    elif args.action == "set":
        set_rights(users, audit, args)
    elif args.action == "del":
        users.delete(args.name)
        audit.record("user-del", user=args.name, by="cli")
        print(f"deleted user {args.name} and their tokens")
    elif args.action == "passwd":
        if users.get(args.name) is None:
            raise StoreError(f"no user {args.name!r}")
        users.set_password(args.name, hash_password(read_password(args)))
        audit.record("user-passwd", user=args.name, by="cli")
        print(f"changed the password of {args.name}; their sessions end")
    else:
        enroll_totp(users, audit, args.name, remove=args.remove)


def set_rights(users: UserStore, audit: AuditLog, args: argparse.Namespace) -> None:
    """`user set NAME --role R --ports P,...|*`: change rights without delete-and-re-add (which
    would end the user's sessions and tokens)."""
    if args.role is None and args.ports is None:
        raise StoreError("user set needs --role and/or --ports")
    if users.get(args.name) is None:
        raise StoreError(f"no user {args.name!r}")
    changed: dict[str, object] = {}
    if args.ports is not None:
        changed["ports"] = parse_ports(args.ports)
        users.set_ports(args.name, parse_ports(args.ports))
    if args.role is not None:
        changed["role"] = args.role
        users.set_role(args.name, args.role)
    user = users.get(args.name)
    if user is None:
        raise StoreError(f"no user {args.name!r} (deleted meanwhile)")
    audit.record("user-set", user=args.name, by="cli", **changed)
    ports = ",".join(user.ports) if user.ports is not None else "every port"
    print(f"{args.name} is now {user.role} on {ports}; open consoles it no longer covers close")


ENROL_ATTEMPTS = 3


def enroll_totp(users: UserStore, audit: AuditLog, name: str, remove: bool = False) -> None:
    """Give `name` a new TOTP secret: print the otpauth:// URI (plus a terminal QR code), then
    ask for a code from the authenticator app and store the secret only once a code matches, so
    a mis-scanned secret or a phone with a wrong clock never locks the user out. Until then the
    old second factor (or none) stays. With `remove`, drop the secret (password-only logins)."""
    if users.get(name) is None:
        raise StoreError(f"no user {name!r}")
    if remove:
        users.set_totp(name, None)
        audit.record("user-totp", user=name, enrolled=False, by="cli")
        print(f"removed TOTP from {name}; they log in with the password alone")
        return
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, name)
    if sys.stdout.isatty():
        print_qr(uri)
    print(uri, flush=True)
    print(
        f"(scan the code or enter the URI in {name}'s authenticator app; nothing changes until"
        " it shows a code that works)",
        file=sys.stderr,
    )
    for _ in range(ENROL_ATTEMPTS):
        sys.stderr.write("6-digit code from the app: ")
        sys.stderr.flush()
        code = sys.stdin.readline().strip()
        if not code:
            raise StoreError(f"no code given: TOTP not enrolled for {name}, nothing changed")
        if totp.verify(secret, code, 0) is not None:
            break
        print("that code does not match (is the phone's clock right?)", file=sys.stderr)
    else:
        raise StoreError(
            f"{ENROL_ATTEMPTS} codes did not match: TOTP not enrolled for {name}, nothing changed"
        )
    users.set_totp(name, secret)
    audit.record("user-totp", user=name, enrolled=True, by="cli")
    print(
        f"TOTP enrolled for {name}: their sessions end, and from now on their logins need a code",
        file=sys.stderr,
    )


def print_qr(text: str) -> None:
    """A QR code on the terminal (segno: small, pure Python, no dependencies)."""
    try:
        import segno
    except ImportError:
        return
    segno.make(text, error="m").terminal(out=sys.stdout, compact=True)


def run_token(args: argparse.Namespace) -> int:
    users, audit = _stores(load_or_exit(args))
    return reported(lambda: edit_tokens(users, audit, args))


def edit_tokens(users: UserStore, audit: AuditLog, args: argparse.Namespace) -> None:
    if args.action == "create":
        if not args.name:
            raise StoreError("token create needs the user NAME")
        label = args.label or f"{args.name}-{time.strftime('%Y%m%d%H%M%S')}"
        secret = users.create_token(args.name, label)
        audit.record("token-create", user=args.name, label=label, by="cli")
        print(secret)
        print(f"(token {label!r} for {args.name}; shown once, store it now)", file=sys.stderr)
    elif args.action == "list":
        for token in users.tokens():
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(token.created))
            print(f"{token.id}\t{token.name}\t{token.user}\t{created}")
    else:
        if not args.name:
            raise StoreError("token revoke needs a token id or label")
        token = users.revoke_token(args.name)
        audit.record("token-revoke", user=token.user, label=token.name, by="cli")
        print(f"revoked token {token.name} ({token.id}) of {token.user}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "user",
        help="add, delete, list users; change rights or passwords; enroll TOTP; SSH keys",
        description=(
            "add: a new user (password prompted); set: change --role/--ports of a user (their "
            "sessions and tokens stay); del: delete a user and their tokens (their sessions and "
            "consoles end); passwd, totp: new credentials (the user's sessions end; totp prints "
            "the secret, then asks for a code from the app and enrols only when it matches); "
            "key: the SSH public keys the user logs in with (removing one ends its SSH sessions)."
        ),
        epilog=f"SSH keys: serial-bridge {USAGE}",
    )
    p.add_argument("action", choices=["add", "set", "del", "list", "passwd", "totp", "key"])
    p.add_argument("name", nargs="?", help="user name (for `key`: add, del or list)")
    p.add_argument("rest", nargs="*", help="for `key`: the user NAME, then a key or fingerprint")
    p.add_argument(
        "--role", choices=ROLES, default=None, help="role for `add` (default: viewer) or `set`"
    )
    p.add_argument(
        "--ports",
        default=None,
        metavar="P,...",
        help=f"limit the user to these ports, or {ALL_PORTS!r} for every port (`add` default)",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input",
    )
    p.add_argument("--remove", action="store_true", help="with `totp`: remove the user's TOTP")
    add_config_arg(p)
    p.set_defaults(func=run_user)

    p = sub.add_parser("token", help="API tokens for scripts (Authorization: Bearer)")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="user NAME (create) or token id/label (revoke)")
    p.add_argument("--label", default=None, help="a label for the new token")
    add_config_arg(p)
    p.set_defaults(func=run_token)
