"""Buffers the sender seals chunks into, reused once ZeroMQ lets go of them.

A sealed chunk goes to ZeroMQ without a copy (``copy=False``): the socket's
I/O thread reads the sender's own buffer while it writes it to TCP, and
pyzmq's :class:`zmq.MessageTracker` says when it is done with it. Sealing
each chunk into a new ``bytes`` object cost an allocation and the zeroing of
a chunk's worth of fresh memory per chunk; here a buffer is sealed into
again once its last send is finished (``AESGCM.encrypt_into``).

A buffer is never written while ZeroMQ may still read it: :meth:`take`
hands out only a buffer whose tracker is done (or that was never sent). At
most ``limit`` buffers are kept; when all of them are still in ZeroMQ's
hands, :meth:`take` says so (None) and the caller seals into a new object
as before. Used by the sender actor's thread only.

The sender keeps one :class:`SealedPool` for all its transfers, not a ring
per transfer: rings per transfer kept each one's peak of buffers until it
ended, so 16 transfers in flight held up to 16 x 16 MiB.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import zmq

# Bytes of sealed-chunk buffers a ring keeps at most (and buffers: small
# chunks go to ZeroMQ as copies, their buffer is free at once). ZeroMQ lets
# go of a chunk once its I/O thread has written it to the socket, so a few
# suffice: 4 MiB cost the sending thread the same CPU per GiB as 16 (0.72
# against 0.73 s) and kept the nodes' peak RSS under 64 flows at 123-133
# MiB against 121-170 (scripts/bench_many.py, docs/benchmarks.md).
MAX_BYTES = 4 * 1024 * 1024
MAX_BUFFERS = 64
# But at least two, whatever the chunk: with one (a chunk of 4 MiB or more
# against MAX_BYTES), the next chunk found it still queued and was sealed
# into a new, zeroed object 71-80 times in 257 (a 1 GiB send in 4 MiB
# chunks; memset and page faults 5% of the sending thread in perf); with
# two, 7-12 times (docs/benchmarks.md, 2026-12-02 21:30-22:27).
MIN_BUFFERS = 2
# Buffer sizes (chunk sizes) a pool keeps rings for; the least recently used
# one is dropped for a new size (ZeroMQ holds what it still sends itself).
MAX_SIZES = 2


class SealedBuffers:
    """Output buffers of ``size`` bytes (a whole chunk and its tag)."""

    def __init__(self, size: int, max_bytes: int = MAX_BYTES) -> None:
        self.size = size
        self.limit = max(MIN_BUFFERS, min(MAX_BUFFERS, max_bytes // max(1, size)))
        # Oldest send first (ZeroMQ lets go of one connection's in the order they
        # were sent), but for one still queued that take() moved to the back.
        self._ring: deque[tuple[bytearray, zmq.MessageTracker | None]] = deque()

    def take(self) -> bytearray | None:
        """A buffer ZeroMQ no longer reads (contents undefined), or None when
        every one of the ``limit`` buffers is still being sent. The caller
        must :meth:`sent` it with the tracker of its send (or None if the
        send did not happen) before the next :meth:`take`."""
        if self._ring:
            buffer, tracker = self._ring[0]
            if tracker is None or tracker.done:
                self._ring.popleft()
                return buffer
            if len(self._ring) >= self.limit > 1:
                # The oldest is still queued (a slow or stalled peer's: the
                # pool is every transfer's): it goes to the back, and the next
                # one, maybe another connection's and done, is looked at.
                self._ring.rotate(-1)
                buffer, tracker = self._ring[0]
                if tracker is None or tracker.done:
                    self._ring.popleft()
                    return buffer
        if len(self._ring) < self.limit:
            return bytearray(self.size)
        return None

    def sent(self, buffer: bytearray, tracker: zmq.MessageTracker | None) -> None:
        """``buffer`` went to ZeroMQ, which reads it until ``tracker`` is done."""
        self._ring.append((buffer, tracker))

    def __len__(self) -> int:
        return len(self._ring)


class SealedPool:
    """The sender's rings of :class:`SealedBuffers`, one per buffer size, at
    most ``MAX_SIZES`` of them: at most ``MAX_SIZES * max_bytes`` kept for
    every transfer of the node together."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._rings: OrderedDict[int, SealedBuffers] = OrderedDict()

    def ring(self, size: int) -> SealedBuffers:
        """The ring of ``size``-byte buffers (made, or made most recent)."""
        ring = self._rings.get(size)
        if ring is None:
            ring = self._rings[size] = SealedBuffers(size, self._max_bytes)
            while len(self._rings) > MAX_SIZES:
                # A buffer ZeroMQ still sends stays alive in its frame.
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(size)
        return ring

    def kept_bytes(self) -> int:
        """Bytes of buffers the pool holds (sent or free)."""
        return sum(ring.size * len(ring) for ring in self._rings.values())

    def clear(self) -> None:
        """Forget every buffer (the sender has no transfer left)."""
        self._rings.clear()
