"""The port menu of an SSH login without a port (`ssh alice@bridge`): pick one by number or name.

Lists the ports the identity may see (name, online, writer, description), then asks; a wrong
answer is said and asked again, a few times; `q`, Ctrl-C or the end of input quits.
"""

from __future__ import annotations

from bridge.access.policy import Identity
from bridge.ssh.context import Door
from bridge.ssh.terminal import Terminal

TRIES = 5


async def choose_port(term: Terminal, door: Door, identity: Identity) -> str | None:
    """The name of the port chosen, or None (nothing to choose, or the user quit)."""
    ports = door.visible_ports(identity.ports)
    if not ports:
        term.error("there is no port you may use")
        return None
    lines = [f"ports for {identity.user}:"]
    for i, port in enumerate(ports, 1):
        writer = port.status()["writer"]
        state = "online " if port.online else "offline"
        who = f"writer: {writer}" if writer else "no writer"
        lines.append(f"  {i:>2}  {port.name:<16} {state}  {who:<20} {port.cfg.description}")
    term.show("\n".join(lines))
    for _ in range(TRIES):
        answer = await term.read_line("port (number or name, q to quit): ")
        if not isinstance(answer, str) or answer.strip().lower() in ("q", "quit"):
            return None
        choice = answer.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(ports):
            return ports[int(choice) - 1].name
        if any(p.name == choice for p in ports):
            return choice
        term.show(f"no port {choice!r} here")
    return None
