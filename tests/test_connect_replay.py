"""Replay on attach (#17): the console websocket's `replay=N` starts at a line start within the
last N bytes; `serial-bridge connect` shows that much history (`--replay`), then live output, and
after a dropped link resumes exactly where it stopped (nothing replayed twice)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.conftest import Bridge, BridgeFactory, PtyDevice, WsReader, wait_for
from tests.test_cli import PtyScreen


async def attach(bridge: Bridge, **query: str) -> tuple[dict[str, object], WsReader]:
    async with bridge.session("viewer") as http:
        ws = await bridge.ws(http, "lab", mode="ro", **query)
        reader = WsReader(ws)
        hello = await reader.message("hello")
        await reader.pump(0.2)
        await ws.close()
    return hello, reader


async def test_replay_starts_at_a_line_start(bridge: Bridge, pty_device: PtyDevice) -> None:
    port = bridge.port
    pty_device.write(b"alpha line\r\nbeta line\r\ngamma")
    await wait_for(lambda: port.offset == 28)

    hello, reader = await attach(bridge, replay="20")  # the last 20 bytes start inside "alpha"
    assert hello["from"] == 12
    assert bytes(reader.data) == b"beta line\r\ngamma"

    hello, reader = await attach(bridge, replay="16")  # starts just after a newline: kept
    assert hello["from"] == 12 and bytes(reader.data).startswith(b"beta")

    hello, reader = await attach(bridge, replay="1000")  # more than there is: from the start
    assert hello["from"] == 0 and bytes(reader.data).startswith(b"alpha")

    hello, reader = await attach(bridge, replay="4")  # no line start among them: all of them
    assert hello["from"] == 24 and bytes(reader.data) == b"amma"

    hello, reader = await attach(bridge, replay="0")  # live output only
    assert hello["from"] == 28 and reader.data == b""

    async with bridge.session("viewer") as http:
        for query in ("replay=10&from=0", "replay=-1", "replay=lots"):
            url = f"{bridge.base}/api/ports/lab/console?{query}"
            async with http.get(url, headers={"Upgrade": "websocket"}) as resp:
                assert resp.status == 400, query


async def test_connect_replays_then_goes_live_and_resumes_exactly(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    bridge = await bridge_factory(ports={"demo": {"device": "virtual:shell"}})
    await wait_for(lambda: bridge.port is not None and bridge.port.online)
    async with bridge.session("operator") as http:
        ws = await bridge.ws(http, "demo", mode="rw")
        shell = WsReader(ws)
        await shell.message("hello")
        await ws.send_bytes(b"for i in $(seq 1 300); do echo line-$i; done\r")
        await shell.until(lambda r: b"line-300\r\n" in r.data)

        screen = PtyScreen()
        proc = await screen.connect_to(
            bridge,
            "demo",
            bridge.tokens["viewer"],
            tmp_path / "xdg",
            "--read-only",
            "--replay",
            "200",
        )
        await screen.until(b"line-300\r\n")
        shown = bytes(screen.seen).split(b"~? for help\r\n", 1)[1]
        first = shown.split(b"\r\n", 1)[0]
        assert re.fullmatch(rb"line-\d+", first), shown[:40]  # a whole line, not a tail
        assert len(shown) <= 200

        # live output follows the replay
        await ws.send_bytes(b"echo live-$((6*7))\r")
        await screen.until(b"live-42")

        # the link drops; output meanwhile is shown once the client is back, history is not
        state = bridge.daemon.state
        assert state is not None
        for session in state.consoles.of(user="viewer"):
            await session.ws.close(code=1012, message=b"restarting")  # type: ignore[attr-defined]
        await ws.send_bytes(b"echo after-$((3+4))\r")
        await screen.until(b"reconnecting")
        await screen.until(b"after-7")
        assert screen.seen.count(b"line-300\r\n") == 1, "history replayed again after reconnect"
        assert screen.seen.count(b"live-42") == 1
        screen.type(b"\r~.")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        screen.close()
        await ws.close()


async def test_connect_replay_zero_shows_only_live_output(
    bridge: Bridge, pty_device: PtyDevice, tmp_path: Path
) -> None:
    pty_device.write(b"old news\r\n")
    await wait_for(lambda: bridge.port.offset == 10)
    screen = PtyScreen()
    proc = await screen.connect_to(
        bridge, "lab", bridge.tokens["viewer"], tmp_path / "xdg", "--read-only", "--replay", "0"
    )
    await screen.until(b"~? for help")
    pty_device.write(b"fresh\r\n")
    await screen.until(b"fresh\r\n")
    assert b"old news" not in screen.seen
    screen.type(b"\r~.")
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    screen.close()
