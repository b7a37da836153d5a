"""The QEMU guest for system tests: the launcher lives in bridge.hw.qemu_target (the product's
`demo --qemu` uses it too); this module adds the tests' policy for a machine without QEMU.

Cache: `$SERIAL_BRIDGE_QEMU_CACHE` or `~/.cache/serial-bridge/qemu`. `$SERIAL_BRIDGE_QEMU_KERNEL`
points at an existing vmlinuz instead (for machines without apt).
"""

from __future__ import annotations

import os
import shutil

import pytest

from bridge.hw.qemu_target import (
    BASE_APPEND,
    BOOT_MARKER,
    CHARDEV_ID,
    PROMPT,
    QEMU,
    QemuGuest,
    _is_static_elf,
    build_initramfs,
    ensure_kernel,
    newc_archive,
)

__all__ = [
    "BASE_APPEND",
    "BOOT_MARKER",
    "CHARDEV_ID",
    "PROMPT",
    "QEMU",
    "QemuGuest",
    "_is_static_elf",
    "build_initramfs",
    "ensure_kernel",
    "newc_archive",
    "require_qemu",
]


def require_qemu() -> None:
    """Skip (outside CI) or fail (in CI, env CI set) when qemu-system-x86_64 is missing."""
    if shutil.which(QEMU) is not None:
        return
    reason = f"{QEMU} not installed (apt-get install qemu-system-x86 busybox-static)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the QEMU system tests: {reason}")
    pytest.skip(reason)
