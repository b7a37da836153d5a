"""The daemon's event loop: asyncio's by default, uvloop when SERIAL_BRIDGE_LOOP asks for it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.service import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_uvloop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_an_unknown_loop_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    subprocess.run(
        [sys.executable, "-m", "bridge", "user", "add", "a", "--role", "admin",
         "--password-stdin", "--config", str(config)],
        input="admin-pass-1\n", text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
        env={**os.environ, eventloop.ENV: "tokio"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "serial-bridge: cannot start: SERIAL_BRIDGE_LOOP=tokio: expected one of asyncio, uvloop"
    )


async def test_the_suite_runs_on_the_loop_asked_for() -> None:
    """`SERIAL_BRIDGE_LOOP=uvloop pytest` (a pass of `./dev test`) runs the in-process tests on
    uvloop too (tests/conftest.py), not silently on asyncio's loop."""
    wanted = os.environ.get(eventloop.ENV) or "asyncio"
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == wanted
