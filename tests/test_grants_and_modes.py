"""Pure: policies (parsing, validation, defaults) and the grant planner
(per-flow token buckets, node cap, 1:2:3 sharing), with a fake clock."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.scheduler import SchedulerActor
from peercrypt.core.grants import DEMAND_SECONDS, GrantPlanner
from peercrypt.core.modes import (
    BURST_SECONDS,
    MAX_RATE,
    MIN_PACED_RATE,
    RECEIVER_IDLE,
    Policy,
    PolicyError,
    capped_chunk_size,
    check_flow_rate,
    check_node_share,
    check_paced_rate,
    default_burst,
    paced_chunk_seconds,
    parse_priority,
    with_overrides,
)
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec
from peercrypt.wire.local_messages import SendRequest, SendResult
from peercrypt.wire.messages import FlowRate, FlowStart, SettingReply, SettingRequest

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
def test_token_bucket_rate_within_2_percent_from_the_first_byte(rate: int) -> None:
    planner: GrantPlanner[int] = GrantPlanner()
    planner.add(1, 1, rate, default_burst(rate), 0.0)
    got = run(planner, [1], 10.0)[1]
    assert 10 * rate * 0.98 <= got <= 10 * rate  # the bucket starts empty: no burst on top


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


def worst_excess(events: list[tuple[float, int]], rate_at: list[tuple[float, float]]) -> float:
    """max over every interval [t_i, t_j] between events (i <= j) of the
    bytes in it minus the integral of the rate over it; ``rate_at``: (from,
    rate) steps. Every other interval is dominated by one of these."""

    def integral(t0: float, t1: float) -> float:
        total = 0.0
        for k, (start, rate) in enumerate(rate_at):
            end = rate_at[k + 1][0] if k + 1 < len(rate_at) else t1
            lo, hi = max(start, t0), min(end, t1)
            total += max(0.0, hi - lo) * rate
        return total

    worst = -math.inf
    for i in range(len(events)):
        acc = 0
        for j in range(i, len(events)):
            acc += events[j][1]
            worst = max(worst, acc - integral(events[i][0], events[j][0]))
    return worst


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(4096, 200 * MiB),
    given_burst=st.one_of(st.just(0), st.integers(1, 8 * MiB)),
    steps=st.lists(
        st.tuples(
            st.floats(0.0005, 0.3),  # time to the next tick (idle gaps included)
            st.integers(0, 16 * MiB),  # what the flow asks for (0: its window is shut)
            st.one_of(st.none(), st.integers(4096, 200 * MiB)),  # a live rate change
        ),
        min_size=1,
        max_size=120,
    ),
)
def test_any_interval_is_granted_at_most_rate_times_length_plus_one_bucket(
    rate: int, given_burst: int, steps: list[tuple[float, int, int | None]]
) -> None:
    """The bucket starts empty: from the flow's start no burst at all; over
    any interval [t, t + T], at most the integral of the rate plus the largest
    bucket in force (the default bucket: BURST_SECONDS at the rate), however
    the demand comes and goes and the rate changes live (the ``rate`` command
    gives the default bucket of the new rate)."""
    planner: GrantPlanner[int] = GrantPlanner()
    burst = given_burst or default_burst(rate)
    planner.add(1, 1, rate, burst, 0.0)
    rate_at, largest = [(0.0, float(rate))], burst
    events: list[tuple[float, int]] = []
    now = granted = 0
    for dt, want, new_rate in steps:
        now += dt
        planner.demand(1, want)
        got = planner.tick(now).get(1, 0)
        assert got <= want
        if got:
            events.append((now, got))
            granted += got
        if rate_at == [(0.0, float(rate))]:
            assert granted <= rate * now * (1 + 1e-9) + 1  # from the start: no burst
        if new_rate is not None:
            planner.set_rate(1, new_rate, default_burst(new_rate), now)
            rate_at.append((now, float(new_rate)))
            largest = max(largest, default_burst(new_rate))
    assert worst_excess(events, rate_at) <= largest * (1 + 1e-9) + 1
    if given_burst == 0 and len(rate_at) == 1:
        # So over any second or more the rate is exceeded by at most BURST_SECONDS' worth.
        assert largest <= max(4096, rate * BURST_SECONDS)


def test_a_demand_counts_for_at_most_the_horizon() -> None:
    """A sender whose window shuts after asking must not bank a burst: one
    demand is granted at most DEMAND_SECONDS at the rate (or one bucket)."""
    planner: GrantPlanner[int] = GrantPlanner()
    rate = 10 * MiB
    planner.add(1, 1, rate, 64 * 1024, 0.0)
    planner.demand(1, 64 * MiB)
    granted = sum(planner.tick(t / 200).get(1, 0) for t in range(1, 400))  # 2 s of ticks
    assert granted == planner.horizon(1) == int(rate * DEMAND_SECONDS)
    planner.add(2, 1, rate, 2 * MiB, 0.0)  # a bucket larger than the horizon counts instead
    assert planner.horizon(2) == 2 * MiB
    planner.add(3, 1, 0, 0, 0.0)  # unpaced by its own rate, no node cap: no horizon
    planner.demand(3, 64 * MiB)
    assert planner.tick(0.0) == {3: 64 * MiB}


def test_policy_validation_names_the_parameter() -> None:
    with pytest.raises(PolicyError, match="-r"):
        with_overrides(Policy(), mode="token-bucket")
    with pytest.raises(PolicyError, match="-min-w"):
        with_overrides(Policy(), window_kb=10, min_window_kb=20)
    with pytest.raises(PolicyError, match="unknown mode"):
        with_overrides(Policy(), mode="warp")
    with pytest.raises(PolicyError, match="-t"):
        with_overrides(Policy(), lanes=0)
    with pytest.raises(PolicyError, match=re.escape("expected a rate in 0B/s..1TiB/s")):
        with_overrides(Policy(), mode="token-bucket", rate=MAX_RATE + 1)
    assert with_overrides(Policy(), mode="token-bucket", rate=MAX_RATE).rate == MAX_RATE
    policy = with_overrides(Policy(mode="aimd"), rate=None, window_kb=512)
    assert (policy.mode, policy.window_kb, policy.max_window_kb) == ("aimd", 512, 16384)


def test_token_bucket_chunks_never_exceed_the_bucket() -> None:
    policy = Policy(mode="token-bucket", rate=MiB, burst=100_000)
    assert policy.chunk_size_for(MiB) == 100_000
    # Without -b: 50 ms at the rate, at least one smallest chunk.
    assert Policy(mode="token-bucket", rate=MiB).burst_for(CHUNK) == int(MiB * BURST_SECONDS)
    assert Policy(mode="token-bucket", rate=1000).burst_for(CHUNK) == 4096
    assert Policy(mode="token-bucket", rate=MiB).chunk_size_for(MiB) == int(MiB * BURST_SECONDS)
    assert Policy(mode="normal").chunk_size_for(MiB) == MiB


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 64 * MiB),
    burst=st.sampled_from([0, 1024, 4096, 100_000, 16 * MiB]),
    chunk=st.integers(4096, 16 * MiB),
    size=st.integers(0, 1 << 40),
    timeout=st.floats(0.1, 3600),
)
def test_a_paced_send_is_refused_or_every_chunk_moves_in_time(
    rate: int, burst: int, chunk: int, size: int, timeout: float
) -> None:
    """The rate either moves every chunk (as cut for the send) within
    paced_chunk_seconds - within --timeout and the receiver's idle limit -
    or the send is refused up front, naming a rate that would pass (and the
    rate one below it would not)."""
    policy = Policy(mode="token-bucket", rate=rate, burst=burst)
    limit = paced_chunk_seconds(timeout)
    assert limit <= timeout / 2 and limit <= RECEIVER_IDLE / 2
    try:
        policy.check_pace(size, timeout)
    except PolicyError as exc:
        smallest = min(4096, size)
        assert smallest > rate * limit
        text = str(exc)
        assert "\n" not in text and text.startswith(f"-r {rate} is too low")
        need = int(text.split("use -r ")[1].split()[0])
        Policy(mode="token-bucket", rate=need).check_pace(size, timeout)
        with pytest.raises(PolicyError):
            Policy(mode="token-bucket", rate=need - 1).check_pace(size, timeout)
        return
    cut = policy.chunk_size_for(chunk, timeout)
    assert 4096 <= cut <= chunk
    assert min(cut, size) / rate <= limit * (1 + 1e-9)


def test_a_rate_far_below_one_chunk_per_timeout_is_refused_with_the_rate_to_use() -> None:
    policy = Policy(mode="token-bucket", rate=10)
    with pytest.raises(PolicyError) as info:
        policy.check_pace(10 * MiB, 10.0)
    assert str(info.value) == (
        "-r 10 is too low for this send: its smallest chunk (4096 bytes) takes 410 s at "
        "10 B/s, and a paced chunk must move within 5 s (half of --timeout 10 s or of the "
        "receiver's 30 s idle limit, whichever is shorter); use -r 820 or more, or a longer "
        "--timeout (up to 30 s counts)"
    )
    policy.check_pace(50, 10.0)  # one 50-byte chunk: 5 s at 10 B/s
    for bad in (0.0, -1.0, float("nan")):  # a control client's request: refused, no crash
        with pytest.raises(PolicyError, match="--timeout"):
            policy.check_pace(50, bad)
        assert policy.chunk_size_for(MiB, bad) == 4096
    Policy().check_pace(10 * MiB, 0.1)  # only a flow's own rate is checked
    # A large bucket no longer makes one chunk outlast the timeout.
    assert Policy(mode="token-bucket", rate=2500, burst=MiB).chunk_size_for(MiB, 4.0) == 5000


def test_a_node_cap_or_live_rate_below_one_smallest_chunk_per_idle_half_is_refused() -> None:
    """A cap (or a live flow rate) that cannot move the 4 KiB chunk within
    half the receiver's idle limit would have every send under it dropped
    as idle: refused, naming the lowest that works (and that one passes)."""
    assert MIN_PACED_RATE == math.ceil(4096 / (RECEIVER_IDLE / 2)) == 274
    for ok in (0, MIN_PACED_RATE, 10 * MiB):
        check_paced_rate(ok, "max-rate")
    with pytest.raises(PolicyError) as info:
        check_paced_rate(MIN_PACED_RATE - 1, "max-rate")
    assert str(info.value) == (
        "max-rate 273 is too low: the smallest chunk (4096 bytes) takes 15 s at 273 B/s, and "
        "a paced chunk must move within 15 s (half of the receiver's 30 s idle limit); "
        "use 274 or more (0: no limit)"
    )
    assert 4096 / MIN_PACED_RATE <= RECEIVER_IDLE / 2 < 4096 / (MIN_PACED_RATE - 1)


@given(
    node_rate=st.integers(MIN_PACED_RATE, 64 * MiB),
    priority=st.integers(1, 3),
    running=st.lists(st.integers(1, 3), max_size=16),
    chunk=st.integers(4096, 16 * MiB),
    timeout=st.floats(0.1, 3600),
)
def test_a_send_under_the_node_cap_is_refused_or_its_share_moves_each_chunk_in_time(
    node_rate: int, priority: int, running: list[int], chunk: int, timeout: float
) -> None:
    """Its share of the cap (by priority, with the paced sends running)
    moves every chunk, as cut, within paced_chunk_seconds - at least the
    4 KiB one within half the idle limit - or it is refused up front with
    a cap that would pass."""
    share = node_rate * priority / (priority + sum(running))
    try:
        cut = capped_chunk_size(chunk, timeout, node_rate, priority, running)
    except PolicyError as exc:
        assert share * RECEIVER_IDLE / 2 < 4096
        text = str(exc)
        assert "\n" not in text and text.startswith(f"the node's rate cap of {node_rate} B/s")
        need = int(text.split("use max-rate ")[1].split()[0])
        capped_chunk_size(chunk, timeout, need, priority, running)
        return
    assert 4096 <= cut <= chunk
    assert cut / share <= max(paced_chunk_seconds(timeout), 4096 / share) * (1 + 1e-9)
    assert 4096 / share <= RECEIVER_IDLE / 2 * (1 + 1e-9)


def test_a_send_whose_share_of_the_cap_is_too_small_is_refused_with_the_cap_to_use() -> None:
    assert capped_chunk_size(MiB, 10.0, 20_000, 1, []) == 100_000  # 5 s at 20 KB/s
    assert capped_chunk_size(MiB, 10.0, 300, 1, []) == 4096
    with pytest.raises(PolicyError) as info:
        capped_chunk_size(MiB, 10.0, 500, 1, [1])
    assert str(info.value) == (
        "the node's rate cap of 500 B/s shared with 1 running send(s) leaves this send "
        "250 B/s: its smallest chunk (4096 bytes) would take 16 s, and a paced chunk must "
        "move within 15 s (half of the receiver's 30 s idle limit); use max-rate 548 or "
        "more, or send when fewer run"
    )
    assert capped_chunk_size(MiB, 10.0, 548, 1, [1]) == 4096
    assert capped_chunk_size(MiB, 10.0, 500, 3, [1]) == 4096  # a higher priority's share


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


@given(
    node_rate=st.integers(MIN_PACED_RATE, 64 * MiB),
    flows=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([0, 4096, 100_000, MiB, 16 * MiB])),
        min_size=1,
        max_size=16,
    ),
)
def test_a_node_cap_is_refused_or_leaves_every_running_send_enough_for_its_chunks(
    node_rate: int, flows: list[tuple[int, int]]
) -> None:
    """A running send's chunks were cut for the share it had when it
    started. A new send beside it, or a lower cap, that leaves it too
    little to move one chunk within half the receiver's idle limit (its
    receiver would drop it as idle) is refused, naming a cap that passes."""
    running = [(request, priority, chunk) for request, (priority, chunk) in enumerate(flows, 1)]
    weights = sum(priority for priority, _ in flows)
    try:
        check_node_share(node_rate, running, "the cap")
    except PolicyError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("the cap leaves transfer ")
        request = int(text.split("leaves transfer ")[1].split()[0])
        _, priority, chunk = running[request - 1]
        assert chunk / (node_rate * priority / weights) > RECEIVER_IDLE / 2
        check_node_share(int(text.split("use max-rate ")[1].split()[0]), running, "the cap")
        return
    for _, priority, chunk in running:
        assert chunk / (node_rate * priority / weights) <= RECEIVER_IDLE / 2 * (1 + 1e-9)


def test_a_live_rate_too_low_for_a_running_sends_chunks_is_refused() -> None:
    check_flow_rate(0, 7, MiB)  # none
    check_flow_rate(1, 7, 0)  # chunks not known
    check_flow_rate(69_906, 7, MiB)  # 1 MiB in 15 s
    with pytest.raises(PolicyError) as info:
        check_flow_rate(69_905, 7, MiB)
    assert str(info.value) == (
        "rate 69905 is too low for transfer 7: its chunks (1048576 bytes) need 69906 B/s to "
        "move within 15 s (half of the receiver's 30 s idle limit); use 69906 or more"
    )
    with pytest.raises(PolicyError) as info:
        check_node_share(200_000, [(1, 1, MiB), (2, 3, 4096)], "max-rate 200000")
    assert str(info.value) == (
        "max-rate 200000 leaves transfer 1 50000 B/s: its chunks (1048576 bytes) need 69906 B/s "
        "to move within 15 s (half of the receiver's 30 s idle limit); use max-rate 279624 or more"
    )


def test_the_scheduler_refuses_what_would_starve_a_running_send(tmp_path: Path) -> None:
    """The real scheduler actor, its mail handled by the test: with a send
    of 1 MiB chunks running under the node's cap, a lower cap, a live rate
    or a new send whose share would leave it too little for one chunk per
    half idle limit is refused (the running send untouched); what leaves
    it enough is taken."""
    ctx: zmq.Context[Any] = zmq.Context()
    told: list[tuple[str, codec.Message]] = []
    try:
        settings = loopback_settings(tmp_path, None)
        scheduler = SchedulerActor(ActorEnv(ctx, f"starve{time.monotonic_ns()}"), settings)
        scheduler.tell = lambda to, msg: told.append((to, msg))  # type: ignore[method-assign,assignment]

        def setting(name: str, value: str, transfer: int = 0) -> SettingReply:
            return scheduler._setting(
                SettingRequest(request=1, name=name, value=value, transfer=transfer)
            )

        assert setting("max-rate", "200000").ok
        running = FlowStart(request=1, priority=1, rate=0, burst=0, paced=True, chunk_size=MiB)
        scheduler.on_mail(running)
        low = setting("max-rate", "69000")
        assert not low.ok and low.text.startswith("max-rate 69000 leaves transfer 1 69000 B/s")
        assert scheduler.planner.node_rate == 200_000  # unchanged
        told.clear()
        slow = setting("rate", "50000", transfer=1)
        assert not slow.ok and slow.text.startswith("rate 50000 is too low for transfer 1:")
        assert scheduler.flows[1].rate == 0
        assert not any(isinstance(msg, FlowRate) for _, msg in told)  # refused: nothing told
        assert setting("rate", "70000", transfer=1).ok
        # The sender learns the flow's own rate (its statistics record it).
        assert ("sender", FlowRate(request=1, rate=70000)) in told, told

        def send(request: int, priority: str) -> codec.Message:
            told.clear()
            scheduler.on_mail(
                SendRequest(
                    request=request, path="/x", host="127.0.0.1", port=9, chunk_size=MiB,
                    priority=parse_priority(priority),
                )
            )  # fmt: skip
            [(_, msg)] = told
            return msg

        refused = send(2, "highest")  # 1/4 of 200000 B/s left to transfer 1
        assert isinstance(refused, SendResult) and refused.code == "local"
        assert refused.reason.startswith(
            "the node's rate cap of 200000 B/s shared with this send leaves transfer 1 50000 B/s"
        )
        assert refused.reason.endswith("use max-rate 279624 or more, or send when fewer run")
        assert [to for to, _ in told] == ["control"]
        taken = send(3, "normal")  # half of it: enough
        assert isinstance(taken, SendRequest) and taken.request == 3
    finally:
        for sock in scheduler._sockets:
            sock.close(linger=0)
        ctx.term()
