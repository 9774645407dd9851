"""Tests for peercrypt.core.wfq."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peercrypt.core.wfq import (
    PRIORITY_HIGH,
    PRIORITY_HIGHEST,
    PRIORITY_NORMAL,
    FairShare,
    parse_priority,
)

BIG = 10**15

# -- parse_priority ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal", 1),
        ("NORMAL", 1),
        ("High", 2),
        ("high", 2),
        ("highest", 3),
        ("HiGhEsT", 3),
        ("1", 1),
        ("2", 2),
        ("3", 3),
        (" high\n", 2),
    ],
)
def test_parse_priority_accepts(text: str, expected: int) -> None:
    assert parse_priority(text) == expected


@pytest.mark.parametrize("text", ["", "low", "0", "4", "highestt", "1.0", "hi gh", "normal1"])
def test_parse_priority_rejects_with_clear_message(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_priority(text)
    message = str(info.value)
    assert repr(text) in message
    assert "normal, high, highest" in message
    assert "1, 2, 3" in message


def test_priority_constants() -> None:
    assert (PRIORITY_NORMAL, PRIORITY_HIGH, PRIORITY_HIGHEST) == (1, 2, 3)


# -- flow management -------------------------------------------------------------


def test_add_remove_and_queries() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a")
    fs.add("b", 3)
    assert len(fs) == 2
    assert "a" in fs
    assert "z" not in fs
    assert list(fs) == ["a", "b"]
    assert fs.weight("a") == 1.0
    assert fs.weight("b") == 3.0
    assert fs.pending("a") == 0
    fs.remove("a")
    assert list(fs) == ["b"]


def test_duplicate_add_rejected() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a")
    with pytest.raises(ValueError, match="already exists"):
        fs.add("a", 2)
    assert fs.weight("a") == 1.0


@pytest.mark.parametrize("weight", [0, -1, math.inf, math.nan])
def test_bad_weight_rejected(weight: float) -> None:
    fs: FairShare[str] = FairShare()
    with pytest.raises(ValueError, match="weight"):
        fs.add("a", weight)


def test_unknown_flow_raises_key_error() -> None:
    fs: FairShare[str] = FairShare()
    with pytest.raises(KeyError):
        fs.remove("x")
    with pytest.raises(KeyError):
        fs.demand("x", 10)
    with pytest.raises(KeyError):
        fs.pending("x")


def test_negative_demand_and_budget_rejected() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a")
    with pytest.raises(ValueError, match="demand"):
        fs.demand("a", -1)
    with pytest.raises(ValueError, match="budget"):
        fs.grant(-1)


def test_demand_replaces_previous_value() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a")
    fs.demand("a", 100)
    fs.demand("a", 100)
    assert fs.pending("a") == 100
    fs.demand("a", 30)
    assert fs.pending("a") == 30
    assert fs.total_pending == 30


# -- grants ------------------------------------------------------------------------


def three_flows() -> FairShare[str]:
    fs: FairShare[str] = FairShare()
    fs.add("n", PRIORITY_NORMAL)
    fs.add("h", PRIORITY_HIGH)
    fs.add("x", PRIORITY_HIGHEST)
    return fs


def test_grant_proportional_to_weights() -> None:
    fs = three_flows()
    for f in ("n", "h", "x"):
        fs.demand(f, BIG)
    assert fs.grant(600) == {"n": 100, "h": 200, "x": 300}
    assert fs.pending("x") == BIG - 300


def test_grant_reduces_pending_and_stops_at_demand() -> None:
    fs = three_flows()
    fs.demand("n", 10)
    fs.demand("h", 20)
    fs.demand("x", 30)
    assert fs.grant(1000) == {"n": 10, "h": 20, "x": 30}
    assert fs.total_pending == 0
    assert fs.grant(1000) == {}


def test_zero_budget_or_no_demand_grants_nothing() -> None:
    fs = three_flows()
    assert fs.grant(1000) == {}
    fs.demand("n", 5)
    assert fs.grant(0) == {}
    assert fs.pending("n") == 5


def test_work_conserving_small_demand_gives_share_away() -> None:
    fs = three_flows()
    fs.demand("n", BIG)
    fs.demand("h", BIG)
    fs.demand("x", 50)  # fair share would be 300
    grants = fs.grant(600)
    assert grants["x"] == 50
    assert sum(grants.values()) == 600
    # remaining 550 split 1:2 -> 183.33 / 366.67
    assert grants["n"] in (183, 184)
    assert grants["h"] == 550 - grants["n"]


def test_idle_flow_gets_nothing_and_others_get_everything() -> None:
    fs = three_flows()
    fs.demand("n", BIG)
    fs.demand("h", BIG)
    assert fs.grant(900) == {"n": 300, "h": 600}


def test_water_filling_cascades() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a", 1)
    fs.add("b", 1)
    fs.add("c", 1)
    fs.add("d", 1)
    fs.demand("a", 10)  # fits in 100
    fs.demand("b", 120)  # does not fit in 100, fits in (400-10)/3 = 130
    fs.demand("c", BIG)
    fs.demand("d", BIG)
    assert fs.grant(400) == {"a": 10, "b": 120, "c": 135, "d": 135}


def test_water_filling_uses_weighted_share_to_decide_fit() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a", 1)
    fs.add("b", 3)
    fs.demand("a", 150)  # above its weighted share (100), below an equal share (200)
    fs.demand("b", BIG)
    assert fs.grant(400) == {"a": 100, "b": 300}


def test_flows_granted_zero_bytes_are_left_out() -> None:
    fs = three_flows()
    for f in ("n", "h", "x"):
        fs.demand(f, BIG)
    grants = fs.grant(1)
    assert grants == {"x": 1}  # shares 1/6, 2/6, 3/6: largest remainder wins


def test_withdrawn_flow_returns_without_debt() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a", 1)
    fs.add("b", 3)
    fs.demand("a", BIG)
    fs.demand("b", BIG)
    assert fs.grant(1) == {"b": 1}  # b now owes 0.25 byte, a is owed 0.25
    fs.demand("b", 0)
    fs.demand("b", BIG)
    # targets: a 0.25 + 0.25 = 0.5, b 0.75 (debt forgotten) -> b
    assert fs.grant(1) == {"b": 1}


def test_satisfied_flow_returns_without_debt() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a", 1)
    fs.add("b", 3)
    fs.demand("a", BIG)
    fs.demand("b", 1)
    assert fs.grant(1) == {"b": 1}
    assert fs.pending("b") == 0
    fs.demand("b", BIG)
    assert fs.grant(1) == {"b": 1}


def test_removed_flow_no_longer_shares() -> None:
    fs = three_flows()
    for f in ("n", "h", "x"):
        fs.demand(f, BIG)
    fs.remove("h")
    assert fs.grant(400) == {"n": 100, "x": 300}


def test_shares_over_many_rounds_match_1_2_3() -> None:
    fs = three_flows()
    totals = {"n": 0, "h": 0, "x": 0}
    for r in range(1000):
        for f in totals:
            fs.demand(f, BIG)
        budget = 1000 + (r * 7919) % 5003  # uneven budgets
        for f, g in fs.grant(budget).items():
            totals[f] += g
    whole = sum(totals.values())
    for f, w in (("n", 1), ("h", 2), ("x", 3)):
        assert totals[f] / whole == pytest.approx(w / 6, rel=0.01)


def test_one_byte_budgets_are_shared_fairly() -> None:
    fs = three_flows()
    for f in ("n", "h", "x"):
        fs.demand(f, BIG)
    totals = {"n": 0, "h": 0, "x": 0}
    for _ in range(600):
        for f, g in fs.grant(1).items():
            totals[f] += g
    assert totals["n"] in (99, 100, 101)
    assert totals["h"] in (199, 200, 201)
    assert totals["x"] in (299, 300, 301)
    assert sum(totals.values()) == 600


def test_no_starvation_with_tiny_budgets() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("low", 1)
    for i in range(5):
        fs.add(f"hi{i}", 3)
    for f in fs:
        fs.demand(f, BIG)
    total_weight = 16
    first = None
    for call in range(1, 100):
        if "low" in fs.grant(1):
            first = call
            break
    assert first is not None
    assert first <= total_weight + 1


def test_idle_flow_banks_no_credit() -> None:
    fs: FairShare[str] = FairShare()
    fs.add("a", 1)
    fs.add("b", 1)
    fs.demand("a", BIG)
    for _ in range(100):
        assert fs.grant(10) == {"a": 10}
    fs.demand("b", BIG)
    # b was idle: it gets its fair half now, not a catch-up
    assert fs.grant(10) == {"a": 5, "b": 5}


def test_generic_flow_ids() -> None:
    fs: FairShare[tuple[str, int]] = FairShare()
    fs.add(("peer", 1), 2)
    fs.add(("peer", 2), 1)
    fs.demand(("peer", 1), BIG)
    fs.demand(("peer", 2), BIG)
    assert fs.grant(30) == {("peer", 1): 20, ("peer", 2): 10}


# -- properties ----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=6),
    rounds=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=5000),  # budget
            st.lists(st.integers(min_value=0, max_value=3000), min_size=6, max_size=6),
        ),
        max_size=40,
    ),
)
def test_work_conservation_and_demand_limits(
    weights: list[int], rounds: list[tuple[int, list[int]]]
) -> None:
    fs: FairShare[int] = FairShare()
    for i, w in enumerate(weights):
        fs.add(i, w)
    for budget, demands in rounds:
        for i in range(len(weights)):
            if demands[i] % 3 == 0:  # sometimes keep the old pending demand
                fs.demand(i, demands[i])
        before = {i: fs.pending(i) for i in range(len(weights))}
        grants = fs.grant(budget)
        assert sum(grants.values()) == min(budget, sum(before.values()))
        for i in range(len(weights)):
            g = grants.get(i, 0)
            assert 0 <= g <= before[i]
            assert fs.pending(i) == before[i] - g
            assert (i in grants) is (g > 0)


def _track_fluid(weights: list[float], budgets: list[int]) -> list[float]:
    """Per-flow (cumulative grant - cumulative fluid share) after every call."""
    fs: FairShare[int] = FairShare()
    for i, w in enumerate(weights):
        fs.add(i, w)
        fs.demand(i, BIG)
    got = [0] * len(weights)
    total_weight = sum(weights)
    spent = 0
    worst_low, worst_high = 0.0, 0.0
    for budget in budgets:
        grants = fs.grant(budget)
        spent += budget
        for i, g in grants.items():
            got[i] += g
        for i, w in enumerate(weights):
            dev = got[i] - spent * w / total_weight
            worst_low, worst_high = min(worst_low, dev), max(worst_high, dev)
    return [worst_low, worst_high]


@settings(max_examples=80, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=6),
    budgets=st.lists(st.integers(min_value=18, max_value=10_000), min_size=1, max_size=60),
)
def test_backlogged_flows_within_one_byte_for_realistic_budgets(
    weights: list[int], budgets: list[int]
) -> None:
    # every budget >= 18 >= total weight / smallest weight (at most 6 * 3 / 1)
    low, high = _track_fluid([float(w) for w in weights], budgets)
    assert low >= -1.0 - 1e-6
    assert high <= 1.0 + 1e-6


@settings(max_examples=80, deadline=None)
@given(
    weights=st.lists(st.sampled_from([0.01, 0.5, 1.0, 2.0, 3.0, 7.3]), min_size=1, max_size=8),
    budgets=st.lists(
        st.one_of(st.integers(min_value=0, max_value=4), st.integers(0, 10**6)),
        min_size=1,
        max_size=80,
    ),
)
def test_backlogged_flows_deviation_bounded_for_any_budgets(
    weights: list[float], budgets: list[int]
) -> None:
    low, high = _track_fluid(weights, budgets)
    assert low > -max(1, len(weights) - 1) - 1e-6
    assert high <= 1.0 + 1e-6


def test_tiny_budgets_can_exceed_one_byte_but_stay_bounded() -> None:
    # Found by random search: with budgets of a few bytes a flow can fall
    # slightly more than 1 byte behind its fluid share (documented bound: n - 1).
    weights = [1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    budgets = [5, 2, 1, 3, 3, 28, 2, 1, 1, 1, 1, 3]
    low, high = _track_fluid(weights, budgets)
    assert low == pytest.approx(-20 / 19, abs=1e-9)
    assert low > -8.0
    assert high <= 1.0 + 1e-6


@settings(max_examples=30, deadline=None)
@given(budgets=st.lists(st.integers(min_value=1, max_value=100_000), min_size=200, max_size=300))
# Found by random search: 199 one-byte grants and one of 74 give the normal
# flow 45 bytes of 273, 0.5 byte (1.1%) under its 45.5: a share within the
# documented bound of n - 1 bytes, but not within 1% of so small a total.
@example(budgets=[1] * 199 + [74])
def test_shares_within_one_percent_of_1_2_3(budgets: list[int]) -> None:
    fs = three_flows()
    for f in ("n", "h", "x"):
        fs.demand(f, BIG)
    totals = {"n": 0, "h": 0, "x": 0}
    for budget in budgets:
        for f, g in fs.grant(budget).items():
            totals[f] += g
    whole = sum(totals.values())
    assert whole == sum(budgets)
    for f, w in (("n", 1), ("h", 2), ("x", 3)):
        # 1% of its share, or the scheduler's bound of n - 1 = 2 bytes where
        # the total is too small for 1% to be a whole byte.
        assert abs(totals[f] - whole * w / 6) <= max(0.01 * whole * w / 6, 2)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=3), min_size=2, max_size=5),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("toggle"), st.integers(min_value=0, max_value=4)),
            st.tuples(st.just("grant"), st.integers(min_value=15, max_value=5000)),
        ),
        max_size=60,
    ),
)
def test_flows_coming_and_going_track_share_since_activation(
    weights: list[int], ops: list[tuple[str, int]]
) -> None:
    # Budgets >= 15 >= total weight / smallest weight (5 * 3 / 1), so every
    # active flow stays within 1 byte of its fluid share since it (re)started.
    fs: FairShare[int] = FairShare()
    active = [True] * len(weights)
    fluid = [0.0] * len(weights)
    got = [0] * len(weights)
    for i, w in enumerate(weights):
        fs.add(i, w)
        fs.demand(i, BIG)
    for kind, value in ops:
        if kind == "toggle":
            i = value % len(weights)
            active[i] = not active[i]
            fs.demand(i, BIG if active[i] else 0)
            fluid[i], got[i] = 0.0, 0
            continue
        total_weight = sum(w for w, on in zip(weights, active, strict=True) if on)
        grants = fs.grant(value)
        assert set(grants) <= {i for i, on in enumerate(active) if on}
        for i, w in enumerate(weights):
            if active[i]:
                fluid[i] += value * w / total_weight
                got[i] += grants.get(i, 0)
                assert abs(got[i] - fluid[i]) <= 1.0 + 1e-6
