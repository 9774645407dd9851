"""Byte grants for paced transfers: per-transfer token buckets, a node-wide
rate cap, and weighted fair sharing of that cap.

Pure (time passed in). The scheduler actor calls :meth:`GrantPlanner.tick`
every few milliseconds while some flow waits; flows report what they could
send now with :meth:`demand`; grants come back as bytes per flow.

Per tick, for each flow with demand: its own bucket (token-bucket mode)
bounds what it may take; the node bucket (``--max-rate``) bounds the total,
split by :class:`~peercrypt.core.wfq.FairShare` in proportion to the flows'
priorities (1:2:3). Buckets are charged only for bytes actually granted, so a
flow that stops asking accrues tokens only up to its bucket size. A grant is
credited to the flow's balance; the sender spends it per chunk.

Every bucket starts empty: a capped flow never runs ahead of its rate from
its first byte (bytes granted by ``t`` <= ``rate * (t - added)``). A demand
counts for at most ``DEMAND_SECONDS`` at the rate that bounds the flow (or
its bucket, if larger): what is granted while the sender cannot send (its
window shut) waits in its balance and leaves later at once, so this bounds
that burst. Over any interval of ``T`` seconds a flow with its own bucket is
granted at most ``rate * T + burst`` (with live changes: the integral of the
rate plus the largest burst in force), and sends at most ``rate * T + burst +
its horizon + one chunk`` (docs/modes.md).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peercrypt.core.token_bucket import TokenBucket
from peercrypt.core.wfq import FairShare

K = TypeVar("K", bound=Hashable)

DEMAND_SECONDS = 0.05  # a demand counts for at most this long at the flow's rate


@dataclass(frozen=True)
class RequestGrant:
    """Ask the scheduler for ``nbytes`` more (paced flows only)."""

    nbytes: int


@dataclass
class Allowance:
    """A flow's side of the grants: whether it waits for them (``paced``;
    the scheduler decides, :meth:`on_pacing`), the granted bytes not yet spent
    (``nbytes``; a step may overdraw it by what it could not split, e.g. a
    last chunk) and at most one demand outstanding. The one pacing state of
    a unicast transfer (:class:`~peercrypt.core.outgoing.OutgoingTransfer`)
    and of a multicast session
    (:class:`~peercrypt.core.multicast_outgoing.MulticastOutgoing`)."""

    paced: bool = False
    nbytes: int = 0
    pending: bool = False
    # The flow's own rate as the scheduler last changed it live (0: none);
    # None: as the send started.
    rate: int | None = None

    def on_grant(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.pending = False

    def on_pacing(self, paced: bool) -> None:
        self.paced = paced
        self.pending = False

    def spend(self, nbytes: int) -> None:
        self.nbytes -= nbytes

    def demand(self, nbytes: int) -> RequestGrant | None:
        """A request for ``nbytes`` more, unless one is outstanding (or 0)."""
        if nbytes <= 0 or self.pending:
            return None
        self.pending = True
        return RequestGrant(nbytes)


class GrantedFlow:
    """What a paced flow object shows of its :class:`Allowance` (declared as
    a field ``grants`` by each): the scheduler's two inputs and the state
    the actor and the statistics read."""

    grants: Allowance

    def on_grant(self, nbytes: int) -> None:
        """The scheduler granted ``nbytes`` more."""
        self.grants.on_grant(nbytes)

    def on_pacing(self, paced: bool) -> None:
        """The scheduler decided whether this flow waits for grants."""
        self.grants.on_pacing(paced)

    def on_rate(self, rate: int) -> None:
        """The flow's own rate was changed live (0: none): what its
        statistics say from now, and what it asks for again if the
        scheduler restarts."""
        self.grants.rate = rate

    def own_rate(self, started: int) -> int:
        """The flow's own rate now: the last one set live, else ``started``
        (what the send started with; 0: none)."""
        return started if self.grants.rate is None else self.grants.rate

    @property
    def paced(self) -> bool:
        """The flow waits for the scheduler's grants."""
        return self.grants.paced

    @property
    def allowance(self) -> int:
        """Granted bytes not yet spent."""
        return self.grants.nbytes


@dataclass
class _Flow:
    bucket: TokenBucket | None
    wanted: int = 0


@dataclass
class GrantPlanner(Generic[K]):
    node_rate: float = 0.0  # bytes/s; 0: no node-wide cap
    node_burst: int = 0
    _flows: dict[K, _Flow] = field(default_factory=dict)
    _share: FairShare[K] = field(default_factory=FairShare)
    _node: TokenBucket | None = None

    def set_node_rate(self, rate: float, burst: int, now: float) -> None:
        """Cap all paced flows together (rate 0: no cap). Raises ValueError."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.node_rate, self.node_burst = rate, burst
        if rate == 0:
            self._node = None
        elif self._node is None:
            self._node = TokenBucket(rate, max(1, burst), now, tokens=0)
        else:
            self._node.set_rate(rate, now)
            self._node.set_burst(max(1, burst), now)

    def add(self, flow: K, weight: int, rate: float, burst: int, now: float) -> None:
        """A flow with priority ``weight``; ``rate`` > 0 gives it its own bucket."""
        bucket = TokenBucket(rate, burst, now, tokens=0) if rate > 0 else None
        self._flows[flow] = _Flow(bucket)
        self._share.add(flow, weight)

    def remove(self, flow: K) -> None:
        if flow in self._flows:
            del self._flows[flow]
            self._share.remove(flow)

    def set_rate(self, flow: K, rate: float, burst: int, now: float) -> None:
        """Change a flow's own rate live (0: no per-flow limit). KeyError if unknown."""
        f = self._flows[flow]
        if rate <= 0:
            f.bucket = None
        elif f.bucket is None:
            f.bucket = TokenBucket(rate, burst, now, tokens=0)
        else:
            f.bucket.set_rate(rate, now)
            f.bucket.set_burst(burst, now)

    def flows(self) -> list[K]:
        return list(self._flows)

    def demand(self, flow: K, nbytes: int) -> None:
        """What ``flow`` could send now beyond its balance (replaces the last
        demand), counted up to the flow's horizon (:meth:`horizon`)."""
        self._flows[flow].wanted = min(max(0, nbytes), self.horizon(flow))

    def horizon(self, flow: K) -> int:
        """The most one demand of ``flow`` counts for: ``DEMAND_SECONDS`` at
        the rate that bounds it (its own, else the node's), at least that
        bucket's size; unbounded for a flow no bucket constrains."""
        bucket = self._flows[flow].bucket or self._node
        if bucket is None:
            return 1 << 62
        return max(bucket.burst, int(bucket.rate * DEMAND_SECONDS))

    def next_full(self, now: float, fraction: float = 1.0) -> float | None:
        """Seconds until the first bucket that a waiting flow depends on is
        ``fraction`` full (tick by the time it is full, or tokens beyond the
        bucket are lost and the rate falls short). None: no bucket constrains
        a waiting flow."""
        buckets = [f.bucket for f in self._flows.values() if f.wanted and f.bucket is not None]
        if self._node is not None and self.waiting:
            buckets.append(self._node)
        if not buckets:
            return None
        return min(b.delay_until(max(1, int(b.burst * fraction)), now) for b in buckets)

    @property
    def waiting(self) -> bool:
        return any(f.wanted for f in self._flows.values())

    def tick(self, now: float) -> dict[K, int]:
        """Grant bytes to flows with demand; charges the buckets."""
        for key, f in self._flows.items():
            allowed = f.wanted
            if f.bucket is not None:
                allowed = min(allowed, int(f.bucket.available(now)))
            self._share.demand(key, allowed)
        budget = self._share.total_pending
        if self._node is not None:
            budget = min(budget, int(self._node.available(now)))
        grants = self._share.grant(budget) if budget > 0 else {}
        for key, amount in grants.items():
            f = self._flows[key]
            if f.bucket is not None:
                f.bucket.consume(amount, now)
            f.wanted -= amount
        if self._node is not None and grants:
            self._node.consume(sum(grants.values()), now)
        for key in self._flows:
            self._share.demand(key, 0)  # the next tick starts from fresh demands
        return grants
