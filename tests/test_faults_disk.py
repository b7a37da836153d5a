"""Write errors (#14, faults 1): a real `serve` under libfiu (`fiu-run`, Debian fiu-utils) whose
ring-log writes, fdatasync, audit writes and state-file syncs fail with EIO/ENOSPC while it runs.
Consoles keep serving live; each fault is reported once (a log line, `/api/ports` and
`/api/health` for admins, `/metrics`), retried, and recovered when writes work again; nothing
the retries could keep is lost; the users file is never half-written."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from bridge.access import totp
from bridge.access.store import UserStore
from tests.conftest import PASSWORDS, PtyDevice, WsReader
from tests.served import CLI, Served, fiu_ctrl, fiu_wrapper, make_state

EIO, ENOSPC = errno.EIO, errno.ENOSPC


def config(tmp_path: Path, state: Path, device: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[log]\nflush_interval = "100ms"\n[ports.lab]\ndevice = "{device}"\n'
    )
    return path


async def metric(served: Served, name: str, **labels: str) -> float:
    async with served.session() as s, s.get(f"{served.base}/metrics") as r:
        text = await r.text()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


async def received(reader: WsReader, n: int) -> None:
    await reader.until(lambda r: len(r.data) >= n)


async def wait_health(served: Served, store: str, ok: bool, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            got = await served.get_json("/api/health")
            if got["storage"][store]["ok"] is ok:
                return got  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)


async def test_ring_log_write_and_sync_errors_are_survived_reported_and_retried(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    state = tmp_path / "state"
    served = Served(config(tmp_path, state, pty_device.path), make_state(state))
    prefix = tmp_path / "fiu"
    await served.start(wrapper=fiu_wrapper(prefix))
    assert served.proc is not None
    pid = served.proc.pid
    try:
        await served.wait_port("lab", lambda p: p["online"])
        async with served.session() as s:
            ws = await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro")
            reader = WsReader(ws)
            await reader.message("hello")
            await fiu_ctrl(
                prefix,
                pid,
                f"enable name=posix/io/rw/pwrite,failinfo={EIO}",
                f"enable name=posix/io/sync/fdatasync,failinfo={ENOSPC}",
            )
            sent = b""
            for i in range(40):  # 40 * 500 bytes: whole blocks and flushes fail, output flows
                line = b"%03d " % i + b"x" * 494 + b"\r\n"
                pty_device.write(line)
                sent += line
                await received(reader, len(sent))  # live, throughout
            assert bytes(reader.data) == sent
            await served.wait_line("Input/output error")
            health = await wait_health(served, "log:lab", False)
            assert "failed" in health["storage"]["log:lab"]["error"]
            ports = await served.get_json("/api/ports")
            assert ports[0]["log"]["ok"] is False
            assert await metric(served, "serial_bridge_storage_ok", store="log:lab") == 0
            pty_device.write(b"more output while failing\r\n")
            sent += b"more output while failing\r\n"
            await reader.until(lambda r: len(r.data) >= len(sent))
            assert served.count("ring log") == 1  # reported once, however many writes failed

            await fiu_ctrl(
                prefix,
                pid,
                "disable name=posix/io/rw/pwrite",
                "disable name=posix/io/sync/fdatasync",
            )
            await wait_health(served, "log:lab", True)
            await served.wait_line("writes work again")
            assert await metric(served, "serial_bridge_storage_ok", store="log:lab") == 1
            assert (
                await metric(served, "serial_bridge_storage_write_failures_total", store="log:lab")
                > 2
            )
            await ws.close()
    finally:
        assert await served.stop() == 0
    await served.start()  # nothing the retries kept was lost: the file holds all of it
    try:
        async with served.session() as s, s.get(f"{served.base}/api/ports/lab/log?format=raw") as r:
            assert await r.read() == sent
    finally:
        assert await served.stop() == 0


FILE_WRITES_FAIL = (
    f"enable_stack_by_name name=posix/io/rw/write,failinfo={EIO},"
    "func_name=_Py_write,pos_in_stack=-1"
)


async def test_audit_write_errors_delay_events_and_lose_none(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    """write(2) fails (the audit trail; the daemon's own log lines too): consoles carry on, the
    events wait in memory and reach the file, in order, when writing works again.

    Only Python's file writes fail (`_Py_write` on the stack), as on a failing disk: uvloop
    (libuv) writes sockets and its signal wakeup pipe with write(2) too, where asyncio uses
    send(2), and a process-wide failure would take the network and SIGTERM down with the disk."""
    state = tmp_path / "state"
    served = Served(config(tmp_path, state, pty_device.path), make_state(state))
    prefix = tmp_path / "fiu"
    await served.start(wrapper=fiu_wrapper(prefix))
    assert served.proc is not None
    pid = served.proc.pid
    audit = state / "audit" / "connections.jsonl"  # attach/detach (bridge.history.churn)
    try:
        await served.wait_port("lab", lambda p: p["online"])
        async with served.session() as s:
            await fiu_ctrl(prefix, pid, FILE_WRITES_FAIL)
            ws = await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro")
            reader = WsReader(ws)  # its attach event cannot be written
            await reader.message("hello")
            pty_device.write(b"live while the audit disk fails\r\n")
            await reader.until(lambda r: b"audit disk fails" in r.data)
            health = await wait_health(served, "audit", False)
            assert "Input/output error" in health["storage"]["audit"]["error"]
            assert not audit.exists() or "attach" not in audit.read_text()
            await ws.close()  # detach: waits too
            await fiu_ctrl(prefix, pid, "disable name=posix/io/rw/write")
            async with s.get(f"{served.base}/api/ports/lab/log?from=-4") as r:
                assert r.status == 200
            ws = await s.ws_connect(f"{served.base}/api/ports/lab/console?mode=ro")
            await WsReader(ws).message("hello")  # the next event writes the waiting ones first
            await wait_health(served, "audit", True)
            await ws.close()
        await served.wait_line("writes work again")

        def events() -> list[str]:
            return [json.loads(line)["event"] for line in audit.read_text().splitlines()]

        async with asyncio.timeout(20):  # every event, in order: none lost, none twice
            while events()[-4:] != ["attach", "detach", "attach", "detach"]:
                await asyncio.sleep(0.05)
        assert events().count("attach") == 2
    finally:
        assert await served.stop() == 0


async def test_state_files_are_never_half_written(tmp_path: Path, pty_device: PtyDevice) -> None:
    """fsync / rename of the users file fail: a TOTP login still works (the used code is kept
    in memory, and works only once), `serial-bridge user` and `token` fail with a clear error, and
    the files are left exactly as they were, with no temporary beside them."""
    state = tmp_path / "state"
    token = make_state(state)
    secret = totp.new_secret()
    UserStore(state).set_totp("admin", secret)
    served = Served(config(tmp_path, state, pty_device.path), token)
    prefix = tmp_path / "fiu"
    await served.start(wrapper=fiu_wrapper(prefix))
    assert served.proc is not None
    users = state / "users.json"
    before = users.read_bytes()
    try:
        await fiu_ctrl(prefix, served.proc.pid, f"enable name=posix/io/sync/fsync,failinfo={EIO}")
        code = totp.code_at(secret, time.time())
        body = {"username": "admin", "password": PASSWORDS["admin"], "totp": code}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), headers={"Origin": served.base}
        ) as s:
            async with s.post(f"{served.base}/api/login", json=body) as r:
                assert r.status == 200, await r.text()
            async with s.post(f"{served.base}/api/login", json=body) as r:
                assert r.status == 401  # the same code again: refused, though not saved
        assert users.read_bytes() == before
        health = await wait_health(served, "users", False)
        assert "TOTP step" in health["storage"]["users"]["error"]
    finally:
        assert await served.stop(signal.SIGTERM) == 0
    assert sorted(p.name for p in state.iterdir() if p.name.startswith(".users.json")) == []

    tokens = state / "tokens.json"
    tokens_before = tokens.read_bytes()
    failures = [("posix/io/sync/fsync", EIO), ("posix/io/dir/rename", ENOSPC)]
    commands = [("user", "del", "admin"), ("token", "create", "admin")]
    for (point, errno_), command in itertools.product(failures, commands):
        proc = await asyncio.create_subprocess_exec(
            "fiu-run",
            "-x",
            "-f",
            "",
            "-c",
            f"enable name={point},failinfo={errno_}",
            *CLI,
            *command,
            "--config",
            str(served.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0, out
        assert os.strerror(errno_) in err.decode(), err
        assert "Traceback" not in err.decode()
        assert users.read_bytes() == before
        assert tokens.read_bytes() == tokens_before
        assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
