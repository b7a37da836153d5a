"""Start-up failures of `serial-bridge serve` as one line that names the config key at fault.

Owns `StartupError` (a key such as `server.listen` or `ports.lab1.lines.nmi`, and a cause) and
the ways the daemon's start-up steps turn what went wrong into one: `step(key, subject)` wraps a
step that reads or writes files (an OSError becomes `KEY: SUBJECT: reason`), `check_tls_files`
reads the configured certificate, key and client CA one at a time so that a failure names the
file at fault, and `bind_error` words a listen address that cannot be bound. `serve` prints
`serial-bridge: cannot start: FILE: KEY: CAUSE` and exits 1; `--verbose` adds the traceback.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.config import ServerConfig


class StartupError(Exception):
    """The daemon cannot start. `key` is the config key at fault ("" when none is)."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"{key}: {cause}" if key else cause)
        self.key, self.cause = key, cause

    def line(self, config_file: Path | None) -> str:
        """`FILE: KEY: CAUSE` (the file only when a key of it is at fault)."""
        return f"{config_file}: {self}" if config_file is not None and self.key else str(self)


def describe(exc: BaseException) -> str:
    """A short cause: `Permission denied`, `KEY_VALUES_MISMATCH ...`, `TypeName: message`."""
    if isinstance(exc, ssl.SSLError):
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextmanager
def step(key: str, subject: object) -> Iterator[None]:
    """Run a start-up step; an OSError or ssl.SSLError in it becomes a StartupError naming
    `key`, with `subject` (a path, say) before the reason."""
    try:
        yield
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(key, f"{subject}: {describe(exc)}") from exc


_BIND_HINTS = {
    errno.EADDRINUSE: "another program, maybe another serial-bridge, listens there;"
    " `ss -ltnp` shows which",
    errno.EACCES: "ports below 1024 need systemd/low-port.conf",
    errno.EADDRNOTAVAIL: "not an address of this machine",
}


def bind_error(address: str, exc: OSError, key: str = "server.listen") -> StartupError:
    """`server.listen: HOST:PORT: Address already in use (hint)` for a failed bind (`key`: the
    config key of that address, `ports.NAME.rfc2217` for an RFC 2217 endpoint)."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        reason = exc.strerror or str(exc)  # a host name that does not resolve
    else:
        reason = os.strerror(exc.errno)  # asyncio wraps it in a longer sentence
    hint = _BIND_HINTS.get(exc.errno or 0)
    return StartupError(key, f"{address}: {reason}" + (f" ({hint})" if hint else ""))


def _read(key: str, path: Path) -> bytes:
    with step(key, path):
        return path.read_bytes()


def check_tls_files(server: ServerConfig) -> None:
    """Read the configured TLS files one by one: a missing, unreadable or malformed one is a
    StartupError naming its key (a key that does not match the certificate is found later, by
    the SSL context, and named `server.tls_key`)."""
    if server.tls_cert is not None:
        try:
            x509.load_pem_x509_certificates(_read("server.tls_cert", server.tls_cert))
        except ValueError:
            raise StartupError(
                "server.tls_cert", f"{server.tls_cert}: not a PEM certificate"
            ) from None
    if server.tls_key is not None:
        try:
            load_pem_private_key(_read("server.tls_key", server.tls_key), password=None)
        except TypeError:  # encrypted
            raise StartupError(
                "server.tls_key", f"{server.tls_key}: encrypted; the daemon needs it unencrypted"
            ) from None
        except ValueError:
            raise StartupError(
                "server.tls_key", f"{server.tls_key}: not a PEM private key"
            ) from None
    if server.client_ca is not None:
        data = _read("server.client_ca", server.client_ca)
        try:
            ssl.create_default_context(cadata=data.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise StartupError(
                "server.client_ca", f"{server.client_ca}: not a PEM CA certificate"
            ) from None
