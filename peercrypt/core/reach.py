"""Reaching a peer for its first answer: how long one connection attempt may
wait, and whether a failed one is tried again.

Pure: time comes in as ``now``, randomness as a ``random.Random``. Used by
the health actor's one-shot checks (``health-check``, ``reconnect``) and by
the sender's hello before its first offer to an address (the pre-send check,
which rides on the offer's own connection).

Rules
-----

- The attempts share one ``budget`` of seconds from the start (0: none).
- One attempt waits at most ``connect_timeout``, and never past the budget
  (but at least :data:`MIN_ATTEMPT`, so a nearly spent budget still makes a
  real attempt).
- A failed attempt is retried after a full-jitter exponential pause
  (:class:`~peercrypt.core.backoff.Backoff`: :data:`PAUSE_INITIAL` doubling,
  capped at ``connect_timeout``), at most ``max_retries`` times, and only if
  the pause ends inside the budget; otherwise :meth:`Reach.retry_in` says to
  give up (None).
"""

from __future__ import annotations

import random

from peercrypt.core.backoff import Backoff

PAUSE_INITIAL = 0.1  # seconds before the first retry (full jitter, doubling)
MIN_ATTEMPT = 0.05  # seconds one attempt may always wait


class Reach:
    """The attempts of one check, started at ``now``."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_retries: int,
        budget: float,
        now: float,
        rng: random.Random,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.budget = budget
        self.started = now
        self.attempts = 0
        self.backoff = Backoff(
            min(PAUSE_INITIAL, connect_timeout),
            max_delay=connect_timeout,
            max_retries=max_retries,
            rng=rng,
        )

    def attempt(self, now: float) -> float:
        """Count an attempt made at ``now``; seconds it may wait for an answer."""
        self.attempts += 1
        return self.attempt_timeout(now)

    def attempt_timeout(self, now: float) -> float:
        """Seconds an attempt made at ``now`` may wait for an answer."""
        if self.budget <= 0:
            return self.connect_timeout
        left = self.budget - (now - self.started)
        return max(MIN_ATTEMPT, min(self.connect_timeout, left))

    def retry_in(self, now: float) -> float | None:
        """After a failed attempt at ``now``: seconds to pause before the next
        one, or None when the retries or the budget are spent."""
        delay = self.backoff.next_delay()
        if delay is None:
            return None
        if self.budget > 0 and now - self.started + delay >= self.budget:
            return None
        return delay
