"""Receiver side of one transfer: which chunks are held, what to ack.

Pure state machine. A chunk moves from *arrived* (authenticated, queued for
writing) to *written*; only written chunks are acknowledged, so an ack is a
promise that the bytes are in the ``.part`` file. The advertised window is
the credit: the sender may have at most ``window`` chunks unacked, and the
receiver enforces it. A new chunk arriving while as many are queued as the
credit allows is OVER_CREDIT: dropped, not queued, so a sender ignoring the
protocol cannot grow the receiver's queues.

How many chunks may be queued: what an honest sender can still have coming.
It counts as in flight (sent, not acked) at most the credit of the last ack
it read; every chunk written since that ack was sent is one of those (the
sender learns of it only with a later ack). So at most the largest of the
credits told, each less the chunks written since it was told, can be coming,
whichever of those acks the sender has read: the window keeps that count
(``allowed``), raised to the credit of each ack sent and lowered by one for
each chunk written. It is exact when acks reach the sender in the order
they were sent (``ordered``: a transfer's one connection, TCP), and lets a
credit of 0 mean at once "nothing more is coming": a transfer whose buffer
the others need waits its turn holding nothing. Where acks may overtake
each other (parallel mode's lanes: each ack goes on the connection the last
chunk came on) a sender may act on an older, larger credit after a newer
ack's chunks are counted, so the count is looser there: after the credit
shrinks, the old (larger) one is still allowed, less one chunk for every
chunk written since, and a credit is never 0 (many transfers starting at
once shrink every credit; dropping what an honest sender sent under the old
one would only make it resend them). Either way the old credit also
expires :data:`CREDIT_GRACE` seconds after the ack that shrank it, or after
the last new chunk if one came later: the sender has sent every chunk of
the old credit by the time it hears of the new one, so they arrive within
about a round trip. Without it a transfer that grew and then trickles (a
chunk now and then keeps it from timing out) would keep its old credit, and
every other transfer of the node, charged for it, one chunk. A chunk of the
old credit later than that (a round trip or a stall longer than the grace)
is dropped as over the credit and the sender resends
it. Time is passed in (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap


class Arrival(enum.Enum):
    NEW = "new"  # write it
    DUPLICATE = "duplicate"  # already queued or written: just re-ack
    INVALID = "invalid"  # index outside the file, or wrong last flag
    OVER_CREDIT = "over-credit"  # more chunks queued than the credit allows: drop


# Seconds the old credit is still allowed after an ack that shrank it (or
# after the last new chunk that came under it): many round trips on a LAN or
# a WAN, and more than the stalls of a loaded machine's actors.
CREDIT_GRACE = 2.0


class ReceiveWindow:
    def __init__(
        self, total: int, window: int, have: ChunkBitmap | None = None, ordered: bool = True
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.total = total
        self.ordered = ordered  # acks reach the sender in the order sent (one connection)
        self._window = self._allowed = window
        self.written = have if have is not None else ChunkBitmap(total)
        if self.written.total != total:
            raise ValueError("held bitmap does not match the file")
        self._queued: set[int] = set()
        self._since = 0.0  # the shrinking ack, or the last new chunk after it
        self.duplicates = 0
        self.over_credit = 0

    @property
    def window(self) -> int:
        """The credit advertised in acks, in chunks (set once per ack sent)."""
        return self._window

    def advertise(self, window: int, now: float) -> None:
        """Set the credit of the ack sent at ``now`` (0: nothing more until a
        later ack grants some; an accept's credit is at least 1)."""
        if window < 0 or (window == 0 and not self.ordered):
            raise ValueError("window must be >= 0 (>= 1 unless ordered)")
        # The chunks still coming under an older credit (see the module docs).
        self._expire(now)
        shrinks = window < self._window
        self._allowed = max(self._allowed, window if self.ordered else self._window)
        self._window = window
        if shrinks and self._allowed > window:
            self._since = now  # (an ack that only repeats the credit does not: a stall's acks)

    def allowed(self, now: float) -> int:
        """Chunks that may be queued at ``now``: the window, or what is left
        of a larger one advertised before, until it expires (see the module
        docs)."""
        if not self.ordered:
            return (
                self._window
                if now - self._since > CREDIT_GRACE
                else max(self._window, self._allowed)
            )
        if now - self._since > CREDIT_GRACE:
            return min(self._window, self._allowed)
        return self._allowed

    def on_chunk(self, index: int, last: bool, now: float) -> Arrival:
        """Classify an authenticated chunk (the AAD already bound ``last``;
        this checks it against the offered size)."""
        if not 0 <= index < self.total or last != (index == self.total - 1):
            return Arrival.INVALID
        if index in self.written or index in self._queued:
            self.duplicates += 1
            return Arrival.DUPLICATE
        self._expire(now)
        if len(self._queued) >= self.allowed(now):
            self.over_credit += 1
            return Arrival.OVER_CREDIT
        self._queued.add(index)
        if self._allowed > self._window:
            self._since = now  # more of the old credit may follow it
        return Arrival.NEW

    def allow_one(self, now: float) -> None:
        """Take the credit of 0 told for one: a sender of an older release
        reads it so (core/incoming.py)."""
        self._expire(now)
        self._window = max(self._window, 1)
        self._allowed = max(self._allowed, len(self._queued) + 1)

    def _expire(self, now: float) -> None:
        if now - self._since > CREDIT_GRACE:
            self._allowed = min(self._allowed, self._window) if self.ordered else self._window

    def on_dropped(self, index: int) -> None:
        """A queued chunk was dropped before it was written."""
        self._queued.discard(index)

    def on_written(self, index: int) -> None:
        if index in self._queued and self._allowed > (0 if self.ordered else self._window):
            self._allowed -= 1  # one fewer of the chunks a credit told can be coming
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
    window: int,
    chunk_size: int,
    buffer: int,
    running: int,
    others: int,
    current: int = 0,
    floor: int = 1,
) -> int:
    """A transfer's credit in chunks: at most ``window``, its fair share of
    the node's receive ``buffer`` among ``running`` transfers (itself
    included; at least one chunk, however large), twice its ``current``
    credit (a new transfer: 0, it gets :data:`INITIAL_CREDIT` unless it is
    the only one), and what the other transfers' allowances (``others``
    bytes: see :func:`allowance_bytes`, and what the receiver keeps for
    transfers waiting their turn) leave of the buffer; never below
    ``floor``. With ``floor`` 1 the allowances of all of a node's transfers
    together stay within the buffer plus one chunk per transfer at most (a
    transfer that starts while the others hold all of it gets one chunk
    until their credit shrinks); with ``floor`` 0 within the buffer: a
    transfer for whose next chunk the others leave no room waits (credit 0)
    until a later ack or window update gives it some."""
    share = buffer // max(1, running)
    free = max(0, buffer - others)
    if current:
        grown = max(INITIAL_CREDIT, 2 * current)
    else:  # a new transfer: the whole window if it is the only one
        grown = window if running <= 1 else INITIAL_CREDIT
    room = free // chunk_size or (1 if others <= 0 else 0)  # (a chunk larger than the buffer)
    return max(floor, min(window, grown, max(1, share // chunk_size), room))


def receiving(windows: Iterable[ReceiveWindow]) -> int:
    """How many of a node's transfers share its buffer (``running`` of
    :func:`node_credit`): those with chunks left to write. One that has
    all of its chunks (its final check may queue behind others' for
    seconds) holds none of the buffer and needs no share: counted, it would
    keep the last transfers at the share of them all until it ends."""
    return sum(1 for w in windows if not w.complete)


def allowance_bytes(window: ReceiveWindow, chunk_size: int, now: float) -> int:
    """Bytes of the node's buffer a transfer holds at ``now``: what it may
    have queued, its allowance (but no more than the chunks it has left to
    write), or what it has queued if that is more. Chunks queued under an
    old credit whose grace ran out (a writer stalled for longer than
    :data:`CREDIT_GRACE`) still wait in the writer's queue: counted only by
    the credit, their bytes would be granted to the others again, and the
    queue would pass the buffer plus one chunk per transfer."""
    allowed = min(window.allowed(now), window.total - window.written.count)
    return max(allowed, window.queued) * chunk_size


# A receiver chooses the chunk of a transfer whose offer allows a range
# (OfferDetails.min_chunk) so that the transfer's share of the node's receive
# buffer holds at least this many of them: chunks larger than a share make
# the transfers take turns a chunk at a time (a credit of 0 while the others
# hold the buffer; before, a credit was never below one chunk, and 4 MiB
# chunks for each of 16 transfers held 64 MiB against a 32 MiB buffer), and
# a credit of one chunk leaves a transfer waiting for each ack in turn.
CHUNKS_PER_SHARE = 2
# ... and only for a file of at least this many of them. Larger chunks save
# per-chunk work (one send of 1 GiB: 0.3 CPU s per GiB on both nodes from 1
# to 4 MiB), nothing of note for a file of a hundred chunks or so (one send
# of 128 MiB alone went as fast in 1 MiB chunks as in 4), while they make
# its credit coarser, and a transfer keeps its chunk size when others start
# beside it: with 64 sends at once among 4 nodes, the few that started on
# an idle node in larger chunks each held a credit of one chunk, more than
# their share, to their end (32 MiB files in 4 MiB chunks: Jain 0.69 and
# 0.83 against 0.97 and 0.94 in 1 MiB; 128 MiB files in 4 MiB chunks while
# this was 32: Jain 0.91 and a node's peak RSS 164-182 MiB, against 0.996
# and 133-143 MiB in 1 MiB chunks at the same throughput; docs/benchmarks.md).
MIN_FILE_CHUNKS = 128


def choose_chunk(low: int, high: int, size: int, buffer: int, running: int) -> int:
    """The chunk size for an offer of chunks of ``low`` to ``high`` bytes
    (``low`` <= ``high``) of a ``size``-byte file, to a node whose receive
    ``buffer`` is shared by ``running`` transfers (this one included): the
    largest of ``high``, ``high`` / 2, ``high`` / 4 ... (never below ``low``)
    whose :data:`CHUNKS_PER_SHARE` fit the transfer's share and of which the
    file has at least :data:`MIN_FILE_CHUNKS`, else ``low``."""
    share = buffer // max(1, running)
    c = high
    while c > low:
        if c * CHUNKS_PER_SHARE <= share and c * MIN_FILE_CHUNKS <= size:
            return c
        c //= 2
    return low
