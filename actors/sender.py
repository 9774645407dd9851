"""Sender actor: offers files to peers and streams them, sealed, under credit.

Per transfer (``SendRequest`` from the control actor), the actor does the
I/O and a :class:`~peercrypt.core.outgoing.OutgoingTransfer` decides (what
to send, when, the end):

1. A CURVE DEALER to the peer's public port carries a Hello, then the
   Offer; a socket monitor tells *why* nothing came back: connection
   refused, handshake failed (wrong network key), or not admitted. The
   hello is the pre-send check: an unreachable peer is tried again
   (:class:`~peercrypt.core.reach.Reach`: backoff pauses within the send's
   ``--timeout``, at most ``--max-retries``) and then refused with a hint at
   ``--force`` (which tries once more instead, the offer given its own
   ``--timeout``). Before the offer, the key the peer proved in that hello must
   be the one expected at this address (``--expect``, the known-peers file,
   members' signed records: crypto/known_peers.py); what the file is (name,
   size) goes sealed to that key, so no one else at the address reads it.
2. On Accept: the key must be the one the offer was sealed to and the
   receiver's proof must verify (crypto/handshake.py); a failure ends the
   transfer before its first byte (exit 4). Then the transfer keys are
   derived and plain DEALERs (one per lane) to the advertised data port
   carry the chunks the transfer asks for, read with ``pread``, hashed
   (BLAKE3, in file order, on first read) and sealed with a fresh nonce each
   time; in parallel mode a :class:`~actors.lanes.LaneCrew` of worker
   threads reads, seals and hashes.
   Grant requests go to the scheduler, grants come back from it.
3. When every chunk has been sent once, a sealed Done with the whole-file
   hash (the receiver finishes the file with it once every chunk is
   written), and again when every chunk is acked; the result is "ok" only
   when the receiver's sealed Verified repeats that hash.

The control link and the data connections stay open :data:`IDLE_KEEP`
seconds after the send no longer needs them: the next send to the same
receiver takes them, without a new connection's round trips.

Outages: a data connection whose data goes unacknowledged by the peer's
kernel for :data:`DATA_MAXRT_MS` (``TCP_USER_TIMEOUT``), or whose ZMTP
heartbeats go unanswered, is dropped and reconnected every
:data:`DATA_RECONNECT_MS` with connects bounded to :data:`DATA_CONNECT_MS`, so
after the link returns the connection is back within about a second instead
of at the kernel's next (backed-off) TCP retry; a socket monitor then tells
the transfer (:meth:`~peercrypt.core.outgoing.OutgoingTransfer.on_reconnect`),
which resends at once what was lost with the old connection. The transfer's
own ``--timeout`` (no newly acked chunk for that long) ends it.

Resume: the offer carries the file's source tag
(:func:`~peercrypt.core.resume.source_tag`); the receiver answers with the
chunks it still holds from an interrupted send of the same file, and only
the others are sent. A transfer that was accepted and then failed for the
network (``timeout`` or ``unreachable`` with its data connection down: an
outage, a killed or frozen receiver) is offered again by the sender itself,
up to ``--max-retries`` times after full-jitter backoff pauses (1 s doubling,
at most ``--timeout``): once the peer is back it resumes. A data connection
that does not come back is probed (:class:`~actors.peer_link.ConnectProbe`):
a refusal (a killed receiver) ends the attempt at once, and the offer is
retried sooner (0.25 s doubling to 2 s) until ``--timeout`` has passed since
the transfer last moved; the requester is told once ("the receiver's port
closed; retrying"). Retries wait in line under ``max_outgoing`` like new
sends; the send has one row in the statistics history, which every attempt
updates (its result is the send's). An offer
the receiver refuses as busy (its limits of transfers at once: the only
refusal that says "not now") is not an end either: the send waits in line
for that receiver and offers again when one of this node's sends there ends
or after a pause, bounded by ``--timeout`` while none of them runs
(:class:`~peercrypt.core.busy_wait.BusyWait`); its offers update the same
row. A sender that gives
up or is cancelled tells the receiver (a sealed Failed, given
:data:`CLOSE_GRACE` to leave before the socket closes), which frees its slot
and keeps the part.

Progress goes to the requester every 0.1 s. Memory per transfer is the
credit window (chunks queued in ZeroMQ), never the file size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hmac
import itertools
import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import zmq

from actors.data_pipes import DataPipe, PipeKey, new_route_id
from actors.file_chunks import (
    SOURCE_CHECK_EVERY,
    NotRegularFile,
    Stream,
    changed_since,
    open_source,
    read_chunk,
    version_tag,
)
from actors.lanes import ChunkSealed, FileHashed, LaneCrew, crew_size
from actors.peer_link import ConnectProbe, Link, connect_cause
from actors.port_watch import DIAL_EVENTS, PortWatch, recv_monitor_message
from actors.sealed_buffers import SealedPool
from actors.tree_source import TreeSource
from actors.tree_source import Walk as TreeWalk
from peercrypt import local_ipc, shm_ring
from peercrypt.core.address import dialable_host, dialled, join_host_port
from peercrypt.core.backoff import Backoff
from peercrypt.core.bitmap import ChunkBitmap, pairs
from peercrypt.core.busy_wait import BusyWait, not_now
from peercrypt.core.cancels import CANCELLED_BY_USER
from peercrypt.core.modes import Policy, PolicyError, with_overrides
from peercrypt.core.multicast_outgoing import verify_limit
from peercrypt.core.names import shortened
from peercrypt.core.outgoing import (
    Finished,
    HashFile,
    OutgoingTransfer,
    Phase,
    Reattach,
    ReportCongestion,
    RequestGrant,
    SendChunk,
    SendDone,
)
from peercrypt.core.port_guard import NULL_HANDSHAKE, GuardLimits, held_limit
from peercrypt.core.reach import Reach
from peercrypt.core.sampling import sample_due
from peercrypt.core.tree import TreeError
from peercrypt.core.tree import source_tag as tree_source_tag
from peercrypt.crypto.handshake import HELLO_MEMORY, HelloChallenge, Initiator, ProofError
from peercrypt.crypto.identity import fingerprint
from peercrypt.crypto.known_peers import KnownPeersFile, UnreadablePins, explain
from peercrypt.crypto.transfer import TAG_BYTES, OpenError, TransferKeys
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import PEER_RCVHWM, Actor, ActorEnv, Timer, dial
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec, columns
from peercrypt.wire.messages import (
    Accept,
    Ack,
    Attach,
    CancelRequest,
    ChunkHeader,
    Done,
    ErrorReply,
    Failed,
    FlowDemand,
    FlowEnd,
    FlowGrant,
    FlowPacing,
    FlowRate,
    FlowReport,
    FlowStart,
    FlowWindow,
    Hello,
    HelloReply,
    Offer,
    OfferDetails,
    Progress,
    Progresses,
    Refuse,
    SealedHeader,
    SendRequest,
    SendResult,
    SlotHeader,
    TransfersReply,
    TransfersRequest,
    Verified,
    Verifying,
)
from peercrypt.wire.network_messages import SendProven
from peercrypt.wire.stats_messages import StatsRecord, StatsSample, batches
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.sender")

DATA_SNDHWM = 8192

PROGRESS_INTERVAL = 0.1
SOURCE_CHECK_TICKS = round(SOURCE_CHECK_EVERY / PROGRESS_INTERVAL)
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))
DATA_MAXRT_MS = 2000  # unacknowledged data for this long drops the data connection
DATA_HEARTBEAT_MS = 500  # ZMTP pings on the data connection, dropped unanswered after 4
DATA_RECONNECT_MS = 100  # pause before reconnecting, no backoff
DATA_MAXMSGSIZE = 64 * 1024  # a reply's frame at most
FLOODED = "the receiver sent more than this node holds unread; its data connection was closed"
DATA_CONNECT_MS = 500  # a connect attempt that takes longer is retried afresh
HASH_CATCH_UP = 4  # held chunks hashed per chunk sent, on a resume
HASH_STEP = 64 * 1024 * 1024  # bytes hashed per turn of the loop when the rest is due
# Modes whose sends are cut in the smallest chunk a request allows, not in
# the receiver's choice (see _start).
FIXED_CHUNK_MODES = ("token-bucket", "aimd")
CLOSE_GRACE = 0.5  # seconds a last Failed has to leave before the sockets close
# A send's control link and its data connections stay open this long after
# the send no longer needs them, for the next send to the same receiver: on a
# long path each new connection costs round trips before the first byte (TCP,
# the ZMTP greeting, CURVE's two on a control link: 5 of a 1 MiB send's 13 at
# any round trip; a data connection's 3). At most IDLE_LINKS links and
# IDLE_PIPES connections wait so (beyond: closed as before). A link is kept
# only if connected at its send's accept; a link or a connection that drops
# while kept is closed at once (it would not be taken again).
IDLE_KEEP = 30.0
IDLE_LINKS = 16
IDLE_PIPES = 16
# What a kept data connection's monitor reports when it broke (then it is
# closed at once: SenderActor._on_data_monitor).
IDLE_BREAKS = frozenset(
    {
        zmq.EVENT_DISCONNECTED,
        zmq.EVENT_CONNECT_RETRIED,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    }
)
DATA_BATCH = 1024  # replies taken from one data connection per turn of the loop
RETRY_INITIAL = 1.0  # seconds before the first automatic retry (full jitter, doubling)
CLOSED_RETRY_INITIAL = 0.25  # the same while the receiver's port refuses (at most 2 s)
CLOSED_RETRY_MAX = 2.0
RETRY_CODES = frozenset({ResultCode.TIMEOUT, ResultCode.UNREACHABLE})
PROBE_LIMIT = 1.0  # seconds a probe of a broken data connection may take
REFUSED = connect_cause(errno.ECONNREFUSED)
_monitor_ids = itertools.count()


@dataclass
class Retries:
    """What an automatic retry carries from one attempt of a send to the next."""

    backoff: Backoff  # network failures: at most --max-retries
    closed: Backoff  # the receiver's port refusing: until ``closed_since`` + --timeout
    closed_since: float | None = None  # the last progress before the port refused
    attempt: int = 1  # of the send, the first one 1
    done_bytes: int = 0  # the most any attempt had acknowledged (the receiver keeps them)
    started: float = 0.0  # the first attempt's start: the send's time counts from it
    held: float = 0.0  # the share of the file the receiver held at the first accept
    whole: bool = False  # offered again whole after a mismatch of what the receiver held
    held_again: bool = False  # the next accept's held share replaces ``held`` (that offer's)
    # The send's one row in the statistics history, which every attempt
    # updates: named by the first attempt's transfer id, begun at its start.
    session: str = ""
    wall: float = 0.0
    record: StatsRecord | None = None  # the row as last told (kept between attempts)
    retransmits: int = 0  # chunks the attempts before this one resent


@dataclass
class Busy:
    """A send the receiver refused "not now": its wait (core/busy_wait.py)
    and, until an offer of it is accepted (then :class:`Retries` carries
    it), its one row in the statistics history: its first offer's."""

    wait: BusyWait
    session: str  # the first offer's transfer id
    wall: float  # its start, Unix seconds
    started: float  # the same on the actor clock: the send's time counts from it
    record: StatsRecord | None = None  # the row as last told
    # Since when the receiver has said an earlier attempt of this send is in
    # its final check (refused "verifying"): a wait bounded as a multicast
    # target's verifying is (core/multicast_outgoing.verify_limit).
    check_since: float | None = None
    # A folder's walked tree: the next offer takes it while no file of it
    # changed (size, mtime), instead of reading and hashing it all again.
    tree: TreeSource | None = None


@dataclass
class Retrying:
    """A send between two attempts (what ``transfers`` lists)."""

    timer: Timer
    request: SendRequest
    attempt: int  # the next one
    due: float  # actor clock
    error: str  # why the last attempt failed
    size: int
    done_bytes: int
    mode: str
    source: bytes  # what it sends: its source tag and name (``_sending_already``)
    name: str
    started: float  # the send's start (actor clock): its first offer's
    retry: Retries | None  # what the next attempt carries (None: never accepted)
    # Set while it waits for a busy receiver's slot (listed as ``waiting``).
    busy: Busy | None = None


@dataclass
class Walk:
    """A folder being walked and hashed for ``request`` (actors/tree_source.py)."""

    request: SendRequest
    retry: Retries | None  # carried to the attempt after the walk
    job: TreeWalk | None = None
    busy: Busy | None = None  # its wait for a busy receiver, carried too


@dataclass
class KeptLink:
    """A send's control link kept for the next send to its address (IDLE_KEEP)."""

    link: Link
    disconnects: int  # its disconnects when it was kept
    timer: Timer  # closes it
    answered: deque[bytes]  # the proofs of the hello replies taken on it


@dataclass
class Outgoing:
    """The I/O side of one transfer; every decision is ``flow``'s."""

    request: SendRequest
    flow: OutgoingTransfer
    requester: str
    tid: bytes
    fd: int
    mtime_ns: int
    eph: Initiator
    details: OfferDetails
    link: Link | None = None
    link_kept: bool = False  # its link was kept from a send before (IDLE_KEEP)
    # The receiver's identity key, proven by a hello before the offer is
    # sealed to it; the accept must prove the same key.
    receiver_key: bytes = b""
    # The node's own key its hello proved (receiver_key is the key of the
    # receiver it runs attached elsewhere, when it vouched for one).
    node_key: bytes = b""
    challenge: HelloChallenge | None = None  # our hello, until its reply proves a key
    # The proofs of the hello replies taken on its link, by this send and the
    # sends it was kept for before: one of them again is a replay (stale).
    answered: deque[bytes] = field(default_factory=lambda: deque(maxlen=HELLO_MEMORY))
    # The pre-send check of a first attempt (a retry's offer goes to a peer
    # that accepted before): its connection attempts and the timer of the current one.
    reach: Reach | None = None
    reach_timer: Timer | None = None

    @property
    def checking(self) -> bool:
        """The pre-send check has not seen the peer prove a key yet."""
        return self.reach is not None and not self.receiver_key and self.keys is None

    keys: TransferKeys | None = None
    data: zmq.Socket[Any] | None = None  # its first lane's connection (sealed messages)
    hasher: Any = field(default_factory=blake3.blake3)
    hashed: int = 0
    timer: Timer | None = None
    # Its data connections, one per lane, shared with the node's other
    # transfers to the same receiver (actors/data_pipes.py).
    pipes: list[DataPipe] = field(default_factory=list)
    broken: bool = False  # a data connection dropped and has not come back yet
    crew: LaneCrew | None = None
    next_lane: int = 0
    wall: float = field(default_factory=time.time)  # when it started, for the history
    retry: Retries | None = None  # set once the transfer was accepted
    proven: str = ""  # the receiver's fingerprint, once it proved its key
    port_closed: bool = False  # this attempt ended because the receiver's port refused
    tree: TreeSource | None = None  # a folder or several files, read as one stream (fd -1)
    checked: int = 0  # bytes the receiver's final check covered (its Verifying)
    ring: shm_ring.SenderRing | None = None  # the receiver's shared-memory ring
    slotted: list[bytes] = field(default_factory=list)  # descriptors not sent yet
    busy: Busy | None = None  # the receiver said "not now" before (carried)
    not_now: str = ""  # the receiver's reason, when it refused this offer "not now"
    in_check: bool = False  # that refusal said an earlier attempt is in its final check

    @property
    def source(self) -> int | Stream:
        return self.tree if self.tree is not None else self.fd

    @property
    def files(self) -> int:
        return self.tree.files if self.tree is not None else 1

    @property
    def peer(self) -> str:
        return join_host_port(self.request.host, self.request.port)

    @property
    def size(self) -> int:
        return self.flow.size

    @property
    def chunk_size(self) -> int:
        return self.flow.chunk_size


class SenderActor(Actor):
    name = "sender"
    data_plane = True

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.transfers: dict[bytes, Outgoing] = {}
        self.waiting: deque[SendRequest] = deque()  # beyond max_outgoing, in order
        self.retrying: dict[int, Retrying] = {}  # request -> its next attempt
        self.carried: dict[int, Retries] = {}  # retries queued in ``waiting``
        self.carried_busy: dict[int, Busy] = {}  # busy waits queued in ``waiting``
        # What a retry or a busy wait queued in ``waiting`` sends (its source
        # tag and name): a second send of that file is refused meanwhile too.
        self.queued_as: dict[int, tuple[bytes, str]] = {}
        self.walking: dict[int, Walk] = {}  # request -> its folder being walked
        self.rng = random.Random()
        self.known_peers = KnownPeersFile(settings.data_dir)
        # What chunks are sealed into (reused), for all transfers together.
        self.sealed = SealedPool()
        # The data connections in use, shared by the transfers to one receiver.
        self.pipes: dict[PipeKey, DataPipe] = {}
        # Control links kept after their send's accept, by URL (IDLE_KEEP).
        self.idle_links: dict[str, KeptLink] = {}
        # What receivers make libzmq read ahead on them (never capped:
        # PEER_RCVHWM), bounded as the data port bounds senders
        # (core/port_guard.py): a receiver whose replies pass the bound
        # unread has its connection closed and the transfers on it fail.
        limits = GuardLimits(
            held=settings.data_port_memory or held_limit(settings.receive_buffer, DATA_MAXMSGSIZE),
            connections=1 << 16,
            per_address=1 << 16,
        )
        self.data_watch = PortWatch(
            limits,
            self.count,
            prefix="data-",
            allowance=NULL_HANDSHAKE,
            on_closed=self._on_data_flood,
        )
        self.ticks = 0  # progress reports so far (which transfers are sampled)
        self._tick_cpu = time.process_time()  # the process's CPU at the last tick

    def setup(self) -> None:
        self.host_id = local_ipc.host_id() if self.settings.local_ipc else ""
        self.data_watch.attach(self)
        self.call_every_while(
            PROGRESS_INTERVAL,
            self._progress,
            lambda: bool(self.transfers or self.retrying or self.walking),
        )
        self.trim_while_busy(lambda: bool(self.transfers))

    def teardown(self) -> None:
        stopping = "the node is stopping"
        waiting, self.waiting = self.waiting, deque()
        self.queued_as.clear()
        for req in waiting:
            retry, busy = (
                self.carried.pop(req.request, None),
                self.carried_busy.pop(req.request, None),
            )
            self._end_unstarted(req.request, retry, stopping, busy)
        retrying, self.retrying = self.retrying, {}
        for request, pause in retrying.items():
            pause.timer.cancel()
            self._end_unstarted(request, pause.retry, stopping, pause.busy)
        for walk in list(self.walking.values()):
            self._drop_walk(walk)
            self._end_unstarted(walk.request.request, walk.retry, stopping, walk.busy)
        for t in list(self.transfers.values()):
            self._end(t, ResultCode.CANCELLED, "the node is stopping")
        for url in list(self.idle_links):
            self._close_idle_link(url)
        for pipe in [p for p in self.pipes.values() if not p.users]:
            self._drop_idle_pipe(pipe)

    # -- requests -------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, FlowGrant):
            t = self._by_request(msg.request)
            if t is not None:
                t.flow.on_grant(msg.nbytes)
                self._drive(t)
        elif isinstance(msg, FlowWindow):
            t = self._by_request(msg.request)
            if t is not None:
                t.flow.on_window(msg.nbytes, msg.window, msg.decreases, self.now())
                self._drive(t)
        elif isinstance(msg, FlowPacing):
            t = self._by_request(msg.request)
            if t is not None:
                t.flow.on_pacing(msg.paced)
                self._drive(t)
        elif isinstance(msg, FlowRate):
            t = self._by_request(msg.request)
            if t is not None:
                t.flow.on_rate(msg.rate)
        elif isinstance(msg, TransfersRequest):
            self.tell(
                "control",
                TransfersReply(
                    request=msg.request,
                    transfers=codec.rows_within(sorted(self._listing(), key=codec.by_id)),
                    actor=self.name,
                ),
            )
        elif isinstance(msg, SendRequest):
            if self._sends() < self.settings.max_outgoing:
                self._start(msg)
            else:
                self.waiting.append(msg)
                self.count("queued")
        elif isinstance(msg, CancelRequest):
            for t in list(self.transfers.values()):
                if t.request.request == msg.request:
                    self._end(t, ResultCode.CANCELLED, CANCELLED_BY_USER)
            cancelled = CANCELLED_BY_USER
            for req in [r for r in self.waiting if r.request == msg.request]:
                self.waiting.remove(req)
                self.queued_as.pop(req.request, None)
                self._end_unstarted(
                    req.request,
                    self.carried.pop(req.request, None),
                    cancelled,
                    self.carried_busy.pop(req.request, None),
                )
            walk = self.walking.get(msg.request)
            if walk is not None:
                self._drop_walk(walk)
                self._end_unstarted(msg.request, walk.retry, cancelled, walk.busy)
            pause = self.retrying.pop(msg.request, None)
            if pause is not None:
                pause.timer.cancel()
                self._end_unstarted(msg.request, pause.retry, cancelled, pause.busy)
        else:
            super().on_mail(msg)

    def _listing(self) -> list[dict[str, str]]:
        rows = []
        now = self.now()
        for t in list(self.transfers.values())[:1000]:
            rows.append(
                {
                    "id": str(t.request.request),
                    "file": t.request.path[-200:],
                    "peer": t.peer,
                    "mode": t.flow.policy.mode,
                    "state": self._phase(t)[0],
                    "bytes": str(t.flow.acked_bytes),
                    "size": str(t.size),
                    "seconds": f"{now - self._send_started(t):.1f}",
                }
            )
        rows += [self._waiting_row(r, now) for r in list(self.waiting)[: 1000 - len(rows)]]
        rows += [
            w.job.row(
                ident,
                w.request.path,
                join_host_port(w.request.host, w.request.port),
                w.request.mode or "",
                now,
            )
            for ident, w in list(self.walking.items())[: max(0, 1000 - len(rows))]
            if w.job is not None
        ]
        rows += [
            {
                "id": str(request),
                "file": w.request.path[-200:],
                "peer": join_host_port(w.request.host, w.request.port),
                "mode": w.mode,
                # (a busy receiver's slot: ``error`` says why, ``next_in`` when it offers)
                "state": "retrying" if w.busy is None else "waiting",
                "bytes": str(w.done_bytes),
                "size": str(w.size),
                "seconds": f"{now - w.started:.1f}",  # the send's, every attempt's
                "attempt": str(w.attempt),
                "next_in": f"{max(0.0, w.due - now):.1f}",
                "error": w.error[:200],
            }
            for request, w in list(self.retrying.items())[: max(0, 1000 - len(rows))]
        ]
        return rows

    def _waiting_row(self, r: SendRequest, now: float) -> dict[str, str]:
        """A send waiting for one of this node's slots; a retry or a busy
        wait's next offer in line says what the send did so far (its row)."""
        row = {
            "id": str(r.request),
            "file": r.path[-200:],
            "peer": join_host_port(r.host, r.port),
            "mode": r.mode or "",
            "state": "waiting",
            "bytes": "0",
            "size": "?",
            "seconds": "0",
        }
        carried: Retries | Busy | None = self.carried.get(r.request)
        if carried is None:
            carried = self.carried_busy.get(r.request)
        if carried is not None:
            row["seconds"] = f"{now - carried.started:.1f}"
            if carried.record is not None:
                done = carried.record.done_bytes
                if isinstance(carried, Retries):
                    done = max(done, carried.done_bytes)
                row.update(bytes=str(done), size=str(carried.record.size), mode=carried.record.mode)
        return row

    def _by_request(self, request: int) -> Outgoing | None:
        for t in self.transfers.values():
            if t.request.request == request and t.flow.window is not None:
                return t
        return None

    def _sends(self) -> int:
        return len(self.transfers) + len(self.walking)

    def _walk(self, req: SendRequest, retry: Retries | None, busy: Busy | None) -> None:
        """Walk and hash a folder or several files in a thread
        (actors/tree_source.py); :meth:`_walked` goes on with the send."""
        walk = self.walking[req.request] = Walk(req, retry, busy=busy)
        self.count("walks")
        paths = [Path(p) for p in (req.path, *req.more)]
        walk.job = TreeWalk(self, paths, functools.partial(self._walked, walk), self.now())

    def _drop_walk(self, walk: Walk) -> None:
        """Forget a walk: its thread stops at its next entry or hash block
        and closes the write end; its result is ignored."""
        if self.walking.get(walk.request.request) is walk:
            del self.walking[walk.request.request]
            if walk.job is not None:
                walk.job.cancel()

    def _walked(self, walk: Walk, result: TreeSource | Exception) -> None:
        if self.walking.get(walk.request.request) is not walk:
            return
        self._drop_walk(walk)
        req = walk.request
        if isinstance(result, TreeSource):
            if walk.retry is not None:
                self.carried[req.request] = walk.retry
            if walk.busy is not None:
                self.carried_busy[req.request] = walk.busy
            self._start(req, result)
            return
        if isinstance(result, TreeError):
            reason = f"cannot send {req.path}: {result}"
        else:
            what = getattr(result, "filename", None) or req.path
            reason = f"cannot read {what}: {getattr(result, 'strerror', None) or result}"
        # (a retry's walk: the send's history row ends with it)
        self._end_unstarted(req.request, walk.retry, reason, walk.busy, code=ResultCode.LOCAL)
        while self.waiting and self._sends() < self.settings.max_outgoing:
            self._start(self.waiting.popleft())

    def _start(self, req: SendRequest, tree: TreeSource | None = None) -> None:
        self.queued_as.pop(req.request, None)
        retry = self.carried.pop(req.request, None)
        busy = self.carried_busy.pop(req.request, None)

        def fail(code: str, reason: str) -> None:
            # A retry's or a busy wait's next offer that cannot start (the
            # file gone, the same file sent meanwhile): the send ends here,
            # and its history row with it (it stayed `running`).
            self._end_unstarted(req.request, retry, reason, busy, code=code)

        try:
            policy = with_overrides(Policy(), **{n: getattr(req, n) for n in POLICY_FIELDS})
        except PolicyError as exc:
            return fail(ResultCode.LOCAL, str(exc))
        if tree is None and (req.more or os.path.isdir(req.path)):
            return self._walk(req, retry, busy)
        if tree is not None:
            source = tree_source_tag(tree.manifest)
            fd, size, mtime_ns = -1, tree.total_size, 0
        else:
            try:
                fd, st = open_source(req.path)
            except NotRegularFile as exc:
                return fail(ResultCode.LOCAL, str(exc))
            except OSError as exc:
                return fail(ResultCode.LOCAL, f"cannot read {req.path}: {exc.strerror}")
            try:
                source = version_tag(fd, st)
            except OSError as exc:
                os.close(fd)
                return fail(ResultCode.LOCAL, f"cannot read {req.path}: {exc.strerror}")
            size, mtime_ns = st.st_size, st.st_mtime_ns
        running = self._sending_already(req, source)
        if running is not None:
            if fd >= 0:
                os.close(fd)
            twin, first = running
            # Named as the running send was given: a hard link elsewhere is
            # the same file under another path.
            same = "" if first == req.path else f" (the same file as {req.path})"
            return fail(
                ResultCode.LOCAL,
                f"already sending {first}{same} to {join_host_port(req.host, req.port)} "
                f"(transfer {twin}): wait for it, or cancel transfer {twin} first",
            )
        try:  # a rate too low for even the smallest chunk: refused before the offer
            policy.check_pace(size, req.timeout)
        except PolicyError as exc:
            if fd >= 0:
                os.close(fd)
            return fail(ResultCode.LOCAL, str(exc))
        tid = os.urandom(16)
        # The scheduler says whether the node's live cap paces this send; a
        # scheduler attached from elsewhere may have a cap this node does not
        # know: start paced and let its FlowPacing say otherwise.
        capped = (
            req.node_capped
            if req.node_capped is not None
            else self.settings.max_rate > 0 or "scheduler" in self.settings.remote_actors
        )
        # A range (the receiver chooses) only as asked, and only for a flow
        # the receiver's credit governs: a paced one is cut in the smallest
        # (within its bucket), as its rate checks assume (core/modes.py,
        # paced_chunk_seconds), and so is an aimd one, whose window in bytes
        # (4 MiB to start) would hold one 4 MiB chunk.
        flexible = bool(req.min_chunk) and policy.mode not in FIXED_CHUNK_MODES and not capped
        # Not flexible: the smallest, or the scheduler's size when it cut
        # below it (a share of the node's cap moves a chunk in time).
        asked = (
            min(req.min_chunk, req.chunk_size) if req.min_chunk and not flexible else req.chunk_size
        )
        chunk_size = policy.chunk_size_for(asked, req.timeout)
        flow = OutgoingTransfer(
            policy=policy,
            size=size,
            chunk_size=chunk_size,
            min_chunk=min(req.min_chunk, chunk_size) if flexible else 0,
            timeout=req.timeout,
            now=self.now(),
            peer=join_host_port(req.host, req.port),
            node_capped=capped,
        )
        t = Outgoing(
            request=req,
            flow=flow,
            requester="control",
            tid=tid,
            fd=fd,
            mtime_ns=mtime_ns,
            eph=Initiator(self.settings.identity),
            details=OfferDetails(
                name=os.path.basename(req.path),
                size=size,
                chunk_size=flow.chunk_size,
                min_chunk=flow.min_chunk,
                hash_alg="blake3",
                mode=policy.mode,
                source=source,
                tree=len(tree.manifest) if tree is not None else 0,
                files=tree.files if tree is not None else 0,
            ),
            retry=retry,
            tree=tree,
            busy=busy,
        )
        self.transfers[tid] = t
        self.tell("stats", self._record(t, "running"))
        # Named at once (control gives the client the id `transfers` and
        # `cancel` know it by): a send that ended within its first progress
        # tick was never named, and the shell told no job of it.
        phase, done = self._phase(t)
        named = Progress(request=req.request, done_bytes=done, total_bytes=size, phase=phase)
        for batch in columns.batches([named], Progresses):
            self.tell(t.requester, batch)
        if retry is None:
            t.reach = self._reach(req)
            flow.offer_due(None)  # the check times its attempts; the offer gets its own
        self._hello(t)
        if t.tid in self.transfers:
            self._drive(t)

    def _sending_already(self, req: SendRequest, source: bytes) -> tuple[int, str] | None:
        """The id and path of a send of the same file (its source tag and name: the
        same version, whatever the path's spelling; a folder's or several
        files' tag covers them all) to the same address that is running or
        between two attempts. The receiver would take the second for the
        first's sender restarted and end the first (docs/resume.md), or,
        in chunks the first's part cannot continue, store a second copy:
        refused here either way."""
        target, same = _address(req), (source, os.path.basename(req.path))
        for t in self.transfers.values():
            if (t.details.source, t.details.name) == same and _address(t.request) == target:
                return t.request.request, t.request.path
        for request, w in self.retrying.items():  # between attempts, or waiting: busy
            if (w.source, w.name) == same and _address(w.request) == target:
                return request, w.request.path
        for r in self.waiting:  # such a one in line for one of this node's slots
            if self.queued_as.get(r.request) == same and _address(r) == target:
                return r.request, r.path
        return None

    def _reach(self, req: SendRequest) -> Reach:
        """The pre-send check's attempts, from now."""
        return Reach(
            connect_timeout=self.settings.connect_timeout,
            max_retries=self.settings.max_retries,
            budget=req.timeout,
            now=self.now(),
            rng=self.rng,
        )

    def _hello(self, t: Outgoing, fresh: bool = False) -> None:
        """Connect and ask the peer to prove its identity key (the pre-send
        check, on the connection the offer then takes: no connection and no
        round trip of its own); on a link kept from a send before unless
        ``fresh``."""
        req = t.request
        url = f"tcp://{join_host_port(req.host, req.port)}"
        on_message = functools.partial(self._on_control, t)
        on_failure = functools.partial(self._on_link_failure, t)
        kept = None if fresh else self._idle_link(url)
        t.link_kept = kept is not None
        if kept is not None:
            t.link, t.answered = kept.link, kept.answered
            t.link.on_message, t.link.on_failure = on_message, on_failure
            self.count("links-reused")
        else:
            t.answered = deque(maxlen=HELLO_MEMORY)
            t.link = Link(
                self,
                self.settings,
                url,
                on_message,
                monitored=True,
                on_failure=on_failure,
            )
        if t.link.failure:
            return self._end(t, t.link.failure, t.link.detail)
        t.challenge = HelloChallenge()
        t.link.send(Hello(challenge=t.challenge.public))
        self.count("hellos")
        if t.reach is not None:
            wait = t.reach.attempt(self.now())
            t.reach_timer = self.call_later(
                wait, functools.partial(self._on_hello_timeout, t, t.link, wait)
            )

    def _on_hello_timeout(self, t: Outgoing, link: Link, wait: float) -> None:
        """An attempt got no answer in time: a peer that is not even
        connected is tried again; one that connected and stays silent is left
        to the offer's own deadline (the host is up)."""
        if t.tid not in self.transfers or t.link is not link or t.challenge is None:
            return
        if t.link_kept:
            # Silence on a link kept from a send before says nothing of the
            # host (it may have gone silent while the link was kept: no FIN,
            # no RST): the check asks again on a connection of its own, which
            # tells an unreachable host from one that is up but slow, with
            # attempts of its own (the check's whole budget again: what a
            # send without a kept link would have had).
            self.count("kept-links-unanswered")
            link.close()
            t.challenge = None
            t.reach = self._reach(t.request)
            return self._hello(t, fresh=True)
        code, reason = link.timeout_reason(wait)
        if code != ResultCode.TIMEOUT:
            return self._not_reached(t, code, reason)
        # The host is up: the check is over, and the hello waits for the
        # receiver like an offer would (phase "offering"), until --timeout.
        self.count("hellos-unanswered")
        t.reach = None
        t.flow.offer_due(self.now() + t.request.timeout)
        self._drive(t)

    def _not_reached(self, t: Outgoing, code: str, reason: str) -> None:
        """The pre-send check's attempt failed: retry an unreachable peer
        while the check's retries and budget last, else refuse the send."""
        assert t.reach is not None
        delay = t.reach.retry_in(self.now()) if code == ResultCode.UNREACHABLE else None
        if delay is None:
            return self._unchecked(t, code, reason)
        if t.reach_timer is not None:
            t.reach_timer.cancel()
        if t.link is not None:
            t.link.close()
            t.link = None
        t.challenge = None
        self.count("hello-retries")
        t.reach_timer = self.call_later(delay, functools.partial(self._hello_again, t))

    def _hello_again(self, t: Outgoing) -> None:
        if t.tid in self.transfers and t.link is None:
            self._hello(t)

    def _unchecked(self, t: Outgoing, code: str, reason: str) -> None:
        """The pre-send check could not reach the peer, or it refused us:
        end the send (nothing was offered), with the hint at ``--force`` for
        an unreachable peer. With ``--force``, try anyway: one more
        connection and hello, as a send without a check, the offer given its
        own ``--timeout`` (a peer that comes up meanwhile gets the file)."""
        if not t.request.force:
            if code == ResultCode.UNREACHABLE:
                reason = f"{reason}; `send --force` tries anyway"
            return self._end(t, code, reason)
        self.count("forced-sends")
        log.info("sending to %s despite: %s", t.peer, reason)  # (the user asked: --force)
        t.reach, t.challenge = None, None  # the check is over
        if t.reach_timer is not None:
            t.reach_timer.cancel()
        if t.link is not None:
            t.link.close()
            t.link = None
        t.flow.offer_due(self.now() + t.request.timeout)
        self._hello(t)
        if t.tid in self.transfers:
            self._drive(t)

    def _offer(self, t: Outgoing, key: bytes, offer_key: bytes = b"") -> None:
        """Offer the file to the node that proved ``key`` at the address, if
        it is the one we trust there; what the file is goes sealed to that key
        (or to the ``offer_key`` its proof vouched for: a receiver it runs
        attached elsewhere), and only that key's holder can accept."""
        req = t.request
        try:
            decision = self.known_peers.check(
                req.host, req.port, fingerprint(key), req.expect, req.members
            )
        except UnreadablePins as exc:  # (whom to trust is unknown: nothing is offered)
            return self._end(t, ResultCode.LOCAL, f"{exc}; nothing was sent")
        if not decision.trusted:
            return self._end(t, ResultCode.UNTRUSTED, explain(decision, req.host, req.port))
        try:
            sealed = t.eph.seal_details(t.tid, offer_key or key, codec.encode(t.details))
        except ValueError:
            return self._end(t, ResultCode.PROTOCOL, f"{t.peer} proved an invalid key")
        t.receiver_key, t.node_key = offer_key or key, key
        assert t.link is not None
        t.link.send(Offer(tid=t.tid, eph_pub=t.eph.public, details=sealed))
        self.count("offers")
        if t.reach is not None:  # after the check, the offer has its own --timeout
            t.flow.offer_due(self.now() + req.timeout)
            self._drive(t)

    # -- control plane replies ----------------------------------------------------------

    def _on_link_failure(self, t: Outgoing) -> None:
        if t.tid in self.transfers and t.flow.phase is Phase.OFFERED and t.link is not None:
            if t.checking:  # the pre-send check
                return self._not_reached(t, t.link.failure, t.link.detail)
            t.port_closed = t.link.cause == REFUSED
            self._end(t, t.link.failure, t.link.detail)

    def _on_control(self, t: Outgoing, msg: codec.Message) -> None:
        if t.tid not in self.transfers or t.flow.phase is not Phase.OFFERED:
            return
        if isinstance(msg, HelloReply) and t.challenge is not None:
            if msg.proof in t.answered:
                # A replay of a reply taken before on this (kept) link, sent
                # again by the peer: not this hello's answer, which may follow.
                self.count("hellos-stale")
                return
            challenge, t.challenge = t.challenge, None
            if t.reach_timer is not None:
                t.reach_timer.cancel()
            try:
                challenge.verify(msg.node_id, msg.version, msg.proof, msg.offer_key)
            except ProofError:
                who = fingerprint(msg.node_id)
                if t.checking and not t.request.force:  # the pre-send check's words
                    reason = f"{t.peer} named key {who} but could not prove it holds it"
                else:
                    reason = (
                        f"{t.peer} could not prove it holds the key it named ({who}); "
                        "nothing was sent"
                    )
                return self._end(t, ResultCode.IMPOSTOR, reason)
            t.answered.append(msg.proof)
            self._offer(t, msg.node_id, msg.offer_key)
        elif isinstance(msg, Accept) and msg.tid == t.tid and t.receiver_key:
            self._on_accept(t, msg)
        elif isinstance(msg, Refuse) and msg.tid == t.tid and msg.code == "wrong-receiver":
            who = fingerprint(t.receiver_key)
            reason = f"{t.peer} cannot read an offer sealed to {who}; nothing was sent"
            self._end(t, ResultCode.IMPOSTOR, reason)
        elif isinstance(msg, Refuse) and msg.tid == t.tid:
            # Busy: the send waits for a slot there (_end). So does a retry
            # refused "verifying": an earlier attempt of this very send is
            # in the receiver's final check (its verdict was lost: the retry
            # is what finds it out), and that check's end lets the offer in,
            # answered from the receiver's table of delivered files. (A
            # first attempt so refused is another send of the file: final.)
            retry = t.retry is not None and t.retry.attempt > 1
            if not_now(msg.code) or (retry and msg.code == "verifying"):
                t.not_now = printable(msg.reason) or msg.code
                t.in_check = msg.code == "verifying"
            self._end(t, ResultCode.REFUSED, f"{t.peer} refused: {printable(msg.reason)}")
        elif isinstance(msg, ErrorReply):
            self._end(
                t, ResultCode.REFUSED, f"{t.peer} rejected the offer: {printable(msg.reason)}"
            )
        else:
            self.count("control-unexpected")

    def _on_accept(self, t: Outgoing, accept: Accept) -> None:
        if not hmac.compare_digest(accept.static_pub, t.receiver_key):
            named, proven = fingerprint(accept.static_pub), fingerprint(t.receiver_key)
            reason = (
                f"{t.peer} answered as {named}, not as the {proven} it proved; nothing was sent"
            )
            return self._end(t, ResultCode.IMPOSTOR, reason)
        try:
            secrets = t.eph.finish(t.tid, accept.static_pub, accept.eph_pub, accept.proof)
            have = pairs(accept.have)
        except ProofError:
            who = fingerprint(accept.static_pub)
            reason = f"{t.peer} could not prove it holds the key it named ({who}); nothing was sent"
            return self._end(t, ResultCode.IMPOSTOR, reason)
        except ValueError as exc:
            return self._end(t, ResultCode.PROTOCOL, f"{t.peer} sent an invalid accept: {exc}")
        flow = t.flow
        if not flow.allows_chunk(accept.chunk_size):
            offered = f"{flow.min_chunk or flow.chunk_size}..{flow.chunk_size}"
            reason = (
                f"{t.peer} sent an invalid accept: chunks of {accept.chunk_size} bytes, "
                f"outside the {offered} offered"
            )
            return self._end(t, ResultCode.PROTOCOL, reason)
        if accept.data_host and not dialable_host(accept.data_host):
            reason = (
                f"{t.peer} sent an invalid accept: its data host "
                f"'{printable(accept.data_host)}' is no host name or address"
            )
            return self._end(t, ResultCode.PROTOCOL, reason)
        t.proven = fingerprint(accept.static_pub)
        t.keys = TransferKeys.for_sender(t.tid, secrets)
        host = accept.data_host or t.request.host
        tcp_url = f"tcp://{join_host_port(host, accept.data_port)}"
        ipc = None
        mine = local_ipc.host_tag(self.host_id, t.tid, secrets) if self.host_id else ""
        if (
            accept.data_ipc
            and mine
            and local_ipc.well_formed(accept.data_ipc, accept.host_tag, mine)
        ):
            ipc = f"ipc://{accept.data_ipc}"  # a claim: checked when dialled (_pipe)
        address = (host, accept.data_port)
        try:
            first = self._pipe(tcp_url, ipc, 0, address, t.proven)
        except zmq.ZMQError as exc:
            return self._undialled(t, tcp_url, exc)
        flow.host_local = first.url != tcp_url  # lanes add nothing on this host's socket
        flow.on_accept(have, accept.window, self.now(), accept.chunk_size)
        if flow.resumed:  # the history's series counts only the bytes that cross
            self.tell("stats", self._record(t, "running"))
        ring = bool(accept.data_ring and mine and self.settings.shm_ring and flow.lanes == 1)
        if ring and any(o.ring is not None for o in self.transfers.values()):
            # One ring at a time: its pages count in this node's RSS too.
            self.count("data-ring-busy")
        elif ring:
            t.ring = shm_ring.open_ring(
                accept.data_ring,
                accept.ring_token,
                accept.ring_slots,
                t.chunk_size + TAG_BYTES,
                accept.host_tag,
                mine,
            )
            self.count("data-ring" if t.ring is not None else "data-ring-refused")
        for lane in range(flow.lanes):
            try:
                pipe = first if lane == 0 else self._pipe(tcp_url, ipc, lane, address, t.proven)
            except zmq.ZMQError as exc:
                return self._undialled(t, tcp_url, exc)
            pipe.users[t.tid] = t
            t.pipes.append(pipe)
            t.broken = t.broken or pipe.broken
            # First on the connection, before any chunk of this transfer: the
            # receiver takes its frames from this connection from now on.
            self._send_sealed(t, Attach(route=pipe.route), pipe.sock)
        self.count("data-ipc" if t.pipes[0].url != tcp_url else "data-tcp")
        if t.retry is None:
            t.retry = Retries(
                Backoff(
                    min(RETRY_INITIAL, t.request.timeout),
                    max_delay=max(RETRY_INITIAL, t.request.timeout),
                    max_retries=self.settings.max_retries,
                    rng=self.rng,
                ),
                Backoff(
                    CLOSED_RETRY_INITIAL, max_delay=CLOSED_RETRY_MAX, max_retries=None, rng=self.rng
                ),
                # (a send that waited for a busy receiver began at its first offer)
                started=self._send_started(t),
                held=flow.resumed / flow.total if flow.total else 0.0,  # empty: none held
                session=self._session(t),
                wall=t.busy.wall if t.busy is not None else t.wall,
                record=t.busy.record if t.busy is not None else None,
            )
        elif t.retry.held_again:  # the accept of the offer that sends it whole
            t.retry.held_again = False
            t.retry.held = flow.resumed / flow.total if flow.total else 0.0
        t.retry.closed_since = None  # the receiver is back
        t.retry.closed.reset()
        t.data = t.pipes[0].sock
        if flow.sealing_workers:
            held = ChunkBitmap(flow.total)
            held.add_ranges(have)
            workers = crew_size(flow.lanes, os.cpu_count())
            t.crew = LaneCrew(t.keys, t.source, t.size, t.chunk_size, workers, skip=held)
            self.watch(t.crew.wake_fd, functools.partial(self._on_crew, t))
        self.tell("scheduler", self._flow_start(t))
        # The control connection's job is done: kept for the next send there.
        if t.link is not None:
            self._park_link(t.link, t.answered)
            t.link = None
        self._drive(t)

    def _park_link(self, link: Link, answered: deque[bytes]) -> None:
        """Keep a send's control link open for :data:`IDLE_KEEP` seconds, for
        the next send to the same address (its hello and offer then go at
        once, without a new connection's round trips); closed instead when
        it is not connected now (one that dropped just before the accept:
        libzmq would only redial it) or :data:`IDLE_LINKS` already wait.
        One that drops while kept is closed at once (it would not be taken
        again)."""
        url = link.url
        if not link.up():
            self.count("links-down-not-kept")
            link.close()
            return
        if url in self.idle_links or len(self.idle_links) >= IDLE_LINKS:
            link.close()
            return
        link.on_message = self._on_idle_control
        link.on_failure = functools.partial(self._close_idle_link, url)
        link.on_state = functools.partial(self._on_idle_link_state, link)
        timer = self.call_later(IDLE_KEEP, functools.partial(self._close_idle_link, url))
        self.idle_links[url] = KeptLink(link, link.disconnects, timer, answered)
        self.count("links-kept")

    def _idle_link(self, url: str) -> KeptLink | None:
        """A link kept to ``url`` that is still sound (connected now and
        not dropped since its send, even if it came back: a peer that went
        away meanwhile is dialled afresh, and its failure told as such),
        taken out of the idle ones."""
        kept = self.idle_links.pop(url, None)
        if kept is None:
            return None
        kept.timer.cancel()
        link = kept.link
        if not link.up() or link.disconnects != kept.disconnects:
            link.close()
            return None
        link.on_state = None
        return kept

    def _on_idle_link_state(self, link: Link) -> None:
        kept = self.idle_links.get(link.url)
        if kept is not None and kept.link is link and not link.connected:
            self.count("kept-links-dropped")
            self._close_idle_link(link.url)

    def _close_idle_link(self, url: str) -> None:
        kept = self.idle_links.pop(url, None)
        if kept is not None:
            kept.timer.cancel()
            kept.link.close()

    def _on_idle_control(self, _msg: codec.Message) -> None:
        self.count("control-unexpected")  # a late reply to a send that went on

    def _undialled(self, t: Outgoing, url: str, exc: zmq.ZMQError) -> None:
        """End ``t``, whose data connection to ``url`` libzmq refused to
        make (an address it cannot read: the receiver's; else this node's)."""
        cause = zmq.strerror(exc.errno) if exc.errno is not None else str(exc)
        where = f"{printable(url)}: {cause}"
        if exc.errno == errno.EINVAL:
            reason = f"{t.peer} sent an invalid accept: cannot connect to its data address {where}"
            return self._end(t, ResultCode.PROTOCOL, reason)
        self._end(t, ResultCode.LOCAL, f"cannot connect to {t.peer}'s data address {where}")

    def _pipe(
        self, tcp_url: str, ipc: str | None, lane: int, address: tuple[str, int], receiver: str
    ) -> DataPipe:
        """The data connection of ``lane`` to the receiver ``receiver`` (its
        proven fingerprint) at ``tcp_url`` (or the Unix socket ``ipc`` it
        named): the one its other transfers use, or a new one. A new one
        dials ``ipc`` only if the path passes local_ipc's checks now; a
        connection kept was checked when it was made (the file system's
        walk and a probe connect for each transfer were a seventh of the
        sending thread's CPU per send). Raises zmq.ZMQError if libzmq will
        not connect to the address (nothing of the new connection is kept)."""
        key = (tcp_url, ipc or "", lane, receiver)
        pipe = self.pipes.get(key)
        if pipe is not None and pipe.idle is not None:
            # Its monitor's pending events first (as Link.up): a break libzmq
            # already saw closes it now, not after a transfer took it.
            self._on_data_monitor(pipe, pipe.monitor)
            pipe = self.pipes.get(key)
        if pipe is not None and not pipe.users and pipe.broken:
            self._drop_idle_pipe(pipe)  # it dropped while idle: connect afresh
            pipe = None
        if pipe is not None:
            if pipe.idle is not None:
                pipe.idle.cancel()
                pipe.idle = None
                self.count("data-connections-reused")
            return pipe
        data = self.socket(zmq.DEALER, data_plane=True)
        monitor: zmq.Socket[Any] | None = None  # (pipe is None here)
        try:
            # Random, not one transfer's: each transfer names it in its own sealed
            # Attach, and the receiver takes that transfer's frames from it only.
            # A reconnect keeps the id (and takes over the connection it lost).
            route = data.routing_id = new_route_id(lane)
            # Credit (at most 4096 chunks, SEND_BUFFER bytes, per transfer) bounds
            # what is queued, so the send queue never fills; replies (at most one
            # per chunk sent) are read as they come (PEER_RCVHWM).
            data.sndhwm = DATA_SNDHWM * max(1, self.settings.max_outgoing)
            data.rcvhwm = PEER_RCVHWM
            data.maxmsgsize = DATA_MAXMSGSIZE
            data.setsockopt(zmq.TCP_MAXRT, DATA_MAXRT_MS)
            data.heartbeat_ivl = DATA_HEARTBEAT_MS
            data.heartbeat_timeout = 4 * DATA_HEARTBEAT_MS
            data.reconnect_ivl = DATA_RECONNECT_MS
            data.reconnect_ivl_max = 0
            data.connect_timeout = DATA_CONNECT_MS
            address_url = f"inproc://pc-{self.env.node_uid}/sender-data/{next(_monitor_ids)}"
            data.monitor(
                address_url,
                zmq.EVENT_HANDSHAKE_SUCCEEDED
                | DIAL_EVENTS
                | zmq.EVENT_CONNECT_RETRIED
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            )
            monitor = self.socket(zmq.PAIR)
            monitor.connect(address_url)
            url = tcp_url
            if ipc is not None and local_ipc.checked_target(ipc.removeprefix("ipc://")) is not None:
                url = ipc
            pipe = DataPipe(key, data, monitor, route, url, tcp_url, address)
            self.watch(monitor, functools.partial(self._on_data_monitor, pipe))
            dial(data, url)
        except zmq.ZMQError:  # (out of sockets, an address libzmq refuses): nothing stays
            if pipe is not None:
                self._close_pipe(pipe)  # the socket, its monitor and their watches
            else:
                with contextlib.suppress(zmq.ZMQError):
                    data.disable_monitor()
                if monitor is not None:
                    self.close_socket(monitor)
                self.close_socket(data)
            raise
        self.watch(data, functools.partial(self._on_data, pipe))
        self.pipes[key] = pipe
        self.count("data-connections")
        return pipe

    def _leave_pipes(self, t: Outgoing) -> None:
        """``t`` no longer uses its connections: one it was the last user of
        waits :data:`IDLE_KEEP` seconds for the next transfer to the same
        receiver (at most :data:`IDLE_PIPES` wait; a broken one does not),
        then takes no new transfer and is closed after :data:`CLOSE_GRACE`
        (its last Failed needs a moment to leave; LINGER 0 would drop it)."""
        for pipe in t.pipes:
            pipe.users.pop(t.tid, None)
            if pipe.users or self.pipes.get(pipe.key) is not pipe:
                continue
            idle = sum(1 for p in self.pipes.values() if p.idle is not None)
            if pipe.broken or idle >= IDLE_PIPES:
                self._drop_idle_pipe(pipe)
                continue
            pipe.idle = self.call_later(IDLE_KEEP, functools.partial(self._drop_idle_pipe, pipe))

    def _drop_idle_pipe(self, pipe: DataPipe, grace: bool = True) -> None:
        """Take ``pipe`` (no transfer uses it) out of the table and close it
        after :data:`CLOSE_GRACE` (at once without ``grace``)."""
        if pipe.users or self.pipes.get(pipe.key) is not pipe:
            return
        if pipe.idle is not None:
            pipe.idle.cancel()
            pipe.idle = None
        del self.pipes[pipe.key]
        if pipe.probe is not None:
            pipe.probe.close()
            pipe.probe = None
        if grace:
            self.call_later(CLOSE_GRACE, functools.partial(self._close_pipe, pipe))
        else:
            self._close_pipe(pipe)

    def _close_pipe(self, pipe: DataPipe) -> None:
        self.data_watch.forget_owner(pipe.route)
        with contextlib.suppress(zmq.ZMQError):
            pipe.sock.disable_monitor()
        self.close_socket(pipe.monitor)
        if not pipe.sock.closed:
            self.close_socket(pipe.sock)

    def _flow_start(self, t: Outgoing) -> FlowStart:
        flow, p = t.flow, t.flow.policy
        rate, burst = flow.flow_rate
        return FlowStart(
            request=t.request.request,
            priority=p.priority,
            rate=rate,
            burst=burst,
            paced=flow.paced,
            chunk_size=t.chunk_size,
            peer=t.peer,
            congestion=flow.congestion_managed,
            window_kb=p.window_kb,
            min_window_kb=p.min_window_kb,
            max_window_kb=p.max_window_kb,
            timeout_detect=p.timeout_detect,
            dupack_detect=p.dupack_detect,
        )

    def on_actor_restarted(self, name: str) -> None:
        # A scheduler that crashed (or was attached anew) knows no flow: announce
        # the running ones again, and let paced flows ask for grants afresh.
        if name != "scheduler":
            return
        for t in list(self.transfers.values()):
            if t.pipes:
                self.tell("scheduler", self._flow_start(t))
                t.flow.on_pacing(t.flow.paced)
                self._drive(t)

    # -- data plane --------------------------------------------------------------------

    def _drive(self, t: Outgoing) -> None:
        """Do what the transfer asks for until it asks for nothing more (an
        action may feed it, e.g. the hash), then arm its next timer."""
        while t.tid in self.transfers:
            outputs = t.flow.poll(self.now())
            if not outputs:
                break
            try:
                for out in outputs:
                    if isinstance(out, SendChunk):
                        self._send_chunk(t, out.index, out.last)
                        continue
                    if t.slotted:  # the chunks' descriptors go before anything else
                        self._send_slotted(t)
                    if isinstance(out, HashFile):
                        self._hash_file(t)
                    elif isinstance(out, SendDone):
                        self._send_sealed(t, Done(digest=out.digest, chunks=out.chunks))
                    elif isinstance(out, Reattach):
                        self.count("reattached")
                        for pipe in t.pipes:
                            self._send_sealed(t, Attach(route=pipe.route), pipe.sock)
                    elif isinstance(out, ReportCongestion):
                        report = FlowReport(
                            request=t.request.request,
                            sent=out.sent,
                            acked=out.acked,
                            losses=out.losses,
                            timeouts=out.timeouts,
                            in_flight=out.in_flight,
                        )
                        self.tell("scheduler", report)
                    elif isinstance(out, RequestGrant):
                        demand = FlowDemand(request=t.request.request, nbytes=out.nbytes)
                        self.tell("scheduler", demand)
                    elif isinstance(out, Finished):
                        return self._end(t, ResultCode.OK, "", stored_as=out.stored_as)
                    else:
                        code, reason = out.code, out.reason
                        if out.offer_expired and t.link is not None:
                            code, reason = t.link.timeout_reason(t.request.timeout)
                        return self._end(t, code, reason)
            except OSError as exc:
                return self._end(t, ResultCode.LOCAL, _read_failed(t.request.path, exc))
            if t.slotted:
                self._send_slotted(t)
        if t.timer is not None:
            t.timer.cancel()
        due = t.flow.next_timer()
        if due is not None and t.tid in self.transfers:
            t.timer = self.call_later(due - self.now(), functools.partial(self._on_timer, t))

    def _ipc_to_tcp(self, pipe: DataPipe) -> None:
        """The receiver's Unix socket failed (it went away, or what listens
        there is not it): the connection goes to its TCP data port instead,
        and what its transfers had in flight is sent again once it connects."""
        with contextlib.suppress(zmq.ZMQError):
            pipe.sock.disconnect(pipe.url)
        dial(pipe.sock, pipe.tcp_url)
        pipe.url = pipe.tcp_url
        self._broken(pipe)
        self.count("data-ipc-fallbacks")
        log.info("%s: the Unix data socket failed; chunks go over TCP", pipe.address[0])

    def _broken(self, pipe: DataPipe) -> None:
        pipe.broken = True
        for t in pipe.users.values():
            t.broken = True

    def _on_data_monitor(self, pipe: DataPipe, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                message = recv_monitor_message(sock, zmq.NOBLOCK)
            except zmq.Again:
                break
            event = message["event"]
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_DISCONNECTED):
                self.data_watch.on_event(message, owner=pipe.route)
            if event == zmq.EVENT_CONNECTED:
                continue
            if pipe.idle is not None and event in IDLE_BREAKS:
                # It broke while no transfer uses it: closed now, not
                # redialled every DATA_RECONNECT_MS until IDLE_KEEP (nothing
                # of a transfer waits on it).
                if event == zmq.EVENT_DISCONNECTED:
                    self.count("data-disconnects")
                self.count("data-idle-dropped")
                self._drop_idle_pipe(pipe, grace=False)
                return
            if pipe.url != pipe.tcp_url and event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._ipc_to_tcp(pipe)
            if event == zmq.EVENT_DISCONNECTED:
                self._broken(pipe)
                self.count("data-disconnects")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and pipe.broken:
                pipe.broken = False
                self.count("data-reconnects")
                for t in list(pipe.users.values()):
                    if t.tid not in self.transfers or t.flow.ended:
                        continue
                    # The first one may have been lost with the old connection.
                    self._send_sealed(t, Attach(route=pipe.route), pipe.sock)
                    if t.broken:
                        t.broken = False
                        t.flow.on_reconnect(self.now())
                        self._drive(t)
            elif event == zmq.EVENT_CONNECT_RETRIED and pipe.broken and pipe.probe is None:
                self._probe_data(pipe)

    def _on_data_flood(self, route: Any) -> None:
        """The watch closed the data connection ``route`` names: its receiver
        sent more than the node holds unread (a receiver sends at most an
        ack per chunk). Its transfers fail and the socket is closed now (not
        reconnected, and what libzmq queued of it is freed)."""
        pipe = next((p for p in self.pipes.values() if p.route == route), None)
        if pipe is None:
            return
        del self.pipes[pipe.key]
        if pipe.probe is not None:
            pipe.probe.close()
            pipe.probe = None
        for t in list(pipe.users.values()):
            if t.tid in self.transfers:
                self._end(t, ResultCode.PROTOCOL, FLOODED)
        self._close_pipe(pipe)

    def _probe_data(self, pipe: DataPipe) -> None:
        """The data connection does not come back: a killed receiver (its
        port refuses) is not waited out like a silent one."""
        if not pipe.users:
            return
        host, port = pipe.address
        try:
            probe = ConnectProbe(self, host, port, functools.partial(self._on_data_probe, pipe))
        except (OSError, IndexError):
            return
        if probe.sock is not None:
            pipe.probe = probe
            self.call_later(PROBE_LIMIT, functools.partial(self._drop_probe, pipe, probe))

    def _drop_probe(self, pipe: DataPipe, probe: ConnectProbe) -> None:
        probe.close()  # a silent network: the transfers' own timeouts decide
        if pipe.probe is probe:
            pipe.probe = None

    def _on_data_probe(self, pipe: DataPipe, code: int) -> None:
        pipe.probe = None
        if code != errno.ECONNREFUSED or not pipe.broken:
            return
        for t in list(pipe.users.values()):
            if t.broken and t.tid in self.transfers:
                t.port_closed = True
                self.count("data-refused")
                self._end(t, ResultCode.UNREACHABLE, f"the receiver's port closed ({REFUSED})")

    def _on_timer(self, t: Outgoing) -> None:
        if t.tid in self.transfers:
            t.flow.on_timer(self.now())
            self._drive(t)

    def _read(self, t: Outgoing, index: int) -> bytes:
        return read_chunk(t.source, index, t.chunk_size, t.size)

    def _send_chunk(self, t: Outgoing, index: int, last: bool) -> None:
        if t.crew is not None:
            t.crew.submit(index)
            return
        assert t.keys is not None
        # Chunks the receiver already held (resume) are hashed a few per sent
        # chunk, not all before the first one; the rest when Done is due.
        for _ in range(HASH_CATCH_UP):
            if t.hashed >= index:
                break
            t.hasher.update(self._read(t, t.hashed))
            t.hashed += 1
        chunk = self._read(t, index)
        if index == t.hashed:
            t.hasher.update(chunk)
            t.hashed += 1
        if t.ring is not None:
            slot = t.ring.slots.take(len(chunk) + TAG_BYTES)
            if slot is not None:  # sealed into the receiver's ring: a descriptor only
                seq, offset = slot
                nonce = t.keys.seal_chunk_into(
                    index, last, chunk, t.ring.slot(offset, len(chunk) + TAG_BYTES)
                )
                header = SlotHeader(tid=t.tid, index=index, last=last, nonce=nonce, seq=seq)
                t.slotted.append(codec.encode(header))
                if len(t.slotted) >= shm_ring.MAX_BATCH:
                    self._send_slotted(t)
                return
            self.count("data-ring-full")  # every slot unreleased: over the socket
            if t.slotted:  # after the descriptors of the chunks sealed before it:
                self._send_slotted(t)  # out of order, it would look like their loss
        ring = self.sealed.ring(t.chunk_size + TAG_BYTES)
        buffer = ring.take()
        if buffer is None:  # every buffer is still being sent: a new one
            self.count("sealed-unpooled")
            nonce, sealed = t.keys.seal_chunk(index, last, chunk)
            self._put_chunk(t, index, last, nonce, sealed)
            return
        view = memoryview(buffer)[: len(chunk) + TAG_BYTES]
        nonce = t.keys.seal_chunk_into(index, last, chunk, view)
        ring.sent(buffer, self._put_chunk(t, index, last, nonce, view, track=True))

    def _send_slotted(self, t: Outgoing) -> None:
        """The descriptors of the chunks just sealed into the ring, in one
        message (one per drive, not one per chunk: fewer messages for both
        sides, and a receiver's queue of a few messages holds many)."""
        t.pipes[0].sock.send_multipart(t.slotted)
        t.slotted = []

    def _put_chunk(
        self,
        t: Outgoing,
        index: int,
        last: bool,
        nonce: bytes,
        sealed: bytes | memoryview,
        track: bool = False,
    ) -> zmq.MessageTracker | None:
        """Send a sealed chunk without copying it; ``track``: return the
        tracker that says when ZeroMQ is done reading ``sealed``."""
        header = codec.encode(ChunkHeader(tid=t.tid, index=index, last=last, nonce=nonce))
        lane = t.pipes[t.next_lane % len(t.pipes)].sock
        t.next_lane += 1
        return lane.send_multipart([header, sealed], copy=False, track=track)

    def _hash_file(self, t: Outgoing) -> None:
        """Every chunk is acked: the rest of the hash (the lanes bring theirs),
        and the file must be the one whose chunks were sent."""
        if t.tree is not None:
            changed = t.tree.changed()
            if changed:
                t.flow.fail(ResultCode.LOCAL, f"{changed} changed while it was being sent")
                return
        elif changed_since(t.fd, t.size, t.mtime_ns):
            t.flow.fail(ResultCode.LOCAL, f"{t.request.path} changed while it was being sent")
            return
        if t.crew is not None:
            return  # the lanes' hash result calls on_digest
        self._hash_more(t)

    def _hash_more(self, t: Outgoing) -> None:
        """Hash the rest of the file (after a resume: the chunks the receiver
        held) a step at a time, so the actor's other transfers, its progress
        reports and cancels go on meanwhile."""
        end = min(t.flow.total, t.hashed + max(1, HASH_STEP // t.chunk_size))
        while t.hashed < end:
            t.hasher.update(self._read(t, t.hashed))
            t.hashed += 1
        if t.hashed < t.flow.total:
            self.call_later(0.0, functools.partial(self._hash_later, t))
        else:
            t.flow.on_digest(t.hasher.digest(), self.now())

    def _hash_later(self, t: Outgoing) -> None:
        if t.tid not in self.transfers or t.flow.ended:
            return
        try:
            self._hash_more(t)
        except OSError as exc:
            return self._end(t, ResultCode.LOCAL, _read_failed(t.request.path, exc))
        self._drive(t)

    def _on_crew(self, t: Outgoing, _fd: object = None) -> None:
        if t.crew is None or t.tid not in self.transfers:
            return
        for result in t.crew.drain():
            if isinstance(result, ChunkSealed):
                self._put_chunk(t, result.index, result.last, result.nonce, result.sealed)
            elif isinstance(result, FileHashed):
                t.flow.on_digest(result.digest, self.now())
            else:
                t.flow.fail(ResultCode.LOCAL, f"reading {t.request.path} failed: {result.text}")
        self._drive(t)

    def _send_sealed(
        self, t: Outgoing, msg: codec.Message, sock: zmq.Socket[Any] | None = None
    ) -> None:
        """``msg`` sealed with ``t``'s keys, on ``sock`` (else its first lane)."""
        sock = sock or t.data
        assert t.keys is not None and sock is not None
        nonce, sealed = t.keys.seal_message(codec.encode(msg))
        sock.send_multipart([codec.encode(SealedHeader(tid=t.tid, nonce=nonce)), sealed])

    def _on_data(self, pipe: DataPipe, sock: zmq.Socket[Any]) -> None:
        """Replies on a shared connection: each goes to the transfer its
        header names, if that transfer uses this connection, and is opened
        with that transfer's keys only."""
        moved: dict[bytes, Outgoing] = {}
        for _ in range(DATA_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.data_watch.delivered_to(pipe.route, map(len, frames))
            try:
                if len(frames) != 2:
                    raise codec.DecodeError("frames", str(len(frames)))
                header = codec.decode_as(frames[0], SealedHeader, 512)
            except codec.DecodeError as exc:
                self.count("data-dropped")
                self.log_limited("sender: dropped a frame from %s: %s", pipe.address[0], exc)
                continue
            t = pipe.users.get(header.tid)
            if t is None and header.tid in self.transfers:  # not a transfer of this connection
                self.count("data-dropped")
                continue
            if t is None or t.keys is None or t.flow.ended or t.tid not in self.transfers:
                self.count("data-after-end")  # e.g. an ack still on its way at the end
                continue
            try:
                msg = codec.decode(t.keys.open_message(header.nonce, frames[1]), 4096)
            except (codec.DecodeError, OpenError) as exc:
                self.count("data-dropped")
                self.log_limited("sender: dropped a frame from %s: %s", t.peer, exc)
                continue
            moved[t.tid] = t
            if isinstance(msg, Ack):
                try:
                    sack = pairs(msg.sack)
                except ValueError:
                    self.count("data-dropped")
                    continue
                t.flow.on_ack(msg.cumulative, sack, msg.window, self.now())
                if t.ring is not None:
                    t.ring.slots.on_released(msg.released)
            elif isinstance(msg, Verified):
                t.flow.on_verified(msg.digest, printable(msg.stored_as))
            elif isinstance(msg, Verifying):
                t.flow.on_verifying(self.now())
                t.checked = min(t.size, msg.done_bytes)
            elif isinstance(msg, Failed):
                t.flow.on_failed(msg.code, printable(msg.reason))
        for t in moved.values():
            self._drive(t)

    # -- progress and the end --------------------------------------------------------

    def _progress(self) -> None:
        """Every send's Progress and every running transfer's statistics
        sample: one message per destination (the requester, stats), not one
        per transfer."""
        samples: list[StatsSample] = []
        progress: dict[str, list[Progress]] = {}
        self.ticks += 1
        running = sum(1 for t in self.transfers.values() if t.flow.window is not None)
        if self.ticks % SOURCE_CHECK_TICKS == 0:
            for t in [t for t in self.transfers.values() if self._source_changed(t)]:
                # Failed now, not after every chunk crossed (its hash would not
                # match): a file rewritten in place (`dd conv=notrunc`) kept its size.
                t.flow.fail(ResultCode.LOCAL, f"{t.request.path} changed while it was being sent")
                self.count("source-changed")
                self._drive(t)
        now, cpu = self.now(), time.process_time()
        ran, self._tick_cpu = cpu - self._tick_cpu, cpu
        for t in self.transfers.values():
            paused = t.flow.paused
            t.flow.on_tick(now, PROGRESS_INTERVAL, ran)
            if t.flow.paused > paused:  # (this node did not run: not the receiver's silence)
                self.count("paused-here")
            phase, done = self._phase(t)
            progress.setdefault(t.requester, []).append(
                Progress(
                    request=t.request.request,
                    done_bytes=done,
                    total_bytes=t.size,
                    phase=phase,
                    done_files=(t.tree.layout.files_done(t.flow.acked_bytes) if t.tree else 0),
                    total_files=t.tree.files if t.tree else 0,
                )
            )
            if t.flow.window is not None and sample_due(t.tid[0], self.ticks, running):
                samples.append(self._sample(t))
        idle = [(r.request, "waiting") for r in self.waiting]
        idle += [(r, "retrying" if w.busy is None else "waiting") for r, w in self.retrying.items()]
        idle += [(request, "walking") for request in self.walking]
        for request, phase in idle:
            progress.setdefault("control", []).append(
                Progress(request=request, done_bytes=0, total_bytes=0, phase=phase)
            )
        for requester, reports in progress.items():
            for batch in columns.batches(reports, Progresses):
                self.tell(requester, batch)
        for stats in batches(samples):
            self.tell("stats", stats)

    @staticmethod
    def _source_changed(t: Outgoing) -> bool:
        """A single file being sent (or read back for the hash of what a
        resume found held) whose size or mtime is not the one its send began
        with (a folder's files are checked at its end)."""
        if t.fd < 0 or t.flow.window is None or t.flow.waiting_for not in ("sending", "hashing"):
            return False
        return changed_since(t.fd, t.size, t.mtime_ns)

    def _phase(self, t: Outgoing) -> tuple[str, int]:
        """What the transfer waits for (see :class:`Progress`), and its bytes done."""
        phase = t.flow.waiting_for
        if phase == "offering" and t.checking:
            return "checking", 0  # the hello before the offer
        if phase == "hashing" and t.crew is None:
            return phase, min(t.size, t.hashed * t.chunk_size)
        if phase == "verifying":  # what the receiver's final check covered
            return phase, t.checked
        if phase == "hashing":  # the lanes hash without counting
            return phase, t.size
        return phase, t.flow.acked_bytes

    def _end(self, t: Outgoing, code: str, reason: str, stored_as: str = "") -> None:
        log.debug("send %d to %s ends: %s %s", t.request.request, t.flow.peer, code, reason)
        self.transfers.pop(t.tid, None)
        if not self.transfers:
            self.trim_when_idle(lambda: not self.transfers)
        flow = t.flow
        flow.fail(code, reason)  # no-op when the transfer already ended itself
        # The send's row as this attempt leaves it (before a retry counts
        # the next attempt); its result and reason are set below.
        record = self._record(t, code, reason)
        if t.timer is not None:
            t.timer.cancel()
        if t.reach_timer is not None:
            t.reach_timer.cancel()
        if code != ResultCode.OK and t.keys is not None and t.data is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._send_sealed(t, Failed(code=ResultCode.ABORTED, reason=shortened(reason, 200)))
        if t.crew is not None:
            self.unwatch(t.crew.wake_fd)
            t.crew.stop()
        if flow.window is not None:
            self.tell("scheduler", FlowEnd(request=t.request.request))
        if t.link is not None:
            t.link.close()
        self._leave_pipes(t)
        if t.fd >= 0:
            os.close(t.fd)
        if t.ring is not None:
            t.ring.close()
        if not self.transfers:
            self.sealed.clear()
        self.count("sent" if code == ResultCode.OK else f"failed-{code}")
        # Retried: a failure of the network (the data connection broke, or a
        # retry's offer found no peer), not a peer that answers but stalls;
        # or a Done that went unanswered: the receiver may have stored the
        # file and forgotten the transfer (its memory of finished ones is
        # bounded: core/completed.py), so the file is offered again, and its
        # table of delivered files answers with the earlier verdict, sealed
        # under the new transfer's keys (or the part is resumed).
        # Not a folder: the table holds a folder only up to MAX_TREE_ENTRIES
        # entries (core/delivered.py), and this side cannot tell whether it
        # holds this one; an offer again would then store a second copy (DIR.1).
        unanswered = code == ResultCode.TIMEOUT and flow.unanswered
        network = t.broken or flow.window is None or (unanswered and t.tree is None)
        network = network or flow.expired_there  # (this node paused: the receiver kept the part)
        retried = False
        if code in RETRY_CODES and network and t.retry is not None:
            final = self._retry(t, code, reason)
            retried = final is None
            code, reason = final or (code, reason)
            if retried and unanswered:
                self.count("offers-after-done")
        # A folder's copy it had delivered: the folder's source tag covers
        # every file's content, so what differs is the receiver's copy (or its
        # walk ran out of time): a second copy is the user's call.
        echoed_folder = t.tree is not None and flow.resumed == flow.total
        if (
            not retried
            and code == ResultCode.HASH_MISMATCH
            and flow.resumed > 0
            and not echoed_folder
            and t.retry is not None
            and not t.retry.whole
            and self.settings.max_retries > 0
        ):
            # The receiver held chunks at its accept (a part kept from an
            # earlier attempt, or a file it had delivered: then nothing was
            # sent) and the whole file's hash differed: what it held is what
            # differs (the file changed since where its source tag does not
            # look, or that copy was written to), and it discarded or forgot
            # it. Offered again at once, the file goes whole. Once per send:
            # a receiver that always answers so costs one offer more. Not on
            # a node whose retries are off (--max-retries 0): the user sends
            # it again.
            t.retry.whole = t.retry.held_again = True
            t.retry.held = 0.0
            retried = self._retry(t, code, reason, at_once=True) is None
            if retried:
                self.count("sent-whole-after-mismatch")
        if unanswered and not retried and t.tree is not None:
            reason += (
                "; it may have stored the folder: look in its inbox before sending it again "
                "(sent again, it is stored as a second copy)"
            )
        elif unanswered and not retried:
            reason += "; it may have stored the file: send it again to find out"
        waited = bool(t.not_now) and not retried
        if waited:
            gave_up = self._wait_busy(t)
            retried = gave_up is None
            reason = gave_up or reason
        # One row per send: an attempt retried, or refused by a busy receiver
        # the send waits for, leaves it running, saying why.
        then = "waiting" if waited else "retrying"
        record = dataclasses.replace(
            record,
            result="running" if retried else code[:32],
            reason=(f"{reason}; {then}" if retried else reason)[:512],
        )
        row = self._row(t)  # (never accepted: the busy wait's, its first offer's)
        if row is not None:
            row.record = record
        if t.retry is not None:
            t.retry.retransmits += flow.retransmits
        self.tell("stats", record)
        if t.keys is not None:  # it held a slot at the receiver: the next in line there offers
            self._wake_busy(t.request)
        while self.waiting and self._sends() < self.settings.max_outgoing:
            self._start(self.waiting.popleft())
        if retried:
            return
        if code == ResultCode.OK and t.node_key:
            # Verified under the keys of the handshake that node finished (or
            # its receiver the node's proof vouched for): the success is the
            # node's, whatever address the user named it by (health's score;
            # a failure stays the address's, docs/membership.md).
            self.tell(t.requester, SendProven(request=t.request.request, key=t.node_key))
        self.tell(
            t.requester,
            SendResult(
                request=t.request.request,
                code=code[:32],
                reason=shortened(reason, 500),
                size=t.size,
                digest=flow.digest if code == ResultCode.OK else b"",
                stored_as=stored_as,
                # The whole send's, every attempt's (a retry's flow starts anew).
                seconds=self.now() - self._send_started(t),
                # every attempt's, as its history row counts them
                retransmits=flow.retransmits if t.retry is None else t.retry.retransmits,
                mode=flow.policy.mode,
                stats=self._result_stats(t),
                window_history=flow.window_history(),
            ),
        )

    def _retry(
        self, t: Outgoing, code: str, reason: str, at_once: bool = False
    ) -> tuple[str, str] | None:
        """Offer the file again after a backoff pause (the receiver resumes
        it): None; or the send's final (code, reason) when the retries are
        used up. A receiver whose port refuses is retried sooner (0.25 s
        doubling to 2 s) but only until ``--timeout`` has passed since the
        transfer last moved; then the send fails saying so. ``at_once``: no
        pause and no retry used up (the receiver answered; the file goes
        whole)."""
        retry, request = t.retry, t.request
        assert retry is not None
        now = self.now()
        if at_once:
            delay = 0.0
            note = f"{reason}; sending all of it again"
        elif t.port_closed:
            if retry.closed_since is None:
                moved = t.flow.window is not None  # else: this attempt's offer was refused
                retry.closed_since = t.flow.last_progress if moved else now
            left = retry.closed_since + request.timeout - now
            if left <= 0:
                # What arrived before the port closed is kept (docs/resume.md):
                # "stayed closed" alone made a user think it lost.
                arrived = max(retry.done_bytes, t.flow.acked_bytes)
                kept = "; it keeps what arrived: sending again resumes" if arrived else ""
                return ResultCode.UNREACHABLE, (
                    f"the receiver's port at {t.peer} stayed closed ({REFUSED}) "
                    f"for --timeout {request.timeout:g} s{kept}"
                )
            closed_delay = retry.closed.next_delay()  # never None: no retry limit
            delay = min(left, CLOSED_RETRY_MAX if closed_delay is None else closed_delay)
            note = f"{t.peer}: the receiver's port closed; retrying"
        else:
            backoff_delay = retry.backoff.next_delay()
            if backoff_delay is None:
                return code, reason
            delay = backoff_delay
            # (a reason that names the peer already: not twice, "A: A stopped ...")
            note = (
                f"{reason}; retrying"
                if reason.startswith(t.peer)
                else f"{t.peer}: {reason}; retrying"
            )
        self.count("retries")
        retry.attempt += 1
        done = 0 if at_once else t.flow.acked_bytes  # (what the receiver held is gone)
        retry.done_bytes = done if at_once else max(retry.done_bytes, done)
        log.info("%s: %s in %.1f s (attempt %d)", request.path, note, delay, retry.attempt)
        self.tell(
            t.requester,
            Progress(
                request=request.request,
                done_bytes=done,
                total_bytes=t.size,
                note=note,
                phase="retrying",
            ),
        )

        def again() -> None:
            pause = self.retrying.pop(request.request, None)
            if pause is None:
                return
            self.carried[request.request] = retry
            if len(self.transfers) < self.settings.max_outgoing:
                self._start(request)
            else:  # the scheduler's limit holds for retries too
                self.waiting.append(request)
                self.queued_as[request.request] = (pause.source, pause.name)
                self.count("queued")

        self.retrying[request.request] = Retrying(
            timer=self.call_later(delay, again),
            request=request,
            attempt=retry.attempt,
            due=now + delay,
            error=reason,
            size=t.size,
            done_bytes=retry.done_bytes,
            mode=t.flow.policy.mode,
            source=t.details.source,
            name=t.details.name,
            started=retry.started,
            retry=retry,
        )
        return None

    def _end_unstarted(
        self,
        request: int,
        retry: Retries | None,
        reason: str,
        busy: Busy | None = None,
        code: str = ResultCode.CANCELLED,
    ) -> None:
        """End (cancel, or fail with ``code`` before its next offer) a send
        that has no attempt running (waiting in line, its folder being
        walked, between two attempts: ``retry`` then, or waiting for a busy
        receiver: ``busy``). A send that had attempts or offers ends its
        history row, and its result says what they did: the file's size,
        its mode, its time since it began."""
        row: Retries | Busy | None = retry if retry is not None else busy
        if row is None or row.record is None:
            self.tell("control", _result(request, code, reason))
            return
        seconds = self.now() - row.started
        stats = dict(row.record.stats)
        if retry is not None:
            made = retry.attempt - 1  # ``attempt``: the one to come
            stats.update(held_share=retry.held, attempts=float(made))
        record = dataclasses.replace(
            row.record, duration=seconds, result=code, reason=shortened(reason, 512), stats=stats
        )
        self.tell("stats", record)
        self.tell(
            "control",
            SendResult(
                request=request,
                code=code,
                reason=shortened(reason, 500),
                size=record.size,
                digest=b"",
                stored_as="",
                seconds=seconds,
                retransmits=retry.retransmits if retry is not None else 0,
                mode=record.mode,
                stats=stats,
            ),
        )

    def _wait_busy(self, t: Outgoing) -> str | None:
        """The receiver refused ``t``'s offer "not now" (its limits of
        transfers at once are taken): the send waits, listed as ``waiting``,
        and offers again when a send of this node to that receiver ends
        (:meth:`_wake_busy`) or its pause is over (core/busy_wait.py);
        None. Or the send's final reason, once it was refused so for
        ``--timeout`` with none of this node's sends running there."""
        request = t.request
        now = self.now()
        if t.busy is None:  # the send's row so far is this offer's (or its Retries')
            wait = BusyWait(timeout=request.timeout, rng=self.rng)
            wall = t.retry.wall if t.retry is not None else t.wall
            t.busy = Busy(wait, self._session(t), wall, self._send_started(t))
        wait = t.busy.wait
        t.busy.tree = t.tree  # (a folder: its next offer takes it, unchanged)
        here = _address(request)
        # A check of this very send there is one of ours running: it holds
        # the receiver for it and ends (stored, failed, or idle for the
        # receiver's 30 s) by what the file's check takes, not by this
        # send's --timeout, which had already passed when it was offered
        # again: bounded below by verify_limit.
        ours = t.in_check or any(
            o.keys is not None and _address(o.request) == here for o in self.transfers.values()
        )
        if t.in_check:  # (a receiver that says so for ever holds the send no longer)
            if t.busy.check_since is None:
                t.busy.check_since = now
            since = t.busy.check_since
            limit = verify_limit(request.timeout, t.size)
            if now - since > limit:
                self.count("busy-gave-up")
                return (
                    f"{t.peer} refused: {t.not_now}; its final check of the file "
                    f"still ran after {limit:.0f} s"
                )
        pause = wait.refused(now, ours)
        if pause is None:
            self.count("busy-gave-up")
            return (
                f"{t.peer} refused: {t.not_now}; still busy after --timeout "
                f"{request.timeout:g} s with no send of this node running there"
            )
        self.count("busy-waits")
        note = f"{t.peer} is busy ({t.not_now}); the send waits and offers again"
        log.info("%s: %s in %.1f s at most", request.path, note, pause)
        self.tell(
            t.requester,
            Progress(request=request.request, done_bytes=0, total_bytes=t.size, note=note,
                     phase="waiting"),
        )  # fmt: skip
        self.retrying[request.request] = Retrying(
            timer=self.call_later(pause, functools.partial(self._busy_again, request.request)),
            request=request,
            attempt=t.retry.attempt if t.retry is not None else 1,
            due=now + pause,
            error=f"{t.peer} is busy: {t.not_now}",
            size=t.size,
            done_bytes=t.retry.done_bytes if t.retry is not None else 0,
            mode=t.flow.policy.mode,
            source=t.details.source,
            name=t.details.name,
            started=t.busy.started,
            retry=t.retry,
            busy=t.busy,
        )
        return None

    def _wake_busy(self, ended: SendRequest) -> None:
        """A send to ``ended``'s receiver that held a slot there ended: the
        send that has waited longest for a slot there offers now."""
        here = _address(ended)
        for request, w in self.retrying.items():
            if w.busy is not None and _address(w.request) == here:
                self.count("busy-woken")
                return self._busy_again(request)

    def _busy_again(self, request: int) -> None:
        """Offer a send that waited for a busy receiver again (now, or in
        line for one of this node's own slots)."""
        w = self.retrying.get(request)
        if w is None or w.busy is None:
            return
        del self.retrying[request]
        w.timer.cancel()
        if w.retry is not None:
            self.carried[request] = w.retry
        self.carried_busy[request] = w.busy
        tree, w.busy.tree = w.busy.tree, None
        if tree is not None and tree.changed():
            tree = None  # a file of it changed since its walk: walked again
        if self._sends() < self.settings.max_outgoing:
            if tree is not None:
                self.count("busy-tree-reused")
            self._start(w.request, tree)
        else:
            self.waiting.append(w.request)
            self.queued_as[request] = (w.source, w.name)
            self.count("queued")

    # -- the statistics history ---------------------------------------------------

    @staticmethod
    def _row(t: Outgoing) -> Retries | Busy | None:
        """What carries the send's history row from one offer to the next:
        its retries once an offer was accepted, its busy wait before."""
        return t.retry if t.retry is not None else t.busy

    def _send_started(self, t: Outgoing) -> float:
        """When the send began (actor clock): its first offer's start."""
        row = self._row(t)
        return t.flow.started if row is None else row.started

    def _session(self, t: Outgoing) -> str:
        """The send's row in the history: its first offer's transfer id."""
        row = self._row(t)
        return t.tid.hex() if row is None else row.session

    def _record(self, t: Outgoing, result: str, reason: str = "") -> StatsRecord:
        """The send's one row in the history, as of this attempt: every
        attempt of a send updates the row of its first (its session), its
        time counts from the send's start, its bytes are the most any
        attempt had acknowledged, and what the receiver held is what the
        first accept found (those bytes did not cross in this send). A send
        that waits for a busy receiver is the same send: its offers update
        the row too."""
        flow, retry, row = t.flow, t.retry, self._row(t)
        duration = self.now() - self._send_started(t)
        if row is not None and flow.window is None and row.record is not None:
            # An attempt not accepted (yet): the row as the last one left it.
            stats = dict(row.record.stats)
            if retry is not None:
                stats["attempts"] = retry.attempt
            record = dataclasses.replace(
                row.record,
                duration=duration,
                result=result[:32],
                reason=shortened(reason, 512),
                stats=stats,
            )
        else:
            stats, done, retransmits = flow.stats(), flow.acked_bytes, flow.retransmits
            if retry is not None:
                stats["resumed_chunks"] = round(retry.held * flow.total)
                stats["attempts"] = retry.attempt
                done = max(done, retry.done_bytes)
                retransmits += retry.retransmits
            record = StatsRecord(
                session=self._session(t),
                side="send",
                peer=t.peer[-300:],
                peer_fingerprint=t.proven,
                mode=flow.policy.mode,
                file=t.request.path[-1024:],
                size=t.size,
                done_bytes=done,
                chunk_size=t.chunk_size,
                chunks=flow.total,
                started=row.wall if row is not None else t.wall,
                duration=duration,
                result=result[:32],
                reason=shortened(reason, 512),
                retransmits=retransmits,
                params=self._params(t),
                stats=stats,
            )
        if row is not None:
            row.record = record
        return record

    @staticmethod
    def _params(t: Outgoing) -> dict[str, str]:
        params = t.flow.policy.parameters()
        if t.tree is not None:  # (the size is the stream's: the files and their list)
            params["files"] = str(t.tree.files)
            params["file_bytes"] = str(t.tree.file_bytes)
        return params

    @staticmethod
    def _result_stats(t: Outgoing) -> dict[str, float]:
        stats = t.flow.stats()
        if t.retry is not None:  # what the send's first accept found held, its attempts
            stats["held_share"] = t.retry.held
            stats["attempts"] = t.retry.attempt
        if t.tree is not None:
            stats["files"] = t.tree.files
            stats["file_bytes"] = t.tree.file_bytes
            stats["skipped"] = len(t.tree.skipped)
        return stats

    def _sample(self, t: Outgoing) -> StatsSample:
        flow = t.flow
        return StatsSample(
            session=self._session(t),
            side="send",
            peer=t.peer[-300:],
            t=self.now() - self._send_started(t),  # on the send's row: since the send began
            done_bytes=flow.acked_bytes,
            window=flow.share or 0,  # aimd: this flow's share of its peer's window
            rate=flow.own_rate(flow.policy.rate if flow.policy.mode == "token-bucket" else 0),
            rtt=(flow.window.rtt.srtt or 0.0) if flow.window is not None else 0.0,
            credit=flow.window.window if flow.window is not None else 0,
        )


def _address(req: SendRequest) -> str:
    """The receiver ``req`` goes to, one key for every spelling that dials
    the same endpoint (localhost, 127.1)."""
    return dialled(req.host, req.port)


def _result(request: int, code: str, reason: str) -> SendResult:
    return SendResult(
        request=request, code=code, reason=shortened(reason, 500), size=0, digest=b"", stored_as=""
    )


def _read_failed(path: str, exc: OSError) -> str:
    """A send's read error as one line: the system's words and the file
    (a folder's file, when it is another than the path sent), not Python's
    "[Errno 2] No such file or directory: '...'"."""
    why = exc.strerror or str(exc)
    named = exc.filename if isinstance(exc.filename, str) and exc.filename != path else ""
    return f"reading {path} failed: {why}" + (f" ({named})" if named else "")
