"""Tests for SendWindow and ReceiveWindow, alone and pumped into each other.

The end-to-end part is an in-memory simulation in the style of aioquic's tests:
two pure state machines, a fake clock (plain floats) and a simulated channel
that drops, duplicates, delays and reorders every message according to
hypothesis-chosen fates (then a seeded RNG), with no sockets and no sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.incoming import (
    STILL_WRITING_AFTER,
    WAIT_LIMIT,
    WAITING_REPEAT,
    WINDOW_UPDATE_AFTER,
    IncomingTransfer,
)
from peercrypt.core.receive_window import (
    CREDIT_GRACE,
    INITIAL_CREDIT,
    Arrival,
    ReceiveWindow,
    allowance_bytes,
    node_credit,
    receiving,
)
from peercrypt.core.rtt import RttEstimator
from peercrypt.core.send_window import SendWindow
from peercrypt.testing.transfer_pump import FATES, Channel


@dataclass
class Result:
    done: bool
    now: float
    writes: Counter[int]
    sender: SendWindow
    receiver: ReceiveWindow
    max_in_flight: int
    sent: Counter[int]


def simulate(
    total: int,
    window: int,
    data_channel: Channel,
    ack_channel: Channel,
    write_delay: float = 0.001,
    max_events: int = 200_000,
) -> Result:
    """Pump a SendWindow and a ReceiveWindow into each other until the sender is done."""
    sender = SendWindow(total, RttEstimator(initial_rto=0.2, min_rto=0.05))
    receiver = ReceiveWindow(total, window, ordered=False)  # acks reordered too
    sender.on_accept([], receiver.window)
    AckFields = tuple[int, list[tuple[int, int]], int]
    # (time, seq, kind, chunk index, ack contents as they were when the ack was sent)
    events: list[tuple[float, int, str, int, AckFields | None]] = []
    seq = itertools.count()
    writes: Counter[int] = Counter()
    sent: Counter[int] = Counter()
    now = 0.0
    max_in_flight = 0

    def pump() -> None:
        nonlocal max_in_flight
        for index in sender.next_to_send(now):
            sent[index] += 1
            for at in data_channel.arrivals(now):
                heapq.heappush(events, (at, next(seq), "chunk", index, None))
        max_in_flight = max(max_in_flight, sender.in_flight)
        assert sender.in_flight <= sender.window

    def send_ack() -> None:
        fields = receiver.ack_fields()
        for at in ack_channel.arrivals(now):
            heapq.heappush(events, (at, next(seq), "ack", 0, fields))

    pump()
    for _ in range(max_events):
        if sender.done:
            break
        deadline = sender.next_deadline()
        if events and (deadline is None or events[0][0] <= deadline):
            now, _, kind, index, ack = heapq.heappop(events)
            if kind == "chunk":
                arrival = receiver.on_chunk(index, index == total - 1, now)
                assert arrival is not Arrival.INVALID
                if arrival is Arrival.NEW:
                    writes[index] += 1
                    heapq.heappush(events, (now + write_delay, next(seq), "written", index, None))
                else:
                    send_ack()
            elif kind == "written":
                receiver.on_written(index)
                send_ack()
            else:
                assert ack is not None
                cumulative, sack, credit = ack
                sender.on_ack(cumulative, sack, credit, now)
        elif deadline is not None:
            now = max(now, deadline)
            before = sender.timeouts
            sender.on_timer(now)
            if sender.timeouts == before:  # float rounding at the deadline itself
                now += 1e-9
                sender.on_timer(now)
        else:
            break  # nothing in flight, nothing scheduled: stuck
        pump()
    return Result(sender.done, now, writes, sender, receiver, max_in_flight, sent)


def make_channel(
    seed: int, script: list[str], p_drop: float, p_dup: float, p_delay: float, jitter: bool = True
) -> Channel:
    return Channel.make(seed, script, p_drop, p_dup, p_delay, jitter=jitter)


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 60),
    window=st.integers(1, 16),
    seed=st.integers(0, 2**32),
    script=st.lists(st.sampled_from(FATES), max_size=40),
    ack_script=st.lists(st.sampled_from(FATES), max_size=20),
    p_drop=st.floats(0, 0.3),
    p_dup=st.floats(0, 0.2),
    p_delay=st.floats(0, 0.3),
    p_ack_drop=st.floats(0, 0.3),
)
def test_every_chunk_is_written_exactly_once_over_a_bad_channel(
    total: int,
    window: int,
    seed: int,
    script: list[str],
    ack_script: list[str],
    p_drop: float,
    p_dup: float,
    p_delay: float,
    p_ack_drop: float,
) -> None:
    data = make_channel(seed, script, p_drop, p_dup, p_delay)
    acks = make_channel(seed + 1, ack_script, p_ack_drop, p_dup, p_delay)
    r = simulate(total, window, data, acks)
    assert r.done, f"sender not done at t={r.now:.2f}: acked {r.sender.acked.count}/{total}"
    assert r.receiver.complete
    assert sorted(r.writes) == list(range(total))
    assert set(r.writes.values()) == {1}
    assert r.max_in_flight <= window
    assert r.sender.in_flight == 0
    # Every chunk went out at least once; losses were made good by retransmissions.
    assert sum(r.sent.values()) == total + r.sender.retransmits


def test_a_clean_channel_needs_no_retransmissions() -> None:
    data = make_channel(1, [], 0.0, 0.0, 0.0, jitter=False)
    acks = make_channel(2, [], 0.0, 0.0, 0.0, jitter=False)
    r = simulate(200, 16, data, acks)
    assert r.done
    assert r.sender.retransmits == 0
    assert r.sender.timeouts == 0
    assert r.max_in_flight == 16
    assert r.sender.rtt.samples > 0
    assert r.receiver.duplicates == 0


def test_reordering_alone_causes_spurious_but_harmless_retransmissions() -> None:
    data = make_channel(5, [], 0.0, 0.0, 0.5)
    acks = make_channel(6, [], 0.0, 0.0, 0.0, jitter=False)
    r = simulate(100, 16, data, acks)
    assert r.done
    assert set(r.writes.values()) == {1}
    # Nothing was lost, so every resend that arrived before the end was a duplicate.
    assert r.sender.retransmits > 0
    assert 0 < r.receiver.duplicates <= r.sender.retransmits


def test_heavy_loss_still_completes() -> None:
    data = make_channel(3, [], 0.5, 0.1, 0.2)
    acks = make_channel(4, [], 0.5, 0.1, 0.2)
    r = simulate(100, 8, data, acks)
    assert r.done
    assert set(r.writes.values()) == {1}
    assert r.sender.retransmits > 0
    assert r.sender.timeouts > 0


# ---- SendWindow alone ---------------------------------------------------------------


def started(total: int, window: int, now: float = 0.0) -> tuple[SendWindow, list[int]]:
    w = SendWindow(total, RttEstimator(initial_rto=1.0, min_rto=0.2))
    w.on_accept([], window)
    return w, w.next_to_send(now)


def test_credit_limits_what_is_sent() -> None:
    w, first = started(10, 4)
    assert first == [0, 1, 2, 3]
    assert w.in_flight == 4
    assert w.next_to_send(0.0) == []
    assert w.on_ack(2, [], 4, 0.1) == 2
    assert w.next_to_send(0.1) == [4, 5]
    assert w.next_to_send(0.1, limit=0) == []


def test_rto_timeout_resends_only_the_oldest_chunk_and_backs_off() -> None:
    w, first = started(3, 4)
    assert first == [0, 1, 2]
    assert w.next_deadline() == pytest.approx(1.0)
    w.on_timer(0.99)
    assert w.next_to_send(0.99) == []
    assert w.timeouts == 0
    w.on_timer(1.0)
    assert w.timeouts == 1
    assert w.rtt.rto == pytest.approx(2.0)  # backed off
    assert w.next_to_send(1.0) == [0]  # RFC 6298 5.4: the oldest, not the whole window
    assert w.retransmits == 1
    assert w.next_deadline() == pytest.approx(3.0)  # 5.6: restarted, doubled
    w.on_timer(2.5)
    assert w.next_to_send(2.5) == []
    w.on_timer(3.0)
    assert w.next_to_send(3.0) == [1]  # the next oldest by send order (0 was resent at 1.0)
    assert (w.timeouts, w.retransmits) == (2, 2)
    assert w.next_deadline() == pytest.approx(7.0)


@settings(max_examples=200, deadline=None)
@given(
    credit=st.integers(1, 32),
    shrunk=st.integers(1, 32),
    limit=st.one_of(st.none(), st.integers(1, 32)),
    expiries=st.integers(1, 6),
)
def test_an_expirys_resend_always_has_room(
    credit: int, shrunk: int, limit: int | None, expiries: int
) -> None:
    """After any expiry, whatever the credit and the sender's limit shrank
    to below what is in flight, room() counts the resend, so a paced sender
    asks for its bytes, and one chunk's allowance sends it (room() said 0
    and a paced flow waited for an expiry per chunk in flight)."""
    w, first = started(64, credit)
    w.on_ack(0, [], shrunk, 0.5)  # nothing new: only the credit changed
    w.limit = limit
    now = 0.5
    for _ in range(expiries):
        deadline = w.next_deadline()
        assert deadline is not None
        now = deadline
        w.on_timer(now)
        assert w.room() >= 1
        resent = w.next_to_send(now, limit=1)
        assert len(resent) == 1 and resent[0] in first


def test_an_ack_of_anything_new_restarts_the_timer() -> None:
    w, first = started(4, 4)
    assert first == [0, 1, 2, 3]
    w.on_ack(0, [(1, 2)], 4, 0.9)  # chunk 0 late (not lost: not 3 sends behind)
    deadline = w.next_deadline()
    assert deadline is not None and deadline > 0.9 + 0.2  # RFC 6298 5.3, from 0.9
    w.on_timer(1.0)  # chunk 0's own RTO has passed: not a reason on its own
    assert w.timeouts == 0 and w.next_to_send(1.0) == []
    w.on_ack(4, [], 4, 1.05)
    assert w.done and w.next_deadline() is None  # 5.2: nothing pending, no timer
    assert w.retransmits == 0


def test_a_stall_costs_one_resend_per_doubling_not_a_window() -> None:
    """Sixteen chunks in flight, every ack held up 1 s (a loaded CPU, not a
    loss): the timer resends one chunk at 0.2 s and one at 0.6 s, then the
    late acks arrive. Presuming every expired chunk lost resent 16 at once."""
    w = SendWindow(64, RttEstimator(initial_rto=0.2, min_rto=0.2))
    w.on_accept([], 16)
    assert w.next_to_send(0.0) == list(range(16))
    now = 0.0
    while True:
        deadline = w.next_deadline()
        assert deadline is not None
        if deadline >= 1.0:
            break
        now = deadline
        w.on_timer(now)
        w.next_to_send(now)
    w.on_ack(16, [], 16, 1.0)
    assert (w.timeouts, w.retransmits) == (2, 2)
    assert w.rtt.samples == 1  # one ack of 14 late chunks sent once: one sample
    # Their ack showed the expiries spurious: the RTO takes the 1 s round
    # trip in (RFC 4015), so the next such stall fires no timer.
    assert w.spurious_timeouts == 1
    assert w.rtt.rto >= 3.0
    assert w.next_to_send(1.0) == list(range(16, 32))
    w.on_ack(32, [], 16, 2.0)  # another 1 s stall
    assert w.timeouts == 2


def test_a_burst_of_losses_then_lost_resends_at_the_tail() -> None:
    """Chunks 0-3 lost at once, 4-7 arrive: SACK finds 0-3 without a timer.
    Their resends are lost too and nothing is sent after them (the tail):
    the first expiry resends the oldest; its ack (a resend's: no proof about
    the others) and the next expiry with no first copy acked mean the rest
    is gone: all of it is resent at once (F-RTO's conventional recovery)."""
    w, first = started(8, 8)
    assert first == list(range(8))
    w.on_ack(0, [(4, 8)], 8, 0.1)
    assert w.next_to_send(0.1) == [0, 1, 2, 3] and w.timeouts == 0
    # Tail: 4-7 written, 0-3 resent and all lost again; nothing more to send.
    now = w.next_deadline()
    assert now is not None
    w.on_timer(now)
    assert w.next_to_send(now) == [0]
    w.on_ack(1, [(4, 8)], 8, now + 0.01)  # the resend of 0 arrived
    assert w.timeouts == 1 and not w.done
    for _ in range(10):
        sent = w.next_to_send(now)
        for index in sent:  # these resends arrive
            now += 0.01
            w.on_ack(index + 1, [(4, 8)], 8, now)
        if w.done:
            break
        if not sent:
            deadline = w.next_deadline()
            assert deadline is not None
            now = deadline
            w.on_timer(now)
    assert w.done
    assert w.retransmits == 8  # each lost chunk resent exactly twice (lost, then found)
    assert w.timeouts == 2 and w.fast_retransmits == 4


def test_chunks_dropped_over_a_shrunk_credit_are_recovered_after_two_expiries() -> None:
    """Sixteen in flight, then the credit shrinks to 2 and the receiver drops
    the 14 beyond it: one probe, then every chunk from before it at once
    (not one per doubling RTO: that took minutes)."""
    w = SendWindow(16, RttEstimator(initial_rto=0.2, min_rto=0.2))
    w.on_accept([], 16)
    assert w.next_to_send(0.0) == list(range(16))
    w.on_ack(2, [], 2, 0.01)  # 0 and 1 written; 2..15 were dropped
    now = 0.01
    for expiry in range(1, 20):
        deadline = w.next_deadline()
        assert deadline is not None
        now = deadline
        w.on_timer(now)
        resent = w.next_to_send(now)
        if expiry == 1:
            assert resent == [2]  # the probe
            w.on_ack(3, [], 2, now + 0.01)
        else:
            assert w.next_to_send(now) == []
            break
    assert w.timeouts == 2
    assert len(resent) == 2 and resent[0] == 3  # within the credit of 2
    while not w.done:  # the rest go as the credit frees, no more timers needed
        for index in resent:
            now += 0.01
            w.on_ack(index + 1, [], 2, now)
        resent = w.next_to_send(now)
    assert w.timeouts == 2 and w.retransmits == 14


class StalledChannel(Channel):
    """A lossless FIFO channel (one TCP connection) that holds every message
    sent during a stall until the stall ends (a loaded machine)."""

    def __init__(self, stalls: list[tuple[float, float]]) -> None:
        super().__init__(random.Random(0), [], 0.0, 0.0, 0.0, jitter=False)
        self.stalls = stalls
        self.last = 0.0

    def arrivals(self, now: float) -> list[float]:
        at = now + self.base
        for start, length in self.stalls:
            if start <= at < start + length:
                at = start + length
        self.last = max(self.last, at)
        return [self.last]


@settings(max_examples=80, deadline=None)
@given(
    total=st.integers(1, 80),
    window=st.integers(1, 16),
    stalls=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 3.0)), max_size=4),
    ack_stalls=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 3.0)), max_size=4),
)
def test_a_lossless_path_under_any_stalls_resends_one_chunk_per_timeout(
    total: int,
    window: int,
    stalls: list[tuple[float, float]],
    ack_stalls: list[tuple[float, float]],
) -> None:
    """Nothing is lost, only late: no SACK loss is ever presumed, each timer
    expiry resends exactly one chunk, and the expiries are bounded by the
    stalls (RTO doubling from 0.05 s: at most 7 per stall of <= 3 s)."""
    r = simulate(total, window, StalledChannel(stalls), StalledChannel(ack_stalls))
    assert r.done
    assert set(r.writes.values()) == {1}
    assert r.sender.fast_retransmits == 0
    assert r.sender.retransmits == r.sender.timeouts
    assert r.sender.timeouts <= 7 * (len(stalls) + len(ack_stalls)) + 1


def test_fast_retransmit_after_three_later_chunks_are_acked() -> None:
    w, first = started(10, 10)
    assert first == list(range(10))
    w.on_ack(0, [(1, 3)], 10, 0.1)  # two later chunks: could be reordering
    assert w.fast_retransmits == 0
    assert w.next_to_send(0.1) == []
    w.on_ack(0, [(1, 4)], 10, 0.11)  # the third: chunk 0 is presumed lost
    assert w.fast_retransmits == 1
    assert w.timeouts == 0
    assert w.next_to_send(0.11) == [0]
    assert w.retransmits == 1
    # A repeated ack does not trigger it again.
    w.on_ack(0, [(1, 4)], 10, 0.12)
    assert w.fast_retransmits == 1
    assert w.next_to_send(0.12) == []


def test_retransmissions_go_first_lowest_index_first() -> None:
    w, first = started(20, 6)
    assert first == [0, 1, 2, 3, 4, 5]
    w.on_ack(0, [(3, 6)], 6, 0.1)  # 0, 1, 2 each have three later chunks acked
    assert w.fast_retransmits == 3
    # 3, 4, 5 acked freed three credits: the three resends first, then new chunks.
    assert w.next_to_send(0.1) == [0, 1, 2, 6, 7, 8]
    assert w.in_flight == 6


def test_a_lost_fast_retransmission_is_recovered_by_the_timer() -> None:
    w, _ = started(8, 8)
    w.on_ack(0, [(1, 4)], 8, 0.1)
    assert w.next_to_send(0.1) == [0]  # resent at 0.1 ... and lost again
    w.on_ack(0, [(1, 8)], 8, 0.2)
    assert w.next_to_send(0.2) == []  # no second fast retransmit of the same copy
    deadline = w.next_deadline()
    assert deadline is not None and deadline > 0.1
    w.on_timer(deadline)
    assert w.timeouts == 1
    assert w.next_to_send(deadline) == [0]
    assert w.retransmits == 2


def test_loss_by_send_order_distance_quic_threshold() -> None:
    """RFC 9002 packet threshold: chunk 2 is lost once a chunk sent 3 sends
    after it is acked (5), not when only 2 sends later (4) is acked."""
    w, _ = started(6, 6)
    w.on_ack(0, [(4, 5)], 6, 0.1)  # 4 was sent 4 and 3 sends after chunks 0 and 1
    assert w.next_to_send(0.1) == [0, 1]
    w.on_ack(0, [(4, 6)], 6, 0.1)  # 5 was sent 3 sends after chunk 2
    assert w.next_to_send(0.1) == [2]
    assert w.fast_retransmits == 3


def test_karn_no_rtt_sample_from_a_retransmitted_chunk() -> None:
    w, _ = started(1, 1)
    w.on_timer(1.0)
    assert w.next_to_send(1.0) == [0]
    w.on_ack(1, [], 1, 1.05)  # ambiguous: an ack of the first or the second copy?
    assert w.done
    assert w.rtt.samples == 0
    assert w.rtt.srtt is None


def test_rtt_sample_from_a_chunk_sent_once() -> None:
    w, _ = started(2, 2)
    w.on_ack(1, [], 2, 0.3)
    assert w.rtt.samples == 1
    assert w.rtt.srtt == pytest.approx(0.3)
    w.on_ack(0, [(1, 2)], 2, 0.5)
    assert w.rtt.samples == 2
    assert w.done


def test_karn_mixed_ack_samples_only_the_clean_chunk() -> None:
    w, first = started(2, 2)
    assert first == [0, 1]
    w.on_ack(0, [(1, 2)], 2, 0.4)  # chunk 1 acked: a clean sample of 0.4
    assert w.rtt.samples == 1
    w.on_timer(5.0)
    assert w.next_to_send(5.0) == [0]
    w.on_ack(2, [], 2, 5.01)
    assert w.rtt.samples == 1
    assert w.rtt.srtt == pytest.approx(0.4)


def test_accept_with_held_ranges_skips_them() -> None:
    w = SendWindow(10)
    w.on_accept([(0, 3), (5, 7)], 16)
    assert w.next_to_send(0.0) == [3, 4, 7, 8, 9]
    w.on_ack(10, [], 16, 0.1)
    assert w.done


def test_an_accept_gives_one_chunk_at_least_and_an_ack_of_no_credit_stops_new_chunks() -> None:
    w = SendWindow(5)
    w.on_accept([], 0)
    assert w.window == 1
    assert w.next_to_send(0.0) == [0]
    w.on_ack(1, [], 0, 0.1)  # the receiver's buffer is taken: wait for its next ack
    assert w.window == 0 and w.waiting
    w.limit = 4  # (a congestion window does not make room either)
    assert w.next_to_send(0.1) == [] and w.room() == 0
    assert w.next_deadline() is None  # nothing in flight: no retransmission timer
    w.on_ack(1, [], 2, 0.2)
    assert not w.waiting and w.next_to_send(0.2) == [1, 2]
    # Told to wait with chunks in flight: they stay in flight (acked later),
    # and an expiry's resend still goes, whatever the credit.
    w.on_ack(1, [], 0, 0.3)
    assert w.next_to_send(0.3) == [] and w.in_flight == 2
    deadline = w.next_deadline()
    assert deadline is not None
    w.on_timer(deadline)
    assert w.next_to_send(deadline) == [1]


def test_ack_beyond_the_file_is_clipped() -> None:
    w, _ = started(3, 3)
    assert w.on_ack(10**9, [(5, 10**6)], 3, 0.1) == 3
    assert w.done
    assert w.acked.count == 3


def test_next_deadline_none_when_idle() -> None:
    w = SendWindow(0)
    w.on_accept([], 4)
    assert w.done
    assert w.next_to_send(0.0) == []
    assert w.next_deadline() is None


# ---- ReceiveWindow alone --------------------------------------------------------------


def test_receive_window_classifies_chunks() -> None:
    r = ReceiveWindow(3, 4)
    assert r.on_chunk(0, False, 0.0) is Arrival.NEW
    assert r.queued == 1
    assert r.on_chunk(0, False, 0.0) is Arrival.DUPLICATE  # queued, not written yet
    r.on_written(0)
    assert r.queued == 0
    assert r.on_chunk(0, False, 0.0) is Arrival.DUPLICATE
    assert r.duplicates == 2
    assert r.on_chunk(2, False, 0.0) is Arrival.INVALID  # the last chunk must say so
    assert r.on_chunk(1, True, 0.0) is Arrival.INVALID
    assert r.on_chunk(3, True, 0.0) is Arrival.INVALID
    assert r.on_chunk(-1, False, 0.0) is Arrival.INVALID
    assert r.on_chunk(2, True, 0.0) is Arrival.NEW
    r.on_written(2)
    assert r.ack_fields() == (1, [(2, 3)], 4)
    assert not r.complete
    assert r.on_chunk(1, False, 0.0) is Arrival.NEW
    r.on_written(1)
    assert r.ack_fields() == (3, [], 4)
    assert r.complete


def test_only_written_chunks_are_acknowledged() -> None:
    r = ReceiveWindow(4, 4)
    for i in range(3):
        assert r.on_chunk(i, False, 0.0) is Arrival.NEW
    assert r.ack_fields() == (0, [], 4)
    r.on_written(1)
    assert r.ack_fields() == (0, [(1, 2)], 4)


def test_sack_is_bounded() -> None:
    r = ReceiveWindow(400, 8)
    for i in range(1, 400, 2):
        r.on_chunk(i, i == 399, 0.0)
        r.on_written(i)
    cumulative, sack, _ = r.ack_fields()
    assert cumulative == 0
    assert len(sack) == 64
    assert sack[0] == (1, 2)


def test_receive_window_validation() -> None:
    with pytest.raises(ValueError):
        ReceiveWindow(3, 0)
    with pytest.raises(ValueError):
        ReceiveWindow(3, 1, have=ChunkBitmap(4))
    held = ChunkBitmap(3)
    held.add(0)
    r = ReceiveWindow(3, 1, have=held)
    assert r.on_chunk(0, False, 0.0) is Arrival.DUPLICATE
    assert r.ack_fields()[0] == 1


def test_receive_window_drops_chunks_beyond_the_credit() -> None:
    r = ReceiveWindow(100, 3, ordered=False)  # (acks that may be reordered: lanes)
    arrivals = [r.on_chunk(i, False, 0.0) for i in range(4)]
    assert arrivals == [Arrival.NEW] * 3 + [Arrival.OVER_CREDIT]
    assert r.over_credit == 1 and r.queued == 3
    r.on_written(0)
    assert r.on_chunk(3, False, 0.0) is Arrival.NEW  # room again once one is written
    # A shrunk credit: the old one holds, less one for every chunk written
    # since (what the sender can still have in flight under it).
    r.advertise(1, 0.0)
    assert r.allowed(0.0) == 3
    assert r.on_chunk(4, False, 0.0) is Arrival.OVER_CREDIT  # 3 queued = the old credit
    r.on_written(1)
    assert r.allowed(0.0) == 2 and r.queued == 2
    assert r.on_chunk(4, False, 0.0) is Arrival.OVER_CREDIT  # 2 queued: the old credit less 1
    r.on_written(2)
    assert r.allowed(0.0) == 1  # the new credit, with chunk 3 queued
    assert r.on_chunk(4, False, 0.0) is Arrival.OVER_CREDIT
    r.on_written(3)
    assert r.on_chunk(4, False, 0.0) is Arrival.NEW
    assert r.on_chunk(5, False, 0.0) is Arrival.OVER_CREDIT  # chunk 4 is queued
    r.advertise(1, 0.0)
    assert r.allowed(0.0) == 1  # the old credit is forgotten
    r.on_written(4)
    assert r.on_chunk(5, False, 0.0) is Arrival.NEW
    r.on_dropped(5)  # the writer refused it: no longer queued
    assert r.queued == 0 and 5 not in r.written
    # Growth applies at once; a shrink in a grace keeps the largest credit.
    r.advertise(8, 0.0)
    assert r.allowed(0.0) == 8
    r.advertise(2, 0.0)
    r.advertise(1, 0.0)
    assert r.allowed(0.0) == 8
    for index in range(6, 9):
        assert r.on_chunk(index, False, 0.0) is Arrival.NEW
        r.on_written(index)
    assert r.allowed(0.0) == 5  # three written since


def test_the_old_credit_expires_a_grace_after_the_shrink_or_its_last_chunk() -> None:
    r = ReceiveWindow(100, 8)
    for index in range(8):
        assert r.on_chunk(index, False, 0.0) is Arrival.NEW
    r.on_written(0)
    r.advertise(8, 5.0)  # chunk 0 acked: the sender may send chunk 8
    r.on_written(1)  # after a long stall of the writer: the grace counts from the ack
    r.advertise(2, 10.0)
    assert r.allowed(10.0 + CREDIT_GRACE) == 7  # 2..8: what can still be coming
    assert r.on_chunk(8, False, 11.0) is Arrival.NEW  # sent under the old credit
    assert r.allowed(11.0 + CREDIT_GRACE) == 7  # more of it may follow
    assert r.allowed(11.0 + CREDIT_GRACE + 0.01) == 2  # expired
    assert r.on_chunk(9, False, 11.0 + CREDIT_GRACE + 0.01) is Arrival.OVER_CREDIT
    r.on_written(2)  # it stays expired: a later chunk does not bring it back
    r.advertise(2, 20.0)
    assert r.allowed(20.0) == 2
    # Its chunks still queued hold the buffer all the same, until written.
    assert r.queued == 6 and allowance_bytes(r, 10, 20.0) == 60
    for index in range(3, 9):
        r.on_written(index)
    assert allowance_bytes(r, 10, 20.0) == 0  # all written since the ack: none can come


def test_send_window_honours_at_most_its_own_buffer() -> None:
    w = SendWindow(10_000, max_window=8)
    w.on_accept([], 4096)
    assert len(w.next_to_send(0.0)) == 8
    w.on_ack(4, [], 4096, 0.1)
    assert w.window == 8 and len(w.next_to_send(0.2)) == 4


def test_node_credit_shares_the_buffer_and_stays_within_what_the_others_leave() -> None:
    mib = 1 << 20
    # Alone: the whole window at once; beside others: INITIAL_CREDIT, then
    # doubled per ack up to --window.
    assert node_credit(16, mib, 32 * mib, 1, 0) == 16
    assert node_credit(16, mib, 32 * mib, 2, 16 * mib) == INITIAL_CREDIT
    assert node_credit(16, mib, 32 * mib, 1, 0, current=4) == 8
    assert node_credit(16, mib, 32 * mib, 1, 0, current=8) == 16
    assert node_credit(16, mib, 32 * mib, 1, 0, current=16) == 16
    # Its share among the running ones, and no more than the others leave.
    assert node_credit(16, mib, 32 * mib, 16, 0, current=16) == 2
    assert node_credit(16, mib, 32 * mib, 2, 29 * mib, current=16) == 3
    assert node_credit(16, mib, 32 * mib, 2, 32 * mib) == 1  # never below one chunk
    assert node_credit(16, mib, 32 * mib, 2, 40 * mib) == 1


def test_allowance_counts_at_most_the_chunks_left_to_write() -> None:
    r = ReceiveWindow(3, 16)
    assert allowance_bytes(r, 10, 0.0) == 30
    r.on_chunk(0, False, 0.0)
    r.on_written(0)
    assert allowance_bytes(r, 10, 0.0) == 20


def test_chunks_queued_past_their_credits_grace_still_hold_the_buffer() -> None:
    # A transfer alone takes the whole buffer (8 chunks) and sends all of
    # them; the writer stalls. A second transfer starts: the first one's
    # credit shrinks to its share, and the grace of its old credit runs out
    # while its 8 chunks still wait for the writer. Those 8 chunks are in
    # the writer's queue all the same: the second one gets no more than one
    # chunk, so what is queued stays within the buffer plus one chunk per
    # transfer (the bound the receiver's status reports against).
    chunk, buffer, window = 10, 80, 8
    first = ReceiveWindow(100, node_credit(window, chunk, buffer, 1, 0))
    assert first.window == 8
    for index in range(8):
        assert first.on_chunk(index, False, 0.0) is Arrival.NEW
    first.advertise(node_credit(window, chunk, buffer, 2, 0, current=8), 1.0)
    assert first.window == 4
    later = 1.0 + CREDIT_GRACE + 1.0
    assert first.allowed(later) == 4 and first.queued == 8
    assert allowance_bytes(first, chunk, later) == 80
    second = ReceiveWindow(
        100, node_credit(window, chunk, buffer, 2, allowance_bytes(first, chunk, later))
    )
    assert second.window == 1
    queued = first.queued
    for index in range(8):  # the second one's sender tries for more
        queued += second.on_chunk(index, False, later) is Arrival.NEW
    assert queued * chunk <= buffer + 1 * chunk


def test_a_trickling_transfer_does_not_hold_a_new_one_at_one_chunk() -> None:
    # Two transfers grew to the whole window (16 chunks each: the 32 MiB
    # buffer) and then trickle, a chunk every 29 s (which keeps them from
    # timing out). A third one starts with one chunk, as they hold all of
    # the buffer; it acks every chunk (one round trip, 50 ms). Each
    # trickler's next ack shrinks its credit to its share (10 chunks); what
    # is left of its old credit must expire within CREDIT_GRACE of it, so
    # the new transfer reaches its share soon after, not one chunk of the
    # old credit per 29 s.
    mib, buffer, window = 1 << 20, 32 << 20, 16
    slow = [ReceiveWindow(1000, window) for _ in range(2)]
    for r in slow:
        for index in range(window):
            assert r.on_chunk(index, False, 0.0) is Arrival.NEW
            r.on_written(index)
        r.advertise(window, 0.0)
    flows = [*slow]

    def credit(r: ReceiveWindow | None, now: float) -> int:
        others = sum(allowance_bytes(o, mib, now) for o in flows if o is not r)
        running = len(flows) + (r is None)
        return node_credit(window, mib, buffer, running, others, r.window if r else 0)

    fresh = ReceiveWindow(100_000, credit(None, 0.1))
    assert fresh.window == 1
    flows.append(fresh)
    shrunk_at = 29.0
    for r in slow:  # each trickler's next chunk: written, acked with its share
        assert r.on_chunk(window, False, shrunk_at) is Arrival.NEW
        r.on_written(window)
        r.advertise(credit(r, shrunk_at), shrunk_at)
        assert r.window == 10
    now, index, reached = 0.1, 0, None
    while now < 60.0 and reached is None:  # the fresh one: a chunk a round trip
        for _ in range(fresh.window):
            assert fresh.on_chunk(index, False, now) is Arrival.NEW
            fresh.on_written(index)
            index += 1
        fresh.advertise(credit(fresh, now), now)
        if fresh.window == buffer // 3 // mib:
            reached = now
        now += 0.05
    assert reached is not None and reached < shrunk_at + CREDIT_GRACE + 0.5, reached
    # Within the buffer all the same (plus one chunk per transfer at most).
    assert sum(allowance_bytes(o, mib, reached) for o in flows) <= buffer + 3 * mib


Fields = tuple[int, list[tuple[int, int]], int]  # an ack's cumulative, ranges, credit
# A file's chunks, its first credit, the credits of later acks (in turn).
TOTALS = st.integers(1, 80)
FIRST_CREDITS = st.integers(1, 16)
CREDITS = st.lists(st.integers(1, 16), min_size=1, max_size=60)


def pump_lossless(
    sender: SendWindow,
    delays: list[float],
    write_delay: float,
    on_chunk: Callable[[int, float], Arrival],
    on_written: Callable[[int, float], Fields | None],
    updates: list[float] | None = None,
    on_update: Callable[[float], Fields | None] | None = None,
) -> None:
    """Chunks and acks over one connection that loses and reorders nothing
    (TCP: FIFO arrival times each way, ``delays`` in turn), each NEW chunk
    written ``write_delay`` after it came, until the sender is done; the
    receiver's ``on_written`` (and ``on_update`` at the times ``updates``)
    may answer with an ack."""
    events: list[tuple[float, int, str, int, Fields | None]] = []
    seq = itertools.count()
    data_free = ack_free = 0.0
    now = 0.0
    delay = itertools.cycle(delays)
    for at in updates or []:
        heapq.heappush(events, (at, next(seq), "update", 0, None))

    def pump() -> None:
        nonlocal data_free
        for index in sender.next_to_send(now):
            data_free = max(data_free, now + next(delay))
            heapq.heappush(events, (data_free, next(seq), "chunk", index, None))

    def reply(fields: Fields | None) -> None:
        nonlocal ack_free
        if fields is not None:
            ack_free = max(ack_free, now + next(delay))
            heapq.heappush(events, (ack_free, next(seq), "ack", 0, fields))

    pump()
    while events and not sender.done:
        now, _, kind, index, ack = heapq.heappop(events)
        if kind == "chunk":
            if on_chunk(index, now) is Arrival.NEW:
                heapq.heappush(events, (now + write_delay, next(seq), "written", index, None))
        elif kind == "written":
            reply(on_written(index, now))
        elif kind == "update":
            reply(on_update(now) if on_update else None)
        else:
            assert ack is not None
            sender.on_ack(*ack, now)
        pump()


def pump_honest(
    total: int,
    first: int,
    credits: list[int],
    delays: list[float],
    write_delay: float,
    updates: list[float],
) -> tuple[SendWindow, IncomingTransfer]:
    """An honest sender and a receiving transfer over one connection that
    loses and reorders nothing, the receiver's acks and window updates
    giving ``credits`` in turn (its first ``first``), until the sender is
    done: every chunk came within its credit, nothing was resent."""
    sender = SendWindow(total, RttEstimator(initial_rto=60.0, min_rto=60.0))
    flow = IncomingTransfer(total=total, credit=first, idle_timeout=6000.0, now=0.0)
    sender.on_accept([], flow.window.window)
    acks = itertools.cycle(credits)

    def on_chunk(index: int, now: float) -> Arrival:
        arrival = flow.on_chunk(index, index == total - 1, now)
        assert arrival is Arrival.NEW, (index, flow.window.queued, flow.window.allowed(now))
        return arrival

    def on_written(index: int, now: float) -> Fields | None:
        flow.on_written(index)
        return flow.ack(next(acks), now)

    def on_update(now: float) -> Fields | None:
        return flow.window_update(next(acks), now)

    pump_lossless(sender, delays, write_delay, on_chunk, on_written, updates, on_update)
    assert sender.done and flow.window.complete
    assert (sender.retransmits, sender.fast_retransmits, sender.timeouts) == (0, 0, 0)
    assert flow.window.over_credit == 0 and flow.window.duplicates == 0
    return sender, flow


@settings(max_examples=80, deadline=None)
@given(
    total=TOTALS,
    first=FIRST_CREDITS,
    credits=CREDITS,
    delays=st.lists(st.floats(0.001, 0.05), min_size=1, max_size=40),
    write_delay=st.floats(0.0005, 0.03),
)
def test_an_honest_sender_is_never_over_a_credit_that_shrinks_and_grows(
    total: int, first: int, credits: list[int], delays: list[float], write_delay: float
) -> None:
    # The receiver advertises a new credit in every ack (shrinking and
    # growing as other transfers come and go); a sender that keeps to what
    # it was told, over a channel that loses and reorders nothing (one data
    # connection: TCP), never has a chunk dropped as over the credit. So the
    # old credit a shrink leaves the sender is exactly what the receiver
    # still allows (less one chunk per chunk written since). Its delays (a
    # round trip and a write) are well within CREDIT_GRACE, after which the
    # old credit expires: a chunk of it later than that is dropped and resent.
    sender = SendWindow(total, RttEstimator(initial_rto=60.0, min_rto=60.0))
    receiver = ReceiveWindow(total, first)
    sender.on_accept([], receiver.window)
    acks = itertools.cycle(credits)

    def on_chunk(index: int, now: float) -> Arrival:
        arrival = receiver.on_chunk(index, index == total - 1, now)
        held = (index, receiver.queued, receiver.allowed(now))
        assert arrival is not Arrival.OVER_CREDIT, held
        return arrival

    def on_written(index: int, now: float) -> Fields:
        receiver.on_written(index)
        receiver.advertise(next(acks), now)
        return receiver.ack_fields()

    pump_lossless(sender, delays, write_delay, on_chunk, on_written)
    assert sender.done and receiver.complete and receiver.over_credit == 0


def test_a_window_update_goes_only_with_a_changed_credit_after_a_quiet_spell() -> None:
    flow = IncomingTransfer(total=6, credit=8, idle_timeout=30.0, now=0.0)
    for index in range(3):
        assert flow.on_chunk(index, False, 0.1) is Arrival.NEW
        flow.on_written(index)
    assert flow.ack(8, 0.2) == (3, [], 8)
    assert flow.window_update(8, 5.0) is None  # the credit it was told
    assert flow.window_update(2, 0.2 + WINDOW_UPDATE_AFTER / 2) is None  # it acked just now
    # Nothing new acknowledged, only the credit: the old one is still
    # allowed (the sender may have sent under it) until its grace ends.
    assert flow.window_update(2, 1.0) == (3, [], 2)
    assert flow.window.allowed(1.0) == 8 and flow.window.allowed(1.0 + CREDIT_GRACE + 0.1) == 2
    assert flow.window_update(4, 1.0 + WINDOW_UPDATE_AFTER / 2) is None  # one just went
    assert flow.window_update(4, 2.0) == (3, [], 4)  # grown
    assert flow.on_chunk(3, False, 2.1) is Arrival.NEW
    flow.on_written(3)
    assert flow.window_update(1, 9.0) is None  # an ack is due: it carries the credit
    assert flow.ack(1, 9.0) == (4, [], 1)
    for index in (4, 5):
        assert flow.on_chunk(index, index == 5, 9.1) is Arrival.NEW
        flow.on_written(index)
    flow.on_done(b"d" * 32, 6, 9.2)
    assert flow.ack(1, 9.2) == (6, [], 1)
    assert flow.window_update(4, 20.0) is None  # finishing: no more chunks to take
    assert flow.window_updates == 2


def test_chunks_waiting_for_the_writer_are_acked_after_a_quiet_spell() -> None:
    """A writer that stalls (a disk, other transfers' chunks before these):
    the chunks that came are acked anyway every STILL_WRITING_AFTER, with
    whatever was written and the same credit, so the sender's timer does
    not take them for lost; nothing such once none waits."""
    flow = IncomingTransfer(total=10, credit=8, idle_timeout=30.0, now=0.0)
    for index in range(4):
        assert flow.on_chunk(index, False, 0.01) is Arrival.NEW
    flow.on_written(0)
    assert flow.ack(8, 0.02) is None  # held back: more of it wait to be written
    assert flow.window_update(8, STILL_WRITING_AFTER / 2) is None  # not quiet long enough
    assert flow.window_update(8, STILL_WRITING_AFTER) == (1, [], 8)  # the written one with it
    assert flow.window_update(8, STILL_WRITING_AFTER * 1.5) is None  # one just went
    assert flow.window_update(8, STILL_WRITING_AFTER * 2) == (1, [], 8)  # still stalled
    assert (flow.still_writing, flow.window_updates) == (2, 0)
    for index in range(1, 4):
        flow.on_written(index)
    assert flow.ack(8, 0.3) == (4, [], 8)
    assert flow.window_update(8, 5.0) is None  # nothing waits: nothing to say
    assert flow.still_writing == 2


def test_a_still_writing_ack_keeps_the_credit_or_shrinks_it_never_grows_it() -> None:
    """The sender restarts its retransmission timer only on an ack of nothing
    new that keeps the credit: an ack while chunks wait for the writer
    carries the credit the sender was told even when the share would now
    grow (growth waits for the next ack of written chunks); a smaller one
    is still told."""
    flow = IncomingTransfer(total=20, credit=4, idle_timeout=30.0, now=0.0)
    assert flow.on_chunk(0, False, 0.01) is Arrival.NEW
    assert flow.window_update(16, STILL_WRITING_AFTER) == (0, [], 4)  # not 16
    assert flow.window_update(2, STILL_WRITING_AFTER * 2) == (0, [], 2)  # a shrink goes
    assert flow.window_update(16, STILL_WRITING_AFTER * 3) == (0, [], 2)
    flow.on_written(0)
    assert flow.ack(16, 0.5) == (1, [], 16)  # an ack of written chunks grows it


@settings(deadline=None, max_examples=200)
@given(
    rtts=st.lists(st.floats(0.0005, 0.05), min_size=1, max_size=30),
    stall=st.floats(5.0, 60.0),  # past any RTO those round trips give (<= 4.5 s)
    gap=st.floats(0.01, STILL_WRITING_AFTER * 1.5),
)
def test_a_writer_stall_acked_as_still_writing_costs_no_resend(
    rtts: list[float], stall: float, gap: float
) -> None:
    """However long the receiver's writer stalls and whatever RTO the
    transfer's round trips gave, acks of nothing new every ``gap`` (what
    the receiver sends while its chunks wait: at most 1.5 STILL_WRITING_AFTER
    apart, under the 0.2 s least RTO) keep the timer from firing; the same
    stall in silence fires it."""

    def run(acked_while_stalled: bool) -> SendWindow:
        w = SendWindow(10_000, RttEstimator(initial_rto=3.0))
        w.on_accept([], 8)
        now, cumulative = 0.0, 0
        w.next_to_send(now)
        for rtt in rtts:  # one chunk acked per round trip, the window kept full
            now += rtt
            cumulative += 1
            w.on_ack(cumulative, [], 8, now)
            w.next_to_send(now)
        end = now + stall
        while now < end:
            deadline = w.next_deadline()
            beat = now + gap if acked_while_stalled else end
            if deadline is not None and deadline <= beat:
                now = deadline
                w.on_timer(now)
            else:
                now = beat
                if acked_while_stalled:
                    w.on_ack(cumulative, [], 8, now)
        return w

    w = run(acked_while_stalled=True)
    assert (w.timeouts, w.retransmits) == (0, 0)
    assert run(acked_while_stalled=False).timeouts >= 1


def test_window_updates_do_not_hold_back_the_resend_of_a_lost_last_chunk() -> None:
    """The last chunk is lost (a proxy, the receiver's full queue); nothing
    waits at the receiver, whose credit changes every 0.5 s (others start
    and end): those window updates, under the RTO (1.8 s here), must not
    keep restarting the timer. The expiry resends the chunk."""
    w = SendWindow(4, RttEstimator(initial_rto=3.0))
    w.on_accept([], 4)
    assert w.next_to_send(0.0) == [0, 1, 2, 3]
    w.on_ack(3, [], 4, 0.6)  # 0-2 written, a round trip of 0.6 s; 3 never comes
    assert w.rtt.rto > 1.0
    credits = itertools.cycle([2, 4])
    now, resent = 0.6, []
    while now < 30.0 and not resent:
        deadline = w.next_deadline()
        assert deadline is not None
        if deadline <= now + 0.5:
            now = deadline
            w.on_timer(now)
            resent = w.next_to_send(now)
        else:
            now += 0.5
            w.on_ack(3, [], next(credits), now)
    assert resent == [3] and now < 0.6 + w.rtt.rto, now


def test_acks_that_repeat_a_shrunk_credit_do_not_extend_the_old_ones_grace() -> None:
    """The acks a stalled writer's transfer sends every STILL_WRITING_AFTER
    repeat its credit: the old, larger one still expires CREDIT_GRACE
    after the ack that shrank it (else a stall would keep it charged to the
    node's buffer as long as it lasts)."""
    window = ReceiveWindow(100, 8)
    window.advertise(2, 1.0)  # shrunk: the old 8 still allowed for a while
    assert window.allowed(1.0) == 8
    for k in range(1, 20):
        window.advertise(2, 1.0 + 0.1 * k)  # the same credit, again and again
    assert window.allowed(1.0 + CREDIT_GRACE - 0.1) == 8
    assert window.allowed(1.0 + CREDIT_GRACE + 0.1) == 2


def test_a_window_update_is_no_duplicate_ack_for_the_sender() -> None:
    # The same cumulative index and ranges again, with another credit, any
    # number of times: no chunk is presumed lost, the new credit applies,
    # and the timer is not restarted (a window update goes only while
    # nothing waits for the receiver's writer: what it does not acknowledge
    # may be lost); the same ack with the credit unchanged restarts it (the
    # receiver's chunks wait for its writer: late, not lost).
    w = SendWindow(100, RttEstimator(initial_rto=1.0))
    w.on_accept([], 8)
    assert w.next_to_send(0.0) == list(range(8))
    w.on_ack(0, [(1, 3)], 8, 0.1)  # chunk 0 late, 1 and 2 written
    deadline = w.next_deadline()
    for k, credit in enumerate([2, 12, 3, 16, 1, 9]):
        w.on_ack(0, [(1, 3)], credit, 0.2 + 0.01 * k)
        assert w.window == credit and w.next_deadline() == deadline
    for k in range(4):
        now = 0.3 + 0.01 * k
        w.on_ack(0, [(1, 3)], 9, now)
        assert w.window == 9 and w.next_deadline() == pytest.approx(now + w.rtt.rto)
    assert (w.retransmits, w.fast_retransmits, w.timeouts) == (0, 0, 0)
    assert w.next_to_send(0.4) == [8, 9, 10]  # 9 allowed, 6 in flight
    assert w.peak_window == 16
    # Whereas three chunks sent after chunk 0 and acked do mark it lost.
    w.on_ack(0, [(1, 6)], 9, 0.5)
    assert w.fast_retransmits == 1


def test_window_updates_shrink_a_trickler_so_a_new_transfer_reaches_its_share() -> None:
    # As in test_a_trickling_transfer_does_not_hold_a_new_one_at_one_chunk,
    # two trickling transfers hold the whole buffer and their next chunks
    # come at 29 s; now the receiver sends window updates when the new one
    # starts and every WINDOW_UPDATE_AFTER seconds (as actors/receiver.py
    # does): the new one reaches its share a grace after it started, long
    # before the tricklers' next chunks.
    mib, buffer, window = 1 << 20, 32 << 20, 16
    slow = [IncomingTransfer(total=1000, credit=window, idle_timeout=30.0, now=0.0) for _ in "ab"]
    for flow in slow:
        for index in range(window):
            assert flow.on_chunk(index, False, 0.0) is Arrival.NEW
            flow.on_written(index)
        assert flow.ack(window, 0.0) is not None
    flows = [*slow]

    def credit(flow: IncomingTransfer | None, now: float) -> int:
        others = sum(allowance_bytes(o.window, mib, now) for o in flows if o is not flow)
        current = flow.window.window if flow else 0
        return node_credit(window, mib, buffer, len(flows) + (flow is None), others, current)

    fresh = IncomingTransfer(total=100_000, credit=credit(None, 1.0), idle_timeout=30.0, now=1.0)
    assert fresh.window.window == 1
    flows.append(fresh)
    now, index, reached, tick = 1.0, 0, None, 1.0
    while now < 29.0 and reached is None:
        if now >= tick:  # the receiver's window updates, at the start and on its timer
            for flow in slow:
                flow.window_update(credit(flow, now), now)
            tick += WINDOW_UPDATE_AFTER
        for _ in range(fresh.window.window):  # the new one: its credit each round trip
            assert fresh.on_chunk(index, False, now) is Arrival.NEW
            fresh.on_written(index)
            index += 1
        assert fresh.ack(credit(fresh, now), now) is not None
        if fresh.window.window == buffer // 3 // mib:
            reached = now
        now += 0.05
    assert [flow.window.window for flow in slow] == [10, 10]
    assert reached is not None and reached < 1.0 + CREDIT_GRACE + 1.0, reached
    assert sum(allowance_bytes(o.window, mib, reached) for o in flows) <= buffer + 3 * mib


@settings(max_examples=80, deadline=None)
@given(
    total=TOTALS,
    first=FIRST_CREDITS,
    credits=CREDITS,
    # Round trips long against WINDOW_UPDATE_AFTER, so updates do go out
    # (each is in its grace: within CREDIT_GRACE the old credit holds).
    delays=st.lists(st.floats(0.01, 0.6), min_size=1, max_size=40),
    updates=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=20),
    write_delay=st.floats(0.0005, 0.3),
)
def test_window_updates_cost_an_honest_sender_no_resend_and_no_drop(
    total: int,
    first: int,
    credits: list[int],
    delays: list[float],
    updates: list[float],
    write_delay: float,
) -> None:
    # Acks and window updates with credits that shrink and grow, over one
    # connection that loses and reorders nothing (TCP): the sender never
    # takes an update for a loss (nothing resent, however often the same
    # cumulative index comes back) and never goes over the credit.
    _, flow = pump_honest(total, first, credits, delays, write_delay, updates)
    note(f"{flow.window_updates} window updates")


def test_transfers_with_every_chunk_written_need_no_share_of_the_buffer() -> None:
    # 16 transfers of a node got 2 chunks each (the 32 MiB buffer); 15 have
    # every chunk written and wait for their final checks. The last one's
    # credit grows at each of its acks to the whole window, as if it were
    # alone: counted among 16, it would stay at 2 chunks to its end.
    mib, buffer, window = 1 << 20, 32 << 20, 16
    flows = [ReceiveWindow(8, 2) for _ in range(16)]
    for r in flows[:15]:
        for index in range(8):
            assert r.on_chunk(index, index == 7, 0.0) is Arrival.NEW
            r.on_written(index)
            r.advertise(2, 0.0)  # its ack
        assert r.complete
    assert receiving(flows) == 1
    assert node_credit(window, mib, buffer, len(flows), 0, current=2) == 2
    others = sum(allowance_bytes(r, mib, 1.0) for r in flows[:15])
    assert others == 0
    credits = [2]
    while credits[-1] < window and len(credits) < 10:
        credits.append(node_credit(window, mib, buffer, receiving(flows), others, credits[-1]))
    assert credits == [2, 4, 8, 16]


# ---- a credit of 0: a transfer waits its turn --------------------------------------------


def test_node_credit_gives_0_only_when_others_leave_no_room_for_a_chunk() -> None:
    mib = 1 << 20
    # 16 transfers, 4 MiB chunks, a 32 MiB buffer: a share of 2 MiB is less
    # than a chunk, yet one chunk while there is room for one.
    assert node_credit(16, 4 * mib, 32 * mib, 16, 28 * mib, current=1, floor=0) == 1
    assert node_credit(16, 4 * mib, 32 * mib, 16, 29 * mib, current=1, floor=0) == 0
    assert node_credit(16, 4 * mib, 32 * mib, 16, 29 * mib, current=1) == 1  # floor 1: as before
    # Nobody holds anything: one chunk even if it is larger than the buffer
    # (a transfer alone never waits for ever).
    assert node_credit(16, 4 * mib, 2 * mib, 1, 0, floor=0) == 1
    assert node_credit(16, 4 * mib, 2 * mib, 2, 1, floor=0) == 0


def test_a_transfer_told_to_wait_does_not_expire_and_hears_its_turn_at_once() -> None:
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=5.0, now=0.0)
    assert flow.on_chunk(0, False, 0.0) is Arrival.NEW
    flow.on_written(0)
    fields = flow.ack(0, 0.1)  # the others hold the buffer
    assert fields is not None and fields[2] == 0
    assert flow.waiting and flow.waited_at == 0.1 and flow.update_due(0.1)
    # Nothing can be coming under the credit of 1 it had: its chunk is
    # written and acked. It holds none of the buffer at once.
    assert allowance_bytes(flow.window, 10, 0.1) == 0
    flow.on_timer(60.0)  # the receiver holds it back, not its sender
    assert not flow.ended and flow.poll() == []
    assert flow.window_update(0, 0.5) is None  # still waiting: said again later
    again = flow.window_update(0, 0.1 + WAITING_REPEAT)
    assert again is not None and again[2] == 0
    turn = flow.window_update(2, 1.5)  # room: at once
    assert turn is not None and turn[:2] == (1, []) and turn[2] == 2 and not flow.waiting
    # From its turn on, its sender's silence counts again, from where the
    # wait stopped it (idle 0.1 s before it).
    flow.on_timer(6.3)
    assert not flow.ended
    flow.on_timer(6.5)
    assert flow.ended and [type(out).__name__ for out in flow.poll()] == ["Abandon"]


def test_a_transfer_waits_its_turn_at_most_wait_limit_then_keeps_a_chunk() -> None:
    # Transfers that keep a chunk whatever the others need (lanes, older
    # senders), trickling, could hold the buffer for good: one told to wait
    # for WAIT_LIMIT gets a chunk then, and is never told 0 again.
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=30.0, now=0.0)
    flow.on_chunk(0, False, 0.0)
    flow.on_written(0)
    assert flow.ack(0, 0.0) is not None and flow.waiting
    for now in (WAITING_REPEAT, 2 * WAITING_REPEAT - 0.01):  # (still within the limit)
        again = flow.window_update(0, now)
        assert again is None or again[2] == 0
    assert flow.waiting and not flow.waited_too_long
    turn = flow.window_update(0, WAIT_LIMIT)  # the others still hold it all
    assert turn is not None and turn[2] == 1 and not flow.waiting and flow.waited_too_long
    flow.on_chunk(1, False, WAIT_LIMIT + 0.1)
    flow.on_written(1)
    after = flow.ack(0, WAIT_LIMIT + 0.2)
    assert after is not None and after[2] == 1 and flow.floor == 1


def test_turns_taken_back_unused_count_toward_the_wait_limit() -> None:
    """Turns given and taken back before a chunk used them (the others need
    the room again; the acks that gave them may be lost) do not restart the
    wait: WAIT_LIMIT counts from the first 0 since the transfer last took a
    chunk, so it gets a chunk for good then (its sender fails a send told 0
    for 10 s with no chunk written: an honest receiver must never do that)."""
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=30.0, now=0.0)
    flow.on_chunk(0, False, 0.0)
    flow.on_written(0)
    assert flow.ack(0, 0.0) is not None and flow.waiting
    turn = flow.window_update(1, 0.2)  # a turn, taken back unused when next due
    assert turn is not None and turn[2] == 1 and not flow.waiting
    now, back = 0.2, None
    while back is None and now < WAIT_LIMIT - 0.2:
        now = round(now + 0.05, 2)
        back = flow.window_update(0, now)
    assert back is not None and back[2] == 0 and flow.waiting, (now, back)
    assert now < WAIT_LIMIT and not flow.waited_too_long
    later = flow.window_update(0, WAIT_LIMIT + 0.01)  # 2 s since its last chunk
    assert later is not None and later[2] == 1 and flow.waited_too_long and flow.floor == 1


def test_a_silent_sender_expires_whatever_its_turns() -> None:
    # Waiting stops the idle clock only if the sender used its last turn
    # (then the clock goes on from there at the next): a sender that went
    # silent (crashed) is dropped after idle_timeout seconds, the waits
    # after its unused turns counted, however often it is told to wait.
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=3.0, now=0.0)
    flow.on_chunk(0, False, 0.0)
    flow.on_written(0)
    assert flow.ack(0, 0.5) is not None  # idle 0.5 s when told to wait
    flow.on_timer(1.4)  # it used its turn: the wait stops its clock
    assert not flow.ended
    turn = flow.window_update(1, 1.5)  # its turn; the clock goes on: idle 0.5 s
    assert turn is not None and not flow.waiting
    now = 1.5
    while not flow.ended and now < 100.0:  # 0.5 s of turn, 1 s of waiting, unused
        now += 0.5
        flow.on_timer(now)
        if flow.ended:
            break
        # (told 0 at first; 2 s of waits since its last chunk, the unused
        # turns between them counted, and it keeps a chunk from then on)
        assert flow.ack(0, now, force=True) is not None
        assert flow.waiting or flow.waited_too_long
        now += 1.0
        flow.on_timer(now)
        if not flow.ended:
            flow.window_update(1, now)
            assert not flow.waiting
    # idle 0.5 + 0.5 + 1 + 0.5 + 1 > 3 s: within the second wait after its turn
    assert flow.ended and now == pytest.approx(4.5)
    assert [type(out).__name__ for out in flow.poll()] == ["Abandon"]


def test_a_turn_no_chunk_used_is_told_again() -> None:
    # The ack that gave a waiting transfer its turn may be lost with a
    # connection that broke: its sender would wait for it until its timeout.
    # A turn no chunk has used is told again every WAITING_REPEAT seconds.
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=30.0, now=0.0)
    flow.on_chunk(0, False, 0.0)
    flow.on_written(0)
    assert flow.ack(0, 0.0) is not None and flow.waiting
    turn = flow.window_update(2, 0.5)
    assert turn is not None and turn[2] == 2
    assert flow.window_update(2, 0.5 + WAITING_REPEAT / 2) is None
    assert flow.update_due(0.5 + WAITING_REPEAT)
    again = flow.window_update(2, 0.5 + WAITING_REPEAT)
    assert again is not None and again[2] == 2
    flow.on_chunk(1, False, 2.0)  # used: no more repeats
    flow.on_written(1)
    assert flow.ack(2, 2.0) is not None
    assert flow.window_update(2, 2.0 + WAITING_REPEAT) is None  # (its credit unchanged)


def test_lanes_are_never_told_0() -> None:
    # Their acks go on whichever connection came last: out of order, so no
    # tight count of what can still be coming; one chunk at least.
    flow = IncomingTransfer(total=10, credit=1, idle_timeout=5.0, now=0.0, ordered=False)
    flow.on_chunk(0, False, 0.0)
    flow.on_written(0)
    fields = flow.ack(0, 0.1)
    assert fields is not None and fields[2] == 1 and not flow.waiting
    with pytest.raises(ValueError):
        flow.window.advertise(0, 0.2)


def test_a_sender_of_an_older_release_reading_0_as_1_loses_nothing() -> None:
    # Receivers before this one never gave less than one chunk, and their
    # senders read 0 as 1: such a sender sends one chunk while told to wait.
    # It is taken (its credit of one, as before), and the transfer is never
    # told 0 again.
    old = SendWindow(5)
    old.on_accept([], 1)
    # (on a monotonic clock far from 0: the count's grace long over)
    now, over = 5000.0, 0
    flow = IncomingTransfer(total=5, credit=1, idle_timeout=5.0, now=now)
    while not old.done and now < 5010.0:
        for index in old.next_to_send(now):
            arrival = flow.on_chunk(index, index == 4, now)
            over += arrival is Arrival.OVER_CREDIT
            if arrival is Arrival.NEW:
                flow.on_written(index)
        fields = flow.ack(0, now)  # the others always hold the buffer
        if fields is not None:
            cumulative, sack, credit = fields
            old.on_ack(cumulative, sack, max(1, credit), now)  # as the older release reads it
        now += 0.1
    assert old.done and flow.window.complete
    assert over == 0 and flow.window.over_credit == 0 and old.retransmits == 0
    assert flow.floor == 1 and flow.window.window == 1


@settings(max_examples=80, deadline=None)
@given(
    total=TOTALS,
    first=FIRST_CREDITS,
    credits=st.lists(st.integers(0, 16), min_size=1, max_size=60).filter(any),
    delays=st.lists(st.floats(0.01, 0.6), min_size=1, max_size=40),
    write_delay=st.floats(0.0005, 0.3),
    tick=st.floats(0.05, 0.5),
)
def test_an_honest_sender_told_to_wait_and_then_not_is_never_dropped_nor_resends(
    total: int,
    first: int,
    credits: list[int],
    delays: list[float],
    write_delay: float,
    tick: float,
) -> None:
    # Acks and window updates whose credits go to 0 and back (a receiver
    # whose buffer the other transfers take and give back), over one
    # connection that loses and reorders nothing: the sender sends nothing
    # while told 0, never goes over a credit, resends nothing, and ends.
    updates = [tick * k for k in range(1, 20_000)]  # the receiver's timer, until it ends
    _, flow = pump_honest(total, first, credits, delays, write_delay, updates)
    assert not flow.taken_for_older  # (it may have waited WAIT_LIMIT: then floor 1)
    note(f"{flow.window_updates} window updates")
