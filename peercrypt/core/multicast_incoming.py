"""One incoming multicast session as a sans-IO state machine.

:class:`MulticastIncoming` is the receiver's counterpart of
:class:`~peercrypt.core.multicast_outgoing.MulticastOutgoing`: around the
:class:`~peercrypt.core.multicast.GapTracker` (what arrived, what was
written, what to NAK) it decides when to ack, when the file is ready to be
finished and when the session has gone silent. No socket, file or clock:

- Inputs: :meth:`on_key` (the content key arrived: acks may go),
  :meth:`on_chunk` (an authenticated chunk; True: new, write it),
  :meth:`on_backlog` (datagrams wait to be read: chunks are still coming),
  :meth:`on_written`, :meth:`on_status` (the sender's horizon, hash and ack
  interval), :meth:`on_announce`, :meth:`on_checked` (the writer's final
  checks moved), :meth:`on_timer` -- each with ``now``.
- Outputs: :meth:`poll` returns :class:`SendAck` (cumulative and written
  counts, NAK ranges), at most once :class:`FinishFile` (every chunk is
  written and the sender's hash known: sync, hash the file as stored,
  compare) and at most once :class:`Expired`; :meth:`next_timer` says when
  :meth:`on_timer` is due.

Acks go every ``ack_every`` written chunks (the sender may ask for fewer,
never more than :data:`ACK_EVERY`) and every :data:`ACK_INTERVAL` seconds;
none before the key. Once finishing (the final hash, then storing a folder,
which may take long) an ack of everything every :data:`VERIFY_ACK_INTERVAL`
seconds tells the sender this receiver is alive and verifying, so it is
neither lost nor stalled however long the check takes. A session with no
traffic for ``idle_timeout`` seconds (and not finishing) expires; one
finishing expires once the writer's final checks (:meth:`on_checked`: its
own, or those ahead of it) move no further for ``idle_timeout`` seconds (a
disk that stopped answering, a writer that is gone), however alive the
sender is. ``have``: chunks
already in a kept part (a restarted receiver rejoining): neither NAKed nor
written again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.multicast import GapTracker

ACK_INTERVAL = 0.05  # seconds between acks (besides every ``ack_every`` written chunks)
ACK_EVERY = 8  # chunks written between acks, at most
NAK_LIMIT = 64  # chunks one NAK asks for
VERIFY_ACK_INTERVAL = 0.5  # seconds between acks while finishing (the sender's lost_after: 2 s)
# How long after the last chunk datagrams still waiting to be read keep the
# receiver from NAKing what the sender says it published (at most; a flood
# of someone else's datagrams delays those NAKs by no more).
BACKLOG_GRACE = 1.0


@dataclass(frozen=True)
class SendAck:
    """Ack: chunks below ``cumulative`` written, ``written`` in all; NAK ``naks``."""

    cumulative: int
    written: int
    naks: list[tuple[int, int]]


@dataclass(frozen=True)
class FinishFile:
    """Every chunk is written and the sender's hash known: sync and hash the
    file as stored, then compare with ``digest``."""

    digest: bytes


@dataclass(frozen=True)
class Expired:
    """No traffic (``checking``: no progress of the final check) for the
    idle timeout: drop the session."""

    seconds: float
    checking: bool = False


Output = SendAck | FinishFile | Expired


@dataclass
class MulticastIncoming:
    total: int
    now: float
    idle_timeout: float
    have: ChunkBitmap | None = None

    keyed: bool = field(default=False, init=False)
    digest: bytes = field(default=b"", init=False)
    finishing: bool = field(default=False, init=False)
    expired: bool = field(default=False, init=False)
    ack_every: int = field(default=ACK_EVERY, init=False)
    last_ack: float = field(init=False)
    last_activity: float = field(init=False)
    _acked_written: int = field(default=0, init=False)
    _checks: int = field(default=0, init=False)  # the writer's check steps, last seen
    _checks_moved_at: float = field(default=0.0, init=False)  # when they last moved
    hashed: bool = field(default=False, init=False)  # the check's verdict is in
    _last_chunk: float = field(default=float("-inf"), init=False)
    _outputs: list[Output] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.tracker = GapTracker(self.total, nak_limit=NAK_LIMIT, have=self.have)
        self.last_ack = self.last_activity = self.now

    # -- inputs -----------------------------------------------------------------

    def on_announce(self, now: float) -> None:
        self.last_activity = now

    def on_key(self, now: float) -> None:
        """The content key arrived: ack at once (the sender waits for it
        over a UDP group before it starts)."""
        self.keyed = True
        self.last_activity = now
        self._ack(now)

    def on_chunk(self, index: int, now: float) -> bool:
        """An authenticated chunk; True if it is new (write it)."""
        self.last_activity = self._last_chunk = now
        return self.tracker.on_chunk(index, now)

    def on_write_refused(self, index: int) -> None:
        """The writer refused chunk ``index`` (its queue was full): it is
        missing again (NAKed, repaired), as a unicast receiver's would be."""
        self.tracker.on_refused(index)

    def on_backlog(self, now: float) -> None:
        """Datagrams are waiting to be read (the receiving thread is behind
        the group, e.g. waiting for a core): chunks are still arriving, so
        what the sender published but has not come yet is not NAKed - for
        at most :data:`BACKLOG_GRACE` seconds after the last chunk. Only a
        gap below a chunk received is NAKed meanwhile (GapTracker's
        holdoff)."""
        if now - self._last_chunk <= BACKLOG_GRACE:
            self.tracker.last_arrival = max(self.tracker.last_arrival, now)

    def on_written(self, index: int, now: float) -> None:
        self.tracker.on_written(index)
        if self.tracker.written.count - self._acked_written >= self.ack_every:
            self._ack(now)
        self._maybe_finish(now)

    def on_status(self, horizon: int, digest: bytes, ack_every: int, now: float) -> None:
        """The sender's status: what exists, its hash once known, how often to ack."""
        self.last_activity = now
        self.tracker.on_horizon(horizon)
        if ack_every:
            self.ack_every = min(ACK_EVERY, ack_every)
        if digest and not self.digest:
            self.digest = digest
        self._maybe_finish(now)

    def on_checked(self, moved: int, now: float) -> None:
        """The writer's final checks have made ``moved`` steps so far: a
        change is progress while finishing."""
        if self.finishing and moved != self._checks:
            self._checks, self._checks_moved_at = moved, now

    def on_hashed(self) -> None:
        """The final check's hash is in: what is left (storing it) is not
        bounded by the check's progress."""
        self.hashed = True

    def on_timer(self, now: float) -> None:
        if self.expired:
            return
        if now - self.last_activity > self.idle_timeout and not self.finishing:
            self.expired = True
            self._outputs.append(Expired(now - self.last_activity))
            return
        stuck = now - self._checks_moved_at > self.idle_timeout
        if self.finishing and not self.hashed and stuck:
            self.expired = True
            self._outputs.append(Expired(now - self._checks_moved_at, checking=True))
            return
        interval = VERIFY_ACK_INTERVAL if self.finishing else ACK_INTERVAL
        if now - self.last_ack >= interval * 0.9:
            self._ack(now)

    # -- outputs ----------------------------------------------------------------

    def poll(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def next_timer(self) -> float | None:
        if self.expired:
            return None
        if self.finishing and self.hashed:
            return self.last_ack + VERIFY_ACK_INTERVAL
        if self.finishing:
            stuck = self._checks_moved_at + self.idle_timeout
            return min(self.last_ack + VERIFY_ACK_INTERVAL, stuck)
        return min(self.last_ack + ACK_INTERVAL, self.last_activity + self.idle_timeout)

    # -- internals --------------------------------------------------------------

    def _ack(self, now: float) -> None:
        self.last_ack = now
        if not self.keyed:
            return
        t = self.tracker
        self._acked_written = t.written.count
        self._outputs.append(SendAck(t.written.cumulative, t.written.count, t.naks(now)))

    def _maybe_finish(self, now: float) -> None:
        if self.tracker.complete and self.digest and not self.finishing:
            self.finishing = True
            self._checks_moved_at = now
            self._outputs.append(FinishFile(self.digest))
