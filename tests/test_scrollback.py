"""The in-memory scrollback ring keeps exactly the newest bytes, addressed by offset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.console.scrollback import Scrollback


@given(
    capacity=st.integers(1, 64),
    base=st.integers(0, 1000),
    chunks=st.lists(st.binary(max_size=100), max_size=20),
    offset=st.integers(0, 3000),
    limit=st.integers(0, 200),
)
def test_reads_match_the_stream(
    capacity: int, base: int, chunks: list[bytes], offset: int, limit: int
) -> None:
    sb = Scrollback(capacity, base)
    stream = b""
    for c in chunks:
        sb.append(c)
        stream += c
    assert sb.end == base + len(stream)
    assert sb.start == base + max(0, len(stream) - capacity)
    start, data = sb.read(offset, limit)
    assert start == max(offset, sb.start)
    assert data == stream[start - base : start - base + limit]
