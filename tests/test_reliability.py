"""Tests for peercrypt.core.reliability: score formula, bounds, monotonicity, choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.reliability import ReliabilityScore, weighted_choice

PROPS = settings(max_examples=80, deadline=None)

events_st = st.lists(st.tuples(st.booleans(), st.sampled_from(["ping", "transfer"])), max_size=40)


def replay(events: list[tuple[bool, str]]) -> ReliabilityScore:
    score = ReliabilityScore()
    for ok, kind in events:
        if kind == "ping":
            score.record_ping(ok)
        else:
            score.record_transfer(ok)
    return score


def test_documented_formula_values() -> None:
    s = ReliabilityScore()
    assert s.value == 0.5
    assert s.record_ping(True) == pytest.approx(0.55)
    assert s.record_ping(False) == pytest.approx(0.495)
    t = ReliabilityScore()
    assert t.record_transfer(True) == pytest.approx(0.5 + (1 - 0.9**4) * 0.5)
    assert (s.successes, s.failures, t.successes, t.failures) == (1, 1, 1, 0)


def test_transfer_counts_like_four_pings() -> None:
    a, b = ReliabilityScore(prior=0.3), ReliabilityScore(prior=0.3)
    a.record_transfer(False)
    for _ in range(4):
        b.record_ping(False)
    assert a.value == pytest.approx(b.value)
    assert a.value < 0.3


def test_converges_towards_outcomes() -> None:
    s = ReliabilityScore()
    for _ in range(100):
        s.record_ping(True)
    assert s.value > 0.9999
    for _ in range(100):
        s.record_transfer(False)
    assert s.value < 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [{"prior": -0.1}, {"prior": 1.1}, {"alpha": 0.0}, {"alpha": 1.0}, {"transfer_weight": 0.0}],
)
def test_invalid_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReliabilityScore(**kwargs)


def test_invalid_weight() -> None:
    with pytest.raises(ValueError):
        ReliabilityScore().record(True, weight=0.0)
    with pytest.raises(ValueError):
        ReliabilityScore().record(True, weight=float("inf"))


@PROPS
@given(events_st)
def test_score_stays_in_unit_interval(events: list[tuple[bool, str]]) -> None:
    s = replay(events)
    assert 0.0 <= s.value <= 1.0
    assert s.successes + s.failures == len(events)
    assert s.successes == sum(ok for ok, _ in events)


@PROPS
@given(events_st, st.data())
def test_score_monotone_in_successes(events: list[tuple[bool, str]], data: st.DataObject) -> None:
    failures = [i for i, (ok, _) in enumerate(events) if not ok]
    base = replay(events).value
    if failures:
        i = data.draw(st.sampled_from(failures))
        flipped = list(events)
        flipped[i] = (True, events[i][1])
        assert replay(flipped).value >= base - 1e-12
    assert replay([*events, (True, "ping")]).value >= base
    assert replay([*events, (False, "transfer")]).value <= base


# ---------------------------------------------------------- weighted choice


def test_choice_basic_contract() -> None:
    peers = [("a", 0.9), ("b", 0.1), ("c", 0.5), ("d", 0.0)]
    picked = weighted_choice(peers, 2, random.Random(1))
    assert len(picked) == 2
    assert len(set(picked)) == 2
    assert set(picked) <= {"a", "b", "c", "d"}
    assert picked == weighted_choice(peers, 2, random.Random(1))
    assert sorted(weighted_choice(peers, 10, random.Random(2))) == ["a", "b", "c", "d"]
    assert weighted_choice(peers, 0, random.Random(3)) == []
    assert weighted_choice([], 3, random.Random(3)) == []


@pytest.mark.parametrize(
    ("peers", "k"),
    [([("a", 0.5)], -1), ([("a", 1.5)], 1), ([("a", float("nan"))], 1), ([("a", 0.5)] * 2, 1)],
)
def test_choice_rejects_bad_input(peers: list[tuple[str, float]], k: int) -> None:
    with pytest.raises(ValueError):
        weighted_choice(peers, k, random.Random(0))


def test_choice_frequencies_match_weights() -> None:
    peers = [("good", 1.0), ("mid", 0.5), ("zero", 0.0)]
    weights = {"good": 1.0, "mid": 0.5, "zero": 0.05}  # floor 0.05 for "zero"
    total = sum(weights.values())
    rng = random.Random(12345)
    trials = 4000
    counts = Counter(weighted_choice(peers, 1, rng)[0] for _ in range(trials))
    for peer, w in weights.items():
        assert counts[peer] / trials == pytest.approx(w / total, abs=0.03)
    assert counts["zero"] > 0  # every live peer keeps a chance


def test_choice_floor_parameter() -> None:
    peers = [("a", 1.0), ("b", 0.0)]
    rng = random.Random(7)
    counts = Counter(weighted_choice(peers, 1, rng, floor=0.5)[0] for _ in range(3000))
    assert counts["b"] / 3000 == pytest.approx(1 / 3, abs=0.04)
    with pytest.raises(ValueError):
        weighted_choice(peers, 1, rng, floor=0.0)


@PROPS
@given(
    st.dictionaries(st.integers(0, 50), st.floats(0.0, 1.0), max_size=12),
    st.integers(0, 15),
    st.integers(0, 2**32),
)
def test_choice_returns_distinct_subset(scores: dict[int, float], k: int, seed: int) -> None:
    picked = weighted_choice(list(scores.items()), k, random.Random(seed))
    assert len(picked) == min(k, len(scores))
    assert len(set(picked)) == len(picked)
    assert set(picked) <= set(scores)
    assert picked == weighted_choice(list(scores.items()), k, random.Random(seed))
