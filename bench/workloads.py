"""The workloads of issue 8, each run against one system (raw pty, ser2net, serial-bridge).

Every function returns a plain dict (JSON-ready). All loops are bounded in count and in time, and
every client process is joined or killed before a function returns.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from bench.clients import Endpoint, lean_echo, open_stalled, read_stalled_for_gap, worker_main
from bench.common import (
    MIB,
    crc_of,
    new_nonce,
    payload,
    percentile,
    reset_peak_rss,
    sample,
)
from bench.pty_target import TargetHandle


class System(Protocol):
    """A thing between the pty and the clients."""

    name: str
    t_spawn: float

    @property
    def pid(self) -> int: ...

    def endpoint(self, rw: bool = False) -> Endpoint: ...

    def start(self, device: str, wait: bool = True) -> None: ...

    def wait_ready(self, timeout: float) -> None: ...

    def stop(self) -> None: ...


class RawPty:
    """Nothing between: the clients read the pty slave directly (one client only)."""

    name = "raw-pty"
    t_spawn = 0.0

    def __init__(self) -> None:
        self.device = ""

    @property
    def pid(self) -> int:
        return 0

    def endpoint(self, rw: bool = False) -> Endpoint:
        return Endpoint(kind="pty", path=self.device)

    def start(self, device: str, wait: bool = True) -> None:
        self.device = device

    def wait_ready(self, timeout: float) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class Env:
    """What every workload needs."""

    ctx: Any  # multiprocessing context
    target: TargetHandle
    payload_size: int
    max_procs: int = 4
    log: Any = print
    notes: list[str] = field(default_factory=list)


class ClientGroup:
    """n clients spread over up to max_procs worker processes."""

    def __init__(self, env: Env, ep: Endpoint, n: int, mode: str, nonce: str | None = None) -> None:
        self.n = n
        procs = max(1, min(n, env.max_procs))
        shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for share in shares:
            parent, child = env.ctx.Pipe()
            p = env.ctx.Process(target=worker_main, args=(child, ep, share, mode, nonce))
            p.daemon = True
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def _gather(self, tag: str, timeout: float) -> list[Any]:
        end = time.monotonic() + timeout
        out: list[Any] = []
        for c in self.conns:
            while True:
                left = end - time.monotonic()
                if left <= 0 or not c.poll(left):
                    raise TimeoutError(f"client worker: no {tag!r} within {timeout}s")
                try:
                    got, value = c.recv()
                except EOFError as e:
                    raise RuntimeError("client worker died") from e
                if got == "error":
                    raise RuntimeError(f"client worker failed: {value}")
                if got == tag:
                    out.append(value)
                    break
        return out

    def wait_connected(self, timeout: float = 60) -> tuple[int, str]:
        res = self._gather("connected", timeout)
        return sum(r[0] for r in res), next((r[1] for r in res if r[1]), "")

    def wait_synced(self, timeout: float = 60) -> None:
        self._gather("synced", timeout)

    def send(self, msg: str, kw: dict[str, Any]) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send((msg, kw))

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return list(self._gather("result", timeout))

    def close(self) -> None:
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.kill()
                p.join(3)
        for c in self.conns:
            c.close()


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


# --- throughput and paced line rate ------------------------------------------------------------


def stream(
    env: Env,
    system: System,
    n_clients: int,
    size: int,
    deadline: float,
    rate: float | None = None,
    grace: float = 10.0,
) -> dict[str, Any]:
    """Target -> n clients; every client checks length and CRC32 of the stream."""
    env.target.flush()
    nonce = new_nonce()
    # The target writes sync tokens from now on; clients count as connected once they see one.
    env.target.start_stream(n=size, deadline=deadline, nonce=nonce, rate=rate)
    group = ClientGroup(env, system.endpoint(), n_clients, "stream", nonce)
    try:
        try:
            ok, err = group.wait_connected(120)
            if ok < n_clients:
                raise RuntimeError(f"only {ok}/{n_clients} connected and attached: {err}")
            group.wait_synced(60)
        except Exception:
            env.target.abort()
            env.target.wait_stream(10)
            raise
        pid = system.pid
        before = sample(pid) if pid else None
        if pid:
            reset_peak_rss(pid)
        env.target.go()
        rep = env.target.wait_stream(deadline + 30)
        assert rep is not None
        group.send("final", {"length": rep.written, "grace": grace})
        res = group.results(grace + 30)
        after = sample(pid) if pid else None
    finally:
        group.close()
    clients = [c for r in res for c in r["clients"]]
    expected_crc = crc_of(env.payload_size, rep.written)
    complete = [c for c in clients if c["count"] + c["gap_bytes"] >= rep.written]
    intact = [c for c in complete if c["count"] == rep.written and c["crc"] == expected_crc]
    t_end = max((c["t_last"] for c in complete), default=0.0)
    elapsed = (t_end - rep.t_first) if complete and t_end > rep.t_first else None
    out: dict[str, Any] = {
        "clients": n_clients,
        "written": rep.written,
        "deadline_hit": rep.deadline_hit,
        "complete": len(complete),
        "never_synced": sum(1 for c in clients if not c["synced"]),
        "intact": len(intact),
        "gaps": sum(c["gaps"] for c in clients),
        "gap_bytes": sum(c["gap_bytes"] for c in clients),
        "clients_with_gaps": sum(1 for c in clients if c["gaps"]),
        "target_max_block_s": round(rep.max_block, 4),
        "target_max_lag_bytes": rep.max_lag,
        "write_seconds": round(rep.t_last - rep.t_first, 4),
        "errors": sorted({c["error"] for c in clients if c["error"] and not c["closed"]})[:3],
    }
    if elapsed:
        out["seconds"] = round(elapsed, 4)
        out["mib_s"] = round(rep.written / MIB / elapsed, 2)
    client_cpu = sum(r["cpu"] for r in res)
    client_wall = max((r["wall"] for r in res), default=0.0)
    if client_wall > 0:
        out["client_cpu_share"] = round(client_cpu / client_wall, 3)  # in cores
        # One worker process near 1.0 means the client side, not the server, may be the limit.
        out["client_worker_max"] = round(max(r["cpu"] / max(r["wall"], 1e-9) for r in res), 3)
    if before is not None and after is not None:
        cpu = after.cpu - before.cpu
        out["server_cpu_s"] = round(cpu, 3)
        if rep.written:
            out["cpu_s_per_mib"] = round(cpu / (rep.written / MIB), 4)
        window = elapsed or (rep.t_last - rep.t_first)
        if window > 0:
            out["server_cpu_share"] = round(cpu / window, 4)
        out["rss_before_mib"] = _mib(before.rss_kib)
        out["peak_rss_mib"] = _mib(max(after.hwm_kib, before.rss_kib))
        out["rss_after_mib"] = _mib(after.rss_kib)
    return out


# --- echo latency ------------------------------------------------------------------------------


def echo(
    env: Env,
    system: System,
    count: int,
    background_clients: int,
    bg_rate: float,
    limit: float = 60.0,
) -> dict[str, Any]:
    """Keystroke round trips client -> bridge -> pty -> target echo -> bridge -> client."""
    env.target.flush()
    bg = (
        ClientGroup(env, system.endpoint(), background_clients, "drain")
        if background_clients
        else None
    )
    group = ClientGroup(env, system.endpoint(rw=True), 1, "echo")
    try:
        if bg is not None:
            ok, err = bg.wait_connected()
            if ok < background_clients:
                return {"error": f"background: {ok}/{background_clients} connected: {err}"}
        ok, err = group.wait_connected()
        if ok < 1:
            return {"error": f"echo client did not connect: {err}"}
        env.target.start_echo(bg_rate=bg_rate if bg else 0.0, limit=limit + 30)
        time.sleep(0.3)
        group.send("echo", {"count": count, "warmup": max(20, count // 20), "limit": limit})
        res = group.results(limit + 30)[0]
        env.target.stop()
        if bg is not None:
            bg.send("stop", {})
            bgres = bg.results(30)
        else:
            bgres = []
    finally:
        group.close()
        if bg is not None:
            bg.close()
    lat = sorted(res.get("latencies_us", []))
    out: dict[str, Any] = {"round_trips": len(lat), "timeouts": res.get("timeouts", 0)}
    if lat:
        out.update(
            p50_us=round(percentile(lat, 50), 1),
            p99_us=round(percentile(lat, 99), 1),
            max_us=round(lat[-1], 1),
        )
    if bgres:
        out["background_bytes_min"] = min(c["count"] for r in bgres for c in r["clients"])
    return out


def echo_lean(env: Env, system: System, count: int, limit: float = 60.0) -> dict[str, Any]:
    """Idle keystroke round trips from a minimal blocking client in the orchestrator."""
    env.target.flush()
    env.target.start_echo(bg_rate=0.0, limit=limit + 30)
    try:
        time.sleep(0.2)
        res = lean_echo(system.endpoint(rw=True), count, max(20, count // 20), limit)
    finally:
        env.target.stop()
    lat = sorted(res["latencies_us"])
    out: dict[str, Any] = {"round_trips": len(lat), "timeouts": res["timeouts"]}
    if lat:
        out.update(
            p50_us=round(percentile(lat, 50), 1),
            p99_us=round(percentile(lat, 99), 1),
            max_us=round(lat[-1], 1),
        )
    return out


# --- memory at rest ----------------------------------------------------------------------------


def idle_rss(env: Env, system: System, n_clients: int, settle: float = 2.0) -> dict[str, Any]:
    pid = system.pid
    time.sleep(settle)
    out: dict[str, Any] = {"rss0_mib": _mib(sample(pid).rss_kib)}
    group = ClientGroup(env, system.endpoint(), n_clients, "idle")
    try:
        ok, err = group.wait_connected()
        out["idle_clients"] = ok
        if err:
            out["error"] = err
        time.sleep(settle)
        out[f"rss{n_clients}_mib"] = _mib(sample(pid).rss_kib)
        group.send("stop", {})
        group.results(30)
    finally:
        group.close()
    return out


# --- a client that stops reading ---------------------------------------------------------------


def stalled(env: Env, system: System, size: int, deadline: float) -> dict[str, Any]:
    """One live reader beside one connected client that never reads."""
    env.target.flush()
    nonce = new_nonce()
    pid = system.pid
    sock = None
    out: dict[str, Any] = {}
    env.target.start_stream(n=size, deadline=deadline, nonce=nonce)
    group = ClientGroup(env, system.endpoint(), 1, "stream", nonce)
    try:
        try:
            sock = open_stalled(system.endpoint())
            ok, err = group.wait_connected()
            if ok < 1:
                raise RuntimeError(f"live client did not connect: {err}")
            group.wait_synced(60)
        except Exception:
            env.target.abort()
            env.target.wait_stream(10)
            raise
        before = sample(pid)
        reset_peak_rss(pid)
        env.target.go()
        rep = env.target.wait_stream(deadline + 30)
        assert rep is not None
        time.sleep(2.0)
        group.send("progress", {})
        live_during, live_t_last = group._gather("progress", 30)[0][0]
        after = sample(pid)
        out = {
            "size": size,
            "target_written": rep.written,
            "target_all_written": rep.written == size,
            "target_max_block_s": round(rep.max_block, 3),
            "live_bytes_during_stall": live_during,
            "rss_before_mib": _mib(before.rss_kib),
            "peak_rss_mib": _mib(max(after.hwm_kib, before.rss_kib)),
            "rss_after_mib": _mib(after.rss_kib),
        }
        # Then the stalled client goes away (ser2net) or starts reading (websocket: it should
        # be told what it missed) while a trickle of output flows: does the live one resume?
        env.target.start_stream(n=256 * 1024, deadline=8.0, nonce=None, rate=64 * 1024)
        if system.endpoint().kind == "ws":
            got = read_stalled_for_gap(sock, timeout=5.0)
            out["stalled_gap"] = got["gap"]
            out["stalled_read_bytes"] = got["bytes"]
            out["stalled_texts"] = got["texts"][:3]
        else:
            with contextlib.suppress(OSError):
                sock.close()
            out["stalled_gap"] = None
        rep2 = env.target.wait_stream(30)
        assert rep2 is not None
        total = rep.written + rep2.written
        group.send("final", {"length": total, "grace": 5.0})
        live = group.results(60)[0]["clients"][0]
        crc = zlib.crc32(
            memoryview(payload(env.payload_size))[: rep2.written],
            crc_of(env.payload_size, rep.written),
        )
        out["live_intact"] = rep.written == live_during and live["gaps"] == 0
        out["live_gaps"] = live["gaps"]
        out["after_stall_written"] = rep2.written
        out["live_bytes_total"] = live["count"]
        out["live_resumed"] = live["count"] == total and live["crc"] == crc
        if out["live_intact"] and live_t_last > rep.t_first:
            out["live_mib_s"] = round(rep.written / MIB / (live_t_last - rep.t_first), 2)
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        group.close()
    return out


# --- cold start ----------------------------------------------------------------------------------


def cold_start(env: Env, system: System) -> dict[str, Any]:
    """Process start to first console byte delivered to a client that was waiting to connect."""
    system.stop()
    env.target.flush()
    env.target.start_trickle(interval=0.002, limit=60)
    group = ClientGroup(env, system.endpoint(), 1, "cold")
    try:
        time.sleep(0.3)  # the worker is up and retrying before the server process exists
        system.start(env.target.slave_path, wait=False)
        t_spawn = system.t_spawn
        res = group.results(60)[0]
        env.target.stop()
        system.wait_ready(30)
    finally:
        group.close()
    c = res["clients"][0]
    if not c["count"]:
        return {"error": c["error"] or "no byte"}
    return {"cold_start_s": round(c["t_first"] - t_spawn, 3)}
