"""A second SIGTERM exits at once, even when the graceful shutdown hangs (a stuck device close)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from bridge.access.store import UserStore
from tests.conftest import user_hash

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from bridge.service import daemon
    from bridge.config import load_config

    async def stuck(self, reason="x"):
        print("stopping", flush=True)
        await asyncio.Event().wait()  # a device close that never returns

    daemon.Daemon.stop = stuck
    logging.basicConfig(level=logging.INFO)
    print("exit", asyncio.run(daemon.serve(load_config(Path(sys.argv[1])))), flush=True)
    """
)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    UserStore(state).add("admin", "admin", user_hash("admin"), None)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{state}"\n'
        f'[ports.a]\ndevice = "{tmp_path / "absent"}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    assert proc.stderr is not None and proc.stdout is not None
    guard = threading.Timer(30, proc.kill)  # every wait below is bounded
    guard.start()
    try:
        _second_signal_exits_at_once(proc)
    finally:
        guard.cancel()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _second_signal_exits_at_once(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None and proc.stdout is not None
    while "listening on" not in proc.stderr.readline():
        assert proc.poll() is None, "the daemon did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "stopping"
    time.sleep(0.3)
    assert proc.poll() is None, "the first signal should wait for the graceful shutdown"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 1
    assert "second signal: exiting at once" in proc.stderr.read()
