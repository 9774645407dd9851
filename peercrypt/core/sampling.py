"""Bounded-rate sampling of a transfer's time series.

A transfer reports its state often (every 0.1 s); the statistics history
keeps a point only when it is at least ``interval`` seconds after the last
kept one. After ``per_level`` kept points the interval doubles, so the points
kept for a transfer of duration ``d`` grow with ``log2(d)``, not with ``d``:
with the defaults (0.1 s, 500 points per level) a minute keeps ~450 points,
an hour ~3,500, ten hours ~5,000.

The kept points are final (the store appends them as they come, so a crash
loses at most the unflushed tail); thinning never rewrites what was kept.

Throughput is the bytes done between two kept points over the time between
them, so the series integrates back to the bytes moved. Bytes the transfer
had before it began (a resume: :meth:`SeriesSampler.hold`) did not move in
it: the points' ``bytes`` count them, their throughput does not.

Pure: ``t`` (seconds since the transfer started) is passed in; nothing reads
a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INTERVAL = 0.1
DEFAULT_PER_LEVEL = 500
# Running transfers a moving actor samples per tick (DEFAULT_INTERVAL) when
# many run: beyond this many, each one every few ticks (:func:`sample_due`).
SAMPLED_PER_TICK = 8
# Reports come on timers that fire a little early or late: a report this
# fraction of the interval early still counts as due.
SLACK = 0.05


@dataclass(frozen=True)
class Point:
    """One kept sample. ``window`` is bytes (AIMD), ``rate`` bytes/s (token
    bucket or the scheduler's pacing), ``rtt`` seconds (smoothed), ``credit``
    chunks the receiver allows in flight; 0 where the mode has none."""

    t: float
    bytes: int
    throughput: float
    window: int = 0
    rate: float = 0.0
    rtt: float = 0.0
    credit: int = 0


class SeriesSampler:
    """Decides which reported states of one transfer become points."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, per_level: int = DEFAULT_PER_LEVEL
    ) -> None:
        if interval <= 0 or per_level < 1:
            raise ValueError("interval must be > 0 and per_level >= 1")
        self.interval = interval
        self.per_level = per_level
        self.kept = 0
        self._in_level = 0
        # The series is anchored at the transfer's start: 0 bytes at t = 0.
        self._last_t = 0.0
        self._last_bytes = 0

    def hold(self, nbytes: int) -> None:
        """The transfer began with ``nbytes`` already done (a resume's held
        part, known once it is accepted): the next point's throughput counts
        only the bytes done beyond them (those that crossed)."""
        self._last_bytes = max(self._last_bytes, nbytes)

    def offer(
        self,
        t: float,
        done: int,
        *,
        window: int = 0,
        rate: float = 0.0,
        rtt: float = 0.0,
        credit: int = 0,
        final: bool = False,
    ) -> Point | None:
        """The point to keep for the state at ``t``, or None. ``final`` keeps
        the last state of a transfer whatever the interval (if time moved)."""
        due = t - self._last_t >= self.interval * (1 - SLACK)
        if not due and not (final and t > self._last_t):
            return None
        elapsed = t - self._last_t
        throughput = max(0, done - self._last_bytes) / elapsed if elapsed > 0 else 0.0
        self._last_t, self._last_bytes = t, done
        self.kept += 1
        self._in_level += 1
        if self._in_level >= self.per_level:
            self._in_level = 0
            self.interval *= 2
        return Point(t, done, throughput, window, rate, rtt, credit)


def sample_due(offset: int, tick: int, running: int, per_tick: int = SAMPLED_PER_TICK) -> bool:
    """Whether a running transfer is sampled at the mover's tick ``tick``:
    every tick while at most ``per_tick`` transfers run; with more, each one
    every ``ceil(running / per_tick)`` ticks, at the ticks its own fixed
    ``offset`` (e.g. from its id: spread evenly) picks, so that about
    ``per_tick`` samples go out per tick however many run. The history keeps
    the same series, at that coarser step while so many run (its final
    point comes from the transfer's end record, always)."""
    every = max(1, -(-running // max(1, per_tick)))
    return (tick + offset) % every == 0
