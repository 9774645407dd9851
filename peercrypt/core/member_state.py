"""The one member-state enum and its order.

``MemberState`` is what gossip records carry, what the failure detector
decides locally (it uses the first three) and what the CLI shows.  The order
``ALIVE < SUSPECT < DEAD < LEFT`` is the precedence at equal incarnation: a
later state in the order overrides an earlier one, and on the wire a state
travels as its rank (:attr:`MemberState.rank`).
"""

from __future__ import annotations

import enum


class MemberState(enum.StrEnum):
    """Liveness state of a member, in precedence order."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def rank(self) -> int:
        """Position in the precedence order (0 = alive); the wire form."""
        return ORDER.index(self)


#: The states in precedence order; ``ORDER[rank]`` is the state of a rank.
ORDER: tuple[MemberState, ...] = tuple(MemberState)


def worst(a: str, b: str) -> str:
    """The later in precedence order of two states; text that is no state
    counts as alive (it never hides a real state)."""

    def rank(s: str) -> int:
        return MemberState(s).rank if s in ORDER else 0

    return a if rank(a) >= rank(b) else b
