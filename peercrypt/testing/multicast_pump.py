"""A multicast session pumped in memory: one SessionPlan, N GapTrackers.

:func:`pump_session` runs one whole session over simulated channels (one
per receiver each way, :class:`~peercrypt.testing.transfer_pump.Channel`)
with a fake clock, no sockets and no sleeping, doing what the msender and
mreceiver actors do around the pure objects: publish what
:meth:`~peercrypt.core.multicast.SessionPlan.can_publish` allows (every
receiver's channel decides that receiver's copy), repair by re-publishing
or by unicast as :meth:`~peercrypt.core.multicast.SessionPlan.plan` says,
tell receivers the horizon (the msender's status) in answer to their acks,
and let each receiver write new chunks after ``write_delay``, ack every
``ack_every`` written chunks and every ``ack_interval`` seconds with its
NAKs (:meth:`~peercrypt.core.multicast.GapTracker.naks`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from peercrypt.core.multicast import DONE, GapTracker, SessionPlan
from peercrypt.testing.transfer_pump import Channel

TICK = 0.05  # seconds between the sender's timeouts check and each receiver's ack timer


@dataclass
class SessionResult:
    done: bool  # every receiver holds every chunk
    now: float
    delivered: list[bytes]  # what each receiver wrote
    writes: list[Counter[int]]  # per receiver: chunk index -> times written
    plan: SessionPlan
    trackers: list[GapTracker]
    first_publications: int
    repairs: int  # repair copies sent (re-published: one per receiver)


def pump_session(
    content: bytes,
    chunk_size: int,
    down: list[Channel],
    up: list[Channel],
    window: int = 16,
    min_window: int = 2,
    ack_every: int = 4,
    write_delay: float = 0.001,
    max_events: int = 400_000,
) -> SessionResult:
    """``down[r]``: chunks, repairs and status to receiver ``r``; ``up[r]``:
    its acks and NAKs."""
    total = -(-len(content) // chunk_size)
    n = len(down)
    plan = SessionPlan(total, window=window, min_window=min_window, stall_timeout=1e9)
    names = [f"r{r}" for r in range(n)]
    trackers = [GapTracker(total) for _ in range(n)]
    stored = [bytearray(len(content)) for _ in range(n)]
    writes: list[Counter[int]] = [Counter() for _ in range(n)]
    since_ack = [0] * n
    events: list[tuple[float, int, str, int, Any]] = []
    seq = itertools.count()
    now = 0.0
    first = 0
    repairs = 0

    def at(when: float, kind: str, r: int, value: Any = None) -> None:
        heapq.heappush(events, (when, next(seq), kind, r, value))

    def to_receiver(r: int, kind: str, value: Any) -> None:
        for when in down[r].arrivals(now):
            at(when, kind, r, value)

    def ack(r: int) -> None:
        t = trackers[r]
        since_ack[r] = 0
        for when in up[r].arrivals(now):
            at(when, "ack", r, (t.written.cumulative, t.naks(now)))

    def publish() -> None:
        nonlocal first, repairs
        for repair in plan.plan(now):
            targets = range(n) if repair.publish else [names.index(m) for m in repair.to]
            for r in targets:
                repairs += 1
                to_receiver(r, "chunk", repair.index)
        count = plan.can_publish()
        for index in range(plan.published, plan.published + count):
            first += 1
            for r in range(n):
                to_receiver(r, "chunk", index)
        plan.on_published(count)

    for name in names:
        plan.join(name, now)
    for r in range(n):
        at(TICK, "ack-timer", r)
    at(TICK, "tick", -1)
    publish()
    for _ in range(max_events):
        if all(plan.members[m].state == DONE for m in names) or not events:
            break
        now, _, kind, r, value = heapq.heappop(events)
        if kind == "chunk":
            if trackers[r].on_chunk(value, now):
                at(now + write_delay, "written", r, value)
        elif kind == "written":
            index = value
            writes[r][index] += 1
            stored[r][index * chunk_size : (index + 1) * chunk_size] = content[
                index * chunk_size : (index + 1) * chunk_size
            ]
            trackers[r].on_written(index)
            since_ack[r] += 1
            if since_ack[r] >= ack_every or trackers[r].complete:
                ack(r)
        elif kind == "status":
            trackers[r].on_horizon(value)
        elif kind == "ack-timer":
            if plan.members[names[r]].state != DONE:
                ack(r)
                at(now + TICK, "ack-timer", r)
        elif kind == "ack":
            cumulative, naks = value
            plan.on_ack(names[r], cumulative, naks, now)
            if cumulative >= total:
                plan.end(names[r], DONE)
            to_receiver(r, "status", plan.published)
        elif kind == "tick":
            plan.tick(now)
            at(now + TICK, "tick", -1)
        publish()
    done = all(plan.members[m].state == DONE for m in names)
    return SessionResult(
        done, now, [bytes(s) for s in stored], writes, plan, trackers, first, repairs
    )
