"""An example lab test with the `serial_console` fixture (serial-bridge's pytest plugin).

Reset the target, wait for its shell, run a command and check the answer. Run it against a bridge:

    SERIAL_BRIDGE_URL=https://bridge:8443/lab1 SERIAL_BRIDGE_TOKEN=sbt_... \\
    SERIAL_BRIDGE_FINGERPRINT=SHA256:... pytest test_lab_example.py

The token's user must be an admin (reset is a power action). `LAB_SHELL_PROMPT` is a regular
expression for the target's shell prompt (after a login, on a real image).
"""

from __future__ import annotations

import os

from bridge.client.expect import BridgeConsole

SHELL_PROMPT = os.environ.get("LAB_SHELL_PROMPT", r"[#$] ")
BOOT_TIMEOUT = float(os.environ.get("LAB_BOOT_TIMEOUT", "120"))


def test_the_target_boots_to_a_shell_and_answers(serial_console: BridgeConsole) -> None:
    result = serial_console.power("reset")
    assert result["action"] == "reset"
    serial_console.expect("Linux version", timeout=BOOT_TIMEOUT)
    serial_console.expect(SHELL_PROMPT, timeout=BOOT_TIMEOUT)
    serial_console.sendline("echo LAB$((6*7))")
    serial_console.expect(r"LAB(\d+)")  # the computed answer, not the echoed command
    assert serial_console.match.group(1) == b"42"
    serial_console.expect(SHELL_PROMPT)
