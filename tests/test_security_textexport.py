"""Output to operators' terminals: escape sequences a (hostile) target prints — DECRQSS, OSC 52
clipboard writes, a C1 CSI — never reach a text export, through the real log API and through
the `serial-bridge log` command; `--raw` is the explicit way to get them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

from tests.conftest import Bridge, PtyDevice
from tests.test_security_support import ROOT

HOSTILE = (
    b"login: \x1bP$qm\x1b\\"  # DECRQSS: asks the terminal to answer (answer-back injection)
    b"\x1b]52;c;cm0gLXJmIC8K\x07"  # OSC 52: write the operator's clipboard
    b"\xc2\x9b31m"  # C1 CSI (U+009B) in UTF-8
    b"\x9b2J"  # a raw 8-bit CSI byte
    b"\x1b[2J\x1b]0;title\x1b\\"  # CSI erase screen, OSC title
    b"\x90q\x9c\x9d"  # raw DCS, ST, OSC bytes
    b"\x07\x7f\r\nend\n"
)
_DANGER = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _assert_safe(text: str) -> None:
    assert "\x1b" not in text
    assert not _DANGER.search(text), repr(_DANGER.search(text))
    assert "\\x1b]52;c;cm0gLXJmIC8K\\x07" in text  # shown, visibly, as text
    assert "\\x1bP$qm\\x1b\\" in text
    assert "\\u009b31m" in text
    assert text.endswith("end\n")


async def _target_prints(bridge: Bridge, pty_device: PtyDevice) -> None:
    assert bridge.daemon.state is not None
    port = bridge.daemon.state.ports["lab"]
    before = port.offset
    await pty_device.awrite(HOSTILE)
    for _ in range(500):
        if port.offset >= before + len(HOSTILE):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the bridge did not read the target's output")


async def test_text_export_through_the_log_api_is_neutralised(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    await _target_prints(bridge, pty_device)
    async with bridge.session(token_user="viewer") as s:
        async with s.get(f"{bridge.base}/api/ports/lab/log?from=0&format=text") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            body = await r.read()
        async with s.get(f"{bridge.base}/api/ports/lab/log?from=0&format=raw") as r:
            raw = await r.read()
        async with s.get(f"{bridge.base}/api/ports/lab/log?from=0&format=jsonl") as r:
            jsonl = (await r.read()).decode("utf-8")
    assert raw == HOSTILE  # control: the target really printed it all
    _assert_safe(body.decode("utf-8"))
    assert not _DANGER.search(jsonl.replace("\n", ""))  # jsonl as printed: no raw controls
    _assert_safe("".join(json.loads(line)["text"] for line in jsonl.splitlines()))


def _cli_log(bridge: Bridge, *extra: str) -> bytes:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SERIAL_BRIDGE_TOKEN": bridge.tokens["viewer"],
        "HOME": str(bridge.state_dir),
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "bridge", "log", f"{bridge.base}/lab", "--from", "0",
            "--fingerprint", bridge.daemon.fingerprint, *extra,
        ],
        capture_output=True, env=env, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_cli_log_viewer_neutralises_unless_raw(bridge: Bridge, pty_device: PtyDevice) -> None:
    await _target_prints(bridge, pty_device)
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, _cli_log, bridge)
    _assert_safe(text.decode("utf-8"))
    raw = await loop.run_in_executor(None, _cli_log, bridge, "--raw")
    assert raw == HOSTILE


async def test_strip_gives_readable_text_through_the_api_and_the_cli(
    bridge: Bridge, pty_device: PtyDevice
) -> None:
    await _target_prints(bridge, pty_device)
    # what the strip mode leaves: the text, none of the sequences, no controls
    readable = "login: 31m\ufffd2J\ufffdq\ufffd\ufffd\nend\n"  # (C1 CSI: only the control goes)
    async with bridge.session(token_user="viewer") as s:
        async with s.get(f"{bridge.base}/api/ports/lab/log?from=0&format=text&strip=1") as r:
            assert r.status == 200
            assert (await r.read()).decode() == readable
        async with s.get(f"{bridge.base}/api/ports/lab/log?from=0&format=raw&strip=1") as r:
            assert r.status == 400
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, _cli_log, bridge, "--strip")
    assert text.decode() == readable
