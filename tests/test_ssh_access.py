"""Who may log in over SSH: keys kept with the users (`serial-bridge user key ...`), the host key
and its fingerprint, the `[ssh]` config section, and SSH consoles closed when their credential
ends (key removed, user deleted), like websockets."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.access.sshkeys import BadKey, parse_key
from bridge.config import ConfigError, parse_config
from tests.conftest import PASSWORDS, BridgeFactory, PtyDevice, wait_for
from tests.ssh_helpers import keygen, require_openssh, ssh_bridge

CLI = [sys.executable, "-m", "bridge"]


def cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\n[ssh]\nlisten = ["127.0.0.1:0"]\n'
    )
    done = cli(path, "user", "add", "alice", "--role", "operator", "--password-stdin",
               stdin=f"{PASSWORDS['operator']}\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return path


def test_user_key_add_list_del(config_file: Path, tmp_path: Path) -> None:
    require_openssh()
    key = keygen(tmp_path / "id_alice", comment="alice@laptop")
    line = Path(f"{key}.pub").read_text().strip()
    fp = parse_key(line).fingerprint
    added = cli(config_file, "user", "key", "add", "alice", f"{key}.pub")
    assert added.returncode == 0 and fp in added.stdout, added.stderr
    again = cli(config_file, "user", "key", "add", "alice", stdin=line + "\n")  # from stdin
    assert again.returncode == 1 and "already alice's" in again.stderr
    listed = cli(config_file, "user", "key", "list", "alice")
    assert listed.stdout.split("\t") == [fp, "ssh-ed25519", "alice@laptop\n"]
    weak = keygen(tmp_path / "id_weak", "rsa", 1024)
    refused = cli(config_file, "user", "key", "add", "alice", f"{weak}.pub")
    assert refused.returncode == 1 and "1024 bits is too weak" in refused.stderr
    gone = cli(config_file, "user", "key", "del", "alice", "alice@laptop")  # by comment
    assert gone.returncode == 0 and fp in gone.stdout
    assert cli(config_file, "user", "key", "list", "alice").stdout == ""
    as_args = cli(config_file, "user", "key", "add", "alice", *line.split())  # the key itself
    assert as_args.returncode == 0 and fp in as_args.stdout, as_args.stderr
    audit = (tmp_path / "state" / "audit" / "audit.jsonl").read_text()
    assert audit.count('"user-key"') == 3 and "ssh-ed25519 AAAA" not in audit


def test_key_lines_are_checked() -> None:
    for line, reason in [
        ("ssh-dss AAAAB3NzaC1kc3M= x", "not accepted"),
        ("ssh-ed25519 !!!", "not a valid"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "a certificate is not a key"),
        ("hello", "expected an OpenSSH public key line"),
    ]:
        with pytest.raises(BadKey, match=reason):
            parse_key(line)


def test_ssh_config_section_and_its_errors(tmp_path: Path) -> None:
    base = {"server": {"listen": ["127.0.0.1:8443"], "state_dir": str(tmp_path)}}
    assert parse_config(base, "<t>").ssh is None  # off when absent
    ssh = parse_config({**base, "ssh": {"escape": "^B", "replay": "8KiB"}}, "<t>").ssh
    assert ssh is not None and ssh.listen == (("0.0.0.0", 2222),)
    assert (ssh.escape, ssh.replay, ssh.password_auth) == (b"\x02", 8192, False)
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {
                **base,
                "ssh": {
                    "listen": ["127.0.0.1:8443"],
                    "escape": "x",
                    "max_auth_tries": 0,
                    "pasword_auth": True,
                },
            },
            "<t>",
        )
    problems = "\n".join(raised.value.problems)
    assert "<t>: ssh.escape: 'x' is not a control key" in problems
    assert "<t>: ssh.max_auth_tries: expected a positive integer" in problems
    assert "<t>: ssh.pasword_auth: unknown key — did you mean password_auth?" in problems
    assert "<t>: ssh.listen: 127.0.0.1:8443 overlaps 127.0.0.1:8443 of server.listen" in problems


async def test_host_key_is_private_and_cert_show_prints_its_fingerprint(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path)
    private = bridge.state_dir / "ssh" / "host_ed25519_key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nstate_dir = "{bridge.state_dir}"\n[ssh]\n')
    shown = await asyncio.to_thread(cli, config, "cert", "show")
    assert bridge.daemon.ssh is not None
    assert f"ssh fingerprint: {bridge.daemon.ssh.fingerprint}" in shown.stdout
    # the fingerprint is OpenSSH's own for the key the door serves
    scanned = subprocess.run(
        ["ssh-keygen", "-lf", str(door.known_hosts)], capture_output=True, text=True, check=True
    )
    assert bridge.daemon.ssh.fingerprint in scanned.stdout


@pytest.mark.parametrize("how", ["key removed", "user deleted"])
async def test_an_ended_credential_closes_the_ssh_console(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path, how: str
) -> None:
    from bridge.access.store import UserStore

    keys = {"operator": keygen(tmp_path / "id_op"), "viewer": keygen(tmp_path / "id_v")}
    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path, keys=keys)
    async with (
        door.terminal(keys["operator"], "operator:lab") as term,
        door.terminal(keys["viewer"], "viewer:lab") as other,
    ):
        await term.until(b"lab: read-write")
        await other.until(b"lab: read-only")
        store = UserStore(bridge.state_dir)
        if how == "key removed":
            store.del_ssh_key(
                "operator", parse_key(Path(f"{keys['operator']}.pub").read_text()).fingerprint
            )
        else:
            store.delete("operator")
        await term.until(b"disconnected: session ended or credentials changed")
        assert await term.wait() != 0
        await wait_for(lambda: len(bridge.port.attachments) == 1)
        assert other.proc is not None and other.proc.returncode is None  # the viewer stays
    assert os.path.exists(door.known_hosts)


async def test_a_reload_applies_ssh_settings_to_new_connections(
    bridge_factory: BridgeFactory, pty_device: PtyDevice, tmp_path: Path
) -> None:
    """password_auth, CAs, escape, replay and limits apply to the next connection; the listener
    and the login grace time (asyncssh options) after a restart, as the reload says."""
    from dataclasses import replace

    from tests.conftest import PASSWORDS
    from tests.ssh_helpers import PASSWORD_ONLY, askpass

    bridge, door = await ssh_bridge(bridge_factory, pty_device, tmp_path)
    old = bridge.daemon.config
    assert old.ssh is not None and old.ssh.password_auth is False
    new_ssh = replace(old.ssh, password_auth=True, login_grace=10.0)
    changes = await bridge.daemon.reload(replace(old, ssh=new_ssh))
    assert changes == ["ssh.login_grace changed: takes effect after a restart"], changes
    env = askpass(tmp_path, PASSWORDS["viewer"])
    status, out, err = await door.run(None, "viewer:lab", "who", extra=PASSWORD_ONLY, env=env)
    assert status == 0 and out.startswith("lab: online"), err
