"""Config values: the error type, size and duration parsing, and typed getters for TOML tables.

Each getter records a problem (`FILE: key.path: reason`) instead of raising, so one pass over a
file reports every mistake in it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems in a config file; each line says `FILE: KEY: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_MAX_SECONDS = 1e9  # about 31 years: longer is a mistake (or NaN/infinity in disguise)


def parse_size(value: object) -> int:
    """`16MiB`, `4096`, `64 KiB` -> bytes. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 16MiB, got {type(value).__name__}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (examples: 4096, 64KiB, 16MiB, 1GiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: object) -> float:
    """`250ms`, `5s`, `2m`, `1h`, or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, got a boolean")
    if isinstance(value, int | float):
        if not abs(value) <= _MAX_SECONDS:  # also NaN and infinity
            raise ValueError(f"a duration must be a finite number of seconds, not {value!r:.40}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 5s, got {type(value).__name__}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)\s*", value)
    if not m:
        raise ValueError(f"{value!r} is not a duration (examples: 250ms, 5s, 30m, 12h)")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not seconds <= _MAX_SECONDS:
        raise ValueError(f"{value[:40]!r} is too long a duration")
    return seconds


class Table:
    """A TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, data: dict[str, Any], path: str, problems: list[str], where: str) -> None:
        self.data, self.path, self.problems, self.where = data, path, problems, where
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, reason: str) -> None:
        self.problems.append(f"{self.where}: {self.key(name)}: {reason}")

    def get(self, name: str, default: T, convert: Callable[[Any], T]) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        try:
            return convert(self.data[name])
        except (ValueError, TypeError) as exc:
            self.problem(name, str(exc))
            return default

    def table(self, name: str) -> Table | None:
        self.seen.add(name)
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(name, "expected a table")
            return None
        return Table(value, self.key(name), self.problems, self.where)

    def done(self) -> None:
        for extra in sorted(set(self.data) - self.seen):
            near = difflib.get_close_matches(extra, sorted(self.seen), n=1)
            self.problem(extra, "unknown key" + (f" — did you mean {near[0]}?" if near else ""))


def typed(kind: type, what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return convert


def positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number (0 or more), got {value!r}")
    return value


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def parse_listen(value: str) -> tuple[str, int]:
    """`0.0.0.0:8443`, `[::1]:8443`, `localhost:8443` -> (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not m:
        raise ValueError(f"{value!r} is not host:port (examples: 0.0.0.0:8443, [::1]:8443)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: an address only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_list(value: Any) -> tuple[tuple[str, int], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a non-empty list of host:port strings")
    return tuple(parse_listen(typed(str, "a host:port string")(v)) for v in items)


def escaped_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError('expected a string (TOML escapes such as "\\u0004" or "exit\\r")')
    return value.encode("utf-8")


def escape_key(value: Any) -> bytes:
    """`"^]"` (caret notation) or one control character such as `"\u001d"` -> that byte."""
    if isinstance(value, str) and len(value) == 2 and value[0] == "^":
        code = ord(value[1].upper()) ^ 0x40
    elif isinstance(value, str) and len(value) == 1:
        code = ord(value)
    else:
        raise ValueError(f'expected a control key such as "^]" or "^^", got {value!r}')
    if not (code < 0x20 or code == 0x7F) or code in (0x0D, 0x0A):
        raise ValueError(f"{value!r} is not a control key (^@ .. ^_ or ^?, not Enter)")
    return bytes([code])


def parse_syslog_url(url: str) -> tuple[str, int]:
    """`tls://host:port` (port 6514 if left out) -> (host, port); ValueError otherwise."""
    match = re.fullmatch(r"tls://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d{1,5}))?/?", url)
    if match is None:
        raise ValueError('expected "tls://host:port" (syslog over TLS, RFC 5425)')
    port = int(match.group(2) or 6514)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return match.group(1).strip("[]"), port


def syslog_url(value: Any) -> tuple[str, int]:
    return parse_syslog_url(typed(str, '"tls://host:port"')(value))


def https_url(value: Any) -> str:
    url = typed(str, "an https:// URL")(value).rstrip("/")
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise ValueError(f"expected an https:// URL, got {value!r}")
    return str(url)
