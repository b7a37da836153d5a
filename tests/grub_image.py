"""A bootable image with GRUB for the recovery playbook test: the QEMU target's kernel and busybox
initramfs (bridge.hw.qemu_target) behind a real GRUB menu whose terminal is the serial port, made
with grub-mkrescue (Debian grub-pc-bin, xorriso, mtools; ./dev installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.hw.qemu_target import BASE_APPEND, build_initramfs, ensure_kernel

MKRESCUE = "grub-mkrescue"
GRUB_CFG = f"""serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=3
set timeout_style=hidden
menuentry 'Linux' {{
  linux /boot/vmlinuz {BASE_APPEND}
  initrd /boot/initramfs.gz
}}
menuentry 'Linux (previous)' {{
  linux /boot/vmlinuz {BASE_APPEND} previous=1
  initrd /boot/initramfs.gz
}}
"""


def require_grub() -> None:
    """Skip (outside CI) or fail (in CI) when grub-mkrescue or its helpers are missing."""
    missing = [t for t in (MKRESCUE, "xorriso", "mformat") if shutil.which(t) is None]
    if Path("/usr/lib/grub/i386-pc").is_dir() and not missing:
        return
    reason = "grub-mkrescue needs: apt-get install grub-pc-bin xorriso mtools"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def build_grub_image(workdir: Path) -> Path:
    """`workdir/grub.img`: GRUB (BIOS) on ttyS0 with a hidden menu (3 s; Esc shows it, the
    harder case for a playbook), booting the test kernel, with a second entry."""
    tree = workdir / "image"
    (tree / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ensure_kernel(), tree / "boot" / "vmlinuz")
    build_initramfs(tree / "boot" / "initramfs.gz")
    (tree / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
    image = workdir / "grub.img"
    done = subprocess.run(
        [MKRESCUE, "-o", str(image), str(tree)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return image
