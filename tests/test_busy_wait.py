"""Tests for peercrypt.core.busy_wait: which refusals a send waits out, and
that the wait is bounded by the send's --timeout once none of this node's
sends to the receiver runs, with pauses that never shrink towards a spin."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.busy_wait import PAUSE_INITIAL, PAUSE_MAX, BusyWait, not_now

PROPS = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize("code", ["busy"])
def test_a_busy_receiver_says_not_now(code: str) -> None:
    assert not_now(code)


@pytest.mark.parametrize(
    "code",
    # the receiver's final answers (actors/receiver.py): policy, bad offers,
    # space, another node's key, a file in its final check, and anything new
    ["no-space", "bad-name", "bad-offer", "wrong-receiver", "verifying", "duplicate",
     "unsupported", "io", "quota", "refused", ""],
)  # fmt: skip
def test_every_other_refusal_is_final(code: str) -> None:
    assert not not_now(code)


def forever_busy(wait: BusyWait, start: float, ours_until: float) -> list[tuple[float, float]]:
    """A receiver that answers every offer "busy" at once; a send of this
    node runs there until ``ours_until``. (when, pause) of every offer
    again, until the wait gives up."""
    now, made = start, []
    for _ in range(10_000):
        pause = wait.refused(now, ours_running=now < ours_until)
        if pause is None:
            return made
        made.append((now, pause))
        now += pause
    raise AssertionError("the wait never gave up")


@PROPS
@given(timeout=st.floats(0.1, 600), seed=st.integers(0, 2**32))
def test_alone_it_gives_up_once_the_timeout_passed_and_offers_a_bounded_number_of_times(
    timeout: float, seed: int
) -> None:
    wait = BusyWait(timeout=timeout, rng=random.Random(seed))
    made = forever_busy(wait, 100.0, ours_until=0.0)
    end = made[-1][0] + made[-1][1]  # the refusal that ended the wait
    assert end == pytest.approx(100.0 + timeout)  # not before, not after
    for _, pause in made:
        assert 0 < pause <= min(timeout, PAUSE_MAX) + 1e-9  # (the last: what is left of it)
    # Every pause but the last (cut to the deadline) is at least half its
    # ceiling: the ceilings double from PAUSE_INITIAL, so the offers are a
    # few doublings plus the timeout over half the largest pause.
    cap = max(PAUSE_INITIAL, min(timeout, PAUSE_MAX))
    doublings = math.ceil(math.log2(cap / PAUSE_INITIAL))
    assert len(made) <= doublings + 2 + timeout / (cap / 2)
    assert all(pause >= PAUSE_INITIAL / 2 for _, pause in made[:-1])


@PROPS
@given(
    timeout=st.floats(0.1, 60),
    ours_for=st.floats(0, 3600),
    seed=st.integers(0, 2**32),
)
def test_while_a_send_of_ours_runs_there_the_timeout_waits_and_starts_after_it(
    timeout: float, ours_for: float, seed: int
) -> None:
    wait = BusyWait(timeout=timeout, rng=random.Random(seed))
    made = forever_busy(wait, 100.0, ours_until=100.0 + ours_for)
    end = made[-1][0] + made[-1][1]
    alone = [when for when, _ in made if when >= 100.0 + ours_for]
    # It gave up exactly --timeout after the first refusal with none of ours running.
    assert end == pytest.approx((alone[0] if alone else end) + timeout)
    assert end >= 100.0 + ours_for + timeout - 1e-6
    running = [pause for when, pause in made if when < 100.0 + ours_for]
    # While ours runs there is no deadline, and the pauses never shrink
    # with a small --timeout (send's least: 0.1 s): no spin, however long.
    assert all(
        PAUSE_INITIAL / 2 <= p <= max(PAUSE_INITIAL, min(timeout, PAUSE_MAX)) for p in running
    )
    assert len(running) <= 2 + ours_for / (PAUSE_INITIAL / 2)


def test_pauses_grow_from_the_initial_one_to_the_cap_and_never_near_zero() -> None:
    wait = BusyWait(timeout=3600.0, rng=random.Random(7))
    pauses = [wait.refused(float(i), ours_running=True) for i in range(12)]
    assert PAUSE_INITIAL / 2 <= pauses[0] <= PAUSE_INITIAL  # type: ignore[operator]
    ceiling = PAUSE_INITIAL
    for pause in pauses:
        assert pause is not None and ceiling / 2 <= pause <= ceiling
        ceiling = min(PAUSE_MAX, ceiling * 2)
    assert wait.refusals == 12


def test_a_send_of_ours_running_again_resets_the_deadline() -> None:
    wait = BusyWait(timeout=10.0, rng=random.Random(1))
    assert wait.refused(0.0, ours_running=False) is not None
    assert wait.refused(9.0, ours_running=True) is not None  # ours ran again meanwhile
    assert wait.refused(15.0, ours_running=False) is not None  # 6 s alone: not yet
    assert wait.refused(25.0, ours_running=False) is None  # 10 s alone since 15.0
