"""How many ``hello`` and ``ping`` answers a node gives, per asker and in all.

Pure: every call gets the current time as ``now``; nothing reads a clock.

A node answers a ``hello`` with a proof over the asker's fresh challenge (an
X25519 agreement and two hashes: about 0.1 ms of its gateway's CPU) and a
``ping`` with a ``pong``. Both come from admitted members, and a member has
the network key and as many fresh identities as it likes. So the answers are
budgeted twice, each a :class:`~peercrypt.core.token_bucket.TokenBucket` of
answers:

- per identity (the asker's CURVE key, as ZAP proved it): one identity
  flooding gets at most ``peer_burst + peer_rate * t`` answers over ``t``
  seconds, and does not spend what the others need;
- per node: whatever many identities ask, the answers cost at most
  ``node_burst + node_rate * t`` proofs' worth of CPU.

A question is charged to its identity first, then to the node; one refused
for its identity does not spend the node's budget (a flooder's excess costs
the others nothing). A refused question is dropped unanswered: the asker's
check times out or falls back as after a lost message, and a flood earns no
traffic in return.

The identities' table is bounded (:data:`MAX_TRACKED`, the least recently
asking forgotten first); a forgotten identity starts again with a full
bucket, which the node's budget still bounds. The defaults leave room for
what honest nodes ask: a pre-send ``hello`` per send (64 sends to one
receiver at once), a probe per member and health interval, a user's checks
one after another (several hundred a second over a kept connection).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from peercrypt.core.token_bucket import TokenBucket

__all__ = ["MAX_TRACKED", "AnswerBudget", "BudgetLimits", "Verdict"]

MAX_TRACKED = 1024  # identities whose buckets are kept


class Verdict(enum.Enum):
    ANSWER = "answer"
    OVER_PEER = "over-peer"  # this identity asked more than its share
    OVER_NODE = "over-node"  # all identities together did


@dataclass(frozen=True)
class BudgetLimits:
    """Answers per second and at once, per identity and for the node."""

    peer_rate: float = 128.0
    peer_burst: int = 512
    node_rate: float = 1024.0
    node_burst: int = 2048


class AnswerBudget:
    """Decides whether a question from identity ``peer`` at ``now`` is
    answered (see the module docs). Never raises on any key or time."""

    def __init__(self, now: float, limits: BudgetLimits | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._node = TokenBucket(self.limits.node_rate, self.limits.node_burst, now)

    def ask(self, peer: bytes, now: float) -> Verdict:
        bucket = self._peers.get(peer)
        if bucket is None:
            while len(self._peers) >= MAX_TRACKED:
                self._peers.popitem(last=False)  # the least recently asking
            bucket = TokenBucket(self.limits.peer_rate, self.limits.peer_burst, now)
            self._peers[peer] = bucket
        else:
            self._peers.move_to_end(peer)
        if not bucket.consume(1, now):
            return Verdict.OVER_PEER
        if not self._node.consume(1, now):
            return Verdict.OVER_NODE
        return Verdict.ANSWER

    @property
    def tracked(self) -> int:
        """Identities whose buckets are kept."""
        return len(self._peers)
