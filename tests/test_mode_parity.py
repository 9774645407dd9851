"""Pure parts of seed parity: AIMD window bounds derived from the ones
given, the live ``congestion`` command's several keys in any order, and the
last partial chunk paced by its real size."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.cli.modes import select_mode
from peercrypt.core.modes import (
    Policy,
    PolicyError,
    apply_congestion,
    derive_windows,
    describe_congestion,
)
from peercrypt.core.outgoing import HashFile, OutgoingTransfer, RequestGrant, SendChunk

kb = st.integers(min_value=1, max_value=1 << 20)
maybe = st.none() | kb


@given(maybe, maybe, maybe, st.tuples(kb, kb, kb).map(sorted))
def test_given_values_are_kept_and_the_result_is_ordered(
    window: int | None, low: int | None, high: int | None, defaults: list[int]
) -> None:
    lo0, w0, hi0 = defaults
    try:
        w, lo, hi = derive_windows(window, low, high, (w0, lo0, hi0))
    except PolicyError:
        given_values = [v for v in (low, window, high) if v is not None]
        assert given_values != sorted(given_values)  # only a real contradiction refuses
        return
    assert 0 < lo <= w <= hi
    for value, got in ((window, w), (low, lo), (high, hi)):
        if value is not None:
            assert got == value
    if high is not None and window is None and low is None and high < w0:
        # The maximum alone, below the default window: the others keep the
        # built-in defaults' shares of it (a window of a quarter, a minimum of
        # a sixteenth of that), the minimum no higher than it was.
        assert (w, lo) == (max(1, high // 4), max(1, min(lo0, w // 16)))
        return
    # A bound not given moves only as far as it must.
    if low is None:
        assert lo == min(lo0, w)
    if high is None:
        assert hi == max(hi0, w)


def test_the_seed_examples() -> None:
    defaults = (4096, 256, 16384)
    assert derive_windows(32, None, None, defaults) == (32, 32, 16384)  # AIMD_WINDOW=32
    assert derive_windows(32, 8, 128, defaults) == (32, 8, 128)  # -w 32 -min-w 8 -max-w 128
    # AIMD_MAX_WINDOW=128 alone (the reference's example): not a fixed window of 128
    assert derive_windows(None, None, 128, defaults) == (32, 2, 128)
    assert derive_windows(None, None, 1024, defaults) == (256, 16, 1024)
    assert derive_windows(None, None, 8192, defaults) == (4096, 256, 8192)  # (nothing moves)
    with pytest.raises(PolicyError, match="-min-w"):
        derive_windows(32, 64, None, defaults)


def test_congestion_keys_in_any_order_give_the_same_policy() -> None:
    pairs = [("max-window", "128"), ("window", "32"), ("min-window", "8"), ("dupack", "off")]
    results = {apply_congestion(Policy(), list(p)) for p in itertools.permutations(pairs)}
    assert len(results) == 1
    policy = results.pop()
    assert (policy.window_kb, policy.min_window_kb, policy.max_window_kb) == (32, 8, 128)
    assert policy.dupack_detect is False
    assert "window 32 KB, min-window 8 KB, max-window 128 KB" in describe_congestion(policy)


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        ([], "KEY VALUE"),
        ([("speed", "1")], "unknown congestion setting 'speed'"),
        ([("window", "0")], "whole number > 0"),
        ([("window", "x")], "whole number > 0"),
        ([("timeout", "maybe")], "expected on or off"),
        (
            [("min-window", "100"), ("max-window", "50")],
            r"^AIMD windows must satisfy 0 < min-window <= window <= max-window "
            r"\(got 100 <= 50 <= 50 KB\)$",
        ),
        ([("window", "2000000")], r"\(1 GiB; got window 2000000\)$"),
        ([("min-window", "2000000")], r"\(1 GiB; got min-window 2000000\)$"),
        ([("window",)], "expected KEY VALUE"),
    ],
)
def test_congestion_errors_name_the_key(pairs: list[tuple[str, ...]], words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        apply_congestion(Policy(), pairs)


def test_the_last_partial_chunk_costs_its_real_size() -> None:
    chunk = 64 * 1024
    t = OutgoingTransfer(
        policy=Policy(mode="token-bucket", rate=1000, burst=chunk),
        size=chunk + 100,
        chunk_size=chunk,
        timeout=5.0,
        now=0.0,
    )
    t.on_accept([], 8, 0.0)
    assert t.poll(0.0) == [RequestGrant(2 * chunk)]
    t.on_grant(chunk)
    assert t.poll(0.0) == [SendChunk(0, False), RequestGrant(chunk)]
    t.on_grant(100)  # exactly what the last chunk holds
    assert t.poll(0.0) == [SendChunk(1, True), HashFile()]  # all sent: the hash, for the Done
    assert t.allowance == 0


@pytest.mark.parametrize(
    ("mode", "options", "selected"),
    [
        (None, {"priority": 3}, "qos"),  # alone, the priority selects qos
        (None, {"priority": 3, "window_kb": 32}, "aimd"),  # beside aimd's, it weighs
        ("aimd", {"priority": 2}, "aimd"),  # a weight of the peer's shared window
        ("parallel", {"priority": 1, "lanes": 2}, "parallel"),
    ],
)
def test_the_priority_weighs_any_mode_and_alone_selects_qos(
    mode: str | None, options: dict[str, object], selected: str
) -> None:
    assert select_mode(mode, options) == selected
