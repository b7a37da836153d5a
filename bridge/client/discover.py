"""DNS-SD (mDNS) for bridges: what a bridge advertises, and `serial-bridge discover`, which lists
the bridges answering on the local network.

A bridge with `[server] advertise = true` registers an `_https._tcp` service whose TXT record
has `serial-bridge` (its version), `fp` (its certificate's SHA-256 fingerprint, to compare with
`serial-bridge cert show`: mDNS is unauthenticated, so a found fingerprint is a hint, never a
pin by itself), `path=/` and, with the SSH door on, `ssh` (its port); and an `_ssh._tcp` service
for the SSH door. Other `_https._tcp` services (printers, NAS boxes) lack the `serial-bridge`
key and are skipped.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

HTTPS_SERVICE = "_https._tcp.local."
SSH_SERVICE = "_ssh._tcp.local."
TXT_MARK = "serial-bridge"


@dataclass(frozen=True)
class Found:
    name: str  # the service instance name, e.g. "serial-bridge rack4"
    url: str
    fingerprint: str | None
    ssh_port: int | None
    version: str


def interface_choice(interfaces: list[str] | None) -> InterfaceChoice | list[str]:
    return interfaces if interfaces else InterfaceChoice.All


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _found(info: AsyncServiceInfo) -> Found | None:
    txt = {
        k.decode(errors="replace"): (v or b"").decode(errors="replace")
        for k, v in info.properties.items()
    }
    addresses = info.parsed_addresses()
    if TXT_MARK not in txt or not addresses or info.port is None:
        return None
    ssh = txt.get("ssh", "")
    return Found(
        name=info.name.removesuffix("." + HTTPS_SERVICE),
        url=_url(sorted(addresses, key=lambda a: ":" in a)[0], info.port),
        fingerprint=txt.get("fp") or None,
        ssh_port=int(ssh) if ssh.isdigit() else None,
        version=txt[TXT_MARK],
    )


async def discover(seconds: float, interfaces: list[str] | None = None) -> list[Found]:
    """Browse for `seconds` and return the bridges that answered, by name."""
    zc = AsyncZeroconf(interfaces=interface_choice(interfaces), ip_version=IPVersion.All)
    names: set[str] = set()

    def changed(
        zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add(name)

    browser = AsyncServiceBrowser(zc.zeroconf, HTTPS_SERVICE, handlers=[changed])
    try:
        await asyncio.sleep(seconds)  # discovery is listening for a while: nothing to wait on
        found = []
        for name in sorted(names):
            info = AsyncServiceInfo(HTTPS_SERVICE, name)
            if await info.async_request(zc.zeroconf, 3000) and (bridge := _found(info)):
                found.append(bridge)
        return found
    finally:
        await browser.async_cancel()
        await zc.async_close()


def host_label() -> str:
    """This machine's name as an mDNS host label."""
    return socket.gethostname().split(".")[0] or "serial-bridge"
