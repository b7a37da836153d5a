"""`enabled = false` on a port: the device is not opened, every client is refused with the
reason, the port is listed as disabled, and a reload (what SIGHUP runs) applies it both ways —
closing the clients of a port it disables — and audits it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from bridge.access.store import UserStore
from bridge.client.http import ApiError, BridgeClient
from bridge.config import ConfigError, load_config
from bridge.history.audit import AuditLog
from bridge.service.daemon import Daemon, reload_from_disk
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, user_hash, wait_for

REASON = "port lab is disabled by the administrator"


def config_text(state: Path, device: Path, enabled: bool) -> str:
    return (
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n[log]\nenabled = false\n'
        f'[ports.lab]\ndevice = "{device}"\nbaud = 4000000\nenabled = {str(enabled).lower()}\n'
    )


def holds_open(device: PtyDevice) -> bool:
    """Whether this process (the daemon runs in it) has the pty's slave side open."""
    slave = os.path.realpath(device.path)
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd) == slave for fd in fds.iterdir() if fd.is_symlink())


@pytest.fixture
async def switchable(tmp_path: Path, pty_device: PtyDevice) -> object:
    """A daemon started from a config file whose port `lab` is disabled."""
    state = tmp_path / "state"
    state.mkdir()
    users = UserStore(state)
    users.add("admin", "admin", user_hash("admin"), None)
    tokens = {"admin": users.create_token("admin", "t")}
    path = tmp_path / "config.toml"
    path.write_text(config_text(state, pty_device.path, enabled=False))
    daemon = Daemon(load_config(path))
    await daemon.start()
    yield Bridge(daemon, state, tokens), path
    await daemon.stop()


def audit_events(bridge: Bridge) -> list[str]:
    return [e["event"] for e in AuditLog(bridge.state_dir / "audit").query()]


async def test_disabled_port_is_listed_closed_and_refuses_every_client(
    switchable: object, pty_device: PtyDevice
) -> None:
    bridge, _ = switchable  # type: ignore[misc]
    port = bridge.daemon.state.ports["lab"]
    assert port.opens == 0 and not holds_open(pty_device)
    async with bridge.session("admin") as s:
        async with s.get(f"{bridge.base}/api/ports") as r:
            (listed,) = await r.json()
        assert listed["enabled"] is False and listed["online"] is False
        url = f"{bridge.base}/api/ports/lab/console"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(url)
        assert refused.value.status == 503
        async with s.get(url) as r:  # the same refusal, readable: what a client shows
            assert r.status == 503 and (await r.json())["error"] == REASON
        async with s.get(f"{bridge.base}/api/ports/lab/access") as r:  # the console page asks
            assert r.status == 503 and (await r.json())["error"] == REASON
        for path, body in (
            ("break", None),
            ("sysrq", {"keys": "s"}),
            ("power", {"action": "status"}),
        ):
            async with s.post(f"{bridge.base}/api/ports/lab/{path}", json=body) as r:
                assert r.status == 503, path
                assert (await r.json())["error"] == REASON
        async with s.get(f"{bridge.base}/metrics") as r:
            assert 'serial_bridge_port_enabled{port="lab"} 0.0' in await r.text()
        async with s.get(f"{bridge.base}/api/ports/lab/log") as r:
            assert r.status == 200  # the history stays readable
    assert port.opens == 0 and not holds_open(pty_device)
    refused_break = [
        e for e in AuditLog(bridge.state_dir / "audit").query() if e["event"] == "break"
    ]
    assert refused_break and refused_break[0]["result"] == f"refused: {REASON}"


async def test_reload_enables_then_disables_closing_clients_and_audits(
    switchable: object, pty_device: PtyDevice
) -> None:
    bridge, path = switchable  # type: ignore[misc]
    port = bridge.daemon.state.ports["lab"]
    path.write_text(config_text(bridge.state_dir, pty_device.path, enabled=True))
    assert await reload_from_disk(bridge.daemon)
    await wait_for(lambda: port.online)
    assert holds_open(pty_device)
    async with bridge.session("admin") as s:
        reader = WsReader(await bridge.ws(s, "lab", mode="rw"))
        await reader.message("hello", online=True)
        pty_device.write(b"up\r\n")
        await reader.until(lambda r: b"up" in r.data)

        path.write_text(config_text(bridge.state_dir, pty_device.path, enabled=False))
        assert await reload_from_disk(bridge.daemon)
        closed = await reader.message("status", event="closed")
        assert closed["reason"] == REASON
        msg = await reader.ws.receive(timeout=10)
        while msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            msg = await reader.ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1001, REASON)
        assert not port.online and not port.attachments and not holds_open(pty_device)
        async with s.get(f"{bridge.base}/api/ports") as r:
            assert (await r.json())[0]["enabled"] is False
    switches = [e for e in audit_events(bridge) if e.startswith(("port-", "config-"))]
    assert switches == ["port-enabled", "config-reload", "port-disabled", "config-reload"]
    reload = AuditLog(bridge.state_dir / "audit").query()[-1]
    assert reload["changes"] == ["port lab: disabled"]


def test_enabled_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, tmp_path / "tty", enabled=True).replace("true", '"no"'))
    with pytest.raises(ConfigError) as bad:
        load_config(path)
    assert any("ports.lab.enabled" in p and "true or false" in p for p in bad.value.problems)


async def test_cli_client_is_told_why(switchable: object) -> None:
    """`serial-bridge connect`'s client: a refused upgrade carries no readable body, so it asks
    the access endpoint once and reports the bridge's reason."""
    bridge, _ = switchable  # type: ignore[misc]
    client = BridgeClient(
        bridge.base, token=bridge.tokens["admin"], fingerprint=bridge.daemon.fingerprint
    )
    async with client:
        with pytest.raises(ApiError) as refused:
            await client.console("lab")
    assert refused.value.status == 503 and REASON in str(refused.value)


async def test_the_rfc2217_door_obeys_too(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    """The refusal is the hub's, so a door that is not the web gets it as well: the RFC 2217
    endpoint of a disabled port closes each connection without attaching it."""
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "rfc2217": "127.0.0.1:0", "enabled": False}}
    )
    assert b.daemon.rfc2217 is not None
    host, number = b.daemon.rfc2217.endpoints["lab"].address
    reader, writer = await asyncio.open_connection(host, number)
    try:
        async with asyncio.timeout(10):
            while await reader.read(4096):
                pass  # until the bridge closes it
    finally:
        writer.close()
    assert not b.port.attachments and b.port.opens == 0 and not holds_open(pty_device)
