"""labgrid's SerialDriver on a NetworkSerialPort resource, against the bridge's RFC 2217 endpoint.

labgrid is not a dependency: it replaces pyserial with its fork (`pyserial-labgrid`) and pulls
gRPC and pytest 9. It is installed once into a venv of its own, kept in
`$SERIAL_BRIDGE_LABGRID_VENV` or `~/.cache/serial-bridge/labgrid-venv`, and the labgrid side runs
there as a script, the way a lab's test would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BridgeFactory
from tests.test_rfc2217 import door_bridge

LABGRID = "labgrid>=25,<27"
VENV = Path(
    os.environ.get("SERIAL_BRIDGE_LABGRID_VENV")
    or Path.home() / ".cache" / "serial-bridge" / "labgrid-venv"
)

SCRIPT = r"""
import sys
from labgrid import Target
from labgrid.driver import SerialDriver
from labgrid.resource import NetworkSerialPort

host, port = sys.argv[1], int(sys.argv[2])
target = Target("bridge-lab")
NetworkSerialPort(target, None, host=host, port=port, speed=115200, protocol="rfc2217")
serial = SerialDriver(target, None)
target.activate(serial)
serial.write(b"echo LG$((6*7))\r")
serial.expect(b"LG42", timeout=10)
serial.write(b"printf 'x\\377y\\n'\r")  # a 0xFF from the target reaches labgrid once
serial.expect(b"x\xffy", timeout=10)
target.deactivate(serial)
print("labgrid ok")
"""


def labgrid_python() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".serial-bridge-ready"
    if marker.exists() and python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", LABGRID],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        output = getattr(exc, "stderr", b"") or b""
        reason = f"cannot install {LABGRID} into {VENV}: {exc} {output[-500:]!r}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    marker.touch()
    return python


async def test_labgrid_serial_driver_on_a_network_serial_port(
    bridge_factory: BridgeFactory,
) -> None:
    python = await asyncio.to_thread(labgrid_python)
    b = await door_bridge(bridge_factory, "vt", "virtual:shell")
    assert b.daemon.rfc2217 is not None
    host, port = b.daemon.rfc2217.endpoints["vt"].address
    proc = await asyncio.create_subprocess_exec(
        str(python), "-c", SCRIPT, host, str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    assert b"labgrid ok" in out
    assert b.port.writer is None  # labgrid closed its connection: the lease is free again
