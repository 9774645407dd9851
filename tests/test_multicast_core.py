"""Pure multicast reliability cores and key wrapping (fake clock, hypothesis)."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.multicast import (
    FAILED,
    LOST,
    MAX_WANTED,
    MULTICAST,
    SESSION_TID_BYTES,
    UNICAST,
    GapTracker,
    SessionPlan,
    asked_ranges,
    session_tid,
    to_ranges,
)
from peercrypt.core.multicast_incoming import NAK_LIMIT
from peercrypt.crypto.handshake import Initiator, SessionSecrets, respond
from peercrypt.crypto.identity import KeyPair
from peercrypt.crypto.keywrap import ContentSealer, new_content_key, unwrap, wrap
from peercrypt.crypto.transfer import OpenError

# -- receiver: whose session ------------------------------------------------------------------


@given(
    st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)),
    st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)),
)
def test_a_receivers_session_is_named_by_its_sender_and_its_id(
    a: tuple[bytes, bytes], b: tuple[bytes, bytes]
) -> None:
    """Two senders announcing one id get two sessions at a receiver (and one
    sender's two ids two sessions): the name depends on both, and only on them."""
    assert session_tid(*a) == session_tid(*a)
    assert len(session_tid(*a)) == SESSION_TID_BYTES
    assert (session_tid(*a) == session_tid(*b)) == (a == b)


def test_the_same_id_from_two_senders_names_two_sessions() -> None:
    sid = os.urandom(16)
    real, hostile = os.urandom(32), os.urandom(32)
    assert session_tid(real, sid) != session_tid(hostile, sid)
    assert session_tid(real, sid) != sid  # never the id a peer chose


# -- receiver: gaps and NAKs ---------------------------------------------------------------


def test_late_join_gap_at_the_start_is_naked() -> None:
    t = GapTracker(10, nak_limit=4, holdoff=0.3)
    for i in (5, 6):
        t.on_chunk(i)
    assert t.naks(0.0) == [(0, 4)]  # the lowest missing first, at most nak_limit
    assert t.naks(0.1) == []  # held off: repairs are on their way
    assert t.naks(0.4) == [(0, 4)]


def test_tail_loss_found_through_the_horizon() -> None:
    t = GapTracker(8)
    for i in range(5):
        t.on_chunk(i)
    assert t.naks(0.0) == []
    t.on_chunk(4, now=1.0)
    t.on_horizon(8)  # the sender says all 8 exist; 5..7 may still be on their way
    assert t.naks(1.1) == []
    assert t.naks(1.3) == [(5, 8)]  # nothing arrived for the holdoff: NAK the tail


def test_duplicates_are_counted_not_new() -> None:
    t = GapTracker(3)
    assert t.on_chunk(1) is True
    assert t.on_chunk(1) is False
    assert t.duplicates == 1
    with pytest.raises(ValueError):
        t.on_chunk(3)


def test_a_rejoining_receiver_naks_and_writes_only_what_it_lacks() -> None:
    held = ChunkBitmap(10)
    held.add_range(0, 4)
    held.add(6)
    t = GapTracker(10, nak_limit=8, holdoff=0.3, have=held)
    assert t.resumed == 5 and t.written.cumulative == 4 and t.highest == 6
    assert t.naks(0.0) == [(4, 6)]  # below the highest held, the gap only
    assert t.on_chunk(6, 0.1) is False and t.on_chunk(3, 0.1) is False  # held: not written
    t.on_horizon(10)
    assert t.naks(1.0) == [(4, 6), (7, 10)]  # again after the holdoff; the tail once quiet
    assert held.count == 5  # the caller's bitmap is not changed


class _Looked(ChunkBitmap):
    """A bitmap that counts the looks at it (a membership test or a scan)."""

    looks = 0

    def __contains__(self, index: object) -> bool:
        self.looks += 1
        return super().__contains__(index)

    def next_missing(self, index: int) -> int:
        self.looks += 1
        return super().next_missing(index)


@pytest.mark.parametrize("every", [0, 64, 2])
def test_a_nak_costs_the_same_whatever_the_pattern_of_holes(every: int) -> None:
    """A hostile sender holds back chunk 0 alone (``every`` 0), or every
    64th, or every other chunk of a session of 8,193, and the receiver acks
    at every chunk written: each look for what to NAK touches a bounded
    number of chunks (it walked the 4,096 above the cumulative point one by
    one, 3-6 ms a call), and still NAKs the lowest holes, each once per
    holdoff."""
    total, limit = 8193, 64
    holes = [i for i in range(total) if i == 0 or (every and i % every == 0)]
    t = GapTracker(total, nak_limit=limit, holdoff=0.3)
    for i in sorted(set(range(total)) - set(holes)):
        t.on_chunk(i, 0.0)
    t.received = _Looked.from_bytes(total, t.received.to_bytes())
    now, asked = 1.0, []
    for _ in range(50):  # acks within one holdoff
        before = t.received.looks
        asked.append(t.naks(now))
        assert t.received.looks - before <= 4 * limit + 1, every
        now += 0.001
    first = [i for start, end in asked[0] for i in range(start, end)]
    assert first == holes[:limit]
    assert all(ranges == [] for ranges in asked[1:])  # on their way: not again
    again = [i for start, end in t.naks(now + 0.3) for i in range(start, end)]
    assert again == holes[:limit]  # after the holdoff, the same lowest ones


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 300),
    seed=st.integers(0, 2**32),
    drop=st.floats(0.0, 0.9),
)
def test_naks_repair_any_loss_pattern(total: int, seed: int, drop: float) -> None:
    """Whatever is lost, NAKing and repairing the NAKed chunks completes."""
    rng = random.Random(seed)
    t = GapTracker(total, nak_limit=16, holdoff=0.3)
    for i in range(total):
        if rng.random() >= drop:
            t.on_chunk(i)
            t.on_written(i)
    t.on_horizon(total)
    now = 0.0
    # Each round repairs what it NAKs with probability >= 0.55: 40 rounds
    # beyond the chunk count leave a chance below 1e-13 of a chunk never
    # getting through (5 rounds failed for one chunk at a 75% drop).
    for _ in range(total + 40):
        ranges = t.naks(now)
        assert len(ranges) <= 64 and sum(e - s for s, e in ranges) <= 16
        for s, e in ranges:
            for i in range(s, e):
                assert i not in t.received
                if rng.random() >= drop / 2:  # repairs get lost too
                    t.on_chunk(i)
                    t.on_written(i)
        if t.complete:
            break
        now += 0.5
    else:
        pytest.fail("NAK repair did not complete")


@given(st.sets(st.integers(0, 500)))
def test_to_ranges_round_trip(indices: set[int]) -> None:
    ranges = to_ranges(indices)
    assert {i for s, e in ranges for i in range(s, e)} == indices
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))


# -- sender: pace, repairs, slow and lost members -------------------------------------------


def _plan(total: int = 100, **kw: float) -> SessionPlan:
    plan = SessionPlan(total, window=8, min_window=2, **kw)  # type: ignore[arg-type]
    for name in ("a", "b", "c"):
        plan.join(name, 0.0)
    return plan


def test_pace_follows_the_slowest_multicast_member() -> None:
    plan = _plan()
    assert plan.can_publish() == 8
    plan.on_published(8)
    assert plan.can_publish() == 0
    plan.on_ack("a", 8, [], 0.1)
    plan.on_ack("b", 8, [], 0.1)
    assert plan.can_publish() == 0  # c holds it
    plan.on_ack("c", 3, [], 0.1)
    assert plan.can_publish() == 3


def test_repair_publish_when_many_ask_unicast_when_one() -> None:
    plan = _plan()
    plan.on_published(8)
    plan.on_ack("a", 2, [(2, 4)], 0.1)
    plan.on_ack("b", 2, [(2, 3)], 0.1)
    repairs = plan.plan(0.1)
    assert [(r.index, r.publish, r.to) for r in repairs] == [
        (2, True, ("a", "b")),
        (3, False, ("a",)),
    ]
    assert plan.plan(0.2) == []  # held off
    plan.on_ack("a", 2, [(2, 3)], 0.5)
    assert [(r.index, r.to) for r in plan.plan(0.5)] == [(2, ("a",))]


_RANGES = st.lists(
    st.tuples(st.integers(-5, 3000), st.integers(0, 400)).map(lambda r: (r[0], r[0] + r[1])),
    max_size=64,
)


def _union(naks: list[tuple[int, int]], limit: int) -> list[int]:
    """The chunks NAK ranges name below ``limit``, the naive way."""
    return sorted({i for start, end in naks for i in range(max(0, start), min(end, limit))})


@settings(max_examples=300, deadline=None)
@given(naks=_RANGES, limit=st.integers(0, 3500), cap=st.integers(0, 2000))
def test_what_an_ack_asks_for_is_the_lowest_of_its_union_and_bounded(
    naks: list[tuple[int, int]], limit: int, cap: int
) -> None:
    """Any ranges (overlapping, repeated, past what was published, below 0):
    the chunks asked for are the lowest ``cap`` of their union, given as
    sorted disjoint ranges whose total - the work of building the set of
    them - is at most ``cap``, one range per range given at most."""
    asked = asked_ranges(naks, limit, cap)
    chunks = [i for start, end in asked for i in range(start, end)]
    assert chunks == _union(naks, limit)[:cap]
    assert sum(end - start for start, end in asked) <= cap and len(asked) <= len(naks)
    assert all(start < end for start, end in asked)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(asked))  # merged: not even touching


@settings(max_examples=200, deadline=None)
@given(
    holes=st.sets(st.integers(0, 4095), max_size=400),
    published=st.integers(0, 4096),
    now=st.floats(0.0, 10.0),
)
def test_an_honest_receivers_naks_are_wanted_as_they_are(
    holes: set[int], published: int, now: float
) -> None:
    """What a receiver NAKs (GapTracker, NAK_LIMIT chunks at most) is, at
    the sender, exactly the naive union of its ranges below what was
    published: the cap never bites an honest ack."""
    assert NAK_LIMIT <= MAX_WANTED
    total = 4096
    t = GapTracker(total, nak_limit=NAK_LIMIT)
    for i in range(total):
        if i not in holes:
            t.on_chunk(i, now)
    t.on_horizon(total)
    naks = t.naks(now + 1.0)
    plan = _plan(total)
    plan.on_published(published)
    plan.on_ack("a", 0, naks, now)
    assert sorted(plan.members["a"].wanted) == _union(naks, published)


def test_an_ack_of_overlapping_ranges_asks_for_a_bounded_set() -> None:
    """A hostile member's McAck of 317 bytes: one 4,096-chunk range 64
    times. The sender takes the lowest MAX_WANTED chunks it names, no more
    (it built a set over 64 x 4,096 chunks, 13 ms an ack, and kept up to
    262,144 chunks wanted where the ranges differed)."""
    plan = _plan(300_000)
    plan.on_published(300_000)
    plan.on_ack("a", 0, [(0, 4096)] * 64, 0.1)
    assert plan.members["a"].wanted == set(range(MAX_WANTED))
    plan.on_ack("a", 0, [(i * 4096, (i + 1) * 4096) for i in range(64)], 0.2)
    assert plan.members["a"].wanted == set(range(MAX_WANTED))


def test_nak_of_a_first_publication_halves_the_window_once() -> None:
    plan = _plan()
    plan.on_published(8)
    plan.on_ack("a", 4, [(4, 6)], 0.1)
    assert plan.window == 4 and plan.decreases == 1
    plan.on_ack("b", 4, [(4, 6)], 0.1)
    assert plan.window <= 5 and plan.decreases == 1  # once per window (acks still grow it)


def test_ack_interval_is_a_quarter_of_the_window_down_to_one() -> None:
    """Receivers ack every window/4 chunks: at the minimum window the pace
    still moves with every chunk written, not with the ack timer."""
    plan = SessionPlan(100_000, window=64, min_window=4)
    plan.join("a", 0.0)
    assert plan.ack_interval == 16
    seen = []
    for step in range(30):  # a first publication lost in every window
        plan.on_published(plan.can_publish())
        p = plan.published
        plan.on_ack("a", p - 4, [(p - 4, p - 3)], 0.1 * step)
        seen.append((plan.window, plan.ack_interval))
    assert all(interval == max(1, window // 4) for window, interval in seen)
    assert seen[-1] == (4, 1)
    # Each step is one round trip (its ack passes what was published at the
    # last decrease), so the window halves every step: 64, 32, 16, 8, 4.
    assert [i for _, i in seen[:7]] == [8, 4, 2, 1, 1, 1, 1]


def test_slow_member_is_moved_to_unicast_after_the_grace() -> None:
    plan = _plan(slow_grace=1.0)
    plan.on_published(8)
    for now in (0.1, 0.6, 1.2):
        plan.on_ack("a", 8, [], now)
        plan.on_ack("b", 8, [], now)
        plan.on_ack("c", 0, [], now)
    assert plan.members["c"].state == UNICAST and plan.demotions == 1
    assert plan.can_publish() == 8  # c no longer holds the others back
    plan.on_ack("c", 16, [], 2.0)
    assert plan.members["c"].state == UNICAST  # a demoted member stays demoted


def test_member_naking_too_much_is_moved_to_unicast() -> None:
    plan = _plan(max_nak_pct=20.0)
    plan.on_published(16)
    plan.on_ack("c", 0, [(0, 4)], 0.1)
    assert plan.members["c"].state == UNICAST  # 4 of 16 > 20 %


def test_silent_member_is_lost_then_failed_and_late_join_catches_up() -> None:
    plan = _plan(lost_after=2.0, stall_timeout=5.0)
    plan.on_published(8)
    plan.on_ack("a", 8, [], 1.0)
    plan.on_ack("b", 8, [], 1.0)
    assert plan.tick(2.5) == [("c", LOST)]
    assert plan.can_publish() == 8  # the lost one does not hold the pace
    plan.on_ack("a", 8, [], 4.0)
    plan.on_ack("b", 8, [], 4.0)
    assert plan.tick(5.5) == [("c", FAILED)]
    plan.join("d", 6.0)
    assert plan.members["d"].state == UNICAST  # joined late: catches up by repairs
    plan.on_ack("d", 8, [], 6.1)
    assert plan.members["d"].state == MULTICAST


def test_a_member_verifying_for_long_is_neither_lost_nor_stalled() -> None:
    """Acks of every chunk while it verifies (a big file's hash, a folder
    being stored) keep it alive past the stall timeout; silence does not."""
    plan = _plan(total=8, lost_after=2.0, stall_timeout=5.0)
    plan.on_published(8)
    for name in ("a", "b", "c"):
        plan.on_ack(name, 8, [], 1.0)
    now = 1.0
    while now < 20.0:
        now += 0.5
        plan.on_ack("a", 8, [], now)  # verifying
        plan.on_ack("b", 8, [], now)
        assert ("a", FAILED) not in plan.tick(now)
    assert plan.members["a"].state != FAILED and plan.members["a"].state != LOST
    assert plan.members["c"].state == FAILED  # silent: lost, then failed


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), members=st.integers(1, 5), total=st.integers(1, 200))
def test_simulated_session_completes_with_bounded_state(
    seed: int, members: int, total: int
) -> None:
    """Lossy delivery to several receivers: publishing and repairs finish the
    file for everyone; per-member state stays bounded by the NAK limit."""
    rng = random.Random(seed)
    plan = SessionPlan(total, window=16, min_window=2)
    trackers = {f"r{i}": GapTracker(total, nak_limit=16) for i in range(members)}
    for name in trackers:
        plan.join(name, 0.0)
    loss = {name: rng.random() * 0.5 for name in trackers}
    now = 0.0
    for _ in range(2000):
        now += 0.05
        delivered: list[tuple[int, tuple[str, ...]]] = []
        for _ in range(plan.can_publish()):
            delivered.append((plan.published, tuple(trackers)))
            plan.on_published()
        for r in plan.plan(now):
            delivered.append((r.index, tuple(trackers) if r.publish else r.to))
        for index, to in delivered:
            for name in to:
                if rng.random() >= loss[name]:
                    trackers[name].on_chunk(index)
                    trackers[name].on_written(index)
        for name, t in trackers.items():
            t.on_horizon(plan.published)
            ranges = t.naks(now)
            plan.on_ack(name, t.written.cumulative, ranges, now)
            assert len(plan.members[name].wanted) <= 16
            assert len(plan.members[name].repaired_at) <= 16 + 4 * plan.max_window
        if all(t.complete for t in trackers.values()):
            break
    else:
        pytest.fail("the simulated session did not complete")
    assert plan.published == total


# -- keys -----------------------------------------------------------------------------------


def test_wrap_unwrap_and_chunk_sealing() -> None:
    sid, key = os.urandom(16), new_content_key()
    sender, receiver = _exchange(sid)
    wrapped = wrap(sender, sid, key)
    assert key not in wrapped
    assert unwrap(receiver, sid, wrapped) == key
    sealer, opener = ContentSealer(sid, key), ContentSealer(sid, key)
    nonce, sealed = sealer.seal_chunk(3, False, b"hello")
    assert opener.open_chunk(3, False, nonce, sealed) == b"hello"
    for index, last in ((4, False), (3, True)):
        with pytest.raises(OpenError):
            opener.open_chunk(index, last, nonce, sealed)  # AAD binds index and last
    with pytest.raises(OpenError):
        ContentSealer(os.urandom(16), key).open_chunk(3, False, nonce, sealed)
    assert sealer.seal_chunk(3, False, b"hello")[0] != nonce  # a fresh nonce per seal


def test_chunk_opened_into_a_reused_buffer() -> None:
    sid, key = os.urandom(16), new_content_key()
    sealer, opener = ContentSealer(sid, key), ContentSealer(sid, key)
    plain = os.urandom(4096)
    nonce, sealed = sealer.seal_chunk(5, True, plain)
    out = bytearray(b"\xff" * len(plain))  # what a reused buffer held before
    opener.open_chunk_into(5, True, nonce, memoryview(sealed), out)
    assert out == plain
    tampered = bytearray(sealed)
    tampered[100] ^= 1
    for args in ((5, True, nonce, bytes(tampered)), (5, False, nonce, sealed)):
        with pytest.raises(OpenError):
            opener.open_chunk_into(*args, bytearray(len(plain)))
    with pytest.raises(OpenError):  # a buffer of another length is refused, not overrun
        opener.open_chunk_into(5, True, nonce, sealed, bytearray(len(plain) - 1))


def test_unwrap_with_another_key_or_tampered_fails() -> None:
    sid, key = os.urandom(16), new_content_key()
    sender, receiver = _exchange(sid)
    _, eve = _exchange(sid)  # a co-receiver with its own exchange
    wrapped = wrap(sender, sid, key)
    with pytest.raises(OpenError):
        unwrap(eve, sid, wrapped)
    with pytest.raises(OpenError):
        unwrap(receiver, os.urandom(16), wrapped)  # bound to the session
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(OpenError):
        unwrap(receiver, sid, tampered)


def _exchange(sid: bytes) -> tuple[SessionSecrets, SessionSecrets]:
    """(sender's, receiver's) secrets of one authenticated join."""
    sender, receiver = KeyPair.from_seed(os.urandom(32)), KeyPair.from_seed(os.urandom(32))
    init = Initiator(sender)
    answer = respond(sid, receiver, sender.public, init.public)
    return init.finish(sid, answer.static_pub, answer.eph_pub, answer.proof), answer.secrets


def test_a_member_that_never_finishes_verifying_fails_after_the_verify_limit() -> None:
    """A member acking every chunk for ever (a hostile one, which never
    sends its verdict) keeps the session open only until the verify limit,
    then its stall timeout: one member never holds the sender for ever."""
    plan = _plan(total=8, lost_after=2.0, stall_timeout=5.0, verify_limit=30.0)
    plan.on_published(8)
    now, failed_at = 1.0, None
    while now < 100.0 and failed_at is None:
        plan.on_ack("a", 8, [], now)
        if ("a", FAILED) in plan.tick(now):
            failed_at = now
        now += 0.5
    assert failed_at is not None and 30.0 <= failed_at <= 1.0 + 30.0 + 5.0 + 0.5, failed_at
    assert "no progress" in plan.members["a"].reason
