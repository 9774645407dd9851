"""The receiver's side of a multicast session as a sans-IO object (fake time)."""

from __future__ import annotations

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.multicast_incoming import (
    ACK_EVERY,
    ACK_INTERVAL,
    BACKLOG_GRACE,
    VERIFY_ACK_INTERVAL,
    Expired,
    FinishFile,
    MulticastIncoming,
    SendAck,
)


def test_no_ack_before_the_key_then_one_at_once() -> None:
    s = MulticastIncoming(10, 0.0, idle_timeout=30.0)
    s.on_timer(1.0)
    assert s.poll() == []  # it cannot ack a session it has no key for
    s.on_key(1.0)
    assert s.poll() == [SendAck(0, 0, [])]


def test_acks_every_ack_every_written_chunks_and_on_the_timer() -> None:
    s = MulticastIncoming(40, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.poll()
    s.on_status(40, b"", 3, 0.0)  # the sender asks for an ack every 3 chunks
    for i in range(3):
        assert s.on_chunk(i, 0.01)
        s.on_written(i, 0.01)
    assert s.poll() == [SendAck(3, 3, [])]
    s.on_timer(0.01 + ACK_INTERVAL / 2)
    assert s.poll() == []  # not due yet
    s.on_chunk(5, 0.02)  # 3 and 4 missing below what was seen
    s.on_timer(0.01 + ACK_INTERVAL)
    assert s.poll() == [SendAck(3, 3, [(3, 5)])]
    s.on_status(40, b"", 100, 0.1)
    assert s.ack_every == ACK_EVERY  # never fewer acks than its own cadence


def test_finishes_once_when_complete_and_the_hash_is_known() -> None:
    s = MulticastIncoming(2, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.poll()
    for i in range(2):
        s.on_chunk(i, 0.1)
        s.on_written(i, 0.1)
    assert not any(isinstance(o, FinishFile) for o in s.poll())  # no hash yet
    s.on_status(2, b"h" * 32, 0, 0.2)
    assert s.poll() == [FinishFile(b"h" * 32)]
    s.on_status(2, b"h" * 32, 0, 0.3)
    assert s.poll() == []  # once
    assert s.next_timer() == s.last_ack + VERIFY_ACK_INTERVAL
    s.on_timer(s.last_ack + VERIFY_ACK_INTERVAL / 2)
    assert s.poll() == []  # not due: finishing acks are slower
    s.on_checked(1, 20.0)  # a long check that moves: past the idle timeout,
    s.on_checked(2, 40.0)  # it does not expire
    s.on_timer(60.0)
    assert s.poll() == [SendAck(2, 2, [])]  # alive and verifying
    s.on_timer(60.0 + VERIFY_ACK_INTERVAL)
    assert s.poll() == [SendAck(2, 2, [])]


def test_a_final_check_that_stops_moving_expires_the_session_once() -> None:
    """Finishing, the writer's final checks are the activity: they stop
    moving (a disk that stopped answering, a writer gone) for the idle
    timeout, and the session expires (the actor tells the sender), however
    alive the sender is; statuses do not keep it."""
    s = MulticastIncoming(1, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.on_chunk(0, 1.0)
    s.on_written(0, 1.0)
    s.on_status(1, b"h" * 32, 0, 2.0)
    assert FinishFile(b"h" * 32) in s.poll()
    s.on_checked(7, 10.0)
    s.on_checked(7, 20.0)  # the same count: not progress
    s.on_status(1, b"h" * 32, 0, 39.0)  # the sender still there
    assert s.next_timer() == min(s.last_ack + VERIFY_ACK_INTERVAL, 40.0)
    s.on_timer(40.0)
    assert not any(isinstance(o, Expired) for o in s.poll())
    s.on_timer(40.5)
    assert s.poll() == [Expired(30.5, checking=True)]
    s.on_timer(80.0)
    assert s.poll() == [] and s.next_timer() is None
    # Once the check's hash is in, storing it (a folder) is not bounded so.
    t = MulticastIncoming(1, 0.0, idle_timeout=30.0)
    t.on_key(0.0)
    t.on_chunk(0, 1.0)
    t.on_written(0, 1.0)
    t.on_status(1, b"h" * 32, 0, 2.0)
    t.on_hashed()
    t.on_timer(100.0)
    assert not any(isinstance(o, Expired) for o in t.poll())


def test_a_silent_session_expires_once() -> None:
    s = MulticastIncoming(5, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.poll()
    s.on_timer(29.0)
    assert not any(isinstance(o, Expired) for o in s.poll())
    s.on_timer(30.5)
    assert s.poll() == [Expired(30.5)]
    s.on_timer(40.0)
    assert s.poll() == [] and s.next_timer() is None


def test_a_rejoining_receiver_starts_from_what_it_holds() -> None:
    held = ChunkBitmap(6)
    held.add_range(0, 4)
    s = MulticastIncoming(6, 0.0, idle_timeout=30.0, have=held)
    assert s.on_chunk(2, 0.1) is False  # held: not written again
    s.on_key(0.2)
    assert s.poll() == [SendAck(4, 4, [])]
    s.on_status(6, b"", 0, 0.2)
    s.on_timer(1.0)
    assert s.poll() == [SendAck(4, 4, [(4, 6)])]  # only what it lacks


def test_datagrams_waiting_to_be_read_hold_back_naks_of_the_horizon_for_a_while() -> None:
    """When no chunk came for the holdoff, what the sender published is
    NAKed - unless datagrams still wait in the socket (the reading thread
    was behind): then only for BACKLOG_GRACE after the last chunk, so a
    flood of datagrams that are not ours delays those NAKs no longer."""
    s = MulticastIncoming(40, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.on_status(20, b"", 0, 0.0)  # 20 chunks published
    s.on_chunk(0, 0.1)
    s.poll()
    s.on_backlog(0.5)
    s.on_timer(0.5)
    assert s.poll() == [SendAck(0, 0, [])]  # nothing NAKed: they are on their way
    s.on_timer(0.5 + ACK_INTERVAL)
    assert s.poll() == [SendAck(0, 0, [])]  # within the holdoff of the backlog seen
    s.on_timer(0.5 + s.tracker.holdoff)
    assert s.poll() == [SendAck(0, 0, [(1, 20)])]  # no backlog since: NAKed
    t = 1.0 + BACKLOG_GRACE + 0.1
    s.on_chunk(1, 1.0)
    s.on_backlog(t)  # still a backlog, but no chunk for longer than the grace
    s.on_timer(t)
    assert s.poll() == [SendAck(0, 0, [(2, 20)])]


def test_a_chunk_the_writer_refused_is_missing_again_and_naked() -> None:
    """A chunk taken but refused by a full writer is not held: it is NAKed
    (the sender repairs it), taken again when it comes, and the session
    finishes only once it is written."""
    s = MulticastIncoming(3, 0.0, idle_timeout=30.0)
    s.on_key(0.0)
    s.on_status(3, b"h" * 32, 1, 0.0)
    s.poll()
    for i in range(3):
        assert s.on_chunk(i, 0.01)
    s.on_write_refused(1)
    s.on_written(0, 0.02)
    s.on_written(2, 0.02)
    s.poll()
    s.on_timer(10.0)
    naks = [out.naks for out in s.poll() if isinstance(out, SendAck)]
    assert naks and naks[-1] == [(1, 2)], naks
    assert s.on_chunk(1, 10.1)  # the repair is new, not a duplicate
    s.on_written(1, 10.2)
    assert FinishFile(b"h" * 32) in s.poll()
