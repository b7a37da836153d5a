"""Summaries, the printed table, the issue-8 target verdicts and the JSON results file.

Raw per-run measurements come in as `results[system][workload]`; everything printed is derived
here: medians over runs, and ratios serial-bridge / peer computed pairwise per run (run r of one
system against run r of the other, both measured in the same harness run) and then medianed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.common import median

SB = "serial-bridge"
SB_LOG = "serial-bridge+log"
S2N_SHIP_TLS = "ser2net-shipped-tls"
S2N_64K_TLS = "ser2net-64k-tls"
S2N_NODELAY_TLS = "ser2net-nodelay-tls"
SHORT = {
    "raw-pty": "pty",
    "ser2net-shipped-tcp": "s2n-ship/tcp",
    "ser2net-shipped-tls": "s2n-ship/tls",
    "ser2net-64k-tcp": "s2n-64k/tcp",
    "ser2net-64k-tls": "s2n-64k/tls",
    "ser2net-nodelay-tcp": "s2n-nodl/tcp",
    "ser2net-nodelay-tls": "s2n-nodl/tls",
    SB: "sb",
    SB_LOG: "sb+log",
}
CLIENT_COUNTS = (1, 10, 50, 100)
NA = "-"


def _runs(results: dict[str, Any], system: str, key: str) -> list[dict[str, Any]]:
    v = results.get(system, {}).get(key, [])
    return [r for r in v if isinstance(r, dict)]


def _vals(runs: list[dict[str, Any]], field: str) -> list[float]:
    return [float(r[field]) for r in runs if isinstance(r.get(field), int | float)]


def summarize(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per system: medians (and worst cases where that is the point) of every metric."""
    out: dict[str, dict[str, Any]] = {}
    for system, data in results.items():
        s: dict[str, Any] = {}
        for n in CLIENT_COUNTS:
            runs = _runs(results, system, f"throughput_{n}")
            if not runs:
                continue
            s[f"thr{n}"] = median(_vals(runs, "mib_s"))
            s[f"thr{n}_partial"] = any(r.get("deadline_hit") for r in runs)
            s[f"thr{n}_bad"] = sum(
                (r.get("clients", 0) - r.get("intact", 0)) if "error" not in r else 1 for r in runs
            )
            s[f"thr{n}_client_cpu"] = median(_vals(runs, "client_cpu_share"))
            s[f"thr{n}_server_cpu"] = median(_vals(runs, "server_cpu_share"))
            s[f"thr{n}_client_sat"] = any(r.get("client_worker_max", 0) > 0.85 for r in runs)
            s[f"thr{n}_cpu_s_per_mib"] = median(_vals(runs, "cpu_s_per_mib"))
            peaks = _vals(runs, "peak_rss_mib")
            s[f"thr{n}_peak_rss"] = max(peaks) if peaks else None
        for key in ("echo_idle", "echo_lean", "echo_load"):
            runs = _runs(results, system, key)
            if runs:
                s[f"{key}_p50"] = median(_vals(runs, "p50_us"))
                s[f"{key}_p99"] = median(_vals(runs, "p99_us"))
                mx = _vals(runs, "max_us")
                s[f"{key}_max"] = max(mx) if mx else None
        idle = data.get("idle")
        if isinstance(idle, dict):
            s["rss0"] = idle.get("rss0_mib")
            s["rss100"] = idle.get("rss100_mib")
        for name, lr in (data.get("linerate") or {}).items():
            if isinstance(lr, dict) and "error" not in lr:
                s[f"lr_{name}"] = lr
        st = data.get("stalled")
        if isinstance(st, dict):
            s["stalled"] = st
        cold = _runs(results, system, "cold")
        if cold:
            s["cold"] = median(_vals(cold, "cold_start_s"))
        out[system] = s
    return out


def pairwise(results: dict[str, Any], a: str, b: str, key: str, field: str) -> float | None:
    """Median over runs of a[r] / b[r]."""
    return median(ratios(results, a, b, key, field))


def ratios(results: dict[str, Any], a: str, b: str, key: str, field: str) -> list[float]:
    """a[r] / b[r] for every run r that measured both."""
    ra, rb = _runs(results, a, key), _runs(results, b, key)
    return [
        float(x[field]) / float(y[field])
        for x, y in zip(ra, rb, strict=False)
        if isinstance(x.get(field), int | float)
        and isinstance(y.get(field), int | float)
        and y[field]
    ]


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _thr_cell(s: dict[str, Any], n: int) -> str:
    v = s.get(f"thr{n}")
    if v is None:
        return NA
    cell = _f(v)
    if s.get(f"thr{n}_partial"):
        cell += "*"
    if s.get(f"thr{n}_bad"):
        cell += "!"
    if s.get(f"thr{n}_client_sat"):
        cell += "c"
    return cell


def _lr_cell(lr: dict[str, Any] | None) -> str:
    if not lr:
        return NA
    gaps = lr.get("clients_with_gaps", 0)
    behind = lr.get("clients", 0) - lr.get("complete", 0)
    cpu = lr.get("server_cpu_share")
    cell = f"{gaps}/{behind}"
    if lr.get("achieved") is not None:
        cell += f" {lr['achieved'] * 100:.0f}%"
    if cpu is not None:
        cell += f" {cpu * 100:.1f}"
    return cell


def _stalled_cell(st: dict[str, Any] | None, field: str) -> str:
    if not st:
        return NA
    if "error" in st:
        return "err"
    if field == "live":
        return "ok" if st.get("live_intact") and st.get("target_all_written") else "STALL"
    if field == "uart":
        return f"{st.get('target_max_block_s', 0):.2f}s"
    if field == "rss":
        return f"{_f(st.get('rss_before_mib'))}/{_f(st.get('peak_rss_mib'))}"
    if field == "gap":
        return "yes" if st.get("stalled_gap") else "no"
    if field == "resume":
        return "yes" if st.get("live_resumed") else "no"
    return NA


def table(results: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    systems = [s for s in SHORT if s in summary] + [s for s in summary if s not in SHORT]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        cells = [fn(summary[s]) for s in systems]
        if any(c.strip("-/ ") for c in cells):
            rows.append((label, cells))

    for n in CLIENT_COUNTS:
        row(f"throughput {n} client(s), MiB/s", lambda s, n=n: _thr_cell(s, n))
    for n in CLIENT_COUNTS:
        row(
            f"  CPU cores server/clients @{n}",
            lambda s, n=n: (
                f"{_f(s.get(f'thr{n}_server_cpu'), 2)}/{_f(s.get(f'thr{n}_client_cpu'), 2)}"
            ),
        )
    row("CPU s per MiB (1 client)", lambda s: _f(s.get("thr1_cpu_s_per_mib"), 4))
    row("CPU s per MiB (50 clients)", lambda s: _f(s.get("thr50_cpu_s_per_mib"), 4))
    row(
        "peak RSS MiB (1 / 100 clients)",
        lambda s: f"{_f(s.get('thr1_peak_rss'))}/{_f(s.get('thr100_peak_rss'))}",
    )
    row("echo idle p50 µs", lambda s: _f(s.get("echo_idle_p50")))
    row("echo idle p99 µs", lambda s: _f(s.get("echo_idle_p99")))
    row("echo idle max µs", lambda s: _f(s.get("echo_idle_max")))
    row("echo idle, lean client p50 µs", lambda s: _f(s.get("echo_lean_p50")))
    row("echo idle, lean client p99 µs", lambda s: _f(s.get("echo_lean_p99")))
    row("echo +10 streaming p50 µs", lambda s: _f(s.get("echo_load_p50")))
    row("echo +10 streaming p99 µs", lambda s: _f(s.get("echo_load_p99")))
    row("echo +10 streaming max µs", lambda s: _f(s.get("echo_load_max")))
    row("idle RSS MiB, 0 clients", lambda s: _f(s.get("rss0")))
    row("idle RSS MiB, 100 clients", lambda s: _f(s.get("rss100")))
    for name in ("115200x10", "115200x100", "3Mx100", "12Mx100"):
        row(
            f"line {name}: gap/behind rate% CPU%",
            lambda s, name=name: _lr_cell(s.get(f"lr_{name}")),
        )
    row("stalled: live client + UART", lambda s: _stalled_cell(s.get("stalled"), "live"))
    row("stalled: UART longest block", lambda s: _stalled_cell(s.get("stalled"), "uart"))
    row("stalled: RSS before/peak MiB", lambda s: _stalled_cell(s.get("stalled"), "rss"))
    row("stalled: gap told to stalled", lambda s: _stalled_cell(s.get("stalled"), "gap"))
    row("stalled: live resumes after", lambda s: _stalled_cell(s.get("stalled"), "resume"))
    row("cold start to first byte, s", lambda s: _f(s.get("cold"), 3))

    heads = [SHORT.get(s, s) for s in systems]
    w0 = max(len(r[0]) for r in rows) if rows else 10
    widths = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(heads)]
    lines = [
        " | ".join([" " * w0, *(h.rjust(w) for h, w in zip(heads, widths, strict=True))]),
        "-+-".join(["-" * w0, *("-" * w for w in widths)]),
    ]
    for label, cells in rows:
        lines.append(
            " | ".join([label.ljust(w0), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])
        )
    lines.append(
        "* = capped by the per-run time limit (throughput = bytes written / time); "
        "! = clients with missing/corrupt bytes; c = a client worker process used > 85% of a "
        "core (the client side may be the limit); line rate 'G/B R% C': G clients saw gaps, "
        "B clients were behind at the end, R = % of the line rate the UART could deliver "
        "(below 100 a real UART without flow control loses bytes), C = server CPU % of one core"
    )
    return "\n".join(lines)


def targets(results: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue-8 goals, and issue 19's ring-log goal: each with the figures it compares and
    met / missed / not measured."""
    sb = summary.get(SB, {})
    out: list[dict[str, Any]] = []

    def add(goal: str, met: bool | None, detail: str) -> None:
        out.append({"goal": goal, "met": met, "detail": detail})

    for n in (1, 50):
        r = pairwise(results, SB, S2N_64K_TLS, f"throughput_{n}", "mib_s")
        add(
            f"{n} client(s) >= ser2net 64 KiB TLS",
            None if r is None else r >= 1.0,
            f"sb {_f(sb.get(f'thr{n}'))} vs {_f(summary.get(S2N_64K_TLS, {}).get(f'thr{n}'))} "
            f"MiB/s, pairwise ratio {_f(r, 2)}",
        )
    r = pairwise(results, SB, S2N_SHIP_TLS, "throughput_50", "mib_s")
    add(
        "50 clients >= 10x ser2net as shipped (TLS)",
        None if r is None else r >= 10.0,
        f"sb {_f(sb.get('thr50'))} vs {_f(summary.get(S2N_SHIP_TLS, {}).get('thr50'))} MiB/s, "
        f"pairwise ratio {_f(r, 1)}",
    )
    r = pairwise(results, SB, S2N_NODELAY_TLS, "echo_lean", "p99_us")
    add(
        "echo p99 <= ser2net chardelay off (TLS), lean blocking client",
        None if r is None else r <= 1.0,
        f"sb {_f(sb.get('echo_lean_p99'))} vs "
        f"{_f(summary.get(S2N_NODELAY_TLS, {}).get('echo_lean_p99'))} µs, "
        f"pairwise ratio {_f(r, 2)}",
    )
    r = pairwise(results, SB, S2N_NODELAY_TLS, "echo_idle", "p99_us")
    add(
        "echo p99 <= ser2net chardelay off (TLS)",
        None if r is None else r <= 1.0,
        f"sb {_f(sb.get('echo_idle_p99'))} vs "
        f"{_f(summary.get(S2N_NODELAY_TLS, {}).get('echo_idle_p99'))} µs, "
        f"pairwise ratio {_f(r, 2)}",
    )
    st = sb.get("stalled")
    if st and "error" not in st:
        ok = bool(st.get("live_intact") and st.get("target_all_written"))
        add(
            "stalled client stalls neither the UART nor another client",
            ok,
            f"live intact {st.get('live_intact')}, UART longest block "
            f"{st.get('target_max_block_s')} s, RSS {st.get('rss_before_mib')} -> peak "
            f"{st.get('peak_rss_mib')} -> {st.get('rss_after_mib')} MiB, "
            f"gap {st.get('stalled_gap')}",
        )
    else:
        add("stalled client stalls neither the UART nor another client", None, str(st))
    lr = sb.get("lr_12Mx100")
    add(
        "100 clients at 12 Mbaud: 0 gaps",
        None
        if not lr
        else lr.get("clients_with_gaps", 1) == 0
        and lr.get("complete") == 100
        and lr.get("achieved", 0) >= 0.99,
        _lr_detail(lr),
    )
    lr = sb.get("lr_115200x10")
    cpu = lr.get("server_cpu_share") if lr else None
    add(
        "<= 2% of one core at 115200, 10 clients",
        None if cpu is None else cpu <= 0.02,
        f"{_f(cpu * 100 if cpu is not None else None, 2)} % of one core",
    )
    rss = [v for v in (sb.get("rss0"), sb.get("rss100")) if v is not None]
    add(
        "idle RSS <= 60 MiB",
        None if not rss else max(rss) <= 60,
        f"{_f(sb.get('rss0'))} MiB with 0, {_f(sb.get('rss100'))} MiB with 100 idle clients",
    )
    add(
        "cold start <= 1.5 s",
        None if sb.get("cold") is None else sb["cold"] <= 1.5,
        f"{_f(sb.get('cold'), 3)} s",
    )
    for n in (1, 50):
        r = pairwise(results, SB_LOG, SB, f"throughput_{n}", "mib_s")
        add(
            f"ring log on does not change the picture ({n} client(s))",
            None if r is None else r >= 0.85,
            f"log on / off throughput ratio {_f(r, 2)}",
        )
    for n in range(1, 11):  # issue 19: at least 0.9 at 1-10 clients; the spread shows the noise
        runs = ratios(results, SB_LOG, SB, f"throughput_{n}", "mib_s")
        if runs:
            r = statistics.median(runs)
            add(
                f"ring log on >= 0.9 of off, issue 19 ({n} client(s))",
                r >= 0.9,
                f"paired median {_f(r, 2)}, runs {min(runs):.2f}-{max(runs):.2f}",
            )
    return out


def _lr_detail(lr: dict[str, Any] | None) -> str:
    if not lr:
        return "not measured"
    return (
        f"{lr.get('clients_with_gaps')} clients with gaps ({lr.get('gap_bytes')} bytes), "
        f"{lr.get('complete')}/{lr.get('clients')} complete, "
        f"{_f((lr.get('achieved') or 0) * 100, 1)} % of the line rate delivered, server CPU "
        f"{_f((lr.get('server_cpu_share') or 0) * 100, 1)} % of one core, UART backlog max "
        f"{lr.get('target_max_lag_bytes')} bytes"
    )


def verdicts_text(items: list[dict[str, Any]]) -> str:
    mark = {True: "MET   ", False: "MISSED", None: "n/a   "}
    return "\n".join(f"  {mark[i['met']]} {i['goal']}: {i['detail']}" for i in items)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str))
