"""The daemon's event loop: uvloop's where installed, else asyncio's; SERIAL_BRIDGE_LOOP chooses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.service import eventloop
from tests.served import Served, make_state


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_asyncio_by_default_where_uvloop_is_not_installed() -> None:
    """32-bit Raspberry Pi OS has no uvloop wheel: the daemon runs on asyncio's loop there."""
    script = (
        "import sys; sys.modules['uvloop'] = None  # as if not installed\n"
        "import asyncio; from bridge.service import eventloop\n"
        "async def main(): return type(asyncio.get_running_loop()).__module__\n"
        "print(eventloop.chosen(), eventloop.run(main()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != eventloop.ENV}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["asyncio", "asyncio.unix_events"]


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_uvloop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    assert eventloop.run(_loop_module()).startswith("uvloop")


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_an_unknown_loop_stops_serve_and_demo_with_one_line(tmp_path: Path, command: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    subprocess.run(
        [sys.executable, "-m", "bridge", "user", "add", "a", "--role", "admin",
         "--password-stdin", "--config", str(config)],
        input="admin-pass-1\n", text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "bridge", command]
        + (["--config", str(config)] if command == "serve" else []),
        env={**os.environ, eventloop.ENV: "tokio"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "serial-bridge: cannot start: SERIAL_BRIDGE_LOOP=tokio: expected one of asyncio, uvloop"
    )


async def test_the_suite_runs_on_the_loop_asked_for() -> None:
    """The in-process tests run on the loop the daemons they start choose (tests/conftest.py):
    uvloop by default where installed, asyncio's under `SERIAL_BRIDGE_LOOP=asyncio pytest` (a
    pass of `./dev test`), never silently on the other one."""
    wanted = eventloop.chosen()
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == wanted


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
async def test_serve_says_which_loop_it_runs_on(tmp_path: Path, choice: str) -> None:
    """The first thing to know when a problem might be the loop's: one line once it listens."""
    if choice == "uvloop":
        pytest.importorskip("uvloop")
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n')
    served = Served(config, make_state(state))
    await served.start(env={eventloop.ENV: choice})
    try:
        assert served.count(f"event loop: {choice}") == 1
    finally:
        assert await served.stop() == 0


def test_the_demo_runs_on_the_loop_serve_runs_on() -> None:
    wanted = eventloop.chosen()
    demo = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stderr is not None
        seen = []
        for line in demo.stderr:  # ends when the demo exits: bounded
            seen.append(line)
            if "listening on https://" in line:
                break
        assert sum(f"event loop: {wanted}" in line for line in seen) == 1, seen
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate()
            raise AssertionError("the demo did not stop on SIGINT") from None
