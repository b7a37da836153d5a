"""Audit trail: lines appear, rotate within bounds, are private and never carry a secret."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bridge.history.audit import EVENTS, AuditLog, iso_time


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("login", {"user": "alice", "peer": "192.0.2.7", "ok": True}),
    ("login", {"user": "mallory", "peer": "198.51.100.9", "ok": False, "reason": "bad password"}),
    ("login", {"user": "alice", "peer": "192.0.2.7", "ok": True, "via": "ssh", "cert_serial": 7}),
    ("logout", {"user": "alice", "peer": "192.0.2.7"}),
    ("attach", {"user": "alice", "port": "lab1", "mode": "rw", "peer": "192.0.2.7"}),
    ("detach", {"user": "alice", "port": "lab1", "mode": "rw", "peer": "192.0.2.7"}),
    ("takeover", {"user": "bob", "port": "lab1", "previous": "alice"}),
    ("break", {"user": "bob", "port": "lab1"}),
    ("sysrq", {"user": "bob", "port": "lab1", "keys": "REISUB"}),
    ("nmi", {"user": "root", "port": "lab1"}),
    ("reset", {"user": "root", "port": "lab2"}),
    ("power", {"user": "root", "port": "lab2", "action": "cycle"}),
    ("user-add", {"user": "carol", "role": "viewer", "by": "root"}),
    ("user-set", {"user": "carol", "role": "operator", "ports": ["lab1"], "by": "cli"}),
    ("user-del", {"user": "carol", "by": "cli"}),
    ("user-passwd", {"user": "alice", "by": "cli"}),
    ("user-totp", {"user": "alice", "enrolled": True, "by": "cli"}),
    ("user-key", {"user": "alice", "added": "SHA256:abc", "by": "cli"}),
    ("forward", {"user": "alice", "peer": "192.0.2.7", "to": "127.0.0.1:4001", "result": "ok"}),
    ("token-create", {"user": "root", "label": "ci-bot", "by": "cli"}),
    ("token-revoke", {"user": "root", "label": "ci-bot", "by": "cli"}),
    ("config-reload", {"changes": ["log.size"]}),
    ("line-settings", {"user": "rfc2217", "port": "lab1", "line": "9600 8N1"}),
    ("line-restored", {"user": "rfc2217", "port": "lab1", "line": "115200 8N1"}),
    ("control-lines", {"user": "rfc2217", "port": "lab1", "dtr": False}),
    ("write-dropped", {"user": "rfc2217", "port": "lab1", "peer": "127.0.0.1:5", "bytes": 3}),
    ("port-disabled", {"port": "lab1", "by": "config-reload"}),
    ("port-enabled", {"port": "lab1", "by": "config-reload"}),
    ("unclean-stop", {"port": "lab1", "from": 1000, "to": 1000 + 2**21}),
    ("audit-lost", {"events": 12}),
    ("clock-step", {"by": 86400.5, "to": "2026-11-30T04:00:00+00:00"}),
    (
        "playbook",
        {
            "port": "lab1",
            "user": "alice",
            "playbook": "grub-rescue",
            "args": {"arg": "single"},
            "result": "started",
        },
    ),
    (
        "playbook-step",
        {
            "port": "lab1",
            "user": "alice",
            "playbook": "grub-rescue",
            "step": 1,
            "of": 9,
            "title": "restart the machine",
        },
    ),
    (
        "alert",
        {
            "port": "lab1",
            "rule": "kernel-panic",
            "severity": "critical",
            "at": 4096,
            "line": "Kernel panic - not syncing: VFS",
        },
    ),
]


def test_every_documented_event_is_recorded(tmp_path: Path) -> None:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit", clock=clock)
    for event, fields in EXAMPLES:
        audit.record(event, **fields)
        clock.now += 1
    got = audit.query()  # both files: attach/detach are kept apart (bridge.history.churn)
    assert [e["event"] for e in got] == [e for e, _ in EXAMPLES]
    connections = {e["event"] for e in lines(tmp_path / "audit" / "connections.jsonl")}
    assert connections == {"attach", "detach"}
    assert not {e["event"] for e in lines(audit.path)} & connections
    assert {e for e, _ in EXAMPLES} == set(EVENTS)
    for entry, (_, fields) in zip(got, EXAMPLES, strict=True):
        assert {k: entry[k] for k in fields} == fields
    assert got[0]["time"] == iso_time(1_790_000_000.0) == "2026-09-21T14:13:20.000Z"


def test_modes_are_private(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "state" / "audit")
    audit.record("logout", user="alice", peer="::1")
    assert stat.S_IMODE((tmp_path / "state" / "audit").stat().st_mode) == 0o700
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "hunter2"},
        {"Token": "abc"},
        {"secret": "s"},
        {"totp": "123456"},
        {"code": "123456"},
        {"cookie": "sid=1"},
        {"keystrokes": "rm -rf /\r"},
        {"new_password": "x"},
        {"api_token": "x"},
        {"request": {"headers": {"session_cookie": "x"}}},
    ],
)
def test_secret_fields_are_refused(tmp_path: Path, fields: dict[str, Any]) -> None:
    audit = AuditLog(tmp_path)
    with pytest.raises(ValueError, match="secret"):
        audit.record("login", user="alice", **fields)
    assert not audit.path.exists() or audit.path.read_text() == ""


def test_time_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        AuditLog(tmp_path).record("login", time="yesterday")


def test_rotation_bounds_size_and_keeps_newest(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=1000, keep=3)
    for i in range(200):
        audit.record("sysrq", user="bob", port="lab1", keys="h", n=i)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 1000
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = [e["n"] for p in reversed(audit.files()) for e in lines(p)]
    assert kept == list(range(200 - len(kept), 200))  # contiguous, newest last
    for n in (1, 2, 3):  # rotated files were filled up to the bound, not rotated early
        assert (tmp_path / f"audit.jsonl.{n}").stat().st_size > 1000 - 200


def test_query_filters_and_limit_across_rotated_files(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    audit = AuditLog(tmp_path, max_bytes=2000, keep=5, clock=clock)
    for i in range(60):
        port = "lab1" if i % 2 else "lab2"
        audit.record("takeover", user=["alice", "bob", "carol"][i % 3], port=port, n=i)
        clock.now += 10
    audit.record("user-passwd", user="dave", by="alice")
    assert len(audit.files()) > 2
    all_events = audit.query()
    assert [e.get("n") for e in all_events[:-1]] == sorted(e["n"] for e in all_events[:-1])
    alice = audit.query(user="alice")
    assert alice[-1]["event"] == "user-passwd"
    assert all(e["n"] % 3 == 0 for e in alice[:-1])
    lab1 = audit.query(port="lab1", limit=5)
    assert [e["n"] for e in lab1] == [51, 53, 55, 57, 59]
    recent = audit.query(since=1000.0 + 10 * 55)
    assert [e.get("n") for e in recent] == [55, 56, 57, 58, 59, None]
    assert audit.query(user="bob", port="lab1", since=1000.0 + 10 * 50) == [
        e for e in audit.query() if e.get("n") in (55,)
    ]


def test_query_skips_torn_line(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    audit.record("logout", user="alice", peer="::1")
    with audit.path.open("a") as f:
        f.write('{"time": "2026-01-01T00:00:00.000Z", "ev')
    assert [e["user"] for e in audit.query()] == ["alice"]


def test_connection_churn_cannot_rotate_security_events_away(tmp_path: Path) -> None:
    """A viewer connecting and closing for an hour, and a script hammering a throttled login,
    used to rotate the whole trail away (#18.8): attach/detach are kept apart and coalesced,
    throttled refusals coalesced, so the security events stay."""
    clock = Clock(1_790_000_000.0)
    audit = AuditLog(tmp_path, max_bytes=20_000, keep=2, clock=clock, monotonic=clock)
    audit.record("login", user="alice", peer="192.0.2.1", ok=True)
    audit.record("sysrq", user="alice", port="lab1", keys="s", result="ok")
    churn = {"user": "mallory", "port": "lab1", "mode": "ro", "peer": "198.51.100.9"}
    for _ in range(20_000):  # one round every 0.18 s: an hour
        audit.record("attach", **churn)
        audit.record("detach", **churn)
        clock.now += 0.18
    for _ in range(5_000):
        audit.record("login", user=None, peer="203.0.113.7", ok=False, reason="throttled")
        audit.record("break", user="bob", port="lab1", peer="192.0.2.8", result="refused: busy")
        clock.now += 0.01
    security = [e for p in reversed(audit.files()) for e in lines(p)]
    assert [e["event"] for e in security[:2]] == ["login", "sysrq"]
    refused = [e for e in security if e.get("reason") == "throttled"]
    assert len(refused) == 5  # 50 s of hammering: one window's worth
    assert len([e for e in security if e["event"] == "break"]) == 10
    connections = [e for p in reversed(audit.connection_files()) for e in lines(p)]
    assert {e["event"] for e in connections} == {"attach", "detach"}
    attaches = [e for e in connections if e["event"] == "attach"]
    assert len(attaches) <= 30 * 61
    later = [e for e in attaches if "repeated" in e]
    assert later and all(e["repeated"] > 0 for e in later)  # what was left out is counted
    sizes = sum(p.stat().st_size for p in audit.files() + audit.connection_files())
    assert sizes <= 2 * 3 * 20_000


def test_a_refusing_disk_delays_events_and_loses_none_it_can_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EIO on every write: record() still returns, the lines wait in order, the fault is logged
    once; when writing works again they are all written, oldest first. A backlog over its bound
    drops the oldest and says how many."""
    from bridge.history import audit as audit_module

    monkeypatch.setattr(audit_module, "BACKLOG", 3)
    audit = AuditLog(tmp_path / "audit", clock=Clock())
    audit.record("logout", user="first", peer="::1")
    real_write = os.write

    def failing(fd: int, data: bytes) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit_module.os, "write", failing)
    for name in ("a", "b", "c", "d", "e"):
        audit.record("logout", user=name, peer="::1")
    assert not audit.health.ok and caplog.text.count("Input/output error") == 1
    monkeypatch.setattr(audit_module.os, "write", real_write)
    audit.record("logout", user="f", peer="::1")
    assert audit.health.ok and "writes work again" in caplog.text
    got = lines(tmp_path / "audit" / "audit.jsonl")
    assert [e.get("user") for e in got] == ["first", None, "d", "e", "f"]
    assert got[1]["event"] == "audit-lost" and got[1]["events"] == 3  # a, b, c
