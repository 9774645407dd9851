"""Which chunks of a file are held: a bit per chunk.

Memory is one bit per chunk (1 TiB at 1 MiB chunks: 128 KiB). Acks describe a
bitmap as a cumulative index (every chunk below it is held) plus a bounded
list of [start, end) ranges above it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# An ack carries at most this many [start, end) ranges above its cumulative
# index; more holes than that are found again by the sender's timers.
MAX_SACK_RANGES = 64


class ChunkBitmap:
    """A fixed-size set of chunk indices in ``range(total)``."""

    __slots__ = ("_bits", "_count", "_cumulative", "_end", "total")

    def __init__(self, total: int) -> None:
        if total < 0:
            raise ValueError("total must be >= 0")
        self.total = total
        self._bits = bytearray((total + 7) // 8)
        self._count = 0
        self._cumulative = 0
        self._end = 0  # one past the highest held index

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.total and bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Mark ``index`` held. Returns False if it already was. Raises IndexError."""
        if not 0 <= index < self.total:
            raise IndexError(f"chunk {index} outside 0..{self.total - 1}")
        byte, bit = index >> 3, 1 << (index & 7)
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        self._count += 1
        self._end = max(self._end, index + 1)
        while self._cumulative < self.total and self._cumulative in self:
            self._cumulative += 1
        return True

    def add_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """Mark all of [start, end) ranges (clipped to the bitmap); return the new ones."""
        added = []
        for start, end in ranges:
            for index in range(max(0, start), min(end, self.total)):
                if self.add(index):
                    added.append(index)
        return added

    @property
    def count(self) -> int:
        return self._count

    @property
    def cumulative(self) -> int:
        """The first missing index (``total`` when complete)."""
        return self._cumulative

    @property
    def complete(self) -> bool:
        return self._count == self.total

    def ranges(self, start: int = 0, limit: int | None = None) -> list[tuple[int, int]]:
        """Held indices at or above ``start`` as sorted [start, end) ranges,
        at most ``limit`` of them (the lowest)."""
        out: list[tuple[int, int]] = []
        if limit is not None and limit <= 0:
            return out
        index = max(start, self._cumulative)
        if index > start and self._cumulative > start:
            out.append((start, self._cumulative))
        while index < self._end and (limit is None or len(out) < limit):
            if index in self:
                end = index + 1
                while end < self._end and end in self:
                    end += 1
                out.append((index, end))
                index = end
            else:
                index += 1
        return out

    def missing(self) -> Iterator[int]:
        return (i for i in range(self._cumulative, self.total) if i not in self)

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    @classmethod
    def from_bytes(cls, total: int, data: bytes) -> ChunkBitmap:
        bitmap = cls(total)
        if len(data) != len(bitmap._bits):
            raise ValueError("bitmap size does not match total")
        for index in range(total):
            if data[index >> 3] & (1 << (index & 7)):
                bitmap.add(index)
        return bitmap


def flatten(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """[(a, b), (c, d)] -> [a, b, c, d] (the wire form)."""
    return [x for pair in ranges for x in pair]


def pairs(flat: list[int]) -> list[tuple[int, int]]:
    """The inverse of :func:`flatten`. Raises ValueError on an odd length or
    a range with end < start."""
    if len(flat) % 2:
        raise ValueError("ranges must come in [start, end) pairs")
    out = list(zip(flat[::2], flat[1::2], strict=True))
    if any(end < start or start < 0 for start, end in out):
        raise ValueError("range with end before start")
    return out
