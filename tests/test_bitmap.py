"""Tests for peercrypt.core.bitmap: the chunk bitmap and the SACK range wire form."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap, flatten, pairs


def model_ranges(held: set[int], start: int = 0) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(x for x in held if x >= start):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def model_cumulative(held: set[int], total: int) -> int:
    i = 0
    while i < total and i in held:
        i += 1
    return i


@st.composite
def bitmap_ops(draw: st.DrawFn) -> tuple[int, list[int]]:
    total = draw(st.integers(0, 150))
    if total == 0:
        return 0, []
    adds = draw(st.lists(st.integers(0, total - 1), max_size=300))
    return total, adds


@settings(max_examples=200, deadline=None)
@given(bitmap_ops())
def test_matches_a_set_model(case: tuple[int, list[int]]) -> None:
    total, adds = case
    bm = ChunkBitmap(total)
    held: set[int] = set()
    for index in adds:
        assert bm.add(index) is (index not in held)
        held.add(index)
        assert bm.count == len(held)
        assert bm.cumulative == model_cumulative(held, total)
    assert all((i in bm) is (i in held) for i in range(-2, total + 3))
    assert bm.complete is (len(held) == total)
    assert list(bm.missing()) == [i for i in range(total) if i not in held]
    assert bm.ranges() == model_ranges(held)


@settings(max_examples=200, deadline=None)
@given(bitmap_ops(), st.data())
def test_ranges_from_start_with_limit(case: tuple[int, list[int]], data: st.DataObject) -> None:
    total, adds = case
    bm = ChunkBitmap(total)
    for index in adds:
        bm.add(index)
    held = set(adds)
    start = data.draw(st.integers(0, total + 2))
    limit = data.draw(st.none() | st.integers(1, 70))
    expected = model_ranges(held, start)
    if limit is not None:
        expected = expected[:limit]
    assert bm.ranges(start, limit) == expected
    # The receiver's use: everything above the cumulative index, bounded.
    above = bm.ranges(bm.cumulative, limit=64)
    assert above == model_ranges(held, bm.cumulative)[:64]
    assert all(s < e for s, e in above)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(above))


def test_ranges_limit_zero_returns_nothing() -> None:
    bm = ChunkBitmap(10)
    for i in range(4):
        bm.add(i)
    assert bm.ranges(0, limit=0) == []


def test_ranges_hand_examples() -> None:
    bm = ChunkBitmap(20)
    for i in (0, 1, 2, 5, 6, 9, 19):
        bm.add(i)
    assert bm.cumulative == 3
    assert bm.ranges() == [(0, 3), (5, 7), (9, 10), (19, 20)]
    assert bm.ranges(1) == [(1, 3), (5, 7), (9, 10), (19, 20)]
    assert bm.ranges(3) == [(5, 7), (9, 10), (19, 20)]
    assert bm.ranges(6) == [(6, 7), (9, 10), (19, 20)]
    assert bm.ranges(3, limit=2) == [(5, 7), (9, 10)]
    assert bm.ranges(20) == []


def test_add_out_of_range_raises() -> None:
    bm = ChunkBitmap(8)
    with pytest.raises(IndexError):
        bm.add(8)
    with pytest.raises(IndexError):
        bm.add(-1)
    assert bm.count == 0
    with pytest.raises(ValueError):
        ChunkBitmap(-1)


def test_empty_bitmap_is_complete() -> None:
    bm = ChunkBitmap(0)
    assert bm.complete
    assert bm.cumulative == 0
    assert bm.ranges() == []
    assert bm.to_bytes() == b""


def test_add_ranges_clips_and_reports_new() -> None:
    bm = ChunkBitmap(10)
    assert bm.add_ranges([(2, 4)]) == 2
    assert bm.add_ranges([(-5, 1), (3, 6), (8, 100)]) == 5
    assert sorted(i for i in range(10) if i in bm) == [0, 2, 3, 4, 5, 8, 9]
    assert bm.add_ranges([(5, 2)]) == 0
    assert bm.cumulative == 1  # chunk 1 is still missing


@settings(max_examples=200, deadline=None)
@given(bitmap_ops())
def test_bytes_round_trip(case: tuple[int, list[int]]) -> None:
    total, adds = case
    bm = ChunkBitmap(total)
    for index in adds:
        bm.add(index)
    data = bm.to_bytes()
    assert len(data) == (total + 7) // 8
    back = ChunkBitmap.from_bytes(total, data)
    assert back.to_bytes() == data
    assert back.count == bm.count
    assert back.cumulative == bm.cumulative
    assert back.ranges() == bm.ranges()


def test_from_bytes_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        ChunkBitmap.from_bytes(9, b"\xff")
    with pytest.raises(ValueError):
        ChunkBitmap.from_bytes(8, b"\xff\x00")


def test_from_bytes_ignores_padding_bits() -> None:
    back = ChunkBitmap.from_bytes(3, b"\xff")
    assert back.count == 3
    assert back.complete


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**20))))
def test_flatten_pairs_round_trip(spec: list[tuple[int, int]]) -> None:
    ranges = [(start, start + length) for start, length in spec]
    flat = flatten(ranges)
    assert len(flat) == 2 * len(ranges)
    assert pairs(flat) == ranges


@pytest.mark.parametrize(
    "flat",
    [[1], [0, 1, 2], [5, 4], [0, 1, 9, 3], [-1, 2], [-3, -1]],
)
def test_pairs_rejects_odd_reversed_or_negative(flat: list[int]) -> None:
    with pytest.raises(ValueError):
        pairs(flat)


def test_pairs_accepts_empty_ranges() -> None:
    assert pairs([]) == []
    assert pairs([3, 3]) == [(3, 3)]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 200).flatmap(
        lambda total: st.tuples(
            st.just(total),
            st.lists(st.tuples(st.integers(-3, total + 3), st.integers(-3, total + 3)), max_size=8),
            st.lists(st.integers(0, max(0, total - 1)), max_size=20),
        )
    )
)
def test_add_range_matches_a_set_model(case: tuple[int, list[tuple[int, int]], list[int]]) -> None:
    total, ranges, singles = case
    bm = ChunkBitmap(total)
    held: set[int] = set()
    for index in singles if total else []:
        bm.add(index)
        held.add(index)
    for start, end in ranges:
        new = {i for i in range(max(0, start), min(end, total))} - held
        assert bm.add_range(start, end) == len(new)
        held |= new
        assert bm.count == len(held)
        assert bm.cumulative == model_cumulative(held, total)
        assert bm.ranges() == model_ranges(held)
    back = ChunkBitmap.from_bytes(total, bm.to_bytes())
    assert (back.count, back.cumulative, back.ranges()) == (bm.count, bm.cumulative, bm.ranges())
    assert list(back.missing()) == [i for i in range(total) if i not in held]


def _python_lines(work: Callable[[], object]) -> int:
    """How many lines of peercrypt.core.bitmap the interpreter runs for ``work``."""
    import peercrypt.core.bitmap as module

    lines = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Callable[..., object] | None:
        nonlocal lines
        if frame.f_code.co_filename != module.__file__:
            return None
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return lines


def _sparse(total: int) -> ChunkBitmap:
    """Chunk 0 missing, then 70 held ranges spread over the whole file."""
    bm = ChunkBitmap(total)
    step = total // 71
    for k in range(1, 71):
        bm.add_range(k * step, k * step + 3)
    return bm


def test_sparse_ack_costs_ranges_not_chunks() -> None:
    # The same shape of bitmap at 1,000 and 20 million chunks: building the
    # ack (cumulative + 64 ranges) runs a bounded number of Python lines per
    # range (block compares that double, then halve: log of the gap), never
    # per chunk; the C-level compares are what grows with the file.
    small, large = _sparse(1000), _sparse(20_000_000)
    ack_small = _python_lines(lambda: small.ranges(small.cumulative, limit=MAX_RANGES))
    ack_large = _python_lines(lambda: large.ranges(large.cumulative, limit=MAX_RANGES))
    assert ack_large < 200 * (MAX_RANGES + 1)
    assert ack_large < 10 * ack_small  # 20,000 times the chunks
    sack = large.ranges(large.cumulative, limit=MAX_RANGES)
    assert len(sack) == MAX_RANGES and sack[-1][1] < 20_000_000
    # Re-applying that ack: a bounded number of lines per range (a range's
    # unaligned head and tail bits), none per chunk.
    again = _python_lines(lambda: large.add_ranges([(0, large.cumulative), *sack]))
    assert again < 100 * (MAX_RANGES + 1)


def test_cumulative_ack_is_not_quadratic() -> None:
    # A sender applying ever larger cumulative acks: each costs the same
    # Python work whether it covers 10 or 10 million chunks.
    bm = ChunkBitmap(20_000_000)
    first = _python_lines(lambda: bm.add_range(0, 10))
    second = _python_lines(lambda: bm.add_range(0, 10_000_000))
    third = _python_lines(lambda: bm.add_range(0, 10_000_008))
    assert bm.cumulative == 10_000_008 and bm.count == 10_000_008
    assert max(first, second, third) < 500  # ~log of the chunks covered, not the chunks


@settings(max_examples=200, deadline=None)
@given(bitmap_ops(), st.data())
def test_discard_matches_a_set_model(case: tuple[int, list[int]], data: st.DataObject) -> None:
    """Adds and discards in any order: membership, count, cumulative,
    highest and ranges stay those of a set."""
    total, adds = case
    bm = ChunkBitmap(total)
    held: set[int] = set()
    for index in adds:
        if data.draw(st.booleans()):
            assert bm.discard(index) is (index in held)
            held.discard(index)
        else:
            bm.add(index)
            held.add(index)
        assert bm.count == len(held)
        assert bm.cumulative == model_cumulative(held, total)
        assert bm.highest == max(held, default=-1)
    assert bm.ranges() == model_ranges(held)
    assert list(bm.missing()) == [i for i in range(total) if i not in held]
    assert [bm.next_held(i) for i in range(total)] == [
        min((h for h in held if h >= i), default=total) for i in range(total)
    ]
