"""Appliance scale: N ports streaming at 115200 baud, 2 TLS clients each, keystroke echo beside.

    python -m bench.scale [--ports 1,8,24,48] [--with-12m] [--seconds 30] [--systems ...]

For each port count N and each system, in one run (systems interleaved per N): N pty pairs stand
in for N UARTs, each written at the 115200-baud line rate (11.25 KiB/s, in 62-byte packets at a
phase of its own, bench.scale_target), with 2 TLS clients per port reading everything and
checking length and CRC32; one more port is idle except for keystroke round trips from a lean
blocking client every ~10 ms (random 0.5-1.5x) while the N stream. Measured: the server's CPU
share of one core over `--cpu-seconds` (8) after a 2 s warm-up, before any keystroke; its RSS
then and its peak; then echo p50/p99/max over the rest of the stream; at the end, clients with
gaps or missing/corrupt bytes. `--with-12m` repeats each N
with port 0 at the 12-Mbaud line rate (1.14 MiB/s) among them.

Systems: `serial-bridge` (TLS websocket, ring log on: the appliance's configuration),
`serial-bridge+asyncio` / `serial-bridge+uvloop` (the same on that event loop; the default is
uvloop where installed), `ser2net` (4.3, TLS,
as shipped apart from max-connections) and `ser2net-nodelay` (64 KiB buffers, chardelay off).
`serial-bridge-nolog` keeps no ring log. `serial-bridge@REV` (or `serial-bridge+asyncio@REV`)
runs git revision REV's bridge/: before and after a change in one run, e.g.
`--systems serial-bridge@main,serial-bridge,ser2net`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import shutil
import subprocess
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.clients import (
    ATTACH_WAIT,
    Client,
    Endpoint,
    Sink,
    _Mailbox,
    _wait_until,
    client_ssl_context,
    lean_echo,
)
from bench.common import (
    MIB,
    RATE_12M,
    RATE_115200,
    crc_of,
    free_port,
    median,
    new_nonce,
    percentile,
    reset_peak_rss,
    sample,
    self_cpu,
    utc_stamp,
)
from bench.profile import Profiler, text
from bench.scale_target import EchoTarget, StreamTargets
from bench.ser2net import MAX_CONNECTIONS, VARIANTS, Ser2net
from bench.serialbridge import SerialBridge, export_revision, parse_token, use_snapshot
from bench.workloads import ClientGroup

SYSTEMS = (
    "serial-bridge",
    "serial-bridge-nolog",
    "serial-bridge+asyncio",
    "serial-bridge+uvloop",
    "ser2net",
    "ser2net-nodelay",
)
CLIENTS_PER_PORT = 2
WARMUP = 2.0
RAW_ECHO_SECONDS = 5.0  # at the end of the stream: echo on a pty with nothing between


def _port_name(i: int) -> str:
    return f"s{i:02d}"


class ScaleBridge(SerialBridge):
    """serial-bridge with N streaming ports and one echo port, ring log on (off: -nolog)."""

    def __init__(self, workdir: Path, name: str) -> None:
        super().__init__(workdir, log_enabled="-nolog" not in name)
        self.name = name
        self.bauds: list[int] = []
        self.paths: list[str] = []
        self.echo_path = ""
        if "@" in name:  # serial-bridge@REV: that git revision's bridge/
            rev = name.split("@", 1)[1]
            self.code = export_revision(rev, workdir / "code")

    def configure(self, paths: list[str], bauds: list[int], echo_path: str) -> None:
        self.paths, self.bauds, self.echo_path = paths, bauds, echo_path

    def setup(self, device: str) -> None:
        self.device = device
        self.port = free_port()
        lines = [
            "[server]",
            f'listen = ["127.0.0.1:{self.port}"]',
            f'state_dir = "{self.state}"',
            "max_connections_per_user = 1000",
            "",
            "[log]",
            f"enabled = {'true' if self.log_enabled else 'false'}",
            "",
        ]
        ports = [
            (_port_name(i), p, b)
            for i, (p, b) in enumerate(zip(self.paths, self.bauds, strict=True))
        ]
        for name, path, baud in [*ports, ("echo", self.echo_path, 115200)]:
            lines += [f"[ports.{name}]", f'device = "{path}"', f"baud = {baud}", ""]
        self.cfg.write_text("\n".join(lines))
        if not self.token:
            self._run(
                ["user", "add", "bench", "--role", "admin", "--password-stdin"],
                "bench-password-1\n",
            )
            self.token = parse_token(self._run(["token", "create", "bench"]))

    def port_endpoint(self, i: int) -> Endpoint:
        path = f"/api/ports/{_port_name(i)}/console?mode=ro"
        return Endpoint(kind="ws", port=self.port, path=path, token=self.token)

    def echo_endpoint(self) -> Endpoint:
        path = "/api/ports/echo/console?mode=rw"
        return Endpoint(kind="ws", port=self.port, path=path, token=self.token)

    def start_all(self) -> None:
        self.start("|".join([*self.paths, self.echo_path, *map(str, self.bauds)]))


class ScaleSer2net(Ser2net):
    """ser2net with one TLS connection per streaming port and one for the echo port."""

    def __init__(self, workdir: Path, name: str) -> None:
        super().__init__("nodelay" if name.endswith("nodelay") else "shipped", True, workdir)
        self.name = name
        self.ports: list[int] = []
        self.paths: list[str] = []
        self.echo_path = ""

    def configure(self, paths: list[str], bauds: list[int], echo_path: str) -> None:
        self.paths, self.echo_path = paths, echo_path

    def start_all(self) -> None:
        devices = [*self.paths, self.echo_path]
        self.ports = [free_port() for _ in devices]
        opts = {"max-connections": MAX_CONNECTIONS, **VARIANTS[self.variant]}
        lines = ["%YAML 1.1", "---"]
        for i, (dev, port) in enumerate(zip(devices, self.ports, strict=True)):
            lines += [
                f"connection: &c{i}",
                f"  accepter: ssl(key={self.key},cert={self.cert}),tcp,127.0.0.1,{port}",
                "  enable: on",
                "  options:",
                *(f"    {k}: {v}" for k, v in opts.items()),
                f"  connector: serialdev,{dev},4000000n81,local",
                "",
            ]
        cfg = self.workdir / "ser2net.yaml"
        cfg.write_text("\n".join(lines))
        log = (self.workdir / "stderr.log").open("ab")
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            ["ser2net", "-n", "-u", "-c", str(cfg), "-P", str(self.workdir / "ser2net.pid")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.port = self.ports[-1]
        self.wait_ready(10)

    def port_endpoint(self, i: int) -> Endpoint:
        return Endpoint(kind="tls", port=self.ports[i])

    def echo_endpoint(self) -> Endpoint:
        return Endpoint(kind="tls", port=self.ports[-1])


# --- client workers: each runs clients of several ports ------------------------------------------


async def _worker(conn: Connection, eps: list[tuple[int, Endpoint]], nonce: str) -> None:
    import aiohttp

    box = _Mailbox(conn)
    ssl_ctx = client_ssl_context()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ssl_ctx))
    sinks = [Sink(nonce) for _ in eps]
    clients = [Client(ep, s, coalesce=True) for (_, ep), s in zip(eps, sinks, strict=True)]
    sem = asyncio.Semaphore(8)

    async def attach(i: int) -> str:
        err = ""
        for _attempt in range(4):
            c = clients[i]
            async with sem:
                try:
                    await asyncio.wait_for(c.connect(ssl_ctx, session), 30)
                except Exception as e:
                    err = repr(e)
                    c.sink.lost(err)
                else:
                    await _wait_until([c.sink], lambda s: s.synced or s.closed, ATTACH_WAIT)
                    if c.sink.synced:
                        return ""
                    err = c.sink.error or f"no data within {ATTACH_WAIT}s of connecting"
            c.close()
            sinks[i] = Sink(nonce)
            clients[i] = Client(eps[i][1], sinks[i], coalesce=True)
            await asyncio.sleep(0.05)
        return err

    try:
        errors = await asyncio.gather(*(attach(i) for i in range(len(eps))))
        ok = sum(1 for e in errors if not e)
        conn.send(("connected", (ok, next((e for e in errors if e), ""))))
        await _wait_until(sinks, lambda s: s.synced or s.closed, 60)
        conn.send(("synced", None))
        cpu0, t0 = self_cpu(), time.monotonic()
        msg, kw = await box.get(3600)
        if msg == "final":
            want = {id(s): kw["lengths"][port] for (port, _), s in zip(eps, sinks, strict=True)}
            await _wait_until(
                sinks, lambda s: s.closed or s.count + s.gap_bytes >= want[id(s)], kw["grace"]
            )
        result = {
            "cpu": self_cpu() - cpu0,
            "wall": time.monotonic() - t0,
            "clients": [
                {"port": port, "count": s.count, "crc": s.crc, "gaps": s.gaps,
                 "gap_bytes": s.gap_bytes, "closed": s.closed, "error": s.error}
                for (port, _), s in zip(eps, sinks, strict=True)
            ],
        }  # fmt: skip
        conn.send(("result", result))
    finally:
        for c in clients:
            c.close()
        await asyncio.sleep(0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close(), 2)


def _worker_main(conn: Connection, eps: list[tuple[int, Endpoint]], nonce: str) -> None:
    try:
        asyncio.run(_worker(conn, eps, nonce))
    except Exception as e:
        with contextlib.suppress(Exception):
            conn.send(("error", repr(e)))


class PortClients(ClientGroup):
    """The clients of all streaming ports, spread over a few worker processes."""

    def __init__(self, ctx: Any, eps: list[tuple[int, Endpoint]], nonce: str, procs: int) -> None:
        self.n = len(eps)
        procs = max(1, min(procs, len(eps)))
        self.conns = []
        self.procs = []
        for k in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, eps[k::procs], nonce), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)


# --- one measurement ------------------------------------------------------------------------------


def measure(
    ctx: Any, system: Any, streams: StreamTargets, n: int, fast: bool, seconds: float,
    cpu_seconds: float, echo_interval: float, procs: int, profile_to: Path | None = None,
    packet: int = 62, raw_echo: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """N ports streaming to 2 clients each, echo on the idle port; returns the figures."""
    rates = [float(RATE_115200)] * n
    if fast:
        rates[0] = float(RATE_12M)
    streams.flush()
    nonce = new_nonce()
    streams.start(nonce, rates, seconds, packet)
    eps = [(i, system.port_endpoint(i)) for i in range(n) for _ in range(CLIENTS_PER_PORT)]
    group = PortClients(ctx, eps, nonce, procs)
    out: dict[str, Any] = {"ports": n, "fast_port": fast, "clients": len(eps), "packet": packet}
    try:
        try:
            ok, err = group.wait_connected(180)
            if ok < len(eps):
                raise RuntimeError(f"only {ok}/{len(eps)} clients attached: {err}")
            group.wait_synced(60)
        except Exception:
            streams.abort()
            streams.wait(30)
            raise
        pid = system.pid
        reset_peak_rss(pid)
        streams.go()
        time.sleep(WARMUP)
        before, t_a = sample(pid), time.monotonic()
        time.sleep(cpu_seconds)
        after, t_b = sample(pid), time.monotonic()
        if profile_to is not None:  # sampled after the CPU window, so it does not count there
            prof = Profiler(pid, profile_to)
            time.sleep(cpu_seconds)
            out["profile"] = prof.stop()
        limit = seconds - (time.monotonic() - t_a) - WARMUP - 1.0 - RAW_ECHO_SECONDS
        count = int(limit / (echo_interval + 0.0005))
        res = lean_echo(system.echo_endpoint(), count, 20, limit, echo_interval)
        after_echo = sample(pid)
        if raw_echo is not None:  # the same keystrokes on a pty with nothing between, same load
            raw = lean_echo(Endpoint(kind="pty", path=raw_echo), 10**6, 20, RAW_ECHO_SECONDS - 0.5,
                            echo_interval)  # fmt: skip
            raw_lat = sorted(raw["latencies_us"])
            if raw_lat:
                out["raw_echo_p50_us"] = round(percentile(raw_lat, 50), 1)
                out["raw_echo_p99_us"] = round(percentile(raw_lat, 99), 1)
        rep = streams.wait(seconds + 30)
        group.send("final", {"lengths": rep["written"], "grace": 10.0})
        results = group.results(60)
        end = sample(pid)
    finally:
        group.close()
    clients = [c for r in results for c in r["clients"]]
    written = rep["written"]
    intact = [
        c for c in clients
        if c["count"] == written[c["port"]] and c["crc"] == crc_of(_payload_size(), c["count"])
    ]  # fmt: skip
    lat = sorted(res["latencies_us"])
    out.update(
        cpu_pct=round(100 * (after.cpu - before.cpu) / (t_b - t_a), 2),
        rss_mib=round(after.rss_kib / 1024, 1),
        rss_after_echo_mib=round(after_echo.rss_kib / 1024, 1),
        rss_end_mib=round(end.rss_kib / 1024, 1),
        peak_rss_mib=round(max(end.hwm_kib, before.rss_kib) / 1024, 1),
        intact=len(intact),
        clients_with_gaps=sum(1 for c in clients if c["gaps"]),
        gap_bytes=sum(c["gap_bytes"] for c in clients),
        short=sum(1 for c in clients if c["count"] + c["gap_bytes"] < written[c["port"]]),
        written_mib=round(sum(written) / MIB, 2),
        target_max_lag=max(rep["max_lag"]),
        client_cpu_pct=round(100 * sum(r["cpu"] for r in results) / max(1e-9, t_b - t_a), 1),
        echo_round_trips=len(lat),
        echo_timeouts=res["timeouts"],
    )
    if lat:
        out.update(
            echo_p50_us=round(percentile(lat, 50), 1),
            echo_p99_us=round(percentile(lat, 99), 1),
            echo_max_us=round(lat[-1], 1),
        )
    return out


_PAYLOAD_SIZE = 0


def _payload_size() -> int:
    return _PAYLOAD_SIZE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--ports", default="1,8,24,48", help="port counts (default 1,8,24,48)")
    p.add_argument("--with-12m", action="store_true", help="also each N with one 12-Mbaud port")
    p.add_argument("--only-12m", action="store_true", help="only the rows with a 12-Mbaud port")
    p.add_argument("--seconds", type=float, default=30.0, help="stream length per row (30)")
    p.add_argument("--cpu-seconds", type=float, default=8.0, help="CPU window, before the echo")
    p.add_argument(
        "--packet", default="62", help="bytes per write, a list (62: FTDI; 12: 1 ms latency)"
    )
    p.add_argument("--echo-interval", type=float, default=0.01, help="mean pause between keys")
    p.add_argument("--systems", default="serial-bridge,ser2net", help=",".join(SYSTEMS))
    p.add_argument("--runs", type=int, default=1, help="repetitions (systems interleaved)")
    p.add_argument("--client-procs", type=int, default=3)
    p.add_argument(
        "--profile", action="store_true", help="py-spy serial-bridge after the CPU window"
    )
    p.add_argument("--no-snapshot", dest="snapshot", action="store_false")
    p.add_argument("--keep", action="store_true", help="keep the work directory (state, logs)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    a.port_counts = [int(x) for x in a.ports.split(",") if x]
    a.packets = [int(x) for x in a.packet.split(",") if x]
    a.system_names = [s for s in a.systems.split(",") if s]
    for s in a.system_names:
        if s.split("@")[0] not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    return a


def run(a: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """All rows; returns {"meta": ..., "rows": [...]} (also written as JSON by main)."""
    global _PAYLOAD_SIZE
    fast_cases = [True] if a.only_12m else ([False, True] if a.with_12m else [False])
    _PAYLOAD_SIZE = int(RATE_12M * a.seconds) + 4 * MIB if True in fast_cases else 16 * MIB
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.clients", "bench.scale_target", "aiohttp"])
    tmp = Path(tempfile.mkdtemp(prefix="sb-scale-"))
    snapshot = use_snapshot(tmp / "snapshot") if a.snapshot else {}
    nmax = max(a.port_counts)
    streams = StreamTargets(ctx, nmax, _PAYLOAD_SIZE)
    echo = EchoTarget(ctx)
    raw_echo = EchoTarget(ctx)
    rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        for run in range(a.runs):
            for n in a.port_counts:
                for fast, packet in [(f, p) for f in fast_cases for p in a.packets]:
                    for name in a.system_names:
                        where = tmp / f"{name}-{n}{'-12m' if fast else ''}-{packet}-{run}"
                        system: Any = (
                            ScaleBridge(where, name)
                            if name.startswith("serial-bridge")
                            else ScaleSer2net(where, name)
                        )
                        bauds = [115200] * n
                        if fast:
                            bauds[0] = 12_000_000
                        system.configure(streams.paths[:n], bauds, echo.path)
                        load = _load()
                        log(f"{name}: {n} ports{' + 12M' if fast else ''} {packet} B (load {load})")
                        try:
                            system.start_all()
                            row = measure(
                                ctx, system, streams, n, fast, a.seconds,
                                a.cpu_seconds, a.echo_interval, a.client_procs,
                                tmp / f"profile-{name}-{n}.txt"
                                if a.profile and name.startswith("serial-bridge")
                                else None,
                                packet, raw_echo.path,
                            )  # fmt: skip
                        except Exception as e:
                            row = {
                                "ports": n,
                                "fast_port": fast,
                                "packet": packet,
                                "error": repr(e),
                            }
                        finally:
                            system.stop()
                        row.update(system=name, load_before=load)
                        log("  " + " ".join(f"{k}={v}" for k, v in row.items() if k != "profile"))
                        if "profile" in row:
                            log(text(row["profile"]))
                        rows.append(row)
    finally:
        streams.close()
        echo.close()
        raw_echo.close()
        if not a.keep:  # ring logs of 16 MiB per port and row: about 1.5 GiB a run
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "meta": {
            "time_utc": utc_stamp(),
            "seconds": a.seconds,
            "echo_interval": a.echo_interval,
            "snapshot": snapshot,
            "wall_s": round(time.monotonic() - t_start, 1),
        },
        "rows": rows,
    }


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (ports, system): medians over runs."""
    keys: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        packet = r.get("packet", 62)
        label = (
            f"{r['ports']}{'+12M' if r['fast_port'] else ''}{'' if packet == 62 else f'/{packet}B'}"
        )
        keys.setdefault((r["ports"], label, r["system"]), []).append(r)
    head = (
        f"{'ports':>10} {'system':<22} {'CPU %':>6} {'RSS MiB':>8} {'peak':>6} "
        f"{'gaps':>5} {'intact':>8} {'echo p50 µs':>11} {'p99 µs':>8} {'max µs':>8} "
        f"{'raw p99':>8} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for (_n, label, system), rs in sorted(keys.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"{label:>10} {system:<22} error: {rs[0].get('error', '')[:60]}")
            continue

        def m(key: str, rs: list[dict[str, Any]] = ok) -> Any:
            v = median([float(r[key]) for r in rs if key in r])
            return "-" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")

        gaps = sum(r["clients_with_gaps"] + r["short"] for r in ok)
        intact = f"{sum(r['intact'] for r in ok)}/{sum(r['clients'] for r in ok)}"
        lines.append(
            f"{label:>10} {system:<22} {m('cpu_pct'):>6} {m('rss_end_mib'):>8} "
            f"{m('peak_rss_mib'):>6} {gaps:>5} {intact:>8} {m('echo_p50_us'):>11} "
            f"{m('echo_p99_us'):>8} {m('echo_max_us'):>8} {m('raw_echo_p99_us'):>8} "
            f"{m('load_before'):>5}"
        )
    lines.append(
        "CPU % of one core over the CPU window (before the echo); RSS at the end of the "
        "stream, peak since it began; "
        "gaps = clients with gap frames or short streams; intact = clients with every byte "
        "(length and CRC32); echo on the extra idle port while the others stream; raw p99 = "
        "the same keystrokes on a pty with nothing between, under the same load; load = "
        "1-minute load average before the row."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    doc = run(a, log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    out = a.out or Path(__file__).resolve().parent / "results" / f"scale-{utc_stamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print()
    print(table(doc["rows"]))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
