"""A multicast session pumped in memory: one MulticastOutgoing, N receivers.

:func:`pump_session` runs one whole session over simulated channels (one
per receiver each way, :class:`~peercrypt.testing.transfer_pump.Channel`)
with a fake clock, no sockets and no sleeping. The sender side is the real
sans-IO object (:class:`~peercrypt.core.multicast_outgoing.MulticastOutgoing`)
with the msender's I/O done by the pump: announces, publications (every
receiver's channel decides that receiver's copy), repairs re-published or
unicast, statuses, the whole-file hash over the chunks as first published,
byte grants at ``rate`` (a node ``--max-rate``) and, with ``datagrams``, a
backlog of datagram bytes spent from the grants as the msender does for a
UDP group. Each receiver is the real receiving object
(:class:`~peercrypt.core.multicast_incoming.MulticastIncoming`) with the
mreceiver's I/O done by the pump: it joins when announced to, gets the key
once the sender took its join, takes chunks only once keyed, writes new
ones after ``write_delay``, sends the acks and NAKs its object asks for
(its timer runs every ``TICK``), answers a status for a session it does not
know with "unknown", and when its object says finish, reports the hash of
what it stored.

``restarts``: (receiver, chunks) pairs: once the receiver wrote that many
chunks it loses everything not yet written and its membership (as a node
killed and restarted), keeps what it wrote (its manifest), and must be
announced to again; it then writes only what it lacked.

Grants (with ``rate``) come as the scheduler gives them: every
``GRANT_TICK`` seconds, ``rate * GRANT_TICK`` bytes of what was asked.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import blake3

from peercrypt.core.grants import RequestGrant
from peercrypt.core.multicast import GapTracker, Repair
from peercrypt.core.multicast_incoming import FinishFile, MulticastIncoming, SendAck
from peercrypt.core.multicast_outgoing import (
    Announce,
    MulticastOutgoing,
    Publish,
    SendStatus,
    SessionEnded,
    TargetEnded,
)
from peercrypt.core.outgoing import HashFile
from peercrypt.testing.transfer_pump import Channel

TICK = 0.05  # seconds between each receiver's timer runs (as the mreceiver's)
FRAGMENT = 1200  # datagram payload bytes (UDP group)
GRANT_TICK = 0.005  # seconds between the scheduler's grants


@dataclass
class _Receiver:
    flow: MulticastIncoming
    stored: bytearray
    reported: bytes = b""  # the hash it reported (it remembers a finished session)
    epoch: int = 0
    held_at_restart: set[int] = field(default_factory=set)
    rewritten: int = 0  # chunks written again that it held at a restart (must stay 0)


@dataclass
class SessionResult:
    done: bool  # the session ended with every receiver verified
    code: str
    now: float
    delivered: list[bytes]  # what each receiver stored
    writes: list[Counter[int]]  # per receiver: chunk index -> times written
    session: MulticastOutgoing
    trackers: list[GapTracker]
    results: dict[str, TargetEnded]
    first_publications: int
    repairs: int  # repair copies sent (re-published: one per receiver)
    rewritten: int  # chunks a restarted receiver wrote although it held them


def pump_session(
    content: bytes,
    chunk_size: int,
    down: list[Channel],
    up: list[Channel],
    window: int = 16,
    min_window: int = 2,
    write_delay: float = 0.001,
    rate: float = 0.0,
    datagrams: bool = False,
    restarts: list[tuple[int, int]] | None = None,
    max_events: int = 400_000,
) -> SessionResult:
    """``down[r]``: announces, chunks, repairs and statuses to receiver ``r``;
    ``up[r]``: its joins, acks, NAKs and its verdict."""
    n = len(down)
    names = [f"r{r}" for r in range(n)]
    sess = MulticastOutgoing(
        len(content),
        chunk_size,
        names,
        timeout=1e9,
        now=0.0,
        window=window,
        min_window=min_window,
        datagrams=datagrams,
    )
    total = sess.total
    if rate:
        sess.on_pacing(True)
    rx = [_Receiver(MulticastIncoming(total, 0.0, 1e9), bytearray(len(content))) for _ in names]
    writes: list[Counter[int]] = [Counter() for _ in range(n)]
    events: list[tuple[float, int, str, int, Any]] = []
    seq = itertools.count()
    now = 0.0
    first = 0
    repairs = 0
    hasher = blake3.blake3()
    backlog: list[list[Any]] = []  # [bytes left, index, receivers] (paced datagrams)
    results: dict[str, TargetEnded] = {}
    ended: SessionEnded | None = None
    timer_at: float | None = None
    asked = 0  # bytes asked for and not granted yet
    restart_after = dict(restarts or [])

    def at(when: float, kind: str, r: int, value: Any = None) -> None:
        heapq.heappush(events, (when, next(seq), kind, r, value))

    def down_to(r: int, kind: str, value: Any = None) -> None:
        for when in down[r].arrivals(now):
            at(when, kind, r, value)

    def up_from(r: int, kind: str, value: Any = None) -> None:
        for when in up[r].arrivals(now):
            at(when, kind, r, value)

    def receiver_does(r: int) -> None:
        x = rx[r]
        for out in x.flow.poll():
            if isinstance(out, SendAck):
                up_from(r, "ack", (out.cumulative, out.naks))
            elif isinstance(out, FinishFile):  # the hash of what it stored, then compare
                digest = blake3.blake3(bytes(x.stored)).digest()
                assert digest == out.digest, "a receiver stored other bytes"
                x.reported = digest
                up_from(r, "done", digest)
            else:
                raise AssertionError(f"{out} (no idle timeout in the pump)")

    def chunk_out(index: int, to: list[int]) -> None:
        if datagrams and sess.paced:
            backlog.append([min(chunk_size, len(content) - index * chunk_size), index, to])
            return
        for r in to:
            down_to(r, "chunk", (index, rx[r].epoch))

    def flush() -> None:
        while backlog and (sess.allowance > 0 or not sess.paced):
            item = backlog[0]
            spent = min(FRAGMENT, item[0])
            sess.spend(spent)
            item[0] -= spent
            if item[0] == 0:
                backlog.pop(0)
                for r in item[2]:
                    down_to(r, "chunk", (item[1], rx[r].epoch))

    def drive() -> None:
        nonlocal first, repairs, ended, timer_at, asked
        while ended is None:
            flush()
            outputs = sess.poll(now, sum(item[0] for item in backlog))
            if not outputs:
                break
            for out in outputs:
                if isinstance(out, Announce):
                    down_to(names.index(out.target), "announce")
                elif isinstance(out, Publish):
                    assert out.index == first, "first publications in file order"
                    first += 1
                    hasher.update(content[out.index * chunk_size : (out.index + 1) * chunk_size])
                    chunk_out(out.index, list(range(n)))
                elif isinstance(out, Repair):
                    to = list(range(n)) if out.publish else [names.index(m) for m in out.to]
                    repairs += len(to)
                    chunk_out(out.index, to)
                elif isinstance(out, SendStatus):
                    down_to(names.index(out.target), "status", (out.horizon, out.digest, out))
                elif isinstance(out, HashFile):
                    sess.on_digest(hasher.digest(), now)
                elif isinstance(out, RequestGrant):
                    if not asked:
                        at(now + GRANT_TICK, "grant", -1)
                    asked = out.nbytes
                elif isinstance(out, TargetEnded):
                    results[out.target] = out
                elif isinstance(out, SessionEnded):
                    ended = out
            flush()
        due = sess.next_timer(now)
        if due is not None and (timer_at is None or due < timer_at or timer_at <= now):
            timer_at = max(due, now)
            at(timer_at, "timer", -1)

    for r in range(n):
        at(TICK, "ack-timer", r)
    for r in range(n):
        down_to(r, "announce")  # the first announce, as the handshake completes
    drive()
    for _ in range(max_events):
        if ended is not None or not events:
            break
        now, _, kind, r, value = heapq.heappop(events)
        x = rx[r] if r >= 0 else None
        if kind == "timer":
            if timer_at is not None and now >= timer_at:
                timer_at = None
            sess.on_timer(now)
        elif kind == "grant":
            given = min(asked, max(1, int(rate * GRANT_TICK)))
            asked -= given
            sess.on_grant(given)
            if asked:
                at(now + GRANT_TICK, "grant", -1)
        elif x is None:
            raise AssertionError(kind)
        elif kind == "announce":
            if x.reported:  # it remembers the session it finished: the verdict again
                up_from(r, "done", x.reported)
                continue
            x.flow.on_announce(now)
            up_from(r, "join")
        elif kind == "key":
            if not x.reported:
                x.flow.on_key(now)
        elif kind == "chunk":
            index, epoch = value
            if x.flow.keyed and epoch == x.epoch and x.flow.on_chunk(index, now):
                at(now + write_delay, "written", r, value)
        elif kind == "written":
            index, epoch = value
            if epoch != x.epoch:
                continue  # queued to the writer of a node that was killed since
            writes[r][index] += 1
            if index in x.held_at_restart:
                x.rewritten += 1
            span = slice(index * chunk_size, (index + 1) * chunk_size)
            x.stored[span] = content[span]
            x.flow.on_written(index, now)
            if sum(writes[r].values()) == restart_after.get(r):
                at(now, "restart", r)
        elif kind == "status":
            horizon, digest, status = value
            if x.reported:  # again: its verdict may have been lost
                up_from(r, "done", x.reported)
            elif not x.flow.keyed:
                up_from(r, "unknown")
            else:
                x.flow.on_status(horizon, digest, status.ack_every, now)
        elif kind == "ack-timer":
            x.flow.on_timer(now)
            at(now + TICK, "ack-timer", r)
        elif kind == "restart":
            held = x.flow.tracker.written
            x.held_at_restart = {i for i in range(total) if i in held}
            x.flow = MulticastIncoming(total, now, 1e9, have=held)
            x.reported = b""
            x.epoch += 1
        elif kind == "join":
            sess.on_join(names[r], now)
            down_to(r, "key")  # the key goes back to a proven, trusted receiver
            if not datagrams:
                sess.on_subscribed(names[r], now)
        elif kind == "ack":
            cumulative, naks = value
            sess.on_ack(names[r], cumulative, naks, now)
        elif kind == "unknown":
            sess.on_unknown(names[r])
        elif kind == "done":
            sess.on_done(names[r], True, value, f"stored-{r}", "", now)
        if x is not None:
            receiver_does(r)
        drive()
    done = ended is not None and ended.code == "ok"
    return SessionResult(
        done,
        ended.code if ended is not None else "",
        now,
        [bytes(x.stored) for x in rx],
        writes,
        sess,
        [x.flow.tracker for x in rx],
        results,
        first,
        repairs,
        sum(x.rewritten for x in rx),
    )
