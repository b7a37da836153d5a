"""The install paths of docs/install-pi.md, from a clean copy of the source tree (what `git clone`
gets: no built assets, no node_modules), into fresh virtualenvs:

- `pip install SRC` (the guide's step 3) builds a wheel through build_support/backend.py, which
  fetches xterm.js with npm; the installed daemon serves it and its console page has a terminal;
- the sdist carries the built files, so a wheel built from it where npm is missing has them too;
- a tree with neither the files nor npm fails at build time, saying what to install.

Nothing is downloaded: pip runs without an index and without build isolation (setuptools comes
from the test environment), npm runs offline from its cache (filled by ./dev's build-assets).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
VENDOR = "bridge/web/static/vendor"
VENDOR_FILES = ("xterm/xterm.js", "xterm/xterm.css", "xterm/LICENSE", "addon-fit/addon-fit.js")


def clean_copy(dest: Path) -> Path:
    """The files of this checkout that a clone has (tracked, and new ones not ignored)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():  # a tracked file deleted in the work tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    assert not (dest / VENDOR).exists()
    return dest


def offline_env(path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(npm_config_offline="true", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if path is not None:
        env["PATH"] = path
    return env


def pip_wheel(source: Path, out: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        env=offline_env(path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def build_sdist(source: Path, out: Path) -> Path:
    """The sdist, built as a build frontend does: the backend's hook, in the tree."""
    hook = (
        "import sys; sys.path.insert(0, 'build_support'); import backend; "
        f"print(backend.build_sdist({str(out)!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hook],
        cwd=source,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees this environment's packages (a .pth line, like the guide's
    --system-site-packages; the editable install here is not seen: .pth files are processed only
    in a venv's own site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = subprocess.run(
        [
            str(where / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "test-dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    return where


def pip_install(venv: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """The guide's `VENV/bin/pip install SRC` (this pip, run in the venv's interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-build-isolation", str(source)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip


def installed_view(venv: Path) -> dict[str, object]:
    """What the installed package itself says about its terminal files."""
    probe = (
        "import json; from bridge.web import pages; print(json.dumps({'dir': str(pages.VENDOR_DIR),"
        " 'missing': pages.vendor_missing(), 'fix': pages.vendor_fix()}))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        env=offline_env(),
        cwd=venv,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


async def served_by_demo(venv: Path) -> tuple[bytes, str]:
    """Start the venv's `serial-bridge demo`; xterm.js as served, and the console page."""
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "serial-bridge"),
        "demo",
        "--port",
        "0",
        env=offline_env(),
        cwd=venv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        banner = ""
        while "password:" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, f"demo exited: {banner}"
            banner += line.decode()
        url = re.search(r"browser:\s+(https://\S+?)/ ", banner)
        password = re.search(r"password:\s+(\S+)", banner)
        assert url and password, banner
        base = url.group(1)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False),
            headers={"Origin": base},
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as session:
            async with session.get(f"{base}/static/vendor/xterm/xterm.js") as resp:
                assert resp.status == 200
                script = await resp.read()
            login = {"username": "admin", "password": password.group(1)}
            async with session.post(f"{base}/api/login", json=login) as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(f"{base}/ports/demo") as resp:
                assert resp.status == 200
                page = await resp.text()
        return script, page
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_every_documented_install_has_the_terminal(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("npm is missing (./dev installs the Debian packages nodejs and npm)")
        pytest.skip("npm is missing (apt-get install nodejs npm)")
    source = clean_copy(tmp_path / "src")

    # the Pi guide, step 3: a venv, `pip install /opt/serial-bridge/src`, `serial-bridge --version`
    venv = await asyncio.to_thread(fresh_venv, tmp_path / "venv")
    installed = await asyncio.to_thread(pip_install, venv, source)
    assert installed.returncode == 0, installed.stderr[-3000:] + (
        "\n(npm runs offline here: run scripts/build-assets once to fill its cache)"
        if "ENOTCACHED" in installed.stderr
        else ""
    )
    version = subprocess.run(
        [str(venv / "bin" / "serial-bridge"), "--version"], env=offline_env(), check=False
    )
    assert version.returncode == 0
    view = installed_view(venv)
    assert view["missing"] == [] and str(view["dir"]).startswith(str(venv))
    # were the files lost, the page would not send a user to a script this install lacks
    assert "build-assets" not in str(view["fix"]) and "install" in str(view["fix"])
    script, page = await served_by_demo(venv)
    assert script == (source / VENDOR / "xterm/xterm.js").read_bytes()
    assert 'data-vendor="ok"' in page

    # the sdist carries the built files and what builds it; a wheel from it needs no npm
    sdist = await asyncio.to_thread(build_sdist, source, tmp_path / "sdist")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {f"{VENDOR}/{f}" for f in VENDOR_FILES} <= names
    assert {"build_support/backend.py", "package.json", "scripts/build-assets"} <= names
    no_npm = tmp_path / "no-npm-bin"  # an empty PATH: no npm, nothing else either
    no_npm.mkdir()
    from_sdist = await asyncio.to_thread(pip_wheel, sdist, tmp_path / "dist2", str(no_npm))
    assert from_sdist.returncode == 0, from_sdist.stderr[-3000:]
    (built2,) = (tmp_path / "dist2").glob("serial_bridge-*.whl")
    with zipfile.ZipFile(built2) as zf:
        assert {f"{VENDOR}/{f}" for f in VENDOR_FILES} <= set(zf.namelist())

    # a clone without the files and without npm: the install stops, saying what to install
    shutil.rmtree(source / VENDOR)
    failed = await asyncio.to_thread(pip_wheel, source, tmp_path / "dist3", str(no_npm))
    assert failed.returncode != 0
    assert "npm is missing" in failed.stderr and "apt install nodejs npm" in failed.stderr
    assert not (tmp_path / "dist3").exists() or not list((tmp_path / "dist3").iterdir())
