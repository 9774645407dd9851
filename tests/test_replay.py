"""The anti-replay window over transfer nonces (peercrypt.core.replay)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.replay import MAX_LANES, WINDOW, ReplayWindow


def nonce(lane: int, counter: int) -> bytes:
    return struct.pack(">IQ", lane, counter)


def test_each_nonce_is_accepted_once() -> None:
    w = ReplayWindow()
    assert w.accept(nonce(0, 1)) and w.accept(nonce(0, 3)) and w.accept(nonce(1, 1))
    assert not w.fresh(nonce(0, 1)) and not w.accept(nonce(0, 3)) and not w.accept(nonce(1, 1))
    assert w.accept(nonce(0, 2))  # late but within the window
    assert not w.accept(nonce(0, 2))


def test_too_old_bad_lane_and_bad_length_are_refused() -> None:
    w = ReplayWindow()
    assert w.accept(nonce(0, WINDOW + 10))
    assert not w.fresh(nonce(0, 10))  # more than WINDOW behind
    assert w.fresh(nonce(0, 11))
    assert not w.fresh(nonce(MAX_LANES, 1))
    assert not w.fresh(b"short")


def test_fresh_does_not_record() -> None:
    w = ReplayWindow()
    assert w.fresh(nonce(2, 5)) and w.fresh(nonce(2, 5))
    assert w.accept(nonce(2, 5))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3 * WINDOW)), max_size=200))
def test_matches_a_set_model_within_the_window(frames: list[tuple[int, int]]) -> None:
    w = ReplayWindow()
    seen: set[tuple[int, int]] = set()
    highest: dict[int, int] = {}
    for lane, counter in frames:
        too_old = lane in highest and highest[lane] - counter >= WINDOW
        expected = (lane, counter) not in seen and not too_old
        assert w.accept(nonce(lane, counter)) is expected
        if expected:
            seen.add((lane, counter))
            highest[lane] = max(highest.get(lane, counter), counter)
