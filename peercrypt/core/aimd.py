"""AIMD congestion window with duplicate-ack and timeout loss detection.

Pure: acks, sends and timeouts are reported by the caller together with the
current time ``now`` (float seconds); nothing reads a clock, sleeps, or
touches a socket. ``now`` is only used to timestamp the stats history.

Units: the window is kept in BYTES (as a float, so that sub-byte growth from
small acks accumulates); :attr:`AimdWindow.window` exposes it floored to an
int. The CLI speaks KB where 1 KB = 1024 bytes; :meth:`AimdWindow.from_kb`
converts. Stream positions (``cumulative`` acks, ``on_sent`` ends) are byte
offsets: a cumulative ack ``c`` means every byte before offset ``c`` arrived.

Rules (TCP Reno/NewReno-like congestion avoidance, no slow start):

* Additive increase: an ack that advances the cumulative point by
  ``acked`` bytes grows the window by ``increase * acked / window`` (window
  taken before the update). A full window's worth of acks therefore adds
  about ``increase`` bytes (slightly less, since the window grows meanwhile),
  i.e. +``increase`` bytes per round trip. The result is capped at ``maximum``.
* Multiplicative decrease: on congestion the window becomes
  ``max(minimum, window * decrease_factor)`` (default factor 0.5).
* Duplicate acks: an ack equal to the highest cumulative ack seen so far is a
  duplicate. When the run of consecutive duplicates reaches exactly
  ``dupack_threshold`` (default 3) the result asks for a fast retransmit of
  the chunk at the cumulative point (once per run) and, outside recovery, the
  window decreases. ``dupack_threshold=None`` disables this detector
  (duplicates are still counted).
* Reported losses (:meth:`AimdWindow.on_loss`: a SACK gap, a multicast NAK)
  decrease like a fast retransmit if ``loss_decrease`` (default: when the
  duplicate-ack detector is on). Acks below the highest seen are stale
  (reordered) and ignored entirely.
* Timeouts: :meth:`AimdWindow.on_timeout` counts the timeout, resets the
  duplicate run and, if ``timeout_decrease`` is true and outside recovery,
  decreases the window like a fast retransmit (it does not collapse to the
  minimum). ``timeout_decrease=False`` disables the decrease.
* At most one decrease per round trip: a decrease enters *recovery* with the
  recovery point set to the highest byte offset sent so far (the maximum of
  all :meth:`AimdWindow.on_sent` ends and cumulative acks). Until an ack
  advances the cumulative point to ``>= recovery_point`` (all data that was in
  flight at the decrease is acknowledged), further losses and timeouts are
  counted but do not decrease the window, and acks do not grow it (the ack
  that ends recovery does not grow it either).
* Counters: ``decreases`` counts congestion responses (even when the window
  was already at ``minimum``), ``timeouts`` every reported timeout,
  ``fast_retransmits`` every threshold crossing, ``dupacks`` every duplicate.
* Bounded stats: :attr:`AimdWindow.history` is a deque of ``(now, window)``
  samples with ``maxlen=history_len``. A growth sample is recorded only if at
  least ``history_interval`` seconds passed since the last sample; every
  decrease records the pre-decrease window (if not already the last sample)
  and the post-decrease window, so sawtooth peaks are never lost. Memory does
  not grow with transfer length.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KB", "AckResult", "AimdWindow", "TimeoutResult"]

KB = 1024
"""Bytes per KB as spoken by the CLI."""


@dataclass(frozen=True)
class AckResult:
    """What one ack did and what the caller should do.

    ``new_bytes`` bytes newly acknowledged (0 for duplicate or stale acks);
    ``duplicate`` the ack repeated the highest cumulative ack; ``stale`` the
    ack was below it and was ignored; ``fast_retransmit`` the caller should
    resend the chunk starting at the cumulative point now; ``decreased`` the
    window was multiplicatively decreased by this ack; ``window`` the window
    in bytes after the ack.
    """

    new_bytes: int
    duplicate: bool
    stale: bool
    fast_retransmit: bool
    decreased: bool
    window: int


@dataclass(frozen=True)
class TimeoutResult:
    """Outcome of a retransmission timeout: ``decreased`` and the new ``window``."""

    decreased: bool
    window: int


def _kb_to_bytes(kb: float) -> int:
    return round(kb * KB)


@dataclass
class AimdWindow:
    """Congestion window in bytes bounded by ``[minimum, maximum]``.

    Raises :class:`ValueError` unless ``0 < minimum <= initial <= maximum``,
    ``increase > 0``, ``0 < decrease_factor < 1``, ``dupack_threshold`` is
    None or >= 1, ``history_len >= 1``, ``history_interval >= 0`` and
    ``start_offset >= 0``.
    """

    initial: int
    minimum: int
    maximum: int
    increase: int = 64 * KB
    decrease_factor: float = 0.5
    dupack_threshold: int | None = 3
    timeout_decrease: bool = True
    loss_decrease: bool | None = None  # on_loss decreases? None: iff dupack_threshold is set
    history_len: int = 512
    history_interval: float = 0.05
    start_offset: int = 0

    decreases: int = field(default=0, init=False)
    timeouts: int = field(default=0, init=False)
    fast_retransmits: int = field(default=0, init=False)
    dupacks: int = field(default=0, init=False)
    history: deque[tuple[float, int]] = field(init=False, repr=False)

    _cwnd: float = field(init=False, repr=False)
    _highest_ack: int = field(init=False, repr=False)
    _sent_high: int = field(init=False, repr=False)
    _dup_run: int = field(default=0, init=False, repr=False)
    _recovery_point: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                "need 0 < minimum <= initial <= maximum, got "
                f"minimum={self.minimum}, initial={self.initial}, maximum={self.maximum}"
            )
        if not self.increase > 0:
            raise ValueError(f"increase must be > 0 bytes, got {self.increase!r}")
        if not 0 < self.decrease_factor < 1:
            raise ValueError(f"decrease_factor must be in (0, 1), got {self.decrease_factor!r}")
        if self.dupack_threshold is not None and self.dupack_threshold < 1:
            raise ValueError(
                f"dupack_threshold must be >= 1 or None, got {self.dupack_threshold!r}"
            )
        if self.history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {self.history_len!r}")
        if not (math.isfinite(self.history_interval) and self.history_interval >= 0):
            raise ValueError(f"history_interval must be >= 0, got {self.history_interval!r}")
        if self.start_offset < 0:
            raise ValueError(f"start_offset must be >= 0, got {self.start_offset!r}")
        self.history = deque(maxlen=self.history_len)
        self._cwnd = float(self.initial)
        self._highest_ack = self.start_offset
        self._sent_high = self.start_offset

    @classmethod
    def from_kb(
        cls,
        initial_kb: float,
        min_kb: float,
        max_kb: float,
        *,
        increase_kb: float = 64,
        **kwargs: Any,
    ) -> AimdWindow:
        """Build from KB values (1 KB = 1024 bytes, rounded to whole bytes).

        ``kwargs`` are passed through (``decrease_factor``, ``dupack_threshold``,
        ...). Raises :class:`ValueError` like the constructor.
        """
        return cls(
            initial=_kb_to_bytes(initial_kb),
            minimum=_kb_to_bytes(min_kb),
            maximum=_kb_to_bytes(max_kb),
            increase=_kb_to_bytes(increase_kb),
            **kwargs,
        )

    # -- read-only views -------------------------------------------------

    @property
    def window(self) -> int:
        """Current window in bytes (floored), within ``[minimum, maximum]``."""
        return int(self._cwnd)

    @property
    def window_kb(self) -> float:
        """Current window in KB (1024 bytes)."""
        return self._cwnd / KB

    @property
    def highest_ack(self) -> int:
        """Highest cumulative ack seen (``start_offset`` before any ack)."""
        return self._highest_ack

    @property
    def sent_high(self) -> int:
        """Highest byte offset known to be sent (on_sent ends and acks)."""
        return self._sent_high

    @property
    def in_recovery(self) -> bool:
        """True between a decrease and the ack that reaches the recovery point."""
        return self._recovery_point is not None

    @property
    def recovery_point(self) -> int | None:
        """Offset an ack must reach to end recovery, or None outside recovery."""
        return self._recovery_point

    # -- events ----------------------------------------------------------

    def on_sent(self, end: int) -> None:
        """Record that bytes up to offset ``end`` (exclusive) have been sent.

        Only the maximum matters; retransmissions may report smaller ends.
        """
        if end > self._sent_high:
            self._sent_high = end

    def on_acked(self, cumulative: int, now: float) -> AckResult:
        """Process a cumulative ack (every byte before ``cumulative`` arrived)."""
        if cumulative > self._highest_ack:
            return self._on_new_ack(cumulative, now)
        if cumulative < self._highest_ack:
            return AckResult(
                new_bytes=0,
                duplicate=False,
                stale=True,
                fast_retransmit=False,
                decreased=False,
                window=self.window,
            )
        self.dupacks += 1
        self._dup_run += 1
        fast_retransmit = False
        decreased = False
        if self.dupack_threshold is not None and self._dup_run == self.dupack_threshold:
            fast_retransmit = True
            self.fast_retransmits += 1
            decreased = self._congestion(now)
        return AckResult(
            new_bytes=0,
            duplicate=True,
            stale=False,
            fast_retransmit=fast_retransmit,
            decreased=decreased,
            window=self.window,
        )

    def on_loss(self, now: float) -> bool:
        """A loss the caller found (selective acks: chunks sent after it were
        acked, the SACK form of duplicate acks, which coalesced acks may not
        repeat ``dupack_threshold`` times; or a multicast NAK). Counts as a
        fast retransmit and decreases like one, unless duplicate-ack
        detection is off. Returns True if the window decreased."""
        if not (
            self.dupack_threshold is not None if self.loss_decrease is None else self.loss_decrease
        ):
            return False
        self.fast_retransmits += 1
        return self._congestion(now)

    def on_timeout(self, now: float) -> TimeoutResult:
        """Process a retransmission timeout reported by the caller."""
        self.timeouts += 1
        self._dup_run = 0
        decreased = self._congestion(now) if self.timeout_decrease else False
        return TimeoutResult(decreased, self.window)

    # -- internals -------------------------------------------------------

    def _on_new_ack(self, cumulative: int, now: float) -> AckResult:
        acked = cumulative - self._highest_ack
        self._highest_ack = cumulative
        self.on_sent(cumulative)
        self._dup_run = 0
        if self._recovery_point is not None:
            if cumulative >= self._recovery_point:
                self._recovery_point = None
        else:
            before = self._cwnd
            self._cwnd = min(float(self.maximum), before + self.increase * acked / before)
            if self._cwnd != before and (
                not self.history or now - self.history[-1][0] >= self.history_interval
            ):
                self.history.append((now, self.window))
        return AckResult(
            new_bytes=acked,
            duplicate=False,
            stale=False,
            fast_retransmit=False,
            decreased=False,
            window=self.window,
        )

    def _congestion(self, now: float) -> bool:
        """Decrease once per round trip; returns True if it decreased."""
        if self._recovery_point is not None:
            return False
        before = self.window
        if not self.history or self.history[-1][1] != before:
            self.history.append((now, before))
        self._cwnd = max(float(self.minimum), self._cwnd * self.decrease_factor)
        self.history.append((now, self.window))
        self.decreases += 1
        self._recovery_point = self._sent_high
        return True
