"""Tests for peercrypt.core.bitmap: the chunk bitmap and the SACK range wire form."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.bitmap import ChunkBitmap, flatten, pairs


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
    assert bm.add_ranges([(2, 4)]) == [2, 3]
    assert bm.add_ranges([(-5, 1), (3, 6), (8, 100)]) == [0, 4, 5, 8, 9]
    assert bm.add_ranges([(5, 2)]) == []
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
