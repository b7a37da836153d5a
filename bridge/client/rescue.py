"""`serial-bridge rescue URL PLAYBOOK [--arg VALUE] [--param NAME=VALUE]...`: run a recovery
playbook on a port and follow it step by step (`--list` shows the playbooks, `--cancel` stops the
one running). Admins only. Credentials and pinning as for the other client commands
(bridge.client.remote). Exit status: 0 the playbook succeeded, 1 it failed, was cancelled or was
refused, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bridge.client.http import BridgeClient
from bridge.client.remote import _common, _port_name, _run

HELP = """\
Run a recovery playbook on a port: the bridge types into the console (holding the write lease,
so nobody else types meanwhile), presses reset or power when the playbook says so, and reports
each step. Shipped: grub-rescue (boot once with an extra kernel argument, e.g.
--arg systemd.unit=emergency.target), grub-entry (--param entry=1: boot menu entry 1 once),
sysrq-safe-reboot (REISUB). `--list` shows every playbook with its parameters.
Ctrl-C stops following; the playbook goes on (--cancel stops it)."""


def parse_params(args: argparse.Namespace) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"serial-bridge: --param {item!r}: expected NAME=VALUE")
        given[name] = value
    if args.arg is not None:
        given["arg"] = args.arg
    return given


def describe_step(line: dict[str, Any]) -> str:
    return f"step {line['step']}/{line['of']}: {line['title']}"


def describe_result(result: dict[str, Any]) -> str:
    head = f"{result.get('playbook')} on {result.get('port')}"
    seconds = result.get("seconds", 0)
    if result.get("result") == "ok":
        return f"{head}: done in {seconds:.1f} s"
    if result.get("result") == "cancelled":
        return f"{head}: cancelled by {result.get('by')} at step {result.get('step')}"
    text = f"{head}: failed at step {result.get('step')} ({result.get('title')}): "
    text += str(result.get("message"))
    if result.get("output"):
        text += "\n--- the console showed last ---\n" + str(result["output"])
    return text


def run_rescue(args: argparse.Namespace) -> int:
    name = _port_name(args)

    async def listing(client: BridgeClient) -> int:
        for book in await client.request("GET", "/api/playbooks"):
            if args.json:
                print(json.dumps(book, sort_keys=True))
                continue
            print(f"{book['name']}: {book['description']}")
            for p in book["params"]:
                print(f"    --param {p['name']}=... (default {p['default']!r}) {p['description']}")
        return 0

    async def cancelling(client: BridgeClient) -> int:
        answer = await client.request("POST", f"/api/ports/{name}/rescue/cancel", {})
        print(json.dumps(answer, sort_keys=True) if args.json else f"cancelled on {name}")
        return 0

    async def running(client: BridgeClient) -> int:
        body = {"playbook": args.playbook, "args": parse_params(args)}
        resp = await client.stream(f"/api/ports/{name}/rescue", {}, "POST", body)
        result: dict[str, Any] = {}
        try:
            async for raw in resp.content:
                line = json.loads(raw)
                if args.json:
                    print(json.dumps(line, sort_keys=True), flush=True)
                elif line.get("type") == "step":
                    print(describe_step(line), flush=True)
                if line.get("type") == "result":
                    result = line
        finally:
            resp.release()
        if not args.json:
            print(
                describe_result(result),
                file=sys.stdout if result.get("result") == "ok" else sys.stderr,
            )
        return 0 if result.get("result") == "ok" else 1

    if args.list:
        return _run(args, listing)
    if args.cancel:
        return _run(args, cancelling)
    if not args.playbook:
        raise SystemExit("serial-bridge: name a playbook (--list shows them)")
    try:
        return _run(args, running)
    except KeyboardInterrupt:
        print(f"stopped following; the playbook goes on (serial-bridge rescue {args.url} --cancel)")
        return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rescue",
        help="run a recovery playbook (e.g. grub-rescue) on a port",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("playbook", nargs="?", help="the playbook, e.g. grub-rescue")
    p.add_argument("--arg", default=None, metavar="VALUE", help="the playbook's `arg` parameter")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the playbook (repeatable)",
    )
    p.add_argument("--list", action="store_true", help="list the playbooks and their parameters")
    p.add_argument("--cancel", action="store_true", help="stop the playbook running on the port")
    p.add_argument("--json", action="store_true", help="print the bridge's JSON lines")
    p.set_defaults(func=run_rescue)
