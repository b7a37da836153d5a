"""System test: the shipped playbooks on a real GRUB and kernel. A QEMU guest boots an image made
with grub-mkrescue (tests/grub_image.py: GRUB's terminal on ttyS0, a hidden 3 s menu, the test
kernel and busybox initramfs, two entries); the bridge has its console on QEMU's telnet chardev
and reset through QMP. Through the public API: grub-rescue resets the guest, catches the hidden
menu with Esc, edits the default entry, appends a kernel argument to the `linux` line and boots
it with Ctrl-X, and the shell shows the argument in /proc/cmdline (the time from the request to
the shell is printed); grub-entry boots the second entry once; sysrq-safe-reboot (REISUB) reboots
the guest back into GRUB. The same image is hybrid: a second guest boots it on UEFI (OVMF), where
grub-rescue and grub-entry run again (docs/playbooks.md, "On UEFI", says what differs)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bridge, BridgeFactory, WsReader
from tests.grub_image import build_grub_image, require_grub
from tests.qemu_guest import PROMPT, QemuGuest, require_qemu

ARG = "serial_bridge.rescued=yes"
HANDOFF = "BdsDxe: starting"  # what OVMF (EDK II) prints as it starts the boot loader
REISUB = (  # what the kernel says for e, i, s, u (then b: "sysrq: Resetting")
    b"sysrq: Terminate All Tasks", b"sysrq: Kill All Tasks", b"sysrq: Emergency Sync",
    b"sysrq: Emergency Remount",
)  # fmt: skip


async def type_until(ws: WsReader, command: bytes, answer: bytes, tries: int = 3) -> None:
    """Type an idempotent command until `answer` shows as a whole word of its output: a key lost
    by the emulated UART while the guest is busy (it just booted, or prints SysRq help) must not
    fail a GRUB test. On failure, what the console showed is in the message."""
    word = re.compile(rb"(?:^|[\s])" + re.escape(answer) + rb"(?=[\s])")
    for _attempt in range(tries):
        await ws.ws.send_bytes(command)
        with contextlib.suppress(AssertionError):
            await ws.until(lambda r: word.search(bytes(r.data)) is not None, 15)
            return
    raise AssertionError(f"{answer!r} never shown; the console showed {bytes(ws.data[-1500:])!r}")


@pytest.mark.qemu
@pytest.mark.grub
async def test_grub_rescue_appends_the_argument_through_a_real_grub(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    require_qemu()
    require_grub()
    image = build_grub_image(tmp_path)
    async with QemuGuest(tmp_path / "guest", disk=image) as guest:
        bridge = await bridge_factory(
            ports={"vm": {"device": guest.telnet_url, "lines": {"qmp": guest.qmp_path}}},
            log={"enabled": True, "size": "1MiB"},
        )
        async with bridge.session("admin") as admin, bridge.session("viewer") as viewer:
            reader = WsReader(await bridge.ws(viewer, "vm", **{"from": "0"}))
            await reader.message("hello")
            await guest.cont()  # a running machine: the hidden menu passes, the kernel boots
            await reader.until(lambda r: b"Linux version" in r.data, 60)
            body = {
                "playbook": "grub-rescue",
                "args": {"arg": ARG, "shell": PROMPT, "timeout": "1m"},
            }
            asked = time.monotonic()
            async with admin.post(f"{bridge.base}/api/ports/vm/rescue", json=body) as resp:
                assert resp.status == 200, await resp.text()
                lines = [json.loads(line) async for line in resp.content]
            to_shell = time.monotonic() - asked
            result = lines[-1]
            assert result["result"] == "ok", (json.dumps(result), bytes(reader.data[-3000:]))
            titles = [x["title"] for x in lines if x["type"] == "step"]
            assert titles[0] == "restart the machine" and len(titles) == 11

            # the shell: the appended argument is on the kernel's command line
            async with admin.post(
                f"{bridge.base}/api/ports/vm/sysrq", json={"keys": "h"}
            ) as resp:  # the console works as before: the lease is free again
                assert resp.status == 200
            await reader.until(lambda r: b"sysrq: HELP" in r.data, 20)
            admin_ws = WsReader(await bridge.ws(admin, "vm", mode="rw"))
            assert (await admin_ws.message("hello"))["mode"] == "rw"
            await type_until(admin_ws, b"cat /proc/cmdline\r", ARG.encode())
            seen = await reader.message("status", event="playbook-done")
            assert seen["playbook"] is None
            await admin_ws.ws.close()

            await boots_the_second_entry_once(bridge, admin, {})

            # sysrq-safe-reboot: REISUB, and the guest comes back to GRUB and boots
            body = {"playbook": "sysrq-safe-reboot", "args": {"wait": "1s"}}
            result = await run(admin, bridge.base, body)
            assert result["result"] == "ok", json.dumps(result)
            await reader.until(lambda r: b"sysrq: Resetting" in r.data, 30)
            at = reader.data.index(b"sysrq: Resetting")
            await reader.until(lambda r: b"Linux version" in r.data[at:], 60)
            said = [reader.data.find(k) for k in REISUB]
            assert 0 < said[0] < said[1] < said[2] < said[3] < at, said
    print(f"grub-rescue: request to shell {to_shell:.1f} s")


async def boots_the_second_entry_once(bridge: Bridge, admin: Any, args: dict[str, str]) -> None:
    """grub-entry boots entry 1 (its command line says previous=1), and only once: grub-rescue's
    edit before it did not stay."""
    args = {"entry": "1", "timeout": "1m", **args}
    result = await run(admin, bridge.base, {"playbook": "grub-entry", "args": args})
    assert result["result"] == "ok", json.dumps(result)
    admin_ws = WsReader(await bridge.ws(admin, "vm", mode="rw"))
    await admin_ws.message("hello")
    await admin_ws.until(lambda r: PROMPT.encode() in r.data, 60)
    await type_until(admin_ws, b"cat /proc/cmdline\r", b"previous=1")
    assert ARG.encode() not in admin_ws.data
    await admin_ws.ws.close()


async def run(http: Any, base: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{base}/api/ports/vm/rescue", json=body) as resp:
        assert resp.status == 200, await resp.text()
        lines = [json.loads(line) async for line in resp.content]
    result: dict[str, Any] = lines[-1]
    return result


@pytest.mark.qemu
@pytest.mark.grub
async def test_grub_rescue_and_grub_entry_through_a_real_grub_on_uefi(
    bridge_factory: BridgeFactory, tmp_path: Path
) -> None:
    """The same image on UEFI (OVMF), GRUB on the firmware's console (which OVMF redirects to
    the serial port). OVMF reads the port too and opens its boot manager on Esc, so the
    playbooks press Esc only once OVMF says it starts the boot loader (`after`)."""
    require_qemu()
    require_grub(uefi=True)
    image = build_grub_image(tmp_path)
    async with QemuGuest(tmp_path / "guest", disk=image, uefi=True) as guest:
        bridge = await bridge_factory(
            ports={"vm": {"device": guest.telnet_url, "lines": {"qmp": guest.qmp_path}}},
        )
        async with bridge.session("admin") as admin:
            admin_ws = WsReader(await bridge.ws(admin, "vm", mode="rw"))
            await admin_ws.message("hello")
            await guest.cont()
            await admin_ws.until(lambda r: b"Linux version" in r.data, 60)
            await admin_ws.until(lambda r: b"efi: EFI v" in r.data, 20)  # UEFI, not BIOS
            await admin_ws.ws.close()

            args = {"arg": ARG, "shell": PROMPT, "after": HANDOFF, "timeout": "1m"}
            asked = time.monotonic()
            result = await run(admin, bridge.base, {"playbook": "grub-rescue", "args": args})
            to_shell = time.monotonic() - asked
            assert result["result"] == "ok", json.dumps(result)
            admin_ws = WsReader(await bridge.ws(admin, "vm", mode="rw"))
            assert (await admin_ws.message("hello"))["mode"] == "rw"
            await type_until(admin_ws, b"cat /proc/cmdline\r", ARG.encode())
            await admin_ws.ws.close()

            await boots_the_second_entry_once(bridge, admin, {"after": HANDOFF})
    print(f"grub-rescue on UEFI: request to shell {to_shell:.1f} s")
