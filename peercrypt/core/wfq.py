"""Weighted fair sharing of byte-credit grants among flows.

Pure: no clock, no sockets, no threads. The caller declares how many bytes
each flow currently wants (:meth:`FairShare.demand`) and periodically hands
out a byte budget (:meth:`FairShare.grant`).

Algorithm: each call computes the weighted max-min fair (GPS / water-filling)
split of the budget in exact (float) bytes, then rounds it to whole bytes
with a per-flow carry (a deficit counter, as in deficit round robin):

1. Fluid split: among flows with pending demand, every unsatisfied flow is
   offered ``remaining * weight / sum(unsatisfied weights)``; flows whose
   demand fits in their offer get exactly their demand and leave, and the
   rest is re-split until nobody else fits. So the budget is shared in
   proportion to weights and a flow with little or no demand hands its share
   to the others (work conservation).
2. Rounding: each flow's target is ``exact + carry``; grants start at
   ``floor(target)`` (clamped to ``[0, demand]``), then single bytes are added
   to the flows with the largest ``target - grant`` (or removed from the
   smallest) until the grants sum to exactly ``min(budget, total demand)``.
   Ties go to the flow added first. The new carry is ``target - grant``.
   A target is never below -1, so a carry is never below -1; carries of
   continuously backlogged flows sum to zero, so a carry is also below the
   number of other active flows. As a safety net against float drift the
   carry is clamped to ``[-1, max(1, n_active - 1)]``.

Guarantees:

* ``sum(grants) == min(budget, total pending demand)`` and no flow is granted
  more than its pending demand; grants reduce the pending demand.
* While a set of ``n`` flows stays backlogged, each flow's cumulative grant
  minus its cumulative fluid share (the negated carry) lies in
  ``(-max(1, n - 1), 1]`` bytes, so shares converge to the weight ratio
  (1:2:3 for normal/high/highest). If every budget is at least
  ``total weight / smallest weight`` bytes (true for any realistic budget),
  no target goes negative and the difference stays within ``[-1, 1]``.
  Larger excursions need budgets of a few bytes, where a flow that just got
  a rounding byte can be owed less than nothing.
* No starvation: a backlogged flow's fluid share per call is at least
  ``budget * weight / total weight`` > 0, so with any positive budget it
  receives a byte within ``ceil(total weight / (weight * budget)) + 1`` calls.
* Bounded state: per flow only its weight, pending demand (one int) and
  carry. The carry is reset to 0 whenever the flow's demand drops to 0, so an
  idle flow banks no credit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "PRIORITY_HIGH",
    "PRIORITY_HIGHEST",
    "PRIORITY_NORMAL",
    "FairShare",
    "parse_priority",
]

PRIORITY_NORMAL = 1
PRIORITY_HIGH = 2
PRIORITY_HIGHEST = 3

_PRIORITY_NAMES = {
    "normal": PRIORITY_NORMAL,
    "high": PRIORITY_HIGH,
    "highest": PRIORITY_HIGHEST,
    "1": PRIORITY_NORMAL,
    "2": PRIORITY_HIGH,
    "3": PRIORITY_HIGHEST,
}


def parse_priority(text: str) -> int:
    """Map 'normal'|'high'|'highest'|'1'|'2'|'3' (case-insensitive) to weight 1|2|3.

    Surrounding whitespace is ignored. Raises :class:`ValueError` naming the
    accepted values for anything else.
    """
    try:
        return _PRIORITY_NAMES[text.strip().lower()]
    except KeyError:
        raise ValueError(
            f"invalid priority {text!r}: expected one of normal, high, highest (or 1, 2, 3)"
        ) from None


K = TypeVar("K", bound=Hashable)


@dataclass
class _Flow:
    weight: float
    pending: int = 0
    carry: float = 0.0


def _check_weight(weight: float) -> float:
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
    return float(weight)


class FairShare(Generic[K]):
    """Splits byte budgets among flows in proportion to their weights.

    Flow ids are any hashable values. Unknown ids raise :class:`KeyError`.
    """

    def __init__(self) -> None:
        self._flows: dict[K, _Flow] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._flows

    def __iter__(self) -> Iterator[K]:
        return iter(self._flows)

    def add(self, flow_id: K, weight: float = PRIORITY_NORMAL) -> None:
        """Register a flow with no demand.

        Raises :class:`ValueError` if it already exists or ``weight`` is not
        finite and > 0.
        """
        if flow_id in self._flows:
            raise ValueError(f"flow {flow_id!r} already exists")
        self._flows[flow_id] = _Flow(_check_weight(weight))

    def remove(self, flow_id: K) -> None:
        """Forget a flow and its pending demand. Raises :class:`KeyError` if unknown."""
        del self._flows[flow_id]

    def weight(self, flow_id: K) -> float:
        """The flow's weight. Raises :class:`KeyError` if unknown."""
        return self._flows[flow_id].weight

    def demand(self, flow_id: K, nbytes: int) -> None:
        """Declare that the flow now wants ``nbytes`` more bytes.

        Replaces (does not add to) the previous pending demand, so repeating
        a call is harmless. ``0`` withdraws the demand. Raises
        :class:`KeyError` if unknown, :class:`ValueError` if ``nbytes < 0``.
        """
        if nbytes < 0:
            raise ValueError(f"demand must be >= 0 bytes, got {nbytes!r}")
        flow = self._flows[flow_id]
        flow.pending = nbytes
        if nbytes == 0:
            flow.carry = 0.0

    def pending(self, flow_id: K) -> int:
        """Bytes the flow still wants. Raises :class:`KeyError` if unknown."""
        return self._flows[flow_id].pending

    @property
    def total_pending(self) -> int:
        """Sum of all pending demands."""
        return sum(flow.pending for flow in self._flows.values())

    def grant(self, budget: int) -> dict[K, int]:
        """Distribute up to ``budget`` bytes among flows with pending demand.

        Returns only positive grants, keyed by flow id; their sum is
        ``min(budget, total_pending)``. Pending demands are reduced by the
        grants. Raises :class:`ValueError` if ``budget < 0``.
        """
        if budget < 0:
            raise ValueError(f"budget must be >= 0 bytes, got {budget!r}")
        active = [(fid, flow) for fid, flow in self._flows.items() if flow.pending > 0]
        if budget == 0 or not active:
            return {}
        total = min(budget, sum(flow.pending for _, flow in active))
        exact = self._fluid(active, float(budget))

        targets = [exact[i] + flow.carry for i, (_, flow) in enumerate(active)]
        grants = [
            min(flow.pending, max(0, math.floor(t)))
            for t, (_, flow) in zip(targets, active, strict=True)
        ]
        diff = total - sum(grants)
        while diff > 0:
            best = -1
            for i, (_, flow) in enumerate(active):
                if grants[i] < flow.pending and (
                    best < 0 or targets[i] - grants[i] > targets[best] - grants[best]
                ):
                    best = i
            grants[best] += 1
            diff -= 1
        while diff < 0:
            worst = -1
            for i in range(len(active)):
                if grants[i] > 0 and (
                    worst < 0 or targets[i] - grants[i] < targets[worst] - grants[worst]
                ):
                    worst = i
            grants[worst] -= 1
            diff += 1

        upper = max(1.0, len(active) - 1.0)
        result: dict[K, int] = {}
        for i, (fid, flow) in enumerate(active):
            flow.pending -= grants[i]
            if flow.pending == 0:
                flow.carry = 0.0
            else:
                flow.carry = min(upper, max(-1.0, targets[i] - grants[i]))
            if grants[i] > 0:
                result[fid] = grants[i]
        return result

    @staticmethod
    def _fluid(active: list[tuple[K, _Flow]], budget: float) -> list[float]:
        """Weighted max-min fair split of ``budget`` (water-filling), in float bytes."""
        exact = [0.0] * len(active)
        unsatisfied = list(range(len(active)))
        remaining = budget
        while unsatisfied:
            total_weight = sum(active[i][1].weight for i in unsatisfied)
            fits = [
                i
                for i in unsatisfied
                if active[i][1].pending <= remaining * active[i][1].weight / total_weight
            ]
            if not fits:
                for i in unsatisfied:
                    exact[i] = remaining * active[i][1].weight / total_weight
                break
            for i in fits:
                exact[i] = float(active[i][1].pending)
                remaining -= active[i][1].pending
            fitted = set(fits)
            unsatisfied = [i for i in unsatisfied if i not in fitted]
        return exact
