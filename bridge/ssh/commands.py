"""The SSH door's commands: typed at the escape prompt, or run as `ssh USER:PORT@bridge COMMAND`.

One table serves both. Each command asks `Gate.authorise` for the permission it needs, exactly
like the web routes (write: BREAK, SysRq, takeover; lines: NMI, reset, power), runs through the
port hub, and is audited with its outcome like the web's actions. At the prompt, NMI, reset,
power and destructive SysRq keys ask y/N first (as the web page does); a command given to `ssh`
on the command line is its own confirmation. Exit status: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from bridge.access.gate import Denied
from bridge.access.policy import Identity, Permission, allowed
from bridge.config import parse_duration
from bridge.console.actions import audited
from bridge.console.playbook import available
from bridge.console.port import Attachment, Port, PortError
from bridge.console.sysrq import DESTRUCTIVE_KEYS, SYSRQ_KEYS, validate_keys
from bridge.history.textexport import to_text
from bridge.hw.interfaces import UnsupportedAction
from bridge.ssh.context import Door

POWER_ACTIONS = ("on", "off", "force-off", "cycle", "reset", "status")
LOG_DEFAULT, LOG_MAX = 50, 10_000
LOG_MAX_BYTES = 1024 * 1024
OK, REFUSED, USAGE = 0, 1, 2


class Refused(Exception):
    """The command was refused or failed: exit status 1 with this message."""


class Usage(Exception):
    """The command was given wrongly: exit status 2 with this message."""


@dataclass
class Invocation:
    """What a command runs with: who, where, and how to talk to the user."""

    door: Door
    identity: Identity
    port: Port | None
    peer: str
    out: Callable[[str], None]  # a line (or lines) of output
    confirm: Callable[[str], Awaitable[bool]] | None  # None: not interactive, no questions
    att: Attachment | None = None  # the console attachment at the escape prompt
    size: tuple[int, int] = (80, 24)  # the client's terminal: columns, rows
    quit: bool = False

    def need_port(self) -> Port:
        if self.port is None:
            raise Usage("name a port: ssh USER:PORT@bridge COMMAND (`ports` lists them)")
        return self.port

    def authorise(self, permission: Permission) -> Port:
        port = self.need_port()
        self.door.gate.authorise(self.identity, permission, port.name)
        return port

    async def ask(self, question: str) -> bool:
        return self.confirm is None or await self.confirm(question)

    async def action(self, what: str, coro: Awaitable[dict[str, Any]], **fields: Any) -> None:
        """Run a port action (audited whatever ends it) and report it."""
        port = self.need_port()
        where = {"user": self.identity.user, "port": port.name, "peer": self.peer, "via": "ssh"}
        try:
            result = await audited(self.door.audit.record, what, coro, **where, **fields)
        except UnsupportedAction as exc:
            raise Refused(f"{what}: {exc}") from None
        except PortError as exc:
            raise Refused(f"{what} refused: {exc}") from None
        self.out(describe(result))


def describe(result: dict[str, Any]) -> str:
    """One line saying what an action did."""
    action, port = result.get("action", "?"), result.get("port", "?")
    if action == "sysrq":
        return f"sysrq {result['keys']} sent to {port} (BREAK {result['break_ms']} ms + key)"
    if action == "cancel":
        return f"cancelled {result.get('cancelled', 'the running sequence')} on {port}"
    if action == "break":
        return f"BREAK sent to {port} ({result['duration_ms']} ms)"
    if "power" in result:
        return f"{port}: power is {result['power']}"
    return f"{action} done on {port}"


Handler = Callable[[Invocation, list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    summary: str
    handler: Handler
    interactive: bool = False  # only at the escape prompt (needs an attached console)


async def _help(inv: Invocation, args: list[str]) -> None:
    lines = []
    for cmd in COMMANDS.values():
        if inv.att is None and cmd.interactive:
            continue
        lines.append(f"  {(cmd.name + ' ' + cmd.args).strip():<22} {cmd.summary}")
    inv.out("\n".join(lines))


async def _ports(inv: Invocation, args: list[str]) -> None:
    rows = []
    for port in inv.door.visible_ports(inv.identity.ports):
        writer = port.status()["writer"] or "-"
        state = "online" if port.online else "offline"
        rows.append(f"{port.name}\t{state}\twriter={writer}\t{port.cfg.description}")
    inv.out("\n".join(rows) if rows else "(no ports you may use)")


async def _who(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.READ)
    lines = [f"{port.name}: {'online' if port.online else 'offline'}"]
    for att in sorted(port.attachments.values(), key=lambda a: a.id):
        me = " (you)" if att is inv.att else ""
        lines.append(f"  {att.user:<20} {port.mode_of(att)}{me}")
    inv.out("\n".join(lines))


async def _takeover(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.WRITE)
    assert inv.att is not None
    writer = port.writer
    question = f"{writer.user} is writing on {port.name}; take over? [y/N] " if writer else ""
    if writer is not None and writer is not inv.att and not await inv.ask(question):
        return
    port.take_over(inv.att)


async def _release(inv: Invocation, args: list[str]) -> None:
    port = inv.need_port()
    assert inv.att is not None
    if port.writer is inv.att:
        await port.release(inv.att)
    else:
        inv.out("you are read-only")


async def _sysrq(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.WRITE)
    if not args or len(args) > 2:
        raise Usage("sysrq KEYS [INTERVAL]   e.g. sysrq h, sysrq reisub 1s")
    try:
        keys = validate_keys(args[0], port.cfg.sysrq_deny)
        interval = parse_duration(args[1] if len(args) > 1 else "1s")
    except ValueError as exc:
        raise Usage(str(exc)) from None
    risky = sorted({k for k in keys if k in DESTRUCTIVE_KEYS})
    if risky:
        names = ", ".join(f"{k} ({SYSRQ_KEYS[k].name})" for k in risky)
        if not await inv.ask(f"{names}: destructive on {port.name}; send sysrq {keys}? [y/N] "):
            return
    user, valid = inv.identity.user, partial(inv.door.gate.granted_now, inv.identity, port.name)
    await inv.action("sysrq", port.sysrq(keys, interval, user, valid), keys=keys)


async def _cancel(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.WRITE)
    any_user = allowed(inv.identity, Permission.ADMIN)

    async def cancel() -> dict[str, Any]:
        return port.cancel_action(inv.identity.user, any_user)

    await inv.action("cancel", cancel())


async def _rescue(inv: Invocation, args: list[str]) -> None:
    """Recovery playbooks (admins): list, run (at the escape prompt it runs on while you watch;
    as an exec command it is followed to its end), cancel."""
    port = inv.authorise(Permission.ADMIN)
    usage = "rescue list | rescue PLAYBOOK [--arg VALUE] [--param NAME=VALUE]... | rescue cancel"
    if not args:
        raise Usage(usage)
    books = available(inv.door.config().playbooks_dir)
    if args[0] == "list":
        inv.out("\n".join(f"{b.name}: {b.description}" for b in books.values()))
        return
    user = inv.identity.user
    try:
        if args[0] == "cancel":
            inv.out(f"cancelled {port.rescue.cancel(user, any_user=True)['cancelled']['name']}")
            return
        given, rest = {}, args[1:]
        while rest:
            flag, value, rest = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
            if flag == "--arg" and value:
                given["arg"] = value
            elif flag == "--param" and "=" in value:
                given[value.partition("=")[0]] = value.partition("=")[2]
            else:
                raise Usage(usage)
        book = books.get(args[0])
        if book is None:
            raise Usage(f"no playbook {args[0]!r} (`rescue list` shows them)")
        if not await inv.ask(f"run {book.name} on {port.name}? It may reset it. [y/N] "):
            return
        run = port.rescue.start(book, given, user, inv.peer)
    except PortError as exc:
        raise Refused(f"rescue refused: {exc}") from None
    if inv.att is not None:  # at the escape prompt: back to the console to watch it
        inv.out(f"{book.name} started; its steps show here (`rescue cancel` stops it)")
        return

    def progress(message: dict[str, Any]) -> None:
        if message["type"] == "step":
            inv.out(f"step {message['step']}/{message['of']}: {message['title']}")

    run.listeners.append(progress)
    await run.done.wait()
    result = run.result or {}
    if result.get("result") != "ok":
        where = f"at step {result.get('step')} ({result.get('title')})"
        why = result.get("message") or f"cancelled by {result.get('by')}"
        raise Refused(
            f"{book.name} {result.get('result')} {where}: {why}\n{result.get('output', '')}"
        )
    inv.out(f"{book.name} done in {result.get('seconds', 0):.1f} s")


async def _break(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.WRITE)
    await inv.action("break", port.send_break(inv.identity.user))


async def _nmi(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.LINES)
    if await inv.ask(f"send NMI to {port.name}? The target may panic. [y/N] "):
        await inv.action("nmi", port.line_action("nmi", inv.identity.user))


async def _reset(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.LINES)
    if await inv.ask(f"reset {port.name}? It restarts at once, unsaved data is lost. [y/N] "):
        await inv.action("reset", port.line_action("reset", inv.identity.user))


async def _power(inv: Invocation, args: list[str]) -> None:
    if len(args) != 1 or args[0] not in POWER_ACTIONS:
        raise Usage(f"power {'|'.join(POWER_ACTIONS)}")
    action = args[0]
    port = inv.authorise(Permission.READ if action == "status" else Permission.LINES)
    verb = "reset" if action == "reset" else f"power:{action}"
    coro = port.line_action(verb, inv.identity.user)
    if action == "status":
        inv.out(describe(await coro))
    elif await inv.ask(f"power {action} {port.name}? [y/N] "):
        await inv.action("power", coro, action=action)
    else:
        coro.close()


async def _log(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.READ)
    try:
        count = int(args[0]) if args else LOG_DEFAULT
    except ValueError:
        raise Usage("log [N]: N lines (a number)") from None
    if not 0 < count <= LOG_MAX or len(args) > 1:
        raise Usage(f"log [N]: 1 to {LOG_MAX} lines")
    inv.out(last_lines(port, count))


def last_lines(port: Port, count: int) -> str:
    """The last `count` lines of the port's history as terminal-safe text (at most 1 MiB)."""
    end = port.offset
    start = max(port.oldest_offset, end - LOG_MAX_BYTES)
    data = bytearray()
    at = end
    while at > start and data.count(b"\n") <= count:
        step = min(64 * 1024, at - start)
        got_from, piece = port.read(at - step, step)
        if not piece or got_from >= at:
            break
        data[:0] = piece[: at - got_from]
        at = got_from
    text = to_text(bytes(data))
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines[-count:])


async def _stty(inv: Invocation, args: list[str]) -> None:
    port = inv.authorise(Permission.WRITE)
    assert inv.att is not None
    cols, rows = inv.size
    try:
        await port.write(inv.att, f"stty rows {rows} cols {cols}\r".encode())
    except PortError as exc:
        raise Refused(f"stty not sent: {exc}") from None


async def _quit(inv: Invocation, args: list[str]) -> None:
    inv.quit = True


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("help", "", "this list", _help),
        Command("ports", "", "the ports you may use", _ports),
        Command("who", "", "who is attached, who writes", _who),
        Command("takeover", "", "take the write lease", _takeover, interactive=True),
        Command("release", "", "give the write lease up", _release, interactive=True),
        Command("ro", "", "the same: stay read-only", _release, interactive=True),
        Command("sysrq", "KEYS [INT]", "BREAK + key, per key (e.g. sysrq reisub 1s)", _sysrq),
        Command("cancel", "", "stop the running SysRq sequence before its next key", _cancel),
        Command("break", "", "send a BREAK", _break),
        Command("rescue", "PLAYBOOK|list|cancel", "run a recovery playbook (admin)", _rescue),
        Command("nmi", "", "pulse the NMI line", _nmi),
        Command("reset", "", "press reset", _reset),
        Command("power", "on|off|cycle|status", "power control (also force-off, reset)", _power),
        Command("log", "[N]", f"the last N lines of history (default {LOG_DEFAULT})", _log),
        Command("stty", "", "type `stty rows R cols C` for your window", _stty, interactive=True),
        Command("quit", "", "disconnect", _quit, interactive=True),
    )
}


async def run(inv: Invocation, line: str, error: Callable[[str], None]) -> int:
    """Run one command line; its output goes to `inv.out`, a refusal or usage error to `error`.
    Returns the exit status."""
    try:
        words = shlex.split(line)
        if not words:
            return OK
        cmd = COMMANDS.get(words[0].lower())
        if cmd is None:
            raise Usage(f"unknown command {words[0]!r} (`help` lists them)")
        if cmd.interactive and inv.att is None:
            raise Usage(f"{cmd.name} works at the escape prompt of a console only")
        await cmd.handler(inv, words[1:])
    except (Usage, ValueError) as exc:
        error(str(exc))
        return USAGE
    except Refused as exc:
        error(str(exc))
        return REFUSED
    except Denied as denied:
        error(denied.message)
        return REFUSED
    return OK
