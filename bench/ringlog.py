"""Ring log benchmark: throughput, write amplification, silent-console writes, recovery time.

Run: ``.venv/bin/python -m bench.ringlog`` (figures on stdout, JSON in bench/results/ringlog.json).

Write amplification = bytes handed to the file system by the ring (its pwrite calls, counted by
the RingLog itself) / console bytes appended. Console streams are simulated with a fake clock so
an hour of 115200 baud takes seconds; flush() is called every ``flush_interval`` of simulated
time when the ring is dirty, as the hub does. /proc/self/io write_bytes (what reached the block
layer, file system overhead included) is printed alongside where the kernel provides it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.ringlog import RingLog

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


def simulate(
    directory: Path,
    seconds: float,
    tick: float,
    chunk_at: Callable[[int], bytes],
    durable: bool = True,
) -> dict[str, Any]:
    """Feed ``chunk_at(i)`` every ``tick`` simulated s; flush every FLUSH_INTERVAL if dirty."""
    clock = FakeClock()
    path = directory / f"sim-{tick}.log"
    ring = RingLog.open(path, RING_SIZE, FLUSH_INTERVAL, clock, durable=durable)
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
    elapsed = time.perf_counter() - start
    ring.close()
    (directory / f"tp-{chunk}.log").unlink()
    return total / MIB / elapsed


def bench_silent(directory: Path) -> dict[str, Any]:
    clock = FakeClock()
    ring = RingLog.open(directory / "silent.log", RING_SIZE, FLUSH_INTERVAL, clock)
    ring.append(b"login: ")
    ring.flush()
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
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        directory = Path(tmp)
        results["throughput_mib_s"] = {
            f"{chunk}B_appends_{mode}": round(bench_throughput(directory, chunk, durable), 1)
            for mode, durable in (("o_direct", True), ("buffered", False))
            for chunk in (64, 1024, 4096)
        }
        per_tick = BAUD_BYTES_PER_S // 100  # a UART read every 10 ms
        results["sustained_115200"] = simulate(
            directory, 1800.0, 0.01, lambda i: bytes([65 + i % 26]) * per_tick
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
