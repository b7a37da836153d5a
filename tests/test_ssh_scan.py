"""An ssh-audit scan (PyPI `ssh-audit`, the test extra) of the SSH door on 127.0.0.1: no
algorithm ssh-audit fails, nothing SHA-1, no CBC, no compression, the ed25519 host key only; the
only warnings allowed are curve25519's "not post-quantum" (kept for OpenSSH before 9.9)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import BridgeFactory, PtyDevice
from tests.ssh_helpers import ssh_bridge

WEAK = ("sha1", "ssh-rsa", "ssh-dss", "cbc", "rsa2048", "group1-", "group14", "md5", "3des")
NOT_PQ = "does not provide protection against post-quantum attacks"
ALLOWED_WARNINGS = {
    ("kex", "curve25519-sha256", NOT_PQ),
    ("kex", "curve25519-sha256@libssh.org", NOT_PQ),
}


async def scan(port: int) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ssh_audit", "-j", "--skip-rate-test", "-p", str(port), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out, err.decode()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out)


async def test_ssh_audit_finds_nothing_weak(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    _bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path)
    status, report = await scan(door.port)
    assert status in (0, 2), report  # ssh-audit: 0 good, 2 warnings, 3 failures
    offered = {s: [a["algorithm"] for a in report[s]] for s in ("kex", "key", "enc", "mac")}
    for section, names in offered.items():
        for name in names:
            assert not any(w in name.lower() for w in WEAK), (section, name)
    assert offered["key"] == ["ssh-ed25519"]
    assert report["compression"] == ["none"]
    assert report["cves"] == []
    warnings = set()
    for section in ("kex", "key", "enc", "mac"):
        for alg in report[section]:
            notes = alg.get("notes", {})
            assert not notes.get("fail"), (section, alg)
            warnings |= {(section, alg["algorithm"], w) for w in notes.get("warn", [])}
    assert warnings <= ALLOWED_WARNINGS, warnings - ALLOWED_WARNINGS
    assert "kex-strict-s-v00@openssh.com" in offered["kex"]  # Terrapin counter-measure
