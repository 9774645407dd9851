"""Exponential backoff with full jitter.

Pure: it computes delays, it never sleeps; randomness comes in as a
``random.Random`` so a seeded generator makes the sequence reproducible.

Design rules
------------

Full jitter (as in the AWS architecture blog "Exponential Backoff And
Jitter"): retry ``n`` (0-based) waits::

    ceiling_n = min(max_delay, initial * factor ** n)
    delay_n   = rng.uniform(0, ceiling_n)

Full rather than decorrelated jitter because every delay then lies in
``[0, max_delay]`` independently of the previous one, which keeps the bound
obvious and spreads simultaneous retriers (e.g. every peer reconnecting
after a restart) over the whole window.  After ``max_retries`` delays,
:meth:`Backoff.next_delay` returns None until :meth:`Backoff.reset`.

Without a generator (``rng=None``) there is no jitter: each delay is the
ceiling itself (the supervisor's restart pauses: one actor, nothing to
spread); with ``max_retries=None`` the delays never run out.
"""

from __future__ import annotations

import random


class Backoff:
    """Delay generator for one retry loop.

    Raises ``ValueError`` unless ``0 < initial <= max_delay``, ``factor >= 1``
    and ``max_retries`` is None (unlimited) or ``>= 0``.
    """

    def __init__(
        self,
        initial: float,
        factor: float = 2.0,
        *,
        max_delay: float,
        max_retries: int | None,
        rng: random.Random | None,
    ) -> None:
        if not 0 < initial <= max_delay:
            raise ValueError("need 0 < initial <= max_delay")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.initial = initial
        self.factor = factor
        self.max_delay = max_delay
        self.max_retries = max_retries
        self._rng = rng
        self._attempts = 0
        self._ceiling = initial

    @property
    def attempts(self) -> int:
        """Delays handed out since construction or the last :meth:`reset`."""
        return self._attempts

    @property
    def remaining(self) -> int | None:
        """Delays still available before :meth:`next_delay` returns None
        (None: unlimited)."""
        return None if self.max_retries is None else self.max_retries - self._attempts

    def ceiling(self) -> float:
        """Upper bound of the next delay: ``min(max_delay, initial * factor ** attempts)``."""
        return self._ceiling

    def next_delay(self) -> float | None:
        """Seconds to wait before the next retry, or None when retries are exhausted."""
        if self.max_retries is not None and self._attempts >= self.max_retries:
            return None
        delay = self._ceiling if self._rng is None else self._rng.uniform(0.0, self._ceiling)
        self._attempts += 1
        # Grow iteratively (no factor ** n overflow) and stop at the cap.
        self._ceiling = min(self.max_delay, self._ceiling * self.factor)
        return min(self.max_delay, max(0.0, delay))

    def reset(self) -> None:
        """Start over after a success: full retry budget, ceiling back to ``initial``."""
        self._attempts = 0
        self._ceiling = self.initial
