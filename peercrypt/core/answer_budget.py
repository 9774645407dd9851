"""How many ``hello`` and ``ping`` answers a node gives, per asker and in all.

Pure: every call gets the current time as ``now``; nothing reads a clock.

A node answers a ``hello`` with a proof over the asker's fresh challenge (an
X25519 agreement and two hashes: about 0.1 ms of its gateway's CPU) and a
``ping`` with a ``pong``. Both come from admitted members, and a member has
the network key and as many fresh identities as it likes. So the answers are
budgeted three times, each a :class:`~peercrypt.core.token_bucket.TokenBucket`
of answers:

- per identity (the asker's CURVE key, as ZAP proved it): one identity
  flooding gets at most ``peer_burst + peer_rate * t`` answers over ``t``
  seconds, and does not spend what the others need;
- per address (as the gateway sees it): fresh identities cost nothing, so
  the identities of one address share ``address_burst + address_rate * t``
  (a quarter of the node's rate): a flood of them from one address leaves
  the node's budget to every other address;
- per node: whatever many identities and addresses ask, the answers cost at
  most ``node_burst + node_rate * t`` proofs' worth of CPU.

A question is charged to its identity first, then to its address, then to
the node; one refused on the way does not spend the budgets after it (a
flooder's excess costs the others nothing). A refused question is dropped unanswered: the asker's
check times out or falls back as after a lost message, and a flood earns no
traffic in return.

The tables of identities and of addresses are bounded (:data:`MAX_TRACKED`
each, the least recently asking forgotten first); a forgotten one starts
again with a full bucket, which the node's budget still bounds. The defaults leave room for
what honest nodes ask: a pre-send ``hello`` per send (64 sends to one
receiver at once), a probe per member and health interval, a user's checks
one after another (several hundred a second over a kept connection).
The gateway keeps a second budget of the same limits for the offers it
hands to the receiver (each opened costs about 0.65 ms; beyond it an offer
is refused ``busy`` unopened and its sender offers again later).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from peercrypt.core.token_bucket import TokenBucket

__all__ = ["GOSSIP_LIMITS", "MAX_TRACKED", "AnswerBudget", "BudgetLimits", "Verdict"]

MAX_TRACKED = 1024  # identities whose buckets are kept


class Verdict(enum.Enum):
    ANSWER = "answer"
    OVER_PEER = "over-peer"  # this identity asked more than its share
    OVER_ADDRESS = "over-address"  # the identities of its address did
    OVER_NODE = "over-node"  # all identities together did


@dataclass(frozen=True)
class BudgetLimits:
    """Answers per second and at once, per identity and for the node."""

    peer_rate: float = 128.0
    peer_burst: int = 512
    address_rate: float = 256.0
    address_burst: int = 1024
    node_rate: float = 1024.0
    node_burst: int = 2048


# The same three budgets in bytes, for the gossip a node takes from members
# (each record of it parsed, a new one's Ed25519 signature checked: about
# 60 us; a member with the network key can push gossip far faster than
# that): per identity, per address, for the node. Honest gossip is a few
# KiB a round per member (its recent records and a digest; 32 KiB of
# records at most in a reply), a round every --gossip-interval.
GOSSIP_LIMITS = BudgetLimits(
    peer_rate=128 * 1024,
    peer_burst=512 * 1024,
    address_rate=256 * 1024,
    address_burst=1024 * 1024,
    node_rate=1024 * 1024,  # four addresses' worth: one cannot take it all
    node_burst=4 * 1024 * 1024,
)


class AnswerBudget:
    """Decides whether a question from identity ``peer`` at ``address`` at
    ``now`` is answered (see the module docs). Never raises on any key,
    address or time."""

    def __init__(self, now: float, limits: BudgetLimits | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._addresses: OrderedDict[str, TokenBucket] = OrderedDict()
        self._node = TokenBucket(self.limits.node_rate, self.limits.node_burst, now)

    def ask(self, peer: bytes, address: str, now: float, cost: int = 1) -> Verdict:
        """The verdict on a question costing ``cost`` (an answer; for a budget
        of bytes, its size: at most the smallest burst)."""
        lim = self.limits
        cost = max(0, min(cost, lim.peer_burst, lim.address_burst, lim.node_burst))
        by_peer = _bucket(self._peers, peer, lim.peer_rate, lim.peer_burst, now)
        if not by_peer.consume(cost, now):
            return Verdict.OVER_PEER
        by_address = _bucket(self._addresses, address, lim.address_rate, lim.address_burst, now)
        if not by_address.consume(cost, now):
            return Verdict.OVER_ADDRESS
        if not self._node.consume(cost, now):
            return Verdict.OVER_NODE
        return Verdict.ANSWER

    @property
    def tracked(self) -> int:
        """Identities whose buckets are kept."""
        return len(self._peers)


def _bucket(
    table: OrderedDict[Any, TokenBucket], key: Any, rate: float, burst: int, now: float
) -> TokenBucket:
    """``key``'s bucket in ``table`` (a full new one if it has none), now the
    most recently used; the least recently used beyond MAX_TRACKED go."""
    bucket = table.get(key)
    if bucket is None:
        while len(table) >= MAX_TRACKED:
            table.popitem(last=False)
        bucket = table[key] = TokenBucket(rate, burst, now)
    else:
        table.move_to_end(key)
    return bucket
