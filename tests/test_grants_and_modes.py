"""Pure: policies (parsing, validation, defaults) and the grant planner
(per-flow token buckets, node cap, 1:2:3 sharing), with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.grants import GrantPlanner
from peercrypt.core.modes import Policy, PolicyError, parse_priority, with_overrides

MiB = 1 << 20
CHUNK = 64 * 1024


def run(
    planner: GrantPlanner[int],
    flows: list[int],
    seconds: float,
    tick: float = 0.005,
    start: float = 0.0,
) -> dict[int, int]:
    """Every flow always wants a window's worth; return bytes granted per flow."""
    got = dict.fromkeys(flows, 0)
    now = start
    while now < start + seconds:
        for f in flows:
            planner.demand(f, 16 * CHUNK)
        for f, n in planner.tick(now).items():
            got[f] += n
        now += tick
    return got


@pytest.mark.parametrize("rate", [1 * MiB, 10 * MiB, 100 * MiB])
def test_token_bucket_rate_within_2_percent_after_the_first_bucket(rate: int) -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(1, 1, rate, rate, 0.0)
    run(planner, [1], 1.0)  # spends the initial full bucket and reaches steady state
    got = run(planner, [1], 10.0, start=1.0)[1]
    assert abs(got - 10 * rate) / (10 * rate) < 0.02


def test_live_rate_change_takes_effect_without_restart() -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(7, 1, 4 * MiB, 4 * MiB, 0.0)
    run(planner, [7], 2.0)
    planner.set_rate(7, 1 * MiB, 1 * MiB, 2.0)
    got = run(planner, [7], 10.0, start=2.0)[7]
    # at most the old tokens left over (<= one bucket) on top of the new rate
    assert 10 * MiB * 0.98 <= got <= 10 * MiB + 4 * MiB


@pytest.mark.parametrize("weights", [(1, 2, 3), (1, 1, 3), (3, 2, 1)])
def test_node_cap_is_shared_by_priority(weights: tuple[int, int, int]) -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.set_node_rate(30 * MiB, 3 * MiB, 0.0)
    for flow, w in enumerate(weights):
        planner.add(flow, w, 0, 0, 0.0)
    got = run(planner, [0, 1, 2], 10.0)
    total = sum(got.values())
    assert abs(total - 10 * 30 * MiB) / (10 * 30 * MiB) < 0.02 + 3 / 300  # + initial bucket
    for flow, w in enumerate(weights):
        assert got[flow] / total == pytest.approx(w / sum(weights), rel=0.02)


def test_flow_without_demand_gives_its_share_to_others() -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.set_node_rate(10 * MiB, MiB, 0.0)
    planner.add(1, 3, 0, 0, 0.0)
    planner.add(2, 1, 0, 0, 0.0)
    got = run(planner, [2], 5.0)  # flow 1 is idle
    assert got[2] >= 5 * 10 * MiB * 0.98


def test_no_cap_and_no_own_rate_grants_all_demand() -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(1, 1, 0, 0, 0.0)
    planner.demand(1, 12345)
    assert planner.tick(0.0) == {1: 12345}
    assert planner.tick(0.1) == {}


@settings(max_examples=40, deadline=None)
@given(
    rate=st.integers(64 * 1024, 50 * MiB),
    demands=st.lists(st.integers(0, 4 * MiB), min_size=1, max_size=200),
)
def test_grants_never_exceed_bucket_plus_rate(rate: int, demands: list[int]) -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(1, 1, rate, rate, 0.0)
    granted, now = 0, 0.0
    for want in demands:
        planner.demand(1, want)
        granted += planner.tick(now).get(1, 0)
        assert granted <= rate + rate * now + 1
        now += 0.01


def test_policy_validation_names_the_parameter() -> None:
    with pytest.raises(PolicyError, match="-r"):
        with_overrides(Policy(), mode="token-bucket")
    with pytest.raises(PolicyError, match="-min-w"):
        with_overrides(Policy(), window_kb=10, min_window_kb=20)
    with pytest.raises(PolicyError, match="unknown mode"):
        with_overrides(Policy(), mode="warp")
    with pytest.raises(PolicyError, match="-t"):
        with_overrides(Policy(), lanes=0)
    policy = with_overrides(Policy(mode="aimd"), rate=None, window_kb=512)
    assert (policy.mode, policy.window_kb, policy.max_window_kb) == ("aimd", 512, 16384)


def test_token_bucket_chunks_never_exceed_the_bucket() -> None:
    policy = Policy(mode="token-bucket", rate=MiB, burst=100_000)
    assert policy.chunk_size_for(MiB) == 100_000
    assert Policy(mode="token-bucket", rate=MiB).burst_for(CHUNK) == MiB
    assert Policy(mode="normal").chunk_size_for(MiB) == MiB


@pytest.mark.parametrize(
    ("text", "value"), [("normal", 1), ("HIGH", 2), (" highest ", 3), ("1", 1), ("3", 3)]
)
def test_parse_priority(text: str, value: int) -> None:
    assert parse_priority(text) == value


@pytest.mark.parametrize("text", ["", "4", "0", "urgent", "2.0"])
def test_parse_priority_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="priority"):
        parse_priority(text)


def test_next_full_tells_when_a_small_bucket_must_be_drained() -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(1, 1, 100 * MiB, 256 * 1024, 0.0)
    assert planner.next_full(0.0) is None  # no demand: nothing to hurry for
    planner.demand(1, 16 * CHUNK)
    planner.tick(0.0)  # spends the bucket
    planner.demand(1, 16 * CHUNK)
    assert planner.next_full(0.0) == pytest.approx(256 * 1024 / (100 * MiB))
