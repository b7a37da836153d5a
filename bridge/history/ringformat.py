"""On-disk format of the ring log (bridge.history.ringlog): block and record layout, pack/parse.

All integers little-endian. The file is ``nblocks = size // 4096`` blocks of 4096 bytes, allocated
once (zeros written) when the file is created. Block number ``seq`` (a counter that only grows)
lives at file position ``(seq % nblocks) * 4096``; the newest block is the valid block with the
highest ``seq``.

Block header, 24 bytes, written once per block life and identical on every rewrite::

    magic   4s  b"SBRL"
    version B   1
    pad     3x
    nblocks I   ring geometry the block was written with
    seq     Q   block sequence number
    crc     I   zlib.crc32 of the 20 bytes above

Then records, back to back; a kind byte of 0 (the zero padding) ends the block. Record header,
24 bytes, followed by ``length`` payload bytes::

    kind    B   1 = console data, 2 = event marker (payload: a JSON object, UTF-8),
                3 = clean close (payload: one zero byte; written by close()),
                4 = open (payload: one zero byte; written and synced by open(), before it
                hands out an offset: the writer that follows has the log open from there)
    pad     x
    length  H   payload length (>= 1)
    offset  Q   console offset of the first payload byte (a marker: the offset it sits at)
    time    d   wall-clock time.time() when the first byte was received
    crc     I   zlib.crc32 of (block seq as 8 bytes) + the 20 header bytes above + payload

Records never span blocks: a chunk that does not fit is split, the rest starts the next block
with its own offset and time. A record is sealed (its header written) when its block image is
handed to the disk, so rewriting the current block on flush only ever adds bytes after what the
previous write held: a write torn at any byte cannot damage records that were already on disk.
Mixing the block ``seq`` into every record checksum means stale records from an older lap that
survive a torn write can never be mistaken for current ones.

A ring was closed cleanly when its newest record is a close record; an open record after it says
a writer had the ring open since, so a crash that left no page of that writer on disk is still
seen as one (bridge.history.ringscan). Rings written before kind 4 existed read as before; a
version that predates it stops reading a block at an open record (the rest of that block).
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from typing import Any

try:  # ISA-L's CRC-32: the same checksum as zlib's, 8x faster on x86-64 and aarch64 (#19)
    from isal.isal_zlib import crc32
except ImportError:  # no wheel for the machine (32-bit Raspberry Pi OS): zlib's
    from zlib import crc32

BLOCK_SIZE = 4096
MAGIC = b"SBRL"
VERSION = 1
MAX_MARKER_BYTES = 1024

BLOCK_HDR = struct.Struct("<4sB3xIQI")
REC_HDR = struct.Struct("<BxHQdI")
SEQ = struct.Struct("<Q")
CRC = struct.Struct("<I")
_HEAD = struct.Struct(BLOCK_HDR.format[:-1])  # the block header up to its crc
_REC = struct.Struct(REC_HDR.format[:-1])  # a record header up to its crc
BH = BLOCK_HDR.size
RH = REC_HDR.size
FULL = BLOCK_SIZE - BH - RH  # payload of a data record that fills a block alone
KIND_DATA = 1
KIND_MARKER = 2
KIND_CLOSE = 3
KIND_OPEN = 4

Page = bytes | bytearray | memoryview | mmap.mmap


@dataclass(frozen=True)
class LogRecord:
    """One record as recovered or read: console bytes, or an event marker at an offset."""

    offset: int
    time: float
    data: bytes
    marker: dict[str, Any] | None = None


@dataclass(slots=True)
class Rec:
    """Index entry of one record within its block."""

    kind: int
    offset: int
    time: float
    pos: int  # payload position within the block
    length: int

    @property
    def end(self) -> int:
        return self.offset + (self.length if self.kind == KIND_DATA else 0)


def block_header(nblocks: int, seq: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, nblocks, seq)
    return head + CRC.pack(crc32(head))


def parse_header(page: Page) -> tuple[int, int] | None:
    """(nblocks, seq) of a block with a valid header, else None."""
    magic, version, nblocks, seq, crc = BLOCK_HDR.unpack_from(page, 0)
    if magic != MAGIC or version != VERSION or crc32(page[: BH - 4]) != crc:
        return None
    return nblocks, seq


def parse_records(page: Page, seq: int) -> list[Rec]:
    """The valid records of a block, in order; parsing stops at the first invalid one."""
    recs: list[Rec] = []
    seq_crc = crc32(SEQ.pack(seq))
    pos = BH
    end = -1
    while pos + RH < BLOCK_SIZE:
        kind, length, offset, when, crc = REC_HDR.unpack_from(page, pos)
        if kind not in (KIND_DATA, KIND_MARKER, KIND_CLOSE, KIND_OPEN) or length == 0:
            break
        p = pos + RH
        if p + length > BLOCK_SIZE or offset < end or not math.isfinite(when):
            break
        if crc32(page[p : p + length], crc32(page[pos : p - 4], seq_crc)) != crc:
            break
        rec = Rec(kind, offset, when, p, length)
        recs.append(rec)
        end = rec.end
        pos = p + length
    return recs


def seal_record(page: bytearray | mmap.mmap, seq: int, rec: Rec) -> None:
    """Write the header (with its checksum) of ``rec``, whose payload is already in ``page``."""
    at = rec.pos - RH
    REC_HDR.pack_into(page, at, rec.kind, rec.length, rec.offset, rec.time, 0)
    crc = crc32(SEQ.pack(seq))
    crc = crc32(page[at : rec.pos - 4], crc)
    crc = crc32(page[rec.pos : rec.pos + rec.length], crc)
    CRC.pack_into(page, rec.pos - 4, crc)


_SEQ_REC = struct.Struct("<Q" + _REC.format[1:])  # what a record's crc covers before its payload
_HEAD_CRC_REC = struct.Struct("<I" + REC_HDR.format[1:])  # a block header's crc, a record header


def full_blocks(nblocks: int, seq: int, offset: int, when: float, payload: Page) -> bytes:
    """The image of blocks ``seq``, ``seq + 1``, ... (consecutive pages) each holding one data
    record of ``FULL`` bytes of ``payload`` (a whole number of them): the bytes block_header()
    and seal_record() make of them, built in one go (no zero-fill, no page to patch: a console
    writing fast fills most blocks so)."""
    head_of, seq_rec, tail_of = _HEAD.pack, _SEQ_REC.pack, _HEAD_CRC_REC.pack
    parts: list[bytes | memoryview] = []
    add = parts.append
    view = memoryview(payload)
    for at in range(0, len(view), FULL):
        head = head_of(MAGIC, VERSION, nblocks, seq)
        body = view[at : at + FULL]
        crc = crc32(body, crc32(seq_rec(seq, KIND_DATA, FULL, offset, when)))
        add(head)
        add(tail_of(crc32(head), KIND_DATA, FULL, offset, when, crc))
        add(body)
        seq += 1
        offset += FULL
    return b"".join(parts)


def marker(page: Page, rec: Rec) -> dict[str, Any]:
    value = json.loads(bytes(page[rec.pos : rec.pos + rec.length]))
    return value if isinstance(value, dict) else {"event": value}
