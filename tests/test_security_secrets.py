"""Secrets never in logs or on disk in the clear: every flow run with all log handlers captured
(root logger at DEBUG, the access log, the audit trail, every file in state_dir); a forced 500;
file modes. Also: no default credentials (`serve` refuses with no users; `demo` invents one)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.access import totp
from bridge.access.store import UserStore
from tests.conftest import PASSWORDS, Bridge, BridgeFactory, PtyDevice, WsReader, wait_for
from tests.test_security_support import (
    ROOT,
    acli,
    acli_totp,
    cli,
    cli_totp,
    client_tls,
    cookie_of,
    login,
    write_cli_config,
)


def _all_text(state_dir: Path) -> str:
    """Every byte of every file under state_dir, as text (binary files decoded leniently)."""
    out = []
    for path in sorted(state_dir.rglob("*")):
        if path.is_file():
            out.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


async def test_every_flow_leaves_no_secret_in_logs_or_files(
    bridge: Bridge,
    pty_device: PtyDevice,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger and everything under it, aiohttp included
    assert bridge.daemon.state is not None
    state = bridge.daemon.state
    secrets: set[str] = set(PASSWORDS.values()) | set(bridge.tokens.values())
    config = write_cli_config(bridge.state_dir, tmp_path / "cli.toml")
    enrolled, _ = await acli_totp(config, "admin")
    assert enrolled.returncode == 0
    totp_secret = UserStore(bridge.state_dir).get("admin").totp_secret  # type: ignore[union-attr]
    assert totp_secret
    secrets.add(totp_secret)

    # login: failed (password), failed (TOTP), ok with TOTP; token use; websockets; actions
    code = totp.code_at(totp_secret, time.time())
    wrong_code = "000000" if code != "000000" else "111111"
    secrets |= {code, "not-the-password-9"}
    async with bridge.session() as s:
        assert (await login(bridge, s, "admin", password="not-the-password-9"))[0] == 401
        assert (await login(bridge, s, "admin", totp=wrong_code))[0] == 401
        status, body = await login(bridge, s, "admin", totp=code)
        assert status == 200
        csrf = body["csrf"]
        admin_cookie = cookie_of(s)
        secrets |= {csrf, admin_cookie}
        assert (await login(bridge, s, "operator"))[0] == 200  # a second login: a new id
        secrets |= {cookie_of(s)}
        op_csrf = (await login(bridge, s, "operator"))[1]["csrf"]
        secrets |= {cookie_of(s), op_csrf}
        ws = await bridge.ws(s, "lab", mode="rw")
        r = WsReader(ws)
        await r.message("hello")
        await ws.send_bytes(b"echo keystrokes\r")
        await pty_device.read_until(lambda b: b"keystrokes" in b)
        await ws.send_str(json.dumps({"type": "break"}))
        await r.message("error")  # (this test's UART is a pty, which cannot carry a BREAK)
        async with s.post(
            f"{bridge.base}/api/ports/lab/sysrq",
            json={"keys": "h"},
            headers={"X-CSRF-Token": op_csrf},
        ) as resp:
            assert resp.status == 501
        # credentials offered in query strings must not reach the access log either
        for q in (f"token={bridge.tokens['admin']}", f"session={cookie_of(s)}", f"totp={code}"):
            async with s.get(f"{bridge.base}/api/whoami?{q}") as resp:
                assert resp.status == 200
        async with s.post(f"{bridge.base}/api/logout", headers={"X-CSRF-Token": op_csrf}) as resp:
            assert resp.status == 200
        await ws.close()
    async with bridge.session(token_user="operator") as t:
        ws = await bridge.ws(t, "lab", mode="rw")
        await WsReader(ws).message("hello")
        await ws.close()
        async with t.post(f"{bridge.base}/api/ports/lab/break") as resp:
            assert resp.status == 501

        # a forced 500 with a token and a cookie on the request
        async def boom(user: str) -> None:
            raise RuntimeError("something broke inside")

        monkeypatch.setattr(state.ports["lab"], "send_break", boom)
        async with t.post(
            f"{bridge.base}/api/ports/lab/break",
            headers={"Cookie": f"__Host-sb_session={admin_cookie}"},
        ) as resp:
            assert resp.status == 500
            body500 = await resp.text()
    assert "internal error" in body500
    # the CLI flows too (their audit lines land in the same trail)
    new_password = "a-new-password-77"
    secrets.add(new_password)
    done = await acli(
        "user", "passwd", "viewer", "--password-stdin", "--config", str(config),
        stdin=f"{new_password}\n",
    )  # fmt: skip
    assert done.returncode == 0
    made = await acli("token", "create", "viewer", "--config", str(config))
    secrets.add(made.stdout.strip())
    await asyncio.sleep(0.6)  # a watcher pass

    logged = caplog.text + "\n".join(
        f"{rec.getMessage()} {rec.args!r} {rec.exc_text or ''}" for rec in caplog.records
    )
    assert "internal error in POST /api/ports/lab/break" in logged  # the 500 was logged
    assert any(rec.name == "aiohttp.access" for rec in caplog.records)  # access log captured
    on_disk = _all_text(bridge.state_dir)
    assert '"event": "login"' in on_disk  # the audit trail is there
    for secret in sorted(secrets):
        assert len(secret) >= 6
        assert secret not in logged, f"secret in the logs: {secret[:4]}..."
        if secret != totp_secret:  # the TOTP seed must be stored (users.json, 0600) to verify
            assert secret not in on_disk, f"secret on disk: {secret[:4]}..."
        assert secret not in body500
    assert "?" not in "".join(
        rec.getMessage() for rec in caplog.records if rec.name == "aiohttp.access"
    )  # no query strings at all in the access log
    for rec in caplog.records:
        assert "Authorization" not in rec.getMessage() and "Cookie" not in rec.getMessage()


def test_state_files_are_private(tmp_path: Path) -> None:
    config = write_cli_config(tmp_path / "state", tmp_path / "c.toml")
    assert (
        cli(
            "user", "add", "a", "--password-stdin", "--config", str(config), stdin="pw-123456\n"
        ).returncode
        == 0
    )
    assert cli("token", "create", "a", "--config", str(config)).returncode == 0
    assert cli_totp(config, "a")[0].returncode == 0
    state = tmp_path / "state"
    for name in ("users.json", "tokens.json", "audit/audit.jsonl"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "audit").stat().st_mode) == 0o700


async def test_key_log_and_state_dir_modes_of_a_running_daemon(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}},
        log={"enabled": True, "size": "1MiB", "flush_interval": "10ms"},
    )
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].online)
    pty_device.write(b"Password: hunter2\r\n")  # targets print secrets too: the log is private
    await wait_for(lambda: b.daemon.state is not None and b.daemon.state.ports["lab"].offset > 0)
    tls = b.state_dir / "tls"
    assert stat.S_IMODE((tls / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    assert (b.state_dir / "logs" / "lab.ring").exists()
    checked = 0
    for path in b.state_dir.rglob("*"):
        if path.name != "cert.pem":
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
            checked += 1
    assert checked >= 6


def test_serve_refuses_to_start_without_users(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path / "state"}"\n')
    done = cli("serve", "--config", str(config), timeout=30)
    assert done.returncode != 0
    assert "no users" in done.stderr and "serial-bridge user add" in done.stderr
    assert not (tmp_path / "state" / "users.json").exists()


def _run_demo() -> tuple[str, str, int, int]:
    """Start `serial-bridge demo`, read its URL and password, try them (and a guess), stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = password = ""
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while not (url and password) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if m := re.search(r"browser:\s+(https://\S+?)/", line):
                url = m.group(1)
            if m := re.search(r"password:\s+(\S+)", line):
                password = m.group(1)
        assert url and password, "demo did not print a URL and a password"
        ok = asyncio.run(_try_login(url, password))
        guessed = asyncio.run(_try_login(url, "admin"))
        return url, password, ok, guessed
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def _try_login(url: str, password: str) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls())) as s,
        s.post(f"{url}/api/login", json={"username": "admin", "password": password}) as r,
    ):
        return r.status


def test_demo_invents_a_random_one_time_password() -> None:
    url1, pw1, ok, guessed = _run_demo()
    _, pw2, _, _ = _run_demo()
    assert (ok, guessed) == (200, 401)
    assert pw1 != pw2 and len(pw1) >= 16
    assert pw1 not in ("admin", "password", "serial-bridge")
    assert url1.startswith("https://127.0.0.1:")
