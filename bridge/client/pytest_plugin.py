"""pytest plugin (entry point `serial_bridge`): a `serial_console` fixture for lab tests.

The fixture is a connected `BridgeConsole` (bridge.client.expect) for the port named in the URL,
holding the write lease (taken over from whoever had it). Where it connects comes from the command
line or the environment, the command line winning:

| option | environment | |
|---|---|---|
| `--serial-bridge-url` | `SERIAL_BRIDGE_URL` | `https://HOST:PORT/PORTNAME` |
| `--serial-bridge-token` | `SERIAL_BRIDGE_TOKEN` | an API token (`serial-bridge token create`) |
| `--serial-bridge-fingerprint` | `SERIAL_BRIDGE_FINGERPRINT` | `SHA256:...` (else known_hosts) |
| `--serial-bridge-timeout` | `SERIAL_BRIDGE_TIMEOUT` | default `expect` timeout in seconds (30) |

Without a URL, tests that use the fixture are skipped, saying how to configure it. What the target
printed during a test is in `serial_console.logfile_read` (a BytesIO) and is shown when it fails.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

from bridge.client.expect import BridgeConsole

_OPTIONS = (
    ("url", "SERIAL_BRIDGE_URL", "bridge console URL, https://HOST:PORT/PORTNAME"),
    ("token", "SERIAL_BRIDGE_TOKEN", "API token for the bridge"),
    ("fingerprint", "SERIAL_BRIDGE_FINGERPRINT", "the bridge certificate's SHA256:... fingerprint"),
    ("timeout", "SERIAL_BRIDGE_TIMEOUT", "default expect() timeout in seconds (default 30)"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("serial-bridge", "serial-bridge console (serial_console fixture)")
    for name, env, text in _OPTIONS:
        group.addoption(
            f"--serial-bridge-{name}", dest=f"serial_bridge_{name}", help=f"{text} (env {env})"
        )


def _setting(config: pytest.Config, name: str, env: str) -> str | None:
    value = config.getoption(f"serial_bridge_{name}")
    return str(value) if value else os.environ.get(env) or None


@pytest.fixture
def serial_console(request: pytest.FixtureRequest) -> Iterator[BridgeConsole]:
    """A pexpect-style console on the configured bridge port, holding the write lease."""
    config = request.config
    url, token, fingerprint, timeout = (_setting(config, n, e) for n, e, _ in _OPTIONS)
    if not url:
        pytest.skip("no bridge configured: --serial-bridge-url or SERIAL_BRIDGE_URL")
    console = BridgeConsole(
        url,
        token=token,
        fingerprint=fingerprint,
        takeover=True,
        timeout=float(timeout) if timeout else 30.0,
    )
    console.logfile_read = io.BytesIO()
    try:
        yield console
    finally:
        shown = console.logfile_read.getvalue()[-4000:].decode(errors="replace")
        console.close()
        if shown:
            request.node.add_report_section("call", "serial console", shown)
