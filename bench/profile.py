"""Optional sampling profile of the server during one workload (py-spy, `--profile`).

py-spy records collapsed stacks ("frame;frame;... count") while the workload runs; the summary
lists the functions with the most self samples and the most inclusive samples, which is usually
enough to say what bounds the server (TLS writes, websocket framing, the event loop, ...).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy attached to a pid from construction until `stop()`."""

    def __init__(self, pid: int, out: Path, rate: int = 400) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy not installed (pip install py-spy)")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        if not self.out.exists():
            return {"error": (err or b"").decode(errors="replace")[-300:]}
        return summarize(self.out.read_text())


def _short(frame: str) -> str:
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    self_s: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            n = int(count)
            frames = [_short(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += n
            self_s[frames[-1]] += n
            for f in set(frames[1:]):  # the first frame is the thread name
                incl[f] += n
    if not total:
        return {"samples": 0}

    def pct(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)]

    return {"samples": total, "self_pct": pct(self_s), "inclusive_pct": pct(incl)}


def text(summary: dict[str, Any]) -> str:
    if not summary.get("samples"):
        return f"  (no samples: {summary.get('error', '')})"
    lines = [f"  {summary['samples']} samples; top self time:"]
    lines += [f"    {p:5.1f}%  {f}" for f, p in summary["self_pct"]]
    lines.append("  top inclusive:")
    lines += [f"    {p:5.1f}%  {f}" for f, p in summary["inclusive_pct"]]
    return "\n".join(lines)
