"""Many bridges from one client: `~/.config/serial-bridge/bridges.toml` names them, `ports` lists
every port of every bridge, and a command given a port name instead of a URL finds its bridge.

    [bridges.rack4]
    url = "https://rack4-bridge.example.net:8443"
    fingerprint = "SHA256:..."                         # optional: else known_hosts pins it
    token_file = "~/.config/serial-bridge/rack4.token" # optional: else the usual token

`connect node2` asks every bridge (concurrently, with that bridge's token) for its ports and
connects to the one that has `node2`; when two have it, `connect rack4/node2` says which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.client.http import BridgeClient, ClientError, KnownHosts, config_dir, parse_url

COLUMNS = ("BRIDGE", "PORT", "STATE", "WRITER", "POWER", "DESCRIPTION")


@dataclass(frozen=True)
class BridgeEntry:
    name: str
    url: str
    fingerprint: str | None = None
    token_file: Path | None = None


def bridges_path() -> Path:
    return config_dir() / "bridges.toml"


def load_bridges(path: Path | None = None) -> dict[str, BridgeEntry]:
    """The named bridges; ClientError naming the file and key for anything wrong."""
    path = path or bridges_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClientError(f"{path} does not exist: name your bridges there (see --help)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"{path}: {exc}") from None
    table = data.get("bridges")
    if not isinstance(table, dict) or not table:
        raise ClientError(f"{path}: no [bridges.NAME] tables")
    bridges = {}
    for name, entry in table.items():
        where = f"{path}: bridges.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ClientError(f"{where}.url: missing (https://HOST:PORT)")
        unknown = set(entry) - {"url", "fingerprint", "token_file"}
        if unknown:
            raise ClientError(f"{where}.{sorted(unknown)[0]}: unknown key")
        try:
            target = parse_url(entry["url"])
        except ClientError as exc:
            raise ClientError(f"{where}.url: {exc}") from None
        token_file = entry.get("token_file")
        fingerprint = entry.get("fingerprint")
        if not isinstance(token_file, str | None) or not isinstance(fingerprint, str | None):
            raise ClientError(f"{where}: fingerprint and token_file are strings")
        bridges[name] = BridgeEntry(
            name,
            target.base,
            fingerprint,
            Path(os.path.expanduser(token_file)) if token_file else None,
        )
    return bridges


def entry_token(entry: BridgeEntry) -> str:
    if entry.token_file is not None:
        try:
            return entry.token_file.read_text().strip()
        except OSError as exc:
            raise ClientError(f"bridge {entry.name}: token_file: {exc}") from None
    token = os.environ.get("SERIAL_BRIDGE_TOKEN")
    default = config_dir() / "token"
    if not token and default.exists():
        token = default.read_text().strip()
    if not token:
        raise ClientError(f"bridge {entry.name}: no token (token_file, or SERIAL_BRIDGE_TOKEN)")
    return token


async def list_ports(entry: BridgeEntry, known_hosts: KnownHosts | None = None) -> list[Any]:
    """`GET /api/ports` of one bridge with its token. A bridge not pinned (no fingerprint, not
    in known_hosts) is refused: listing many bridges asks nobody about certificates."""
    client = BridgeClient(entry.url, fingerprint=entry.fingerprint, known_hosts=known_hosts)
    client.use_credentials(token=entry_token(entry))
    async with client:
        ports = await client.request("GET", "/api/ports")
    return ports if isinstance(ports, list) else []


async def survey(
    bridges: dict[str, BridgeEntry], known_hosts: KnownHosts | None = None
) -> dict[str, list[Any] | ClientError]:
    """Every bridge's ports, asked concurrently; a bridge that fails gives its error instead."""

    async def one(entry: BridgeEntry) -> list[Any] | ClientError:
        try:
            return await list_ports(entry, known_hosts)
        except ClientError as exc:
            return exc
        except OSError as exc:
            return ClientError(str(exc))

    names = list(bridges)
    answers = await asyncio.gather(*(one(bridges[n]) for n in names))
    return dict(zip(names, answers, strict=True))


async def find_port(
    target: str, bridges: dict[str, BridgeEntry], known_hosts: KnownHosts | None = None
) -> tuple[BridgeEntry, str]:
    """`PORT` or `BRIDGE/PORT` -> the bridge that has it and the port name."""
    bridge_name, _, port = target.rpartition("/")
    if bridge_name:
        if bridge_name not in bridges:
            raise ClientError(f"no bridge {bridge_name!r} in {bridges_path()}")
        return bridges[bridge_name], port
    answers = await survey(bridges, known_hosts)
    having = [
        name
        for name, ports in answers.items()
        if not isinstance(ports, ClientError) and any(p.get("name") == port for p in ports)
    ]
    if len(having) == 1:
        return bridges[having[0]], port
    if having:
        raise ClientError(f"{port} is on {', '.join(having)}: say which, as {having[0]}/{port}")
    failed = [f"{n} ({a})" for n, a in answers.items() if isinstance(a, ClientError)]
    unreachable = f"; not asked: {', '.join(failed)}" if failed else ""
    raise ClientError(f"no bridge has a port {port!r}{unreachable}")


def table(answers: dict[str, list[Any] | ClientError]) -> list[tuple[str, ...]]:
    """Rows for `serial-bridge ports`: one per port, bridges in name order."""
    rows: list[tuple[str, ...]] = []
    for bridge in sorted(answers):
        ports = answers[bridge]
        if isinstance(ports, ClientError):
            continue
        for p in sorted(ports, key=lambda p: str(p.get("name"))):
            state = (
                "disabled"
                if p.get("enabled") is False
                else "online"
                if p.get("online")
                else "offline"
            )
            rows.append(
                (
                    bridge,
                    str(p.get("name")),
                    state,
                    str(p.get("writer") or "-"),
                    str(p.get("power") or "unknown"),
                    str(p.get("description") or ""),
                )
            )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [COLUMNS, *rows]
    )


# ---- commands ----------------------------------------------------------------------------------


def run_ports(args: argparse.Namespace) -> int:
    try:
        bridges = load_bridges()
        answers = asyncio.run(survey(bridges))
    except ClientError as exc:
        print(f"serial-bridge: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {n: a if isinstance(a, list) else {"error": str(a)} for n, a in answers.items()},
                sort_keys=True,
            )
        )
    else:
        print(format_table(table(answers)))
    failed = {n: a for n, a in answers.items() if isinstance(a, ClientError)}
    for name, error in sorted(failed.items()):
        print(f"serial-bridge: {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


def run_discover(args: argparse.Namespace) -> int:
    from bridge.client.discover import discover

    found = asyncio.run(discover(args.seconds, args.interface or None))
    if not found:
        print(f"serial-bridge: no bridge answered within {args.seconds:g} s", file=sys.stderr)
        return 1
    for bridge in found:
        ssh = f"  ssh port {bridge.ssh_port}" if bridge.ssh_port else ""
        print(f"{bridge.name}  {bridge.url}  {bridge.fingerprint or '-'}{ssh}")
    print(
        "\n# mDNS is not authenticated: compare each fingerprint with `serial-bridge cert show`"
        f" on the bridge before adding it to {bridges_path()}",
        file=sys.stderr,
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ports",
        help=f"every port of every bridge named in {bridges_path()}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="the bridges' answers as JSON")
    p.set_defaults(func=run_ports)

    p = sub.add_parser("discover", help="list the bridges that advertise themselves by mDNS")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="how long to listen for answers (default 3)"
    )
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="ask only on the interface with this address (repeatable; default: every one)",
    )
    p.set_defaults(func=run_discover)
