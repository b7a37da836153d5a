"""The ring logs' one writer thread: shared by every ring, each ring's file exact (real files)."""

from __future__ import annotations

import errno
import math
import random
import threading
from pathlib import Path

import pytest

from bridge.history import ringwriter
from bridge.history.ringlog import BLOCK_SIZE, RingLog
from tests.test_ringlog import Clock, held, wait_until

SIZE = 32 * BLOCK_SIZE


def writer_threads() -> list[threading.Thread]:
    """The threads writing ring logs (one per ring before #19: "ringlog NAME")."""
    return [t for t in threading.enumerate() if t.name.startswith("ringlog")]


def test_rings_share_one_writer_and_a_failing_ring_holds_up_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 rings written at once: one thread writes them all, each file holds exactly what its
    ring was given, and a ring whose writes fail (kept, retried) stops no other ring's pages."""
    monkeypatch.setattr(ringwriter, "RETRY_INTERVAL", 0.01)
    clock = Clock()
    rnd = random.Random(19)
    rings = [RingLog.open(tmp_path / f"p{i}.log", SIZE, clock=clock) for i in range(20)]
    sick = rings[7]
    healthy = [r for r in rings if r is not sick]
    original = sick._writer.write_page

    def broken(position: int, page: bytes | memoryview) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sick._writer, "write_page", broken)
    refs = {id(r): bytearray() for r in rings}
    for i in range(60):
        for ring in rings:
            chunk = rnd.randbytes(rnd.randrange(1, 1200))
            ring.append(chunk)
            refs[id(ring)] += chunk
            if i % 20 == 19:
                ring.flush()
        clock.now += 0.5
    assert len(writer_threads()) == 1
    for ring in healthy:  # written and synced while the sick ring's writes keep failing
        assert ring.wait_idle(10)
        assert ring.stats.errors == 0 and ring.stats.writes > 5 and ring.stats.syncs == 1 + 3
    wait_until(lambda: sick.stats.errors > 10)
    assert sick.stats.writes == 1 and not sick.health.ok  # its open record, before it broke
    assert held(sick) == (0, bytes(refs[id(sick)]))  # kept in memory meanwhile
    monkeypatch.setattr(sick._writer, "write_page", original)
    wait_until(lambda: sick.health.ok)
    for ring in rings:
        ring.close()
    assert writer_threads()[0].is_alive()  # asleep: no ring has work (no busy loop)
    wait_until(lambda: ringwriter._service.wake_at == math.inf)
    assert ringwriter._service.active == []
    for ring in rings:
        with RingLog.open(ring.path, SIZE, clock=clock) as again:
            assert held(again) == (0, bytes(refs[id(ring)]))


def test_a_full_page_goes_out_after_hold_without_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full page is written once it has waited HOLD, also when the writer had gone idle
    (before, a page handed to an idle writer waited for the next flush)."""
    monkeypatch.setattr(ringwriter, "HOLD", 0.05)
    data = random.Random(4).randbytes(3 * BLOCK_SIZE)
    with RingLog.open(tmp_path / "p.log", SIZE, clock=Clock()) as ring:
        assert (ring.stats.writes, ring.stats.syncs) == (1, 1)  # the open record
        ring.append(data[:BLOCK_SIZE])  # a full page (headers take room)
        wait_until(lambda: ring.stats.writes == 2)
        ring.append(data[BLOCK_SIZE : 2 * BLOCK_SIZE])  # another, to an idle writer
        wait_until(lambda: ring.stats.writes == 3)
        assert ring.stats.syncs == 1  # no flush asked for them
    with RingLog.open(tmp_path / "p.log", SIZE, clock=Clock()) as again:
        assert held(again) == (0, data[: 2 * BLOCK_SIZE])
