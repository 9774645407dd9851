"""Per-peer failure detector in the style of SWIM with Lifeguard suspicion.

Pure: probe outcomes and times are passed in (``now``, float seconds); nothing
reads a clock, sleeps, sends probes or starts threads.  The caller probes each
peer every ``probe_interval`` seconds, waits at most :meth:`probe_timeout` for
the ack, reports the outcome, and calls :meth:`tick` at
:meth:`next_deadline` (or more often).

Design rules
------------

States are ``alive -> suspect -> dead``.  A failed probe makes an alive peer
*suspect*; it is declared *dead* only when it stays suspect for the suspicion
timeout.  Any successful probe (including a late ack that arrives after the
probe was already reported failed) or a refutation returns it to *alive*,
from suspect and from dead alike: a slow peer is not a dead peer.  (Gossip
overriding a dead *record* still needs the peer's own higher-incarnation
alive record; see :mod:`peercrypt.core.membership`.)

Suspicion timeout, fixed when suspicion starts (Lifeguard's lower bound;
the confirmation-driven shrinking from a larger upper bound is not used
because our clusters are small)::

    T_s = max(min_suspicion, suspicion_mult * log10(max(1, n)) * probe_interval)

where ``n`` is the cluster size (:meth:`set_cluster_size`, default: peers
tracked and not dead, plus ourselves) and ``min_suspicion`` defaults to
``suspicion_mult * probe_interval``, i.e. ``suspicion_mult * max(1, log10 n)
* probe_interval`` as in memberlist.

Probe timeout: ``clamp(rto, min_probe_timeout, max_probe_timeout)`` from the
peer's RFC 6298 estimator, so a fast LAN peer is judged quickly while the
timeout never exceeds ``max_probe_timeout <= probe_interval``.

Detection bound.  Let ``I = probe_interval``, ``P = max_probe_timeout``.  A
peer killed at ``t_k`` answered its last probe, sent at ``s <= t_k``; the next
probe is sent at ``s + I`` and reported failed by ``s + I + P``, which starts
suspicion (unless it already started earlier), so with deadline-driven ticks
the peer is declared dead no later than::

    t_k + I + P + T_s

With the defaults (``P = I/2``, ``suspicion_mult = 1.5``) and ``n <= 10`` that
is ``t_k + 3 I``; for larger clusters add ``1.5 * (log10(n) - 1) * I``.  If
:meth:`tick` is only called every ``I`` seconds instead of at
:meth:`next_deadline`, add up to one ``I``.

Slow-peer guarantee.  ``T_s >= min_suspicion >= I``: a peer that answers
every probe in less than ``T_s`` -- in particular within one probe interval,
even when the ack comes after the probe timeout and the probe was already
reported failed -- is never declared dead, because the ack of the probe whose
failure started the suspicion arrives before that suspicion's deadline.  The
suspect is also probed at least once more before the deadline
(``T_s >= I >= P``).  At the same instant, report acks before calling
:meth:`tick`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peercrypt.core.member_state import MemberState
from peercrypt.core.rtt import RttEstimator

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True)
class Transition(Generic[P]):
    """A change of a peer's health at time ``at``, with a short ``reason``."""

    peer: P
    old: MemberState
    new: MemberState
    at: float
    reason: str


@dataclass(frozen=True)
class PeerStatus(Generic[P]):
    """Snapshot of what the detector knows about one peer.

    ``failures`` counts consecutive failed probes (reset by any ack),
    ``total_failures`` all of them; ``last_seen`` is the time of the last
    ack or refutation (None if never); ``dead_at`` is the suspicion deadline
    while suspect.
    """

    peer: P
    health: MemberState
    failures: int
    total_failures: int
    last_seen: float | None
    suspect_since: float | None
    dead_at: float | None
    srtt: float | None
    rttvar: float | None
    rto: float


@dataclass
class _Peer:
    health: MemberState = MemberState.ALIVE
    failures: int = 0
    total_failures: int = 0
    last_seen: float | None = None
    suspect_since: float | None = None
    dead_at: float | None = None
    rtt: RttEstimator = field(default_factory=RttEstimator)


class FailureDetector(Generic[P]):
    """Tracks the health of every probed peer.

    Raises ``ValueError`` unless ``0 < min_probe_timeout <= max_probe_timeout
    <= probe_interval``, ``suspicion_mult > 0`` and ``min_suspicion >=
    probe_interval`` (which keeps the slow-peer guarantee).
    """

    def __init__(
        self,
        probe_interval: float = 1.0,
        *,
        max_probe_timeout: float | None = None,
        min_probe_timeout: float = 0.05,
        suspicion_mult: float = 1.5,
        min_suspicion: float | None = None,
    ) -> None:
        if probe_interval <= 0:
            raise ValueError("probe_interval must be > 0")
        if max_probe_timeout is None:
            max_probe_timeout = probe_interval / 2
        if not 0 < min_probe_timeout <= max_probe_timeout <= probe_interval:
            raise ValueError("need 0 < min_probe_timeout <= max_probe_timeout <= probe_interval")
        if suspicion_mult <= 0:
            raise ValueError("suspicion_mult must be > 0")
        if min_suspicion is None:
            min_suspicion = suspicion_mult * probe_interval
        if min_suspicion < probe_interval:
            raise ValueError("min_suspicion must be >= probe_interval")
        self.probe_interval = probe_interval
        self.max_probe_timeout = max_probe_timeout
        self.min_probe_timeout = min_probe_timeout
        self.suspicion_mult = suspicion_mult
        self.min_suspicion = min_suspicion
        self._cluster_size: int | None = None
        self._peers: dict[P, _Peer] = {}

    # ----------------------------------------------------------- parameters

    def set_cluster_size(self, n: int | None) -> None:
        """Use ``n`` members (ourselves included) for the timeout; None = derive."""
        if n is not None and n < 1:
            raise ValueError("cluster size must be >= 1")
        self._cluster_size = n

    def cluster_size(self) -> int:
        """The ``n`` used by :meth:`suspicion_timeout`."""
        if self._cluster_size is not None:
            return self._cluster_size
        return 1 + sum(1 for p in self._peers.values() if p.health is not MemberState.DEAD)

    def suspicion_timeout(self) -> float:
        """``max(min_suspicion, suspicion_mult * log10(max(1, n)) * probe_interval)``."""
        scaled = self.suspicion_mult * math.log10(max(1, self.cluster_size()))
        return max(self.min_suspicion, scaled * self.probe_interval)

    def detection_bound(self) -> float:
        """Worst-case seconds from a kill to the dead verdict: ``I + P + T_s``."""
        return self.probe_interval + self.max_probe_timeout + self.suspicion_timeout()

    def probe_timeout(self, peer: P) -> float:
        """How long to wait for ``peer``'s ack: its RTO clamped to the bounds."""
        rto = self._peers[peer].rtt.rto if peer in self._peers else RttEstimator().rto
        return min(self.max_probe_timeout, max(self.min_probe_timeout, rto))

    # ---------------------------------------------------------------- peers

    def add_peer(self, peer: P, now: float) -> None:
        """Start tracking ``peer`` as alive (no-op if already tracked)."""
        if peer not in self._peers:
            self._peers[peer] = _Peer(last_seen=now)

    def remove_peer(self, peer: P) -> None:
        """Stop tracking ``peer`` (no-op if unknown)."""
        self._peers.pop(peer, None)

    def peers(self) -> list[P]:
        """Tracked peers, in the order they were first seen."""
        return list(self._peers)

    def health(self, peer: P) -> MemberState:
        """Current verdict.  Raises ``KeyError`` for an untracked peer."""
        return self._peers[peer].health

    def status(self, peer: P) -> PeerStatus[P]:
        """Snapshot of ``peer``.  Raises ``KeyError`` for an untracked peer."""
        p = self._peers[peer]
        return PeerStatus(
            peer=peer,
            health=p.health,
            failures=p.failures,
            total_failures=p.total_failures,
            last_seen=p.last_seen,
            suspect_since=p.suspect_since,
            dead_at=p.dead_at,
            srtt=p.rtt.srtt,
            rttvar=p.rtt.rttvar,
            rto=p.rtt.rto,
        )

    # --------------------------------------------------------------- events

    def _revive(self, peer: P, p: _Peer, now: float, reason: str) -> Transition[P] | None:
        old = p.health
        p.failures = 0
        p.last_seen = now if p.last_seen is None else max(p.last_seen, now)
        p.suspect_since = None
        p.dead_at = None
        p.health = MemberState.ALIVE
        if old is MemberState.ALIVE:
            return None
        return Transition(peer, old, MemberState.ALIVE, now, reason)

    def on_probe_ok(self, peer: P, rtt: float, now: float) -> Transition[P] | None:
        """An ack arrived after ``rtt`` seconds (late acks count too).

        Feeds the RTT estimator, resets the failure count and returns the
        transition to alive if the peer was suspect or dead.  Starts tracking
        unknown peers.  Raises ``ValueError`` if ``rtt < 0``.
        """
        if rtt < 0:
            raise ValueError("rtt must be >= 0")
        p = self._peers.setdefault(peer, _Peer())
        p.rtt.sample(rtt)
        return self._revive(peer, p, now, "probe_ok")

    def on_probe_failed(self, peer: P, now: float) -> Transition[P] | None:
        """A probe went unanswered within its timeout.

        Counts the failure and backs the RTO off; an alive peer becomes
        suspect with deadline ``now + suspicion_timeout()`` (returned as a
        transition).  A suspect keeps its original deadline; a dead peer stays
        dead.  Starts tracking unknown peers.
        """
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer()
        p.failures += 1
        p.total_failures += 1
        p.rtt.backoff()
        if p.health is not MemberState.ALIVE:
            return None
        p.health = MemberState.SUSPECT
        p.suspect_since = now
        p.dead_at = now + self.suspicion_timeout()
        return Transition(peer, MemberState.ALIVE, MemberState.SUSPECT, now, "probe_failed")

    def tick(self, now: float) -> list[Transition[P]]:
        """Declare dead every suspect whose deadline is ``<= now``.

        Returns the transitions ordered by deadline; they are stamped with the
        deadline, not with ``now``.
        """
        due = [
            (p.dead_at, i, peer)
            for i, (peer, p) in enumerate(self._peers.items())
            if p.health is MemberState.SUSPECT and p.dead_at is not None and p.dead_at <= now
        ]
        out: list[Transition[P]] = []
        for dead_at, _, peer in sorted(due, key=lambda d: (d[0], d[1])):
            p = self._peers[peer]
            p.health = MemberState.DEAD
            p.suspect_since = None
            p.dead_at = None
            out.append(
                Transition(
                    peer, MemberState.SUSPECT, MemberState.DEAD, dead_at, "suspicion_timeout"
                )
            )
        return out

    def next_deadline(self) -> float | None:
        """Earliest pending suspicion deadline, or None if nobody is suspect."""
        deadlines = [p.dead_at for p in self._peers.values() if p.dead_at is not None]
        return min(deadlines) if deadlines else None
