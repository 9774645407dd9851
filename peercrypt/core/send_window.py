"""Sender side of one transfer's reliability and credit flow control.

Pure state machine (the zguide's FileMQ credit pattern plus SACK loss
recovery). Inputs: the receiver's accept (chunks it already holds, initial
credit), acks (cumulative index, held ranges above it, current credit) and
the passage of time. Output: which chunk indices to (re)send now.

Rules:
- Credit: at most ``window`` chunks are in flight (sent, not yet acked). The
  receiver sizes the window to its write queue, so its memory is bounded by
  window x chunk size whatever the file size, and no ZeroMQ high-water mark
  ever has to drop anything. A credit of 0 (the receiver's buffer is
  taken by other transfers) stops new chunks until an ack gives some. The
  sender honours at most ``max_window`` of
  it (its own buffer), so a receiver advertising a huge credit and reading
  nothing cannot make the sender queue more.
- Loss by SACK (QUIC's packet threshold, RFC 9002 6.1.1): a chunk in flight
  is presumed lost once a chunk sent ``dupthresh`` or more sends after it has
  been acked (reordering shorter than that is tolerated), and is resent at
  once (a fast retransmit).
- Loss by timeout (RFC 6298 section 5, one retransmission timer per
  transfer, its length from :class:`~peercrypt.core.rtt.RttEstimator`): the
  timer runs while a chunk is in flight and not yet presumed lost; it starts
  when a chunk goes out with none pending (5.1), restarts whenever an ack
  acknowledges something new (5.3: the path is alive, whatever else is
  late; here also on an ack of nothing new with the credit unchanged: the
  receiver sends one while chunks that came wait for its writer, so a
  stalled disk or a writer busy with other transfers does not pass for
  loss; a window update, a changed credit sent only while nothing waits,
  does not restart it) and stops when nothing is pending (5.2). When it expires, only the
  *oldest* pending chunk (by send order) is presumed lost and resent (5.4),
  the RTO doubles (5.5) and the timer restarts (5.6). The rest stay in
  flight: they are presumed lost only on evidence: SACK (above), or, in the
  manner of F-RTO (RFC 5682), the next expiry after a resend was acked
  while no chunk sent (once) before the first expiry was: the path works
  and those are gone (dropped over credit, by a proxy), so every chunk
  pending from before the expiry is resent. An ack of such a first copy
  ends the suspicion (a late path, not a lossy one: the RTO takes that late
  round trip in, RFC 4015's response); an expiry with no ack
  at all resends one more chunk under a doubled RTO. So a stall (a loaded
  CPU delaying acks by seconds) costs one resend per doubling, not a resend
  of the whole window; the late acks of chunks sent once are RTT samples
  that lengthen the RTO.
- RTT: one sample per ack, from the newest chunk it acknowledges.
- Karn: only chunks sent exactly once give RTT samples, and the ack of a
  resent chunk is loss evidence only for what was sent before its first
  copy (the ack may be that copy's: a late ack is not a lost resend).
- Retransmissions go before new chunks, lowest index first.
"""

from __future__ import annotations

from dataclasses import dataclass

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.rtt import RttEstimator

# Bytes one transfer keeps in flight at most, whatever credit its receiver
# advertises (the receiver's own default buffer).
SEND_BUFFER = 256 * 1024 * 1024
# The RTO before the first RTT sample (RFC 6298 2.1 says 1 s; its 5.7 and
# RFC 2988 3 s). A transfer's first ack waits behind every chunk the other
# transfers to the same receiver have queued (up to its receive buffer at
# its write rate), and chunks travel over TCP, which loses nothing: only a
# proxy, a full queue or a broken connection (resent at once on reconnect)
# lose one. So the conservative value: no spurious resend when many start.
INITIAL_RTO = 3.0


@dataclass
class _InFlight:
    sent_at: float
    order: int  # global send sequence number of this copy
    resent: bool
    first_order: int  # of the first copy: an ack may be for any copy


class SendWindow:
    """Which chunks to send when, for a file of ``total`` chunks."""

    def __init__(
        self,
        total: int,
        rtt: RttEstimator | None = None,
        dupthresh: int = 3,
        max_window: int = 2**32,
    ) -> None:
        self.total = total
        self.max_window = max(1, max_window)
        self.acked = ChunkBitmap(total)
        self.rtt = rtt or RttEstimator(initial_rto=INITIAL_RTO)
        self.dupthresh = dupthresh
        self.window = 0
        self.peak_window = 0  # the largest credit the receiver gave
        self.limit: int | None = None  # a sender-side cap below the credit (AIMD)
        self._next_new = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._lost: set[int] = set()
        self._order = 0
        self._highest_acked_order = -1
        self._timer_start: float | None = None  # the RTO timer runs since (None: stopped)
        self._credit = 0  # the credit the receiver's last accept or ack gave, as it gave it
        # After an expiry (F-RTO, RFC 5682, in spirit): the last send order
        # before it, and whether a resend has been acked since.
        self._probe_order: int | None = None
        self._probe_acked = False
        self._probe: int | None = None  # the expiry's resend: it goes whatever the credit
        self.retransmits = 0
        self.timeouts = 0
        self.spurious_timeouts = 0
        self.fast_retransmits = 0

    # -- inputs ---------------------------------------------------------------

    def on_accept(self, have: list[tuple[int, int]], window: int) -> None:
        """The receiver took the offer, already holding ``have``."""
        self.acked.add_ranges(have)
        self.window = max(1, min(window, self.max_window))
        self.peak_window = max(self.peak_window, self.window)
        self._credit = window

    def on_ack(self, cumulative: int, sack: list[tuple[int, int]], window: int, now: float) -> int:
        """Apply an ack; returns how many chunks it newly acknowledged. Costs
        O(ranges + chunks in flight), whatever the file's size. An ack that
        acknowledges nothing new (a window update: only the credit changed,
        or a repeated ack) is no evidence of loss: losses are inferred from
        what was acked in send order, never from how often an ack repeats."""
        # (0: the receiver's buffer is taken; wait for its next ack. A
        # receiver of an older release never gives 0.)
        self.window = min(window, self.max_window)
        self.peak_window = max(self.peak_window, self.window)
        same_credit, self._credit = window == self._credit, window
        newly = self.acked.add_ranges([(0, min(cumulative, self.total)), *sack])
        if newly:
            newest: _InFlight | None = None  # one RTT sample per ack, as TCP takes
            late: float | None = None
            for index in [i for i in self._in_flight if i in self.acked]:
                flight = self._in_flight.pop(index)
                self._lost.discard(index)
                if not flight.resent and (newest is None or flight.sent_at > newest.sent_at):
                    newest = flight
                if self._probe_order is not None:
                    if not flight.resent and flight.order <= self._probe_order:
                        # A first copy from before the expiry came: it was
                        # spurious (a late path, not a lossy one).
                        self._probe_order = None
                        late = now - flight.sent_at
                    elif flight.resent:
                        self._probe_acked = True
                # Karn again: the ack of a resent chunk may be the first copy's,
                # so it is evidence only of what was sent before that one.
                self._highest_acked_order = max(self._highest_acked_order, flight.first_order)
            if newest is not None:
                self.rtt.sample(max(0.0, now - newest.sent_at))
            if late is not None:
                self.spurious_timeouts += 1
                self.rtt.spurious_timeout(max(0.0, late))
            # RFC 6298 5.2/5.3: stop the timer, or restart it for what is pending.
            self._timer_start = now if self._has_pending() else None
        elif self._timer_start is not None and same_credit:
            # An ack of nothing new with the credit unchanged: chunks that
            # came wait for a busy writer (core/incoming.py acks them every
            # STILL_WRITING_AFTER), or the answer to a duplicate: the
            # receiver is there and taking the transfer, its chunks are late,
            # so the timer restarts as on an ack of new ones. Not on a window
            # update (a changed credit, sent only while nothing waits for
            # the writer): the chunks it does not acknowledge may be lost.
            self._timer_start = now
        self._detect_sack_losses()
        return newly

    def _detect_sack_losses(self) -> None:
        limit = self._highest_acked_order - self.dupthresh
        for index, flight in self._in_flight.items():
            if flight.order <= limit and index not in self._lost:
                self._lost.add(index)
                self.fast_retransmits += 1

    def on_timer(self, now: float) -> None:
        """If the retransmission timer expired: presume the oldest pending
        chunk lost (or, when a resend was acked since the last expiry but no
        first copy from before it, everything pending from before it), back
        the RTO off and restart the timer. Harmless before the deadline."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return
        pending = self._pending()
        boundary = self._probe_order
        stale = (
            [] if boundary is None else [i for i in pending if self._in_flight[i].order <= boundary]
        )
        if stale and self._probe_acked:
            # The path works (a resend got through) yet nothing sent before
            # the last expiry arrived: that was lost (over credit, dropped).
            self._lost.update(stale)
            self._probe_order = None
        else:
            if not stale:  # a new suspicion: what was sent until now
                self._probe_order, self._probe_acked = self._order, False
            self._probe = min(pending, key=lambda i: self._in_flight[i].order)
            self._lost.add(self._probe)
        self.timeouts += 1
        self.rtt.backoff()
        self._timer_start = now if self._has_pending() else None

    def on_reconnect(self) -> None:
        """The data connection was re-established: whatever was in flight on
        the old one is gone. Resend it all now, with the RTO's backoff undone
        (not at the next doubled timeout)."""
        self._lost.update(self._in_flight)
        self._timer_start = None  # restarted as the chunks go out again
        self._probe_order = self._probe = None
        self.rtt.reset_backoff()

    # -- outputs --------------------------------------------------------------

    def next_to_send(self, now: float, limit: int | None = None) -> list[int]:
        """Chunks to send now (marking them in flight), retransmissions first."""
        out: list[int] = []
        allowed = self._allowed()
        budget = allowed - (len(self._in_flight) - len(self._lost))
        if limit is not None:
            budget = min(budget, limit)
        probe = self._probe
        if probe is not None and probe not in self._lost:
            probe = self._probe = None  # acked (or resent) meanwhile
        if probe is not None and (limit is None or limit > 0):
            self._probe = None
            # RFC 6298 5.4: the expiry's resend goes now, even over a credit
            # that shrank below what is in flight (the receiver may have
            # dropped all of that; it takes a chunk it holds as a duplicate).
            self._lost.discard(probe)
            self._mark_sent(probe, now, resent=True)
            self.retransmits += 1
            out.append(probe)
            budget -= 1
        for index in sorted(self._lost):
            if budget <= 0:
                break
            self._lost.discard(index)
            self._mark_sent(index, now, resent=True)
            self.retransmits += 1
            out.append(index)
            budget -= 1
        while budget > 0 and self._next_new < self.total:
            index = self._next_new
            self._next_new += 1
            if index in self.acked:
                continue
            self._mark_sent(index, now, resent=False)
            out.append(index)
            budget -= 1
        return out

    def next_up(self) -> int | None:
        """The chunk :meth:`next_to_send` would send first (None: nothing left)."""
        if self._lost:
            return min(self._lost)
        for index in range(self._next_new, self.total):
            if index not in self.acked:
                return index
        return None

    def room(self) -> int:
        """How many chunks could be sent now (credit and limit permitting),
        at least one while an expiry's resend waits: it goes whatever the
        credit (:meth:`next_to_send`), and a paced sender asks for the bytes
        of what this counts (counted 0, a paced flow whose credit or share
        shrank below what it has in flight asked for nothing, and its resend
        waited for one more expiry per chunk in flight: a minute and more)."""
        allowed = self._allowed()
        pending = len(self._lost) + max(0, self.total - self._next_new)
        room = max(0, min(allowed - (len(self._in_flight) - len(self._lost)), pending))
        if self._probe is not None and self._probe in self._lost:
            return max(1, room)
        return room

    def _allowed(self) -> int:
        """Chunks that may be in flight: the credit, under the limit (at
        least one chunk while there is credit)."""
        if self.limit is None or self.window == 0:
            return self.window
        return max(1, min(self.window, self.limit))

    @property
    def waiting(self) -> bool:
        """The receiver gave no credit (its buffer is taken): nothing goes
        but an expiry's resend until an ack gives some."""
        return self.window == 0

    def _mark_sent(self, index: int, now: float, resent: bool) -> None:
        if self._timer_start is None or not self._has_pending():
            self._timer_start = now  # RFC 6298 5.1: start the timer if it is not running
        self._order += 1
        previous = self._in_flight.get(index)
        first = previous.first_order if previous is not None else self._order
        self._in_flight[index] = _InFlight(now, self._order, resent, first)

    def _pending(self) -> list[int]:
        """Chunks in flight and not presumed lost (what the timer guards)."""
        return [i for i in self._in_flight if i not in self._lost]

    def _has_pending(self) -> bool:
        return len(self._in_flight) > len(self._lost)  # the lost ones are in flight too

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` should next run (None: nothing pending)."""
        if self._timer_start is None or not self._has_pending():
            return None
        return self._timer_start + self.rtt.rto

    @property
    def sent_all(self) -> bool:
        """Every chunk not held went at least once and none is presumed lost."""
        return self._next_new >= self.total and not self._lost

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def done(self) -> bool:
        return self.acked.complete
