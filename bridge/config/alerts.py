"""The `[alerts]` and `[playbooks]` sections of the config: console alert rules, the webhook that
alerts are posted to, and where site recovery playbooks live.

Owns their schema, the shipped Linux alert rules (`DEFAULT_RULES`) and their reading (called by
bridge.config.parse with its `Table` reader).
A rule's pattern is a regular expression searched in each output line (bytes, UTF-8); a rule
whose `boot` is "start" marks a boot beginning (no alert), one whose `boot` is "done" fires once
per boot (a login prompt after a reset) and gives the boot its duration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config.values import Table, parse_duration

SEVERITIES = ("info", "warning", "error", "critical")
BOOT_ROLES = ("", "start", "done")
DEFAULT_PLAYBOOKS_DIR = Path("/etc/serial-bridge/playbooks")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class AlertRule:
    """One rule: a regex on output lines, what it is called, how bad, how often it may fire."""

    name: str
    pattern: str
    severity: str = "error"
    rate: tuple[int, float] = (10, 600.0)  # at most N alerts per window (seconds), per port
    ports: tuple[str, ...] | None = None  # None: every port
    boot: str = ""  # "start": a boot begins; "done": a boot ended (once per boot)
    enabled: bool = True


@dataclass(frozen=True)
class WebhookConfig:
    """Where alerts are posted (HTTPS, JSON), and how hard to try."""

    url: str
    ca_file: Path | None = None  # verifies the receiver; None: the system's CAs
    headers: tuple[tuple[str, str], ...] = ()
    headers_file: Path | None = None  # `Name: value` lines (secrets such as Authorization)
    queue: int = 100
    retries: int = 3
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertsConfig:
    """Console alerts: the shipped rules (unless `defaults` is off) after the site's own."""

    defaults: bool = True
    rules: tuple[AlertRule, ...] = ()
    webhook: WebhookConfig | None = None

    def rules_for(self, port: str) -> tuple[AlertRule, ...]:
        """The enabled rules of one port, in matching order: the site's, then the shipped ones
        that no site rule of the same name replaces."""
        own = {r.name for r in self.rules}
        shipped = [r for r in DEFAULT_RULES if r.name not in own] if self.defaults else []
        return tuple(
            r for r in (*self.rules, *shipped) if r.enabled and (r.ports is None or port in r.ports)
        )


def _linux(name: str, pattern: str, severity: str, boot: str = "") -> AlertRule:
    return AlertRule(name, pattern, severity, boot=boot)


# Specific rules before general ones: the first rule that matches a line wins. Each starts with a
# literal, so the regex engine scans a chunk for it at memchr speed (docs/alerts.md: Cost).
DEFAULT_RULES: tuple[AlertRule, ...] = (
    _linux("kernel-panic", r"Kernel panic - not syncing", "critical"),
    _linux("soft-lockup", r"soft lockup - CPU#\d+ stuck", "error"),
    _linux("hard-lockup", r"Watchdog detected hard LOCKUP", "critical"),
    _linux("hung-task", r"INFO: task \S+ blocked for more than \d+ seconds", "warning"),
    _linux("oops", r"Oops(?::| -)", "critical"),
    _linux("bug", r"BUG: ", "error"),
    _linux("machine-check", r"achine [Cc]heck", "critical"),
    _linux("hardware-error", r"\[Hardware Error\]", "critical"),
    _linux("oom-kill", r"ut of memory: Kill", "warning"),
    _linux("grub-rescue", r"grub rescue> ?$", "error"),
    _linux("boot-start", r"Linux version \d|U-Boot \d|GNU GRUB +version", "info", "start"),
    _linux("booted", r" login: ?$", "info", "done"),
)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _pattern(value: Any) -> str:
    text = _string(value)
    try:
        re.compile(text.encode())
    except (re.error, OverflowError) as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if not text or re.fullmatch(text.encode(), b""):
        raise ValueError("the pattern matches an empty line: it would fire on every line")
    return text


def _ports(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError('expected a list of port names, such as ["db1"]')
    return tuple(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected an array of tables ([[alerts.rules]])")
    return value


def _rate(value: Any) -> tuple[int, float]:
    count, sep, window = _string(value).partition("/")
    if not sep or not count.strip().isdigit() or int(count) < 1:
        raise ValueError('expected "COUNT/DURATION", such as "5/10m" (at most 5 in 10 min)')
    seconds = parse_duration(window.strip())
    if seconds <= 0:
        raise ValueError("the window must be longer than 0 s")
    return int(count), seconds


def _rule(t: Table) -> AlertRule:
    name = t.get("name", "", _string)
    if not _NAME.fullmatch(name):
        t.problem("name", "missing or not a name (letters, digits, '_', '-', '.'; max 64)")
    severity = t.get("severity", "error", _string)
    if severity not in SEVERITIES:
        t.problem("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    boot = t.get("boot", "", _string)
    if boot not in BOOT_ROLES:
        t.problem("boot", f'{boot!r} is not "start" or "done"')
    enabled = t.get("enabled", True, _flag)
    pattern = t.get("pattern", "", _pattern)
    shipped_name = any(r.name == name for r in DEFAULT_RULES)
    if "pattern" not in t.data and enabled and not shipped_name:
        t.problem("pattern", "missing (a regular expression searched in each output line)")
    shipped = next((r for r in DEFAULT_RULES if r.name == name), None)
    rule = AlertRule(
        name=name,
        pattern=pattern or (shipped.pattern if shipped else ""),
        severity=severity if "severity" in t.data or shipped is None else shipped.severity,
        rate=t.get("rate", AlertRule("", "").rate, _rate),
        ports=t.get("ports", None, _ports),
        boot=boot if "boot" in t.data or shipped is None else shipped.boot,
        enabled=enabled,
    )
    t.done()
    return rule


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError('expected a table of header names and values, such as {X-Team = "ops"}')
    for name, text in value.items():
        if not _HEADER.fullmatch(name) or not isinstance(text, str) or "\n" in text:
            raise ValueError(f"header {name!r}: expected a header name and a one-line string")
    return tuple(value.items())


def _https(value: Any) -> str:
    url = _string(value)
    if (
        not url.startswith("https://")
        or len(url) <= len("https://")
        or any(c.isspace() for c in url)
    ):
        raise ValueError("expected an https:// URL")  # never echoed: it may hold a secret
    return url


def _webhook(t: Table) -> WebhookConfig:
    ca = t.get("ca_file", None, _string)
    headers_file = t.get("headers_file", None, _string)
    default = WebhookConfig("")
    hook = WebhookConfig(
        url=t.get("url", "", _https),
        ca_file=Path(ca) if ca else None,
        headers=t.get("headers", (), _headers),
        headers_file=Path(headers_file) if headers_file else None,
        queue=t.get("queue", default.queue, _count) or 1,
        retries=t.get("retries", default.retries, _count),
        timeout=t.get("timeout", default.timeout, parse_duration),
    )
    if not hook.url:
        t.problem("url", "missing (the https:// URL alerts are posted to)")
    t.done()
    return hook


def parse_alerts(t: Table, ports: set[str]) -> AlertsConfig:
    """`[alerts]`: `defaults`, `[[alerts.rules]]` and `[alerts.webhook]`."""
    rules: list[AlertRule] = []
    raw: list[Any] = t.get("rules", [], _list)
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            t.problem(f"rules[{i}]", "expected a table ([[alerts.rules]])")
            continue
        sub = Table(item, t.key(f"rules[{i}]"), t.problems, t.where)
        rule = _rule(sub)
        if any(r.name == rule.name for r in rules):
            sub.problem("name", f"{rule.name!r} is used by an earlier rule")
        for port in rule.ports or ():
            if port not in ports:
                sub.problem("ports", f"no port {port!r} in [ports]")
        rules.append(rule)
    webhook_table = t.table("webhook")
    alerts = AlertsConfig(
        defaults=t.get("defaults", True, _flag),
        rules=tuple(rules),
        webhook=_webhook(webhook_table) if webhook_table is not None else None,
    )
    t.done()
    return alerts


def parse_playbooks(t: Table) -> Path:
    """`[playbooks] dir`: where site playbooks are read from."""
    path = Path(t.get("dir", str(DEFAULT_PLAYBOOKS_DIR), _string))
    t.done()
    return path
