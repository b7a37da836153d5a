"""A small real file system for storage-fault tests: an ext4 image loop-mounted (needs root) with
`errors=remount-ro`, as Raspberry Pi OS mounts its SD card, so that a simulated card error
(`trigger_fs_error`) turns it read-only under a running daemon exactly as a failing card does."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def ext4_card(where: Path, size_mib: int = 16) -> Iterator[Path]:
    """Mount a fresh `size_mib` ext4 image at `where`/card; unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting a file system needs root")
    image, mount = where / "card.img", where / "card"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mount))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))  # something still holds it: detach lazily


def remount_read_only(mount: Path) -> None:
    """Remount read-only (possible only while no file on it is open for writing)."""
    done = _run("mount", "-o", "remount,ro", str(mount))
    assert done.returncode == 0, done.stderr


def card_error(mount: Path) -> None:
    """What a failing card does: ext4 records an error and, mounted errors=remount-ro, turns
    read-only at once, open files or not (the kernel's `emergency_ro`)."""
    source = _run("findmnt", "-n", "-o", "SOURCE", str(mount)).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"{trigger} missing: this kernel cannot simulate an ext4 error")
    trigger.write_text("serial-bridge test: simulated SD card failure")
    opts = _run("findmnt", "-n", "-o", "OPTIONS", str(mount)).stdout
    assert "ro" in opts.split(",") or "emergency_ro" in opts, opts


def fill(mount: Path) -> Path:
    """Fill the file system to the last block with one file; returns it (delete it to free)."""
    filler = mount / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        for size in (65536, 4096, 1):  # the last partial blocks
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler
