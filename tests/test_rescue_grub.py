"""System test: the grub-rescue playbook on a real GRUB. A QEMU guest boots an image made with
grub-mkrescue (tests/grub_image.py: GRUB's terminal on ttyS0, a 5 s menu, the test kernel and
busybox initramfs); the bridge has its console on QEMU's telnet chardev and reset through QMP.
Through the public API the playbook resets the guest, stops GRUB's menu, edits the default entry,
appends a kernel argument to the `linux` line and boots it with Ctrl-X; the shell that comes up
shows the argument in /proc/cmdline. The time from the request to the shell is printed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import BridgeFactory, WsReader
from tests.grub_image import build_grub_image, require_grub
from tests.qemu_guest import PROMPT, QemuGuest, require_qemu

ARG = "serial_bridge.rescued=yes"


@pytest.mark.qemu
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
            await guest.cont()  # a running machine: GRUB's menu counts down (then it boots)
            await reader.until(lambda r: b"GNU GRUB" in r.data, 30)
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
            assert titles[0] == "restart the machine" and len(titles) == 9

            # the shell: the appended argument is on the kernel's command line
            async with admin.post(
                f"{bridge.base}/api/ports/vm/sysrq", json={"keys": "h"}
            ) as resp:  # the console works as before: the lease is free again
                assert resp.status == 200
            admin_ws = WsReader(await bridge.ws(admin, "vm", mode="rw"))
            assert (await admin_ws.message("hello"))["mode"] == "rw"
            await admin_ws.ws.send_bytes(b"cat /proc/cmdline\r")
            await admin_ws.until(lambda r: f"{ARG}\r\n".encode() in r.data, 20)
            seen = await reader.message("status", event="playbook-done")
            assert seen["playbook"] is None
    print(f"grub-rescue: request to shell {to_shell:.1f} s")
