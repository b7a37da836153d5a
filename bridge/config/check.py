"""Checks across keys of a config: what no single key can know alone.

Owns the rules that compare entries with each other, after every key has been read on its own
(bridge.config): a listen address given twice (or a specific address on a port that a wildcard
entry already takes), one GPIO driven by two lines (within a port or across ports), and two ports
on one console device, and an RFC 2217 endpoint on an address another endpoint or `server.listen`
already takes. Each problem names the file, the later key and the earlier one, in the
same `FILE: key.path: reason` form as every other config error. Reads no device and opens no
socket; device paths are compared after resolving symlinks (`/dev/serial0` -> `/dev/ttyAMA0`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

_WILDCARDS = {"0.0.0.0": 4, "::": 6, "": 0}  # address -> IP family it covers (0: every family)
_LINE_NAMES = ("nmi", "reset", "power", "power_sense")
_SHAREABLE_DEVICES = ("virtual:",)  # each port gets its own virtual target


def _family(host: str) -> int | None:
    """4 or 6 for an IP literal, None for a host name (resolved only when listening)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_clash(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen entries cannot both be bound: the same address and port, or a wildcard
    and an address of its family on the same port (port 0 means "any free port": never)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a != port_b or port_a == 0:
        return False
    if host_a.lower() == host_b.lower():
        return True
    for wild, other in ((host_a, host_b), (host_b, host_a)):
        if wild in _WILDCARDS and other not in _WILDCARDS:
            family = _WILDCARDS[wild]
            if family == 0 or _family(other) == family:
                return True
    try:  # the same address written two ways ("::1" and "0:0:0:0:0:0:0:1")
        return ipaddress.ip_address(host_a) == ipaddress.ip_address(host_b)
    except ValueError:
        return False


def check_listen(
    listen: tuple[tuple[str, int], ...],
    where: str,
    problems: list[str],
    key: str = "server.listen",
    taken: tuple[tuple[str, int], ...] = (),
) -> None:
    """Each entry of `listen` (the key `key`) against its earlier entries, then against `taken`:
    the addresses another key (server.listen, for ssh.listen) already listens on."""
    for i, entry in enumerate(listen):
        others = [(e, key) for e in listen[:i]] + [(e, "server.listen") for e in taken]
        for earlier, owner in others:
            if _listen_clash(earlier, entry):
                same = entry == earlier and owner == key
                problems.append(
                    f"{where}: {key}: {_show(*entry)} "
                    + (
                        "is listed twice"
                        if same
                        else f"overlaps {_show(*earlier)}"
                        + (f" of {owner}" if owner != key else "")
                        + f" (both would take port {entry[1]})"
                    )
                )
                break


def _device_key(device: str) -> str | None:
    """What identifies the console device: the resolved path, or the URL as written."""
    if not device or device.startswith(_SHAREABLE_DEVICES):
        return None
    if device.startswith("/"):
        return os.path.realpath(device)
    return device


def check_ports(ports: Mapping[str, Any], where: str, problems: list[str]) -> None:
    """One GPIO per line and one port per device, across all ports (in file order). `ports`:
    bridge.config's PortConfig by name (not imported here: config imports this module)."""
    gpio_owner: dict[int, str] = {}
    device_owner: dict[str, str] = {}
    for name, port in ports.items():
        for line_name in _LINE_NAMES:
            line = getattr(port.lines, line_name)
            if line is None or line.gpio < 0:
                continue
            key = f"ports.{name}.lines.{line_name}"
            if line.gpio in gpio_owner:
                problems.append(
                    f"{where}: {key}.gpio: GPIO {line.gpio} is already used by"
                    f" {gpio_owner[line.gpio]} (one GPIO drives one line)"
                )
            else:
                gpio_owner[line.gpio] = key
        device = _device_key(port.device)
        if device is None:
            continue
        if device in device_owner:
            via = "" if device == port.device else f" leads to {device}, which"
            problems.append(
                f"{where}: ports.{name}.device: {port.device!r}{via} is already the device of"
                f" port {device_owner[device]} (one port per console device)"
            )
        else:
            device_owner[device] = name


def check_rfc2217(
    listen: tuple[tuple[str, int], ...],
    ports: Mapping[str, Any],
    where: str,
    problems: list[str],
) -> None:
    """Each port's `rfc2217` endpoint needs an address of its own: not one that `server.listen`
    or an earlier port's endpoint already takes."""
    taken: list[tuple[tuple[str, int], str]] = [(entry, "server.listen") for entry in listen]
    for name, port in ports.items():
        entry = port.rfc2217
        if entry is None:
            continue
        for earlier, owner in taken:
            if _listen_clash(earlier, entry):
                problems.append(
                    f"{where}: ports.{name}.rfc2217: {_show(*entry)} is already taken by"
                    f" {owner} ({_show(*earlier)})"
                )
                break
        else:
            taken.append((entry, f"ports.{name}.rfc2217"))
