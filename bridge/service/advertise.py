"""`[server] advertise = true`: the bridge announces itself by DNS-SD (mDNS) on the networks it
listens on, so `serial-bridge discover` (bridge.client.discover, which defines the records) finds
it. Off by default: an appliance that shouts its name and certificate on every link is not what
every site wants.

Interfaces: the listen addresses (a bridge that listens on a management address announces itself
there only); a wildcard listener announces on every interface. Records: `_https._tcp` with the
TXT keys of bridge.client.discover, and `_ssh._tcp` when the SSH door listens.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import ifaddr
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from bridge import __version__
from bridge.client.discover import HTTPS_SERVICE, SSH_SERVICE, TXT_MARK, host_label

log = logging.getLogger(__name__)
WILDCARDS = ("0.0.0.0", "::", "")


def _local_addresses() -> list[str]:
    """Every address of this machine but loopback and link-local IPv6 (for wildcard listeners)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            parsed = ipaddress.ip_address(address)
            if not parsed.is_loopback and not parsed.is_link_local:
                found.append(address)
    return found


class Advertiser:
    """The mDNS announcements of one running bridge."""

    def __init__(
        self,
        listen: list[tuple[str, int]],
        fingerprint: str,
        ssh: list[tuple[str, int]] | None = None,
    ) -> None:
        self.listen, self.fingerprint, self.ssh = listen, fingerprint, ssh or []
        self.zeroconf: AsyncZeroconf | None = None
        self.infos: list[AsyncServiceInfo] = []

    def _records(self, name: str, addresses: list[str]) -> list[AsyncServiceInfo]:
        packed = [
            socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses
        ]
        server = f"{host_label()}.local."
        txt = {TXT_MARK: __version__, "fp": self.fingerprint, "path": "/"}
        if self.ssh:
            txt["ssh"] = str(self.ssh[0][1])
        infos = [
            AsyncServiceInfo(
                HTTPS_SERVICE,
                f"{name}.{HTTPS_SERVICE}",
                addresses=packed,
                port=self.listen[0][1],
                properties=txt,
                server=server,
            )
        ]
        if self.ssh:
            infos.append(
                AsyncServiceInfo(
                    SSH_SERVICE,
                    f"{name}.{SSH_SERVICE}",
                    addresses=packed,
                    port=self.ssh[0][1],
                    properties={TXT_MARK: __version__},
                    server=server,
                )
            )
        return infos

    async def start(self) -> None:
        hosts = [h for h, _ in self.listen]
        wildcard = any(h in WILDCARDS for h in hosts)
        addresses = _local_addresses() if wildcard else hosts
        self.zeroconf = AsyncZeroconf(
            interfaces=InterfaceChoice.All if wildcard else hosts, ip_version=IPVersion.All
        )
        self.infos = self._records(f"serial-bridge {host_label()}", addresses)
        for info in self.infos:
            await self.zeroconf.async_register_service(info, allow_name_change=True)
        log.info("advertising %s by mDNS on %s", self.infos[0].name, ", ".join(addresses))

    async def stop(self) -> None:
        if self.zeroconf is not None:
            await self.zeroconf.async_unregister_all_services()
            await self.zeroconf.async_close()
            self.zeroconf = None
