"""Shared pieces of the benchmark harness: payload, stream markers, statistics, /proc sampling.

Everything here is used by more than one process (the orchestrator, the pty target, the client
workers), so it stays free of event loops and global state other than small caches.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import socket
import statistics
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MIB = 1 << 20
KIB = 1 << 10
PAYLOAD_SEED = 0x5E71A1
ECHO_BYTE = 0xFF  # the keystroke the echo client sends; never in the background stream
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Line rates as bytes per second of 8N1 (10 bits per character on the wire).
RATE_115200 = 115_200 // 10
RATE_3M = 3_000_000 // 10
RATE_12M = 12_000_000 // 10


@lru_cache(maxsize=2)
def payload(size: int) -> bytes:
    """The deterministic pseudo-random stream the target writes (same bytes in every process)."""
    return random.Random(PAYLOAD_SEED).randbytes(size)


@lru_cache(maxsize=1)
def background_payload(size: int) -> bytes:
    """The stream used beside the echo client: the payload with every ECHO_BYTE removed."""
    return payload(size).replace(bytes([ECHO_BYTE]), b"\xfe")


def crc_of(size: int, n: int) -> int:
    """CRC32 of the first n bytes of payload(size)."""
    return zlib.crc32(memoryview(payload(size))[:n])


def sync_token(nonce: str) -> bytes:
    """Written repeatedly before a run; a client that sees it is attached to the stream."""
    return b"\x00\x02SYNC-" + nonce.encode() + b"\x03\x00"


def start_marker(nonce: str) -> bytes:
    """Written once right before the payload; the client counts bytes after it."""
    return b"\x00\x01START-" + nonce.encode() + b"\x01\x00"


def new_nonce() -> str:
    return os.urandom(6).hex()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def utc_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# --- /proc sampling of a server process (and its descendants) -------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out.extend(int(x) for x in text.split())
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(c for c in _children(seen[i]) if c not in seen)
        i += 1
    return seen


def _cpu_of(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ProcSample:
    """CPU seconds and memory of a process tree at one moment."""

    cpu: float
    rss_kib: int
    hwm_kib: int


def sample(pid: int) -> ProcSample:
    pids = process_tree(pid)
    return ProcSample(
        cpu=sum(_cpu_of(p) for p in pids),
        rss_kib=sum(_status_kib(p, "VmRSS") for p in pids),
        hwm_kib=sum(_status_kib(p, "VmHWM") for p in pids),
    )


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of the tree to the current RSS (`echo 5 > /proc/PID/clear_refs`)."""
    for p in process_tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            pass


def self_cpu() -> float:
    """CPU seconds used so far by the calling process."""
    t = os.times()
    return t.user + t.system
