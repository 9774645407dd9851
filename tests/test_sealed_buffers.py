"""The sender's sealed-chunk buffers: one is written again only once ZeroMQ
has let go of it (a real zero-copy send, held in a queue nobody reads)."""

from __future__ import annotations

import zmq

from actors.sealed_buffers import SealedBuffers

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
    assert SealedBuffers(10, max_bytes=0).limit == 1  # one at least, whatever the bound
