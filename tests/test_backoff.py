"""Tests for peercrypt.core.backoff: full-jitter bounds, retry budget, determinism."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.backoff import Backoff

PROPS = settings(max_examples=80, deadline=None)


class ConstRandom(random.Random):
    """random() always returns ``value``: uniform(0, c) == c * value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def drain(b: Backoff, limit: int = 10_000) -> list[float]:
    out: list[float] = []
    for _ in range(limit):
        d = b.next_delay()
        if d is None:
            return out
        out.append(d)
    raise AssertionError("next_delay never returned None")


def test_ceilings_grow_exponentially_up_to_cap() -> None:
    b = Backoff(1.0, max_delay=10.0, max_retries=6, rng=ConstRandom(1.0))
    assert drain(b) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.next_delay() is None
    assert (b.attempts, b.remaining) == (6, 0)


def test_full_jitter_scales_ceiling() -> None:
    b = Backoff(0.5, 3.0, max_delay=100.0, max_retries=4, rng=ConstRandom(0.25))
    assert drain(b) == [0.125, 0.375, 1.125, 3.375]
    assert drain(Backoff(1.0, max_delay=5.0, max_retries=3, rng=ConstRandom(0.0))) == [0.0] * 3


def test_reset_restores_budget_and_ceiling() -> None:
    b = Backoff(1.0, max_delay=10.0, max_retries=3, rng=ConstRandom(1.0))
    assert drain(b) == [1.0, 2.0, 4.0]
    b.reset()
    assert (b.attempts, b.remaining, b.ceiling()) == (0, 3, 1.0)
    assert b.next_delay() == 1.0


def test_zero_retries() -> None:
    b = Backoff(1.0, max_delay=1.0, max_retries=0, rng=random.Random(0))
    assert b.next_delay() is None


def test_deterministic_given_rng() -> None:
    def seq(seed: int) -> list[float]:
        return drain(Backoff(0.1, max_delay=30.0, max_retries=12, rng=random.Random(seed)))

    assert seq(42) == seq(42)
    assert seq(42) != seq(43)
    assert len(seq(42)) == 12


def test_no_overflow_with_many_retries() -> None:
    b = Backoff(1.0, 10.0, max_delay=60.0, max_retries=5000, rng=random.Random(1))
    delays = drain(b)
    assert len(delays) == 5000
    assert max(delays) <= 60.0
    assert b.ceiling() == 60.0


@pytest.mark.parametrize(
    ("initial", "factor", "max_delay", "max_retries"),
    [(0.0, 2.0, 1.0, 1), (2.0, 2.0, 1.0, 1), (1.0, 0.5, 2.0, 1), (1.0, 2.0, 2.0, -1)],
)
def test_invalid_parameters(
    initial: float, factor: float, max_delay: float, max_retries: int
) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, factor, max_delay=max_delay, max_retries=max_retries, rng=random.Random())


@PROPS
@given(
    initial=st.floats(0.001, 5.0),
    factor=st.floats(1.0, 4.0),
    cap_mult=st.floats(1.0, 100.0),
    max_retries=st.integers(0, 40),
    seed=st.integers(0, 2**32),
)
def test_delays_within_bounds_and_count_bounded(
    initial: float, factor: float, cap_mult: float, max_retries: int, seed: int
) -> None:
    cap = initial * cap_mult
    b = Backoff(initial, factor, max_delay=cap, max_retries=max_retries, rng=random.Random(seed))
    ceiling = initial
    delays = []
    for _ in range(max_retries):
        assert b.ceiling() == pytest.approx(ceiling)
        d = b.next_delay()
        assert d is not None
        assert 0.0 <= d <= min(cap, ceiling)
        delays.append(d)
        ceiling = min(cap, ceiling * factor)
    assert b.next_delay() is None
    assert b.next_delay() is None
    assert len(delays) == max_retries


def test_without_a_generator_each_delay_is_the_ceiling_and_never_runs_out() -> None:
    # The supervisor's restart pauses: 0.1 s doubling up to 10 s, forever.
    b = Backoff(0.1, max_delay=10.0, max_retries=None, rng=None)
    delays = [b.next_delay() for _ in range(12)]
    assert delays == [min(10.0, 0.1 * 2**n) for n in range(12)]
    assert b.remaining is None and b.attempts == 12
    b.reset()
    assert b.next_delay() == 0.1


def test_a_negative_retry_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        Backoff(0.1, max_delay=1.0, max_retries=-1, rng=None)
