"""Configuration: TOML file -> frozen dataclasses, with errors that name file, key path and reason.

Owns the schema of `/etc/serial-bridge/config.toml` (see docs/config.md). Nothing here opens a
device or a socket: `load_config` only reads and validates, so `check-config` and SIGHUP reload can
use it without side effects.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bridge.configcheck import check_listen, check_ports, check_rfc2217
from bridge.configdepth import PROBLEM as NESTING_PROBLEM
from bridge.configdepth import deepest_key, too_deep

DEFAULT_CONFIG_PATH = Path("/etc/serial-bridge/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/serial-bridge")

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


@dataclass(frozen=True)
class Framing:
    """Character framing such as 8N1: data bits, parity (N/E/O/M/S), stop bits."""

    data_bits: int = 8
    parity: str = "N"
    stop_bits: int = 1

    @classmethod
    def parse(cls, text: object) -> Framing:
        if not isinstance(text, str):
            raise ValueError('expected a string such as "8N1"')
        m = re.fullmatch(r"([5-8])([NEOMSneoms])([12])", text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a framing (examples: 8N1, 7E1, 8N2)")
        return cls(int(m.group(1)), m.group(2).upper(), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.data_bits}{self.parity}{self.stop_bits}"

    @property
    def bits_per_char(self) -> int:
        """Bits on the wire per character, start bit included."""
        return 1 + self.data_bits + (0 if self.parity == "N" else 1) + self.stop_bits


@dataclass(frozen=True)
class LineConfig:
    """One GPIO control line (`nmi`, `reset`, `power`, `power_sense`)."""

    gpio: int
    active_high: bool = True
    pulse: float = 0.2
    long_pulse: float = 5.0


@dataclass(frozen=True)
class LinesConfig:
    """A port's control lines: GPIO pins, or a QEMU QMP socket standing in for them."""

    nmi: LineConfig | None = None
    reset: LineConfig | None = None
    power: LineConfig | None = None
    power_sense: LineConfig | None = None
    qmp: str | None = None

    @property
    def configured(self) -> bool:
        return any((self.nmi, self.reset, self.power, self.power_sense, self.qmp))


@dataclass(frozen=True)
class PortConfig:
    """One target machine: its console device and optional control lines."""

    name: str
    device: str
    enabled: bool = True  # false: the device is not opened and clients are refused
    baud: int = 115200
    framing: Framing = field(default_factory=Framing)
    flow: str = "none"
    description: str = ""
    lines: LinesConfig = field(default_factory=LinesConfig)
    break_duration: float = 0.25
    sysrq_deny: frozenset[str] = frozenset()
    client_buffer: int = 1024 * 1024
    scrollback: int = 1024 * 1024
    max_clients: int = 256
    reserved_clients: int = 2
    on_release: bytes = b""
    writer_idle_timeout: float = 0.0
    require_totp: bool = False
    rfc2217: tuple[str, int] | None = None
    rfc2217_insecure_network: bool = False
    rfc2217_takeover: bool = False


@dataclass(frozen=True)
class ServerConfig:
    """Listeners, TLS material, state directory and connection limits."""

    listen: tuple[tuple[str, int], ...] = (("0.0.0.0", 8443),)
    state_dir: Path = DEFAULT_STATE_DIR
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hostnames: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_connections_per_user: int = 64
    session_idle: float = 30 * 60.0
    session_lifetime: float = 12 * 3600.0
    require_totp: bool = False
    client_ca: Path | None = None
    advertise: bool = False  # announce the bridge by DNS-SD (mDNS)


@dataclass(frozen=True)
class LogConfig:
    """The per-port ring log on flash."""

    size: int = 16 * 1024 * 1024
    flush_interval: float = 5.0
    enabled: bool = True


@dataclass(frozen=True)
class OidcGroup:
    """What membership of one IdP group grants: a role, on every port or on `ports`."""

    role: str
    ports: tuple[str, ...] | None = None


@dataclass(frozen=True)
class OidcConfig:
    """Single sign-on through an OpenID Connect provider (bridge.access.oidc)."""

    issuer: str
    client_id: str
    client_secret_file: Path | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    groups: dict[str, OidcGroup] = field(default_factory=dict)  # in order: the first match wins
    audience: str | None = None  # of access tokens used as bearer tokens; None: client_id
    ca_file: Path | None = None  # verifies the provider; None: the system's CAs
    name: str = "single sign-on"  # on the button: "Sign in with <name>"
    password_login: bool = True  # false: the sign-in page offers only single sign-on


@dataclass(frozen=True)
class AuditConfig:
    """Copies of the audit events: the system journal, a remote syslog collector (TLS)."""

    journal: bool = True
    journal_socket: Path = Path("/run/systemd/journal/socket")
    syslog: tuple[str, int] | None = None  # "tls://host:port"
    syslog_ca: Path | None = None  # verifies the collector; None: the system's CAs
    syslog_queue: int = 1000  # events held while the collector is away; then the oldest go


@dataclass(frozen=True)
class GpioConfig:
    """Which gpiozero pin factory drives control lines: `default` (the Pi's) or `mock`."""

    pin_factory: str = "default"


@dataclass(frozen=True)
class SshConfig:
    """The SSH front door (bridge.ssh): on when the `[ssh]` section is present."""

    listen: tuple[tuple[str, int], ...] = (("0.0.0.0", 2222),)
    password_auth: bool = False
    trusted_user_ca_keys: Path | None = None
    escape: bytes = b"\x1d"  # Ctrl-]
    replay: int = 4096
    login_grace: float = 30.0
    max_unauthenticated: int = 10
    max_auth_tries: int = 6


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    ports: dict[str, PortConfig] = field(default_factory=dict)
    ssh: SshConfig | None = None  # None: no SSH listener
    audit: AuditConfig = field(default_factory=AuditConfig)
    oidc: OidcConfig | None = None  # None: no single sign-on


class _Table:
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

    def table(self, name: str) -> _Table | None:
        self.seen.add(name)
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(name, "expected a table")
            return None
        return _Table(value, self.key(name), self.problems, self.where)

    def done(self) -> None:
        for extra in sorted(set(self.data) - self.seen):
            near = difflib.get_close_matches(extra, sorted(self.seen), n=1)
            self.problem(extra, "unknown key" + (f" — did you mean {near[0]}?" if near else ""))


def _typed(kind: type, what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return convert


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number (0 or more), got {value!r}")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
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


def _listen_list(value: Any) -> tuple[tuple[str, int], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a non-empty list of host:port strings")
    return tuple(parse_listen(_typed(str, "a host:port string")(v)) for v in items)


def _escaped_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError('expected a string (TOML escapes such as "\\u0004" or "exit\\r")')
    return value.encode("utf-8")


def _escape_key(value: Any) -> bytes:
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


def _ssh(t: _Table) -> SshConfig:
    d = SshConfig()
    ca = t.get("trusted_user_ca_keys", None, _typed(str, "a file of CA public keys"))
    ssh = SshConfig(
        listen=t.get("listen", d.listen, _listen_list),
        password_auth=t.get("password_auth", False, _typed(bool, "true or false")),
        trusted_user_ca_keys=Path(ca) if ca else None,
        escape=t.get("escape", d.escape, _escape_key),
        replay=t.get("replay", d.replay, parse_size),
        login_grace=t.get("login_grace", d.login_grace, parse_duration),
        max_unauthenticated=t.get("max_unauthenticated", d.max_unauthenticated, _positive_int),
        max_auth_tries=t.get("max_auth_tries", d.max_auth_tries, _positive_int),
    )
    if ssh.login_grace <= 0:
        t.problem("login_grace", "must be more than 0 (a client gets this long to log in)")
    t.done()
    return ssh


_FLOW = ("none", "rtscts", "xonxoff")
_PIN_FACTORIES = ("default", "mock", "lgpio", "rpigpio", "pigpio", "native")
_SYSRQ_KEYS = set("0123456789abcdefghijklmnopqrstuvwxyz")
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _line(table: _Table, name: str, output: bool) -> LineConfig | None:
    t = table.table(name)
    if t is None:
        return None
    gpio = t.get("gpio", -1, _typed(int, "a GPIO number"))
    if "gpio" not in t.data:
        t.problem("gpio", "missing (the BCM GPIO number of this line)")
    active_high = t.get("active_high", True, _typed(bool, "true or false"))
    pulse, long_pulse = 0.2, 5.0
    if output:
        pulse = t.get("pulse", 0.2, parse_duration)
        long_pulse = t.get("long_pulse", 5.0, parse_duration)
    t.done()
    return LineConfig(gpio, active_high, pulse, long_pulse)


def _lines(table: _Table | None) -> LinesConfig:
    if table is None:
        return LinesConfig()
    lines = LinesConfig(
        nmi=_line(table, "nmi", True),
        reset=_line(table, "reset", True),
        power=_line(table, "power", True),
        power_sense=_line(table, "power_sense", False),
        qmp=table.get("qmp", None, _typed(str, "a path to a QMP unix socket")),
    )
    table.done()
    return lines


def _sysrq_deny(value: Any) -> frozenset[str]:
    keys = value if isinstance(value, list) else list(value) if isinstance(value, str) else None
    if keys is None or not all(isinstance(k, str) and k.lower() in _SYSRQ_KEYS for k in keys):
        raise ValueError('expected SysRq keys, such as "c" or ["c", "b"]')
    return frozenset(k.lower() for k in keys)


def _port(name: str, t: _Table) -> PortConfig:
    if not _PORT_NAME.fullmatch(name):
        t.problems.append(
            f"{t.where}: {t.path}: port names use letters, digits, '_', '-', '.' (max 64)"
        )
    device = t.get("device", "", _typed(str, "a device path or URL"))
    if not device:
        t.problem("device", "missing (a device path such as /dev/serial/by-id/..., or a URL)")
    flow = t.get("flow", "none", _typed(str, "a string"))
    if flow not in _FLOW:
        t.problem("flow", f"{flow!r} is not one of {', '.join(_FLOW)}")
    port = PortConfig(
        name=name,
        device=device,
        enabled=t.get("enabled", True, _typed(bool, "true or false")),
        baud=t.get("baud", 115200, _positive_int),
        framing=t.get("framing", Framing(), Framing.parse),
        flow=flow,
        description=t.get("description", "", _typed(str, "a string")),
        lines=_lines(t.table("lines")),
        break_duration=t.get("break_duration", 0.25, parse_duration),
        sysrq_deny=t.get("sysrq_deny", frozenset(), _sysrq_deny),
        client_buffer=t.get("client_buffer", 1024 * 1024, parse_size),
        scrollback=t.get("scrollback", 1024 * 1024, parse_size),
        max_clients=t.get("max_clients", 256, _positive_int),
        reserved_clients=t.get("reserved_clients", 2, _count),
        on_release=t.get("on_release", b"", _escaped_bytes),
        writer_idle_timeout=t.get("writer_idle_timeout", 0.0, parse_duration),
        require_totp=t.get("require_totp", False, _typed(bool, "true or false")),
        rfc2217=t.get("rfc2217", None, lambda v: parse_listen(_typed(str, "host:port")(v))),
        rfc2217_insecure_network=t.get(
            "rfc2217_insecure_network", False, _typed(bool, "true or false")
        ),
        rfc2217_takeover=t.get("rfc2217_takeover", False, _typed(bool, "true or false")),
    )
    if port.rfc2217 and not is_loopback(port.rfc2217[0]) and not port.rfc2217_insecure_network:
        t.problem(
            "rfc2217",
            f"{port.rfc2217[0]} is not a loopback address; RFC 2217 has no authentication, so"
            " anyone who reaches it may type on this console. Use 127.0.0.1 (remote users come"
            " through `ssh -L`), or set rfc2217_insecure_network = true on an isolated lab"
            " network",
        )
    t.done()
    return port


def parse_syslog_url(url: str) -> tuple[str, int]:
    """`tls://host:port` (port 6514 if left out) -> (host, port); ValueError otherwise."""
    match = re.fullmatch(r"tls://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d{1,5}))?/?", url)
    if match is None:
        raise ValueError('expected "tls://host:port" (syslog over TLS, RFC 5425)')
    port = int(match.group(2) or 6514)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return match.group(1).strip("[]"), port


def _syslog_url(value: Any) -> tuple[str, int]:
    return parse_syslog_url(_typed(str, '"tls://host:port"')(value))


def _https_url(value: Any) -> str:
    url = _typed(str, "an https:// URL")(value).rstrip("/")
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise ValueError(f"expected an https:// URL, got {value!r}")
    return str(url)


def _oidc(t: _Table) -> OidcConfig:
    secret = t.get("client_secret_file", None, _typed(str, "a file path"))
    ca = t.get("ca_file", None, _typed(str, "a file path"))
    groups: dict[str, OidcGroup] = {}
    if (gt := t.table("groups")) is not None:
        for name in gt.data:
            if (g := gt.table(name)) is None:
                continue
            role = g.get("role", "viewer", _typed(str, "viewer, operator or admin"))
            if role not in ("viewer", "operator", "admin"):
                g.problem("role", f"{role!r} is not viewer, operator or admin")
            ports = g.get("ports", None, _string_list)
            groups[name] = OidcGroup(role, ports)
            g.done()
        gt.done()
    d = OidcConfig("", "")
    oidc = OidcConfig(
        issuer=t.get("issuer", "", _https_url),
        client_id=t.get("client_id", "", _typed(str, "a string")),
        client_secret_file=Path(secret) if secret else None,
        scopes=t.get("scopes", d.scopes, _string_list),
        username_claim=t.get("username_claim", d.username_claim, _typed(str, "a claim name")),
        groups_claim=t.get("groups_claim", d.groups_claim, _typed(str, "a claim name")),
        groups=groups,
        audience=t.get("audience", None, _typed(str, "a string")),
        ca_file=Path(ca) if ca else None,
        name=t.get("name", d.name, _typed(str, "a string")),
        password_login=t.get("password_login", True, _typed(bool, "true or false")),
    )
    for key in ("issuer", "client_id"):
        if not getattr(oidc, key):
            t.problem(key, "missing")
    if "openid" not in oidc.scopes:
        t.problem("scopes", 'must include "openid"')
    if not groups:
        t.problem("groups", "missing: map at least one IdP group to a role ([oidc.groups.NAME])")
    t.done()
    return oidc


def _audit(t: _Table | None) -> AuditConfig:
    if t is None:
        return AuditConfig()
    default = AuditConfig()
    socket_path = t.get("journal_socket", str(default.journal_socket), _typed(str, "a path"))
    ca = t.get("syslog_ca", None, _typed(str, "a file path"))
    audit = AuditConfig(
        journal=t.get("journal", True, _typed(bool, "true or false")),
        journal_socket=Path(socket_path),
        syslog=t.get("syslog", None, _syslog_url),
        syslog_ca=Path(ca) if ca else None,
        syslog_queue=t.get("syslog_queue", default.syslog_queue, _positive_int),
    )
    t.done()
    return audit


def parse_config(data: dict[str, Any], where: str, path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document; `where` names it in error messages."""
    problems: list[str] = []
    root = _Table(data, "", problems, where)

    server = ServerConfig()
    if (t := root.table("server")) is not None:
        state_dir = t.get("state_dir", str(DEFAULT_STATE_DIR), _typed(str, "a directory path"))
        cert = t.get("tls_cert", None, _typed(str, "a file path"))
        key = t.get("tls_key", None, _typed(str, "a file path"))
        if (cert is None) != (key is None):
            t.problem("tls_cert" if cert is None else "tls_key", "tls_cert and tls_key go together")
        client_ca = t.get("client_ca", None, _typed(str, "a file path"))
        server = ServerConfig(
            listen=t.get("listen", server.listen, _listen_list),
            state_dir=Path(state_dir),
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            hostnames=t.get("hostnames", (), _string_list),
            origins=t.get("origins", (), _string_list),
            trusted_proxies=t.get("trusted_proxies", (), _string_list),
            max_connections_per_user=t.get("max_connections_per_user", 64, _positive_int),
            session_idle=t.get("session_idle", server.session_idle, parse_duration),
            session_lifetime=t.get("session_lifetime", server.session_lifetime, parse_duration),
            require_totp=t.get("require_totp", False, _typed(bool, "true or false")),
            client_ca=Path(client_ca) if client_ca else None,
            advertise=t.get("advertise", False, _typed(bool, "true or false")),
        )
        t.done()

    log = LogConfig()
    if (t := root.table("log")) is not None:
        log = LogConfig(
            size=t.get("size", log.size, parse_size),
            flush_interval=t.get("flush_interval", log.flush_interval, parse_duration),
            enabled=t.get("enabled", True, _typed(bool, "true or false")),
        )
        if log.size < 64 * 1024:
            t.problem("size", "must be at least 64KiB")
        t.done()

    gpio = GpioConfig()
    if (t := root.table("gpio")) is not None:
        gpio = GpioConfig(pin_factory=t.get("pin_factory", "default", _typed(str, "a string")))
        if gpio.pin_factory not in _PIN_FACTORIES:
            t.problem("pin_factory", f"{gpio.pin_factory!r} is not one of {_PIN_FACTORIES}")
        t.done()

    ssh = _ssh(t) if (t := root.table("ssh")) is not None else None
    audit = _audit(root.table("audit"))
    oidc = _oidc(t) if (t := root.table("oidc")) is not None else None

    ports: dict[str, PortConfig] = {}
    if (t := root.table("ports")) is not None:
        for name in t.data:
            if (pt := t.table(name)) is not None:
                ports[name] = _port(name, pt)
        t.done()
    root.done()
    check_listen(server.listen, where, problems)
    if ssh is not None:
        check_listen(ssh.listen, where, problems, "ssh.listen", server.listen)
    check_ports(ports, where, problems)
    check_rfc2217(server.listen, ports, where, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path, server=server, log=log, gpio=gpio, ports=ports, ssh=ssh, audit=audit, oidc=oidc
    )


def load_config(path: Path) -> Config:
    """Read and validate a config file. Raises ConfigError naming the file, key and reason."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from exc
    except RecursionError:
        raise ConfigError([f"{path}: {deepest_key(text)}: {NESTING_PROBLEM}"]) from None
    if (deep := too_deep(data)) is not None:
        raise ConfigError([f"{path}: {deep}: {NESTING_PROBLEM}"])
    return parse_config(data, str(path), path)
