"""Two transfer objects pumped into each other in memory (aioquic's style).

:func:`pump_transfer` runs one whole unicast transfer -- an
:class:`~peercrypt.core.outgoing.OutgoingTransfer` and an
:class:`~peercrypt.core.incoming.IncomingTransfer` -- over simulated
channels, with a fake clock (plain floats), no sockets, no threads and no
sleeping. It does what the actors do around the objects: "reads" chunks
from ``content``, "writes" them into a buffer after ``write_delay``, hashes
(BLAKE3), grants bytes to paced flows with the real
:class:`~peercrypt.core.grants.GrantPlanner`, and re-answers a repeated Done
after the file was stored (the receiver actor's memory of completed
transfers).

Every message (chunks, Done, acks, Verified, Failed) goes through a
:class:`Channel` that drops, duplicates, delays or reorders it as its
``script`` and then its seeded RNG decide; parallel mode gets one data
channel per lane. Tests and benchmarks share this module.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import blake3

from peercrypt.core.congestion_manager import CongestionManager
from peercrypt.core.grants import GrantPlanner
from peercrypt.core.incoming import Abandon, FinishFile, IncomingTransfer, Store
from peercrypt.core.modes import Policy
from peercrypt.core.outgoing import (
    Failed,
    Finished,
    HashFile,
    OutgoingTransfer,
    Reattach,
    ReportCongestion,
    RequestGrant,
    SendChunk,
    SendDone,
)
from peercrypt.core.receive_window import Arrival

FATES = ("deliver", "drop", "duplicate", "delay")
GRANT_TICK = 0.005  # seconds between grant rounds while a flow waits (the scheduler's)


@dataclass
class Channel:
    """Fates for each message: first from ``script``, then from a seeded RNG."""

    rng: random.Random
    script: list[str]
    p_drop: float
    p_dup: float
    p_delay: float
    base: float = 0.005
    max_delay: float = 0.05
    jitter: bool = True  # False: a FIFO channel (like one TCP connection)
    stats: Counter[str] = field(default_factory=Counter)

    @classmethod
    def make(
        cls,
        seed: int,
        script: list[str] | None = None,
        p_drop: float = 0.0,
        p_dup: float = 0.0,
        p_delay: float = 0.0,
        jitter: bool = True,
    ) -> Channel:
        return cls(random.Random(seed), list(script or []), p_drop, p_dup, p_delay, jitter=jitter)

    def fate(self) -> str:
        if self.script:
            return self.script.pop(0)
        x = self.rng.random()
        if x < self.p_drop:
            return "drop"
        if x < self.p_drop + self.p_dup:
            return "duplicate"
        if x < self.p_drop + self.p_dup + self.p_delay:
            return "delay"
        return "deliver"

    def arrivals(self, now: float) -> list[float]:
        """When copies of one message sent at ``now`` arrive (none: lost)."""
        fate = self.fate()
        self.stats[fate] += 1
        if fate == "drop":
            return []
        jitter = self.rng.uniform(0, self.base) if self.jitter else 0.0
        first = now + self.base + jitter
        if fate == "delay":  # overtaken by later messages: reordering
            return [first + self.rng.uniform(self.base, self.max_delay)]
        if fate == "duplicate":
            return [first, first + (self.rng.uniform(0, self.max_delay) if self.jitter else 0.0)]
        return [first]


@dataclass
class PumpResult:
    outcome: Finished | Failed | None  # None: the pump gave up (max_events)
    now: float
    delivered: bytes | None  # what the receiver stored (None: nothing stored)
    writes: Counter[int]  # chunk index -> times written
    sent: Counter[int]  # chunk index -> times sent
    sender: OutgoingTransfer
    receiver: IncomingTransfer
    max_in_flight: int
    confirmations_lost: int  # Done and Verified messages dropped
    grants: int  # bytes granted to the flow
    sends: list[tuple[float, int]]  # (when, bytes) of every chunk sent, in order


def pump_transfer(
    content: bytes,
    chunk_size: int,
    policy: Policy,
    credit: int,
    data: list[Channel],
    acks: Channel,
    node_rate: int = 0,
    write_delay: float = 0.001,
    timeout: float = 1e6,
    idle_timeout: float = 1e6,
    max_events: int = 400_000,
    manager_: CongestionManager[int] | None = None,
) -> PumpResult:
    """Run one transfer of ``content`` to the end (or ``max_events``).

    ``data``: one channel per lane (chunks and sealed sender messages; a
    lane's channel carries every ``len(data)``-th chunk); ``acks``: the
    receiver's acks, Verified and Failed. ``node_rate`` > 0: the node's rate
    cap (every flow is paced by grants)."""
    now = 0.0
    sender = OutgoingTransfer(
        policy=policy,
        size=len(content),
        chunk_size=policy.chunk_size_for(chunk_size, timeout),
        timeout=timeout,
        now=now,
        node_capped=node_rate > 0,
    )
    size, chunk = len(content), sender.chunk_size
    receiver = IncomingTransfer(sender.total, credit, idle_timeout, now)
    stored = bytearray(size)
    digest = blake3.blake3(content).digest()
    delivered: bytes | None = None
    planner: GrantPlanner[int] = GrantPlanner()
    manager: CongestionManager[int] = manager_ if manager_ is not None else CongestionManager()
    if node_rate:
        planner.set_node_rate(node_rate, max(node_rate // 10, 64 * 1024), now)
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    writes: Counter[int] = Counter()
    sent: Counter[int] = Counter()
    outcome: Finished | Failed | None = None
    next_lane = 0
    max_in_flight = 0
    granted = 0
    sends: list[tuple[float, int]] = []
    confirmations_lost = 0
    tick_at: float | None = None

    def at(when: float, kind: str, value: Any = None) -> None:
        heapq.heappush(events, (when, next(seq), kind, value))

    def over(channel: Channel, kind: str, value: Any = None) -> None:
        nonlocal confirmations_lost
        arrivals = channel.arrivals(now)
        if not arrivals and kind in ("done", "verified"):
            confirmations_lost += 1
        for when in arrivals:
            at(when, kind, value)

    def drive_sender() -> None:
        nonlocal outcome, next_lane, max_in_flight, tick_at
        while outcome is None:
            outputs = sender.poll(now)
            if not outputs:
                break
            for out in outputs:
                if isinstance(out, SendChunk):
                    sent[out.index] += 1
                    body = content[out.index * chunk : (out.index + 1) * chunk]
                    sends.append((now, len(body)))
                    over(data[next_lane % len(data)], "chunk", (out.index, out.last, body))
                    next_lane += 1
                elif isinstance(out, HashFile):
                    sender.on_digest(blake3.blake3(content).digest(), now)
                elif isinstance(out, SendDone):
                    over(data[0], "done", (out.digest, out.chunks))
                elif isinstance(out, ReportCongestion):
                    manager.report(
                        0, out.sent, out.acked, out.losses, out.timeouts, out.in_flight, now
                    )
                    tell_windows()
                elif isinstance(out, Reattach):
                    pass  # (a channel per lane, no shared connection: nothing to say)
                elif isinstance(out, RequestGrant):
                    planner.demand(0, out.nbytes)
                    if tick_at is None:
                        tick_at = now + GRANT_TICK
                else:
                    outcome = out
        if sender.window is not None:
            max_in_flight = max(max_in_flight, sender.window.in_flight)
            assert sender.window.in_flight <= sender.window.window

    def tell_windows() -> None:
        peer = manager.peer_of(0)
        for _flow, share in manager.changed().items():
            assert peer is not None
            sender.on_window(share, peer.window, peer.control.decreases, now)

    def drive_receiver() -> None:
        nonlocal delivered
        for out in receiver.poll():
            if isinstance(out, FinishFile):
                at(now + write_delay, "hashed")
            elif isinstance(out, Store):
                delivered = bytes(stored)
                over(acks, "verified", out.digest)
            elif isinstance(out, Abandon) and out.notify:
                over(acks, "failed", (out.code, out.reason))
        ack = receiver.ack(credit, now)
        if ack is not None:
            over(acks, "ack", ack)

    sender.on_accept([], credit, now)
    if sender.congestion_managed:
        manager.add(0, "peer", policy.priority, policy)
        tell_windows()
    rate, burst = sender.flow_rate
    if sender.paced or rate or node_rate:
        planner.add(0, policy.priority, rate, burst, now)
        sender.on_pacing(True)
    drive_sender()
    for _ in range(max_events):
        if outcome is not None:
            break
        timers = [t for t in (sender.next_timer(), tick_at) if t is not None]
        due = min(timers) if timers else None
        if events and (due is None or events[0][0] <= due):
            now, _, kind, value = heapq.heappop(events)
            if kind == "chunk":
                index, last, body = value
                if receiver.on_chunk(index, last, now) is Arrival.NEW:
                    writes[index] += 1
                    at(now + write_delay, "written", (index, body))
            elif kind == "written":
                index, body = value
                stored[index * chunk : index * chunk + len(body)] = body
                receiver.on_written(index, now)
            elif kind == "hashed":
                receiver.on_hashed(blake3.blake3(bytes(stored)).digest())
            elif kind == "done":
                if receiver.ended and delivered is not None:
                    over(acks, "verified", digest)  # the actor's completed-transfer memory
                else:
                    receiver.on_done(value[0], value[1], now)
            elif kind == "ack":
                cumulative, sack, window = value
                sender.on_ack(cumulative, sack, window, now)
            elif kind == "verified":
                sender.on_verified(value, "stored")
            elif kind == "failed":
                sender.on_failed(*value)
            drive_receiver()
        elif due is not None:
            now = max(now, due)
            if due == tick_at:
                tick_at = None
                for _flow, nbytes in planner.tick(now).items():
                    granted += nbytes
                    sender.on_grant(nbytes)
                if planner.waiting:
                    tick_at = now + GRANT_TICK
            else:
                sender.on_timer(now)
                if sender.next_timer() == due:  # float rounding at the deadline itself
                    now += 1e-9
                    sender.on_timer(now)
        else:
            break  # nothing in flight, nothing scheduled: stuck
        drive_sender()
    return PumpResult(
        outcome,
        now,
        delivered,
        writes,
        sent,
        sender,
        receiver,
        max_in_flight,
        confirmations_lost,
        granted,
        sends,
    )
