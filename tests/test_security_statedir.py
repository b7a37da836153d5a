"""state_dir cannot be used to redirect the daemon's files (#18.16): a directory others can write
is tightened (ours) or refused (theirs), and the ring, key, users, audit and lock files are never
opened through a symlink, nor written through a predictable temporary name."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from bridge.access.store import UserStore
from bridge.history import statedir
from bridge.history.audit import AuditLog
from bridge.history.ringlog import RingLog
from bridge.service.daemon import prepare_state_dir
from bridge.service.tls import ensure_certificate
from tests.test_security_support import cli, write_cli_config

VICTIM = b"a file of someone else's that must not change\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    path.chmod(0o644)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_existing_open_state_dir_of_ours_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "audit").mkdir()
    for d in (state, state / "logs", state / "audit"):
        d.chmod(0o777)
    prepare_state_dir(state)
    AuditLog(state / "audit")
    assert (mode(state), mode(state / "logs"), mode(state / "audit")) == (0o700,) * 3


def test_the_cli_tightens_it_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    config = write_cli_config(state, tmp_path / "c.toml")
    assert cli("user", "list", "--config", str(config)).returncode == 0
    assert mode(state) == 0o700


def test_a_state_dir_that_another_user_owns_and_others_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    me = os.geteuid()
    monkeypatch.setattr(statedir.os, "geteuid", lambda: me + 1)  # as if another user ran us
    with pytest.raises(statedir.UnsafeStateDir) as refused:
        prepare_state_dir(state)
    assert refused.value.errno == errno.EPERM and "owned by uid" in str(refused.value)
    assert mode(state) == 0o777  # not ours to change


def test_the_cli_names_the_problem(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "audit").symlink_to(tmp_path)  # a symlink where a directory belongs
    config = write_cli_config(state, tmp_path / "c.toml")
    done = cli("user", "list", "--config", str(config))
    assert done.returncode == 1
    assert f"server.state_dir: {state / 'audit'}: not a directory" in done.stderr


def test_a_symlinked_ring_log_is_refused_not_grown(tmp_path: Path, victim: Path) -> None:
    ring = tmp_path / "lab.ring"
    ring.symlink_to(victim)
    with pytest.raises(OSError) as refused:
        RingLog.open(ring, 64 * 1024, durable=False)
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == VICTIM


def test_a_symlinked_audit_file_is_refused(tmp_path: Path, victim: Path) -> None:
    audit = AuditLog(tmp_path / "audit")
    audit.path.symlink_to(victim)
    with pytest.raises(OSError) as refused:
        audit.record("logout", user="alice", peer="::1")
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == VICTIM


def test_a_symlinked_tls_key_is_replaced_not_written_through(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True, mode=0o700)
    (state / "tls" / "key.pem").symlink_to(victim)
    cert, key, created = ensure_certificate(state, ["localhost"])
    assert created
    assert victim.read_bytes() == VICTIM
    assert not key.is_symlink() and mode(key) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and not cert.is_symlink()


def test_users_files_are_not_read_or_written_through_symlinks(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # the temporary name the store used to write through (predictable: pid), and the lock
    planted = state / f".users.json.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    store = UserStore(state)
    store.add("alice", "viewer", "scrypt$hash", None)
    assert victim.read_bytes() == VICTIM
    assert mode(state / "users.json") == 0o600
    assert planted.is_symlink()  # left alone: a fresh, random temporary was used
    (state / "tokens.json").symlink_to(victim)
    with pytest.raises(OSError) as refused:
        store.tokens()
    assert refused.value.errno == errno.ELOOP
    (state / ".users.lock").unlink()
    (state / ".users.lock").symlink_to(victim)
    with pytest.raises(OSError) as refused:
        store.add("bob", "viewer", "scrypt$hash", None)
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == VICTIM
