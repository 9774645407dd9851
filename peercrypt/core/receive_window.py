"""Receiver side of one transfer: which chunks are held, what to ack.

Pure state machine. A chunk moves from *arrived* (authenticated, queued for
writing) to *written*; only written chunks are acknowledged, so an ack is a
promise that the bytes are in the ``.part`` file. The advertised window is
the credit: the sender may have at most ``window`` chunks unacked, and the
receiver enforces it. A new chunk arriving while as many are queued as the
credit allows (the larger of the last two windows advertised, since a
shrink reaches the sender one ack late) is OVER_CREDIT: dropped, not queued,
so a sender ignoring the protocol cannot grow the receiver's queues.
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
        self._window = self._previous = window
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
        self._previous, self._window = self._window, value

    def on_chunk(self, index: int, last: bool) -> Arrival:
        """Classify an authenticated chunk (the AAD already bound ``last``;
        this checks it against the offered size)."""
        if not 0 <= index < self.total or last != (index == self.total - 1):
            return Arrival.INVALID
        if index in self.written or index in self._queued:
            self.duplicates += 1
            return Arrival.DUPLICATE
        if len(self._queued) >= max(self._window, self._previous):
            self.over_credit += 1
            return Arrival.OVER_CREDIT
        self._queued.add(index)
        return Arrival.NEW

    def on_dropped(self, index: int) -> None:
        """A queued chunk was dropped before it was written."""
        self._queued.discard(index)

    def on_written(self, index: int) -> None:
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
