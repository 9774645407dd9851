"""The sender's sealed-chunk buffers: one is written again only once ZeroMQ
has let go of it (a real zero-copy send, held in a queue nobody reads)."""

from __future__ import annotations

import zmq

from actors.sealed_buffers import MAX_BYTES, MAX_SIZES, MIN_BUFFERS, SealedBuffers, SealedPool

SIZE = 128 * 1024  # above pyzmq's copy threshold: sent without a copy


def test_a_buffer_is_reused_only_once_zeromq_is_done_with_it() -> None:
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.bind("inproc://sealed-buffers")
        pull.connect("inproc://sealed-buffers")
        pool = SealedBuffers(SIZE, max_bytes=2 * SIZE)
        assert pool.limit == 2
        first = pool.take()
        assert first is not None and len(first) == SIZE
        first[:] = b"a" * SIZE
        tracker = push.send(first, copy=False, track=True)
        pool.sent(first, tracker)
        second = pool.take()  # the first waits, unread, in ZeroMQ's queue
        assert second is not None and second is not first
        second[:] = b"b" * SIZE
        pool.sent(second, push.send(memoryview(second), copy=False, track=True))
        assert pool.take() is None  # both are ZeroMQ's, and no more are kept
        assert pull.recv() == b"a" * SIZE  # what it sent is what was sealed then
        tracker.wait(10)
        assert pool.take() is first
        assert pull.recv() == b"b" * SIZE
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_a_buffer_whose_send_did_not_happen_is_free() -> None:
    pool = SealedBuffers(SIZE, max_bytes=SIZE)
    buffer = pool.take()
    assert buffer is not None
    pool.sent(buffer, None)
    assert pool.take() is buffer
    assert SealedBuffers(10, max_bytes=0).limit == MIN_BUFFERS == 2  # whatever the bound


def test_a_chunk_larger_than_the_bound_still_gets_a_second_buffer() -> None:
    """A 4 MiB chunk (and its tag) is over the ring's MAX_BYTES: with one
    buffer the next chunk always found it still queued and was sealed into
    a new object; the second is taken while ZeroMQ still reads the first."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    size = 4 * 1024 * 1024 + 16
    try:
        push.bind("inproc://sealed-large")
        pull.connect("inproc://sealed-large")
        pool = SealedBuffers(size)
        assert size > MAX_BYTES and pool.limit == 2
        first = pool.take()
        assert first is not None
        first[:] = b"a" * size
        pool.sent(first, push.send(first, copy=False, track=True))
        second = pool.take()  # the first is still in ZeroMQ's queue
        assert second is not None and second is not first and len(second) == size
        second[:] = b"b" * size
        pool.sent(second, push.send(second, copy=False, track=True))
        assert pool.take() is None
        assert pull.recv() == b"a" * size
        assert pull.recv() == b"b" * size
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_one_pool_bounds_the_buffers_of_every_transfer_together() -> None:
    """Transfers share the sender's pool: however many are in flight, it
    keeps at most its bound per size and ``MAX_SIZES`` sizes (rings per
    transfer kept each transfer's peak until it ended)."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.bind("inproc://sealed-pool")
        pull.connect("inproc://sealed-pool")
        pool = SealedPool(max_bytes=3 * SIZE)
        fresh = 0
        for _transfer in range(8):  # each sends 2 chunks ZeroMQ still holds
            for _ in range(2):
                ring = pool.ring(SIZE)
                buffer = ring.take()
                if buffer is None:
                    fresh += 1  # sealed into a new object, as before the pool
                    continue
                ring.sent(buffer, push.send(buffer, copy=False, track=True))
        assert pool.kept_bytes() == 3 * SIZE and fresh == 13
        for extra in range(1, MAX_SIZES + 2):  # other chunk sizes come and go
            ring = pool.ring(SIZE + extra)
            taken = ring.take()
            assert taken is not None
            ring.sent(taken, None)
        assert pool.kept_bytes() == sum(SIZE + extra for extra in range(2, MAX_SIZES + 2))
        pool.clear()
        assert pool.kept_bytes() == 0
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_a_stalled_transfers_buffer_does_not_hold_back_the_others() -> None:
    """The pool is every transfer's: a buffer queued for a peer that does not
    read (the oldest) does not keep another transfer's sent buffer, which
    ZeroMQ let go of, from being reused."""
    ctx = zmq.Context()
    socks = [ctx.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.PUSH, zmq.PULL)]
    stalled, stalled_peer, live, live_peer = socks
    try:
        for i, (push, pull) in enumerate(((stalled, stalled_peer), (live, live_peer))):
            push.bind(f"inproc://sealed-stalled-{i}")
            pull.connect(f"inproc://sealed-stalled-{i}")
        pool = SealedBuffers(SIZE, max_bytes=2 * SIZE)
        first = pool.take()
        assert first is not None
        pool.sent(first, stalled.send(first, copy=False, track=True))  # never read
        second = pool.take()
        assert second is not None and second is not first
        second[:] = b"s" * SIZE
        tracker = live.send(second, copy=False, track=True)
        pool.sent(second, tracker)
        assert live_peer.recv() == b"s" * SIZE
        tracker.wait(10)
        assert pool.take() is second
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
