"""Receiver side of one transfer: which chunks are held, what to ack.

Pure state machine. A chunk moves from *arrived* (authenticated, queued for
writing) to *written*; only written chunks are acknowledged, so an ack is a
promise that the bytes are in the ``.part`` file. The advertised window is
the credit: the sender may have at most ``window`` chunks unacked, and the
receiver enforces it. A new chunk arriving while as many are queued as the
credit allows is OVER_CREDIT: dropped, not queued, so a sender ignoring the
protocol cannot grow the receiver's queues. After the credit shrinks, the
old (larger) one is still allowed, less one chunk for every chunk written
since: the sender may have had that many in flight under it before it heard
of the new one, and dropping them would only make it resend them (many
transfers starting at once shrink every credit). That is exact for an
honest sender whose acks arrive in order: the ack that shrank the credit
acknowledged every chunk written until then, so the chunks sent under the
old credit and not yet written are at most the old credit less those
written since, and each later ack carries the new one.
"""

from __future__ import annotations

import enum

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap


class Arrival(enum.Enum):
    NEW = "new"  # write it
    DUPLICATE = "duplicate"  # already queued or written: just re-ack
    INVALID = "invalid"  # index outside the file, or wrong last flag
    OVER_CREDIT = "over-credit"  # more chunks queued than the credit allows: drop


class ReceiveWindow:
    def __init__(self, total: int, window: int, have: ChunkBitmap | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.total = total
        self._window = self._allowed = window
        self.written = have if have is not None else ChunkBitmap(total)
        if self.written.total != total:
            raise ValueError("held bitmap does not match the file")
        self._queued: set[int] = set()
        self.duplicates = 0
        self.over_credit = 0

    @property
    def window(self) -> int:
        """The credit advertised in acks, in chunks (set once per ack sent)."""
        return self._window

    @window.setter
    def window(self, value: int) -> None:
        if value < 1:
            raise ValueError("window must be >= 1")
        # The old credit's chunks may still be coming (see the module docs).
        self._allowed = max(self._allowed, self._window)
        self._window = value

    @property
    def allowed(self) -> int:
        """Chunks that may be queued now: the window, or what is left of a
        larger one advertised before (see the module docs)."""
        return max(self._window, self._allowed)

    def on_chunk(self, index: int, last: bool) -> Arrival:
        """Classify an authenticated chunk (the AAD already bound ``last``;
        this checks it against the offered size)."""
        if not 0 <= index < self.total or last != (index == self.total - 1):
            return Arrival.INVALID
        if index in self.written or index in self._queued:
            self.duplicates += 1
            return Arrival.DUPLICATE
        if len(self._queued) >= self.allowed:
            self.over_credit += 1
            return Arrival.OVER_CREDIT
        self._queued.add(index)
        return Arrival.NEW

    def on_dropped(self, index: int) -> None:
        """A queued chunk was dropped before it was written."""
        self._queued.discard(index)

    def on_written(self, index: int) -> None:
        if index in self._queued and self._allowed > self._window:
            self._allowed -= 1  # one fewer of the old credit's chunks can be coming
        self._queued.discard(index)
        self.written.add(index)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def complete(self) -> bool:
        return self.written.complete

    def ack_fields(self) -> tuple[int, list[tuple[int, int]], int]:
        """(cumulative, sack ranges above it (bounded), window) for an Ack."""
        cumulative = self.written.cumulative
        sack = self.written.ranges(cumulative, limit=MAX_RANGES)
        return cumulative, sack, self.window


# Chunks of credit a transfer that starts beside others gets at most; each
# ack may double it (up to its share). A node does not know how many
# transfers are about to start: those accepted first would otherwise take
# the whole buffer at once, and those after them get one chunk each until
# that old credit has arrived and been written. A transfer alone starts
# with the whole window.
INITIAL_CREDIT = 4


def node_credit(
    window: int, chunk_size: int, buffer: int, running: int, others: int, current: int = 0
) -> int:
    """A transfer's credit in chunks: at most ``window``, its fair share of
    the node's receive ``buffer`` among ``running`` transfers (itself
    included), twice its ``current`` credit (a new transfer: 0, it gets
    :data:`INITIAL_CREDIT` unless it is the only one), and what the other
    transfers' allowances (``others`` bytes: see :func:`allowance_bytes`)
    leave of the buffer; never below one chunk. So the allowances of all of
    a node's transfers together stay within the buffer plus one chunk per
    transfer at most (a transfer that starts while the others hold all of
    it gets one chunk until their credit shrinks)."""
    share = buffer // max(1, running)
    free = max(0, buffer - others)
    if current:
        grown = max(INITIAL_CREDIT, 2 * current)
    else:  # a new transfer: the whole window if it is the only one
        grown = window if running <= 1 else INITIAL_CREDIT
    return max(1, min(window, grown, share // chunk_size, free // chunk_size))


def allowance_bytes(window: ReceiveWindow, chunk_size: int) -> int:
    """Bytes a transfer may have queued now: its allowance, but no more than
    the chunks it has left to write."""
    return min(window.allowed, window.total - window.written.count) * chunk_size
