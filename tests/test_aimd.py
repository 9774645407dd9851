"""Tests for peercrypt.core.aimd."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.aimd import KB, AckResult, AimdWindow, TimeoutResult

CHUNK = 16 * KB


def make(**kwargs: object) -> AimdWindow:
    params: dict[str, object] = {
        "initial": 100_000,
        "minimum": 1_000,
        "maximum": 10_000_000,
        "increase": 10_000,
    }
    params.update(kwargs)
    return AimdWindow(**params)  # type: ignore[arg-type]


def dupacks(w: AimdWindow, cumulative: int, count: int, now: float = 0.0) -> list[AckResult]:
    return [w.on_acked(cumulative, now) for _ in range(count)]


# -- construction --------------------------------------------------------------


def test_from_kb_converts_with_1024() -> None:
    w = AimdWindow.from_kb(64, 16, 1024, increase_kb=8, dupack_threshold=5)
    assert (w.initial, w.minimum, w.maximum, w.increase) == (65536, 16384, 1048576, 8192)
    assert w.dupack_threshold == 5
    assert w.window == 65536
    assert w.window_kb == 64.0


def test_defaults() -> None:
    w = AimdWindow(initial=65536, minimum=16384, maximum=1 << 20)
    assert w.increase == 64 * KB
    assert w.decrease_factor == 0.5
    assert w.dupack_threshold == 3
    assert w.timeout_decrease is True
    assert (w.decreases, w.timeouts, w.fast_retransmits, w.dupacks) == (0, 0, 0, 0)
    assert w.in_recovery is False
    assert w.recovery_point is None
    assert len(w.history) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minimum": 0, "initial": 10, "maximum": 100},
        {"minimum": 20, "initial": 10, "maximum": 100},
        {"minimum": 1, "initial": 200, "maximum": 100},
        {"increase": 0},
        {"decrease_factor": 0.0},
        {"decrease_factor": 1.0},
        {"dupack_threshold": 0},
        {"history_len": 0},
        {"history_interval": -1.0},
        {"start_offset": -1},
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(**kwargs)


# -- additive increase ---------------------------------------------------------


def test_increase_formula_per_ack() -> None:
    w = make()
    res = w.on_acked(50_000, 0.0)
    # window += increase * acked / window = 10000 * 50000 / 100000
    assert res == AckResult(
        new_bytes=50_000,
        duplicate=False,
        stale=False,
        fast_retransmit=False,
        decreased=False,
        window=105_000,
    )
    assert w.window == 105_000
    assert w.highest_ack == 50_000


def test_full_window_of_acks_adds_about_increase() -> None:
    w = make()
    expected = 100_000.0
    for i in range(1, 101):  # 100 acks of 1000 bytes = one window's worth
        w.on_acked(i * 1000, 0.0)
        expected += 10_000 * 1000 / expected
    assert w.window == int(expected)
    assert 109_500 <= w.window < 110_000


def test_sub_byte_growth_accumulates() -> None:
    w = make(initial=1_000_000, maximum=2_000_000, increase=100)
    for i in range(1, 3001):  # each ack adds 0.1 byte
        w.on_acked(i * 1000, 0.0)
    assert w.window == pytest.approx(1_000_300, abs=1)


def test_growth_capped_at_maximum() -> None:
    w = make(initial=100_000, maximum=101_000)
    w.on_acked(1_000_000, 0.0)
    assert w.window == 101_000
    w.on_acked(2_000_000, 0.0)
    assert w.window == 101_000


def test_start_offset_is_baseline() -> None:
    w = make(start_offset=5_000_000)
    assert w.highest_ack == 5_000_000
    res = w.on_acked(5_000_000, 0.0)
    assert res.duplicate is True
    res = w.on_acked(5_050_000, 0.0)
    assert res.new_bytes == 50_000


# -- duplicate acks --------------------------------------------------------------


def test_dupack_threshold_is_exactly_three_by_default() -> None:
    w = make()
    w.on_sent(500_000)
    w.on_acked(100_000, 0.0)
    before = w.window
    results = dupacks(w, 100_000, 5)
    assert [r.fast_retransmit for r in results] == [False, False, True, False, False]
    assert [r.decreased for r in results] == [False, False, True, False, False]
    assert [r.duplicate for r in results] == [True] * 5
    assert results[2].window == before // 2
    assert w.window == before // 2
    assert (w.fast_retransmits, w.decreases, w.dupacks) == (1, 1, 5)


def test_configurable_threshold() -> None:
    w = make(dupack_threshold=5)
    w.on_acked(10_000, 0.0)
    results = dupacks(w, 10_000, 6)
    assert [r.fast_retransmit for r in results] == [False, False, False, False, True, False]


def test_new_ack_resets_duplicate_run() -> None:
    w = make()
    w.on_acked(10_000, 0.0)
    dupacks(w, 10_000, 2)
    w.on_acked(20_000, 0.0)
    results = dupacks(w, 20_000, 2)
    assert [r.fast_retransmit for r in results] == [False, False]
    assert w.fast_retransmits == 0
    assert w.dupacks == 4


def test_stale_ack_is_ignored() -> None:
    w = make()
    w.on_acked(10_000, 0.0)
    dupacks(w, 10_000, 2)
    window = w.window
    res = w.on_acked(5_000, 0.0)
    assert res == AckResult(
        new_bytes=0,
        duplicate=False,
        stale=True,
        fast_retransmit=False,
        decreased=False,
        window=window,
    )
    assert w.highest_ack == 10_000
    assert w.dupacks == 2
    # the stale ack neither counted nor reset the run: next duplicate is the 3rd
    assert w.on_acked(10_000, 0.0).fast_retransmit is True


def test_second_run_in_recovery_retransmits_but_does_not_decrease() -> None:
    w = make()
    w.on_sent(1_000_000)
    w.on_acked(100_000, 0.0)
    dupacks(w, 100_000, 3)
    after_first = w.window
    w.on_acked(200_000, 0.0)  # partial ack, still below the recovery point
    assert w.in_recovery is True
    results = dupacks(w, 200_000, 3)
    assert results[2].fast_retransmit is True
    assert results[2].decreased is False
    assert w.window == after_first
    assert (w.fast_retransmits, w.decreases) == (2, 1)


# -- timeouts --------------------------------------------------------------------


def test_timeout_decreases_and_resets_duplicate_run() -> None:
    w = make()
    w.on_acked(10_000, 0.0)
    dupacks(w, 10_000, 2)
    res = w.on_timeout(1.0)
    assert res == TimeoutResult(decreased=True, window=50_500)
    assert (w.timeouts, w.decreases) == (1, 1)
    # the run restarts after the timeout: the 3rd duplicate from now triggers
    results = dupacks(w, 10_000, 3, now=1.5)
    assert [r.fast_retransmit for r in results] == [False, False, True]
    w.on_acked(20_000, 2.0)  # ends recovery (nothing else was sent)
    assert w.in_recovery is False


def test_timeout_detection_can_be_disabled() -> None:
    w = make(timeout_decrease=False)
    for k in range(10):
        res = w.on_timeout(float(k))
        assert res == TimeoutResult(decreased=False, window=100_000)
    assert w.timeouts == 10
    assert w.decreases == 0
    assert w.in_recovery is False


def test_dupack_detection_can_be_disabled() -> None:
    w = make(dupack_threshold=None)
    w.on_acked(10_000, 0.0)
    results = dupacks(w, 10_000, 100)
    assert sum(r.fast_retransmit for r in results) == 0
    assert sum(r.decreased for r in results) == 0
    assert w.window == 101_000
    assert (w.fast_retransmits, w.decreases, w.dupacks) == (0, 0, 100)


# -- recovery --------------------------------------------------------------------


def test_one_decrease_per_round_trip_and_recovery_exit() -> None:
    w = make()
    w.on_sent(300_000)
    w.on_acked(100_000, 0.0)
    dupacks(w, 100_000, 3)
    assert w.in_recovery is True
    assert w.recovery_point == 300_000
    halved = w.window
    # more losses in the same round trip: counted, not acted on
    assert w.on_timeout(0.5) == TimeoutResult(decreased=False, window=halved)
    w.on_sent(400_000)  # sent after the decrease: does not move the recovery point
    assert w.recovery_point == 300_000
    # partial ack: no growth, still in recovery
    res = w.on_acked(250_000, 1.0)
    assert res.new_bytes == 150_000
    assert res.window == halved
    assert w.in_recovery is True
    # reaching the recovery point ends recovery without growth
    res = w.on_acked(300_000, 1.1)
    assert res.window == halved
    assert w.in_recovery is False
    assert w.recovery_point is None
    # the next ack grows again
    res = w.on_acked(350_000, 1.2)
    assert res.window > halved
    # and a new loss event decreases again
    dupacks(w, 350_000, 3)
    assert w.decreases == 2
    assert w.recovery_point == 400_000


def test_window_never_below_minimum() -> None:
    w = make(initial=8_000, minimum=3_000)
    expected = [4_000, 3_000, 3_000, 3_000]
    got = []
    for k in range(4):
        w.on_timeout(float(k))
        got.append(w.window)
        w.on_acked(w.sent_high + 1_000, float(k) + 0.5)  # ends recovery, no growth
    assert got == expected
    assert w.decreases == 4


def test_sawtooth_on_scripted_transfer() -> None:
    """Window per round trip: linear climb, halve on a loss, climb again."""
    w = make(initial=20 * CHUNK, minimum=4 * CHUNK, maximum=1000 * CHUNK, increase=CHUNK)
    now = 0.0
    sent = 0
    per_round: list[int] = []
    for rnd in range(30):
        now += 0.1
        n_chunks = w.window // CHUNK
        start = sent
        w.on_sent(start + n_chunks * CHUNK)
        sent = start + n_chunks * CHUNK
        if rnd % 10 == 9:  # first chunk of this round lost
            for _ in range(n_chunks - 1):
                w.on_acked(start, now)
            w.on_acked(sent, now + 0.05)  # retransmission fills the hole
        else:
            for k in range(1, n_chunks + 1):
                w.on_acked(start + k * CHUNK, now)
        per_round.append(w.window)
    diffs = [b - a for a, b in itertools.pairwise(per_round)]
    for i, d in enumerate(diffs, start=1):
        if i % 10 == 9:
            assert d < 0, (i, per_round)
            assert per_round[i] == per_round[i - 1] // 2
        else:
            assert d > 0, (i, per_round)
            assert d <= CHUNK
    assert w.decreases == 3
    assert w.fast_retransmits == 3
    # history shows the peaks and troughs
    peaks = [per_round[i - 1] for i in (9, 19, 29)]
    hist = list(w.history)
    for peak in peaks:
        k = next(j for j, (_, win) in enumerate(hist) if win == peak)
        assert hist[k + 1][1] == peak // 2


# -- history ----------------------------------------------------------------------


def test_history_is_bounded() -> None:
    w = make(history_len=50, history_interval=0.0, maximum=10**12)
    for i in range(1, 20_001):
        w.on_acked(i * 1000, i * 0.001)
    assert len(w.history) == 50
    assert w.history[-1] == (20.0, w.window)
    assert w.history.maxlen == 50


def test_history_decimated_by_interval() -> None:
    w = make(history_interval=1.0, maximum=10**12)
    for i in range(1, 1001):  # 10 s of acks every 10 ms
        w.on_acked(i * 1000, i * 0.01)
    times = [t for t, _ in w.history]
    assert len(times) == 10
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))


def test_history_records_peak_and_trough_on_decrease() -> None:
    w = make(history_interval=100.0)
    w.on_acked(1000, 0.0)  # first growth sample at t=0
    w.on_acked(50_000, 1.0)  # growth not sampled (interval)
    peak = w.window
    w.on_timeout(2.0)
    assert list(w.history)[-2:] == [(2.0, peak), (2.0, peak // 2)]


# -- properties -------------------------------------------------------------------

_event = st.one_of(
    st.tuples(st.just("ack"), st.integers(min_value=1, max_value=300_000)),
    st.tuples(st.just("dup"), st.just(0)),
    st.tuples(st.just("stale"), st.integers(min_value=1, max_value=1000)),
    st.tuples(st.just("send"), st.integers(min_value=1, max_value=500_000)),
    st.tuples(st.just("timeout"), st.just(0)),
)


def _run(w: AimdWindow, events: list[tuple[str, int]]) -> list[int]:
    windows = [w.window]
    now = 0.0
    for kind, value in events:
        now += 0.01
        in_recovery = w.in_recovery
        if kind == "ack":
            res = w.on_acked(w.highest_ack + value, now)
            assert res.new_bytes == value
            assert res.decreased is False
        elif kind == "dup":
            res = w.on_acked(w.highest_ack, now)
            assert res.duplicate is True
            if res.decreased:
                assert in_recovery is False
                assert res.fast_retransmit is True
        elif kind == "stale":
            if w.highest_ack > 0:
                before = w.window
                res = w.on_acked(max(0, w.highest_ack - value), now)
                assert res.stale is True
                assert res.window == before
        elif kind == "send":
            w.on_sent(w.sent_high + value)
        else:
            tres = w.on_timeout(now)
            if in_recovery:
                assert tres.decreased is False
        assert w.minimum <= w.window <= w.maximum
        windows.append(w.window)
    return windows


@settings(max_examples=100, deadline=None)
@given(
    minimum=st.integers(min_value=1, max_value=100_000),
    spread=st.integers(min_value=0, max_value=1_000_000),
    pos=st.floats(min_value=0.0, max_value=1.0),
    increase=st.integers(min_value=1, max_value=200_000),
    threshold=st.integers(min_value=1, max_value=5),
    events=st.lists(_event, max_size=80),
)
def test_window_always_within_bounds(
    minimum: int,
    spread: int,
    pos: float,
    increase: int,
    threshold: int,
    events: list[tuple[str, int]],
) -> None:
    maximum = minimum + spread
    initial = minimum + int(spread * pos)
    w = AimdWindow(
        initial=initial,
        minimum=minimum,
        maximum=maximum,
        increase=increase,
        dupack_threshold=threshold,
        history_len=16,
    )
    _run(w, events)
    assert w.decreases <= w.fast_retransmits + w.timeouts
    assert len(w.history) <= 16
    assert w.timeouts == sum(1 for k, _ in events if k == "timeout")
    assert w.dupacks == sum(1 for k, _ in events if k == "dup")


@settings(max_examples=60, deadline=None)
@given(events=st.lists(_event, max_size=80))
def test_disabled_detectors_never_decrease(events: list[tuple[str, int]]) -> None:
    w = make(dupack_threshold=None, timeout_decrease=False)
    windows = _run(w, events)
    assert all(b >= a for a, b in itertools.pairwise(windows))
    assert (w.decreases, w.fast_retransmits) == (0, 0)
    assert w.in_recovery is False


@settings(max_examples=60, deadline=None)
@given(events=st.lists(_event, max_size=80))
def test_decrease_halves_or_hits_minimum(events: list[tuple[str, int]]) -> None:
    w = make()
    now = 0.0
    for kind, value in events:
        now += 0.01
        before = w.window_kb * KB  # exact: KB is a power of two
        if kind == "timeout":
            decreased = w.on_timeout(now).decreased
        elif kind == "dup":
            decreased = w.on_acked(w.highest_ack, now).decreased
        elif kind == "ack":
            decreased = w.on_acked(w.highest_ack + value, now).decreased
        else:
            w.on_sent(w.sent_high + value)
            decreased = False
        if decreased:
            assert w.window_kb * KB == max(float(w.minimum), before * 0.5)
        else:
            assert w.window_kb * KB >= before


def test_sack_loss_decreases_once_per_round_trip_unless_dupack_detection_is_off() -> None:
    w = AimdWindow(initial=100 * KB, minimum=10 * KB, maximum=1000 * KB)
    w.on_sent(200 * KB)
    assert w.on_loss(1.0) is True
    assert w.window == 50 * KB
    assert w.on_loss(1.1) is False  # same round trip: in recovery
    assert (w.decreases, w.fast_retransmits) == (1, 2)
    off = AimdWindow(initial=100 * KB, minimum=10 * KB, maximum=1000 * KB, dupack_threshold=None)
    assert off.on_loss(1.0) is False
    assert (off.window, off.decreases) == (100 * KB, 0)


def test_reported_losses_can_decrease_without_the_dupack_detector() -> None:
    """Multicast: no duplicate acks (the floor repeats), losses come as NAKs."""
    w = AimdWindow(
        initial=64, minimum=4, maximum=64, increase=1, dupack_threshold=None, loss_decrease=True
    )
    for _ in range(5):
        assert w.on_acked(0, 0.0).duplicate
    assert w.window == 64 and w.fast_retransmits == 0
    w.on_sent(64)
    assert w.on_loss(0.1) is True
    assert w.window == 32
