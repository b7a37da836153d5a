"""setuptools' build backend plus one step: the browser terminal's third-party assets.

Before a wheel, an sdist or an editable install is built, `scripts/build-assets` fetches xterm.js
from npm into `bridge/web/static/vendor/` (none of it is committed) unless the files are already
there at the versions package.json pins. Wheels and sdists carry the files, so installing one needs
no npm. When the files are missing and cannot be fetched (no npm), the build fails with a message
saying what to install: a build without them would give a console page with no terminal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

# every other hook is setuptools' own
from setuptools.build_meta import *  # noqa: F403

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "bridge/web/static/vendor"
SCRIPT = ROOT / "scripts/build-assets"

NO_NPM = """
serial-bridge: cannot build the browser terminal: its files (xterm.js, from npm) are not in
this source tree, and npm is missing to fetch them. Without them the web console would have
no terminal, so the build stops here. Install Node.js and npm, then run the same command again:
    sudo apt install nodejs npm        (Debian, Ubuntu, Raspberry Pi OS)
(Or install a wheel or an sdist of serial-bridge: they carry the files and need no npm.)
"""


def _assets_current() -> bool:
    """vendor/ holds xterm.js, at the versions package.json pins (when there is one)."""
    if not (VENDOR / "xterm/xterm.js").is_file():
        return False
    try:
        wanted = json.loads((ROOT / "package.json").read_text())["dependencies"]
    except FileNotFoundError:
        return True  # no package.json: nothing to compare with
    try:
        built = json.loads((VENDOR / "versions.json").read_text())
    except (OSError, ValueError):
        return False
    return all(built.get(name) == version for name, version in wanted.items())


def _build_assets() -> None:
    if _assets_current():
        return
    if shutil.which("npm") is None or not SCRIPT.is_file():
        raise SystemExit(NO_NPM)
    try:
        subprocess.run([str(SCRIPT)], cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"\nserial-bridge: {SCRIPT.name} failed ({exc}); the browser terminal cannot be "
            "built, so the build stops here. Its output above says why (npm needs the npm "
            "registry once).\n"
        ) from exc


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _build_assets()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    _build_assets()
    return _setuptools.build_sdist(sdist_directory, config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _build_assets()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
