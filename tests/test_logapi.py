"""The console history API over real TLS: raw/text/jsonl, from/since, follow, ring-log fallback."""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib

from bridge.access.store import UserStore
from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, user_hash, wait_for


async def _logged_bridge(bridge_factory: BridgeFactory, pty_device: PtyDevice) -> Bridge:
    b = await bridge_factory(
        ports={"lab": {"device": str(pty_device.path), "baud": 4_000_000, "scrollback": "64KiB"}},
        log={"enabled": True, "size": "1MiB", "flush_interval": "1s"},
    )
    await wait_for(lambda: b.port.online)
    return b


async def test_raw_text_and_tail(bridge_factory: BridgeFactory, pty_device: PtyDevice) -> None:
    b = await _logged_bridge(bridge_factory, pty_device)
    pty_device.write(b"boot: ok\r\n\x1b]0;owned\x07\x1b[2Jlogin: ")
    await wait_for(lambda: b.port.offset == 31)
    async with b.session("viewer") as s:
        raw = await s.get(f"{b.base}/api/ports/lab/log?format=raw")
        assert raw.headers["X-Log-From"] == "0"
        assert await raw.read() == b"boot: ok\r\n\x1b]0;owned\x07\x1b[2Jlogin: "
        text = await (await s.get(f"{b.base}/api/ports/lab/log?format=text")).text()
        assert text.startswith("boot: ok\n") and "\x1b" not in text and "\x07" not in text
        assert "login: " in text
        tail = await s.get(f"{b.base}/api/ports/lab/log?format=raw&from=-7")
        assert tail.headers["X-Log-From"] == "24" and await tail.read() == b"login: "


async def test_history_older_than_scrollback_comes_from_the_ring_log(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _logged_bridge(bridge_factory, pty_device)
    payload = os.urandom(300 * 1024)  # more than the 64 KiB kept in memory
    await pty_device.awrite(payload)
    await wait_for(lambda: b.port.offset == len(payload))
    assert b.port.scrollback is None  # history in one place: the ring log
    async with b.session("viewer") as s:
        got = await (await s.get(f"{b.base}/api/ports/lab/log?format=raw&from=0")).read()
        assert zlib.crc32(got) == zlib.crc32(payload)
        r = WsReader(await b.ws(s, "lab", mode="ro", **{"from": 0}))
        hello = await r.message("hello")
        assert hello["from"] == 0
        await r.until(lambda r: len(r.data) >= len(payload), timeout=30)
        assert zlib.crc32(r.data) == zlib.crc32(payload)
        assert not [m for m in r.messages if m["type"] == "gap"]


async def test_follow_streams_new_output(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _logged_bridge(bridge_factory, pty_device)
    pty_device.write(b"first\r\n")
    await wait_for(lambda: b.port.offset == 7)
    async with b.session("viewer") as s:
        resp = await s.get(f"{b.base}/api/ports/lab/log?format=raw&follow=1")
        assert await resp.content.readexactly(7) == b"first\r\n"
        pty_device.write(b"second\r\n")
        assert await asyncio.wait_for(resp.content.readexactly(8), 10) == b"second\r\n"
        resp.close()


async def test_since_and_jsonl_markers(bridge_factory: BridgeFactory, tmp_path: object) -> None:
    b = await bridge_factory(
        ports={"vm": {"device": "virtual:shell"}},
        log={"enabled": True, "size": "1MiB"},
    )
    await wait_for(lambda: b.port.online)
    await wait_for(lambda: b.port.offset > 0)  # the shell's first prompt
    cut = time.time()
    await asyncio.sleep(1.1)  # the ring log keeps times at 1 s resolution
    async with b.session("operator") as s:
        r = WsReader(await b.ws(s, "vm", mode="rw"))
        await r.message("hello")
        await r.ws.send_bytes(b"echo MARK$((6*7))\r")
        await r.until(lambda r: b"MARK42" in r.data)
        resp = await s.post(f"{b.base}/api/ports/vm/sysrq", json={"keys": "h"})
        assert resp.status == 200, await resp.text()
        since = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1000):03d}Z"
        )
        text = await (await s.get(f"{b.base}/api/ports/vm/log?format=text&since={since}")).text()
        assert "MARK42" in text and "demo$" in text
        lines = [
            json.loads(x)
            for x in (await (await s.get(f"{b.base}/api/ports/vm/log?format=jsonl")).text())
            .strip()
            .splitlines()
        ]
        events = [x for x in lines if x.get("event") == "sysrq"]
        assert events and events[0]["user"] == "operator" and events[0]["keys"] == "h"
        offsets = [x["offset"] for x in lines]
        assert offsets == sorted(offsets)


async def test_viewer_reads_logs_of_its_ports_only(
    bridge_factory: BridgeFactory, pty_device: PtyDevice
) -> None:
    b = await _logged_bridge(bridge_factory, pty_device)
    users = UserStore(b.state_dir)
    users.add("limited", "viewer", user_hash("viewer"), ["elsewhere"])
    b.tokens["limited"] = users.create_token("limited", "t")
    async with b.session("limited") as s:
        assert (await s.get(f"{b.base}/api/ports/lab/log")).status == 404
        assert await (await s.get(f"{b.base}/api/ports")).json() == []
    async with b.session("viewer") as s:
        assert (await s.get(f"{b.base}/api/audit")).status == 403
    async with b.session("admin") as s:
        audit = await (await s.get(f"{b.base}/api/audit")).json()
        assert isinstance(audit, list)
