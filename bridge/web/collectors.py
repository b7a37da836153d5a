"""The Prometheus collectors behind `GET /metrics` (bridge.web.metrics): at each scrape they read
what the hub (`Port`), its ring log and the access gate already count; nothing is counted here.

Imported at the first scrape, not at start-up: prometheus-client costs about 2 MiB of the
daemon's memory, which a bridge nobody scrapes need not pay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bridge.access.gate import AUTH_METHODS, AUTH_RESULTS, THROTTLED_METHODS, Gate
from bridge.console.port import Port
from bridge.history.health import WriteHealth
from bridge.history.shipping import Sink

PREFIX = "serial_bridge"


def scrape(
    ports: list[Port], stores: dict[str, WriteHealth], gate: Gate | None, sinks: tuple[Sink, ...]
) -> tuple[bytes, str]:
    """The exposition (and its content type) of these ports and stores; with `gate` (an identity
    that may see every port) also the bridge-wide series: logins, audit copies, tasks, process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortCollector(ports))
    registry.register(StorageCollector(stores))
    if gate is not None:
        registry.register(AuthCollector(gate))
        registry.register(AuditCollector(sinks))
        registry.register(TaskCollector())
        ProcessCollector(registry=registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class PortCollector:
    """Per-port series of the ports a scrape may see."""

    def __init__(self, ports: Iterable[Port]) -> None:
        self.ports = list(ports)

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_port_{name}", doc, labels=["port"])

        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_port_{name}", doc, labels=["port", *labels])

        enabled = gauge("enabled", "0 when the administrator disabled the port (enabled = false)")
        online = gauge("online", "1 while the port's device is open")
        clients = gauge("clients", "Clients attached to the port's console")
        writer = gauge("writer", "1 while a client holds the write lease")
        bytes_in = counter("bytes_in", "Bytes read from the target's console")
        bytes_out = counter("bytes_out", "Bytes written to the target's console")
        reopens = counter("reopens", "Times the device was opened again after the first open")
        gaps = counter("gaps", "Gaps sent to clients that fell behind further than was held")
        breaks = counter("breaks", "BREAK conditions sent to the target (SysRq ones included)")
        actions = counter(
            "actions", "Actions asked of the port, by kind and result", "action", "result"
        )
        uart = counter("uart_errors", "Line errors the UART driver counted (TIOCGICOUNT)", "kind")
        alerts = counter("alerts", "Console lines that matched an alert rule", "rule", "severity")
        suppressed = counter(
            "alerts_suppressed", "Alert matches left out by the rule's rate", "rule"
        )
        boots = counter("boots", "Boots timed from a reset or power-on (or boot banner) to login")
        last_boot = gauge("last_boot_seconds", "How long the last boot timed took")
        for port in self.ports:
            name = [port.name]
            enabled.add_metric(name, int(port.cfg.enabled))
            online.add_metric(name, int(port.online))
            clients.add_metric(name, len(port.attachments))
            writer.add_metric(name, int(port.writer is not None))
            bytes_in.add_metric(name, port.bytes_in)
            bytes_out.add_metric(name, port.bytes_out)
            reopens.add_metric(name, max(0, port.opens - 1))
            gaps.add_metric(name, port.gaps_sent)
            breaks.add_metric(name, port.actions.breaks)
            for (action, result), n in sorted(port.actions.counts.items()):
                actions.add_metric([port.name, action, result], n)
            transport = port.transport  # the driver's counters, while the device is open
            line_errors = transport.line_errors() if transport is not None else None
            for kind, n in sorted((line_errors or {}).items()):
                uart.add_metric([port.name, kind], n)
            watch = port.watch
            for (rule, severity), n in sorted(watch.counts.items()):
                alerts.add_metric([port.name, rule, severity], n)
            for rule, n in sorted(watch.suppressed.items()):
                suppressed.add_metric([port.name, rule], n)
            boots.add_metric(name, watch.boots)
            if watch.last_boot is not None:
                last_boot.add_metric(name, watch.last_boot)
        yield from (enabled, online, clients, writer, bytes_in, bytes_out, reopens, gaps, breaks)
        yield from (actions, uart, alerts, suppressed, boots, last_boot)
        yield from self._ringlog()

    def _ringlog(self) -> Iterator[Metric]:
        written = CounterMetricFamily(
            f"{PREFIX}_ringlog_written_bytes",
            "Bytes the ring log handed to the file system (pages, so wear can be watched)",
            labels=["port"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_ringlog_errors",
            "Ring log page writes and syncs that failed",
            labels=["port"],
        )
        flush = HistogramMetricFamily(
            f"{PREFIX}_ringlog_sync_seconds",
            "Time the ring log's syncs (fdatasync after a flush) took",
            labels=["port"],
        )
        for port in self.ports:
            if port.ringlog is None:
                continue
            stats = port.ringlog.stats
            written.add_metric([port.name], stats.bytes_written)
            errors.add_metric([port.name], stats.errors)
            buckets, total = stats.sync_times.snapshot()
            flush.add_metric(
                [port.name],
                [(_le(bound), n) for bound, n in buckets],
                total,
            )
        yield from (written, errors, flush)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class AuditCollector:
    """Audit copies sent to and dropped by each sink (journal, syslog)."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            f"{PREFIX}_audit_shipped", "Audit events a sink sent on", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            f"{PREFIX}_audit_dropped",
            "Audit events a sink could not send (no journal, a full queue) and dropped",
            labels=["sink"],
        )
        for sink in self.sinks:
            sent.add_metric([sink.name], sink.sent)
            dropped.add_metric([sink.name], sink.dropped)
        yield from (sent, dropped)


class StorageCollector:
    """Write health of the stores under state_dir (bridge.history.health): ring logs, audit,
    users/tokens files."""

    def __init__(self, stores: dict[str, WriteHealth]) -> None:
        self.stores = stores

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            f"{PREFIX}_storage_ok",
            "1 while writes of the store work; 0 during a disk fault (log:PORT, audit, users)",
            labels=["store"],
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_storage_write_failures",
            "Writes (and syncs, renames) of the store that failed",
            labels=["store"],
        )
        for name, health in self.stores.items():
            ok.add_metric([name], int(health.ok))
            failures.add_metric([name], health.failures)
        yield from (ok, failures)


class TaskCollector:
    """The event loop's tasks: flat over hours of clients coming and going, or a leak."""

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(f"{PREFIX}_tasks", "asyncio tasks alive in the daemon")
        tasks.add_metric([], len(asyncio.all_tasks()))
        yield tasks


class AuthCollector:
    """Authentications by method and result, as the gate counted them (every door's)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_auth_attempts",
            "Authentications by method and result (success, failure, throttled)",
            labels=["method", "result"],
        )
        counts = self.gate.auth_counts
        seen = {(m, r) for m in AUTH_METHODS for r in AUTH_RESULTS if r != "throttled"}
        seen |= {(m, "throttled") for m in THROTTLED_METHODS} | set(counts)
        for method, result in sorted(seen):
            family.add_metric([method, result], counts.get((method, result), 0))
        yield family
