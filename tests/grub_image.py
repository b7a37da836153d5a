"""A bootable image with GRUB for the recovery playbook tests: the QEMU target's kernel and busybox
initramfs (bridge.hw.qemu_target) behind a real GRUB menu whose terminal is the serial port, made
with grub-mkrescue (Debian grub-pc-bin, xorriso, mtools; ./dev installs them). With
grub-efi-amd64-bin installed too the image is hybrid: the same file boots on BIOS and on UEFI
(OVMF), each with its own GRUB reading the same grub.cfg."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.hw.qemu_target import BASE_APPEND, OVMF_CODE, build_initramfs, ensure_kernel

MKRESCUE = "grub-mkrescue"
GRUB_LIB = Path("/usr/lib/grub")
# On UEFI GRUB uses the firmware's console, which OVMF redirects to the serial port: with GRUB's own
# serial terminal the firmware and GRUB both read the port and keys go missing
# (firmware-notes/grub-kernel.md, "On UEFI")
GRUB_CFG = f"""if [ "$grub_platform" = efi ]; then
  terminal_input console
  terminal_output console
else
  serial --unit=0 --speed=115200
  terminal_input serial
  terminal_output serial
fi
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


def require_grub(uefi: bool = False) -> None:
    """Skip (outside CI) or fail (in CI) when grub-mkrescue, its helpers or GRUB's BIOS modules
    are missing; with `uefi`, GRUB's EFI modules and OVMF (a UEFI firmware for QEMU) instead."""
    missing = [t for t in (MKRESCUE, "xorriso", "mformat") if shutil.which(t) is None]
    platform = "x86_64-efi" if uefi else "i386-pc"
    if not (GRUB_LIB / platform).is_dir():
        missing.append(f"GRUB's {platform} modules")
    if uefi and not OVMF_CODE.exists():
        missing.append(str(OVMF_CODE))
    if not missing:
        return
    packages = "grub-efi-amd64-bin ovmf" if uefi else "grub-pc-bin"
    reason = f"missing {', '.join(missing)}: apt-get install {packages} xorriso mtools"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def build_grub_image(workdir: Path) -> Path:
    """`workdir/grub.img`: GRUB (BIOS, and UEFI when its modules are installed) on ttyS0 (on
    UEFI through the firmware's console) with a hidden menu (3 s; Esc shows it, the harder case
    for a playbook), booting the test kernel, with a second entry."""
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
