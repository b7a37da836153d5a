"""setuptools' build backend plus one step: the browser terminal's third-party assets.

Before a wheel or an sdist is built, `scripts/build-assets` runs when `bridge/web/static/vendor/`
is missing, so the package carries xterm.js and its licence (none of it is committed). Editable
installs skip this: `./dev` runs the script itself and the files are served from the tree. Without
npm the build goes on with a warning, and the console page then says the terminal is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

# every other hook is setuptools' own
from setuptools.build_meta import *  # noqa: F403

ROOT = Path(__file__).resolve().parent.parent


def _build_assets() -> None:
    if (ROOT / "bridge/web/static/vendor/xterm/xterm.js").exists():
        return
    if not (ROOT / "package.json").exists():
        return
    try:
        subprocess.run([str(ROOT / "scripts/build-assets")], cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(
            f"WARNING: scripts/build-assets failed ({exc}); this build has no browser terminal "
            "(install node and npm, then build again)",
            file=sys.stderr,
        )


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
