"""Token-bucket rate limiter for byte streams.

Pure: every call gets the current time as ``now`` (float seconds from any
monotonic origin); nothing reads a clock, sleeps, or touches a socket.

Model: the bucket holds up to ``burst`` tokens (one token = one byte) and
refills continuously at ``rate`` tokens per second. It starts full, or with
the ``tokens`` given (a pacer that must not run ahead of its rate from the
first byte starts empty: then over ``[created, t]`` the bytes granted are at
most ``rate * (t - created)``, with no burst on top). A request
for ``n`` bytes is granted only if ``n`` tokens are present, and then takes
them all at once; there is no partial grant and no debt.

Design rules:

* Requests larger than ``burst`` are rejected with :class:`ValueError` by both
  :meth:`TokenBucket.consume` and :meth:`TokenBucket.delay_until`: the bucket
  never holds more than ``burst`` tokens, so such a request could never be
  granted. Callers split their data into pieces of at most ``burst`` bytes
  (:attr:`TokenBucket.burst` is the largest request that can ever succeed).
* Conformance: over any interval ``[t0, t1]`` the bytes granted are at most
  ``burst + rate * (t1 - t0)`` (with live changes: the largest burst in force
  plus the integral of the rate), up to float rounding.
* :meth:`TokenBucket.delay_until` returns a delay ``d`` such that
  ``consume(n, now + d)`` succeeds when ``now + d`` is computed in floating
  point exactly that way: ``d = (n - tokens) / rate`` is nudged up by an ulp
  at a time while rounding would leave the bucket a hair short. So a sender
  that always waits as told achieves ``rate`` in the long run.
* Time never runs backwards for the bucket: a ``now`` earlier than the latest
  time seen is treated as that latest time (no refill, no error).
* Live changes (:meth:`TokenBucket.set_rate`, :meth:`TokenBucket.set_burst`)
  first refill up to ``now`` at the old rate, then apply the change; tokens
  accrued so far are kept, capped at the (new) burst.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]

# Safety bound on ulp nudges in delay_until; one or two are needed in practice.
_MAX_NUDGES = 64


def _check_rate(rate: float) -> float:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number of bytes/s > 0, got {rate!r}")
    return float(rate)


def _check_burst(burst: int) -> int:
    if burst <= 0:
        raise ValueError(f"burst must be a number of bytes > 0, got {burst!r}")
    return burst


class TokenBucket:
    """A token bucket of ``burst`` bytes refilled at ``rate`` bytes/s, starting
    full or with ``tokens`` (clamped to ``[0, burst]``).

    Raises :class:`ValueError` if ``rate`` is not finite and > 0 or ``burst`` <= 0.
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float, tokens: float | None = None) -> None:
        self._rate = _check_rate(rate)
        self._burst = _check_burst(burst)
        full = float(self._burst)
        self._tokens: float = full if tokens is None else min(full, max(0.0, float(tokens)))
        self._last = float(now)

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate={self._rate!r}, burst={self._burst!r}, "
            f"tokens={self._tokens!r}, last={self._last!r})"
        )

    @property
    def rate(self) -> float:
        """Refill rate in bytes per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """Capacity in bytes; also the largest request that can ever be granted."""
        return self._burst

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self._burst), self._tokens + (now - self._last) * self._rate)
            self._last = now

    def _check_request(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"request must be >= 0 bytes, got {n!r}")
        if n > self._burst:
            raise ValueError(
                f"request of {n} bytes exceeds burst of {self._burst} bytes; "
                "split it into pieces of at most burst bytes"
            )

    def available(self, now: float) -> float:
        """Tokens (bytes) available at ``now``, in ``[0, burst]``."""
        self._refill(now)
        return self._tokens

    def consume(self, n: int, now: float) -> bool:
        """Take ``n`` bytes if that many tokens are available at ``now``.

        Returns True and removes ``n`` tokens on success; returns False and
        changes nothing (apart from refilling up to ``now``) otherwise.
        ``n == 0`` always succeeds. Raises :class:`ValueError` if ``n < 0`` or
        ``n > burst``.
        """
        self._check_request(n)
        self._refill(now)
        if n <= self._tokens:
            self._tokens -= n
            return True
        return False

    def delay_until(self, n: int, now: float) -> float:
        """Seconds from ``now`` until ``n`` bytes could be taken (0.0 if now).

        Assumes no other consumption and no rate change in between. The
        result ``d`` is such that ``consume(n, now + d)`` succeeds. Raises
        :class:`ValueError` if ``n < 0`` or ``n > burst``.
        """
        self._check_request(n)
        self._refill(now)
        if n <= self._tokens:
            return 0.0
        start = self._last  # == max(now, latest time seen)
        delay = (start - now) + (n - self._tokens) / self._rate
        for _ in range(_MAX_NUDGES):
            ready = now + delay  # exactly what the caller will compute
            if self._tokens + (ready - start) * self._rate >= n:
                break
            delay += max(math.ulp(delay), math.ulp(ready))
        return max(0.0, delay)

    def set_rate(self, rate: float, now: float) -> None:
        """Change the refill rate at ``now``; tokens accrued at the old rate are kept.

        Raises :class:`ValueError` if ``rate`` is not finite and > 0 (the
        bucket is left unchanged then).
        """
        new_rate = _check_rate(rate)
        self._refill(now)
        self._rate = new_rate

    def set_burst(self, burst: int, now: float) -> None:
        """Change the capacity at ``now``; current tokens are kept, capped at ``burst``.

        Growing the burst does not add tokens; they accrue at ``rate``.
        Raises :class:`ValueError` if ``burst <= 0`` (the bucket is left
        unchanged then).
        """
        new_burst = _check_burst(burst)
        self._refill(now)
        self._burst = new_burst
        self._tokens = min(self._tokens, float(new_burst))
