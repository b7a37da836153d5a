"""Reading a config file: TOML -> the schema's dataclasses, every problem reported at once.

Nothing here opens a device or a socket: `load_config` only reads and validates, so
`check-config` and SIGHUP reload can use it without side effects. Checks across keys are in
`bridge.config.check`, the nesting bound in `bridge.config.depth`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from bridge.config.alerts import DEFAULT_PLAYBOOKS_DIR, AlertsConfig, parse_alerts, parse_playbooks
from bridge.config.check import check_listen, check_ports, check_rfc2217
from bridge.config.depth import PROBLEM as NESTING_PROBLEM
from bridge.config.depth import deepest_key, too_deep
from bridge.config.schema import (
    DEFAULT_STATE_DIR,
    AuditConfig,
    Config,
    Framing,
    GpioConfig,
    LineConfig,
    LinesConfig,
    LogConfig,
    OidcConfig,
    OidcGroup,
    PortConfig,
    ServerConfig,
    SshConfig,
)
from bridge.config.values import (
    ConfigError,
    Table,
    count,
    escape_key,
    escaped_bytes,
    https_url,
    is_loopback,
    listen_list,
    parse_duration,
    parse_listen,
    parse_size,
    positive_int,
    string_list,
    syslog_url,
    typed,
)


def _ssh(t: Table) -> SshConfig:
    d = SshConfig()
    ca = t.get("trusted_user_ca_keys", None, typed(str, "a file of CA public keys"))
    ssh = SshConfig(
        listen=t.get("listen", d.listen, listen_list),
        password_auth=t.get("password_auth", False, typed(bool, "true or false")),
        trusted_user_ca_keys=Path(ca) if ca else None,
        escape=t.get("escape", d.escape, escape_key),
        replay=t.get("replay", d.replay, parse_size),
        login_grace=t.get("login_grace", d.login_grace, parse_duration),
        max_unauthenticated=t.get("max_unauthenticated", d.max_unauthenticated, positive_int),
        max_auth_tries=t.get("max_auth_tries", d.max_auth_tries, positive_int),
    )
    if ssh.login_grace <= 0:
        t.problem("login_grace", "must be more than 0 (a client gets this long to log in)")
    t.done()
    return ssh


_FLOW = ("none", "rtscts", "xonxoff")
_PIN_FACTORIES = ("default", "mock", "lgpio", "rpigpio", "pigpio", "native")
_SYSRQ_KEYS = set("0123456789abcdefghijklmnopqrstuvwxyz")
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _line(table: Table, name: str, output: bool) -> LineConfig | None:
    t = table.table(name)
    if t is None:
        return None
    gpio = t.get("gpio", -1, typed(int, "a GPIO number"))
    if "gpio" not in t.data:
        t.problem("gpio", "missing (the BCM GPIO number of this line)")
    active_high = t.get("active_high", True, typed(bool, "true or false"))
    pulse, long_pulse = 0.2, 5.0
    if output:
        pulse = t.get("pulse", 0.2, parse_duration)
        long_pulse = t.get("long_pulse", 5.0, parse_duration)
    t.done()
    return LineConfig(gpio, active_high, pulse, long_pulse)


def _lines(table: Table | None) -> LinesConfig:
    if table is None:
        return LinesConfig()
    lines = LinesConfig(
        nmi=_line(table, "nmi", True),
        reset=_line(table, "reset", True),
        power=_line(table, "power", True),
        power_sense=_line(table, "power_sense", False),
        qmp=table.get("qmp", None, typed(str, "a path to a QMP unix socket")),
    )
    table.done()
    return lines


def _sysrq_deny(value: Any) -> frozenset[str]:
    keys = value if isinstance(value, list) else list(value) if isinstance(value, str) else None
    if keys is None or not all(isinstance(k, str) and k.lower() in _SYSRQ_KEYS for k in keys):
        raise ValueError('expected SysRq keys, such as "c" or ["c", "b"]')
    return frozenset(k.lower() for k in keys)


SCROLLBACK = 1024 * 1024  # in memory per port when it keeps no ring log: all its history
SCROLLBACK_WITH_LOG = 128 * 1024  # the ring log's newest pages kept in memory: the rest is on flash


def _port(name: str, t: Table, log: LogConfig) -> PortConfig:
    if not _PORT_NAME.fullmatch(name):
        t.problems.append(
            f"{t.where}: {t.path}: port names use letters, digits, '_', '-', '.' (max 64)"
        )
    device = t.get("device", "", typed(str, "a device path or URL"))
    if not device:
        t.problem("device", "missing (a device path such as /dev/serial/by-id/..., or a URL)")
    flow = t.get("flow", "none", typed(str, "a string"))
    if flow not in _FLOW:
        t.problem("flow", f"{flow!r} is not one of {', '.join(_FLOW)}")
    port = PortConfig(
        name=name,
        device=device,
        enabled=t.get("enabled", True, typed(bool, "true or false")),
        baud=t.get("baud", 115200, positive_int),
        framing=t.get("framing", Framing(), Framing.parse),
        flow=flow,
        description=t.get("description", "", typed(str, "a string")),
        lines=_lines(t.table("lines")),
        break_duration=t.get("break_duration", 0.25, parse_duration),
        sysrq_deny=t.get("sysrq_deny", frozenset(), _sysrq_deny),
        client_buffer=t.get("client_buffer", 1024 * 1024, parse_size),
        scrollback=t.get(
            "scrollback", SCROLLBACK_WITH_LOG if log.enabled else SCROLLBACK, parse_size
        ),
        max_clients=t.get("max_clients", 256, positive_int),
        reserved_clients=t.get("reserved_clients", 2, count),
        on_release=t.get("on_release", b"", escaped_bytes),
        writer_idle_timeout=t.get("writer_idle_timeout", 0.0, parse_duration),
        require_totp=t.get("require_totp", False, typed(bool, "true or false")),
        rfc2217=t.get("rfc2217", None, lambda v: parse_listen(typed(str, "host:port")(v))),
        rfc2217_insecure_network=t.get(
            "rfc2217_insecure_network", False, typed(bool, "true or false")
        ),
        rfc2217_takeover=t.get("rfc2217_takeover", False, typed(bool, "true or false")),
        low_latency=t.get("low_latency", True, typed(bool, "true or false")),
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


def _oidc(t: Table) -> OidcConfig:
    secret = t.get("client_secret_file", None, typed(str, "a file path"))
    ca = t.get("ca_file", None, typed(str, "a file path"))
    groups: dict[str, OidcGroup] = {}
    if (gt := t.table("groups")) is not None:
        for name in gt.data:
            if (g := gt.table(name)) is None:
                continue
            role = g.get("role", "viewer", typed(str, "viewer, operator or admin"))
            if role not in ("viewer", "operator", "admin"):
                g.problem("role", f"{role!r} is not viewer, operator or admin")
            ports = g.get("ports", None, string_list)
            groups[name] = OidcGroup(role, ports)
            g.done()
        gt.done()
    d = OidcConfig("", "")
    oidc = OidcConfig(
        issuer=t.get("issuer", "", https_url),
        client_id=t.get("client_id", "", typed(str, "a string")),
        client_secret_file=Path(secret) if secret else None,
        scopes=t.get("scopes", d.scopes, string_list),
        username_claim=t.get("username_claim", d.username_claim, typed(str, "a claim name")),
        groups_claim=t.get("groups_claim", d.groups_claim, typed(str, "a claim name")),
        groups=groups,
        audience=t.get("audience", None, typed(str, "a string")),
        ca_file=Path(ca) if ca else None,
        name=t.get("name", d.name, typed(str, "a string")),
        password_login=t.get("password_login", True, typed(bool, "true or false")),
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


def _audit(t: Table | None) -> AuditConfig:
    if t is None:
        return AuditConfig()
    default = AuditConfig()
    socket_path = t.get("journal_socket", str(default.journal_socket), typed(str, "a path"))
    ca = t.get("syslog_ca", None, typed(str, "a file path"))
    audit = AuditConfig(
        journal=t.get("journal", True, typed(bool, "true or false")),
        journal_socket=Path(socket_path),
        syslog=t.get("syslog", None, syslog_url),
        syslog_ca=Path(ca) if ca else None,
        syslog_queue=t.get("syslog_queue", default.syslog_queue, positive_int),
    )
    t.done()
    return audit


def parse_config(data: dict[str, Any], where: str, path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document; `where` names it in error messages."""
    problems: list[str] = []
    root = Table(data, "", problems, where)

    server = ServerConfig()
    if (t := root.table("server")) is not None:
        state_dir = t.get("state_dir", str(DEFAULT_STATE_DIR), typed(str, "a directory path"))
        cert = t.get("tls_cert", None, typed(str, "a file path"))
        key = t.get("tls_key", None, typed(str, "a file path"))
        if (cert is None) != (key is None):
            t.problem("tls_cert" if cert is None else "tls_key", "tls_cert and tls_key go together")
        client_ca = t.get("client_ca", None, typed(str, "a file path"))
        server = ServerConfig(
            listen=t.get("listen", server.listen, listen_list),
            state_dir=Path(state_dir),
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            hostnames=t.get("hostnames", (), string_list),
            origins=t.get("origins", (), string_list),
            trusted_proxies=t.get("trusted_proxies", (), string_list),
            max_connections_per_user=t.get("max_connections_per_user", 64, positive_int),
            session_idle=t.get("session_idle", server.session_idle, parse_duration),
            session_lifetime=t.get("session_lifetime", server.session_lifetime, parse_duration),
            require_totp=t.get("require_totp", False, typed(bool, "true or false")),
            client_ca=Path(client_ca) if client_ca else None,
            advertise=t.get("advertise", False, typed(bool, "true or false")),
        )
        t.done()

    log = LogConfig()
    if (t := root.table("log")) is not None:
        log = LogConfig(
            size=t.get("size", log.size, parse_size),
            flush_interval=t.get("flush_interval", log.flush_interval, parse_duration),
            enabled=t.get("enabled", True, typed(bool, "true or false")),
        )
        if log.size < 64 * 1024:
            t.problem("size", "must be at least 64KiB")
        t.done()

    gpio = GpioConfig()
    if (t := root.table("gpio")) is not None:
        gpio = GpioConfig(pin_factory=t.get("pin_factory", "default", typed(str, "a string")))
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
                ports[name] = _port(name, pt, log)
        t.done()
    alerts = AlertsConfig()
    if (t := root.table("alerts")) is not None:
        alerts = parse_alerts(t, set(ports))
    playbooks = DEFAULT_PLAYBOOKS_DIR
    if (t := root.table("playbooks")) is not None:
        playbooks = parse_playbooks(t)
    root.done()
    check_listen(server.listen, where, problems)
    if ssh is not None:
        check_listen(ssh.listen, where, problems, "ssh.listen", server.listen)
    check_ports(ports, where, problems)
    check_rfc2217(server.listen, ports, where, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        server=server,
        log=log,
        gpio=gpio,
        ports=ports,
        ssh=ssh,
        audit=audit,
        oidc=oidc,
        alerts=alerts,
        playbooks_dir=playbooks,
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
