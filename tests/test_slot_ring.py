"""Slot bookkeeping of the shared-memory ring (peercrypt.core.slot_ring)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.slot_ring import MAX_SEQ, MAX_SLOTS, SlotIntake, SlotRing


def test_slots_go_round_and_come_back_with_the_release() -> None:
    ring = SlotRing(3, 100)
    assert [ring.take(100) for _ in range(4)] == [(0, 0), (1, 100), (2, 200), None]
    ring.on_released(2)
    assert ring.take(50) == (3, 0) and ring.take(1) == (4, 100) and ring.take(1) is None
    assert ring.in_use == 3


def test_a_release_never_goes_back_nor_past_what_was_sent() -> None:
    ring = SlotRing(2, 10)
    ring.take(10)
    ring.on_released(2**40)  # a receiver's lie
    assert ring.released == 1 and ring.in_use == 0
    ring.on_released(0)
    assert ring.released == 1


def test_a_chunk_larger_than_a_slot_is_not_given_one() -> None:
    assert SlotRing(4, 10).take(11) is None


@pytest.mark.parametrize("slots,size", [(0, 10), (MAX_SLOTS + 1, 10), (4, 0)])
def test_impossible_rings_are_refused(slots: int, size: int) -> None:
    with pytest.raises(ValueError):
        SlotRing(slots, size)
    with pytest.raises(ValueError):
        SlotIntake(slots, size)


def test_the_intake_refuses_old_huge_and_overlong_descriptors() -> None:
    intake = SlotIntake(4, 10)
    assert intake.offset(5, 10) == 10
    intake.consumed(5)
    assert intake.released == 6
    assert intake.offset(5, 10) is None  # consumed: its slot may hold a newer chunk
    assert intake.offset(0, 10) is None
    assert intake.offset(6, 11) is None  # longer than a slot
    assert intake.offset(6, -1) is None
    assert intake.offset(MAX_SEQ, 1) is None
    assert intake.offset(7, 0) == 30
    intake.consumed(3)  # older than released: nothing moves
    intake.consumed(MAX_SEQ)
    assert intake.released == 6


# One step of a model run: the sender seals one more chunk, the channel
# delivers the oldest descriptor (or loses it), the receiver acks what it
# consumed (or a hostile sender's scribble makes a copy fail to authenticate).
STEP = st.sampled_from(["seal", "deliver", "lose", "forged", "ack", "stale-ack"])


@given(st.integers(1, 8), st.lists(STEP, max_size=300))
def test_no_slot_is_written_while_the_receiver_may_read_it(slots: int, steps: list[str]) -> None:
    """Whatever the order of seals, deliveries, losses, failed copies and
    (late) acks: every descriptor the receiver takes names a slot that still
    holds that descriptor's chunk, no two unreleased chunks share a slot, and
    the memory is the ring's, never more."""
    size = 7
    ring, intake = SlotRing(slots, size), SlotIntake(slots, size)
    holder: dict[int, int] = {}  # offset -> sequence number written there last
    channel: deque[int] = deque()
    acks: list[int] = [0]
    for step in steps:
        if step == "seal":
            got = ring.take(size)
            if got is None:
                assert ring.in_use == slots
                continue
            seq, offset = got
            assert 0 <= offset <= (slots - 1) * size  # within the ring
            holder[offset] = seq
            channel.append(seq)
        elif step in ("deliver", "lose", "forged") and channel:
            seq = channel.popleft()
            if step == "lose":
                continue
            at = intake.offset(seq, size)
            if at is None:
                continue
            assert holder[at] == seq  # the chunk it names is still there
            if step == "deliver":  # authenticated; a forged copy moves nothing
                intake.consumed(seq)
                acks.append(intake.released)
        elif step == "ack":
            ring.on_released(acks[-1])
        elif step == "stale-ack":
            ring.on_released(acks[0])
        unreleased = range(ring.released, ring.released + ring.in_use)
        assert len({seq % slots for seq in unreleased}) == len(unreleased) <= slots
        assert len(holder) <= slots


@given(st.integers(1, MAX_SLOTS), st.integers(1, 1 << 20), st.integers(-(2**63), 2**63))
def test_every_offset_taken_lies_inside_the_ring(slots: int, size: int, seq: int) -> None:
    intake = SlotIntake(slots, size)
    for length in (0, size, size + 1):
        offset = intake.offset(seq, length)
        if offset is not None:
            assert offset >= 0 and offset + length <= slots * size
