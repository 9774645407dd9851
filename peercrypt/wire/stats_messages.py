"""Local mail to the ``stats`` actor, which keeps the statistics history.

Every actor that moves a file (sender, receiver, msender per receiver,
mreceiver) sends a ``StatsRecord`` when the transfer starts (``result``
"running") and again when it ends (``ok`` or a failure code), and a
``StatsSample`` whenever it reports progress (all of an actor's running
transfers' samples of one progress tick in one ``StatsSamples``); the stats actor decides which
samples to keep (:mod:`peercrypt.core.sampling`). A transfer is named by
``session`` (the transfer id, hex), ``side`` and ``peer``, so the two ends of
one unicast transfer, and every receiver of one multicast session, are
separate rows that share a session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from peercrypt.wire import columns
from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.columns import column
from peercrypt.wire.fields import counter, reason

SIDES = ("send", "receive")


@message
@dataclass(frozen=True, kw_only=True)
class StatsRecord(Message):
    """A transfer's facts. ``started`` is wall-clock (Unix seconds), the
    rest is as of now; ``params`` are the mode's parameters, ``stats`` the
    flow and congestion counters (srtt, timeouts, window decreases...)."""

    TYPE = "stats-record"
    session: str = field(metadata=bounded(64, 1))
    side: str = field(metadata=bounded(8, 4))
    peer: str = field(metadata=bounded(300))
    peer_fingerprint: str = field(default="", metadata=bounded(128))
    mode: str = field(metadata=bounded(32))
    file: str = field(metadata=bounded(1024))
    size: int = counter()
    done_bytes: int = counter(default=0)
    chunk_size: int = field(default=0, metadata=bounded(2**40))
    chunks: int = counter(default=0)
    started: float = 0.0
    duration: float = 0.0
    result: str = field(default="running", metadata=bounded(32, 1))
    reason: str = reason(default="")
    retransmits: int = counter(default=0)
    params: dict[str, str] = field(default_factory=dict, metadata=bounded(32))
    stats: dict[str, float] = field(default_factory=dict, metadata=bounded(32))


@message
@dataclass(frozen=True, kw_only=True)
class StatsSample(Message):
    """The state of a running transfer ``t`` seconds after it started."""

    TYPE = "stats-sample"
    session: str = field(metadata=bounded(64, 1))
    side: str = field(metadata=bounded(8, 4))
    peer: str = field(metadata=bounded(300))
    t: float = 0.0
    done_bytes: int = counter(default=0)
    window: int = counter(default=0)  # bytes (AIMD)
    rate: float = 0.0  # bytes/s (token bucket or pacing)
    rtt: float = 0.0  # smoothed, seconds
    credit: int = field(default=0, metadata=bounded(2**40))  # chunks allowed in flight


@message
@dataclass(frozen=True, kw_only=True)
class StatsSamples(Message):
    """The :class:`StatsSample` of each running transfer of one actor, one
    message per progress tick instead of one per transfer
    (:mod:`peercrypt.wire.columns`)."""

    TYPE = "stats-samples"
    session: list[str] = column(StatsSample, "session")
    side: list[str] = column(StatsSample, "side")
    peer: list[str] = column(StatsSample, "peer")
    t: list[float] = column(StatsSample, "t")
    done_bytes: list[int] = column(StatsSample, "done_bytes")
    window: list[int] = column(StatsSample, "window")
    rate: list[float] = column(StatsSample, "rate")
    rtt: list[float] = column(StatsSample, "rtt")
    credit: list[int] = column(StatsSample, "credit")


def batches(samples: Sequence[StatsSample]) -> Iterator[StatsSamples]:
    """``samples`` as few :class:`StatsSamples` as fit the bounds."""
    return columns.batches(samples, StatsSamples)


def unpack(batch: StatsSamples) -> tuple[list[StatsSample], int]:
    """The samples of a decoded ``batch``, and how many were dropped."""
    return columns.unpack(batch, StatsSample)
