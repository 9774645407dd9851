"""Slot bookkeeping of a shared-memory ring between two nodes of one host.

Pure (no memory, no sockets). The receiver lends the sender a ring of
``slots`` slots of ``slot_size`` bytes (peercrypt/shm_ring.py maps it); the
sender seals a chunk straight into a free slot and sends only a descriptor
naming the slot by a sequence number ``seq``: the slot is ``seq % slots``,
its offset ``slot * slot_size`` (nothing in a descriptor is an offset or a
length the receiver would have to trust). The receiver copies the slot out,
authenticates the copy, and then counts the slot as released: every Ack
carries ``released``, one past the highest sequence number it consumed.

- :class:`SlotRing` (the sender): hands out sequence number ``seq`` only
  while ``seq - released < slots``, so it never writes a slot the receiver
  may still be reading; when none is free it says so (None) and the caller
  sends the chunk over the socket instead (nothing waits on the ring). A
  released count above what was handed out is clamped: a receiver cannot
  make it reuse a slot it never sent.
- :class:`SlotIntake` (the receiver): takes a descriptor only for a sequence
  number at or above ``released`` (older ones were consumed or skipped: their
  slot may hold a newer chunk now) and a length that fits a slot; it moves
  ``released`` only for a descriptor whose copy authenticated, so a forged
  descriptor moves nothing. Descriptors lost with a connection are skipped
  over by the next one (their chunks are sent again as any lost chunk).
"""

from __future__ import annotations

MAX_SLOTS = 256
MAX_SEQ = 2**62  # as a wire counter


class SlotRing:
    """The sender's side: which sequence numbers (slots) it may write."""

    __slots__ = ("_next", "released", "slot_size", "slots")

    def __init__(self, slots: int, slot_size: int) -> None:
        if not 1 <= slots <= MAX_SLOTS or slot_size < 1:
            raise ValueError("a ring has 1..256 slots of at least one byte")
        self.slots = slots
        self.slot_size = slot_size
        self._next = 0  # the next sequence number handed out
        self.released = 0  # every sequence number below is the sender's again

    @property
    def in_use(self) -> int:
        """Slots the receiver may still read."""
        return self._next - self.released

    def take(self, length: int) -> tuple[int, int] | None:
        """(sequence number, byte offset) of a free slot for ``length`` bytes,
        or None when every slot may still be read (or it does not fit)."""
        if length > self.slot_size or self.in_use >= self.slots or self._next >= MAX_SEQ:
            return None
        seq = self._next
        self._next += 1
        return seq, (seq % self.slots) * self.slot_size

    def on_released(self, released: int) -> None:
        """An Ack's ``released``: never backwards, never past what was sent."""
        self.released = max(self.released, min(released, self._next))


class SlotIntake:
    """The receiver's side: which descriptors it takes, and ``released``."""

    __slots__ = ("released", "slot_size", "slots")

    def __init__(self, slots: int, slot_size: int) -> None:
        if not 1 <= slots <= MAX_SLOTS or slot_size < 1:
            raise ValueError("a ring has 1..256 slots of at least one byte")
        self.slots = slots
        self.slot_size = slot_size
        self.released = 0

    def offset(self, seq: int, length: int) -> int | None:
        """Where descriptor ``seq``'s ``length`` bytes are, or None: refused
        (an old or impossible sequence number, a length no slot holds)."""
        if not self.released <= seq < MAX_SEQ or not 0 <= length <= self.slot_size:
            return None
        return (seq % self.slots) * self.slot_size

    def consumed(self, seq: int) -> None:
        """Descriptor ``seq``'s copy authenticated: it and every slot before
        it are the sender's again."""
        if self.released <= seq < MAX_SEQ:
            self.released = seq + 1
