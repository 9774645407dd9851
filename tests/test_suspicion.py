"""Tests for peercrypt.core.suspicion: timeouts, transitions and detection bounds."""

from __future__ import annotations

import heapq
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.member_state import MemberState
from peercrypt.core.suspicion import FailureDetector, Transition

PROPS = settings(max_examples=60, deadline=None)


def test_defaults_and_documented_timeout_formula() -> None:
    fd: FailureDetector[str] = FailureDetector(probe_interval=2.0)
    assert fd.max_probe_timeout == 1.0
    assert fd.min_suspicion == 3.0
    for n, expected in [(1, 3.0), (5, 3.0), (10, 3.0), (100, 6.0), (1000, 9.0)]:
        fd.set_cluster_size(n)
        assert fd.suspicion_timeout() == pytest.approx(expected)
    fd.set_cluster_size(10)
    assert fd.detection_bound() == pytest.approx(3 * 2.0)


def test_cluster_size_derived_from_live_peers() -> None:
    fd: FailureDetector[str] = FailureDetector(1.0, min_suspicion=1.0, suspicion_mult=2.0)
    assert fd.cluster_size() == 1
    for i in range(99):
        fd.add_peer(f"p{i}", 0.0)
    assert fd.cluster_size() == 100
    assert fd.suspicion_timeout() == pytest.approx(4.0)
    fd.on_probe_failed("p0", 0.0)
    fd.tick(10.0)
    assert fd.cluster_size() == 99


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probe_interval": 0.0},
        {"max_probe_timeout": 1.5},
        {"min_probe_timeout": 0.6},
        {"suspicion_mult": 0.0},
        {"min_suspicion": 0.5},
    ],
)
def test_invalid_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailureDetector(**{"probe_interval": 1.0, **kwargs})


def test_failed_probe_suspects_then_timeout_kills() -> None:
    fd: FailureDetector[str] = FailureDetector(1.0)
    fd.add_peer("a", 0.0)
    t = fd.on_probe_failed("a", 10.5)
    assert t == Transition("a", MemberState.ALIVE, MemberState.SUSPECT, 10.5, "probe_failed")
    st_ = fd.status("a")
    assert (st_.health, st_.failures, st_.suspect_since, st_.dead_at) == (
        MemberState.SUSPECT, 1, 10.5, 12.0,
    )  # fmt: skip
    assert fd.next_deadline() == 12.0
    assert fd.on_probe_failed("a", 11.5) is None  # still suspect, deadline unchanged
    assert fd.status("a").dead_at == 12.0
    assert fd.status("a").failures == 2
    assert fd.tick(11.999) == []
    dead = Transition("a", MemberState.SUSPECT, MemberState.DEAD, 12.0, "suspicion_timeout")
    assert fd.tick(12.5) == [dead]
    assert fd.health("a") is MemberState.DEAD
    assert fd.next_deadline() is None
    assert fd.tick(20.0) == []
    assert fd.on_probe_failed("a", 21.0) is None
    assert fd.status("a").total_failures == 3


def test_ack_revives_from_suspect_and_dead() -> None:
    fd: FailureDetector[str] = FailureDetector(1.0)
    fd.on_probe_failed("a", 0.0)
    t = fd.on_probe_ok("a", 0.7, 0.9)
    assert t == Transition("a", MemberState.SUSPECT, MemberState.ALIVE, 0.9, "probe_ok")
    s = fd.status("a")
    assert (s.health, s.failures, s.total_failures, s.last_seen, s.dead_at) == (
        MemberState.ALIVE, 0, 1, 0.9, None,
    )  # fmt: skip
    assert fd.on_probe_ok("a", 0.1, 1.0) is None
    fd.on_probe_failed("a", 2.0)
    assert [x.new for x in fd.tick(5.0)] == [MemberState.DEAD]
    t = fd.on_probe_ok("a", 0.1, 6.0)
    assert t == Transition("a", MemberState.DEAD, MemberState.ALIVE, 6.0, "probe_ok")
    assert fd.status("a").last_seen == 6.0


def test_rtt_feeds_estimator_and_probe_timeout() -> None:
    fd: FailureDetector[str] = FailureDetector(1.0)
    fd.add_peer("a", 0.0)
    assert fd.probe_timeout("a") == 0.5  # initial RTO 1 s capped at I/2
    assert fd.probe_timeout("unknown") == 0.5
    fd.on_probe_ok("a", 0.010, 1.0)
    s = fd.status("a")
    assert (s.srtt, s.rttvar) == (0.010, 0.005)
    assert s.rto == 0.2  # RFC 6298 min_rto
    assert fd.probe_timeout("a") == 0.2
    fd.on_probe_failed("a", 2.0)
    assert fd.status("a").rto == 0.4  # backoff doubles
    assert fd.probe_timeout("a") == 0.4
    with pytest.raises(ValueError):
        fd.on_probe_ok("a", -0.1, 3.0)


def test_tick_orders_by_deadline() -> None:
    fd: FailureDetector[str] = FailureDetector(1.0)
    fd.on_probe_failed("late", 1.0)
    fd.on_probe_failed("early", 0.0)
    out = fd.tick(10.0)
    assert [(t.peer, t.at) for t in out] == [("early", 1.5), ("late", 2.5)]
    fd.remove_peer("late")
    assert fd.peers() == ["early"]
    with pytest.raises(KeyError):
        fd.health("late")


# -------------------------------------------------------------- timelines


def simulate(
    fd: FailureDetector[str], rtts: list[float], kill_at: float | None, n_probes: int
) -> list[Transition[str]]:
    """Probe peer "p" every interval; acks after rtts[k] unless killed by then.

    Events at the same instant are handled acks first, then failures; tick is
    called exactly at each suspicion deadline.
    """
    interval = fd.probe_interval
    fd.add_peer("p", 0.0)
    events: list[tuple[float, int, int, str, float]] = []
    seq = 0
    for k in range(n_probes):
        heapq.heappush(events, (k * interval, 2, seq, "send", float(k)))
        seq += 1
    log: list[Transition[str]] = []
    while events:
        deadline = fd.next_deadline()
        if deadline is not None and deadline < events[0][0]:
            log.extend(fd.tick(deadline))
            assert fd.next_deadline() != deadline, "tick did not fire at the deadline"
            continue
        at, _, _, kind, arg = heapq.heappop(events)
        if kind == "send":
            rtt = rtts[int(arg) % len(rtts)]
            timeout = fd.probe_timeout("p")
            answered = kill_at is None or at + rtt < kill_at
            if answered:
                heapq.heappush(events, (at + rtt, 0, seq, "ack", rtt))
                seq += 1
            if not answered or rtt > timeout:
                heapq.heappush(events, (at + timeout, 1, seq, "fail", 0.0))
                seq += 1
        elif kind == "ack":
            t = fd.on_probe_ok("p", arg, at)
            if t is not None:
                log.append(t)
        else:
            t = fd.on_probe_failed("p", at)
            if t is not None:
                log.append(t)
    deadline = fd.next_deadline()
    if deadline is not None:
        log.extend(fd.tick(deadline))
    return log


@PROPS
@given(
    interval=st.sampled_from([0.5, 1.0, 2.0]),
    rtts=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=8),
    kill_frac=st.floats(0.0, 1.0),
    n=st.integers(1, 10),
)
def test_killed_peer_declared_dead_within_three_intervals(
    interval: float, rtts: list[float], kill_frac: float, n: int
) -> None:
    fd: FailureDetector[str] = FailureDetector(interval)
    fd.set_cluster_size(n)
    rtts = [r * interval for r in rtts]
    kill_at = (5 + 10 * kill_frac) * interval
    log = simulate(fd, rtts, kill_at, n_probes=30)
    deaths = [t for t in log if t.new is MemberState.DEAD]
    assert len(deaths) == 1
    assert kill_at < deaths[0].at <= kill_at + 3 * interval + 1e-9
    assert deaths[0].at <= kill_at + fd.detection_bound() + 1e-9
    assert fd.health("p") is MemberState.DEAD


@PROPS
@given(
    n=st.integers(1, 2000),
    rtts=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=8),
    kill_frac=st.floats(0.0, 1.0),
)
def test_detection_bound_for_any_cluster_size(n: int, rtts: list[float], kill_frac: float) -> None:
    fd: FailureDetector[str] = FailureDetector(1.0)
    fd.set_cluster_size(n)
    expected_ts = max(1.5, 1.5 * math.log10(n))
    assert fd.detection_bound() == pytest.approx(1.0 + 0.5 + expected_ts)
    kill_at = 5 + 10 * kill_frac
    deaths = [t for t in simulate(fd, rtts, kill_at, n_probes=30) if t.new is MemberState.DEAD]
    assert len(deaths) == 1
    assert kill_at < deaths[0].at <= kill_at + fd.detection_bound() + 1e-9


@PROPS
@given(
    interval=st.sampled_from([0.5, 1.0, 2.0]),
    rtts=st.lists(st.floats(0.0, 1.49), min_size=1, max_size=8),
)
def test_slow_but_answering_peer_never_dead(interval: float, rtts: list[float]) -> None:
    # Every ack arrives within T_s = 1.5 intervals, often after the probe timeout.
    fd: FailureDetector[str] = FailureDetector(interval)
    rtts = [r * interval for r in rtts]
    log = simulate(fd, rtts, kill_at=None, n_probes=30)
    assert [t for t in log if t.new is MemberState.DEAD] == []
    assert fd.health("p") is MemberState.ALIVE
    if any(r > fd.max_probe_timeout for r in rtts):  # some ack came after its timeout
        assert any(t.new is MemberState.SUSPECT for t in log)


def test_very_slow_peer_beyond_suspicion_timeout_is_declared_dead() -> None:
    # Control for the property above: an ack later than P + T_s cannot save the peer.
    fd: FailureDetector[str] = FailureDetector(1.0)
    log = simulate(fd, [2.5], kill_at=None, n_probes=5)
    assert [t.new for t in log][:3] == [MemberState.SUSPECT, MemberState.DEAD, MemberState.ALIVE]
    assert [t.at for t in log][:3] == [0.5, 2.0, 2.5]  # fail at 0.5, deadline 0.5 + 1.5
