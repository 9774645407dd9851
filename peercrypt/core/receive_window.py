"""Receiver side of one transfer: which chunks are held, what to ack.

Pure state machine. A chunk moves from *arrived* (authenticated, queued for
writing) to *written*; only written chunks are acknowledged, so an ack is a
promise that the bytes are in the ``.part`` file. The advertised window is
the credit: the sender may have at most ``window`` chunks unacked, and the
receiver enforces it. A new chunk arriving while as many are queued as the
credit allows is OVER_CREDIT: dropped, not queued, so a sender ignoring the
protocol cannot grow the receiver's queues. After the credit shrinks, the
old (larger) one is still allowed for as many acks as it was chunks: the
sender had that many in flight under it before it heard of the new one,
and dropping them would only make it resend them (many transfers starting
at once shrink every credit).
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
        self._grace = 0  # acks left during which ``_allowed`` exceeds the window
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
        if value < self._window:  # a shrink: the old credit's chunks are still coming
            self._allowed = max(self._allowed, self._window)
            self._grace = max(self._grace, self._window)
        elif self._grace:
            self._grace -= 1
        if not self._grace:
            self._allowed = value
        self._window = value

    @property
    def allowed(self) -> int:
        """Chunks that may be queued now: the window, or a larger one that
        was advertised shortly before (see the module docs)."""
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
