"""The `serial-bridge` command: argument parsing and dispatch to the modules that do the work.

Each command module exposes `register(sub)`, which adds its subcommand and sets `func`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path

from bridge import __version__
from bridge.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

COMMAND_MODULES = (
    "bridge.service.admin",
    "bridge.client.remote",
    "bridge.client.rescue",
    "bridge.client.fleet",
    "bridge.service.demo",
    "bridge.service.udev",
    "bridge.service.selftest",
)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"config file (default: $SERIAL_BRIDGE_CONFIG or {DEFAULT_CONFIG_PATH})",
    )


def config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("SERIAL_BRIDGE_CONFIG", str(DEFAULT_CONFIG_PATH)))


def load_or_exit(args: argparse.Namespace) -> Config:
    """The validated config, or exit 2 printing every problem (file, key, reason)."""
    try:
        return load_config(config_path(args))
    except ConfigError as exc:
        print("serial-bridge: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_serve(args: argparse.Namespace) -> int:
    from bridge.access.store import UserStore
    from bridge.service import eventloop
    from bridge.service.daemon import serve
    from bridge.service.startup import StartupError, step

    config = load_or_exit(args)
    setup_logging(args.verbose)
    try:
        with step("server.state_dir", config.server.state_dir):
            users = UserStore(config.server.state_dir).users()
        if not users:
            print(
                f"serial-bridge: no users in {config.server.state_dir}: add an admin first:\n"
                f"  serial-bridge user add NAME --role admin --config {config_path(args)}",
                file=sys.stderr,
            )
            return 1
        return eventloop.run_command(serve(config))
    except StartupError as exc:  # one line naming the key; the traceback only when asked
        if args.verbose:
            traceback.print_exception(exc)
        print(f"serial-bridge: cannot start: {exc.line(config_path(args))}", file=sys.stderr)
        return 1


def run_check_config(args: argparse.Namespace) -> int:
    config = load_or_exit(args)
    print(
        f"{config_path(args)}: OK ({len(config.ports)} port(s): "
        f"{', '.join(config.ports) or 'none'})"
    )
    return 0


def run_cert_show(args: argparse.Namespace) -> int:
    from bridge.service.tls import cert_paths, fingerprint
    from bridge.ssh.hostkey import host_key_fingerprint, host_key_paths

    config = load_or_exit(args)
    cert = config.server.tls_cert or cert_paths(config.server.state_dir)[0]
    if not cert.exists():
        print(
            f"serial-bridge: no certificate at {cert} yet (it is made on first start)",
            file=sys.stderr,
        )
        return 1
    print(f"certificate: {cert}\nfingerprint: {fingerprint(cert)}")
    ssh_fingerprint = host_key_fingerprint(config.server.state_dir)
    if ssh_fingerprint is not None:
        print(f"ssh host key: {host_key_paths(config.server.state_dir)[1]}")
        print(f"ssh fingerprint: {ssh_fingerprint}")
    elif config.ssh is not None:
        print("ssh host key: none yet (it is made on first start)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serial-bridge",
        description="A secure remote serial console: UARTs and control lines over TLS websocket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"serial-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon")
    add_config_arg(p)
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; tracebacks of start-up errors"
    )
    p.set_defaults(func=run_serve)

    p = sub.add_parser("check-config", help="validate the config file and print every problem")
    add_config_arg(p)
    p.set_defaults(func=run_check_config)

    p = sub.add_parser("cert", help="the server certificate and SSH host key fingerprints")
    p.add_argument("action", choices=["show"])
    add_config_arg(p)
    p.set_defaults(func=run_cert_show)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
