"""Which chunks of a file are held: a bit per chunk, walked by ranges.

Memory is one bit per chunk (1 TiB at 1 MiB chunks: 128 KiB; the largest
transfer a receiver takes, ``MAX_TRANSFER_CHUNKS``, 4 MiB). Acks describe a
bitmap as a cumulative index (every chunk below it is held) plus a bounded
list of [start, end) ranges above it.

Cost: the Python work of every operation is O(ranges it touches), never
O(chunks). Finding the next held or missing chunk skips whole runs of empty
or full bytes with C-level compares of the bit array (blocks that double up
to 64 KiB: 20 million chunks are 2.5 MB, under a millisecond to cross),
and adding a range sets its whole bytes with one slice assignment. So an ack
of a sparse transfer of 20 million chunks is built in well under 10 ms
(``scripts/bench_bitmap.py``), and a sender applying a cumulative ack touches
only the chunks it newly covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# An ack (SACK), a resume offer or a multicast NAK carries at most this many
# [start, end) ranges; more holes than that are found again by timers.
MAX_RANGES = 64
# The most chunks one transfer may have (a 4 MiB bitmap): an offer over it is
# refused, so no peer can make a node allocate or scan more.
MAX_TRANSFER_CHUNKS = 2**25

_FULL = 0xFF
_FIRST_BLOCK = 64  # bytes looked at first by a scan; doubles up to _MAX_BLOCK
_MAX_BLOCK = 1 << 16


_EMPTY = bytes(_MAX_BLOCK)
_FULL_BLOCK = b"\xff" * _MAX_BLOCK


def _skip(bits: bytearray, pos: int, fill: bytes) -> int | None:
    """The first byte index >= ``pos`` whose value is not ``fill[0]`` (None:
    there is none); ``fill`` is ``_EMPTY`` or ``_FULL_BLOCK``. Compares blocks
    that double in size (memcmp speed), then halves the block that differs,
    so a short gap costs little and a long one about a memory copy."""
    block = _FIRST_BLOCK
    end = len(bits)
    while pos < end:
        n = min(block, end - pos)
        if bits[pos : pos + n] != fill[:n]:
            while n > _FIRST_BLOCK:
                half = n // 2
                if bits[pos : pos + half] == fill[:half]:
                    pos, n = pos + half, n - half
                else:
                    n = half
            segment = bits[pos : pos + n]
            return pos + n - len(segment.lstrip(fill[:1]))
        pos += n
        block = min(block * 2, _MAX_BLOCK)
    return None


def _lowest_bit(byte: int) -> int:
    return (byte & -byte).bit_length() - 1


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

    # -- scanning ---------------------------------------------------------------

    def next_held(self, index: int) -> int:
        """The first held index >= ``index`` (``total`` if there is none)."""
        index = max(0, index)
        if index >= self._end:
            return self.total
        byte = index >> 3
        rest = self._bits[byte] >> (index & 7)
        if rest:
            return index + _lowest_bit(rest)
        pos = _skip(self._bits, byte + 1, _EMPTY)
        if pos is None:
            return self.total
        return (pos << 3) + _lowest_bit(self._bits[pos])

    def next_missing(self, index: int) -> int:
        """The first missing index >= ``index`` (``total`` if there is none)."""
        index = max(0, index)
        if index >= self.total:
            return self.total
        if index >= self._end:
            return index
        byte = index >> 3
        rest = (~self._bits[byte] & _FULL) >> (index & 7)
        if rest:
            return min(self.total, index + _lowest_bit(rest))
        pos = _skip(self._bits, byte + 1, _FULL_BLOCK)
        if pos is None:
            return self.total
        return min(self.total, (pos << 3) + _lowest_bit(~self._bits[pos] & _FULL))

    # -- adding -----------------------------------------------------------------

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
        if index == self._cumulative:
            self._cumulative = self.next_missing(index + 1)
        return True

    def add_range(self, start: int, end: int) -> int:
        """Mark all of [start, end) (clipped to the bitmap); how many were new.
        Below the cumulative index nothing is touched, so re-applying a
        cumulative ack costs nothing."""
        start, end = max(start, self._cumulative), min(end, self.total)
        if start >= end:
            return 0
        added = 0
        head_end = min(end, (start + 7) & ~7)
        for index in range(start, head_end):
            added += self._set(index)
        first, last = head_end >> 3, end >> 3
        if last > first:
            held = int.from_bytes(self._bits[first:last], "little").bit_count()
            added += (last - first) * 8 - held
            self._bits[first:last] = b"\xff" * (last - first)
        for index in range(max(head_end, last << 3), end):
            added += self._set(index)
        self._count += added
        self._end = max(self._end, end)
        self._cumulative = self.next_missing(self._cumulative)
        return added

    def _set(self, index: int) -> int:
        byte, bit = index >> 3, 1 << (index & 7)
        if self._bits[byte] & bit:
            return 0
        self._bits[byte] |= bit
        return 1

    def discard(self, index: int) -> bool:
        """Mark ``index`` missing again (a chunk taken but then not kept);
        False if it was not held."""
        if index not in self:
            return False
        self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
        self._count -= 1
        self._cumulative = min(self._cumulative, index)
        if index + 1 == self._end:  # the highest went: find the one below
            below = bytes(self._bits[: (index >> 3) + 1]).rstrip(b"\0")
            self._end = (len(below) - 1) * 8 + below[-1].bit_length() if below else 0
        return True

    def add_ranges(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Mark all of the [start, end) ranges; how many chunks were new."""
        return sum(self.add_range(start, end) for start, end in ranges)

    # -- reading ----------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def cumulative(self) -> int:
        """The first missing index (``total`` when complete)."""
        return self._cumulative

    @property
    def highest(self) -> int:
        """The highest held index (-1: none)."""
        return self._end - 1

    @property
    def complete(self) -> bool:
        return self._count == self.total

    def ranges(self, start: int = 0, limit: int | None = None) -> list[tuple[int, int]]:
        """Held indices at or above ``start`` as sorted [start, end) ranges,
        at most ``limit`` of them (the lowest)."""
        out: list[tuple[int, int]] = []
        index = start
        while limit is None or len(out) < limit:
            first = self.next_held(index)
            if first >= self.total:
                break
            index = self.next_missing(first)
            out.append((first, index))
        return out

    def missing(self) -> Iterator[int]:
        index = self.next_missing(self._cumulative)
        while index < self.total:
            yield index
            index = self.next_missing(index + 1)

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    @classmethod
    def from_bytes(cls, total: int, data: bytes) -> ChunkBitmap:
        bitmap = cls(total)
        if len(data) != len(bitmap._bits):
            raise ValueError("bitmap size does not match total")
        bits = bytearray(data)
        if total & 7:
            bits[-1] &= (1 << (total & 7)) - 1  # padding bits are never held
        bitmap._bits = bits
        bitmap._count = int.from_bytes(bits, "little").bit_count()
        used = len(bits.rstrip(b"\x00"))
        bitmap._end = (used - 1) * 8 + bits[used - 1].bit_length() if used else 0
        bitmap._cumulative = bitmap.next_missing(0)
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
