"""Tests for peercrypt.core.reach: the attempts of a pre-send or one-shot
check stay inside their budget and their retry count."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.reach import MIN_ATTEMPT, PAUSE_INITIAL, Reach

PROPS = settings(max_examples=120, deadline=None)


def run(reach: Reach, fail_after: list[float]) -> list[tuple[float, float]]:
    """Every attempt fails ``fail_after[i]`` (a fraction of its wait) after it
    starts; returns (start, wait) of each attempt until the reach gives up."""
    now, made = reach.started, []
    for fraction in fail_after:
        wait = reach.attempt(now)
        made.append((now, wait))
        now += wait * fraction
        pause = reach.retry_in(now)
        if pause is None:
            return made
        now += pause
    return made


@PROPS
@given(
    connect_timeout=st.floats(0.05, 10),
    max_retries=st.integers(0, 8),
    budget=st.floats(0.1, 60),
    fractions=st.lists(st.floats(0, 1), min_size=20, max_size=20),
    seed=st.integers(0, 2**32),
)
def test_attempts_stay_inside_the_budget_and_the_retries(
    connect_timeout: float, max_retries: int, budget: float, fractions: list[float], seed: int
) -> None:
    reach = Reach(
        connect_timeout=connect_timeout,
        max_retries=max_retries,
        budget=budget,
        now=100.0,
        rng=random.Random(seed),
    )
    made = run(reach, fractions)
    assert 1 <= len(made) <= max_retries + 1
    assert reach.attempts == len(made)
    for start, wait in made:
        assert start - 100.0 < budget  # every attempt starts inside the budget
        assert MIN_ATTEMPT <= wait <= max(MIN_ATTEMPT, connect_timeout)
        # it waits at most to the end of the budget (or the minimum)
        assert start + wait <= 100.0 + budget + 1e-9 or wait == MIN_ATTEMPT


def test_a_spent_budget_ends_the_retries_and_none_means_only_the_count() -> None:
    rng = random.Random(1)
    spent = Reach(connect_timeout=3.0, max_retries=5, budget=1.0, now=0.0, rng=rng)
    spent.attempt(0.0)
    assert spent.retry_in(1.0) is None  # no pause can end inside the budget
    unbounded = Reach(connect_timeout=3.0, max_retries=2, budget=0, now=0.0, rng=rng)
    assert unbounded.attempt(50.0) == 3.0
    pauses = [unbounded.retry_in(1000.0 * i) for i in range(3)]
    assert pauses[0] is not None and 0 <= pauses[0] <= PAUSE_INITIAL
    assert pauses[1] is not None and pauses[2] is None  # two retries, then no more
