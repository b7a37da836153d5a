"""The config schema: what `/etc/serial-bridge/config.toml` holds, as frozen dataclasses.

The reference for every key is docs/config.md; `bridge.config.parse` fills these from TOML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bridge.config.alerts import DEFAULT_PLAYBOOKS_DIR, AlertsConfig

DEFAULT_CONFIG_PATH = Path("/etc/serial-bridge/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/serial-bridge")


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
    low_latency: bool = True  # ASYNC_LOW_LATENCY on open (FTDI: latency_timer 1 ms, not 16)


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
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # bridge.config.alerts
    playbooks_dir: Path = DEFAULT_PLAYBOOKS_DIR  # site recovery playbooks ([playbooks] dir)
