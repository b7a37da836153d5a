"""A real Linux guest as a console target: Debian's cloud kernel and a busybox initramfs in QEMU.

Used by `serial-bridge demo --qemu` (a newcomer tries SysRq, NMI and reset on a real kernel
without hardware) and by the system tests (tests/test_qemu_system.py, tests/test_qemu_guest.py).

Owns fetching and caching the kernel (`ensure_kernel`), building the initramfs (`build_initramfs`)
and `QemuGuest`, an async context manager that starts `qemu-system-x86_64` paused with ttyS0 on a
telnet chardev (127.0.0.1, free port, `nodelay=on`) and QMP on a unix socket, and always kills it
on exit; `uefi=True` boots OVMF (UEFI firmware) instead of SeaBIOS. Why: `-S` so no boot output
is lost before a console connects (`cont()` waits for the connection); `nodelay=on` because Nagle
plus delayed ACKs added ~44 ms to every reaction.

Cache: `$SERIAL_BRIDGE_QEMU_CACHE` or `~/.cache/serial-bridge/qemu`. `$SERIAL_BRIDGE_QEMU_KERNEL`
points at an existing vmlinuz instead (for machines without apt).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import gzip
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.hw.qmp import QmpClient

QEMU = "qemu-system-x86_64"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BOOT_MARKER = "SERIAL-BRIDGE-GUEST-UP"
PROMPT = "guest# "
BASE_APPEND = "console=ttyS0,115200 sysrq_always_enabled=1 panic=-1"
CHARDEV_ID = "s0"
# UEFI firmware (Debian package ovmf): the code read-only, and a private copy of the variable store
# per guest, as on a real machine (boot entries made on the first boot survive a reset)
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export PS1='{PROMPT}' PATH=/bin HOME=/
echo {BOOT_MARKER}
while true; do setsid cttyhack sh; done
"""


APT_PACKAGES = "qemu-system-x86 busybox-static"


class QemuUnavailable(RuntimeError):
    """Something the guest needs is missing; the message says what and how to install it."""


def missing_prerequisites(busybox: Path = Path("/bin/busybox"), uefi: bool = False) -> list[str]:
    """What is missing to boot the guest (empty when all is there): QEMU, a static busybox, and
    with `uefi` OVMF."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (Debian package qemu-system-x86)")
    if not busybox.exists() or not _is_static_elf(busybox):
        missing.append(f"a static {busybox} (Debian package busybox-static)")
    if uefi and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        missing.append(f"UEFI firmware {OVMF_CODE} (Debian package ovmf)")
    return missing


def check_prerequisites(busybox: Path = Path("/bin/busybox"), uefi: bool = False) -> None:
    """Raise QemuUnavailable naming what is missing and the apt-get command that installs it."""
    missing = missing_prerequisites(busybox, uefi)
    if missing:
        packages = f"{APT_PACKAGES} ovmf" if uefi else APT_PACKAGES
        raise QemuUnavailable(
            f"cannot boot the QEMU guest: missing {' and '.join(missing)}; install with:\n"
            f"  sudo apt-get install --no-install-recommends {packages}"
        )


def cache_dir() -> Path:
    """Where the kernel is cached (created if missing)."""
    env = os.environ.get("SERIAL_BRIDGE_QEMU_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "serial-bridge" / "qemu"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def kernel_package() -> str:
    """The versioned cloud kernel package the meta package points at (apt's current one)."""
    override = os.environ.get("SERIAL_BRIDGE_QEMU_KERNEL_PACKAGE")
    if override:
        return override
    for line in _run(["apt-cache", "depends", KERNEL_META_PACKAGE]).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise RuntimeError(f"apt-cache: {KERNEL_META_PACKAGE} has no linux-image dependency")


def ensure_kernel() -> Path:
    """Path of a cached cloud-amd64 vmlinuz; downloads the .deb with apt-get on first use and
    extracts only the kernel (no install: that would pull in initramfs-tools and write /boot)."""
    override = os.environ.get("SERIAL_BRIDGE_QEMU_KERNEL")
    if override:
        return Path(override)
    cache = cache_dir()
    kernel = cache / "vmlinuz"
    if kernel.exists():
        return kernel
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: set SERIAL_BRIDGE_QEMU_KERNEL to a vmlinuz")
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be fetching it right now
        if kernel.exists():
            return kernel
        package = kernel_package()
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            work = Path(tmp)
            try:
                _run(["apt-get", "download", package], cwd=work)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc} (stale package lists? run apt-get update)") from exc
            debs = sorted(work.glob(f"{package}_*.deb"))
            if not debs:
                raise RuntimeError(f"apt-get download {package} produced no .deb")
            with subprocess.Popen(
                ["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE
            ) as deb:
                untar = subprocess.run(
                    ["tar", "-x", "-C", str(work), "--wildcards", "./boot/vmlinuz-*"],
                    stdin=deb.stdout,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            if deb.returncode != 0 or untar.returncode != 0:
                raise RuntimeError(f"extracting the kernel from {debs[0].name}: {untar.stderr}")
            found = sorted((work / "boot").glob("vmlinuz-*"))
            if not found:
                raise RuntimeError(f"{debs[0].name} holds no boot/vmlinuz-*")
            staged = cache / f".{found[0].name}.tmp"
            shutil.move(str(found[0]), staged)
            (cache / "kernel-version").write_text(found[0].name.removeprefix("vmlinuz-") + "\n")
            staged.rename(kernel)
    return kernel


def _is_static_elf(path: Path) -> bool:
    """True when an ELF64 executable has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        phoff = struct.unpack_from("<Q", header, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = (struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum))
    return 3 not in types


def newc_archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's `newc` format from (name, mode, data) entries, in the
    format `cpio -o -H newc` writes, without needing the cpio tool."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(ino, name, mode, data)
    add(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def build_initramfs(dest: Path, busybox: Path = Path("/bin/busybox")) -> Path:
    """A gzip'd newc cpio: static busybox and an /init that ends in a root shell on ttyS0."""
    if not busybox.exists() or not _is_static_elf(busybox):
        raise RuntimeError(f"{busybox} is missing or not static: apt-get install busybox-static")
    archive = newc_archive(
        [
            ("bin", 0o040755, b""),
            ("bin/busybox", 0o100755, busybox.read_bytes()),
            ("init", 0o100755, INIT_SCRIPT.encode()),
        ]
    )
    dest.write_bytes(gzip.compress(archive, compresslevel=1))
    return dest


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL QEMU if the test process dies without running
    its finalizers (killed by a CI timeout, say): no orphaned guest keeps a CPU busy."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (a race is retried by `start`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QemuGuest:
    """`async with QemuGuest(workdir) as guest:` — QEMU started paused; connect a console to
    `guest.telnet_url`, then `await guest.cont()`. QEMU is killed on exit. `disk`: boot this
    image (GRUB on it) instead of the kernel directly; `uefi`: with OVMF instead of SeaBIOS."""

    def __init__(
        self,
        workdir: Path,
        *,
        append: str = "",
        memory_mb: int = 256,
        disk: Path | None = None,
        uefi: bool = False,
    ) -> None:
        self.workdir = workdir
        self.disk = disk
        self.uefi = uefi
        self.vars_path = workdir / "OVMF_VARS.fd"  # the guest's UEFI variables (a copy)
        self.append = f"{BASE_APPEND} {append}".strip()
        self.memory_mb = memory_mb
        self.port = 0
        self.qmp_path = str(workdir / "qmp.sock")
        self.log_path = workdir / "qemu.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """QEMU's process id while it runs."""
        return self.process.pid if self.process is not None else None

    @property
    def telnet_url(self) -> str:
        """The guest's ttyS0 as a bridge port device (QEMU's telnet chardev)."""
        return f"telnet://127.0.0.1:{self.port}"

    def command(self, kernel: Path, initrd: Path) -> list[str]:
        """The qemu-system-x86_64 command line (see docs/qemu.md for why each option)."""
        boot = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", self.append]
        if self.disk is not None:  # q35 + virtio: GRUB reads the kernel 2x faster than over IDE
            boot = ["-drive", f"file={self.disk},if=virtio,format=raw,readonly=on"]
        if self.uefi:  # OVMF in pflash, as libvirt does: the code read-only, the variables ours
            boot = [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_path}",
                *boot,
            ]  # fmt: skip
        return [
            QEMU, "-machine", "q35" if self.disk or self.uefi else "pc", "-accel", "tcg",
            "-m", str(self.memory_mb), "-smp", "1",
            "-display", "none", "-nodefaults", "-no-user-config", *boot,
            "-chardev",
            f"socket,id={CHARDEV_ID},host=127.0.0.1,port={self.port},server=on,wait=off,"
            "telnet=on,nodelay=on",
            "-serial", f"chardev:{CHARDEV_ID}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-no-shutdown",
            "-S",
        ]  # fmt: skip

    async def start(self, ready_within: float = 30.0) -> None:
        """Fetch the kernel if needed, build the initramfs and start QEMU paused (`-S`).
        Raises QemuUnavailable when QEMU, busybox-static (or OVMF) is missing, RuntimeError
        otherwise."""
        check_prerequisites(uefi=self.uefi)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.uefi:
            shutil.copyfile(OVMF_VARS, self.vars_path)
        kernel = await asyncio.to_thread(ensure_kernel)
        initrd = await asyncio.to_thread(build_initramfs, self.workdir / "initramfs.cpio.gz")
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.qmp_path)
            log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command(kernel, initrd),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    preexec_fn=_die_with_parent(),
                )
            finally:
                os.close(log)
            if await self._wait_ready(ready_within):
                return
            await self.stop()
        raise RuntimeError(f"QEMU did not start: {self.log_path.read_text()[-2000:]}")

    async def _wait_ready(self, within: float) -> bool:
        """QMP answers (its socket exists once QEMU has set up every chardev); False when QEMU
        exits or `within` seconds pass first."""
        assert self.process is not None
        try:
            async with asyncio.timeout(within):
                while self.process.returncode is None:
                    try:
                        async with QmpClient(self.qmp_path, 5.0) as qmp:
                            await qmp.execute("query-status")
                        return True
                    except OSError:  # DeviceUnavailable: no socket yet
                        pass
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        return False

    async def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command on the guest's QEMU and return its answer."""
        async with QmpClient(self.qmp_path, 10.0) as qmp:
            return await qmp.execute(command, arguments)

    async def cont(self, within: float = 10.0) -> None:
        """Start the CPU once a console client is connected to the chardev (no boot log lost).
        Raises TimeoutError when no client connects within `within` seconds."""
        async with asyncio.timeout(within), QmpClient(self.qmp_path, within) as qmp:
            while True:
                devices = await qmp.execute("query-chardev")
                ours = [d for d in devices if d.get("label") == CHARDEV_ID]
                if ours and not str(ours[0].get("filename", "")).startswith("disconnected"):
                    break
                await asyncio.sleep(0.02)
            await qmp.execute("cont")

    async def stop(self) -> None:
        """Kill QEMU (SIGKILL: the guest has nothing to save) and reap it. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            pass

    async def __aenter__(self) -> QemuGuest:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
