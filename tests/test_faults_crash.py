"""The history after a crash (#14): a real `serve` killed with SIGKILL after its log was flushed,
then restarted. The last N bytes (`from=-N`) are the last N bytes held, across the offsets the
restart skipped; the API, `serial-bridge log`, `serial-bridge connect` and the websocket all show
the output from before the crash, and a read across the hole reports it as a gap."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from bridge.history.ringlog import CRASH_GAP
from tests.conftest import PtyDevice, WsReader
from tests.served import CLI, Served, make_state
from tests.test_cli import PtyScreen

BEFORE = b"[  12.345678] Kernel panic - not syncing: the last words\r\n"


async def wait_in_file(path: Path, needle: bytes, timeout: float = 20) -> None:
    """Wait until `needle` is in the ring file (the page cache: what a kill -9 keeps)."""
    async with asyncio.timeout(timeout):
        while needle not in path.read_bytes():
            await asyncio.sleep(0.05)


async def log_of(served: Served, query: str) -> tuple[str, bytes]:
    """(X-Log-From, body) of GET /api/ports/lab/log?QUERY."""
    async with served.session() as s, s.get(f"{served.base}/api/ports/lab/log?{query}") as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Log-From"], await r.read()


async def cli_log(served: Served, *args: str) -> bytes:
    env = {**os.environ, "SERIAL_BRIDGE_TOKEN": served.token, "XDG_CONFIG_HOME": "/nonexistent"}
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "log",
        f"{served.base}/lab",
        "--fingerprint",
        served.fingerprint,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    return out


def served_lab(tmp_path: Path, state: Path, pty_device: PtyDevice, flush: str) -> Served:
    """`serve` (not started) with one port, `lab`, on the pty, its log flushed every `flush`."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[log]\nflush_interval = "{flush}"\n[ports.lab]\ndevice = "{pty_device.path}"\n'
    )
    return Served(config, make_state(state))


async def test_kill_9_then_restart_shows_the_output_from_before_the_crash(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    state = tmp_path / "state"
    served = served_lab(tmp_path, state, pty_device, "100ms")
    await served.start()
    await served.wait_port("lab", lambda p: p["online"])
    pty_device.write(b"booting\r\n" + BEFORE)
    await served.wait_port("lab", lambda p: p["offset"] == 9 + len(BEFORE))
    ring = state / "logs" / "lab.ring"
    await wait_in_file(ring, BEFORE)
    assert await served.stop(signal.SIGKILL) == -signal.SIGKILL

    await served.start()
    try:
        port = await served.wait_port("lab", lambda p: p["online"])
        restart = port["offset"]
        assert restart == 9 + len(BEFORE) + CRASH_GAP  # offsets are never reused

        # the API: the last N bytes are the ones held, before the hole
        start, body = await log_of(served, f"from=-{len(BEFORE)}&format=raw")
        assert (start, body) == ("9", BEFORE)
        start, body = await log_of(served, "from=-4096&format=raw")
        assert (start, body) == ("0", b"booting\r\n" + BEFORE)
        assert "was not closed cleanly" in await served.wait_line("not closed cleanly")
        # an offset inside the hole starts after it: at the live end, nothing held there yet
        start, body = await log_of(served, f"from={restart - 1}&format=raw")
        assert (start, body) == (str(restart), b"")

        # the CLI log and the websocket
        assert b"Kernel panic - not syncing: the last words" in await cli_log(
            served, "--from=-4096"
        )
        async with served.session() as s:
            url = f"{served.base}/api/ports/lab/console?mode=ro&from=-{len(BEFORE)}"
            ws = await s.ws_connect(url)
            reader = WsReader(ws)
            hello = await reader.message("hello")
            assert hello["from"] == 9
            await reader.until(lambda r: bytes(r.data) == BEFORE)

            # new output after the restart: a read across the hole reports the gap
            pty_device.write(b"after the restart\r\n")
            await reader.message("gap", **{"from": 9 + len(BEFORE), "to": restart})
            await reader.until(lambda r: bytes(r.data) == BEFORE + b"after the restart\r\n")
            await ws.close()
        start, body = await log_of(served, "from=-4096&format=raw")
        assert (start, body) == ("0", b"booting\r\n" + BEFORE + b"after the restart\r\n")
        _, text = await log_of(served, "from=-4096&format=text")
        assert (
            f"the last words\n\n[serial-bridge: output missing here: offsets "
            f"{9 + len(BEFORE)}..{restart} are not held]\nafter the restart".encode()
            in text
        )
        _, jsonl = await log_of(served, "from=-4096&format=jsonl")
        lines = [json.loads(line) for line in jsonl.splitlines()]
        gap = {"offset": 9 + len(BEFORE), "event": "gap", "to": restart}
        assert gap in lines
        stop = next(x for x in lines if x.get("event") == "unclean-stop")
        assert (stop["from"], stop["to"]) == (9 + len(BEFORE), restart)
        assert lines.index(gap) < lines.index(stop)

        # connect replays the output from before the crash
        screen = PtyScreen()
        env = {**os.environ, "SERIAL_BRIDGE_TOKEN": served.token, "XDG_CONFIG_HOME": "/x"}
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "connect",
            f"{served.base}/lab",
            "--read-only",
            "--fingerprint",
            served.fingerprint,
            stdin=screen.slave,
            stdout=screen.slave,
            stderr=screen.slave,
            env=env,
        )
        try:
            await screen.until(b"the last words")
            await screen.until(b"after the restart")
            screen.type(b"\r~.")
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            screen.close()
    finally:
        assert await served.stop() == 0


async def test_kill_9_before_the_first_flush_after_a_clean_restart_reuses_no_offset(
    tmp_path: Path, pty_device: PtyDevice
) -> None:
    """Stopped cleanly, started again, killed before any of its output reached the card (the
    first flush interval): the next start still says the log was not closed cleanly, and the
    offsets the killed daemon handed out are not handed out again (its open record, on the card
    before it handed out any)."""
    state = tmp_path / "state"
    ring = state / "logs" / "lab.ring"
    served = served_lab(tmp_path, state, pty_device, "1h")
    await served.start()
    await served.wait_port("lab", lambda p: p["online"])
    pty_device.write(BEFORE)
    await served.wait_port("lab", lambda p: p["offset"] == len(BEFORE))
    assert await served.stop() == 0  # clean: flushed, closed

    await served.start()
    await served.wait_port("lab", lambda p: p["online"] and p["offset"] == len(BEFORE))
    pty_device.write(b"never on the card\r\n")
    handed_out = len(BEFORE) + len(b"never on the card\r\n")
    await served.wait_port("lab", lambda p: p["offset"] == handed_out)
    assert b"never on the card" not in ring.read_bytes()
    assert await served.stop(signal.SIGKILL) == -signal.SIGKILL

    await served.start()
    try:
        port = await served.wait_port("lab", lambda p: p["online"])
        assert port["offset"] == len(BEFORE) + CRASH_GAP >= handed_out
        assert f"output received after offset {len(BEFORE)} may be lost" in await served.wait_line(
            "not closed cleanly"
        )
        start, body = await log_of(served, "from=-4096&format=raw")
        assert (start, body) == ("0", BEFORE)
        _, jsonl = await log_of(served, "from=0&format=jsonl&events=1")
        stops = [x for x in map(json.loads, jsonl.splitlines()) if x["event"] == "unclean-stop"]
        assert [(x["from"], x["to"]) for x in stops] == [(len(BEFORE), len(BEFORE) + CRASH_GAP)]
    finally:
        assert await served.stop() == 0
