"""Client commands: `connect`, `sysrq`, `nmi`, `power`, `log` against `https://HOST:PORT/PORTNAME`.

Credentials, in order: `--user NAME` (password prompt, or `--password-stdin`), the
`SERIAL_BRIDGE_TOKEN` environment variable, or a token file (`--token-file`, default
`~/.config/serial-bridge/token`). The certificate is pinned (see bridge.client.http); a first-seen
bridge's fingerprint is shown and confirmed (bridge.client.trust) before a password is asked for.
Actions print one line for a person, or their JSON answer with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.client.http import BridgeClient, ClientError, KnownHosts, config_dir, parse_url
from bridge.client.results import describe, describe_event
from bridge.client.trust import decider
from bridge.config import parse_size

DEFAULT_REPLAY = 4096  # bytes of history `connect` shows on attach
CONNECT_HELP = """\
An interactive console on a port, like ssh to a console server.

On attach the last few KiB the target printed are shown (--replay), from the start of a line,
then live output; after a dropped link it reconnects by itself and resumes exactly where it
stopped. Escapes, typed after Enter as in ssh:
  ~.  disconnect          ~B  send BREAK (then a key within 5 s for SysRq)
  ~?  list the escapes    ~~  send a literal ~
Answers your terminal types by itself (the cursor position report a busybox prompt asks for,
say) do not count as typing, so an escape right after Enter works at any prompt.

The target's output is filtered: clipboard writes (OSC 52) and requests that make your terminal
type back (title reports, DECRQSS, answer-back) are dropped; what full-screen programs use
(cursor movement, colours, alternate screen, bracketed paste) passes unchanged."""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _credentials(args: argparse.Namespace) -> dict[str, Any]:
    if args.user:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
        totp = None
        if args.totp:
            if args.password_stdin:
                totp = sys.stdin.readline().strip()
            else:
                totp = getpass.getpass("One-time code: ").strip()
        return {"user": args.user, "password": password, "totp": totp}
    if getattr(args, "fleet_token", None):
        return {"token": args.fleet_token}
    token = os.environ.get("SERIAL_BRIDGE_TOKEN")
    if not token:
        path = Path(args.token_file) if args.token_file else config_dir() / "token"
        if path.exists():
            token = path.read_text().strip()
        elif args.token_file:
            raise ClientError(f"token file {path} does not exist")
    if not token:
        raise ClientError("no credentials: use --user NAME, SERIAL_BRIDGE_TOKEN or --token-file")
    return {"token": token}


def _client(args: argparse.Namespace) -> BridgeClient:
    known = KnownHosts(Path(args.known_hosts)) if args.known_hosts else None
    return BridgeClient(
        args.url,
        fingerprint=args.fingerprint,
        known_hosts=known,
        trust=decider(args.trust_on_first_use),
    )


def _port_name(args: argparse.Namespace) -> str:
    if "://" not in args.url:  # PORT or BRIDGE/PORT: a bridge of bridges.toml (bridge.client.fleet)
        return args.url.rpartition("/")[2]
    name = parse_url(args.url).name
    if not name:
        raise ClientError(f"{args.url}: name the port: https://HOST:PORT/PORTNAME")
    return name


async def _from_fleet(args: argparse.Namespace) -> None:
    """A port name (or BRIDGE/PORT) instead of a URL: find the bridge in bridges.toml, and use
    its fingerprint and token unless the command line gave its own."""
    from bridge.client.fleet import entry_token, find_port, load_bridges

    known = KnownHosts(Path(args.known_hosts)) if args.known_hosts else None
    entry, port = await find_port(args.url, load_bridges(), known)
    args.url = f"{entry.url}/{port}"
    args.fingerprint = args.fingerprint or entry.fingerprint
    if not args.user and not args.token_file and entry.token_file is not None:
        args.fleet_token = entry_token(entry)


def _run(args: argparse.Namespace, body: Callable[[BridgeClient], Awaitable[int]]) -> int:
    async def main() -> int:
        if "://" not in args.url:
            await _from_fleet(args)
        client = _client(args)
        await client.pin()  # a first-seen bridge is settled before any credential is read
        client.use_credentials(**_credentials(args))
        async with client:
            return await body(client)

    try:
        return asyncio.run(main())
    except ClientError as exc:
        print(f"serial-bridge: {exc}", file=sys.stderr)
        return 1


def run_connect(args: argparse.Namespace) -> int:
    from bridge.client.connect import Options, interactive, keyboard

    name = _port_name(args)
    try:  # before anything is read or sent: where will the keys come from?
        keys = keyboard(password_on_stdin=bool(args.user and args.password_stdin))
    except ClientError as exc:
        print(f"serial-bridge: {exc}", file=sys.stderr)
        return 1
    options = Options(args.read_only, args.takeover, args.replay, keys)
    return _run(args, lambda c: interactive(c, name, options))


def run_sysrq(args: argparse.Namespace) -> int:
    name = _port_name(args)
    body = {"keys": args.keys, "interval": args.interval}
    return _run(args, lambda c: _post(c, f"/api/ports/{name}/sysrq", body, args.json))


def run_nmi(args: argparse.Namespace) -> int:
    name = _port_name(args)
    return _run(args, lambda c: _post(c, f"/api/ports/{name}/nmi", {}, args.json))


def run_cancel(args: argparse.Namespace) -> int:
    name = _port_name(args)
    return _run(args, lambda c: _post(c, f"/api/ports/{name}/cancel", {}, args.json))


def run_power(args: argparse.Namespace) -> int:
    name = _port_name(args)
    body = {"action": args.action}
    return _run(args, lambda c: _post(c, f"/api/ports/{name}/power", body, args.json))


async def _post(client: BridgeClient, path: str, body: dict[str, Any], as_json: bool) -> int:
    result = await client.request("POST", path, body)
    print(json.dumps(result, sort_keys=True) if as_json else describe(result))
    return 0


def run_log(args: argparse.Namespace) -> int:
    name = _port_name(args)
    fmt = "raw" if args.raw else args.format
    if args.strip and fmt != "text":
        raise SystemExit("serial-bridge: --strip applies to the text format only")
    readable = args.events and fmt == "text"  # --events: one line per event, unless --format jsonl
    fmt = "jsonl" if args.events else fmt
    query = {"format": fmt, "follow": "1" if args.follow else "0"}
    if args.events:
        query["events"] = "1"
    if args.strip:
        query["strip"] = "1"
    if args.since:
        query["since"] = args.since
    if args.start is not None:
        query["from"] = str(args.start)

    async def body(client: BridgeClient) -> int:
        resp = await client.stream(f"/api/ports/{name}/log", query)
        try:
            out = sys.stdout.buffer
            if readable:
                async for line in resp.content:
                    out.write(describe_event(json.loads(line)).encode() + b"\n")
                    out.flush()
                return 0
            async for piece in resp.content.iter_any():
                out.write(piece)
                out.flush()
        finally:
            resp.release()
        return 0

    try:
        return _run(args, body)
    except KeyboardInterrupt:
        return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "url",
        help="https://HOST:PORT/PORTNAME, or PORTNAME (or BRIDGE/PORTNAME) of a bridge named in "
        "~/.config/serial-bridge/bridges.toml",
    )
    p.add_argument(
        "--totp", action="store_true", help="with --user: also ask for a one-time (TOTP) code"
    )
    p.add_argument("--user", default=None, help="log in as this user (password prompt)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="with --user: read the password (and then the --totp code) from standard input; "
        "connect then reads your keys from the terminal (/dev/tty)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="file holding an API token (default ~/.config/serial-bridge/token)",
    )
    p.add_argument(
        "--fingerprint",
        default=None,
        metavar="SHA256:...",
        help="the bridge's certificate fingerprint (`serial-bridge cert show` on the bridge); "
        "without it a bridge not in known_hosts is shown and must be confirmed on the terminal",
    )
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="trust a bridge not in known_hosts without asking, and remember it (for scripts "
        "that cannot answer; --fingerprint is safer)",
    )
    p.add_argument(
        "--known-hosts",
        default=None,
        metavar="PATH",
        help="pinned certificates (default ~/.config/serial-bridge/known_hosts)",
    )


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the bridge's JSON answer instead of one line"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "connect",
        help="interactive console (escapes: ~. ~B ~? ~~)",
        description=CONNECT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--read-only", action="store_true", help="watch without the write lease")
    p.add_argument("--takeover", action="store_true", help="take the write lease from its holder")
    p.add_argument(
        "--replay",
        type=_size,
        default=DEFAULT_REPLAY,
        metavar="BYTES",
        help="on attach, show the last BYTES of output (e.g. 4096, 16KiB) from a line start, "
        f"then live output; 0 for live output only (default: {DEFAULT_REPLAY})",
    )
    p.set_defaults(func=run_connect)

    p = sub.add_parser("sysrq", help="send magic SysRq keys (BREAK + key, e.g. REISUB)")
    _common(p)
    p.add_argument("keys", help="SysRq keys, e.g. h, t, or REISUB")
    p.add_argument(
        "--interval",
        default="1s",
        metavar="DURATION",
        help="pause between keys, with a unit: 500ms, 2s (default: 1s)",
    )
    _json_flag(p)
    p.set_defaults(func=run_sysrq)

    p = sub.add_parser(
        "cancel",
        help="stop the port's running SysRq sequence before its next key (an admin: anyone's; "
        "an operator: their own)",
    )
    _common(p)
    _json_flag(p)
    p.set_defaults(func=run_cancel)

    p = sub.add_parser("nmi", help="pulse the NMI line")
    _common(p)
    _json_flag(p)
    p.set_defaults(func=run_nmi)

    p = sub.add_parser("power", help="power actions through the control lines")
    _common(p)
    p.add_argument("action", choices=["on", "off", "force-off", "reset", "cycle", "status"])
    _json_flag(p)
    p.set_defaults(func=run_power)

    p = sub.add_parser("log", help="console history from the ring log")
    _common(p)
    p.add_argument("--since", default=None, help="ISO-8601 time, e.g. 2026-11-23T05:00:00Z")
    p.add_argument(
        "--from",
        dest="start",
        type=int,
        default=None,
        metavar="OFFSET",
        help="start offset; negative = the last N bytes",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new output")
    p.add_argument(
        "--format",
        choices=["text", "raw", "jsonl"],
        default="text",
        help="text shows control characters as visible escapes such as \\x1b (default: text)",
    )
    p.add_argument(
        "--strip",
        action="store_true",
        help="readable text: drop escape sequences and control characters entirely",
    )
    p.add_argument("--raw", action="store_true", help="same as --format raw")
    p.add_argument(
        "--events",
        action="store_true",
        help="only the events held (boots, alerts, online/offline, actions and who did them, "
        "playbooks): one line each with time and offset (--format jsonl: as JSON lines)",
    )
    p.set_defaults(func=run_log)
