"""One incoming unicast transfer as a sans-IO state machine.

:class:`IncomingTransfer` combines what a receiving node decides for one
file: which chunks to write and which to re-ack
(:class:`~peercrypt.core.receive_window.ReceiveWindow`), when to ack, the
done/verify stage and the idle timeout. (The resume manifest is the
writer's: it alone knows which chunks are durably in the part.) It
never touches a socket, a thread, a file or a clock; the receiver actor
authenticates and decrypts (only authenticated input reaches this object),
writes, hashes and sends what it is told.

- Inputs: :meth:`on_chunk` (returns whether to write it), :meth:`on_written`,
  :meth:`on_done`, :meth:`on_checked`, :meth:`on_hashed`, :meth:`on_sender_failed`,
  :meth:`on_cancelled`, :meth:`on_write_error`, :meth:`on_disk_full`, :meth:`on_timer`, each with
  ``now`` where time matters.
- Outputs: :meth:`poll` returns, in order,
  :class:`FinishFile`, :class:`Store` (the hash matched: publish the file),
  :class:`Abandon` (end without storing), and :meth:`ack` the Ack fields
  when one is due; :meth:`next_timer` says when :meth:`on_timer` is due.

Rules: only written chunks are acknowledged; a duplicate or a Done that
comes too early is answered with an ack at once (the sender learns what is
missing); written chunks are acked once every :data:`ACK_EVERY` of them
(fewer with a small credit: a quarter of it, at least one), and at once when
no other chunk of the transfer is waiting to be written (so an ack is never
held back by a chunk that is not coming), and whenever the receiver forces
one (it has shared-memory ring slots to give back), and when chunks wait
to be written and none was acked for :data:`STILL_WRITING_AFTER` seconds
(the sender's retransmission timer restarts on an ack of nothing new that
keeps the credit); a *window update*
(:meth:`window_update`) is an ack that acknowledges nothing new and only
carries a changed credit, sent when the transfer has not acked for
:data:`WINDOW_UPDATE_AFTER` seconds: a transfer that trickles (a chunk every
few seconds) would otherwise keep the credit it had before others started
until its next chunk, and with it the node's buffer they need; a credit
of 0 (the receiver's other transfers leave no room for its next chunk;
only where acks reach the sender in order, ``ordered``) makes the transfer
*wait its turn*: its turn (a credit again) goes in a window update at
once (with nothing of it queued), while it waits it is told so again every
:data:`WAITING_REPEAT` seconds (the sender's stall clock runs on that) and
its idle clock stops if its sender used its last turn (the receiver holds
it back, not its sender: at its turn the clock goes on from where it
stopped; a sender silent through its turns expires as if never told to wait),
and one that has waited :data:`WAIT_LIMIT` seconds gets a chunk and is never
told 0 again (those that keep a chunk whatever the others need, parallel
mode's lanes, older senders, cannot hold it back for good); a turn no chunk
has used yet is told again every :data:`WAITING_REPEAT` seconds (the ack
that gave it may be lost with a connection that broke); a chunk that comes
while it waits with nothing queued is a sender's of an older release,
which reads 0 as 1 (or a current sender's chunk late past the count's
grace): it is taken, and the transfer is never told 0 again (``floor``);
a chunk beyond the credit is
dropped (OVER_CREDIT) and neither acked nor counted as activity; the file is
finished once, on the first Done that names the right chunk count after
every chunk is written, or, when one came before (a sender sends one right
after its last chunk: a round trip sooner than the one the last ack
brings), as soon as every chunk is written, with the first such Done's
hash (one hash held, whatever the sender sends); a transfer that makes no progress (no new chunk, no
finishing Done) for ``idle_timeout`` seconds is dropped, keeping its part
file for a resume: duplicates and early Dones, which cost a sender nothing,
never keep a slot alive. The final check (fsync, the read-back hash, a
folder's build) is bounded the same way: its progress (:meth:`on_checked`;
the receiver's checks run a few at a time and the rest wait their turn,
so any check's progress counts) is the activity then, and a check that covers
nothing new for ``idle_timeout`` seconds (a read-back that stopped
answering, a part that cannot be read, a writer that is gone) ends the
transfer with ``timeout``: the sender is told, the part is kept for a
resume, its slot and space are freed. A check inside its fsync counts as
moving however long the fsync takes (``CheckSteps`` in
actors/file_writer.py: its thread is in the kernel, ending the transfer
would not free it); such a transfer ends when the sender cancels it (its
Failed), the receiving node's user cancels it (:meth:`on_cancelled`; the
check's thread is left to its fsync, detached from the transfer) or the
node stops.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.receive_window import Arrival, ReceiveWindow
from peercrypt.errors import ResultCode

# Written chunks per ack while more of the transfer wait to be written:
# each ack wakes both nodes' threads (the receiver's, both ZeroMQ I/O
# threads, the sender's), which cost more per chunk than the ack's bytes.
ACK_EVERY = 4

# Seconds without an ack after which a changed credit goes out on its own
# (a window update): a transfer that acks more often carries its new credit
# in its next ack anyway, for nothing.
WINDOW_UPDATE_AFTER = 0.5
# Seconds without an ack, while chunks that came wait for the writer (a
# writer stalled by the disk, or busy with other transfers' chunks), after
# which an ack goes anyway: the sender's retransmission timer (0.2 s at
# least, actors/sender.py's RttEstimator) restarts on it instead of taking
# chunks that arrived for lost (core/send_window.py: an ack of nothing new
# with the credit unchanged; a window update, sent only while nothing waits
# for the writer, does not restart it). A sender that predates it takes it
# for a window update.
STILL_WRITING_AFTER = 0.1
# Seconds between the acks that tell a transfer waiting its turn (a credit of
# 0) that it still waits: the sender's stall clock runs on them (it fails a
# transfer whose receiver said nothing for its --timeout).
WAITING_REPEAT = 1.0
# Seconds a transfer waits its turn at most: one that has waited this long is
# never told 0 again (one chunk at least, as before credits could be 0), so
# transfers that keep a chunk whatever the others need (parallel mode's
# lanes, senders of older releases) cannot hold the others back for good.
WAIT_LIMIT = 2.0


@dataclass(frozen=True)
class FinishFile:
    """Every chunk is written and the sender said Done: fsync and finish the
    hash, then :meth:`IncomingTransfer.on_hashed`."""


@dataclass(frozen=True)
class Store:
    """The file's hash is the sender's: publish it and answer Verified."""

    digest: bytes


@dataclass(frozen=True)
class Abandon:
    """End without storing. ``notify``: tell the sender (Failed with
    ``code``); ``keep_part``: keep the part file and manifest for a resume."""

    code: str
    reason: str
    keep_part: bool
    notify: bool


Output = FinishFile | Store | Abandon


@dataclass
class IncomingTransfer:
    """A file of ``total`` chunks, ``credit`` of them in flight at most."""

    total: int
    credit: int
    idle_timeout: float
    now: float
    have: ChunkBitmap | None = None
    ordered: bool = True  # one connection: acks reach the sender in order (credit 0 allowed)

    window: ReceiveWindow = field(init=False)
    last_activity: float = field(init=False)
    finishing: bool = field(default=False, init=False)
    ended: bool = field(default=False, init=False)
    ack_due: bool = field(default=False, init=False)
    checked: int = field(default=0, init=False)  # how far the final check got (on_checked)
    acked_at: float = field(init=False)  # when the last ack (or window update) went
    window_updates: int = field(default=0, init=False)
    still_writing: int = field(default=0, init=False)  # acks that said chunks wait to be written
    waited_at: float = field(default=0.0, init=False)  # when it was last told to wait its turn
    waited_too_long: bool = field(default=False, init=False)  # for WAIT_LIMIT
    taken_for_older: bool = field(default=False, init=False)  # a chunk came over a 0
    _turn_unused: bool = field(default=False, init=False)  # a turn no chunk has used yet
    _paused: bool = field(default=False, init=False)  # its idle clock stopped while it waits
    _ack_now: bool = field(default=False, init=False)  # a duplicate or an early Done
    _unacked: int = field(default=0, init=False)  # chunks written since the last ack
    _expected_digest: bytes = field(default=b"", init=False)
    _early_digest: bytes = field(default=b"", init=False)  # a Done's before every chunk came
    _outputs: list[Output] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.window = ReceiveWindow(self.total, self.credit, self.have, self.ordered)
        self.last_activity = self.acked_at = self.now

    # -- inputs -----------------------------------------------------------------

    def on_chunk(self, index: int, last: bool, now: float) -> Arrival:
        """An authenticated chunk: NEW (write it; progress), DUPLICATE
        (re-acked), OVER_CREDIT (beyond the credit; dropped) or INVALID
        (index outside the file or wrong last flag; ignored)."""
        if self.ended:
            return Arrival.DUPLICATE
        arrival = self.window.on_chunk(index, last, now)
        if arrival is Arrival.OVER_CREDIT and self.waiting and not self.window.queued:
            # A sender of an older release reads a credit of 0 as 1 (as did
            # every receiver before: never below one chunk): its chunk is
            # taken, and this transfer is never told 0 again.
            # (A current sender's chunk late past the count's grace looks
            # the same: that transfer, too, keeps a chunk from then on.)
            self.taken_for_older = True
            self.window.allow_one(now)
            self.window.over_credit -= 1  # (taken after all)
            arrival = self.window.on_chunk(index, last, now)
            self.ack_due = self._ack_now = True  # its credit of one, at once
        if arrival is Arrival.NEW:
            self.last_activity = now
            self._turn_unused = False
        elif arrival is Arrival.DUPLICATE:
            self.ack_due = self._ack_now = True
        return arrival

    def on_write_refused(self, index: int) -> None:
        """The writer's queue was full: chunk ``index`` was dropped, not
        queued (the sender resends it)."""
        self.window.on_dropped(index)

    def on_written(self, index: int, now: float | None = None) -> None:
        """The writer put chunk ``index`` into the part file (at ``now``: when
        a Done came before, the final check's bound starts then)."""
        if self.ended:
            return
        self.window.on_written(index)
        self.ack_due = True
        self._unacked += 1
        if self._early_digest and self.window.complete and not self.finishing:
            self._finish(self._early_digest, self.last_activity if now is None else now)

    def on_done(self, digest: bytes, chunks: int, now: float) -> None:
        """The sender's (authenticated) Done with its whole-file hash."""
        if self.ended:
            return
        if not self.window.complete or chunks != self.total:
            if chunks == self.total and not self._early_digest:
                self._early_digest = digest  # finished with once every chunk is written
            self.ack_due = self._ack_now = True  # tell the sender what is still missing
        elif not self.finishing:
            self._finish(digest, now)

    def _finish(self, digest: bytes, now: float) -> None:
        self.last_activity = now
        self.finishing = True
        self._expected_digest = digest
        self._outputs.append(FinishFile())

    def on_checked(self, moved: int, now: float) -> None:
        """How far the final check has got (any measure that moves with it):
        any change is progress (it keeps the transfer from timing out; a
        check that starts over, a folder's build then the part's hash,
        counts too). The receiver passes the steps of every check its
        writer has made: a check queued behind another one that moves is
        waiting its turn, not stuck."""
        if self.finishing and not self.ended and moved != self.checked:
            self.checked = moved
            self.last_activity = now

    def on_hashed(self, digest: bytes) -> None:
        """The writer's hash of the file as written (after fsync)."""
        if self.ended or not self.finishing:
            return
        if hmac.compare_digest(digest, self._expected_digest):
            self._end(Store(digest))
        else:
            self._end(Abandon("hash-mismatch", "whole-file hash mismatch", False, True))

    def on_sender_failed(self, reason: str, now: float) -> None:
        """The sender gave up (its authenticated Failed): keep what we have."""
        self.last_activity = now
        self._end(Abandon(ResultCode.ABORTED, reason, True, False))

    def on_cancelled(self, keep_part: bool) -> bool:
        """The receiving node's user cancelled the transfer (whatever stage
        it is in, a final check too): the sender is told; the part is kept
        for a resume only if ``keep_part``. False: too late, the transfer
        has ended (a verified folder is being stored): nothing changes."""
        if self.ended:
            return False
        reason = "the receiving node's user cancelled the transfer"
        self._end(Abandon(ResultCode.CANCELLED, reason, keep_part, True))
        return True

    def on_write_error(self, text: str) -> None:
        self._end(Abandon(ResultCode.IO, f"receiver cannot write: {text}", False, True))

    def on_disk_full(self, text: str) -> None:
        """The receiver's disk filled: the sender is told, the part is kept
        (what it holds is resumed once there is room)."""
        self._end(Abandon(ResultCode.NO_SPACE, f"the receiver's disk is full ({text})", True, True))

    def on_timer(self, now: float) -> None:
        if self.waiting and self._paused and not self.finishing:
            return  # the receiver holds it back, not its sender (its clock stops)
        due = self.next_timer()
        if due is None or now <= due:
            return
        if self.finishing:  # the sender waits for the verdict: tell it
            reason = (
                "the receiver's final check of the file made no progress "
                f"for {self.idle_timeout:g} s"
            )
            self._end(Abandon(ResultCode.TIMEOUT, reason, True, True))
        else:
            # Told: a sender that was paused (a laptop's suspend) and wakes
            # offers again, which resumes the part (it failed as it woke).
            self._end(Abandon("expired", "no traffic from the sender", True, True))

    # -- outputs ----------------------------------------------------------------

    def poll(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    def ack(
        self, credit: int, now: float, force: bool = False
    ) -> tuple[int, list[tuple[int, int]], int] | None:
        """The Ack to send at ``now`` with ``credit`` chunks of window, if one is
        due: at once for a duplicate or an early Done, else once enough
        chunks are written or none is waiting to be (see the module docs).
        ``ack_due`` stays set while one is held back. ``force``: now, due or
        not (the receiver has slots of a shared-memory ring to give back)."""
        if self.ended or not (self.ack_due or force):
            return None
        every = max(1, min(ACK_EVERY, self.window.window // 4))
        if not force and not self._ack_now and self._unacked < every and self.window.queued:
            return None
        self.ack_due = self._ack_now = False
        self._unacked = 0
        self.acked_at = now
        self._advertise(credit, now)
        return self.window.ack_fields()

    @property
    def floor(self) -> int:
        """The least credit an ack gives: 0 where acks come in order (a
        transfer may wait its turn), else 1 (core/receive_window.py)."""
        zero_ok = not (self.waited_too_long or self.taken_for_older)
        return 0 if self.ordered and zero_ok else 1

    @property
    def waiting(self) -> bool:
        """Told to wait its turn (a credit of 0), with chunks left to write."""
        return self.window.window == 0 and not self.window.complete and not self.ended

    def _advertise(self, credit: int, now: float) -> None:
        if self.waiting and now - self.waited_at >= WAIT_LIMIT:
            self.waited_too_long = True  # one chunk at least from now on
        credit = max(self.floor, credit)
        if self.window.window == 0 and credit > 0:
            # Its turn: a stopped idle clock goes on from where the wait
            # stopped it; the turn is told again until a chunk comes.
            if self._paused:
                self.last_activity = now - max(0.0, self.waited_at - self.last_activity)
            self._turn_unused, self._paused = True, False
        elif self.window.window > 0 and credit == 0:
            # Told to wait: its idle clock stops if its sender used its last
            # turn (a sender silent through its turns still expires). A turn
            # taken back unused goes on with the wait it broke: WAIT_LIMIT
            # counts from the first 0 since the transfer last took a chunk
            # (what its sender's limit counts, core/outgoing.py).
            if not self._turn_unused:
                self.waited_at = now
            self._paused = not self._turn_unused
        self.window.advertise(credit, now)

    def update_due(self, now: float) -> bool:
        """Whether :meth:`window_update` may send anything at ``now`` (cheap:
        a receiver asks every transfer every tick, before working out any
        credit)."""
        if self.ended or self.finishing:
            return False
        quiet = now - self.acked_at
        return (
            quiet >= WINDOW_UPDATE_AFTER
            or (self.window.queued > 0 and quiet >= STILL_WRITING_AFTER)
            or self.waiting
            or (self._turn_unused and quiet >= WAITING_REPEAT)
        )

    def window_update(
        self, credit: int, now: float
    ) -> tuple[int, list[tuple[int, int]], int] | None:
        """The Ack to send at ``now`` to tell the sender its credit is now
        ``credit`` chunks, though nothing new is written: only if that is
        not the credit it was last told, no ack is due (it will carry the
        credit), the transfer has not acked for :data:`WINDOW_UPDATE_AFTER`
        seconds and is still taking chunks. Or, when chunks that came wait
        for the writer and nothing was acked for :data:`STILL_WRITING_AFTER`
        seconds: an ack then, with what was written and the credit last told
        (a smaller ``credit`` instead, never a larger one). Its cumulative
        index and ranges are the last ack's, or larger: it acknowledges
        nothing unwritten."""
        credit = max(self.floor, credit)
        if self.ended or self.finishing:
            return None
        if self.waiting and not self.window.queued:
            # Its turn (a credit at last) goes at once; while it still waits,
            # an ack now and then says so (the sender's stall clock), and
            # after WAIT_LIMIT its turn goes whatever the credit (_advertise).
            quiet = now - self.acked_at < WAITING_REPEAT
            if credit == 0 and quiet and now - self.waited_at < WAIT_LIMIT:
                return None
            self.window_updates += 1
            return self.ack(credit, now, force=True)
        if self._turn_unused and not self.window.queued and now - self.acked_at >= WAITING_REPEAT:
            # A turn no chunk has used: told again (the ack that gave it may
            # be lost with a connection that broke, and then the sender
            # would wait for it until its timeout), with what the buffer has
            # for it now (0 again, maybe).
            self.window_updates += 1
            return self.ack(credit, now, force=True)
        if self.window.queued and now - self.acked_at >= STILL_WRITING_AFTER:
            # Chunks came and wait for the writer, and nothing was acked for
            # a while: the sender hears that the transfer is alive before
            # its retransmission timer takes them for lost (whatever was
            # written meanwhile goes with it). With the credit it was told,
            # or less, never more: the sender restarts its timer only on an
            # ack that keeps the credit (a grown one waits for the next ack
            # of written chunks; the writer is behind anyway).
            self.still_writing += 1
            return self.ack(min(credit, self.window.window), now, force=True)
        if self.ack_due or credit == self.window.window:
            return None
        if now - self.acked_at < WINDOW_UPDATE_AFTER:
            return None
        self.acked_at = now
        self.window_updates += 1
        self._advertise(credit, now)
        return self.window.ack_fields()

    def next_timer(self) -> float | None:
        """When the transfer expires unless traffic (or, finishing, the final
        check's progress) comes; None once ended."""
        if self.ended:
            return None
        return self.last_activity + self.idle_timeout

    @property
    def written(self) -> ChunkBitmap:
        return self.window.written

    # -- internals --------------------------------------------------------------

    def _end(self, result: Store | Abandon) -> None:
        if not self.ended:
            self.ended = True
            self._outputs.append(result)
