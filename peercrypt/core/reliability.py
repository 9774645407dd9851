"""Per-peer reliability score and reliability-weighted gossip target choice.

Pure: outcomes are passed in, randomness comes in as a ``random.Random``;
nothing reads a clock or does I/O.

Design rules
------------

The score is an exponentially weighted success ratio in ``[0, 1]``, starting
at a neutral prior (default 0.5).  Each outcome ``x`` (1 = success, 0 =
failure) with weight ``w`` moves the score towards ``x``::

    a_w   = 1 - (1 - alpha) ** w
    score = score + a_w * (x - score)          (= (1 - a_w) * score + a_w * x)

so an event of weight ``w`` counts exactly like ``w`` consecutive pings with
the same outcome.  Defaults: ``alpha = 0.1``, ping weight 1, transfer weight
4 (a completed or failed transfer says more than a ping).  Because every
step is a convex combination of the old score and ``x in {0, 1}``, the score
stays in ``[0, 1]``; because the final score is the prior and the outcomes
combined with non-negative coefficients, turning any failure into a success
never lowers it (monotone in successes).

:func:`weighted_choice` picks ``k`` distinct peers without replacement with
weights ``max(floor, score)`` (default floor 0.05, so every live peer keeps a
non-zero chance) using Efraimidis-Spirakis keys ``log(u) / w``: for ``k = 1``
peer ``i`` is chosen with probability ``w_i / sum(w)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

P = TypeVar("P", bound=Hashable)

DEFAULT_PRIOR = 0.5
DEFAULT_ALPHA = 0.1
PING_WEIGHT = 1.0
TRANSFER_WEIGHT = 4.0
DEFAULT_FLOOR = 0.05


@dataclass
class ReliabilityScore:
    """Reliability of one peer.

    Raises ``ValueError`` unless ``0 <= prior <= 1``, ``0 < alpha < 1`` and the
    event weights are positive.
    """

    prior: float = DEFAULT_PRIOR
    alpha: float = DEFAULT_ALPHA
    ping_weight: float = PING_WEIGHT
    transfer_weight: float = TRANSFER_WEIGHT
    successes: int = field(default=0, init=False)
    failures: int = field(default=0, init=False)
    _value: float = field(default=DEFAULT_PRIOR, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior <= 1.0:
            raise ValueError("prior must be in [0, 1]")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if not (self.ping_weight > 0 and self.transfer_weight > 0):
            raise ValueError("event weights must be > 0")
        self._value = self.prior

    @property
    def value(self) -> float:
        """The current score, in ``[0, 1]``."""
        return self._value

    def record(self, ok: bool, weight: float = 1.0) -> float:
        """Fold in one outcome of the given weight; returns the new score.

        Raises ``ValueError`` if ``weight`` is not a positive finite number.
        """
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError("weight must be a positive finite number")
        step = 1.0 - (1.0 - self.alpha) ** weight
        target = 1.0 if ok else 0.0
        self._value = min(1.0, max(0.0, self._value + step * (target - self._value)))
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        return self._value

    def record_ping(self, ok: bool) -> float:
        """A ping/probe succeeded or failed (weight ``ping_weight``)."""
        return self.record(ok, self.ping_weight)

    def record_transfer(self, ok: bool) -> float:
        """A transfer completed or failed (weight ``transfer_weight``)."""
        return self.record(ok, self.transfer_weight)


def weighted_choice(
    peers_with_scores: Iterable[tuple[P, float]],
    k: int,
    rng: random.Random,
    floor: float = DEFAULT_FLOOR,
) -> list[P]:
    """Pick ``min(k, len(peers))`` distinct peers, weighted by reliability.

    Weights are ``max(floor, score)``; the result is ordered by draw (most
    "won" first) and is deterministic given ``rng``'s state and the input
    order.  Raises ``ValueError`` if ``k < 0``, ``floor`` is not in
    ``(0, 1]``, a score is not in ``[0, 1]`` (or NaN), or a peer repeats.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    if not 0.0 < floor <= 1.0:
        raise ValueError("floor must be in (0, 1]")
    keyed: list[tuple[float, int, P]] = []
    seen: set[P] = set()
    for index, (peer, score) in enumerate(peers_with_scores):
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score of {peer!r} must be in [0, 1], got {score!r}")
        if peer in seen:
            raise ValueError(f"peer {peer!r} listed twice")
        seen.add(peer)
        u = 1.0 - rng.random()  # in (0, 1], so log(u) is finite
        keyed.append((math.log(u) / max(floor, score), index, peer))
    if k == 0:
        return []
    keyed.sort(key=lambda item: (-item[0], item[1]))
    return [peer for _, _, peer in keyed[:k]]
