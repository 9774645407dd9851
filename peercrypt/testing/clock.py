"""A clock a test moves by hand (trio's ``MockClock`` idea).

Pass ``FakeClock()`` as ``ActorEnv.clock``: the actor's :meth:`Actor.now`,
its timers and every ``now`` it hands to the core then follow
:meth:`FakeClock.advance`, not the wall. Thread-safe: the test thread
advances it while the actor's thread reads it.
"""

from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward (never back)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
