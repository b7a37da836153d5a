"""Ring log benchmark: throughput, write amplification, silent-console writes, recovery time.

Run: ``.venv/bin/python -m bench.ringlog`` (figures on stdout, JSON in bench/results/ringlog.json);
``--baseline REV`` also measures the RingLog of git revision REV (e.g. the one before the writer
thread) in the caller-time and amplification figures, side by side with the current one.

Write amplification = bytes handed to the file system by the ring (its pwrite calls, counted by
the RingLog itself) / console bytes appended. Console streams are simulated with a fake clock so
an hour of 115200 baud takes seconds; flush() is called every ``flush_interval`` of simulated
time when the ring is dirty, as the hub does. /proc/self/io write_bytes (what reached the block
layer, file system overhead included) is printed alongside where the kernel provides it.

Caller time ("loop_blocked"): the time spent inside append() and flush() calls on the calling
thread (the event loop in the hub), per MiB appended, for a burst and for paced streams with
O_DIRECT on; "caller_mib_s" is the append throughput the caller sees (MiB / time inside calls),
"device_mib_s" what reached the file per second including the final drain (close()).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.history.ringlog import RingLog

MIB = 1024 * 1024
RING_SIZE = 16 * MIB
BAUD_BYTES_PER_S = 115200 // 10  # 8N1: 10 bits on the wire per byte
FLUSH_INTERVAL = 5.0


class FakeClock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def proc_write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def load_baseline(rev: str) -> Any:
    """The RingLog class of git revision ``rev``: its whole ``bridge`` package is extracted to a
    temporary directory and imported in place of the current one just long enough to load the
    ring log (bridge/ringlog.py before the package layout, bridge/history/ringlog.py since)."""
    root = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", rev, "bridge"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    name = "bridge.history.ringlog" if (root / "bridge/history/ringlog.py").exists() else None
    current = {k: v for k, v in sys.modules.items() if k == "bridge" or k.startswith("bridge.")}
    for key in current:
        del sys.modules[key]
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(name or "bridge.ringlog")
        return module.RingLog
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k == "bridge" or k.startswith("bridge.")]:
            del sys.modules[key]
        sys.modules.update(current)


def caller_time(
    ring_cls: Any,
    directory: Path,
    chunk: int,
    total: int,
    rate: float | None = None,
    flush_every: float | None = None,
) -> dict[str, Any]:
    """Append ``total`` bytes in ``chunk``-byte pieces (paced at ``rate`` B/s if given, flush()
    every ``flush_every`` s of real time); time every append()/flush() call on this thread."""
    payload = (bytes(range(256)) * (chunk // 256 + 1))[:chunk]
    path = directory / f"caller-{chunk}.log"
    ring = ring_cls.open(path, RING_SIZE, FLUSH_INTERVAL, durable=True)
    calls: list[float] = []
    perf = time.perf_counter
    start = perf()
    next_flush = start + (flush_every or float("inf"))
    for i in range(total // chunk):
        if rate is not None:
            delay = start + i * chunk / rate - perf()
            if delay > 0:
                time.sleep(delay)
        t0 = perf()
        ring.append(payload)
        t1 = perf()
        if t1 >= next_flush:
            ring.flush()
            next_flush += flush_every or float("inf")
        calls.append(perf() - t0)
    t0 = perf()
    ring.flush()
    calls.append(perf() - t0)
    t0 = perf()
    ring.close()
    done = perf()
    path.unlink()
    inside = sum(calls)
    mib = total / MIB
    ordered = sorted(calls)
    return {
        "mib": round(mib, 2),
        "loop_blocked_ms_per_mib": round(inside * 1000 / mib, 3),
        "caller_mib_s": round(mib / inside, 1),
        "device_mib_s": round(mib / (done - start), 1),
        "close_ms": round((done - t0) * 1000, 2),
        "call_p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
        "call_max_ms": round(ordered[-1] * 1000, 3),
        "stalls": getattr(ring.stats, "stalls", None),
        "stall_ms": round(getattr(ring.stats, "stall_seconds", 0.0) * 1000, 2),
        "queue_peak": getattr(ring.stats, "queue_peak", None),
        "write_calls": getattr(ring.stats, "write_calls", None),
    }


CALLER_CASES: dict[str, dict[str, Any]] = {
    "burst_32MiB_in_64KiB_appends": {"chunk": 65536, "total": 32 * MIB},
    "paced_12Mbaud_4KiB_reads_3s_flush_0.5s": {
        "chunk": 4096, "total": 3 * 1_200_000 // 4096 * 4096, "rate": 1_200_000,
        "flush_every": 0.5,
    },
    "paced_20MiB_s_64KiB_reads_2s_flush_0.5s": {
        "chunk": 65536, "total": 40 * MIB, "rate": 20 * MIB, "flush_every": 0.5,
    },
}  # fmt: skip


def bench_caller(directory: Path, impls: dict[str, Any], repeats: int = 3) -> dict[str, Any]:
    """Median over ``repeats`` runs (by loop time blocked) of each case, for each RingLog."""
    out: dict[str, Any] = {}
    for case, params in CALLER_CASES.items():
        out[case] = {}
        for name, ring_cls in impls.items():
            runs = [caller_time(ring_cls, directory, **params) for _ in range(repeats)]
            runs.sort(key=lambda r: r["loop_blocked_ms_per_mib"])
            out[case][name] = runs[len(runs) // 2]
    return out


def simulate(
    directory: Path,
    seconds: float,
    tick: float,
    chunk_at: Callable[[int], bytes],
    durable: bool = True,
    ring_cls: Any = RingLog,
) -> dict[str, Any]:
    """Feed ``chunk_at(i)`` every ``tick`` simulated s; flush every FLUSH_INTERVAL if dirty."""
    clock = FakeClock()
    path = directory / f"sim-{tick}.log"
    ring = ring_cls.open(path, RING_SIZE, FLUSH_INTERVAL, clock, durable=durable)
    io_before = proc_write_bytes()
    console = 0
    next_flush = clock.now + FLUSH_INTERVAL
    end = clock.now + seconds
    i = 0
    while clock.now < end:
        data = chunk_at(i)
        ring.append(data)
        console += len(data)
        i += 1
        clock.now += tick
        if clock.now >= next_flush:
            if ring.dirty:
                ring.flush()
            next_flush += FLUSH_INTERVAL
    ring.close()
    io_after = proc_write_bytes()
    path.unlink()
    block_io = None if io_before is None or io_after is None else io_after - io_before
    return {
        "simulated_seconds": seconds,
        "console_bytes": console,
        "bytes_written": ring.stats.bytes_written,
        "writes": ring.stats.writes,
        "syncs": ring.stats.syncs,
        "amplification": round(ring.stats.bytes_written / console, 4),
        "proc_write_bytes": block_io,
        "proc_amplification": None if block_io is None else round(block_io / console, 4),
    }


def bench_throughput(directory: Path, chunk: int, durable: bool, total: int = 64 * MIB) -> float:
    payload = bytes(range(256)) * (chunk // 256 + 1)
    payload = payload[:chunk]
    ring = RingLog.open(directory / f"tp-{chunk}.log", RING_SIZE, durable=durable)
    start = time.perf_counter()
    for _ in range(total // chunk):
        ring.append(payload)
    ring.flush()
    elapsed = time.perf_counter() - start  # as the caller sees it (the writer may still write)
    ring.close()
    (directory / f"tp-{chunk}.log").unlink()
    return total / MIB / elapsed


def bench_silent(directory: Path) -> dict[str, Any]:
    clock = FakeClock()
    ring = RingLog.open(directory / "silent.log", RING_SIZE, FLUSH_INTERVAL, clock)
    ring.append(b"login: ")
    ring.flush()
    ring.wait_idle()
    before = ring.stats.writes, ring.stats.syncs
    for _ in range(int(3600 / FLUSH_INTERVAL)):  # one hour of flush ticks, nothing printed
        clock.now += FLUSH_INTERVAL
        ring.flush()  # called even though not dirty: it must do nothing
    writes = ring.stats.writes - before[0]
    syncs = ring.stats.syncs - before[1]
    ring.close()
    return {"writes_per_hour": writes, "syncs_per_hour": syncs}


def bench_recovery(directory: Path, line: int, name: str) -> dict[str, Any]:
    """Fill a 16 MiB ring past wrap-around with ``line``-byte appends 1.5 s apart, reopen it."""
    clock = FakeClock()
    path = directory / f"recover-{name}.log"
    ring = RingLog.open(path, RING_SIZE, FLUSH_INTERVAL, clock, durable=False)
    payload = (b"x" * (line - 2)) + b"\r\n"
    while ring.oldest_offset == 0:  # until the ring has wrapped: every block holds records
        for _ in range(1000):
            ring.append(payload)
            clock.now += 1.5
    ring.close()
    held = ring.next_offset - ring.oldest_offset
    times = []
    for _ in range(3):
        start = time.perf_counter()
        reopened = RingLog.open(path, RING_SIZE, FLUSH_INTERVAL, clock, durable=False)
        times.append(time.perf_counter() - start)
        assert reopened.next_offset - reopened.oldest_offset == held
        reopened.close()
    path.unlink()
    return {"line_bytes": line, "bytes_held": held, "seconds_median": statistics.median(times),
            "seconds_max": max(times)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also measure RingLog at git REV")
    args = parser.parse_args()
    impls: dict[str, Any] = {"current": RingLog}
    if args.baseline:
        impls[f"baseline {args.baseline}"] = load_baseline(args.baseline)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        directory = Path(tmp)
        results["caller_time_o_direct"] = bench_caller(directory, impls)
        results["throughput_mib_s"] = {
            f"{chunk}B_appends_{mode}": round(bench_throughput(directory, chunk, durable), 1)
            for mode, durable in (("o_direct", True), ("buffered", False))
            for chunk in (64, 1024, 4096)
        }
        per_tick = BAUD_BYTES_PER_S // 100  # a UART read every 10 ms
        results["sustained_115200"] = simulate(
            directory, 1800.0, 0.01, lambda i: bytes([65 + i % 26]) * per_tick
        )
        for name, ring_cls in impls.items():
            if ring_cls is not RingLog:
                results[f"sustained_115200 ({name})"] = simulate(
                    directory,
                    1800.0,
                    0.01,
                    lambda i: bytes([65 + i % 26]) * per_tick,
                    ring_cls=ring_cls,
                )
        results["trickle_80B_every_2s"] = simulate(
            directory, 3600.0, 2.0, lambda i: b"%-78d\r\n" % i
        )
        results["silent"] = bench_silent(directory)
        results["recovery_full_16MiB"] = {
            "4000-byte appends 1.5 s apart": bench_recovery(directory, 4000, "big"),
            "80-byte lines 1.5 s apart (39 records per block)": bench_recovery(
                directory, 80, "lines"
            ),
        }
    sustained = results["sustained_115200"]["amplification"]
    recovery = max(r["seconds_max"] for r in results["recovery_full_16MiB"].values())
    results["targets"] = {
        "amplification_sustained<=1.10": sustained <= 1.10,
        "silent_writes==0": results["silent"]["writes_per_hour"] == 0,
        "recovery<1s": recovery < 1.0,
    }
    print(json.dumps(results, indent=2))
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ringlog.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
