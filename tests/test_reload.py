"""Reload (SIGHUP) and shutdown (SIGTERM): config changes with clients attached, and a real
`serial-bridge serve` process that flushes its log and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge.access.store import UserStore
from bridge.config import load_config
from bridge.service.daemon import Daemon, reload_from_disk
from tests.conftest import Bridge, PtyDevice, WsReader, user_hash, wait_for


def config_text(state: Path, ports: dict[str, str], extra: str = "") -> str:
    body = f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n[log]\nenabled = false\n'
    for name, device in ports.items():
        body += f'[ports.{name}]\ndevice = "{device}"\nbaud = 4000000\n'
        if name == "changed":
            body += extra
    return body


@pytest.fixture
async def reloadable(tmp_path: Path) -> object:
    devices = {n: PtyDevice(tmp_path / f"tty-{n}") for n in ("kept", "changed", "removed", "added")}
    state = tmp_path / "state"
    state.mkdir()
    users = UserStore(state)
    users.add("admin", "admin", user_hash("admin"), None)
    token = users.create_token("admin", "t")
    path = tmp_path / "config.toml"
    ports = {n: str(devices[n].path) for n in ("kept", "changed", "removed")}
    path.write_text(config_text(state, ports))
    daemon = Daemon(load_config(path))
    await daemon.start()
    bridge = Bridge(daemon, state, {"admin": token})
    yield bridge, path, devices, state
    await bridge.close_sockets()
    await daemon.stop()
    for d in devices.values():
        d.close()


async def test_reload_keeps_reopens_removes_and_adds(reloadable: object) -> None:
    bridge, path, devices, state = reloadable  # type: ignore[misc]
    ports = bridge.daemon.state.ports
    await wait_for(lambda: all(p.online for p in ports.values()))
    kept_port = ports["kept"]
    async with bridge.session("admin") as s:
        kept = WsReader(await bridge.ws(s, "kept", mode="rw"))
        changed = WsReader(await bridge.ws(s, "changed", mode="ro"))
        removed = WsReader(await bridge.ws(s, "removed", mode="ro"))
        for r in (kept, changed, removed):
            await r.message("hello")
        devices["kept"].write(b"before\r\n")
        await kept.until(lambda r: b"before" in r.data)

        new_ports = {n: str(devices[n].path) for n in ("kept", "changed", "added")}
        path.write_text(config_text(state, new_ports, extra='description = "now described"\n'))
        assert await reload_from_disk(bridge.daemon)

        assert ports["kept"] is kept_port and kept_port.transport is not None
        devices["kept"].write(b"after\r\n")
        await kept.until(lambda r: b"after" in r.data)
        assert not [m for m in kept.messages if m.get("event") in ("offline", "reconfigured")]
        await kept.ws.send_bytes(b"still the writer\r")
        await devices["kept"].read_until(lambda b: b"still the writer\r" in b)

        await changed.message("status", event="reconfigured")
        await changed.message("status", event="online")
        assert ports["changed"].cfg.description == "now described"
        devices["changed"].write(b"reopened\r\n")
        await changed.until(lambda r: b"reopened" in r.data)

        closed = await removed.message("status", event="closed")
        assert "removed" in closed["reason"]
        await removed.until(lambda r: r.closed)
        assert "removed" not in ports

        await wait_for(lambda: "added" in ports and ports["added"].online)
        added = WsReader(await bridge.ws(s, "added", mode="ro"))
        await added.message("hello", online=True)


async def test_invalid_reload_is_rejected_whole(reloadable: object) -> None:
    bridge, path, devices, state = reloadable  # type: ignore[misc]
    before = bridge.daemon.config
    ports = {n: str(devices[n].path) for n in ("kept", "added")}
    path.write_text(config_text(state, ports) + "[ports.broken]\nbaud = -1\n")
    assert not await reload_from_disk(bridge.daemon)
    assert bridge.daemon.config is before
    assert set(bridge.daemon.state.ports) == {"kept", "changed", "removed"}


async def test_serve_process_reloads_on_sighup_and_flushes_on_sigterm(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    state = tmp_path / "state"
    path = tmp_path / "config.toml"
    body = (
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[log]\nflush_interval = "1h"\n[ports.lab]\ndevice = "{pty_device.path}"\n'
    )
    path.write_text(body)
    state.mkdir()
    UserStore(state).add("admin", "admin", user_hash("admin"), None)
    token = UserStore(state).create_token("admin", "t")

    async def start() -> tuple[asyncio.subprocess.Process, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--config",
            str(path),
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "serve exited early"
            if "listening on https://" in line:
                return proc, line.split("listening on ")[1].strip()

    proc, base = await start()
    headers = {"Authorization": f"Bearer {token}", "Origin": base}
    async with aiohttp.ClientSession(headers=headers) as s:

        async def ports() -> list[dict[str, object]]:
            async with s.get(f"{base}/api/ports", ssl=False) as r:
                return await r.json()  # type: ignore[no-any-return]

        for _ in range(500):
            if (await ports())[0]["online"]:
                break
            await asyncio.sleep(0.02)
        pty_device.write(b"written just before the stop\r\n")
        for _ in range(500):
            if (await ports())[0]["offset"] == 30:
                break
            await asyncio.sleep(0.02)
        path.write_text(body.replace('device = "', 'description = "hup"\ndevice = "'))
        proc.send_signal(signal.SIGHUP)
        for _ in range(500):
            if (await ports())[0]["description"] == "hup":
                break
            await asyncio.sleep(0.02)
        assert (await ports())[0]["description"] == "hup"
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0

    proc, base = await start()  # the log survived: 1 h flush interval, so SIGTERM flushed it
    try:
        async with (
            aiohttp.ClientSession(headers={**headers, "Origin": base}) as s,
            s.get(f"{base}/api/ports/lab/log?format=raw", ssl=False) as r,
        ):
            assert await r.read() == b"written just before the stop\r\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert os.stat(state / "logs" / "lab.ring").st_mode & 0o777 == 0o600
