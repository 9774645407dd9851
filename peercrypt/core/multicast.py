"""Reliability of one multicast session: pure state machines, time passed in.

Receiver side, :class:`GapTracker`: which chunks arrived (from the PUB socket
or a unicast repair), which were written, and which to NAK. A chunk is
missing when it lies below the *horizon*: the highest index seen + 1, or
what the sender says exists (``McStatus.horizon``), whichever is larger - so
a late join (gap at the start), a high-water-mark drop or a reconnect (gap in
the middle) and a lost tail are all found. The sender's horizon counts only
after ``holdoff`` seconds without any arrival: until then the chunks between
the highest seen and the horizon may still be on their way (one ordered
stream), and NAKing them would repeat what is already in flight. NAKs cover at most ``nak_limit``
chunks (the lowest missing), as at most :data:`MAX_RANGES` ranges, and a
chunk is not NAKed again within ``holdoff`` seconds (its repair is on the way).

Sender side, :class:`SessionPlan`: the members, the publishing pace and the
repairs.

- Pace: the next new chunk may be published while ``published <
  floor + cwnd``, where ``floor`` is the lowest cumulative ack among members
  in ``multicast`` state (or, with none, the highest among the others) and
  ``cwnd`` the congestion window in chunks
  (:func:`~peercrypt.core.congestion.for_multicast`, the same AIMD as
  unicast): +1 per window the floor advances, halved when a NAK shows a
  first-publication drop (at most once per round trip: not again until the
  floor passes what was published at the decrease), between
  ``min_window`` and ``window``.
- Repairs: each member's latest NAK set is what it wants: the union of its
  ranges within what was published, the lowest :data:`MAX_WANTED` chunks at
  most (:func:`asked_ranges`: overlapping ranges cost nothing extra). A chunk
  wanted by ``publish_min`` (2) or more members is re-published once; one
  wanted by fewer is sent by unicast to each. A (member, chunk) is not
  repaired again within ``holdoff`` seconds.
- Slow members (UFTP's max_nak_pct idea, two thresholds): a ``multicast``
  member that holds the pace back (``published - cumulative >= cwnd``) for
  ``slow_grace`` seconds, or that NAKed more than ``max_nak_pct`` percent of
  the chunks published since it joined (at least 2 windows' worth), is moved
  to ``unicast``: it no longer sets the pace and is finished by repairs.
  A member that acks nothing for ``lost_after`` seconds is ``lost`` (the
  actor re-announces the session to it; a restarted receiver rejoins). A
  member whose cumulative ack does not move for ``stall_timeout`` seconds
  (after its first rejoin: beyond the first ack it sent, what it held;
  otherwise beyond its high-water mark), or that stays lost that long, fails: one peer
  never stalls the others.
  A member that acks every chunk is verifying (the final hash, storing a
  folder): each such ack counts as progress, so a long check is not a stall
  - for ``verify_limit`` seconds after its first such ack at most, then its
  stall clock runs: a member that never sends its verdict (a hostile one)
  cannot hold the session open for ever.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import blake3

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap
from peercrypt.core.congestion import for_multicast
from peercrypt.core.resume import ResumeKey

# Rejoins after which chunks written below the member's high-water mark
# still count as progress (a receiver restarted once catching up).
CATCH_UP_REJOINS = 1
JOINING = "joining"
MULTICAST = "multicast"
UNICAST = "unicast"
LOST = "lost"
DONE = "done"
FAILED = "failed"
# It holds this very file already (its McHeld): it neither joins nor sets the
# pace, and waits for the whole-file hash to answer with its verdict.
HELD = "held"
LIVE = (MULTICAST, UNICAST)


_SESSION_SOURCE_CONTEXT = "peercrypt 2026 multicast session part v1"


_SESSION_TID_CONTEXT = "peercrypt 2026 multicast receiver session v1"
SESSION_TID_BYTES = 16


def session_tid(peer: bytes, sid: bytes) -> bytes:
    """A receiver's own name for the session ``sid`` announced by the proven
    sender ``peer``: its key in the receiver's tables, the writer and the
    space ledger. Senders choose session ids and every co-receiver learns
    them, so two senders may announce one id to a receiver: each is a session
    of its own there, neither refused nor displaced for the other
    (docs/security.md, "Co-receiver of a multicast session")."""
    data = len(peer).to_bytes(2, "big") + peer + sid
    return blake3.blake3(data, derive_key_context=_SESSION_TID_CONTEXT).digest(SESSION_TID_BYTES)


def session_resume_key(peer: bytes, name: str, size: int, chunk_size: int, sid: bytes) -> ResumeKey:
    """What a receiver's kept multicast part belongs to: the same session
    (``sid``) from the same proven sender ``peer``. A session reads one file
    version (the sender fails it if the file changes), so its id stands in
    for the unicast source tag; a part is continued only by a receiver that
    restarted and rejoins that very session (docs/multicast.md)."""
    source = blake3.blake3(sid, derive_key_context=_SESSION_SOURCE_CONTEXT).digest()
    return ResumeKey(peer, name, size, chunk_size, source)


def to_ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted [start, end) ranges of a set of indices."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


# Chunks one ack may ask for at most: an honest receiver NAKs at most
# NAK_LIMIT (64, core/multicast_incoming.py) an ack; the rest is a hostile
# member's, and each ack costs the sender the chunks it asks for.
MAX_WANTED = 1024


def asked_ranges(
    naks: Iterable[tuple[int, int]], limit: int, cap: int = MAX_WANTED
) -> list[tuple[int, int]]:
    """What an ack's NAK ranges ask for, as sorted disjoint [start, end)
    ranges: their union within [0, ``limit``) (what was published), its
    lowest ``cap`` chunks at most. The ranges are merged before any chunk
    is looked at, so an ack of r ranges costs O(r log r) plus the chunks it
    gets, at most ``cap``, however its ranges overlap (64 copies of one
    4,096-chunk range cost 262,144 steps, 13 ms an ack of 317 bytes)."""
    out: list[tuple[int, int]] = []
    left = max(0, cap)
    covered = 0  # everything below was taken (or lies below 0)
    for start, end in sorted(naks):
        if not left:
            break
        start, end = max(start, covered), min(end, limit)
        if start >= end:
            continue
        end = min(end, start + left)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        left -= end - start
        covered = end
    return out


# How far above its cumulative point a receiver NAKs, in NAKs' worth of
# chunks; and how many missing chunks one look at most passes (those on their
# way, then the ones it NAKs).
NAK_REACH = 64
NAK_STEPS = 4


class GapTracker:
    """The receiver's view of one session."""

    def __init__(
        self,
        total: int,
        nak_limit: int = 64,
        holdoff: float = 0.3,
        have: ChunkBitmap | None = None,
    ) -> None:
        """``have``: chunks already durably in the part (a receiver that
        restarted and rejoins the session): never NAKed nor written again."""
        self.total = total
        held = have.to_bytes() if have is not None else bytes((total + 7) // 8)
        self.received = ChunkBitmap.from_bytes(total, held)  # authenticated (queued to be written)
        self.written = ChunkBitmap.from_bytes(total, held)
        self.resumed = self.written.count
        self.highest = self.written.highest
        self.horizon = 0
        self.nak_limit = max(1, nak_limit)
        self.holdoff = holdoff
        self.duplicates = 0
        self.naked = 0  # chunks NAKed in all
        self.last_arrival = float("-inf")
        # When each chunk on its way was NAKed, oldest first (each call's
        # ``now`` is no earlier than the last: the expired ones are in front).
        self._naked_at: OrderedDict[int, float] = OrderedDict()

    def on_chunk(self, index: int, now: float | None = None) -> bool:
        """A chunk authenticated (at ``now``); True if it is new (write it)."""
        if not 0 <= index < self.total:
            raise ValueError("chunk index out of range")
        if now is not None:
            self.last_arrival = now
        self.highest = max(self.highest, index)
        self._naked_at.pop(index, None)
        if self.received.add(index):
            return True
        self.duplicates += 1
        return False

    def on_written(self, index: int) -> None:
        self.written.add(index)

    def on_refused(self, index: int) -> None:
        """Chunk ``index`` was received but not queued to be written (the
        writer was full): missing again, so it is NAKed and repaired."""
        if index not in self.written:
            self.received.discard(index)

    def on_horizon(self, horizon: int) -> None:
        self.horizon = max(self.horizon, min(self.total, horizon))

    @property
    def complete(self) -> bool:
        return self.written.complete

    def naks(self, now: float) -> list[tuple[int, int]]:
        """Ranges to NAK now (each chunk at most once per ``holdoff``): the
        lowest missing chunks not on their way, within ``NAK_REACH`` NAKs'
        worth above the cumulative point. The work is O(``nak_limit``)
        whatever the pattern of holes (a sender holding back every 64th
        chunk made each call walk 4,096 chunks one by one, 3-6 ms, at every
        ack and every chunk written)."""
        horizon = self.highest + 1
        if now - self.last_arrival >= self.holdoff:
            horizon = max(horizon, self.horizon)
        naked = self._naked_at
        while naked:
            index, when = next(iter(naked.items()))
            if now - when < self.holdoff:
                break
            del naked[index]  # (one that arrived left at once: on_chunk)
        found: list[int] = []
        start = self.received.cumulative
        reach = min(horizon, start + NAK_REACH * self.nak_limit)
        index = self.received.next_missing(start)
        steps = 0
        while index < reach and len(found) < self.nak_limit and steps < NAK_STEPS * self.nak_limit:
            if index not in naked:
                found.append(index)
            elif not found and len(naked) >= self.nak_limit:
                break  # the lowest missing chunks are all on their way
            index = self.received.next_missing(index + 1)
            steps += 1
        ranges = to_ranges(found)[:MAX_RANGES]
        for start, end in ranges:
            for i in range(start, end):
                self._naked_at[i] = now
            self.naked += end - start
        return ranges


@dataclass
class Member:
    name: str
    state: str = JOINING
    joined_at: float = 0.0
    last_heard: float = 0.0
    cumulative: int = 0
    # When it last wrote something new: its high-water mark moved, or, since
    # its (re)join, its cumulative ack beyond its first one (or it first joined).
    progress_at: float = 0.0
    high_water: int = 0  # the highest cumulative it ever acked, across rejoins
    acked_since_join: bool = False  # its first ack since it (re)joined says what it held
    rejoins: int = 0  # joins after its first one (it restarted or forgot the session)
    published_at_join: int = 0
    naked: int = 0  # chunks NAKed since (re)joining
    wanted: set[int] = field(default_factory=set)
    repaired_at: dict[int, float] = field(default_factory=dict)
    slow_since: float | None = None
    verifying_since: float | None = None  # its first ack of every chunk
    demoted: bool = False  # moved to unicast for being slow: stays there
    reason: str = ""


@dataclass(frozen=True)
class Repair:
    index: int
    publish: bool  # re-publish on PUB; else unicast to ``to``
    to: tuple[str, ...]


class SessionPlan:
    """The sender's state machine of one session."""

    def __init__(
        self,
        total: int,
        *,
        window: int = 64,
        min_window: int = 4,
        publish_min: int = 2,
        holdoff: float = 0.3,
        slow_grace: float = 1.0,
        max_nak_pct: float = 20.0,
        lost_after: float = 2.0,
        stall_timeout: float = 10.0,
        verify_limit: float = 60.0,
    ) -> None:
        self.total = total
        self.max_window = max(1, window)
        self.min_window = max(1, min(min_window, self.max_window))
        self.congestion = for_multicast(self.max_window, self.min_window)
        self.publish_min = publish_min
        self.holdoff = holdoff
        self.slow_grace = slow_grace
        self.max_nak_pct = max_nak_pct
        self.lost_after = lost_after
        self.stall_timeout = stall_timeout
        self.verify_limit = verify_limit
        self.members: dict[str, Member] = {}
        self.published = 0
        self.demotions = 0
        self.repairs_published = 0
        self.repairs_unicast = 0

    # -- membership ---------------------------------------------------------------

    def add(self, name: str, now: float) -> Member:
        """A target announced to (``joining``) until it joins."""
        m = self.members.get(name)
        if m is None:
            m = self.members[name] = Member(name, joined_at=now, last_heard=now, progress_at=now)
        return m

    def join(self, name: str, now: float) -> None:
        """``name`` joined (or rejoined after a restart: its state is reset,
        but not its stall clock - a member that keeps rejoining and acks
        what it held, no more, still times out; one that writes new chunks
        after its first rejoin, repairs below its ``high_water`` mark too,
        moves).
        A member joining after publishing began starts in ``unicast`` state
        (it catches up by repairs without holding the others back) and moves
        to ``multicast`` once it is within a window of the publishing point."""
        m = self.add(name, now)
        if m.state == JOINING:
            m.progress_at = now
        else:  # a rejoin is not progress: only chunks it writes after it are
            m.rejoins += 1
        m.state = MULTICAST if self.published == 0 else UNICAST
        m.joined_at = m.last_heard = now
        m.cumulative = 0
        m.acked_since_join = False
        m.published_at_join = self.published
        m.naked = 0
        m.wanted.clear()
        m.repaired_at.clear()
        m.slow_since = None
        m.demoted = False

    def end(self, name: str, state: str, reason: str = "") -> None:
        m = self.members.get(name)
        if m is not None and m.state not in (DONE, FAILED):
            m.state, m.reason = state, reason
            m.wanted.clear()
            m.repaired_at.clear()

    def live(self) -> list[Member]:
        return [m for m in self.members.values() if m.state in LIVE]

    # -- acks, NAKs and pace -------------------------------------------------------------

    def on_ack(self, name: str, cumulative: int, naks: list[tuple[int, int]], now: float) -> None:
        m = self.members.get(name)
        if m is None or m.state not in (*LIVE, LOST):
            return
        if m.state == LOST:
            m.state = UNICAST
        m.last_heard = now
        cumulative = max(0, min(self.total, cumulative))
        if cumulative >= self.total:  # it holds everything and is verifying: alive, not stalled
            if m.verifying_since is None:
                m.verifying_since = now
            if now - m.verifying_since < self.verify_limit:  # not for ever
                m.progress_at = now
        if cumulative > m.cumulative:
            m.cumulative = cumulative
            if cumulative > m.high_water:
                m.high_water = cumulative
                m.progress_at = now
            elif m.acked_since_join and m.rejoins <= CATCH_UP_REJOINS:
                # Below its mark, but written since it rejoined: repairs
                # catching up a restarted receiver (a capped session's
                # publishing took the rate, and one restart made it fail).
                # Its first rejoin only: a member rejoining again and again
                # to climb back each time held a session 9 times as long.
                m.progress_at = now
            if m.state == MULTICAST:
                self.congestion.on_acked(self._floor(), now)
        wanted: set[int] = set()
        for start, end in asked_ranges(naks[:MAX_RANGES], self.published):
            wanted.update(range(start, end))
        fresh = wanted - m.wanted
        m.naked += len(fresh)
        if (
            m.state == MULTICAST
            and fresh
            and any(i >= m.published_at_join and i not in m.repaired_at for i in fresh)
        ):  # a first publication was dropped on the way to it: back off (once per round trip)
            self.congestion.on_loss(now)
        m.wanted = wanted
        m.acked_since_join = True
        caught_up = self.published - m.cumulative < self.window // 2 and not wanted
        if m.state == UNICAST and caught_up and not m.demoted:
            m.state = MULTICAST
        self._check_slow(m, now)

    def _check_slow(self, m: Member, now: float) -> None:
        if m.state != MULTICAST:
            return
        since_join = self.published - m.published_at_join
        if since_join >= 2 * self.max_window and m.naked * 100 > self.max_nak_pct * since_join:
            self._demote(m, f"NAKed {m.naked} of {since_join} chunks")
            return
        if self.published - m.cumulative >= self.window and self.published < self.total:
            if m.slow_since is None:
                m.slow_since = now
            elif now - m.slow_since >= self.slow_grace:
                self._demote(m, "held the others back")
        else:
            m.slow_since = None

    def _demote(self, m: Member, reason: str) -> None:
        m.state = UNICAST
        m.demoted = True
        m.reason = reason
        self.demotions += 1

    @property
    def window(self) -> int:
        return max(self.min_window, self.congestion.window)

    @property
    def decreases(self) -> int:
        return self.congestion.decreases

    @property
    def ack_interval(self) -> int:
        """Chunks a receiver should write between acks: a quarter of the
        window, so the pace (floor + window) moves several times per window
        even after losses shrank it (receivers ack at least this often)."""
        return max(1, self.window // 4)

    def _floor(self) -> int:
        pacing = [m.cumulative for m in self.members.values() if m.state == MULTICAST]
        if pacing:
            return min(pacing)
        others = [m.cumulative for m in self.members.values() if m.state in (UNICAST, LOST)]
        return max(others) if others else self.published

    def can_publish(self) -> int:
        """How many new chunks may be published now."""
        if not self.live():
            return 0
        return max(0, min(self.total, self._floor() + self.window) - self.published)

    def on_published(self, n: int = 1) -> None:
        self.published = min(self.total, self.published + n)
        self.congestion.on_sent(self.published)

    # -- repairs --------------------------------------------------------------------

    def plan(self, now: float, budget: int | None = None) -> list[Repair]:
        """Repairs to make now, lowest chunks first, at most ``budget`` chunks."""
        budget = self.window if budget is None else budget
        askers: dict[int, list[str]] = {}
        for m in self.live():
            for index, when in list(m.repaired_at.items()):
                if now - when >= self.holdoff or index < m.cumulative:
                    del m.repaired_at[index]
            while len(m.repaired_at) > 4 * self.max_window:  # bounded: forget the oldest
                m.repaired_at.pop(next(iter(m.repaired_at)))
            for index in m.wanted:
                if index not in m.repaired_at:
                    askers.setdefault(index, []).append(m.name)
        out: list[Repair] = []
        for index in sorted(askers)[: max(0, budget)]:
            names = tuple(sorted(askers[index]))
            publish = len(names) >= self.publish_min
            out.append(Repair(index, publish, names))
            for name in names:
                m = self.members[name]
                m.repaired_at[index] = now
                m.wanted.discard(index)
            if publish:
                self.repairs_published += 1
            else:
                self.repairs_unicast += len(names)
        return out

    # -- time -------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[str, str]]:
        """Timeouts: returns (member, new state) changes (``lost`` or ``failed``)."""
        changes: list[tuple[str, str]] = []
        for m in self.members.values():
            if m.state in LIVE and now - m.last_heard >= self.lost_after:
                m.state = LOST
                m.slow_since = None
                changes.append((m.name, LOST))
            elif m.state in (*LIVE, LOST, JOINING) and now - m.progress_at >= self.stall_timeout:
                why = "no progress" if m.state in LIVE else "did not answer"
                self.end(m.name, FAILED, f"{why} for {self.stall_timeout:.0f} s")
                changes.append((m.name, FAILED))
            elif m.state == MULTICAST:
                self._check_slow(m, now)
        return changes
