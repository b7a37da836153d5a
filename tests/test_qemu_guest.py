"""System test of the hardware side on a real Linux kernel: TelnetTransport + QmpLines + QEMU.

Boots Debian's cloud kernel with a busybox initramfs (bridge/hw/qemu_target.py) and proves, on the
kernel's own output: boot log and shell, SysRq `h` and `t` after a telnet BREAK, BREAK through QMP
`chardev-send-break`, NMI through QMP, and reset (the boot log starts again).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.console.sysrq import validate_keys
from bridge.hw import qemu_target
from bridge.hw.interfaces import UnsupportedAction
from bridge.hw.qmp import QmpLines
from bridge.hw.telnet import TelnetTransport, parse_telnet_url
from tests import qemu_guest
from tests.qemu_guest import BOOT_MARKER, CHARDEV_ID, PROMPT, QemuGuest, require_qemu

BOOT_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0


class Console:
    """A TransportSink that keeps everything the guest printed and lets a test wait for text."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.changed = asyncio.Event()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.changed.set()

    @property
    def offset(self) -> int:
        return len(self.buf)

    async def wait_for(self, text: str, start: int, timeout: float = STEP_TIMEOUT) -> int:
        """Offset just after the first `text` at or after `start`."""
        needle = text.encode()
        try:
            async with asyncio.timeout(timeout):
                while (found := self.buf.find(needle, start)) < 0:
                    assert not self.lost, "the guest console closed"
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            tail = bytes(self.buf[max(start, len(self.buf) - 1500) :]).decode(errors="replace")
            raise AssertionError(f"{text!r} not seen within {timeout} s; output:\n{tail}") from None
        return found + len(needle)


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[QemuGuest]:
    require_qemu()
    async with QemuGuest(tmp_path) as running:
        yield running


@pytest.mark.qemu
async def test_real_kernel_console_sysrq_nmi_reset(guest: QemuGuest) -> None:
    console = Console()
    host, port = parse_telnet_url(guest.telnet_url)
    transport = TelnetTransport(host, port, description=guest.telnet_url)
    lines = QmpLines(guest.qmp_path, port="qemu")
    timings: dict[str, float] = {}
    await transport.open(console)
    try:
        started = time.monotonic()
        await guest.cont()
        at = await console.wait_for("Linux version", 0, BOOT_TIMEOUT)
        at = await console.wait_for(BOOT_MARKER, at, BOOT_TIMEOUT)
        at = await console.wait_for(PROMPT, at, BOOT_TIMEOUT)
        timings["boot to shell"] = time.monotonic() - started
        assert (await lines.power("status"))["power"] == "on"

        # A command and its computed answer (the echo of the command line says RT$((40+2))).
        await transport.write(b"echo RT$((40+2))\r")
        at = await console.wait_for("RT42", at)
        at = await console.wait_for(PROMPT, at)

        # SysRq over a telnet BREAK: h (help), then t (task dump).
        await transport.send_break(0.1)
        sent = time.monotonic()
        await transport.write(validate_keys("H").encode())
        at = await console.wait_for("sysrq: HELP", at)
        timings["BREAK+h"] = time.monotonic() - sent
        await transport.send_break(0.1)
        await transport.write(validate_keys("t", deny=frozenset("c")).encode())
        at = await console.wait_for("sysrq: Show State", at)
        at = await console.wait_for("task:", at)

        # BREAK through QMP chardev-send-break, then h.
        await lines.chardev_send_break(CHARDEV_ID)
        await transport.write(b"h")
        at = await console.wait_for("sysrq: HELP", at)

        # NMI: the kernel reports an NMI nobody claimed.
        sent = time.monotonic()
        result = await lines.nmi()
        assert result == {"action": "nmi", "qmp": "inject-nmi", "power": "on"}
        at = await console.wait_for("NMI received for unknown reason", at)
        timings["NMI"] = time.monotonic() - sent

        with pytest.raises(UnsupportedAction, match="force-off"):
            await lines.power("force-off")

        # Reset: the boot log starts again and the shell comes back.
        sent = time.monotonic()
        assert (await lines.reset())["qmp"] == "system_reset"
        at = await console.wait_for("Linux version", at, BOOT_TIMEOUT)
        at = await console.wait_for(PROMPT, at, BOOT_TIMEOUT)
        timings["reset to shell"] = time.monotonic() - sent
        await transport.write(b"echo RT$((50+5))\r")
        await console.wait_for("RT55", at)
    finally:
        await transport.close()
    print("timings:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})


@pytest.mark.qemu
async def test_paused_guest_powers_on_with_cont(guest: QemuGuest) -> None:
    lines = QmpLines(guest.qmp_path, port="qemu")
    assert (await lines.power("status")) == {
        "action": "status",
        "power": "off",
        "qemu_status": "prelaunch",
    }
    result = await lines.power("on")
    assert result["qmp"] == "cont"
    assert result["power"] == "on"
    again = await lines.power("on")
    assert again["qmp"] is None
    assert "already running" in again["note"]


def test_missing_qemu_skips_outside_ci_and_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r"qemu-system-x86_64.* not installed \(apt-get install"
    ):
        require_qemu()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the QEMU system tests"):
        require_qemu()


def test_missing_prerequisites_name_the_apt_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    dynamic = Path(sys.executable).resolve()
    missing = qemu_target.missing_prerequisites(busybox=dynamic)
    assert [m.split(" (")[1] for m in missing] == [
        "Debian package qemu-system-x86)",
        "Debian package busybox-static)",
    ]
    with pytest.raises(qemu_target.QemuUnavailable) as info:
        qemu_target.check_prerequisites(busybox=tmp_path / "no-busybox")
    assert "apt-get install --no-install-recommends qemu-system-x86 busybox-static" in str(
        info.value
    )
    monkeypatch.setattr(qemu_target, "OVMF_CODE", tmp_path / "no-ovmf")  # UEFI: OVMF too
    assert "Debian package ovmf" in qemu_target.missing_prerequisites(dynamic, uefi=True)[-1]
    assert "Debian package ovmf" not in " ".join(qemu_target.missing_prerequisites(dynamic))
    with pytest.raises(qemu_target.QemuUnavailable, match=r"busybox-static ovmf$"):
        qemu_target.check_prerequisites(busybox=tmp_path / "no-busybox", uefi=True)


def test_static_busybox_check() -> None:
    assert not qemu_guest._is_static_elf(Path(sys.executable).resolve())
    if Path("/bin/busybox").exists():
        assert qemu_guest._is_static_elf(Path("/bin/busybox"))
