"""Ring log: bounded, flash-friendly, crash-safe console history (real files in tmp_path)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.history import ringformat, ringlog, ringwriter
from bridge.history.ringlog import BLOCK_SIZE, LogRecord, RingLog

REPO = Path(__file__).resolve().parent.parent
NBLOCKS = 3
SIZE = NBLOCKS * BLOCK_SIZE
SHARED_TMP = [HealthCheck.function_scoped_fixture]  # each example makes its own directory


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_ring(path: Path, clock: Clock, size: int = SIZE) -> RingLog:
    return RingLog.open(path, size, clock=clock, durable=False)


def fresh(tmp_path: Path) -> Path:
    """A new directory per hypothesis example (they share tmp_path)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def held(ring: RingLog) -> tuple[int, bytes]:
    return ring.read(0, 1 << 30)


def crash(ring: RingLog, *, drained: bool = True) -> None:
    """kill -9: the process dies without flushing. ``drained``: every page handed to the writer
    thread had reached the file; else what was still queued is lost with the process."""
    if drained:
        assert ring.wait_idle(10)
    ring._writer.stop(discard=True)
    os.close(ring._fd)
    ring._buf.close()


class Gate:
    """Holds the writer thread before each pwrite until opened (a device that fell behind)."""

    def __init__(self, ring: RingLog, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        original = ring._writer.write_page

        def gated(position: int, page: bytes | memoryview) -> None:
            self.open.wait()
            original(position, page)

        monkeypatch.setattr(ring._writer, "write_page", gated)


@dataclass
class Write:
    position: int
    page: bytes
    next_offset: int  # ring.next_offset when the page was written
    oldest_offset: int


@dataclass
class Recorder:
    """Every page the ring hands to its writer thread, with the ring's state at that moment, and
    every page the writer thread then hands to the file system."""

    ring: RingLog
    writes: list[Write] = field(default_factory=list)
    written: list[tuple[int, bytes]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Recorder:
        submit, write_page = self.ring._writer.submit, self.ring._writer.write_page

        def record(*jobs: Any) -> None:
            r = self.ring
            pages = [page for job in jobs if job.seq >= 0 for page in job.pages()]
            for page in pages:  # (an append hands over all the pages it filled at its end)
                end = page.recs[-1].end  # complete once this page is written
                self.writes.append(Write(page.position, page.page, end, r.oldest_offset))
            submit(*jobs)

        def record_written(position: int, data: bytes | memoryview) -> None:
            for at in range(0, len(data), BLOCK_SIZE):  # one pwrite may carry several pages
                self.written.append((position + at, bytes(data[at : at + BLOCK_SIZE])))
            write_page(position, data)

        monkeypatch.setattr(self.ring._writer, "submit", record)
        monkeypatch.setattr(self.ring._writer, "write_page", record_written)
        return self

    def check_written_in_order(self) -> None:
        """The writer wrote exactly the pages it was handed, in the order it was handed them."""
        assert self.written == [(w.position, w.page) for w in self.writes]


# ---------------------------------------------------------------------------- basics


def test_roundtrip_reopen_and_offsets(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(4)
    ref = bytearray()
    with open_ring(tmp_path / "p.log", clock, size=64 * BLOCK_SIZE) as ring:
        for _ in range(500):
            chunk = rnd.randbytes(rnd.randrange(1, 200))
            assert ring.next_offset == len(ref)
            ring.append(chunk)
            ref += chunk
            clock.now += rnd.choice([0.0, 0.4, 3.0])
            if rnd.random() < 0.1:
                ring.flush()
        assert held(ring) == (0, bytes(ref))
    with open_ring(tmp_path / "p.log", clock, size=64 * BLOCK_SIZE) as ring:
        assert (ring.oldest_offset, ring.next_offset) == (0, len(ref))
        assert held(ring) == (0, bytes(ref))
        start, part = ring.read(1000, 300)
        assert (start, part) == (1000, bytes(ref[1000:1300]))
        assert ring.read(len(ref), 10) == (len(ref), b"")
        assert ring.read(len(ref) + 50, 10) == (len(ref), b"")


def test_wraparound_keeps_exactly_the_newest_bytes(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(7)
    ref = bytearray()
    with open_ring(tmp_path / "p.log", clock) as ring:
        for _ in range(400):
            chunk = rnd.randbytes(rnd.randrange(1, 700))
            ring.append(chunk)
            ref += chunk
        start, data = held(ring)
        assert start == ring.oldest_offset > 0
        assert data == bytes(ref[start:])  # a suffix: the newest bytes, nothing missing
        # The clock did not move: one record per block, so every block holds 4096 - 48 bytes
        # (the first also the open record, 24 + 1) and the ring keeps the NBLOCKS - 1 written
        # blocks plus the block being filled.
        per_block = BLOCK_SIZE - 2 * 24
        assert (NBLOCKS - 1) * per_block < len(data) <= NBLOCKS * per_block
        assert len(data) == (NBLOCKS - 1) * per_block + (25 + len(ref)) % per_block
        assert ring.offset_at(0.0) == start  # older than the ring: its oldest byte
    with open_ring(tmp_path / "p.log", clock) as ring:
        # the newest block had no room left for the open record: it starts the next block, in
        # the position of the oldest, whose bytes go (as the first byte of output would do)
        assert held(ring) == (start + per_block, data[per_block:])


@pytest.mark.parametrize("blocks", [16, 160])
def test_whole_blocks_in_one_append_are_the_blocks_small_appends_build(
    tmp_path: Path, blocks: int
) -> None:
    """Appends spanning whole blocks take a fast path that builds them in one go, as runs of up
    to RUN_PAGES consecutive pages (160 blocks: runs cut at 64 pages and at the file's end): the
    file, the reads (while in memory, queued or on disk, across wraparounds) and the recovery
    are exactly those of the same bytes appended in pieces smaller than a block."""
    clock = Clock()
    rnd = random.Random(19)
    full = BLOCK_SIZE - 2 * 24  # a data record that fills a block alone
    size = blocks * BLOCK_SIZE
    fast = open_ring(tmp_path / "fast.log", clock, size=size)
    slow = open_ring(tmp_path / "slow.log", clock, size=size)
    fast.keep(2 * BLOCK_SIZE)  # the older blocks are read from the queue or the file
    slow.keep(2 * BLOCK_SIZE)
    ref = bytearray()
    sizes = [
        full,
        2 * full,
        full - 1,
        full + 1,
        3 * full + 7,
        5 * full,
        300,
        (blocks + 1) * full + 5,
    ]
    sizes += [ringwriter.RUN_PAGES * full + 9 * full] if blocks > ringwriter.RUN_PAGES else []
    for n in sizes * 4:
        chunk = rnd.randbytes(n)
        fast.append(chunk)
        for at in range(0, n, 1000):
            slow.append(chunk[at : at + 1000])
        ref += chunk
        clock.now += rnd.choice([0.0, 0.4, 2.0])
        if rnd.random() < 0.3:
            fast.flush()
            slow.flush()
        if rnd.random() < 0.3:
            fast.add_marker({"event": "x", "n": n})
            slow.add_marker({"event": "x", "n": n})
        assert fast.next_offset == slow.next_offset == len(ref)
        assert fast.oldest_offset == slow.oldest_offset > len(ref) - size
        start, data = held(fast)
        assert (start, data) == held(slow) and data == ref[start:]
        assert list(fast.records(0)) == list(slow.records(0))
        assert fast.start_of_last(10 * full) == slow.start_of_last(10 * full)
        assert fast.offset_at(clock.now - 3) == slow.offset_at(clock.now - 3)
    fast.close()
    slow.close()
    assert fast.stats.writes == slow.stats.writes > 4 * len(sizes)
    assert (tmp_path / "fast.log").read_bytes() == (tmp_path / "slow.log").read_bytes()
    with open_ring(tmp_path / "fast.log", clock, size=size) as again:
        start, data = held(again)
        assert data == ref[start:] and start == again.oldest_offset > len(ref) - size


def test_the_checksum_is_zlibs_crc32_whichever_library_computes_it() -> None:
    """The format's checksums are zlib.crc32 (CRC-32/ISO-HDLC); where ISA-L computes them, it
    must be the very same function, seeded or not, on any length."""
    rnd = random.Random(7)
    for n in [0, 1, 20, 4048, 4096, 70000]:
        data = rnd.randbytes(n)
        seed = rnd.getrandbits(32)
        assert ringformat.crc32(data) == zlib.crc32(data)
        assert ringformat.crc32(data, seed) == zlib.crc32(data, seed)


def test_a_ring_written_with_isal_reads_back_where_only_zlib_is(tmp_path: Path) -> None:
    """A card moved from a machine with ISA-L (x86-64, aarch64) to one without (32-bit Raspberry
    Pi OS): the ring opens there with every record, checked by zlib's CRC-32, and back again."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["isal"] = None  # not installed here
        from pathlib import Path
        from bridge.history import ringformat
        from bridge.history.ringlog import RingLog
        assert ringformat.crc32.__module__ == "zlib", ringformat.crc32.__module__
        with RingLog.open(Path(sys.argv[1]), 16 * 4096) as ring:
            sys.stdout.buffer.write(ring.read(0, 1 << 20)[1])
            ring.append(b"|written with zlib")
        """
    )
    path = tmp_path / "p.log"
    text = b"".join(b"line %d\r\n" % i for i in range(3000))  # whole blocks, a partial one
    if ringformat.crc32.__module__ == "zlib":
        pytest.skip("isal is not installed here (no wheel for this machine)")
    with RingLog.open(path, 16 * BLOCK_SIZE) as ring:
        ring.append(text)
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == text  # every record: had a checksum failed, reading would stop there
    with RingLog.open(path, 16 * BLOCK_SIZE) as ring:
        assert held(ring)[1] == text + b"|written with zlib"


def test_offsets_are_never_reused_across_restarts_and_crashes(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(1)
    path = tmp_path / "p.log"
    ref = bytearray()  # the byte each offset was given to, by offset
    kept = bytearray()  # 1 where that byte must survive the restart
    for cycle in range(12):
        ring = open_ring(path, clock)
        assert ring.next_offset >= len(ref), "an offset handed out before was reused"
        # the last close was clean (it may skip its record when the block is full: a gap then)
        assert ring.next_offset in (len(ref), len(ref) + ringlog.CRASH_GAP)
        gap = ring.next_offset - len(ref)
        ref += bytes(gap)
        kept += bytes(gap)
        for _ in range(rnd.randrange(1, 30)):
            chunk = rnd.randbytes(rnd.randrange(1, 900))
            ring.append(chunk)
            ref += chunk
            kept += b"\x01" * len(chunk)
            clock.now += 0.7
        ring.flush()
        ring.append(b"never flushed")
        ref += b"never flushed"
        clean = cycle % 3 == 0
        kept += (b"\x01" if clean else b"\x00") * len(b"never flushed")
        if clean:
            ring.close()
        else:
            crash(ring)
        ring2, have = recovered(path, clock, Run(bytes(ref), []))
        assert ring2.next_offset >= len(ref), "an offset handed out before was reused"
        for i in range(ring2.oldest_offset, len(ref)):
            assert have[i] == kept[i], f"offset {i}: held={have[i]}, should be {kept[i]}"
        ref += bytes(ring2.next_offset - len(ref))
        kept += bytes(ring2.next_offset - len(kept))
        ring2.close()


def test_crash_skips_offsets_clean_close_does_not(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "p.log"
    with open_ring(path, clock) as ring:
        ring.append(b"clean")
    ring = open_ring(path, clock)
    assert ring.next_offset == 5
    ring.append(b" flushed")
    ring.flush()
    ring.append(b" lost")
    crash(ring)
    with open_ring(path, clock) as ring:
        assert ring.next_offset == 13 + ringlog.CRASH_GAP
        ring.append(b"new")
        assert ring.read(0, 100) == (0, b"clean flushed")
        assert ring.read(13, 100) == (13 + ringlog.CRASH_GAP, b"new")  # the hole is skipped
        assert [r.data for r in ring.records(0)] == [b"clean", b" flushed", b"new"]


def test_the_last_n_bytes_are_counted_across_holes(tmp_path: Path) -> None:
    """start_of_last counts bytes held only: the offsets a crash skipped count for nothing, in
    the block resumed after the crash as across blocks (checked against every record)."""
    clock = Clock()
    path = tmp_path / "p.log"
    ring = RingLog.open(path, 8 * BLOCK_SIZE, clock=clock, durable=False)
    ring.append(b"a" * 5000)  # fills a block: the rest starts the next one
    clock.now += 1
    ring.append(b"b" * 700)
    ring.flush()
    crash(ring)
    with RingLog.open(path, 8 * BLOCK_SIZE, clock=clock, durable=False) as ring:
        assert ring.crash_gap == (5700, 5700 + ringlog.CRASH_GAP)
        assert ring.start_of_last(1) == 5699  # the last byte before the crash
        ring.append(b"c" * 300)  # in the block resumed after the crash
        clock.now += 1
        ring.append(b"d" * 5000)
        held = [(r.offset + i) for r in ring.records(0) for i in range(len(r.data))]
        for n in (1, 300, 5000, 5300, 5301, 6000, 6000 + 700, 11000, len(held), len(held) + 1):
            assert ring.start_of_last(n) == held[max(len(held) - n, 0)], n
        end = 5700 + ringlog.CRASH_GAP + 10  # counted back from inside the new output
        for n in (5, 10, 11, 710, 6000, 10**9):
            before = [o for o in held if o < end]
            assert ring.start_of_last(n, end) == before[max(len(before) - n, 0)], n
        assert ring.start_of_last(10, end=0) is None


def offsets_until_killed(script: str, path: Path, lines: int) -> list[int]:
    """Run `script` (argv[1]: `path`) in a child process, read the first `lines` offsets it
    prints, then kill -9 it at once."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        return [int(child.stdout.readline()) for _ in range(lines)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_kill_9_keeps_everything_flushed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from bridge.history.ringlog import RingLog
        ring = RingLog.open(Path(sys.argv[1]), 16 * 4096)
        for i in range(2000):
            ring.append(b"line %d\\r\\n" % i)
        ring.flush()
        ring.wait_idle()  # flushed = handed to the writer thread and written by it
        ring.append(b"lost in the crash")
        print(ring.next_offset, flush=True)
        time.sleep(60)
        """
    )
    path = tmp_path / "p.log"
    flushed = offsets_until_killed(script, path, 1)[-1]
    expected = b"".join(b"line %d\r\n" % i for i in range(2000))
    assert flushed == len(expected) + len(b"lost in the crash")
    with RingLog.open(path, 16 * 4096) as ring:
        assert ring.next_offset >= flushed  # offsets of the lost bytes are not handed out again
        start, data = held(ring)
        assert data == expected[start:]
        end = ring.next_offset
        ring.append(b"after")
        assert ring.read(len(expected), 100) == (end, b"after")


def test_kill_9_while_the_writer_thread_is_busy(tmp_path: Path) -> None:
    """A real kill -9 at an arbitrary moment of a fast stream: no wrong byte comes back, and no
    offset handed out before the kill is handed out again."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from bridge.history.ringlog import RingLog
        ring = RingLog.open(Path(sys.argv[1]), 64 * 4096)
        i = 0
        while True:
            ring.append(b"line %d\\r\\n" % i)
            i += 1
            if i % 500 == 0:
                ring.flush()
                print(ring.next_offset, flush=True)
        """
    )
    path = tmp_path / "p.log"
    # killed after 1 to 40 flushes: early on, none of its pages may have reached the disk yet
    handed_out = max(offsets_until_killed(script, path, random.randint(1, 40)))
    expected = b"".join(b"line %d\r\n" % i for i in range(handed_out // 6 + 1000))
    with RingLog.open(path, 64 * 4096) as ring:
        assert ring.next_offset >= handed_out
        start, data = held(ring)
        assert data == expected[start : start + len(data)]  # (none if killed before a page)
        previous = -1
        for rec in ring.records(0):
            assert rec.offset >= previous
            assert rec.data == expected[rec.offset : rec.offset + len(rec.data)]
            previous = rec.offset + len(rec.data)


@pytest.mark.parametrize("before", ["a new file", "a cleanly closed ring"])
def test_kill_9_before_any_page_of_the_process_reached_the_disk_reuses_no_offset(
    tmp_path: Path, before: str
) -> None:
    """Killed within its first flush interval, before any page of its own was written: the file
    is as the process found it (new, or closed cleanly), yet the next open knows the process had
    it open (its open record), reports the unclean stop and goes on CRASH_GAP further."""
    path = tmp_path / "p.log"
    earlier = b""
    if before == "a cleanly closed ring":
        earlier = b"from an earlier run\r\n"
        with RingLog.open(path, 16 * BLOCK_SIZE) as ring:
            ring.append(earlier)
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from bridge.history.ringlog import RingLog
        ring = RingLog.open(Path(sys.argv[1]), 16 * 4096)
        ring.append(b"handed out, never written")  # less than a page, no flush
        print(ring.next_offset, flush=True)
        time.sleep(60)
        """
    )
    handed_out = offsets_until_killed(script, path, 1)[-1]
    assert handed_out == len(earlier) + len(b"handed out, never written")
    assert b"handed out" not in path.read_bytes()  # no page of the killed process was written
    with RingLog.open(path, 16 * BLOCK_SIZE) as ring:
        assert ring.crash_gap == (len(earlier), len(earlier) + ringlog.CRASH_GAP)
        assert ring.next_offset == len(earlier) + ringlog.CRASH_GAP >= handed_out
        assert held(ring)[1] == earlier
        ring.append(b"after")
        assert ring.read(len(earlier), 100) == (ring.next_offset - 5, b"after")


def old_layout(path: Path, nblocks: int, blocks: list[list[tuple[int, int, bytes]]]) -> None:
    """A ring file as versions before the open record (kind 4) wrote it: block ``i`` holds the
    records ``blocks[i]`` (kind, offset, payload), all dated 1000.0. (For the closed ring below
    it is byte for byte the file the version before, ffec2c3, writes for that output.)"""
    image = bytearray(nblocks * BLOCK_SIZE)
    for seq, recs in enumerate(blocks):
        page = bytearray(BLOCK_SIZE)
        page[: ringformat.BH] = ringformat.block_header(nblocks, seq)
        at = ringformat.BH
        for kind, offset, payload in recs:
            rec = ringformat.Rec(kind, offset, 1000.0, at + ringformat.RH, len(payload))
            page[rec.pos : rec.pos + rec.length] = payload
            ringformat.seal_record(page, seq, rec)
            at = rec.pos + rec.length
        image[seq * BLOCK_SIZE : (seq + 1) * BLOCK_SIZE] = page
    path.write_bytes(image)


@pytest.mark.parametrize("closed", [True, False])
def test_a_ring_written_before_the_open_record_reads_back_whole(
    tmp_path: Path, closed: bool
) -> None:
    """Rings written by earlier versions (no open record) open and read as before: closed
    cleanly, offsets go on where they stopped; left by a crash, CRASH_GAP further on."""
    data, marker = ringformat.KIND_DATA, ringformat.KIND_MARKER
    text = b"".join(b"line %d\r\n" % i for i in range(600))  # 5,490 bytes: two blocks
    first = BLOCK_SIZE - 2 * 24
    event = b'{"event":"offline"}'
    last = [(data, first, text[first:]), (marker, len(text), event)]
    if closed:
        last.append((ringformat.KIND_CLOSE, len(text), b"\x00"))
    path = tmp_path / "old.ring"
    old_layout(path, 16, [[(data, 0, text[:first])], last])
    with RingLog.open(path, 16 * BLOCK_SIZE, clock=Clock()) as ring:
        assert ring.crash_gap == (None if closed else (len(text), len(text) + ringlog.CRASH_GAP))
        assert ring.next_offset == len(text) + (0 if closed else ringlog.CRASH_GAP)
        assert held(ring) == (0, text)
        assert [r.marker for r in ring.records(0) if r.marker] == [{"event": "offline"}]
        assert ring.offset_at(0) == 0 and ring.start_of_last(10) == len(text) - 10
        end = ring.next_offset
        ring.append(b"and on")
    with RingLog.open(path, 16 * BLOCK_SIZE, clock=Clock()) as ring:
        assert ring.crash_gap is None and ring.next_offset == end + len(b"and on")
        assert ring.read(0, 1 << 20) == (0, text + (b"and on" if closed else b""))
        assert ring.read(len(text), 100) == (end, b"and on")  # across the gap, if any


# ---------------------------------------------------------------------------- crash safety


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    op = st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5000), st.sampled_from([0.0, 0.4, 2.0])),
        st.tuples(st.just("append"), st.integers(8000, 20000), st.just(0.1)),  # pages at once
        st.tuples(st.just("flush"), st.just(0), st.just(0.0)),
        st.tuples(st.just("marker"), st.integers(0, 100), st.just(0.0)),
    )
    # A prefix of plain appends first, so that most examples run on a ring that has wrapped.
    prefix = [("append", 1000, 0.7)] * draw(st.integers(0, 12 * NBLOCKS))
    return prefix + draw(st.lists(op, min_size=1, max_size=30))


@dataclass
class Run:
    ref: bytes
    markers: list[tuple[int, dict[str, Any]]]


def run_workload(ring: RingLog, clock: Clock, ops: list[tuple[str, int, float]]) -> Run:
    rnd = random.Random(len(ops))
    ref = bytearray()
    markers: list[tuple[int, dict[str, Any]]] = []
    for kind, n, dt in ops:
        if kind == "append":
            chunk = rnd.randbytes(n)
            ring.append(chunk)
            ref += chunk
            clock.now += dt
        elif kind == "flush":
            ring.flush()
        else:
            event = {"event": "nmi", "user": "alice", "n": n}
            ring.add_marker(event)
            markers.append((ring.next_offset, event))
    return Run(bytes(ref), markers)


def recovered(path: Path, clock: Clock, run: Run, size: int = SIZE) -> tuple[RingLog, bytearray]:
    """Open the damaged file as the bridge does; check nothing wrong comes back; return the ring
    and which offsets the recovery scan brought back. (A copy opened without the open record
    shows what the scan brought back: the open record may need a new block, in the position of
    the oldest, whose bytes then go as they would with the first byte of new output.)"""
    copy = path.with_name(path.name + ".scanned")
    shutil.copyfile(path, copy)
    with RingLog.open(copy, size, clock=clock, durable=False, record_open=False) as scanned:
        have = check_held(scanned, run)
        found = [b.seq for b in scanned._blocks]
        expected = (scanned.next_offset, scanned.crash_gap)
    ring = open_ring(path, clock, size)
    assert (ring.next_offset, ring.crash_gap) == expected
    kept = [b.seq for b in ring._blocks]
    new_block = ring._blocks.items[-1].seq  # the open record's
    assert [seq for seq in found if seq not in kept] in ([], [new_block - size // BLOCK_SIZE])
    check_held(ring, run)
    return ring, have


def check_held(ring: RingLog, run: Run) -> bytearray:
    """Which offsets of ``run`` the ring holds; checks every record and read() against it."""
    have = bytearray(len(run.ref))
    previous = -1
    for rec in ring.records(0):
        assert rec.offset >= previous
        if rec.marker is None:
            assert rec.data == run.ref[rec.offset : rec.offset + len(rec.data)], "wrong byte"
            have[rec.offset : rec.offset + len(rec.data)] = b"\x01" * len(rec.data)
            previous = rec.offset + len(rec.data)
        else:
            assert (rec.offset, rec.marker) in run.markers, "invented marker"
            previous = rec.offset
    assert ring.next_offset <= len(run.ref) + ringlog.CRASH_GAP
    # read() serves the same bytes: contiguous answers, a hole moves the start forward
    at = 0
    while True:
        start, data = ring.read(at, 1000)
        if not data:
            assert start == ring.next_offset
            break
        assert start >= at and all(have[start : start + len(data)])
        assert not any(have[at:start]), "read skipped bytes that are held"
        assert data == run.ref[start : start + len(data)]
        at = start + len(data)
    return have


def recovered_markers(ring: RingLog) -> list[tuple[int, dict[str, Any]]]:
    return [(r.offset, r.marker) for r in ring.records(0) if r.marker is not None]


def continues_after(ring: RingLog, clock: Clock, path: Path) -> None:
    end = ring.next_offset
    ring.append(b"after recovery")
    ring.close()
    with open_ring(path, clock) as again:
        assert again.read(end, 100) == (end, b"after recovery")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=workloads(), pick=st.floats(0, 1, exclude_max=True), cut=st.integers(0, BLOCK_SIZE))
def test_torn_write_loses_nothing_that_was_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: list[Any], pick: float, cut: int
) -> None:
    """kill -9 / power cut while a page is being written: the page holds only its first `cut`
    bytes. Complete = reached the disk in an earlier, finished write: every such byte in the ring
    (from the oldest offset held when the torn write began) and marker comes back, nothing else."""
    clock = Clock()
    src = fresh(tmp_path) / "src.log"
    ring = open_ring(src, clock)
    opened = src.read_bytes()  # the open record is on disk before any offset is handed out
    recorder = Recorder(ring).install(monkeypatch)
    run = run_workload(ring, clock, ops)
    ring.close()
    recorder.check_written_in_order()
    if not recorder.writes:
        return
    # tear one of the last writes: after the prefix, those overwrite an older lap
    k = len(recorder.writes) - 1 - int(pick * min(len(recorder.writes), 2 * NBLOCKS))
    torn = recorder.writes[k]
    rewrite = torn.position in {w.position for w in recorder.writes[:k]}
    hypothesis.event(f"torn write: rewrite={rewrite}, older lap held={torn.oldest_offset > 0}")
    image = bytearray(opened)
    for w in recorder.writes[:k]:
        image[w.position : w.position + BLOCK_SIZE] = w.page
    torn = recorder.writes[k]
    image[torn.position : torn.position + cut] = torn.page[:cut]
    path = src.with_name("torn.log")
    path.write_bytes(image)

    complete_end = recorder.writes[k - 1].next_offset if k else 0
    oldest = torn.oldest_offset
    ring2, have = recovered(path, clock, run)
    assert ring2.next_offset >= torn.next_offset  # no offset handed out is handed out again
    assert all(have[oldest:complete_end]), "lost a complete record"
    got = recovered_markers(ring2)
    for offset, event in run.markers:
        if oldest < offset < complete_end:
            assert (offset, event) in got
    continues_after(ring2, clock, path)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=workloads(),
    where=st.floats(0, 1, exclude_max=True),
    flip=st.integers(1, 255),
    truncate=st.booleans(),
)
def test_garbled_or_truncated_file_keeps_every_record_before_the_damage(
    tmp_path: Path, ops: list[Any], where: float, flip: int, truncate: bool
) -> None:
    """One byte garbled (or the file cut short) anywhere: every record that lies wholly before the
    damaged byte in its block, and every other block, comes back; nothing wrong does."""
    clock = Clock()
    src = fresh(tmp_path) / "src.log"
    with open_ring(src, clock) as ring:
        run = run_workload(ring, clock, ops)
        oldest, end = ring.oldest_offset, ring.next_offset
        blocks = [(b.seq % NBLOCKS, b.first, b.end) for b in ring._blocks]
    image = bytearray(src.read_bytes())
    g = int(where * SIZE)
    position, inside = divmod(g, BLOCK_SIZE)
    page = bytes(image[position * BLOCK_SIZE : (position + 1) * BLOCK_SIZE])
    seq = int.from_bytes(page[12:20], "little")
    safe_end = 0  # end offset of the records wholly before the damaged byte in that block
    if inside >= 24:
        for rec in ringformat.parse_records(page, seq):
            if rec.pos + rec.length <= inside:
                safe_end = max(safe_end, rec.end)
    if truncate:
        del image[g:]
    else:
        image[g] ^= flip
    path = src.with_name("bad.log")
    path.write_bytes(image)

    ring2, have = recovered(path, clock, run)
    assert path.stat().st_size == SIZE
    for pos, first, last in blocks:
        if pos < position or (pos > position and not truncate):
            assert all(have[first:last]), f"lost block {pos} (damage in block {position})"
        elif pos == position:
            assert all(have[first:safe_end]), "lost a record before the damage"
    if any(have):
        assert ring2.next_offset >= end  # no offset is handed out twice
    if ring2.next_offset > ring2.oldest_offset:  # (if nothing is left, offsets restart)
        assert ring2.oldest_offset >= oldest
    continues_after(ring2, clock, path)


# ---------------------------------------------------------------------------- reads


def test_time_queries_return_the_right_slice(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    pieces: list[tuple[float, int, bytes]] = []
    with open_ring(tmp_path / "p.log", clock, size=32 * BLOCK_SIZE) as ring:
        for i in range(300):
            chunk = b"t=%d " % clock.now * (1 + i % 7)
            pieces.append((clock.now, ring.next_offset, chunk))
            ring.append(chunk)
            clock.now += 2.5
            if i % 10 == 0:
                ring.flush()
    with open_ring(tmp_path / "p.log", clock, size=32 * BLOCK_SIZE) as ring:
        for when in [1000.0, 1001.0, 1002.5, 1100.0, 1357.4, 1747.5, 1748.0]:
            expected = next((off for t, off, _ in pieces if t >= when), ring.next_offset)
            assert ring.offset_at(when) == expected
        lo, hi = ring.offset_at(1100.0), ring.offset_at(1200.0)
        got = b"".join(r.data for r in ring.records(lo, hi))
        assert got == b"".join(c for t, _, c in pieces if 1100.0 <= t < 1200.0)
        for rec in ring.records(lo, hi):
            assert 1100.0 <= rec.time < 1200.0
        assert ring.offset_at(0) == 0
        assert ring.offset_at(1e12) == ring.next_offset


def test_times_within_the_resolution_share_a_record(tmp_path: Path) -> None:
    clock = Clock(50.0)
    with open_ring(tmp_path / "p.log", clock) as ring:
        ring.append(b"abc")
        clock.now = 50.4
        ring.append(b"def")
        clock.now = 51.2
        ring.append(b"ghi")
        assert [(r.offset, r.time, r.data) for r in ring.records(0)] == [
            (0, 50.0, b"abcdef"),
            (6, 51.2, b"ghi"),
        ]
        assert ring.offset_at(50.2) == 6  # times are kept at 1 s granularity


def test_markers_interleave_by_offset(tmp_path: Path) -> None:
    clock = Clock(10.0)
    path = tmp_path / "p.log"
    with open_ring(path, clock) as ring:
        ring.add_marker({"event": "online"})
        ring.append(b"0123456789")
        ring.add_marker({"event": "nmi", "user": "alice"})
        ring.flush()
        ring.append(b"abcde")
        ring.add_marker({"event": "break", "user": "bob"})
        ring.add_marker({"event": "sysrq", "keys": "b"})
        ring.append(b"XY")
    expected = [
        LogRecord(0, 10.0, b"", {"event": "online"}),
        LogRecord(0, 10.0, b"0123456789"),
        LogRecord(10, 10.0, b"", {"event": "nmi", "user": "alice"}),
        LogRecord(10, 10.0, b"abcde"),
        LogRecord(15, 10.0, b"", {"event": "break", "user": "bob"}),
        LogRecord(15, 10.0, b"", {"event": "sysrq", "keys": "b"}),
        LogRecord(15, 10.0, b"XY"),
    ]
    with open_ring(path, clock) as ring:
        assert list(ring.records(0)) == expected
        assert list(ring.records(5, 12)) == [
            LogRecord(5, 10.0, b"56789"),
            LogRecord(10, 10.0, b"", {"event": "nmi", "user": "alice"}),
            LogRecord(10, 10.0, b"ab"),
        ]
        assert list(ring.records(15, 15)) == []
        assert ring.read(0, 100) == (0, b"0123456789abcdeXY")


def test_records_survive_appends_between_items(tmp_path: Path) -> None:
    clock = Clock()
    rnd = random.Random(3)
    ref = bytearray()
    with open_ring(tmp_path / "p.log", clock, size=64 * BLOCK_SIZE) as ring:
        for _ in range(20):
            chunk = rnd.randbytes(300)
            ring.append(chunk)
            ref += chunk
        out = bytearray()
        it: Iterator[LogRecord] = ring.records(0)
        for rec in it:
            assert rec.offset == len(out)
            out += rec.data
            if len(ref) < 40_000:
                chunk = rnd.randbytes(rnd.randrange(1, 900))
                ring.append(chunk)
                ref += chunk
                clock.now += 0.3
        assert out == ref


def test_records_survive_wraparound_between_items(tmp_path: Path) -> None:
    """The ring wraps under a suspended reader: it skips what was overwritten, nothing wrong."""
    clock = Clock()
    rnd = random.Random(9)
    ref = bytearray(rnd.randbytes(3 * SIZE))
    with open_ring(tmp_path / "p.log", clock) as ring:
        ring.append(ref[:SIZE])
        fed = SIZE
        previous = -1
        for rec in ring.records(0):
            assert rec.offset >= previous
            assert rec.data == ref[rec.offset : rec.offset + len(rec.data)]
            previous = rec.offset + len(rec.data)
            if fed < len(ref):
                ring.append(ref[fed : fed + 1500])
                fed += 1500
                clock.now += 0.6
        assert previous == ring.next_offset == len(ref)


def test_oldest_clamps_reads(tmp_path: Path) -> None:
    clock = Clock()
    with open_ring(tmp_path / "p.log", clock) as ring:
        for i in range(100):
            ring.append(bytes([i]) * 1000)
        oldest = ring.oldest_offset
        start, data = ring.read(0, 10)
        assert start == oldest > 0
        assert data == bytes([oldest // 1000]) * 10 or len(data) == 10
        assert [r.offset for r in ring.records(0, oldest + 1)] == [oldest]


# ---------------------------------------------------------------------------- disk and I/O


@pytest.mark.parametrize("size", [2 * BLOCK_SIZE, 10 * BLOCK_SIZE + 100, 1 << 20])
def test_disk_use_never_exceeds_size(tmp_path: Path, size: int) -> None:
    clock = Clock()
    path = tmp_path / "p.log"
    with RingLog.open(path, size, clock=clock, durable=False) as ring:
        st = path.stat()
        assert st.st_size <= size and st.st_blocks * 512 <= size + BLOCK_SIZE
        for i in range(3 * size // 500):
            ring.append(b"%d" % i * 100)
            clock.now += 0.01
            if i % 50 == 0:
                ring.add_marker({"event": "x"})
            if i % 7 == 0:
                ring.flush()
    st = path.stat()
    assert st.st_size == size // BLOCK_SIZE * BLOCK_SIZE
    assert st.st_blocks * 512 <= size + BLOCK_SIZE


def test_preallocated_once(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    RingLog.open(path, SIZE).close()
    assert path.stat().st_blocks * 512 >= SIZE  # really allocated, not sparse
    inode = path.stat().st_ino
    RingLog.open(path, SIZE).close()
    assert path.stat().st_ino == inode


class IoCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.on_caller_thread: list[str] = []
        caller = threading.current_thread()
        for name in ("pwrite", "write", "fsync", "fdatasync", "ftruncate"):
            original = getattr(os, name)

            def counted(*args: Any, _name: str = name, _orig: Any = original) -> Any:
                self.calls.append(_name)
                if threading.current_thread() is caller:
                    self.on_caller_thread.append(_name)
                return _orig(*args)

            monkeypatch.setattr(ringlog.os, name, counted)


def test_silent_console_causes_no_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    path = tmp_path / "p.log"
    ring = RingLog.open(path, SIZE, clock=clock)
    ring.append(b"boot\r\n")
    io = IoCounter(monkeypatch)
    ring.flush()
    assert ring.wait_idle(10)
    assert io.calls == ["pwrite", "fdatasync"]
    assert io.on_caller_thread == []  # the writer thread did them
    assert not ring.dirty
    before = (path.read_bytes(), path.stat().st_mtime_ns, ring.stats.writes)
    io.calls.clear()
    for _ in range(720):  # an hour of 5 s flush ticks
        clock.now += 5
        ring.flush()
    assert io.calls == []
    assert (path.read_bytes(), path.stat().st_mtime_ns, ring.stats.writes) == before
    ring.close()
    assert io.calls == ["pwrite", "fdatasync"]  # the clean-close record, once at shutdown


def test_opening_puts_one_page_on_the_card_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open record costs one page write and one fdatasync per open, done before open()
    returns (before any offset is handed out); the file then ends with it."""
    path = tmp_path / "p.log"
    with RingLog.open(path, SIZE) as ring:
        ring.append(b"earlier\r\n")
    io = IoCounter(monkeypatch)
    ring = RingLog.open(path, SIZE)
    assert io.calls == ["pwrite", "fdatasync"] and ring.stats.syncs == 1
    page = path.read_bytes()[:BLOCK_SIZE]
    recs = ringformat.parse_records(page, 0)
    assert [(r.kind, r.offset) for r in recs] == [
        (ringformat.KIND_OPEN, 0),  # the first open
        (ringformat.KIND_DATA, 0),
        (ringformat.KIND_CLOSE, 9),
        (ringformat.KIND_OPEN, 9),  # this one
    ]
    ring.close()


def test_blocks_are_written_only_when_full_until_flush(tmp_path: Path) -> None:
    clock = Clock()
    with open_ring(tmp_path / "p.log", clock, size=64 * BLOCK_SIZE) as ring:
        for _ in range(300):
            ring.append(b"x" * 100)
            clock.now += 0.01
        assert ring.wait_idle(10)
        full = (25 + 30_000) // (BLOCK_SIZE - 48)  # (the first block holds the open record)
        assert ring.stats.writes == 1 + full  # the open record's page, then the full blocks
        assert ring.dirty
        ring.flush()
        assert ring.wait_idle(10)
        assert ring.stats.writes == 1 + full + 1
        assert not ring.dirty


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll `predicate` (the writer thread works on its own) until true, bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_failing_disk_loses_nothing_it_recovers_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Page writes fail for a while: offsets stay in step, reads still see every byte (the
    failed pages are kept), the fault is logged once, the pages are written again once the disk
    works, and the file then holds everything."""
    monkeypatch.setattr(ringwriter, "RETRY_INTERVAL", 0.01)
    clock = Clock()
    path = tmp_path / "p.log"
    rnd = random.Random(2)
    ref = rnd.randbytes(40_000)
    ring = open_ring(path, clock, size=32 * BLOCK_SIZE)
    ring.append(ref[:10_000])
    assert ring.wait_idle(10)
    original = ring._writer.write_page

    def broken(position: int, page: bytes | memoryview) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ring._writer, "write_page", broken)
    ring.append(ref[10_000:20_000])  # two blocks fill and fail to be written
    ring.flush()  # the partial block's write fails too, and the sync is not reached
    assert ring.next_offset == 20_000
    wait_until(lambda: ring.stats.errors >= 4)  # ...and they are being retried
    assert held(ring) == (0, ref[:20_000])  # kept in memory meanwhile
    assert not ring.health.ok and "Input/output error" in str(ring.health.error)
    assert caplog.text.count("ring log") == 1  # reported once
    monkeypatch.setattr(ring._writer, "write_page", original)
    # the writer thread marks the health OK, then logs the recovery: wait for both
    wait_until(lambda: ring.health.ok and "writes work again" in caplog.text)
    assert ring._writer.retrying == 0 and ring.stats.retried == 3
    ring.append(ref[20_000:])
    ring.close()
    ring2, have = recovered(path, clock, Run(ref, []), size=32 * BLOCK_SIZE)
    assert ring2.next_offset == len(ref) and all(have)
    ring2.close()


def test_a_disk_failing_too_long_loses_the_oldest_kept_pages_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond RETRY_PAGES failed pages the oldest is dropped: a hole in reads (which a reader
    is told about as a gap), offsets in step, everything else kept."""
    monkeypatch.setattr(ringwriter, "RETRY_PAGES", 2)
    monkeypatch.setattr(ringwriter, "RETRY_INTERVAL", 0.01)
    clock = Clock()
    path = tmp_path / "p.log"
    ref = random.Random(3).randbytes(30_000)
    ring = open_ring(path, clock, size=32 * BLOCK_SIZE)
    original = ring._writer.write_page

    def broken(position: int, page: bytes | memoryview) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ring._writer, "write_page", broken)
    ring.append(ref[:20_000])  # four full blocks: two kept, the two oldest dropped
    assert ring.wait_idle(10)
    assert ring.stats.lost_pages == 2 and ring._writer.retrying == 2
    start, data = ring.read(0, 100)
    assert start > 8000 and data == ref[start : start + 100]  # the first blocks: a hole
    monkeypatch.setattr(ring._writer, "write_page", original)
    wait_until(lambda: ring.health.ok)
    ring.append(ref[20_000:])
    ring.close()
    ring2, have = recovered(path, clock, Run(ref, []), size=32 * BLOCK_SIZE)
    assert ring2.next_offset == len(ref)
    assert not any(have[:8000]) and all(have[start:])
    ring2.close()


def test_resize_keeps_newest_and_offsets(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "p.log"
    rnd = random.Random(5)
    ref = rnd.randbytes(50_000)
    with RingLog.open(path, 16 * BLOCK_SIZE, clock=clock, durable=False) as ring:
        for i in range(0, len(ref), 1000):
            ring.append(ref[i : i + 1000])
            clock.now += 1.5
        ring.add_marker({"event": "offline"})
    with RingLog.open(path, 4 * BLOCK_SIZE, clock=clock, durable=False) as ring:
        assert ring.next_offset == len(ref)
        start, data = held(ring)
        assert data == ref[start:] and len(data) > 2 * BLOCK_SIZE
        assert list(ring.records(len(ref)))[-1].marker == {"event": "offline"}
    assert path.stat().st_size == 4 * BLOCK_SIZE
    assert not (tmp_path / "p.log.resize").exists()


def test_one_writer_only(tmp_path: Path) -> None:
    with open_ring(tmp_path / "p.log", Clock()), pytest.raises(OSError, match="one writer"):
        open_ring(tmp_path / "p.log", Clock())
    open_ring(tmp_path / "p.log", Clock()).close()  # free again once closed


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="minimum"):
        RingLog.open(tmp_path / "p.log", BLOCK_SIZE)
    with (
        RingLog.open(tmp_path / "q.log", SIZE, durable=False) as ring,
        pytest.raises(ValueError, match="limit"),
    ):
        ring.add_marker({"event": "x", "blob": "y" * 2000})
    with pytest.raises(ValueError, match="closed"):
        ring.append(b"late")


# ---------------------------------------------------------------------------- writer thread


def test_reads_see_pages_still_queued_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages handed to the writer thread but not yet in the file read exactly as if they were."""
    clock = Clock()
    rnd = random.Random(11)
    path = tmp_path / "p.log"
    ring = open_ring(path, clock, size=64 * BLOCK_SIZE)
    gate = Gate(ring, monkeypatch)
    ref = bytearray()
    for i in range(120):
        chunk = rnd.randbytes(rnd.randrange(1, 1500))
        ring.append(chunk)
        ref += chunk
        clock.now += rnd.choice([0.0, 0.5, 2.0])
        if i % 25 == 0:
            ring.add_marker({"event": "x", "i": i})
            ring.flush()

    def answers() -> tuple[Any, ...]:
        times = [clock.now - 100 + k * 7.5 for k in range(20)]
        return held(ring), list(ring.records(0)), [ring.offset_at(t) for t in times]

    assert ring.stats.writes == 1 and ring._writer._queued > 1  # only the open record is on disk
    queued = answers()
    assert queued[0] == (0, bytes(ref))
    gate.open.set()
    assert ring.wait_idle(10)
    assert ring.stats.writes > 1 and not ring._writer._inflight
    assert answers() == queued
    ring.close()
    with open_ring(path, clock, size=64 * BLOCK_SIZE) as ring:
        assert held(ring) == (0, bytes(ref))
        assert [r for r in ring.records(0) if r.marker] == [r for r in queued[1] if r.marker]


def test_a_full_writer_queue_makes_the_caller_wait_and_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    rnd = random.Random(12)
    path = tmp_path / "p.log"
    size = 2 * ringlog.QUEUE_PAGES * BLOCK_SIZE
    ring = open_ring(path, clock, size=size)
    gate = Gate(ring, monkeypatch)
    ref = rnd.randbytes((ringlog.QUEUE_PAGES + 20) * BLOCK_SIZE)
    feeder = threading.Thread(
        target=lambda: [ring.append(ref[i : i + 1000]) for i in range(0, len(ref), 1000)]
    )
    feeder.start()
    deadline = time.monotonic() + 10
    while ring._writer._queued < ringlog.QUEUE_PAGES and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert feeder.is_alive(), "the caller went on past a full queue"
    assert ring._writer._queued == ringlog.QUEUE_PAGES  # bounded: no page beyond the bound
    gate.open.set()
    feeder.join(10)
    assert not feeder.is_alive()
    assert ring.stats.stalls >= 1 and ring.stats.stall_seconds > 0.1
    assert ring.stats.queue_peak == ringlog.QUEUE_PAGES
    ring.close()
    assert ring.stats.errors == 0
    with open_ring(path, clock, size=size) as ring:
        assert held(ring) == (0, ref)


def test_kill_9_with_a_full_writer_queue_reuses_no_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies while the device is a whole queue behind: what reached the file comes
    back, nothing wrong does, and CRASH_GAP covers every offset handed out for the queued data."""
    clock = Clock()
    rnd = random.Random(13)
    path = tmp_path / "p.log"
    size = 2 * ringlog.QUEUE_PAGES * BLOCK_SIZE
    ref = bytearray(rnd.randbytes(50_000))
    ring = open_ring(path, clock, size=size)
    ring.append(ref)
    ring.flush()
    assert ring.wait_idle(10)
    on_disk = len(ref)
    gate = Gate(ring, monkeypatch)
    while ring._writer._queued < ringlog.QUEUE_PAGES:  # one append hands over at most one page
        chunk = rnd.randbytes(1000)
        ring.append(chunk)
        ref += chunk
        clock.now += 0.3
    handed_out = ring.next_offset
    with ring._writer._cv:  # kill -9: the write under way completes, the rest is lost
        ring._writer._stopping = ring._writer._discard = True
    gate.open.set()
    crash(ring, drained=False)
    ring2, have = recovered(path, clock, Run(bytes(ref), []), size=size)
    assert ring2.next_offset >= handed_out, "an offset handed out before was reused"
    assert all(have[:on_disk])
    assert not all(have[on_disk:])
    ring2.close()


def test_a_sync_error_is_reported_and_retried_until_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ringwriter, "RETRY_INTERVAL", 0.01)
    clock = Clock()
    ring = RingLog.open(tmp_path / "p.log", SIZE, clock=clock)
    real = os.fdatasync
    failing = True

    def fdatasync(fd: int) -> None:
        if failing:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(ringwriter.os, "fdatasync", fdatasync)
    ring.append(b"one")
    ring.flush()  # does not wait for the device, nor raise its error
    wait_until(lambda: ring.stats.errors >= 3)  # retried
    assert ring.health.status()["error"] == "fdatasync failed: No space left on device"
    ring.append(b"two")
    ring.flush()
    assert caplog.text.count("fdatasync failed") == 1
    failing = False
    wait_until(lambda: ring.health.ok)
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        ring.append(b"late")
    with RingLog.open(tmp_path / "p.log", SIZE, clock=clock) as ring:
        assert held(ring) == (0, b"onetwo")


def test_reads_stay_coherent_while_the_writer_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow, jittery device under a ring that wraps many times: every answer at every moment
    is what a synchronous ring would give, and no page is written on the caller's thread."""
    clock = Clock()
    rnd = random.Random(14)
    jitter = random.Random(15)
    path = tmp_path / "p.log"
    ring = open_ring(path, clock, size=16 * BLOCK_SIZE)
    original = ring._writer.write_page
    caller = threading.current_thread()

    def slow(position: int, page: bytes | memoryview) -> None:
        assert threading.current_thread() is not caller
        time.sleep(jitter.random() * 0.0005)
        original(position, page)

    monkeypatch.setattr(ring._writer, "write_page", slow)
    ref = bytearray()
    for i in range(600):
        chunk = rnd.randbytes(rnd.randrange(1, 1200))
        ring.append(chunk)
        ref += chunk
        clock.now += rnd.choice([0.0, 0.3, 1.5])
        if rnd.random() < 0.05:
            ring.flush()
        if i % 5 == 0:
            start, data = held(ring)
            assert start == ring.oldest_offset and data == ref[start:]
            assert b"".join(r.data for r in ring.records(start)) == data
            at = rnd.randrange(start, len(ref))
            assert ring.read(at, 3000) == (at, bytes(ref[at : at + 3000]))
    ring.close()
    assert ring.stats.writes > 3 * 16 and ring.stats.errors == 0  # wrapped several times
    with open_ring(path, clock, size=16 * BLOCK_SIZE) as ring:
        start, data = held(ring)
        assert data == ref[start:] and start < len(ref) - 14 * (BLOCK_SIZE - 48)


def test_the_newest_pages_kept_are_read_without_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keep` makes the ring the port's in-memory history: its newest pages (the images built
    for the writer, also after they are written) are read from memory, older ones from the file."""
    ring = open_ring(tmp_path / "r.log", Clock(), size=64 * BLOCK_SIZE)
    ring.keep(4 * BLOCK_SIZE)
    data = random.Random(7).randbytes(20 * BLOCK_SIZE)
    for i in range(0, len(data), 1000):
        ring.append(data[i : i + 1000])
    ring.flush()
    assert ring.wait_idle(10)
    preads: list[int] = []
    real = ringlog.ringread.read_block
    monkeypatch.setattr(ringlog.ringread, "read_block", lambda *a: preads.append(a[2]) or real(*a))
    tail = ring.start_of_last(3 * BLOCK_SIZE)
    assert tail is not None
    assert ring.read(tail, 1 << 20) == (tail, data[tail:])
    assert preads == []
    assert ring.read(0, 1 << 30) == (0, data)  # older pages: from the file
    assert preads
    ring.close()


def test_full_pages_wait_to_be_written_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow console's full pages are held (readable meanwhile) and written as one pwrite with
    the flush that follows, instead of a write and a writer wake-up each."""
    monkeypatch.setattr(ringwriter, "HOLD", 60.0)
    ring = RingLog.open(tmp_path / "r.log", 64 * BLOCK_SIZE, clock=Clock(), durable=True)
    assert (ring.stats.write_calls, ring.stats.syncs) == (1, 1)  # the open record
    data = random.Random(3).randbytes(2 * BLOCK_SIZE + 500)
    for i in range(0, len(data), 300):
        ring.append(data[i : i + 300])
    assert held(ring) == (0, data)
    assert ring.stats.write_calls == 1  # two full pages held
    ring.flush()
    assert ring.wait_idle(10)
    assert ring.stats.write_calls == 2 and ring.stats.writes == 4 and ring.stats.syncs == 2
    ring.close()
    with RingLog.open(tmp_path / "r.log", 64 * BLOCK_SIZE, clock=Clock()) as again:
        assert held(again) == (0, data)
