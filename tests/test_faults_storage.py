"""Full and read-only storage (#14, faults 2): the state directory on a small loop-mounted ext4
(tests.smallfs) that fills up, or turns read-only under a running daemon as a failing SD card
does; and start-up on a read-only state directory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bridge.access import totp
from bridge.access.store import UserStore
from tests.conftest import PASSWORDS, PtyDevice, WsReader
from tests.served import Served, make_state
from tests.smallfs import card_error, ext4_card, fill, remount_read_only
from tests.test_faults_disk import wait_health


def write_config(tmp_path: Path, state: Path, device: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[log]\nsize = "256KiB"\nflush_interval = "100ms"\n'
        f'[ports.lab]\ndevice = "{device}"\n'
    )
    return path


async def login(served: Served, secret: str) -> int:
    body = {
        "username": "admin",
        "password": PASSWORDS["admin"],
        "totp": totp.code_at(secret, time.time()),
    }
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), headers={"Origin": served.base}
        ) as s,
        s.post(f"{served.base}/api/login", json=body) as r,
    ):
        return r.status


async def test_a_full_card_delays_the_audit_and_spares_the_consoles(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    with ext4_card(tmp_path) as card:
        state = card / "state"
        token = make_state(state)
        secret = totp.new_secret()
        UserStore(state).set_totp("admin", secret)
        served = Served(write_config(tmp_path, state, pty_device.path), token)
        await served.start()
        try:
            await served.wait_port("lab", lambda p: p["online"])
            filler = fill(card)
            async with served.session() as s:
                ws = await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro")
                reader = WsReader(ws)  # the attach event cannot be written
                await reader.message("hello")
                out = b"".join(b"output on a full card %d\r\n" % i for i in range(400))
                pty_device.write(out)  # more than the ring's blocks: they are preallocated
                await reader.until(lambda r: bytes(r.data) == out)
                health = await wait_health(served, "audit", False)
                assert "No space left" in health["storage"]["audit"]["error"]
                assert await login(served, secret) == 200  # its TOTP step: kept in memory
                assert health["storage"]["log:lab"]["ok"] is True  # preallocated: unaffected
                errors = [x for x in served.lines if "No space left" in x]
                assert len(errors) == 2, errors  # once per store: the audit, the users file
                assert "audit log" in errors[0] and "TOTP step" in errors[1]
                filler.unlink()  # space again: the waiting events are written
                await ws.close()
                await wait_health(served, "audit", True)
            connections = (state / "audit" / "connections.jsonl").read_text()
            assert '"attach"' in connections and '"detach"' in connections
            async with (
                served.session() as s,
                s.get(f"{served.base}/api/ports/lab/log?format=raw") as r,
            ):
                assert (await r.read()).endswith(out)
        finally:
            assert await served.stop() == 0


async def test_a_card_turning_read_only_under_the_daemon(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    """ext4 errors=remount-ro, as a failing card does: every write fails with EROFS from then
    on. The consoles carry on, history stays readable, each store's fault is logged once, and
    the daemon still stops cleanly."""
    with ext4_card(tmp_path) as card:
        state = card / "state"
        token = make_state(state)
        secret = totp.new_secret()
        UserStore(state).set_totp("admin", secret)
        served = Served(write_config(tmp_path, state, pty_device.path), token)
        await served.start()
        try:
            await served.wait_port("lab", lambda p: p["online"])
            async with served.session() as s:
                ws = await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro")
                reader = WsReader(ws)
                await reader.message("hello")
                card_error(card)
                out = b"".join(b"after the card failed %d\r\n" % i for i in range(400))
                pty_device.write(out)
                await reader.until(lambda r: bytes(r.data) == out)
                health = await wait_health(served, "log:lab", False)
                assert "Read-only file system" in health["storage"]["log:lab"]["error"]
                assert await login(served, secret) == 200
                await ws.close()
                await wait_health(served, "audit", False)
                async with s.get(f"{served.base}/api/ports/lab/log?from=-100000&format=raw") as r:
                    assert await r.read() == out  # from memory: the failed blocks are kept
            await served.wait_line("ring log")
            errors = [x for x in served.lines if "Read-only file system" in x]
            assert len(errors) == 3, errors  # once per store: the ring log, the audit, users
            assert "ring log" in errors[0] and "TOTP step" in errors[1] and "audit" in errors[2]
        finally:
            assert await served.stop() == 0


async def test_start_on_a_read_only_state_dir_is_one_clear_error(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    """After a run that made every file (a restart after the card went read-only)."""
    with ext4_card(tmp_path) as card:
        state = card / "state"
        config = write_config(tmp_path, state, pty_device.path)
        served = Served(config, make_state(state))
        await served.start()
        assert await served.stop() == 0
        remount_read_only(card)
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0] == (
            f"serial-bridge: cannot start: {config}: server.state_dir: {state}: Read-only file "
            "system (the bridge writes its console logs, audit trail and TLS key there)"
        )
