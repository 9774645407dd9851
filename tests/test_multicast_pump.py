"""A multicast session end to end in memory: the sender's sans-IO
MulticastOutgoing, several receivers, each receiver's copy of every message
dropped, duplicated, delayed or reordered as hypothesis chooses, paced by
grants or not, over PUB or as datagrams, receivers restarted mid-session;
every receiver must end with the content (checked by hash, and verified by
the session), each chunk written once, and every chunk read and published
for the first time exactly once."""

from __future__ import annotations

import os

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.testing.multicast_pump import FRAGMENT, SessionResult, pump_session
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
    assert r.done, f"not done at t={r.now:.2f}: {r.code} {r.results}"
    _check(r, content)


def _check(r: SessionResult, content: bytes) -> None:
    want = blake3.blake3(content).digest()
    assert r.session.digest == want  # hashed as first published, in order
    for n, (delivered, writes) in enumerate(zip(r.delivered, r.writes, strict=True)):
        assert blake3.blake3(delivered).digest() == want
        assert set(writes.values()) == {1} and len(writes) == r.session.total
        assert r.results[f"r{n}"].code == "ok"
    assert r.first_publications == r.session.total  # read and sealed once
    plan = r.session.plan
    assert plan.min_window <= plan.window <= plan.max_window


@settings(max_examples=30, deadline=None)
@given(
    receivers=st.integers(1, 3),
    chunks=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    p_drop=st.floats(0, 0.2),
    p_dup=st.floats(0, 0.2),
    p_delay=st.floats(0, 0.3),
    datagrams=st.booleans(),
    rate=st.sampled_from([20 * CHUNK, 200 * CHUNK]),
)
def test_paced_sessions_over_pub_or_datagrams_complete_within_their_grants(
    receivers: int,
    chunks: int,
    seed: int,
    p_drop: float,
    p_dup: float,
    p_delay: float,
    datagrams: bool,
    rate: int,
) -> None:
    content = os.urandom(chunks * CHUNK - 3)
    down = [Channel.make(seed + r, [], p_drop, p_dup, p_delay) for r in range(receivers)]
    up = [Channel.make(seed + 50 + r, [], p_drop, p_dup, p_delay) for r in range(receivers)]
    r = pump_session(content, CHUNK, down, up, rate=rate, datagrams=datagrams)
    assert r.done, f"not done at t={r.now:.2f}: {r.code} {r.results}"
    _check(r, content)
    # Never more sent than granted, but for the one chunk a step may overdraw.
    assert r.session.allowance >= (0 if not datagrams else -CHUNK - FRAGMENT)


@settings(max_examples=30, deadline=None)
@given(
    receivers=st.integers(2, 3),
    chunks=st.integers(8, 60),
    seed=st.integers(0, 2**32),
    p_drop=st.floats(0, 0.2),
    after=st.integers(1, 7),
    datagrams=st.booleans(),
)
def test_a_restarted_receiver_rejoins_and_writes_only_what_it_lacked(
    receivers: int, chunks: int, seed: int, p_drop: float, after: int, datagrams: bool
) -> None:
    """Receiver 0 is killed and restarted mid-session (issue: a restarted
    multicast receiver rejoins and gets only what it lacks): it keeps what it
    wrote, is announced to again, and writes each missing chunk once."""
    content = os.urandom(chunks * CHUNK - 3)
    down = [Channel.make(seed + r, [], p_drop) for r in range(receivers)]
    up = [Channel.make(seed + 50 + r, [], p_drop) for r in range(receivers)]
    r = pump_session(
        content, CHUNK, down, up, rate=40 * CHUNK, datagrams=datagrams, restarts=[(0, after)]
    )
    assert r.done, f"not done at t={r.now:.2f}: {r.code} {r.results}"
    _check(r, content)
    assert r.rewritten == 0


def test_a_clean_session_needs_no_repairs_and_keeps_its_window() -> None:
    content = os.urandom(200 * CHUNK)
    down = [Channel.make(r, jitter=False) for r in range(3)]
    up = [Channel.make(10 + r, jitter=False) for r in range(3)]
    r = pump_session(content, CHUNK, down, up)
    assert r.done and r.repairs == 0
    assert r.session.plan.decreases == 0 and r.session.plan.window == r.session.plan.max_window


def test_losses_to_one_receiver_shrink_the_window_and_are_repaired() -> None:
    content = os.urandom(300 * CHUNK)
    down = [Channel.make(1, p_drop=0.1), Channel.make(2), Channel.make(3)]
    up = [Channel.make(10 + r) for r in range(3)]
    r = pump_session(content, CHUNK, down, up)
    assert r.done
    assert r.repairs > 0 and r.session.plan.decreases > 0
    assert all(d == content for d in r.delivered)
