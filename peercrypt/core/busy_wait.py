"""A send the receiver refused as busy: when to offer it again, when to stop.

Pure: time comes in as ``now``, randomness as a ``random.Random``. Used by
the sender actor (actors/sender.py) for one send between the receiver's
"not now" and its next offer.

A receiver refuses an offer for one of two kinds of reasons. Some say
*not now*: its limits of transfers running at once (in all, from one
identity, from one address) are taken (code ``busy``, :data:`NOT_NOW`).
The rest are final: policy, a bad offer, no space, another receiver's
key, a file in its final check. A sender cannot know the receiver's
limits; the refusal is how it learns them. So it offers as it would, and
a send refused "not now" waits instead of failing:

- It is offered again as soon as a send of this node to that receiver
  ends (the actor wakes the one that waited longest: an end frees one slot
  there), and otherwise after a pause (below).
- While a send of this node to that receiver runs (the receiver accepted
  it), the wait has no deadline: that send holds the slot, moves or ends
  by its own ``--timeout``, and its end wakes the next one, as a send
  waiting for one of this node's own slots (``max_outgoing``) waits.
- With none running (the receiver is full of other senders' transfers,
  or says "busy" whatever comes), the send's ``timeout`` runs from the
  first such refusal: one that comes ``timeout`` after it ends the wait
  (:meth:`BusyWait.refused` returns None), and no pause goes past it.
- Pauses: :data:`PAUSE_INITIAL` doubling to at most ``timeout`` (and
  :data:`PAUSE_MAX`; never less than :data:`PAUSE_INITIAL`, whatever the
  timeout), each drawn from the upper half of its ceiling ("equal
  jitter"): waiting sends spread out, and, unlike full jitter, no pause is
  ever near zero, so a receiver that always says busy costs at most a
  handful of offers per ``timeout``, never a spin. Only the last pause
  before the deadline is cut short, to end at it.
"""

from __future__ import annotations

import random

# Refusal codes that say "not now" (actors/receiver.py ``_take_offer`` and
# its wait for the space ledger's verdict). Every other code is final.
NOT_NOW = frozenset({"busy"})
PAUSE_INITIAL = 1.0  # seconds before the first offer again (doubling)
PAUSE_MAX = 30.0  # the receiver's idle limit: a pause never exceeds it


def not_now(code: str) -> bool:
    """Whether a receiver's refusal with ``code`` only says it is busy."""
    return code in NOT_NOW


class BusyWait:
    """The wait of one send, refused "not now" one or more times.

    ``timeout``: the send's ``--timeout`` in seconds (> 0)."""

    def __init__(self, *, timeout: float, rng: random.Random) -> None:
        self.timeout = timeout
        # (a tiny --timeout bounds the wait alone, not the pauses while a
        # send of ours runs there: those would be a spin)
        self.max_pause = max(min(timeout, PAUSE_MAX), PAUSE_INITIAL)
        self.ceiling = PAUSE_INITIAL
        self.rng = rng
        self.refusals = 0
        # Since when it has been refused with no send of this node to that
        # receiver running (None: one ran at the last refusal).
        self.alone_since: float | None = None

    def refused(self, now: float, ours_running: bool) -> float | None:
        """Count a "not now" refusal at ``now``; ``ours_running``: a send of
        this node to the same receiver is accepted and running. Returns the
        seconds to wait before offering again (an end of one of this node's
        sends there may cut it short), or None: the wait is over (``timeout``
        passed with none of them running), the send fails with the refusal."""
        self.refusals += 1
        if ours_running:
            self.alone_since = None
        elif self.alone_since is None:
            self.alone_since = now
        left = None if self.alone_since is None else self.alone_since + self.timeout - now
        if left is not None and left <= 0:
            return None
        ceiling = self.ceiling
        self.ceiling = min(self.max_pause, ceiling * 2)
        pause = self.rng.uniform(ceiling / 2, ceiling)
        return pause if left is None else min(pause, left)
