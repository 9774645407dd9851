"""One outgoing multicast session as a sans-IO state machine.

:class:`MulticastOutgoing` is to the msender what
:class:`~peercrypt.core.outgoing.OutgoingTransfer` is to the sender: it
combines what a sending node decides for one session - who joined, when
publishing starts, the pace (:class:`~peercrypt.core.multicast.SessionPlan`:
the slowest multicast member plus the AIMD window), the repairs, the
scheduler's byte grants (a node ``--max-rate``), the status each receiver
is told, the whole-file hash and every target's result. It never touches a
socket, a file or a clock:

- Inputs: :meth:`on_connection`, :meth:`on_join`, :meth:`on_held`, :meth:`on_subscribed`,
  :meth:`on_ack`, :meth:`on_unknown`, :meth:`on_done`, :meth:`on_grant`,
  :meth:`on_pacing`, :meth:`on_digest`, :meth:`on_timer`,
  :meth:`fail_target`, :meth:`fail` -- with ``now`` where time matters.
- Outputs: :meth:`poll` returns what to do now, in order:
  :class:`Announce`, :class:`StartPublishing`, :class:`Publish` (a chunk's
  first publication: read, hash in order, seal, publish),
  :class:`~peercrypt.core.multicast.Repair`, :class:`SendStatus`,
  :class:`~peercrypt.core.outgoing.HashFile` (every chunk was read: finish
  the hash if the file did not change, then :meth:`on_digest`),
  :class:`HashAll` (nothing is published, every target had the file: hash
  it whole, then :meth:`on_digest`),
  :class:`~peercrypt.core.grants.RequestGrant` (as a unicast transfer's),
  :class:`TargetLost`,
  :class:`TargetEnded` (once per target) and at most once
  :class:`SessionEnded`; :meth:`next_timer` says when :meth:`on_timer` is
  due.

Targets that already hold the file (:meth:`on_held`: the receiver stored
this file version from this sender before, unchanged) neither join nor set
the pace: they get a :class:`SendStatus` every ``ANNOUNCE_INTERVAL`` (so
they know the session goes on) and, once the whole-file hash is known, one
with it at once and again until they answer;
and their :meth:`on_done` is checked against it as any receiver's; one that
does not answer within ``timeout`` of the hash fails. Their result says
``held``.

Verdicts: :meth:`on_done` counts only for a target that proved its identity
in this session (a join or a held answer, whose proof and trust the actor
checked); a verdict from any other (whoever answers at a target's address
without proving anything there) is ignored and changes nothing.

Phases: *joining* (publishing starts once every target joined, held or failed
and every joined one is ready - subscribed to the PUB socket, or acked its
key over a UDP group - or after ``join_wait`` seconds with one joined, or at
``timeout`` whatever happened), *publishing*, *ended*.

Pacing (one core for both transports): unpaced, a step publishes up to
:data:`PUBLISH_BATCH` new chunks after the repairs, within the plan's
window; paced, first sends and repairs together stay within the granted
bytes and the rest is asked for (:class:`RequestGrant`). Over a UDP group
the actor queues each sealed chunk's datagrams and spends the grant per
datagram (:meth:`spend`); a step then hands out chunks only while the
grant covers what is queued (``queued`` in :meth:`poll`), so the datagrams
leave at the node's rate instead of in bursts a bottleneck would drop.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from peercrypt.core.grants import Allowance, GrantedFlow, RequestGrant
from peercrypt.core.multicast import (
    DONE,
    FAILED,
    HELD,
    JOINING,
    LOST,
    Member,
    Repair,
    SessionPlan,
)
from peercrypt.core.outgoing import HashFile
from peercrypt.errors import ResultCode

JOIN_WAIT = 2.0  # seconds publishing waits for every target to join
ANNOUNCE_INTERVAL = 0.5  # re-announce to targets that did not join (yet)
TICK = 0.05  # seconds between timeout checks while publishing
# A receiver holding every chunk is verifying (the whole-file hash, storing
# a folder): its acks count as progress for at most verify_limit() seconds
# (core/multicast.py): the timeout, plus the time this rate of checking takes
# for the bytes, plus VERIFY_PER_FILE for each file of a folder (storing many
# small files is dominated by creating them: 10,000 took 19-34 s, ~3.4 ms
# each, on a loaded two-core machine), counting at most VERIFY_MAX_FILES
# files (the receivers' default --tree-max-files): a member acking for ever
# still fails, within a bound the sender's own file set fixes.
VERIFY_FLOOR = 8 * 1024 * 1024  # bytes/s
VERIFY_PER_FILE = 0.01  # seconds
VERIFY_MAX_FILES = 100_000
# An ack is answered with a status (horizon, hash, ack interval) at most this
# often per receiver - sooner when it NAKed or the hash or the interval is new
# to it: acks come every few written chunks, and answering each cost the
# sender CPU per receiver.
STATUS_INTERVAL = 0.1
PUBLISH_BATCH = 16  # chunks per step (the actor reads acks in between)
# A target that rejoins more often than this (it answers ``unknown-session``
# again and again: restarting, or forgetting the session) is dropped: each
# rejoin may cost a unicast repair of everything it lacks.
MAX_REJOINS = 8


@dataclass(frozen=True)
class Announce:
    """(Re)announce the session to ``target`` (if it is connected)."""

    target: str


@dataclass(frozen=True)
class StartPublishing:
    """Publishing starts now (tell the scheduler about the flow)."""

    paced: bool


@dataclass(frozen=True)
class Publish:
    """Read chunk ``index``, hash it (these come in file order), seal and
    publish it for the first time."""

    index: int
    last: bool


@dataclass(frozen=True)
class SendStatus:
    """Tell ``target`` what exists (``horizon``), the whole-file hash once
    known and how often to ack."""

    target: str
    horizon: int
    digest: bytes
    ack_every: int


@dataclass(frozen=True)
class TargetLost:
    """``target`` went silent: it is announced to again until it rejoins."""

    target: str


@dataclass(frozen=True)
class TargetEnded:
    """``target``'s result. ``tell``: it joined and is not done, so tell it
    the session ended for it; ``alone``: it ended on its own (report it now),
    not with the whole session (:class:`SessionEnded` carries it)."""

    target: str
    code: str
    reason: str
    stored_as: str
    seconds: float
    tell: bool
    alone: bool = True
    held: bool = False  # it had the file: nothing was stored again


@dataclass(frozen=True)
class HashAll:
    """Every target still in the session holds the file (none joined, or
    every one that joined has ended): read and hash the chunks from
    ``start`` on (the ones before were hashed as they were published), then
    :meth:`MulticastOutgoing.on_digest` if the file did not change."""

    start: int = 0


@dataclass(frozen=True)
class SessionEnded:
    """Every target has its result (or the session was failed)."""

    code: str
    reason: str


Output = (
    Announce
    | StartPublishing
    | Publish
    | Repair
    | SendStatus
    | HashFile
    | HashAll
    | RequestGrant
    | TargetLost
    | TargetEnded
    | SessionEnded
)


def verify_limit(timeout: float, size: int, files: int = 0) -> float:
    """Seconds a member that holds every chunk may keep acking as progress
    while it verifies and stores ``size`` bytes in ``files`` files (0: one
    plain file): ``timeout`` + ``size`` / VERIFY_FLOOR + VERIFY_PER_FILE per
    file, for at most VERIFY_MAX_FILES files."""
    return (
        timeout
        + max(0, size) / VERIFY_FLOOR
        + min(max(0, files), VERIFY_MAX_FILES) * VERIFY_PER_FILE
    )


@dataclass
class Receiver:
    """What the session knows of one target besides its plan member."""

    name: str
    connected: bool = False
    handshaken: bool = False
    cause: str = ""  # why it cannot connect, when known
    joined: bool = False
    ready: bool = False  # subscribed (PUB) or acked after its key (UDP group)
    result: TargetEnded | None = None
    status_at: float = float("-inf")  # when the last status went to it
    status_digest: bool = False  # whether one carried the whole-file hash
    status_ack_every: int = 0  # the ack interval it was last told
    held: bool = False  # it holds the file already (McHeld): waits for the hash
    held_due: float = float("inf")  # when it fails if it has not answered by then
    # It said it held the file and has not joined since (a restart announces
    # again and clears ``held``): a verdict from it stored nothing new.
    had: bool = False
    # It proved its identity in this session (a join or a held answer whose
    # proof and trust the actor checked), and stays so: only its verdict
    # counts. Whoever answers at its address without that proof (a member
    # squatting a dead target's port) cannot make it verified, or failed.
    proven: bool = False


@dataclass
class MulticastOutgoing(GrantedFlow):
    """One file of ``size`` bytes in chunks of ``chunk_size`` to ``targets``.

    ``timeout``: how long targets may take to join, and the longest time a
    member's written point may stand still. ``datagrams``: the chunks go to
    a UDP group (readiness is the first ack after the key; paced datagrams).
    ``paced``: the node has a rate cap (the scheduler may change it later
    with :meth:`on_pacing`).
    """

    size: int
    chunk_size: int
    targets: list[str]
    timeout: float
    now: float
    window: int = 64
    min_window: int = 4
    datagrams: bool = False
    join_wait: float = JOIN_WAIT
    files: int = 0  # files of a folder (0: one plain file)

    started: float = field(init=False)
    publishing: bool = field(default=False, init=False)
    ended: bool = field(default=False, init=False)
    grants: Allowance = field(default_factory=Allowance, init=False)  # as a unicast transfer's
    digest: bytes = field(default=b"", init=False)
    receivers: dict[str, Receiver] = field(default_factory=dict, init=False)
    _hash_asked: bool = field(default=False, init=False)
    _again: bool = field(default=False, init=False)  # the last step was a full batch
    _announce_due: float = field(init=False)
    _tick_due: float = field(init=False)
    _outputs: list[Output] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.total = max(1, -(-self.size // self.chunk_size))
        self.started = self.now
        self.plan = SessionPlan(
            self.total,
            window=self.window,
            min_window=self.min_window,
            stall_timeout=self.timeout,
            verify_limit=verify_limit(self.timeout, self.size, self.files),
        )
        for name in dict.fromkeys(self.targets):
            self.receivers[name] = Receiver(name)
            self.plan.add(name, self.now)
        self._announce_due = self.now + ANNOUNCE_INTERVAL
        self._tick_due = self.now + TICK

    # -- inputs -----------------------------------------------------------------

    def on_connection(
        self, target: str, *, connected: bool, handshaken: bool = False, cause: str = ""
    ) -> None:
        """The control connection to ``target`` is up or down (``handshaken``:
        CURVE completed; the actor then announces at once; ``cause``: why it
        cannot connect, when known)."""
        r = self.receivers.get(target)
        if r is not None:
            r.connected = connected
            r.handshaken = r.handshaken or handshaken
            r.cause = cause

    def on_join(self, target: str, now: float) -> bool:
        """``target`` joined (its proof and trust were checked by the actor,
        which sends it the key): a first join, or a rejoin after it was lost
        or restarted, starts its member afresh (True). A repeated join of a
        member in the session changes nothing (False). A rejoin does not
        restart its stall clock, and after :data:`MAX_REJOINS` rejoins the
        target fails (False)."""
        r = self.receivers.get(target)
        if r is None or r.result is not None:
            return False
        member = self.plan.members.get(target)
        fresh = member is None or member.state in (JOINING, LOST)
        if fresh and member is not None and member.rejoins >= MAX_REJOINS and member.state == LOST:
            r.joined = True  # it holds the key now: tell it the session ended for it
            reason = f"{target} rejoined {member.rejoins} times without finishing; dropped"
            self.fail_target(target, ResultCode.FAILED, reason, now)
            return False
        if fresh:
            self.plan.join(target, now)
        r.joined = r.proven = True
        r.held = r.had = False
        self._maybe_start(now)
        return fresh

    def on_held(self, target: str, now: float) -> None:
        """``target`` holds the file already (its answer to an announce that
        carried the file's source tag, from the key proven in the hello): it
        takes no part in publishing and gets the whole-file hash once it is
        known; its verdict is checked as any receiver's (:meth:`on_done`).
        A target that joined or has a result is not changed."""
        r = self.receivers.get(target)
        if r is None or r.result is not None or r.joined or r.held:
            return
        r.held = r.had = r.proven = True
        member = self.plan.members.get(target)
        if member is not None:
            member.state = HELD
        if self.digest:
            self._tell_held(now)
        self._maybe_start(now)

    def on_subscribed(self, target: str, now: float) -> None:
        """``target``'s subscription to the PUB socket took effect."""
        r = self.receivers.get(target)
        if r is not None and not r.ready:
            r.ready = True
            self._maybe_start(now)

    def on_ack(self, target: str, cumulative: int, naks: list[tuple[int, int]], now: float) -> None:
        """An ack: chunks below ``cumulative`` are written; ``naks`` missing."""
        r = self.receivers.get(target)
        member = self.plan.members.get(target)
        if r is None or r.result is not None or member is None:
            return
        if member.state in (DONE, FAILED, JOINING, HELD):
            return
        plan = self.plan
        plan.on_ack(target, cumulative, naks, now)
        ack_every = plan.ack_interval
        if (
            naks
            or (self.digest and not r.status_digest)
            or ack_every != r.status_ack_every
            or now - r.status_at >= STATUS_INTERVAL
        ):
            r.status_at, r.status_digest, r.status_ack_every = now, bool(self.digest), ack_every
            horizon = plan.published if self.publishing else 0
            self._outputs.append(SendStatus(target, horizon, self.digest, ack_every))
        if self.datagrams and not r.ready:
            r.ready = True  # it joined the group before joining the session
            self._maybe_start(now)

    def on_unknown(self, target: str) -> None:
        """``target`` does not know the session (it restarted): announce again."""
        r = self.receivers.get(target)
        if r is None or r.result is not None:
            return
        r.joined = r.held = False
        r.held_due = float("inf")
        member = self.plan.members.get(target)
        if member is not None and member.state == HELD:
            member.state = JOINING  # announced again: it joins, or holds it again
        self.plan.end(target, LOST)
        self._outputs.append(Announce(target))

    def on_done(
        self, target: str, ok: bool, digest: bytes, stored_as: str, reason: str, now: float
    ) -> bool:
        """``target`` verified the file (``ok``: with ``digest``) or failed.

        Only the verdict of a target that proved itself in this session
        (:meth:`on_join`, :meth:`on_held`) counts; any other is ignored and
        the target goes on as before. False when ignored (unproven, unknown
        or already ended)."""
        r = self.receivers.get(target)
        if r is None or r.result is not None or not r.proven:
            return False
        if not ok:
            self.fail_target(target, ResultCode.FAILED, f"{target} failed: {reason}", now)
        elif not self.digest or not hmac.compare_digest(digest, self.digest):
            reason = f"{target} stored a different hash"
            self.fail_target(target, ResultCode.VERIFY, reason, now)
        else:
            self._end_target(target, ResultCode.OK, "", stored_as, now, held=r.held or r.had)
        return True

    def fail_target(self, target: str, code: str, reason: str, now: float) -> None:
        """``target`` failed (a refusal, a failed proof, untrusted, ...)."""
        self._end_target(target, code, reason, "", now)

    def spend(self, nbytes: int) -> None:
        """The actor sent ``nbytes`` of queued datagrams (paced UDP)."""
        self.grants.spend(nbytes)

    def on_digest(self, digest: bytes, now: float) -> None:
        """The whole-file hash (its targets holding the file are told it)."""
        if not self.digest:
            self.digest = digest
            self._tell_held(now)

    def fail(self, code: str, reason: str, now: float) -> None:
        """End the session now (cancelled, the node stops, a local error):
        every target without a result gets this one."""
        if self.ended:
            return
        for r in self.receivers.values():
            if r.result is None:
                own = code if code != ResultCode.OK else ResultCode.CANCELLED
                self._end_target(r.name, own, reason, "", now, alone=False)
        self._finish(code, reason)

    def on_timer(self, now: float) -> None:
        """Time passed: re-announces, the join wait, member timeouts."""
        if self.ended:
            return
        if now >= self._announce_due:
            self._announce_due = now + ANNOUNCE_INTERVAL
            for r in self.receivers.values():
                if r.result is None and not r.joined and not r.held:
                    self._outputs.append(Announce(r.name))
                elif r.result is None and r.held:  # the hash (again), or "still at it"
                    self._outputs.append(SendStatus(r.name, 0, self.digest, 0))
        if now < self._tick_due:
            return
        self._tick_due = now + TICK
        for r in list(self.receivers.values()):
            if r.result is None and r.held and now >= r.held_due:
                reason = f"{r.name} had the file but gave no verdict on its hash"
                self._end_target(r.name, ResultCode.TIMEOUT, reason, "", now)
        if self.ended:
            return
        if not self.publishing:
            if now - self.started >= self.timeout:
                for r in list(self.receivers.values()):
                    if r.result is None and not r.joined and not r.held:
                        code = ResultCode.TIMEOUT if r.handshaken else ResultCode.UNREACHABLE
                        self._end_target(r.name, code, self._not_joined(r), "", now)
                if not self.ended:
                    self._begin()
            elif now - self.started >= self.join_wait and any(
                r.joined for r in self.receivers.values()
            ):
                self._start()
            elif now - self.started >= self.join_wait and any(
                r.held and r.result is None for r in self.receivers.values()
            ):
                self._begin()  # hash for those holding it; the others may still join
            return
        for name, state in self.plan.tick(now):
            r = self.receivers[name]
            if state == LOST:
                r.joined = False
                self._outputs.append(TargetLost(name))
            elif state == FAILED:
                reason = self.plan.members[name].reason
                code = ResultCode.TIMEOUT
                if not r.joined and not r.connected:
                    code, reason = ResultCode.UNREACHABLE, self._not_joined(r)
                self._end_target(name, code, reason, "", now)

    # -- outputs ----------------------------------------------------------------

    def poll(self, now: float, queued: int = 0) -> list[Output]:
        """What to do now, in order. ``queued``: bytes of datagrams the actor
        still holds for the group (paced UDP)."""
        self._again = False
        if self.publishing and not self.ended:
            if self.paced and self.datagrams:
                self._step_datagrams(now, queued)
            else:
                self._step(now)
            if self.plan.published == self.total and not self.digest and not self._hash_asked:
                self._hash_asked = True
                self._outputs.append(HashFile())
            elif self._only_held() and not self.digest and not self._hash_asked:
                # Every one that joined has ended: nothing more is published
                # for them, and those holding the file wait for the hash.
                self._hash_asked = True
                self._outputs.append(HashAll(self.plan.published))
        out, self._outputs = self._outputs, []
        return out

    def next_timer(self, now: float) -> float | None:
        """When :meth:`on_timer` (or, ``now``: another :meth:`poll`) is due."""
        if self.ended:
            return None
        if self._again:
            return now
        if not self.publishing:
            start = self.started + (
                self.join_wait if any(r.joined for r in self.receivers.values()) else self.timeout
            )
            return min(self._announce_due, max(self._tick_due, start))
        return min(self._announce_due, self._tick_due)

    @property
    def again(self) -> bool:
        """The last :meth:`poll` published a full batch: poll again soon
        (after reading what arrived meanwhile)."""
        return self._again

    # -- what the actor reports -------------------------------------------------

    def member(self, target: str) -> Member | None:
        return self.plan.members.get(target)

    def joined(self, target: str) -> bool:
        r = self.receivers.get(target)
        return r is not None and r.joined

    def done_chunks(self) -> int:
        """The lowest written point among members still in the session."""
        live = [
            m.cumulative
            for m in self.plan.members.values()
            if m.state not in (FAILED, JOINING, HELD)
        ]
        return min(live) if live else 0

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    # -- internals --------------------------------------------------------------

    def _maybe_start(self, now: float) -> None:
        """Publish once every target joined (or held the file, or failed) and
        every joined one is ready; with none joined and one holding the
        file, only hash it."""
        rs = self.receivers.values()
        joined = sum(1 for r in rs if r.joined)
        ready = sum(1 for r in rs if r.ready)
        if (
            not self.publishing
            and not self.ended
            and (joined or any(r.held for r in rs))
            and all(r.joined or r.held or r.result is not None for r in rs)
            and ready >= joined
        ):
            self._begin()

    def _begin(self) -> None:
        """Publish if a target joined; else, if one holds the file, hash it."""
        if any(r.joined and r.result is None for r in self.receivers.values()):
            self._start()
        elif (
            not self._hash_asked
            and not self.digest
            and any(r.held and r.result is None for r in self.receivers.values())
        ):
            self._hash_asked = True
            self._outputs.append(HashAll())

    def _start(self) -> None:
        if self.publishing:  # a target that failed at the timeout may have started it
            return
        self.publishing = True
        self._outputs.append(StartPublishing(self.paced))

    def _only_held(self) -> bool:
        """Targets without a result are all holding the file (one at least)."""
        open_ = [r for r in self.receivers.values() if r.result is None]
        return bool(open_) and all(r.held for r in open_)

    def _tell_held(self, now: float) -> None:
        """The hash is known: tell it to every target holding the file."""
        for r in self.receivers.values():
            if r.result is None and r.held and r.held_due == float("inf"):
                r.held_due = now + self.timeout
                self._outputs.append(SendStatus(r.name, 0, self.digest, 0))

    def _step(self, now: float) -> None:
        plan = self.plan
        paced = self.paced
        # Paced: first sends and repairs together stay within the granted bytes.
        budget = self.allowance // self.chunk_size if paced else plan.window
        for repair in plan.plan(now, budget=min(budget, plan.window)):
            budget -= 1
            if paced:
                self.grants.spend(self.chunk_size)
            self._outputs.append(repair)
        wanted = plan.can_publish()
        n = min(wanted, PUBLISH_BATCH, max(0, budget) if paced else PUBLISH_BATCH)
        if paced:
            self.grants.spend(n * self.chunk_size)
            # Ask for what is left to publish now, plus a window's worth for
            # repairs when the grant ran out (they may be waiting).
            need = max(0, wanted - n) + (plan.window if budget - n <= 0 else 0)
            if n < PUBLISH_BATCH:
                self._demand(need * self.chunk_size)
        self._publish(n)
        self._again = n == PUBLISH_BATCH

    def _step_datagrams(self, now: float, queued: int) -> None:
        """Paced UDP: hand out chunks while the grant covers what is queued;
        a unicast repair spends its whole chunk at once."""
        plan = self.plan
        for _ in range(PUBLISH_BATCH):
            if queued >= self.allowance:
                break
            repairs = plan.plan(now, budget=1)
            if repairs:
                repair = repairs[0]
                if repair.publish:
                    queued += self.chunk_len(repair.index)
                else:
                    self.grants.spend(self.chunk_size)
                self._outputs.append(repair)
            elif plan.can_publish():
                queued += self.chunk_len(plan.published)
                self._publish(1)
            else:
                break
        if queued >= self.allowance:
            self._demand(queued + (plan.can_publish() + plan.window) * self.chunk_size)

    def _publish(self, n: int) -> None:
        plan = self.plan
        for _ in range(n):
            index = plan.published
            plan.on_published()
            self._outputs.append(Publish(index, index == self.total - 1))

    def _demand(self, nbytes: int) -> None:
        request = self.grants.demand(nbytes)
        if request is not None:
            self._outputs.append(request)

    def _end_target(
        self,
        target: str,
        code: str,
        reason: str,
        stored_as: str,
        now: float,
        alone: bool = True,
        held: bool = False,
    ) -> None:
        r = self.receivers.get(target)
        if r is None or r.result is not None:
            return
        tell = (r.joined or r.held) and code != ResultCode.OK
        seconds = now - self.started
        r.result = TargetEnded(target, code, reason, stored_as, seconds, tell, alone, held)
        self.plan.end(target, DONE if code == ResultCode.OK else FAILED, reason)
        self._outputs.append(r.result)
        results = [x.result for x in self.receivers.values()]
        if alone and all(x is not None for x in results):
            failed = [x for x in results if x is not None and x.code != ResultCode.OK]
            if not failed:
                self._finish(ResultCode.OK, "")
            else:
                ok = len(self.receivers) - len(failed)
                first = failed[0]
                self._finish(
                    first.code, f"{ok} of {len(self.receivers)} receivers verified; {first.reason}"
                )
        if alone and not self.publishing:  # the others may all be in (or hold the file)
            self._maybe_start(now)

    def _finish(self, code: str, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self._outputs.append(SessionEnded(code, reason))

    @staticmethod
    def _not_joined(r: Receiver) -> str:
        if not r.connected:
            return f"cannot connect to {r.name}: {r.cause or 'no node answers there'}"
        return f"{r.name} did not join the session"
