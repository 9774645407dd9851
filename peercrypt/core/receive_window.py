"""Receiver side of one transfer: which chunks are held, what to ack.

Pure state machine. A chunk moves from *arrived* (authenticated, queued for
writing) to *written*; only written chunks are acknowledged, so an ack is a
promise that the bytes are in the ``.part`` file. The advertised window is a
constant credit: the sender never has more than ``window`` chunks unacked,
so at most that many wait in the receiver's queues.
"""

from __future__ import annotations

import enum

from peercrypt.core.bitmap import MAX_SACK_RANGES, ChunkBitmap


class Arrival(enum.Enum):
    NEW = "new"  # write it
    DUPLICATE = "duplicate"  # already queued or written: just re-ack
    INVALID = "invalid"  # index outside the file, or wrong last flag


class ReceiveWindow:
    def __init__(self, total: int, window: int, have: ChunkBitmap | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.total = total
        self.window = window
        self.written = have if have is not None else ChunkBitmap(total)
        if self.written.total != total:
            raise ValueError("held bitmap does not match the file")
        self._queued: set[int] = set()
        self.duplicates = 0

    def on_chunk(self, index: int, last: bool) -> Arrival:
        """Classify an authenticated chunk (the AAD already bound ``last``;
        this checks it against the offered size)."""
        if not 0 <= index < self.total or last != (index == self.total - 1):
            return Arrival.INVALID
        if index in self.written or index in self._queued:
            self.duplicates += 1
            return Arrival.DUPLICATE
        self._queued.add(index)
        return Arrival.NEW

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
        sack = self.written.ranges(cumulative, limit=MAX_SACK_RANGES)
        return cumulative, sack, self.window
