"""`python -m bench`: raw pty vs ser2net vs serial-bridge, one table and one JSON file.

    python -m bench [--quick] [--only WORKLOAD,...] [--systems NAME,...] [--runs N]

Workloads: throughput, echo, idle, linerate, stalled, cold (default: all). Systems: raw-pty,
ser2net-{shipped,64k,nodelay}-{tcp,tls}, serial-bridge, serial-bridge+log (default: all that
exist; serial-bridge is skipped with a note if `serial-bridge serve` is not available), and when
named serial-bridge+asyncio / serial-bridge+uvloop (throughput and echo on that event loop).
Throughput and echo are repeated --runs times with the systems interleaved run by run, so drift on
a shared machine hits every system alike; the other workloads run once per system.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import profile, report, workloads
from bench.common import MIB, RATE_3M, RATE_12M, RATE_115200, payload, utc_stamp
from bench.pty_target import TargetHandle
from bench.ser2net import Ser2net
from bench.serialbridge import SerialBridge, use_snapshot
from bench.serialbridge import available as sb_available

WORKLOADS = ("throughput", "echo", "idle", "linerate", "stalled", "cold")
ALL_SYSTEMS = (
    "raw-pty",
    "ser2net-shipped-tcp",
    "ser2net-shipped-tls",
    "ser2net-64k-tcp",
    "ser2net-64k-tls",
    "ser2net-nodelay-tcp",
    "ser2net-nodelay-tls",
    "serial-bridge",
    "serial-bridge+log",
)
# Only when named: serial-bridge on one event loop, whichever the default is (uvloop vs asyncio).
LOOP_SYSTEMS = ("serial-bridge+asyncio", "serial-bridge+uvloop")
# Which workloads make sense where: the raw pty has no fan-out and no server process; the raw-TCP
# ser2net variants are only the cheap reference rows; the log variant answers issue 8 item 3.
APPLIES: dict[str, set[str]] = {
    "raw-pty": {"throughput", "echo"},
    "tcp": {"throughput", "echo"},
    "tls": set(WORKLOADS),
    "serial-bridge": set(WORKLOADS),
    "serial-bridge+log": {"throughput"},
    "serial-bridge+asyncio": {"throughput", "echo"},
    "serial-bridge+uvloop": {"throughput", "echo"},
}
LINE_RATES = (
    ("115200x10", RATE_115200, 10),
    ("115200x100", RATE_115200, 100),
    ("3Mx100", RATE_3M, 100),
    ("12Mx100", RATE_12M, 100),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 MiB, 1 run, 10 s line rates")
    p.add_argument("--only", default="", help="comma list of workloads: " + ",".join(WORKLOADS))
    p.add_argument(
        "--systems",
        default="",
        help="comma list of systems: " + ",".join(ALL_SYSTEMS + LOOP_SYSTEMS),
    )
    p.add_argument("--runs", type=int, default=None, help="repetitions (default 5; quick 1)")
    p.add_argument("--size-mib", type=int, default=None, help="throughput bytes (default 64)")
    p.add_argument("--clients", default="1,10,50,100", help="throughput client counts")
    p.add_argument("--linerate-seconds", type=float, default=None, help="default 60; quick 10")
    p.add_argument("--echo-count", type=int, default=None, help="round trips (default 2000)")
    p.add_argument("--echo-limit", type=float, default=None, help="echo seconds cap (10)")
    p.add_argument("--run-limit", type=float, default=None, help="time cap per throughput run")
    p.add_argument("--client-procs", type=int, default=4, help="max client worker processes")
    p.add_argument("--profile", action="store_true", help="py-spy serial-bridge afterwards")
    p.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run serial-bridge from the live tree instead of a copy of bridge/ taken at start",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 5)
    a.size = (a.size_mib or (8 if a.quick else 64)) * MIB
    a.lr_seconds = a.linerate_seconds or (10.0 if a.quick else 60.0)
    a.echo_count = a.echo_count or (300 if a.quick else 2000)
    a.echo_limit = a.echo_limit or (8.0 if a.quick else 10.0)
    a.run_limit = a.run_limit or (5.0 if a.quick else 10.0)
    a.workloads = [w for w in (a.only.split(",") if a.only else WORKLOADS) if w]
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    a.system_names = [s for s in (a.systems.split(",") if a.systems else ALL_SYSTEMS) if s]
    for s in a.system_names:
        if s not in ALL_SYSTEMS + LOOP_SYSTEMS:
            p.error(f"unknown system {s!r}")
    a.client_counts = [int(x) for x in a.clients.split(",") if x]
    return a


def applies(system: str, workload: str) -> bool:
    if system.startswith("ser2net-"):
        kind = system.rsplit("-", 1)[1]
        return workload in APPLIES[kind]
    return workload in APPLIES[system]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_systems(names: list[str], workdir: Path, notes: list[str]) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name in names:
        if name == "raw-pty":
            systems[name] = workloads.RawPty()
        elif name.startswith("ser2net-"):
            if not Ser2net.available():
                notes.append("ser2net not installed (apt-get install ser2net): skipped")
                continue
            _, variant, transport = name.split("-")
            systems[name] = Ser2net(variant, transport == "tls", workdir)
        else:
            ok, why = sb_available()
            if not ok:
                notes.append(f"{name}: skipped, `serial-bridge serve` not available ({why})")
                continue
            systems[name] = SerialBridge(workdir, log_enabled=name.endswith("+log"), name=name)
    return systems


def guarded(results: dict[str, Any], system: str, key: str, fn: Any, *args: Any) -> Any:
    """Run one measurement; an exception becomes an error entry instead of ending the run."""
    t0 = time.monotonic()
    try:
        value = fn(*args)
    except Exception as e:
        value = {"error": f"{type(e).__name__}: {e}"}
        traceback.print_exc(limit=3)
    if isinstance(value, dict):
        value.setdefault("wall_s", round(time.monotonic() - t0, 2))
    log(f"  {system} {key}: {_brief(value)}")
    return value


def _brief(v: Any) -> str:
    if not isinstance(v, dict):
        return str(v)[:160]
    keys = (
        "error", "mib_s", "intact", "clients", "deadline_hit", "cpu_s_per_mib", "client_cpu_share",
        "p50_us", "p99_us", "max_us", "rss0_mib", "rss100_mib", "clients_with_gaps", "complete",
        "server_cpu_share", "live_intact", "target_max_block_s", "stalled_gap", "cold_start_s",
    )  # fmt: skip
    return " ".join(f"{k}={v[k]}" for k in keys if k in v)[:220]


def run(a: argparse.Namespace) -> int:
    notes: list[str] = []
    linerates = [lr for lr in LINE_RATES if "linerate" in a.workloads]
    payload_size = max(a.size, *(int(r * a.lr_seconds) + MIB for _, r, _ in linerates), 16 * MIB)
    payload(payload_size)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.clients", "bench.pty_target", "aiohttp"])
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    results: dict[str, dict[str, Any]] = {}
    target = TargetHandle(ctx, payload_size)
    env = workloads.Env(ctx=ctx, target=target, payload_size=payload_size, max_procs=a.client_procs)
    snapshot: dict[str, str] = {}
    if a.snapshot and any(n.startswith("serial-bridge") for n in a.system_names):
        snapshot = use_snapshot(tmp / "snapshot")
        log(f"serial-bridge runs from a snapshot of bridge/: {snapshot}")
    systems = build_systems(a.system_names, tmp, notes)
    for note in notes:
        log(note)
    log(f"pty slave {target.slave_path}; systems: {', '.join(systems)}; workdir {tmp}")
    started = time.monotonic()
    try:
        for name in systems:
            results[name] = {}
        # Phase 1: repeated measurements, systems interleaved run by run.
        for r in range(a.runs):
            for name, system in systems.items():
                if not any(applies(name, w) for w in ("throughput", "echo") if w in a.workloads):
                    continue
                log(f"run {r + 1}/{a.runs}: {name}")
                res = results[name]
                try:
                    system.start(target.slave_path)
                except Exception as e:
                    res.setdefault("errors", []).append(f"start: {e}")
                    log(f"  {name}: start failed: {e}")
                    continue
                try:
                    if "throughput" in a.workloads and applies(name, "throughput"):
                        counts = [1] if name == "raw-pty" else a.client_counts
                        for n in counts:
                            v = guarded(
                                res, name, f"throughput {n}", workloads.stream,
                                env, system, n, a.size, a.run_limit,
                            )  # fmt: skip
                            res.setdefault(f"throughput_{n}", []).append(v)
                    if "echo" in a.workloads and applies(name, "echo"):
                        v = guarded(
                            res, name, "echo idle", workloads.echo,
                            env, system, a.echo_count, 0, 0.0,
                        )  # fmt: skip
                        res.setdefault("echo_idle", []).append(v)
                        v = guarded(
                            res, name, "echo idle, lean client", workloads.echo_lean,
                            env, system, a.echo_count, a.echo_limit,
                        )  # fmt: skip
                        res.setdefault("echo_lean", []).append(v)
                        if name != "raw-pty":
                            v = guarded(
                                res, name, "echo +10 streaming", workloads.echo,
                                env, system, a.echo_count, 10, float(RATE_12M), a.echo_limit,
                            )  # fmt: skip
                            res.setdefault("echo_load", []).append(v)
                finally:
                    system.stop()
        # Phase 2: once per system.
        for name, system in systems.items():
            once = [w for w in ("cold", "idle", "linerate", "stalled") if w in a.workloads]
            once = [w for w in once if applies(name, w)]
            if not once:
                continue
            res = results[name]
            log(f"{name}: {', '.join(once)}")
            try:
                if "cold" in once:
                    # Start once so first-start work (certificates, state) is not counted.
                    system.start(target.slave_path)
                    system.stop()
                    res["cold"] = [
                        guarded(res, name, "cold start", workloads.cold_start, env, system)
                        for _ in range(a.runs)
                    ]
                else:
                    system.start(target.slave_path)
                if "idle" in once:
                    res["idle"] = guarded(
                        res, name, "idle rss", workloads.idle_rss, env, system, 100
                    )
                if "linerate" in once:
                    res["linerate"] = {}
                    for label, rate, n in linerates:
                        res["linerate"][label] = guarded(
                            res, name, f"line rate {label}", workloads.stream,
                            env, system, n, int(rate * a.lr_seconds), a.lr_seconds * 1.02 + 0.5,
                            rate, 5.0,
                        )  # fmt: skip
                        lr = res["linerate"][label]
                        lr["rate_bytes_s"] = rate
                        if "written" in lr:
                            lr["achieved"] = round(lr["written"] / int(rate * a.lr_seconds), 4)
                if "stalled" in once:
                    res["stalled"] = guarded(
                        res, name, "stalled client", workloads.stalled,
                        env, system, a.size, 2 * a.run_limit,
                    )  # fmt: skip
            except Exception as e:
                res.setdefault("errors", []).append(repr(e))
                traceback.print_exc(limit=3)
            finally:
                system.stop()
        # Phase 3 (--profile): where serial-bridge spends its time, measured apart from the rest.
        if a.profile and "serial-bridge" in systems:
            results["serial-bridge"]["profile"] = run_profiles(
                a, env, systems["serial-bridge"], tmp
            )
        if a.profile and "serial-bridge+log" in systems:
            results["serial-bridge+log"]["profile"] = run_profiles(
                a, env, systems["serial-bridge+log"], tmp, only_first=True
            )
    finally:
        for system in systems.values():
            with contextlib.suppress(Exception):
                system.stop()
        target.close()
    summary = report.summarize(results)
    verdicts = report.targets(results, summary)
    doc = {
        "meta": {
            "time_utc": utc_stamp(),
            "argv": sys.argv,
            "runs": a.runs,
            "size_bytes": a.size,
            "linerate_seconds": a.lr_seconds,
            "echo_count": a.echo_count,
            "run_limit_s": a.run_limit,
            "echo_limit_s": a.echo_limit,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ser2net": _ser2net_version(),
            "git": _git_head(),
            "wall_s": round(time.monotonic() - started, 1),
            "serial_bridge_snapshot": snapshot,
            "notes": notes + env.notes,
        },
        "results": results,
        "summary": summary,
        "targets": verdicts,
    }
    out = a.out or Path(__file__).resolve().parent / "results" / f"bench-{utc_stamp()}.json"
    report.write_json(out, doc)
    print()
    print(report.table(results, summary))
    print()
    print("issue 8 targets (serial-bridge vs peers measured in this run):")
    print(report.verdicts_text(verdicts))
    for name in ("serial-bridge", "serial-bridge+log"):
        for label, item in (results.get(name, {}).get("profile") or {}).items():
            run = item["run"]
            figures = (
                f"{run.get('mib_s')} MiB/s, server {run.get('server_cpu_share')} cores"
                if "mib_s" in run
                else f"p50 {run.get('p50_us')} µs, p99 {run.get('p99_us')} µs"
            )
            print(f"\n{name} profile, {label} (py-spy; {figures}):")
            print(profile.text(item["profile"]))
    for note in notes:
        print("note:", note)
    print(f"\nJSON: {out}")
    return 0


def run_profiles(
    a: argparse.Namespace, env: workloads.Env, system: Any, tmp: Path, only_first: bool = False
) -> Any:
    jobs: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("throughput 1 client", workloads.stream, (1, a.size, a.run_limit, None)),
        ("throughput 50 clients", workloads.stream, (50, a.size, a.run_limit, None)),
        ("115200 baud, 10 clients, 10 s", workloads.stream,
         (10, RATE_115200 * 10, 11.0, float(RATE_115200))),
        ("echo idle", workloads.echo, (a.echo_count, 0, 0.0, a.echo_limit)),
    ]  # fmt: skip
    if only_first:
        jobs = jobs[:1]
    out: dict[str, Any] = {}
    system.start(env.target.slave_path)
    try:
        for i, (label, fn, args) in enumerate(jobs):
            prof = profile.Profiler(system.pid, tmp / f"profile-{system.name}-{i}.txt")
            try:
                run = guarded({}, system.name, f"profiled {label}", fn, env, system, *args)
            finally:
                summary = prof.stop()
            out[label] = {"run": run, "profile": summary}
    finally:
        system.stop()
    return out


def _ser2net_version() -> str:
    try:
        return subprocess.run(
            ["ser2net", "-v"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except OSError:
        return ""


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
