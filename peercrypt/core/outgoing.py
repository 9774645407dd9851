"""One outgoing unicast transfer as a sans-IO state machine.

:class:`OutgoingTransfer` combines what a sending node decides for one file:
the credit and loss window (:class:`~peercrypt.core.send_window.SendWindow`),
the congestion window (aimd mode), the pacing allowance (the scheduler's byte
grants), the done/verify stage and the timeouts. It never touches a socket,
a thread, a file or a clock (aioquic's ``QuicConnection`` is the model):

- Inputs: :meth:`on_accept`, :meth:`on_ack`, :meth:`on_grant`,
  :meth:`on_pacing`, :meth:`on_digest`, :meth:`on_verified`,
  :meth:`on_failed`, :meth:`on_reconnect`, :meth:`on_timer`, :meth:`fail` --
  each with ``now``
  where time matters.
- Outputs: :meth:`poll` returns what to do now, in order, as typed values
  (:class:`SendChunk`, :class:`HashFile`, :class:`SendDone`,
  :class:`Reattach`, :class:`RequestGrant`, and at most once :class:`Finished` or
  :class:`Failed`); :meth:`next_timer` says when :meth:`on_timer` is due.

The actor around it reads, hashes, seals and sends what :meth:`poll` asks
for, and feeds what arrives back in. Every difference between the modes
lives in the :class:`~peercrypt.core.modes.Policy` and here, so the actor
has no branch on the mode.

Phases: ``offered`` (until the accept or ``deadline``), ``sending`` (chunks
under credit, congestion window and grants; fails when nothing was newly
acked for ``timeout`` seconds while chunks are in flight (or, told to wait
its turn by a credit of 0, nothing came from the receiver for as long, or it
said 0 for as long, 10 s at least, with no chunk it sent acked), on a timer of
its own, so the timeout is kept whatever the retransmission backoff; that clock
starts afresh when a chunk goes out with none in flight: a sender holding
its chunks back for its own pacing (grants) is not a silent receiver; a
re-established data connection (:meth:`on_reconnect`) resends what was in
flight at once),
``verifying`` (Done sent, and resent with backoff while unanswered, until
the receiver's Verified repeats the hash; a receiver still checking answers
each Done with Verifying; one left unanswered for ``timeout`` seconds fails
the transfer, so the timeout is kept here too). One Done also goes as soon
as every chunk has been sent once and the hash is known (``early_done``):
a receiver holds it until every chunk is written and finishes the file
then, a round trip before the Done that the last ack would bring (an
older receiver answers it with an ack and waits for that one, which
still goes),
``ended``.
"""

from __future__ import annotations

import enum
import hmac
from collections import deque
from dataclasses import dataclass, field

from peercrypt.core.grants import Allowance, GrantedFlow
from peercrypt.core.grants import RequestGrant as RequestGrant
from peercrypt.core.modes import Policy, default_burst
from peercrypt.core.send_window import SEND_BUFFER, SendWindow
from peercrypt.errors import ResultCode

# Seconds a send told to wait its turn lets its receiver be silent at least,
# whatever its --timeout (the receiver repeats the 0 every second).
WAITING_SILENCE = 3.0
# Seconds a send lets its receiver keep it waiting its turn (a credit of 0,
# said again every second) with no chunk it sent newly acked, at least; its
# --timeout when that is longer. A receiver of this release gives a chunk
# to a transfer that has waited 2 s since it last took one (WAIT_LIMIT,
# core/incoming.py) and never tells it 0 again: one that says 0 for longer
# is not taking turns, it holds the send open (as any member with the
# network key could pose as a receiver). A credit alone ends no wait (a turn
# given and taken back at once, or one whose chunk is never acked, would),
# nor an ack of chunks never sent.
WAITING_LIMIT = 10.0
# A tick this much later than due: this node did not run meanwhile (its
# process stopped: a suspend, SIGSTOP; or starved), and the receiver's
# silence over that time is not the receiver's (:meth:`Outgoing.on_tick`).
PAUSE_GAP = 1.0
# The receiver's Failed code for a send it heard nothing of for its
# --timeout (it keeps the part): offered again, which resumes it.
EXPIRED = "expired"
HISTORY_SAMPLES = 512  # congestion window samples kept for the result
HISTORY_INTERVAL = 0.05  # seconds between growth samples (decreases always)
REPORT_INTERVAL = 0.01  # seconds between congestion reports (losses: at once)


def peer_failure(code: str) -> str:
    """A peer's Failed code as taken: its word, or ``protocol`` for "ok"
    (a failure that says ok) or for text no code can be."""
    return ResultCode.PROTOCOL if code == ResultCode.OK or not failure_word(code) else code


def failure_word(code: str) -> bool:
    """Whether a peer's failure code is a word a code can be: 1-32 of
    ``a-z``, ``0-9`` and ``-``, a letter first (it is shown and counted)."""
    return (
        0 < len(code) <= 32
        and code[0].isascii()
        and code[0].islower()
        and all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "-") for ch in code)
    )


class Phase(enum.Enum):
    OFFERED = "offered"
    SENDING = "sending"
    VERIFYING = "verifying"
    ENDED = "ended"


@dataclass(frozen=True)
class SendChunk:
    """Read, seal and send chunk ``index`` (``last``: the file's final chunk)."""

    index: int
    last: bool


@dataclass(frozen=True)
class HashFile:
    """Every chunk is acked: finish the whole-file hash, then :meth:`on_digest`."""


@dataclass(frozen=True)
class SendDone:
    """Send (or resend: ``attempt`` > 1) the sealed Done; ``attempt`` 0: the
    one that goes right after the last chunk, before they are all acked."""

    digest: bytes
    chunks: int
    attempt: int


@dataclass(frozen=True)
class Reattach:
    """A retransmission timeout: say again, on each of the transfer's data
    connections, that its frames come there (its sealed ``Attach``), before
    the resend. A receiver drops a transfer's chunks on a connection it was
    not told of, and an Attach was said once per connection (and again when
    it came back): one lost on a path that drops messages left every chunk on
    that connection unacknowledged until ``--timeout``."""


@dataclass(frozen=True)
class ReportCongestion:
    """Tell the congestion manager (the scheduler) what this flow saw since
    the last report: ``sent`` new bytes, ``acked`` bytes newly acked,
    ``losses`` and ``timeouts`` detected, ``in_flight`` bytes unacked now."""

    sent: int
    acked: int
    losses: int
    timeouts: int
    in_flight: int


@dataclass(frozen=True)
class Finished:
    """The receiver stored the file under ``stored_as`` with our hash."""

    digest: bytes
    stored_as: str


@dataclass(frozen=True)
class Failed:
    """The transfer ended without success. ``code`` is the result code
    (``timeout``, ``verify``, ``refused``, ``local``, ...); ``offer_expired``:
    no answer to the offer came by the deadline (the actor knows why)."""

    code: str
    reason: str
    offer_expired: bool = False


Output = (
    SendChunk | HashFile | SendDone | Reattach | RequestGrant | ReportCongestion | Finished | Failed
)


@dataclass
class OutgoingTransfer(GrantedFlow):
    """One file of ``size`` bytes in chunks of ``chunk_size`` to ``peer``,
    or of a smaller size down to ``min_chunk`` that the receiver chooses in
    its accept (0: ``chunk_size`` only).

    ``timeout``: seconds the offer may wait for an answer, and the longest
    time without newly acked chunks. ``paced``: the node has a rate cap (the
    scheduler may change it later with :meth:`on_pacing`). ``now``: when the
    offer goes out.
    """

    policy: Policy
    size: int
    chunk_size: int
    timeout: float
    now: float
    min_chunk: int = 0
    peer: str = "the receiver"
    node_capped: bool = False
    # The receiver is on this host and its Unix socket is used (set before
    # on_accept): parallel lanes would only add sealing threads and TCP
    # connections where no connection is capped on its own, so one lane.
    host_local: bool = False

    phase: Phase = field(default=Phase.OFFERED, init=False)
    started: float = field(init=False)
    deadline: float | None = field(init=False)  # the offer's answer is due by then
    window: SendWindow | None = field(default=None, init=False)
    share: int | None = field(default=None, init=False)  # bytes, from the congestion manager
    peer_window: int = field(default=0, init=False)
    peer_decreases: int = field(default=0, init=False)
    losses: int = field(default=0, init=False)  # detected and reported
    timeouts: int = field(default=0, init=False)
    reports: int = field(default=0, init=False)  # congestion reports and grant requests made
    history: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_SAMPLES), init=False
    )
    _report: list[int] = field(default_factory=lambda: [0, 0, 0, 0], init=False)
    _reported_at: float = field(default=float("-inf"), init=False)
    grants: Allowance = field(default_factory=Allowance, init=False)
    digest: bytes = field(default=b"", init=False)
    done_sent: int = field(default=0, init=False)
    early_done: bool = field(default=False, init=False)  # a Done went before the last ack
    # Ended by its own timeout with a Done gone unanswered: the receiver may
    # have stored the file (and forgotten the transfer), not said it failed.
    unanswered: bool = field(default=False, init=False)
    # Ended because the receiver heard nothing of it for its --timeout (this
    # node was paused): not a receiver that stalls; offered again.
    expired_there: bool = field(default=False, init=False)
    paused: float = field(default=0.0, init=False)  # seconds this node did not run, in all
    last_progress: float = field(init=False)
    _last_tick: float = field(init=False)
    waiting_since: float | None = field(default=None, init=False)  # told 0, none acked since
    resumed: int = field(default=0, init=False)  # chunks the receiver already held
    accept_seconds: float = field(default=0.0, init=False)  # offer to accept (the resume check)
    chunks_sent: int = field(default=0, init=False)  # sends, retransmissions included
    bytes_sent: int = field(default=0, init=False)
    _hash_asked: bool = field(default=False, init=False)
    _done_due: float | None = field(default=None, init=False)
    _answer_due: float | None = field(default=None, init=False)  # an unanswered Done's deadline
    _outputs: list[Output] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.total = -(-self.size // self.chunk_size)
        self.started = self.last_progress = self._last_tick = self.now
        self.deadline = self.now + self.timeout

    # -- what the mode means here ------------------------------------------------

    @property
    def lanes(self) -> int:
        """Data connections to open (parallel mode spreads chunks over them;
        to a receiver of this host, over its Unix socket, one is as fast)."""
        return self.policy.lanes if self.sealing_workers else 1

    @property
    def sealing_workers(self) -> bool:
        """Read and seal on worker threads (one per lane) instead of inline."""
        return self.policy.mode == "parallel" and not self.host_local

    @property
    def congestion_managed(self) -> bool:
        """Its window is a share of the peer's congestion window, kept by the
        congestion manager (aimd mode): it reports, and obeys ``share``."""
        return self.policy.mode == "aimd"

    @property
    def flow_rate(self) -> tuple[int, int]:
        """(rate, burst) of the flow's own token bucket; (0, 0): none. A rate
        set live (:meth:`on_rate`) is the bucket's now, with the burst the
        scheduler gave it (a restarted scheduler is told this)."""
        live = self.grants.rate
        if live is not None:
            return (live, default_burst(live)) if live else (0, 0)
        if self.policy.mode != "token-bucket":
            return 0, 0
        return self.policy.rate, self.policy.burst_for(self.chunk_size)

    # -- inputs -----------------------------------------------------------------

    def offer_due(self, when: float | None) -> None:
        """The offer's answer is due at ``when`` (None: no deadline here, while
        the sender's pre-send check times its own attempts; it sets one when
        the offer leaves). Only while offered."""
        if self.phase is Phase.OFFERED:
            self.deadline = when

    def allows_chunk(self, chunk_size: int) -> bool:
        """Whether a receiver may choose chunks of ``chunk_size`` bytes (0:
        the offered size): from ``min_chunk`` to the offered size, and no
        other (a receiver's absurd choice must not size this node's buffers)."""
        if chunk_size in (0, self.chunk_size):
            return True
        return 0 < self.min_chunk <= chunk_size <= self.chunk_size

    def on_accept(
        self, have: list[tuple[int, int]], credit: int, now: float, chunk_size: int = 0
    ) -> None:
        """The receiver took the offer, already holding ``have`` and granting
        ``credit`` chunks in flight, in chunks of ``chunk_size`` bytes (0: the
        offered size; one :meth:`allows_chunk`)."""
        if self.phase is not Phase.OFFERED:
            return
        if not self.allows_chunk(chunk_size):
            raise ValueError(f"chunk size {chunk_size} was not offered")
        if chunk_size:
            self.chunk_size = chunk_size
            self.total = -(-self.size // chunk_size)
        p = self.policy
        # Lanes are separate connections: their chunks arrive out of order by
        # up to the whole window, which SACK loss detection would take for
        # losses; there, only the RTO finds a lost chunk.
        dupthresh = max(p.ack_threshold, credit) if p.mode == "parallel" else p.ack_threshold
        self.window = SendWindow(
            self.total, dupthresh=dupthresh, max_window=max(1, SEND_BUFFER // self.chunk_size)
        )
        self.window.on_accept(have, credit)
        self.resumed = self.window.acked.count
        self.accept_seconds = now - self.started
        # The scheduler has the last word (a live max-rate): see on_pacing.
        self.grants.paced = p.mode == "token-bucket" or self.node_capped
        self.phase = Phase.SENDING
        self.last_progress = now

    def on_ack(self, cumulative: int, sack: list[tuple[int, int]], credit: int, now: float) -> None:
        """An ack: chunks below ``cumulative`` and in ``sack`` are written."""
        w = self.window
        if w is None or self.phase is Phase.ENDED:
            return
        sack_losses, acked, flying = w.fast_retransmits, self.acked_bytes, w.in_flight
        newly = w.on_ack(cumulative, sack, credit, now)
        if newly or w.waiting:
            # (waiting its turn at the receiver, told so again: the
            # receiver is there; the stall clock runs from its last word)
            self.last_progress = now
        # A wait ends with a chunk written, not with a credit alone: a turn
        # given and taken back at once, or whose chunk is never acked, is
        # the same wait (as a member posing as a receiver could play it);
        # nor with acks of chunks never sent (an honest receiver has none).
        if w.in_flight < flying:
            self.waiting_since = None
        if w.waiting and self.waiting_since is None:
            self.waiting_since = now
        if self.congestion_managed:
            self._report[1] += self.acked_bytes - acked
            self._report[2] += w.fast_retransmits - sack_losses

    def on_window(self, share: int, window: int, decreases: int, now: float) -> None:
        """The congestion manager's answer: this flow may have ``share``
        bytes in flight of its peer's ``window``."""
        grew = self.share is not None and share >= self.share
        self.share, self.peer_window, self.peer_decreases = share, window, decreases
        if not (grew and self.history and now - self.history[-1][0] < HISTORY_INTERVAL):
            self.history.append((now, share))

    def on_digest(self, digest: bytes, now: float) -> None:
        """The whole-file hash (after :class:`HashFile`, or from the lanes)."""
        if self.digest or self.phase is Phase.ENDED:
            return
        self.digest = digest
        if self.phase is Phase.VERIFYING and not self.done_sent:
            self._send_done(now)
        elif self.phase is Phase.SENDING and not self.early_done:
            self.early_done = True  # every chunk went: the receiver holds it until written
            self._outputs.append(SendDone(digest, self.total, 0))

    def on_verified(self, digest: bytes, stored_as: str) -> None:
        """The receiver's Verified."""
        if self.phase is Phase.ENDED:
            return
        sent = self.done_sent or self.early_done
        if sent and hmac.compare_digest(digest, self.digest):
            self._end(Finished(self.digest, stored_as))
        else:
            self._end(Failed(ResultCode.VERIFY, "the receiver stored a different hash"))

    def on_verifying(self, now: float) -> None:
        """The receiver's Verifying: it has every chunk and is still checking
        or storing. The Dones so far are answered; the next one probes in
        about a second, and must itself be answered within ``timeout``."""
        if self.phase is Phase.VERIFYING and self.done_sent:
            self.done_sent = 1
            self._answer_due = None
            assert self.window is not None
            self._done_due = now + max(1.0, self.window.rtt.rto * 2)

    def on_failed(self, code: str, reason: str) -> None:
        """The receiver gave up (its Failed). Its code is its claim: one of
        a failure's words (lower case, digits, dashes), never "ok" (a Failed
        that says ok would end the send as verified, no hash checked);
        anything else is the protocol broken. ``expired``: it heard nothing
        of the send for its --timeout (this node paused) and kept the part:
        a timeout, offered again (:attr:`expired_there`)."""
        if code == EXPIRED and self.phase is not Phase.ENDED:
            self.expired_there = True
            self.fail(ResultCode.TIMEOUT, f"{self.peer} heard nothing of the send for a while")
            return
        self.fail(peer_failure(code), f"{self.peer} failed the transfer: {reason}")

    def on_tick(self, now: float, interval: float, ran: float = 0.0) -> None:
        """The sender's progress tick, due every ``interval`` s while the
        send runs; ``ran``: the CPU seconds this node's process used since
        the tick before. One later than due by more than :data:`PAUSE_GAP`
        while the process hardly ran (a quarter of the time at most): this
        node did not run (a stopped process, a host starved of CPU), so the
        receiver's silence meanwhile is not its own: the stall clock, an
        offer's deadline and a Done's resend move on by that time. (The send
        failed as it woke, "stopped acknowledging", and was not offered
        again.) A late tick of a process busy all along is no pause: a
        receiver flooding it with acks must not hold its clocks back."""
        gap = now - self._last_tick - interval
        self._last_tick = now
        if gap <= PAUSE_GAP or ran > gap / 4:
            return
        self.paused += gap
        self.last_progress += gap
        if self.deadline is not None:
            self.deadline += gap
        if self._done_due is not None:
            self._done_due += gap
        if self._answer_due is not None:
            self._answer_due += gap
        if self.waiting_since is not None:
            self.waiting_since += gap

    def on_reconnect(self, now: float) -> None:
        """The data connection came back after a break (an outage, a
        restarted peer): resend at once what the old connection lost."""
        if self.phase is Phase.SENDING and self.window is not None:
            self.window.on_reconnect()
        elif self.phase is Phase.VERIFYING and self.done_sent:
            self._done_due = now  # the Done may have been lost with it

    def fail(self, code: str, reason: str) -> None:
        """End now (a local error, a cancel, a refusal)."""
        if self.phase is not Phase.ENDED:
            self._end(Failed(code, reason))

    def on_timer(self, now: float) -> None:
        """Time passed: the offer's deadline, a retransmission timeout, a Done
        to resend. Harmless when nothing is due."""
        if self.phase is Phase.OFFERED:
            if self.deadline is not None and now >= self.deadline:
                self._end(Failed(ResultCode.TIMEOUT, "no answer to the offer", offer_expired=True))
        elif self.phase is Phase.SENDING:
            w = self.window
            assert w is not None
            if not w.in_flight and not w.waiting:
                return
            if now >= self.last_progress + self._stall(w):  # the very sum next_timer gives
                self.unanswered = self.early_done
                self._end(Failed(ResultCode.TIMEOUT, f"{self.peer} stopped acknowledging"))
                return
            held = self._held_until(w)
            if held is not None and now >= held:
                # (not unanswered: a receiver saying 0 is there, it did not
                # store the file and forget the transfer; not offered again)
                limit = self._waiting_limit()
                reason = f"{self.peer} kept the send waiting its turn for {limit:.0f} s"
                self._end(Failed(ResultCode.TIMEOUT, reason))
                return
            timeouts = w.timeouts
            w.on_timer(now)
            if w.timeouts > timeouts:
                self._outputs.append(Reattach())
            if self.congestion_managed:
                self._report[3] += w.timeouts - timeouts
            if self.early_done and w.timeouts > timeouts:
                # The receiver may have stored the file on the early Done and
                # its Verified be lost: it answers a Done again, never a chunk.
                self._outputs.append(SendDone(self.digest, self.total, 0))
        elif self.phase is Phase.VERIFYING and self._done_due is not None and now >= self._done_due:
            self._done_due = None
            self._send_done(now)

    # -- outputs ----------------------------------------------------------------

    def poll(self, now: float) -> list[Output]:
        """What to do now, in order. Chunks come only while sending, within
        credit, the congestion window and (paced) the granted bytes."""
        if self.phase is Phase.SENDING:
            self._pump(now)
        out, self._outputs = self._outputs, []
        return out

    def next_timer(self) -> float | None:
        """When :meth:`on_timer` should run next (None: nothing to time)."""
        if self.phase is Phase.OFFERED:
            return self.deadline
        if self.phase is Phase.SENDING and self.window is not None:
            due = self.window.next_deadline()
            if not self.window.in_flight and not self.window.waiting:
                return due
            # The stall clock runs while anything is in flight, even chunks
            # presumed lost whose resend waits for a grant.
            stall = self.last_progress + self._stall(self.window)
            held = self._held_until(self.window)
            if held is not None:
                stall = min(stall, held)
            return stall if due is None else min(due, stall)
        if self.phase is Phase.VERIFYING:
            return self._done_due
        return None

    def _stall(self, w: SendWindow) -> float:
        """Seconds of the receiver's silence that end the send: its
        ``timeout``; told to wait its turn, at least 3 s (the receiver says
        it again every second: core/incoming.py, ``WAITING_REPEAT``)."""
        return max(self.timeout, WAITING_SILENCE) if w.waiting else self.timeout

    def _waiting_limit(self) -> float:
        return max(self.timeout, WAITING_LIMIT)

    def _held_until(self, w: SendWindow) -> float | None:
        """When a wait for its turn that has not ended by then ends the send
        (None: not waiting, or no such end): :meth:`_waiting_limit` after
        the first 0 since a chunk was last newly acked, if the receiver said
        0 within :data:`WAITING_SILENCE` before it; a receiver silent
        longer by then ends the send for its silence instead (the stall
        clock: "stopped acknowledging", which may offer it again)."""
        if not w.waiting or self.waiting_since is None:
            return None
        held = self.waiting_since + self._waiting_limit()
        return held if self.last_progress > held - WAITING_SILENCE else None

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def waiting_for(self) -> str:
        """What the user waits for, as progress names it (wire ``Progress``):
        ``offering`` (the receiver's accept), ``sending``, ``hashing`` (every
        chunk acked, the whole-file hash not finished: after a resume, the
        chunks the receiver held are read back), ``verifying`` (Done sent,
        the receiver checks the hash), ``ended``."""
        if self.phase is Phase.VERIFYING:
            return "verifying" if self.digest else "hashing"
        return {Phase.OFFERED: "offering", Phase.SENDING: "sending"}.get(self.phase, "ended")

    @property
    def acked_bytes(self) -> int:
        """Progress: bytes the receiver has written."""
        if self.window is None:
            return 0
        return min(self.size, self.window.acked.count * self.chunk_size)

    @property
    def retransmits(self) -> int:
        return self.window.retransmits if self.window is not None else 0

    def stats(self) -> dict[str, float]:
        """The transfer's flow and congestion statistics (for SendResult)."""
        if self.window is None:
            return {}
        w, rtt = self.window, self.window.rtt
        stats: dict[str, float] = {
            "chunk_size": self.chunk_size,
            "chunks": self.total,
            "retransmits": w.retransmits,
            "timeouts": w.timeouts,
            "spurious_timeouts": w.spurious_timeouts,
            "fast_retransmits": w.fast_retransmits,
            "peak_credit": w.peak_window,
            "rto": round(rtt.rto, 6),
            "resumed_chunks": self.resumed,
            "accept_seconds": round(self.accept_seconds, 6),
            "sent_chunks": self.chunks_sent,
            "sent_bytes": self.bytes_sent,
            "scheduler_reports": self.reports,
        }
        if rtt.srtt is not None and rtt.rttvar is not None:
            stats["srtt"] = round(rtt.srtt, 6)
            stats["rttvar"] = round(rtt.rttvar, 6)
        if self.policy.mode == "parallel":
            stats["lanes"] = self.lanes
        if self.congestion_managed:
            stats["window_bytes"] = self.share or 0
            stats["peer_window_bytes"] = self.peer_window
            stats["window_decreases"] = self.peer_decreases
            stats["congestion_timeouts"] = self.timeouts
            stats["dupack_retransmits"] = self.losses
        rate = self.own_rate(self.policy.rate if self.policy.mode == "token-bucket" else 0)
        if rate:  # its own rate, live if the rate was changed
            stats["rate"] = rate
        return stats

    def window_history(self) -> list[int]:
        """This flow's congestion window (its share of the peer's) over time
        as [ms since start, bytes, ...]."""
        out: list[int] = []
        for when, window in self.history:
            out += [max(0, int((when - self.started) * 1000)), int(window)]
        return out

    def chunk_len(self, index: int) -> int:
        """Bytes of chunk ``index`` (only the last one may be shorter)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    # -- internals --------------------------------------------------------------

    def _pump(self, now: float) -> None:
        w = self.window
        assert w is not None
        managed = self.congestion_managed
        if managed:  # one chunk until the manager gives a share
            w.limit = max(1, (self.share or 0) // self.chunk_size)
        limit = self.allowance // self.chunk_size if self.paced else None
        if limit == 0:  # the last chunk may be shorter: it costs only its real size
            up = w.next_up()
            if up is not None and self.allowance >= self.chunk_len(up):
                limit = 1
        if limit == 0 and w.in_flight == 0 and w.room() > 0:
            # A turn held back for its own pacing, nothing of it unacked:
            # the send is not held by its receiver, a wait after it is anew.
            self.waiting_since = None
        resends, idle = w.retransmits, w.in_flight == 0
        indices = w.next_to_send(now, limit)
        resends = w.retransmits - resends  # they come first
        if indices and idle:  # the stall clock ran on our own pacing: it starts now
            self.last_progress = now
        for n, index in enumerate(indices):
            if self.paced:
                self.grants.spend(self.chunk_len(index))
            if managed and n >= resends:
                self._report[0] += self.chunk_len(index)
            self.chunks_sent += 1
            self.bytes_sent += self.chunk_len(index)
            self._outputs.append(SendChunk(index, index == self.total - 1))
        if managed:
            self._flush_report(now)
        if w.done:
            self.phase = Phase.VERIFYING
            self._send_done(now)
            return
        if w.sent_all and not self._hash_asked:
            # The hash now, so that a Done goes with the last chunk.
            self._hash_asked = True
            self._outputs.append(HashFile())
        if self.paced:
            request = self.grants.demand(w.room() * self.chunk_size - self.allowance)
            if request is not None:
                self.reports += 1
                self._outputs.append(request)

    def _flush_report(self, now: float) -> None:
        sent, acked, losses, timeouts = self._report
        if not (
            losses or timeouts or ((sent or acked) and now - self._reported_at >= REPORT_INTERVAL)
        ):
            return
        assert self.window is not None
        in_flight = self.window.in_flight * self.chunk_size
        self._outputs.append(ReportCongestion(sent, acked, losses, timeouts, in_flight))
        self.reports += 1
        self.losses += losses
        self.timeouts += timeouts
        self._report = [0, 0, 0, 0]
        self._reported_at = now

    def _send_done(self, now: float) -> None:
        if not self.digest:
            if not self._hash_asked:
                self._hash_asked = True
                self._outputs.append(HashFile())
            return
        if self._answer_due is not None and now >= self._answer_due:
            self.unanswered = True
            self._end(
                Failed(
                    ResultCode.TIMEOUT,
                    f"{self.peer} did not confirm the file (no answer for {self.timeout:g} s)",
                )
            )
            return
        self.done_sent += 1
        self._outputs.append(SendDone(self.digest, self.total, self.done_sent))
        assert self.window is not None
        if self._answer_due is None:
            self._answer_due = now + self.timeout
        backoff = max(1.0, self.window.rtt.rto * 2 ** min(self.done_sent, 16))
        self._done_due = min(now + backoff, self._answer_due)

    def _end(self, result: Finished | Failed) -> None:
        self.phase = Phase.ENDED
        self._outputs.append(result)
