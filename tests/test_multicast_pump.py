"""A multicast session end to end in memory: one sender plan, several
receivers, each receiver's copy of every message dropped, duplicated,
delayed or reordered as hypothesis chooses; every receiver must end with
the content (checked by hash), each chunk written once, and every chunk
read and published for the first time exactly once."""

from __future__ import annotations

import os

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.testing.multicast_pump import pump_session
from peercrypt.testing.transfer_pump import FATES, Channel

CHUNK = 1024


@settings(max_examples=50, deadline=None)
@given(
    receivers=st.integers(1, 4),
    chunks=st.integers(1, 60),
    seed=st.integers(0, 2**32),
    script=st.lists(st.sampled_from(FATES), max_size=30),
    p_drop=st.floats(0, 0.3),
    p_dup=st.floats(0, 0.2),
    p_delay=st.floats(0, 0.3),
    p_ack_drop=st.floats(0, 0.3),
)
def test_every_receiver_gets_the_content_over_bad_channels(
    receivers: int,
    chunks: int,
    seed: int,
    script: list[str],
    p_drop: float,
    p_dup: float,
    p_delay: float,
    p_ack_drop: float,
) -> None:
    content = os.urandom(chunks * CHUNK - 7)
    down = [
        Channel.make(seed + r, script if r == 0 else [], p_drop, p_dup, p_delay)
        for r in range(receivers)
    ]
    up = [Channel.make(seed + 100 + r, [], p_ack_drop, p_dup, p_delay) for r in range(receivers)]
    r = pump_session(content, CHUNK, down, up)
    assert r.done, f"not done at t={r.now:.2f}"
    want = blake3.blake3(content).digest()
    for delivered, writes in zip(r.delivered, r.writes, strict=True):
        assert blake3.blake3(delivered).digest() == want
        assert set(writes.values()) == {1} and len(writes) == r.plan.total
    assert r.first_publications == r.plan.total  # read and sealed once
    assert r.plan.min_window <= r.plan.window <= r.plan.max_window


def test_a_clean_session_needs_no_repairs_and_keeps_its_window() -> None:
    content = os.urandom(200 * CHUNK)
    down = [Channel.make(r, jitter=False) for r in range(3)]
    up = [Channel.make(10 + r, jitter=False) for r in range(3)]
    r = pump_session(content, CHUNK, down, up)
    assert r.done and r.repairs == 0
    assert r.plan.decreases == 0 and r.plan.window == r.plan.max_window


def test_losses_to_one_receiver_shrink_the_window_and_are_repaired() -> None:
    content = os.urandom(300 * CHUNK)
    down = [Channel.make(1, p_drop=0.1), Channel.make(2), Channel.make(3)]
    up = [Channel.make(10 + r) for r in range(3)]
    r = pump_session(content, CHUNK, down, up)
    assert r.done
    assert r.repairs > 0 and r.plan.decreases > 0
    assert all(d == content for d in r.delivered)
