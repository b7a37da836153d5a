"""The events held, as the timeline reads them: `/log?format=jsonl&events=1` (markers only, in
offset order) and `serial-bridge log URL --events` (one line each), on a real daemon with a pty
target and the ring log on. (The console page's strip: test_browser.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.conftest import BridgeFactory, PtyDevice, WsReader, wait_for

CLI = [sys.executable, "-m", "bridge"]
PANIC = b"[   12.3] Kernel panic - not syncing: Attempted to kill init!\r\n"


async def test_events_only_and_the_cli_prints_one_line_each(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path)}}, log={"enabled": True, "size": "256KiB"}
    )
    await wait_for(lambda: b.port is not None and b.port.online)
    async with b.session("viewer") as viewer:
        reader = WsReader(await b.ws(viewer, "lab"))
        await reader.message("hello")
        await pty_device.awrite(b"x" * 5000 + b"\r\n[ 0.0] Linux version 6.1\r\n" + PANIC)
        await pty_device.awrite(b"\r\nhost login: ")
        await reader.until(lambda r: sum(m.get("event") == "alert" for m in r.messages) == 2)
        async with viewer.get(f"{b.base}/api/ports/lab/log?format=jsonl&events=1") as resp:
            assert resp.status == 200
            events = [json.loads(line) for line in (await resp.text()).splitlines()]
        async with viewer.get(f"{b.base}/api/ports/lab/log?format=text&events=1") as resp:
            assert resp.status == 400
    assert [e["event"] for e in events] == ["online", "alert", "alert"]
    assert all("text" not in e for e in events)
    assert [e["rule"] for e in events[1:]] == ["kernel-panic", "booted"]
    assert events[1]["at"] == 5000 + 2 + len(b"[ 0.0] Linux version 6.1\r\n")

    env = {**os.environ, "SERIAL_BRIDGE_TOKEN": b.tokens["viewer"]}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "log", f"{b.base}/lab", "--events", "--fingerprint", b.daemon.fingerprint,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3 and lines[0].split()[-1] == "online"
    assert lines[1].split()[1] == str(events[1]["at"])
    assert "alert kernel-panic (critical): [   12.3] Kernel panic - not syncing" in lines[1]
    assert "alert booted (info) (boot took" in lines[2]
