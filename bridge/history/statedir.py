"""How files under `state_dir` are created and opened, so nobody else can redirect them.

The daemon (sometimes run as root) writes users, tokens, the TLS key, audit files and ring logs
there. A local user who could put a symlink or a hard link in that directory could make it write,
grow, truncate or chmod some other file. So:

- `private_dir(path)`: create a directory 0700, or check an existing one: it must be a real
  directory (only the top `state_dir` may be reached through a symlink), owned by this user or by
  root; group and other bits are removed from one this user owns (logged), and one that another
  user owns and others may write is refused (`UnsafeStateDir`, an OSError naming the fix).
- `check_writable(path)`: refuse a state directory the daemon cannot write (a read-only card)
  up front, with one error naming it, rather than at whichever file it happens to write first.
- `open_private(path, flags)`: `os.open` with O_NOFOLLOW and O_CLOEXEC, new files 0600: a symlink
  in the place of a state file is an error (ELOOP), never followed.
- `replace_private(path, data)`: write a fresh temporary (random name, O_EXCL + O_NOFOLLOW, 0600),
  fsync it and rename it over `path` (a rename replaces a symlink, it never writes through one).
  A failure (EIO, a full or read-only disk) leaves `path` as it was and no temporary behind; the
  OSError names `path`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeStateDir(OSError):
    """A state directory that others could use to redirect the daemon's files."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(errno.EPERM, why, str(path))


def private_dir(path: Path, top: bool = False) -> None:
    """Make `path` a directory only this user can use (see the module docstring). `top`: the
    configured state_dir itself, which may be a symlink to a directory (a mount, say)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path) if top else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(path, "not a directory (a symlink or a file is in its place)")
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == me:
        if mode & 0o077:
            os.chmod(path, 0o700)
            log.warning("%s was mode %04o: tightened to 0700", path, mode)
    elif st.st_uid != 0 or mode & 0o022:
        raise UnsafeStateDir(
            path,
            f"owned by uid {st.st_uid} (mode {mode:04o}), who could redirect this user's "
            f"(uid {me}) files: run as that user (sudo -u), or chown it to uid {me}, mode 0700",
        )


def check_writable(path: Path) -> None:
    """Raise OSError naming `path` unless a file can be created in it (a read-only card)."""
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
    except OSError as exc:
        why = f"{exc.strerror} (the bridge writes its console logs, audit trail and TLS key there)"
        raise OSError(exc.errno, why, str(path)) from exc
    os.close(fd)
    os.unlink(probe)


def open_private(path: Path, flags: int) -> int:
    """`os.open` that never follows a symlink at `path`; a file it creates is 0600."""
    return os.open(path, flags | NOFOLLOW, 0o600)


def replace_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` (mode 0600) through a fresh O_EXCL temporary."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # name the file it was about, not the temporary
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
