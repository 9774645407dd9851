"""Receiver actor: takes offers, receives, verifies and stores files.

Offers arrive from the gateway (control plane, CURVE); chunks and sealed
transfer messages arrive on the receiver's own data socket (a plain ROUTER:
the bulk is sealed with per-transfer AES-256-GCM keys, so CURVE is not
layered on it). Per transfer:

1. Offer -> checks (limits per peer and in all, name, chunk size), the
   resume lookup (:mod:`peercrypt.core.resume`: a kept part of the same file
   from the same proven sender identity is continued, older versions of it
   are deleted), space and quotas (asked of the node's one space ledger,
   ``actors/space.py``, which the multicast receiver asks too: what running
   transfers still have to write is reserved, kept parts give way; the offer
   waits for its verdict), the mutual
   authentication (crypto/handshake.py: the sender's identity is the CURVE
   client key, ours is proven in the Accept), ``.NAME.TID.part`` created (or the kept one reopened),
   Accept with the chunks already held.
2. Chunks -> authenticated, decrypted, queued to the writer thread; acked
   only once written. The writer keeps the manifest beside the part (the
   chunks durably written, for a resume). A full disk ends the transfer with
   "no-space" to the sender and keeps the part.
3. Done(hash) -> fsync, compare with the hash computed while writing, link
   under a free final name (never overwriting), Verified. A mismatch deletes
   the part file and reports Failed. A check that makes no progress for the
   idle timeout (the disk stopped answering) ends with Failed "timeout" and
   keeps the part. A folder transfer (``Offer.tree``) is
   then stored as its tree by the writer thread (:mod:`actors.tree_store`:
   every file checked against its own hash, the whole moved into place only
   once complete), and Verified names its top-level entries.

A file offered again after it was delivered (same proven sender, name,
size, chunk size and source tag; the file under its stored name unchanged:
:mod:`peercrypt.core.delivered`) is not written again: the Accept says every
chunk is held, and the sender's Done is answered with the earlier verdict
(Verified with the name it was stored under) if its hash is the one verified
then. A folder likewise, while every entry under its stored names is
unchanged (and it has at most ``MAX_TREE_ENTRIES`` of them; a larger one is
not remembered); checking that walks it in this loop, so walks are bounded
each (``TREE_STAMP_SECONDS``) and together (``WalkBudget``). The table is
bounded and kept in the data directory (``delivered.msgpack``).

Anything that does not authenticate or decode is counted and dropped.
Leftovers of interrupted transfers are deleted once ``part_expiry`` passes
without a resume (at start and every ``RECLAIM_INTERVAL``).
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from actors.delivered_store import DeliveredStore
from actors.file_writer import (
    Detached,
    FileWriter,
    Finished,
    Fresh,
    Published,
    TreeFailed,
    TreeSpec,
    Unpacked,
    Unsaved,
    WriteFailed,
    Written,
    pool_bytes,
)
from actors.inbox import (
    PartGone,
    Refusal,
    check_offer,
    create_part,
    discard_part,
    manifest_name,
    offered_chunks,
    open_part,
    remove_part,
    remove_quietly,
    scan,
    stamp,
    sweep,
)
from actors.port_watch import PortWatch
from actors.space import drop_gone_part, remake_inbox, report_holdings
from actors.tree_store import stamp_tree, sweep_trees
from peercrypt import local_ipc, shm_ring
from peercrypt.core.bitmap import ChunkBitmap, flatten
from peercrypt.core.completed import CompletedMemory
from peercrypt.core.delivered import (
    DeliveredTable,
    Delivery,
    FileStamp,
    TreeStamp,
    WalkBudget,
    unchanged,
)
from peercrypt.core.incoming import (
    STILL_WRITING_AFTER,
    Abandon,
    FinishFile,
    IncomingTransfer,
    Store,
)
from peercrypt.core.modes import ALL_MODES, MAX_LANES
from peercrypt.core.names import INCOMING_NAME, shortened
from peercrypt.core.outgoing import peer_failure
from peercrypt.core.port_guard import DATA_HANDSHAKE, GuardLimits, held_limit
from peercrypt.core.receive_window import (
    Arrival,
    allowance_bytes,
    choose_chunk,
    node_credit,
    receiving,
)
from peercrypt.core.replay import ReplayWindow
from peercrypt.core.resume import (
    RECLAIM_INTERVAL,
    Manifest,
    ResumeKey,
    accept_ranges,
    plan_resume,
    rechunked,
)
from peercrypt.core.sampling import sample_due
from peercrypt.core.tree import offer_refusal
from peercrypt.crypto.handshake import ProofError, Response, open_details, respond
from peercrypt.crypto.identity import fingerprint
from peercrypt.crypto.transfer import TAG_BYTES, OpenError, TransferKeys
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import PEER_RCVHWM, Actor, ActorEnv, bound_port, readable
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec, columns
from peercrypt.wire.messages import (
    Accept,
    Ack,
    Attach,
    CancelIncoming,
    ChunkHeader,
    Done,
    Failed,
    Inbound,
    Offer,
    OfferDetails,
    Outbound,
    Refuse,
    SealedHeader,
    SettingReply,
    SlotHeader,
    Verified,
    Verifying,
)
from peercrypt.wire.space_messages import (
    SpaceCancel,
    SpaceForget,
    SpaceRelease,
    SpaceReserve,
    SpaceVerdict,
    SpaceWritten,
    SpaceWrittens,
)
from peercrypt.wire.stats_messages import StatsRecord, StatsSample, batches
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.receiver")

HEADER_MAX_BYTES = 512
# Replies ZeroMQ may queue per data connection waiting to go out; what it
# reads ahead is not capped (PEER_RCVHWM: a cap lets any peer abort the
# node), the transfers' credit bounds it.
DATA_SNDHWM = 4096
# A sealed frame from a connection the transfer has not attached is opened
# only this small (an Attach), and a transfer attaches at most this many
# (a sender uses one per lane: parallel mode's at most 64).
ATTACH_MAX_BYTES = 256
MAX_ATTACHED = MAX_LANES
OTHER_MODE = "other"  # an offer's mode this node does not know, as recorded
CANCELLED_MEMORY = 256  # cancelled transfers remembered to answer their frames
EXPIRED_MEMORY = 256  # expired ones, apart (a member's silent offers evict no cancel)
STATS_INTERVAL = 0.1  # seconds between samples for the statistics history
INCOMING_SHOWN = 8  # incoming transfers listed in the status facts
CANCEL_ANSWER_EVERY = 0.5  # seconds between answers to an ended transfer's frames
# Seconds a stopping node waits for its writer to give verified files their
# names (file_writer.Published, Unpacked): stored, they are recorded as
# delivered and their senders told. One linked by then whose folder's fsync
# still waits (a disk that hangs) is recorded as delivered all the same; one
# not linked yet keeps its part, for a resume.
STORES_AT_STOP = 3.0
# An offer waits this long for the space ledger's verdict (actors/space.py),
# then is refused "busy" (the sender retries).
SPACE_VERDICT_TIMEOUT = 5.0
# An offer granted its space waits at most this long for room for one of its
# chunks in the receive buffer (the credit the others hold: see _room_for),
# then is accepted all the same with a credit of one chunk (an accept's
# least): well within a sender's wait for the accept (its --timeout).
ROOM_WAIT = 1.0
DELIVERED_FILE = "delivered.msgpack"  # in the data directory (core/delivered.py)
DELIVERED_JOURNAL = "delivered.journal"  # rows since that snapshot


def hash_hold(s: NodeSettings) -> int:
    """Bytes of written chunks that may wait in their buffers for the hash
    as written (half the receive buffer: actors/read_back.py, ``Hashing``)."""
    return s.receive_buffer // 2


def writer_bounds(s: NodeSettings) -> tuple[int, int]:
    """The writer's queue bound and its buffer pool's. Credit keeps the queue
    near the receive buffer (twice it while credits shrink); the writer
    refuses chunks beyond that whatever peers do. Its pool keeps as many
    buffers for reuse as the credit lets be in flight (8 chunks of 4 MiB)
    and the hash as written may hold (4 more)."""
    return 2 * s.receive_buffer + s.max_chunk, pool_bytes(s.receive_buffer, hash_hold(s))


@dataclass
class Incoming:
    """The I/O side of one transfer; every decision is ``flow``'s."""

    tid: bytes
    peer: bytes
    host: str
    name: str
    size: int
    chunk_size: int
    keys: TransferKeys
    key: ResumeKey
    flow: IncomingTransfer
    part: Path
    fd: int
    route: bytes | None = None
    done_route: bytes = b""  # the connection its last Done came on (where it repeats it)
    # The sender's shared data connections this transfer attached to (its
    # own Attach, sealed, named each one), besides its own route ids.
    routes: set[bytes] = field(default_factory=set)
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    mode: str = ""  # as the sender said (for the statistics history)
    started: float = 0.0
    wall: float = field(default_factory=time.time)
    tree: int = 0  # a folder transfer: its manifest's bytes (peercrypt/core/tree.py)
    files: int = 0
    digest: bytes = b""  # verified, while it is being stored
    reported: int = 0  # bytes written, as the space ledger last heard
    ring: shm_ring.ReceiverRing | None = None  # lent to a sender of this host
    ident: str = ""  # what the user names it by (``status``, ``top``, ``cancel``): in1, in2...
    who: str = ""  # the sender's fingerprint, as its statistics samples name it
    held: int = 0  # bytes its kept part held when it began (a resume): they did not cross


@dataclass(slots=True)
class Remembered:
    """A finished transfer's sealed Verified, kept to answer its sender's
    repeated Done (``ReceiverActor.completed``) on the connection its Done
    came on (``route``: a sender sends it on its first lane, and a
    reconnect keeps the routing id), and when it was last so answered: at most every
    ``CANCEL_ANSWER_EVERY`` (a sender repeats its Done a second apart at the
    least; the frames are not opened, so one that goes on costs one reply
    per interval, not one per frame, and another connection naming its id,
    the data port being plain TCP, neither gets it nor takes its turn)."""

    header: bytes
    payload: bytes
    route: bytes
    answered: float = float("-inf")


@dataclass
class Cancelled:
    """A transfer this node ended whose sender may not know: its user
    cancelled it, or it expired (nothing from the sender for the idle
    limit; its Failed went to a connection that was down, and the sender
    comes back after its outage). Its frames that still come are answered
    with the Failed again, at most every ``CANCEL_ANSWER_EVERY``, and its id
    is not taken by another offer. (An expired one's sender, told, offers
    the file again and resumes the part; else it sent on into a transfer
    this node had forgotten, and failed "stopped acknowledging" at its own
    --timeout, not offered again.)"""

    keys: TransferKeys
    routes: set[bytes]  # the shared connections it had attached
    failed: Failed
    answered: float = float("-inf")


def _mismatch(d: Delivery) -> str:
    """Why a re-offer of ``d`` is not answered with its earlier verdict."""
    if isinstance(d.stamp, TreeStamp):  # its walk may also have run out of time
        return (
            f"the folder differs from the one delivered as {d.stored_as}, or that copy "
            "changed or could not be checked in time; sent again, it is stored as a second copy"
        )
    return f"the file differs from the one delivered as {d.stored_as}, or that copy changed"


@dataclass
class Echo:
    """An offer of a file already delivered: it is answered with the earlier
    verdict once the sender's Done shows the same hash."""

    tid: bytes
    keys: TransferKeys
    delivery: Delivery
    since: float
    peer: bytes = b""  # who offered it, and from where: it holds a slot under
    host: str = ""  # the transfer limits until answered or idle
    route: bytes | None = None
    routes: set[bytes] = field(default_factory=set)  # as Incoming's
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    mode: str = ""  # as the sender said, and when (for the statistics history)
    wall: float = 0.0
    files: int = 0  # a folder's, as its offer said


@dataclass
class Asking:
    """An offer that passed every check but space, waiting for the ledger."""

    offer: Offer
    peer: bytes
    host: str
    route: bytes
    details: OfferDetails
    name: str
    key: ResumeKey
    answer: Response
    reuse: Manifest | None
    tree_bytes: int
    since: float
    room_since: float = -1.0  # space granted then: waits for room in the receive buffer
    fresh: bool = False  # (the ledger's verdict: see _accept)


@dataclass(frozen=True, slots=True)
class _Line:
    """Bytes of the receive buffer kept for the transfers waiting their turn
    and the offers waiting for room: ``kept`` in all, ``ahead`` of each
    waiting transfer (by id) what is kept for those ahead of it."""

    kept: int
    ahead: dict[bytes, int]


class ReceiverActor(Actor):
    name = "receiver"
    data_plane = True

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.transfers: dict[bytes, Incoming] = {}
        # tid -> the sealed Verified, to answer a repeated Done
        self.completed: CompletedMemory[Remembered] = CompletedMemory(settings.completed_memory)
        self.outcomes = 0  # transfers finished (stored or discarded), for "last_in"
        self.credit_peak = 0  # the most credit its transfers held together, in bytes
        self.asking: dict[int, Asking] = {}  # request -> offer waiting for space (or room)
        self._admitting = False
        self.echoes: dict[bytes, Echo] = {}  # tid -> a re-offer of a delivered file
        self.store = DeliveredStore(self, settings.data_dir, DELIVERED_FILE, DELIVERED_JOURNAL)
        self.tree_walks = WalkBudget(time.monotonic())  # stored folders' walks, in the loop
        self._requests = itertools.count(1)
        self._idents = itertools.count(1)  # of incoming transfers, for the user
        self.cancelled: dict[bytes, Cancelled] = {}  # tid -> (bounded: CANCELLED_MEMORY)
        self.expired: dict[bytes, Cancelled] = {}  # tid -> (bounded: EXPIRED_MEMORY)
        # Parts the writer removes after its queued work (a cancel's, one
        # that held nothing): never chosen to continue meanwhile. Names are
        # a transfer's own; the last CANCELLED_MEMORY are remembered.
        self.discarding: dict[str, None] = {}
        self.ticks = 0  # progress reports so far (which transfers are sampled)
        self.ring_copy = bytearray()  # a shared-memory ring's slot, copied out

    # -- lifecycle ------------------------------------------------------------

    def setup(self) -> None:
        s = self.settings
        s.inbox.mkdir(parents=True, exist_ok=True, mode=s.inbox_mode)
        data = self.data = self.socket(zmq.ROUTER, data_plane=True)
        data.maxmsgsize = s.max_chunk + TAG_BYTES + 1024
        # The receive queue never fills (PEER_RCVHWM), the credit bounds what
        # honest senders put there; a full send queue drops acks (the
        # sender's timers recover).
        data.rcvhwm = PEER_RCVHWM
        data.sndhwm = DATA_SNDHWM
        # Senders name their data connections (crypto/transfer.py, "Routes"):
        # a reconnect under the same name replaces the connection it lost.
        data.router_handover = True
        # What its TCP connections make libzmq hold is bounded from outside
        # libzmq (core/port_guard.py): the monitor names each one.
        limits = GuardLimits(
            held=s.data_port_memory or held_limit(s.receive_buffer, data.maxmsgsize)
        )
        self.port_watch = PortWatch(limits, self.count, prefix="data-", allowance=DATA_HANDSHAKE)
        self.port_watch.start(self, data, "receiver-data")
        self.bind(data, s.host, s.data_port, "the data port")
        self.data_port = bound_port(data)
        self.facts["data_port"] = str(self.data_port)
        self._bind_ipc(data)
        self.facts["inbox"] = str(s.inbox)
        self.watch(data, self._on_data)
        address = f"inproc://pc-{self.env.node_uid}/receiver-writer"
        self.writer_results = self.socket(zmq.PAIR)
        self.writer_results.bind(address)
        self.watch(self.writer_results, self._on_writer)
        queued, pooled = writer_bounds(s)
        self.writer = FileWriter(
            self.env.context,
            address,
            queued,
            direct=s.direct_writes,
            pool_bytes=pooled,
            as_written=s.check_as_written,
            announce_bytes=s.receive_buffer // 4,
            hash_hold=hash_hold(s),
        )
        self.writer.start()
        running = lambda: bool(self.transfers)  # noqa: E731
        self.call_every_while(1.0, self._expire_idle, lambda: bool(self.transfers or self.echoes))
        self.call_every_while(STATS_INTERVAL, self._report_progress, running)
        self.call_every_while(STILL_WRITING_AFTER / 2, self._update_windows, running)
        self.trim_while_busy(running)
        self._load_delivered()
        self.call_every_while(1.0, self._expire_asks, lambda: bool(self.asking))
        self._reclaim()
        self._report_space()
        self.call_every(RECLAIM_INTERVAL, self._reclaim)

    def _report_space(self) -> None:
        """Tell the space ledger, from scratch, what this receiver holds: the
        unicast parts kept on disk (multicast ones are the mreceiver's) and
        the transfers running."""
        for t in self.transfers.values():
            t.reported = self._written(t)
        report_holdings(self, self.settings.inbox, multicast=False, running=self.transfers.values())

    # -- files delivered before ------------------------------------------------------

    @property
    def delivered(self) -> DeliveredTable:
        return self.store.table

    def _load_delivered(self) -> None:
        self.store.load()

    def _note_delivered(self, row: bytes) -> None:
        self.store.note(row)

    def _save_delivered(self) -> bool:
        return self.store.save()

    def _stamp(self, name: str) -> FileStamp | None:
        """The inbox file ``name`` as it is now (None: gone, or not a regular file)."""
        return stamp(self.settings.inbox, name)

    def _tree_stamp(self, tops: tuple[str, ...]) -> TreeStamp | None:
        """The folder stored in the inbox under ``tops`` as it is now (its
        walk charged to the budget of walks)."""
        began = time.monotonic()
        self.count("trees-walked")
        try:
            return stamp_tree(self.settings.inbox, tops)
        finally:
            ended = time.monotonic()
            self.tree_walks.charge(ended - began, ended)

    def _unchanged(self, d: Delivery) -> bool:
        return unchanged(d, self._stamp, self._tree_stamp)

    def _delivered_before(self, key: ResumeKey, tree: bool = False) -> Delivery | None:
        """The delivery an offer of ``key`` repeats (a folder's if ``tree``),
        if its file or folder is still the one stored; an entry whose file
        or folder is gone or changed is forgotten, in the journal too (a
        restart must not bring it back)."""
        entry = self.delivered.get(key)
        if entry is None:
            return None
        if isinstance(entry.stamp, TreeStamp) != tree:
            # A file's tag offered for a folder (or back): not that one, and
            # not looked at (a folder's walk, outside the budget of walks,
            # at every re-offer of its key as a file).
            return None
        if tree and not self.tree_walks.allows(time.monotonic()):
            self.count("trees-walks-over-budget")  # not looked up: a fresh transfer
            return None
        return self.store.lookup(key, self._stamp, self._tree_stamp)

    def _echo(
        self,
        offer: Offer,
        peer: bytes,
        host: str,
        prior: Delivery,
        answer: Response,
        mode: str,
        key: ResumeKey,
        files: int = 0,
    ) -> Accept:
        """Accept a re-offer of a delivered file holding every chunk (of
        ``key``'s chunk size, chosen for this offer): the sender sends none,
        hashes its file and sends Done (:meth:`_on_echo`)."""
        keys = TransferKeys.for_receiver(offer.tid, answer.secrets)
        echo = Echo(
            offer.tid, keys, prior, self.now(), peer, host, mode=mode, wall=time.time(), files=files
        )
        self.echoes[offer.tid] = echo
        self.count("delivered-before")
        log.info(
            "%s from %s: delivered before as %s; not written again",
            prior.key.name,
            fingerprint(peer) if peer else "?",
            prior.stored_as,
        )
        return Accept(
            tid=offer.tid,
            eph_pub=answer.eph_pub,
            static_pub=answer.static_pub,
            proof=answer.proof,
            data_host=self.settings.advertise_data_host,
            data_port=self.settings.advertise_data_port or self.data_port,
            window=1,
            have=[0, key.total],
            data_ipc=str(self.ipc_path or ""),
            host_tag=local_ipc.host_tag(self.ipc_host, offer.tid, answer.secrets),
            chunk_size=key.chunk_size,
        )

    def _on_echo(self, echo: Echo, route: bytes, h: SealedHeader, payload: memoryview) -> None:
        msg = self._open_sealed(echo.keys, echo.replay, echo.routes, route, h, payload)
        if msg is None:
            return
        echo.route = route
        if not isinstance(msg, Done | Failed):  # as for a transfer: it still
            self._drop(route, "unexpected")  # ends with a Done, a Failed or idle
            return
        del self.echoes[echo.tid]
        d = echo.delivery
        if isinstance(msg, Failed):  # the sender gave up: a row of its own
            # (its words, escaped; a code that says ok is no ok: the row
            # would name the stored copy as received)
            code, reason = peer_failure(msg.code), printable(msg.reason)
            self.tell("stats", self._echo_record(echo, code, reason))
            return
        if hmac.compare_digest(msg.digest, d.digest) and self._unchanged(d):
            reply: codec.Message = Verified(digest=d.digest, stored_as=d.stored_as)
            self.count("delivered-before-verified")
        else:  # another content under the same tag, or the file (folder) changed since
            self.store.forget(d.key)
            reply = Failed(code=ResultCode.HASH_MISMATCH, reason=_mismatch(d))
            self.count("delivered-before-mismatch")
        nonce, sealed = echo.keys.seal_message(codec.encode(reply))
        header = codec.encode(SealedHeader(tid=echo.tid, nonce=nonce))
        self.data.send_multipart([route, header, sealed])
        if isinstance(reply, Verified):
            self._remember(echo.tid, (header, sealed), route)
            self.tell("stats", self._echo_record(echo, ResultCode.OK))
        elif isinstance(reply, Failed):
            self.tell("stats", self._echo_record(echo, reply.code, reply.reason))

    def _echo_record(self, echo: Echo, result: str, reason: str = "") -> StatsRecord:
        """A re-offer answered from the table is a transfer in the history
        too (nothing moved: ``params.delivered_before`` names the copy)."""
        d = echo.delivery
        who = fingerprint(echo.peer) if echo.peer else "?"
        ok = result == ResultCode.OK
        return StatsRecord(
            session=echo.tid.hex(),
            side="receive",
            peer=who,
            peer_fingerprint=who if echo.peer else "",
            mode=echo.mode,
            file=d.stored_as if ok else d.key.name,
            size=d.key.size,
            done_bytes=d.key.size if ok else 0,
            chunk_size=d.key.chunk_size,
            chunks=d.key.total,
            started=echo.wall,
            duration=self.now() - echo.since,
            result=result[:32],
            reason=reason[:512],
            params={
                "delivered_before": d.stored_as[:256],
                **({"files": str(echo.files)} if echo.files else {}),
            },
            stats={"held_bytes": d.key.size if ok else 0},
        )

    def _remember(self, tid: bytes, sent: tuple[bytes, bytes], route: bytes) -> None:
        evicted = self.completed.evicted
        self.completed.remember(tid, Remembered(*sent, route), self.now())
        if self.completed.evicted > evicted:  # its sender finds out by offering again
            self.count("completed-forgotten-early")

    def on_actor_restarted(self, name: str) -> None:
        if name == "space":  # its ledger is empty: tell it again what is here
            self._report_space()

    def _bind_ipc(self, data: zmq.Socket[Any]) -> None:
        """Also take chunks on a Unix socket (peercrypt/local_ipc.py); a
        node that cannot (off, a path too long, a folder not private to
        this user) names none in its Accepts, nor one that advertises a data
        endpoint of its own choice (a proxy in front: chunks go there)."""
        self.ipc_path: Path | None = None
        self.ipc_bound = (0, 0)  # which file the bound socket is (local_ipc.remove)
        self.ipc_host = ""
        s = self.settings
        wanted = s.local_ipc and not s.advertise_data_port and not s.advertise_data_host
        path = local_ipc.socket_path(s.data_dir) if wanted else None
        host = local_ipc.host_id()
        if path is None or not host or not local_ipc.prepare(path):
            self.facts["data_ipc"] = ""
            return
        try:
            data.bind(f"ipc://{path}")
            os.chmod(path, 0o600)
            self.ipc_bound = local_ipc.bound_as(path)
        except (zmq.ZMQError, OSError) as exc:
            log.warning("no Unix data socket at %s: %s", path, exc)
            self.facts["data_ipc"] = ""
            return
        self.ipc_path, self.ipc_host = path, host
        self.facts["data_ipc"] = str(path)

    def teardown(self) -> None:
        ipc_path: Path | None = getattr(self, "ipc_path", None)
        if ipc_path is not None:
            local_ipc.remove(ipc_path, self.ipc_bound)
        if hasattr(self, "writer"):
            try:
                self._await_stores(STORES_AT_STOP)
            except Exception as exc:  # (a fault of ours: the rest of the stop goes on)
                log.error("receiver: storing at the stop failed (%s)", type(exc).__name__)
        # Verified files still being named: recorded as delivered once
        # linked (now, and after the writer's last work: the closes' removal
        # of their parts may wait for a disk that hangs), the others
        # interrupted.
        storing = {t.tid: t for t in self.transfers.values() if t.digest and not t.tree}
        recorded: set[bytes] = set()
        self._record_named(storing, recorded)
        for t in list(self.transfers.values()):
            if t.tid not in storing:
                self.tell("stats", self._record(t, "interrupted", "the node stopped"))
            if t.ring is not None:
                t.ring.close()
            if not hasattr(self, "writer"):
                continue
            if t.flow.written.count == 0 and t.tid not in storing:
                # It holds no chunk: it resumes nothing, and a part kept
                # would count at its whole size against its sender's quota
                # after the restart (until --part-expiry). The writer removes
                # it after its queued work, as a cancel's.
                self.writer.close(t.tid, keep=False, discard=(t.part, self._manifests(t)))
                self.count("parts-empty-not-kept")
            else:
                self.writer.close(t.tid, keep=True)
        self.transfers.clear()
        if hasattr(self, "writer"):
            self.writer.stop()
            self._record_named(storing, recorded)
        for tid, t in storing.items():
            if tid not in recorded:
                self.tell("stats", self._record(t, "interrupted", "the node stopped"))

    def _await_stores(self, within: float) -> None:
        """Files verified and being given their names by the writer (at the
        node's stop) get them first, within ``within`` seconds."""
        deadline = time.monotonic() + within
        storing = sum(1 for t in self.transfers.values() if t.digest)
        if storing:
            log.info("stopping: up to %g s for %d verified file(s) to be stored", within, storing)
        while any(t.digest for t in self.transfers.values()):
            left = deadline - time.monotonic()
            if left <= 0 or not self.writer_results.poll(int(left * 1000) + 1):
                return
            self._on_writer(self.writer_results)

    def _record_named(self, storing: dict[bytes, Incoming], recorded: set[bytes]) -> None:
        """At the stop: which of ``storing`` the writer linked under a name
        (its folder's fsync done or not), recorded as delivered (a re-offer
        is answered from that record, not stored twice) and in ``recorded``."""
        if not hasattr(self, "writer"):
            return
        for tid, (stored, linked) in self.writer.named_at_stop().items():
            t = storing.get(tid)
            if t is None or tid in recorded:
                continue
            recorded.add(tid)
            self.store.record(Delivery(t.key, stored, t.digest, linked, time.time()))
            self.tell("stats", self._record(t, ResultCode.OK, stored=stored))
            log.info("%s was stored as the node stopped", stored)

    def _reclaim(self) -> None:
        """Delete leftovers whose resume did not come within ``part_expiry``."""
        self.completed.expire(self.now())
        in_use = [t.part.name for t in self.transfers.values()]
        s = self.settings
        try:  # only unicast parts; the mreceiver sweeps its own
            gone = sweep(s.inbox, time.time(), s.part_expiry, in_use, multicast=False)
        except OSError as exc:
            self.log_limited("cannot sweep the inbox: %s", exc)
            return
        for part in gone:
            self.tell("space", SpaceForget(part=part))
            log.info("%s: no resume for %.0f s; deleted", part, self.settings.part_expiry)
        self.count("parts-reclaimed", len(gone))
        try:
            self.count("trees-reclaimed", len(sweep_trees(self.settings.inbox)))
        except OSError as exc:
            self.log_limited("cannot sweep the inbox: %s", exc)

    # -- offers (control plane, via the gateway) -------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, SpaceVerdict):
            self._on_verdict(msg)
            return
        if isinstance(msg, CancelIncoming):  # the local user's (control's token)
            self.tell("control", self._cancel(msg))
            return
        if not isinstance(msg, Inbound):
            return super().on_mail(msg)
        try:
            offer = codec.decode_as(msg.payload, Offer)
        except codec.DecodeError as exc:
            self.count(f"offer-{exc.kind}")
            return
        reply = self._take_offer(offer, msg.peer, msg.peer_host, msg.route)
        if reply is not None:
            self._answer(msg.route, reply)

    def _answer(self, route: bytes, reply: codec.Message) -> None:
        self.tell("gateway", Outbound(route=route, payload=codec.encode(reply)))

    def _refuse(self, tid: bytes, peer: bytes, code: str, reason: str) -> Refuse:
        self.count(f"refused-{code}")
        who = fingerprint(peer) if peer else "?"
        self.log_limited("refused offer from %s: %s", who, reason, level=logging.INFO)
        return Refuse(tid=tid, code=code, reason=reason)

    def _take_offer(
        self, offer: Offer, peer: bytes, host: str, route: bytes
    ) -> Refuse | Accept | None:
        """Every check but space; then the offer waits for the space
        ledger's verdict (:meth:`_on_verdict` answers it). A refusal, or None."""
        s = self.settings

        def refuse(code: str, reason: str) -> Refuse:
            return self._refuse(offer.tid, peer, code, reason)

        waiting = list(self.asking.values())
        if (
            offer.tid in self.transfers
            or offer.tid in self.completed
            or offer.tid in self.cancelled
            or offer.tid in self.expired
            or offer.tid in self.echoes
            or any(a.offer.tid == offer.tid for a in waiting)
        ):
            return refuse("duplicate", "transfer id already in use")
        # Running transfers, offers waiting for space and re-offers of
        # delivered files all hold a slot: none can pile up without bound.
        held: list[Incoming | Asking | Echo] = [
            *self.transfers.values(),
            *waiting,
            *self.echoes.values(),
        ]
        if len(held) >= s.max_transfers:
            return refuse("busy", f"receiver busy ({s.max_transfers} transfers running)")
        # At a limit of the sender's own (below), an offer taking over one of
        # its running transfers (its node restarted) may still come in.
        peers = [x.peer for x in held]
        at_peer_limit = peers.count(peer) >= s.max_transfers_per_peer
        # Identities cost nothing to make: the address is bounded too.
        hosts = [x.host for x in held]
        at_host_limit = hosts.count(host) >= s.max_transfers_per_host

        # What is offered was sealed to our identity key: only we can read it
        # (a member answering at our address sees neither name nor size).
        try:
            plain = open_details(offer.tid, s.identity, peer, offer.eph_pub, offer.details)
            details = codec.decode_as(plain, OfferDetails)
        except ProofError:
            return refuse("wrong-receiver", "this offer was sealed to another node's key")
        except (ValueError, codec.DecodeError):
            return refuse("bad-offer", "invalid offer details")
        if details.hash_alg != "blake3":
            return refuse("unsupported", f"hash {details.hash_alg[:16]!r} not supported")
        if details.mode and details.mode not in ALL_MODES:
            # The sender's mode is its claim, kept for the statistics history
            # (which `stats` prints to a terminal): one this node does not
            # know (a later release's, or escape sequences) is "other", and
            # the file is received as in any mode but parallel.
            details = dataclasses.replace(details, mode=OTHER_MODE)
        try:
            low, high = offered_chunks(s, details.chunk_size, details.min_chunk)
            # Chosen by the load now (a kept part of another allowed size, below,
            # is continued in its own): see choose_chunk.
            running = receiving(t.flow.window for t in self.transfers.values())
            chunk = choose_chunk(
                low, high, details.size, s.receive_buffer, running + len(waiting) + 1
            )
            name = check_offer(s, details.name, chunk, details.size)
        except Refusal as exc:
            return refuse(exc.code, exc.reason)
        shape = offer_refusal(details.tree, details.files, details.size, s.tree_max_files)
        if shape is not None:
            return refuse(*shape)
        key = ResumeKey(peer, name, details.size, chunk, details.source)
        # One it takes over (_take_over) frees the slot it needs.
        taken = next(
            (
                t
                for t in self.transfers.values()
                if t.key.same_version(key) and not t.flow.finishing
            ),
            None,
        )

        def over_limit() -> Refuse:
            if at_peer_limit:
                limit = s.max_transfers_per_peer
                return refuse("busy", f"too many transfers from you (max {limit})")
            limit = s.max_transfers_per_host
            return refuse("busy", f"too many transfers from {host} (max {limit})")

        if (at_peer_limit and taken is None) or (
            at_host_limit and (taken is None or taken.host != host)
        ):
            return over_limit()
        # ``peer`` is the sender's identity key, proven by CURVE (ZAP's
        # User-Id); the answer proves ours and mixes both into the keys.
        try:
            answer = respond(offer.tid, s.identity, peer, offer.eph_pub)
        except ValueError:
            return refuse("bad-offer", "invalid ephemeral or identity key")
        if any(a.key.same_version(key) for a in waiting):
            return refuse("busy", "an earlier offer of this file from you is being admitted")
        if any(t.key.same_version(key) and t.flow.finishing for t in self.transfers.values()):
            # Taking it over would drop a transfer about to be stored, and
            # starting afresh would store the file twice: its result decides.
            return refuse(
                "verifying",
                "an earlier send of this file from you is in its final hash check; "
                "its result decides (send again only if it fails)",
            )
        tree_bytes = details.size if details.tree or details.files else 0  # built beside its part
        prior = self._delivered_before(key, tree=bool(tree_bytes))
        if prior is not None and (at_peer_limit or at_host_limit):
            # Answered from the table, it would take no transfer over: a slot
            # more, past the limit that let it in only for a takeover.
            return over_limit()
        if prior is not None:
            files = details.files if tree_bytes else 0
            return self._echo(offer, peer, host, prior, answer, details.mode, key, files)
        remake_inbox(self, self.settings.inbox, self.settings.inbox_mode)
        try:
            reuse = self._resumable(dataclasses.replace(key, chunk_size=high), low, chunk)
        except OSError as exc:
            return refuse("io", f"cannot read the inbox: {exc.strerror}")
        if reuse is not None:  # in its own chunks if the offer allows them, else in ``chunk``
            key = reuse.key
        request = next(self._requests)
        self.asking[request] = Asking(
            offer, peer, host, route, details, name, key, answer, reuse, tree_bytes, self.now()
        )
        # Space, quotas of parts and of bytes still to come (per proven
        # identity and per address), for unicast and multicast together.
        self.tell(
            "space",
            SpaceReserve(
                owner=self.name,
                request=request,
                tid=offer.tid,
                peer=peer,
                host=host,
                size=details.size,
                resume=reuse.part if reuse is not None else "",
                held=reuse.held_bytes() if reuse is not None else 0,
                tree=tree_bytes,
            ),
        )
        return None

    def _on_verdict(self, v: SpaceVerdict) -> None:
        asked = self.asking.get(v.request)
        if asked is None or asked.offer.tid != v.tid:
            # Given up meanwhile, or asked by this actor before it restarted
            # (its numbers start again): not ours to hold, and the ask that
            # has this number now waits for its own verdict.
            if v.ok:
                self.tell("space", SpaceCancel(owner=self.name, tid=v.tid, request=v.request))
            return
        if v.ok and not self._room_for(asked.key.chunk_size, self.now()):
            # Accepted now, it would hold a chunk of credit the buffer has not
            # got: it waits for room, its space held (_admit_waiting).
            asked.room_since, asked.fresh = self.now(), v.fresh
            self.count("offers-waited-for-room")
            return
        del self.asking[v.request]
        if v.ok:
            reply: codec.Message = self._accept(asked, fresh=v.fresh)
        else:
            reply = self._refuse(v.tid, asked.peer, v.code or "io", v.reason)
        self._answer(asked.route, reply)

    def _parked(self) -> list[tuple[int, Asking]]:
        """Offers granted their space and waiting for room, oldest first."""
        parked = [(r, a) for r, a in self.asking.items() if a.room_since >= 0]
        parked.sort(key=lambda item: item[1].room_since)
        return parked

    def _room_for(self, chunk_size: int, since: float) -> bool:
        """Whether one more chunk of credit fits the receive buffer beside
        what the running transfers hold and one chunk for each transfer
        waiting its turn and each offer waiting for room since before
        ``since`` (or nothing is held: a chunk larger than the buffer)."""
        held = self._credit_held()
        held += sum(t.chunk_size for t in self._waiting() if t.flow.waited_at < since)
        held += sum(a.key.chunk_size for _, a in self._parked() if a.room_since < since)
        return held == 0 or held + chunk_size <= self.settings.receive_buffer

    def _admit_waiting(self) -> None:
        """Accept the offers waiting for room, the oldest first, while there
        is room for a chunk of each, and any that waited ``ROOM_WAIT``."""
        if self._admitting:  # (an accept updates the others' windows, which comes here)
            return
        self._admitting = True
        try:
            now = self.now()
            for request, asked in self._parked():
                late = now - asked.room_since >= ROOM_WAIT
                if not (late or self._room_for(asked.key.chunk_size, asked.room_since)):
                    break
                del self.asking[request]
                if late:
                    self.count("offers-accepted-without-room")
                self._answer(asked.route, self._accept(asked, fresh=asked.fresh))
        finally:
            self._admitting = False

    def _expire_asks(self) -> None:
        now = self.now()
        self._admit_waiting()
        for request, asked in list(self.asking.items()):
            if asked.room_since < 0 and now - asked.since >= SPACE_VERDICT_TIMEOUT:
                del self.asking[request]
                # Whatever the ledger grants this ask now is cancelled as soon
                # as it is granted (the mail is handled in order), so the
                # sender's retry of the same transfer id finds no reservation.
                cancel = SpaceCancel(owner=self.name, tid=asked.offer.tid, request=request)
                self.tell("space", cancel)
                self.count("space-verdict-late")
                reason = "the inbox's space could not be checked in time; try again"
                self._answer(asked.route, self._refuse(asked.offer.tid, asked.peer, "busy", reason))

    def _accept(self, asked: Asking, fresh: bool = False) -> codec.Message:
        """The ledger reserved the space: open the part and accept (or, if
        the part cannot be had, release the reservation and refuse).
        ``fresh``: the kept part chosen to continue gave way meanwhile (the
        ledger admitted a new transfer): a new part, from nothing."""
        s = self.settings
        offer, peer, host, details = asked.offer, asked.peer, asked.host, asked.details
        name, key, answer, reuse = asked.name, asked.key, asked.answer, asked.reuse
        if fresh and reuse is not None:
            drop_gone_part(self, s.inbox, reuse.part, name)
            reuse = None
        keys = TransferKeys.for_receiver(offer.tid, answer.secrets)
        held: ChunkBitmap | None = None
        part: Path | None = None
        watched: Fresh | None = None  # a new part, read back as it is written
        try:
            if reuse is not None:
                try:
                    fd = open_part(s.inbox, reuse.part, details.size)
                    part, held = s.inbox / reuse.part, reuse.held()
                except PartGone:  # (removed by hand meanwhile: its space was booked as a resume)
                    drop_gone_part(self, s.inbox, reuse.part, name)
                    self.tell("space", SpaceRelease(owner=self.name, tid=offer.tid, keep=False))
                    reason = "the kept part it was to continue is gone; offer again"
                    return self._refuse(offer.tid, peer, "busy", reason)
            else:
                part, fd = create_part(s.inbox, name, offer.tid.hex()[:12], details.size)
                # (a folder's part keeps today's check: its feeder hashes it in order)
                watched = None if details.tree else self.writer.watch(fd)
        except Refusal as exc:
            self.tell("space", SpaceRelease(owner=self.name, tid=offer.tid, keep=False))
            return self._refuse(offer.tid, peer, exc.code, exc.reason)
        assert part is not None  # named: the manifest beside it makes it resumable
        flow = IncomingTransfer(
            total=key.total,
            # (beside what is kept for those waiting: this one goes last)
            credit=self._credit(key.chunk_size, self._credit_held() + self._line().kept, extra=1),
            idle_timeout=s.idle_timeout,
            now=self.now(),
            have=held,
            # Lanes' acks go on whichever connection came last: out of order,
            # so such a transfer's credit stays at one chunk at least.
            ordered=details.mode != "parallel",
        )
        t = Incoming(
            tid=offer.tid,
            peer=peer,
            host=host,
            name=name,
            size=details.size,
            chunk_size=key.chunk_size,
            keys=keys,
            key=key,
            flow=flow,
            part=part,
            fd=fd,
            mode=details.mode,
            started=self.now(),
            tree=details.tree,
            files=details.files,
            ident=f"in{next(self._idents)}",
            held=reuse.held_bytes() if reuse is not None else 0,
        )
        self.transfers[offer.tid] = t
        self._note_credit(self._credit_held())
        self._update_windows()  # the others' share of the buffer shrank
        t.ring = self._lend_ring(t, details.mode)
        self.tell("stats", self._record(t, "running"))
        template = Manifest(key, offer.tid, part.name, b"", 0.0)
        self.writer.open(
            t.tid,
            fd,
            t.chunk_size,
            t.size,
            flow.written,
            checkpoint=(s.inbox, template),
            tree=self._tree_spec(t) if t.tree else None,
            fresh=watched,
        )
        t.reported = t.held
        self.count("accepted")
        if reuse is not None:
            self.count("resumed")
            self.count("resumed-bytes", t.held)
            log.info("%s: resuming, %d of %d bytes already held", name, t.held, t.size)
        log.debug("accepted %s (%d bytes, chunks of %d)", name, details.size, key.chunk_size)
        return Accept(
            tid=offer.tid,
            eph_pub=answer.eph_pub,
            static_pub=answer.static_pub,
            proof=answer.proof,
            data_host=s.advertise_data_host,
            data_port=s.advertise_data_port or self.data_port,
            window=flow.window.window,
            have=flatten(accept_ranges(flow.written)),
            data_ipc=str(self.ipc_path or ""),
            host_tag=local_ipc.host_tag(self.ipc_host, offer.tid, answer.secrets),
            data_ring=t.ring.path if t.ring is not None else "",
            ring_token=t.ring.token if t.ring is not None else b"",
            ring_slots=t.ring.intake.slots if t.ring is not None else 0,
            chunk_size=key.chunk_size,
        )

    def _lend_ring(self, t: Incoming, mode: str) -> shm_ring.ReceiverRing | None:
        """A shared-memory ring for a sender of this host (peercrypt/shm_ring.py):
        as many slots as the credit and SLACK (at most RING_SLOTS), within
        what the node's rings may hold together (a quarter of its
        ``receive_buffer``); none where the Unix
        socket is not offered either, without ``--shm-ring``, for a parallel
        send (its lanes send over their sockets) or a file of one chunk."""
        if not self.ipc_host or not self.settings.shm_ring or mode == "parallel":
            return None
        held = sum(o.ring.intake.slots * o.chunk_size for o in self.transfers.values() if o.ring)
        slots = shm_ring.ring_slots(
            min(t.flow.window.window, t.flow.total),
            t.chunk_size,
            shm_ring.node_budget(self.settings.receive_buffer) - held,
        )
        if not slots:
            return None
        try:
            ring = shm_ring.ReceiverRing(slots, t.chunk_size + TAG_BYTES)
        except OSError as exc:
            self.log_limited("receiver: no shared-memory ring: %s", exc)
            return None
        self.count("rings-lent")
        return ring

    def report(self) -> None:
        # What `receive` and the shell show: the transfers coming in (a few,
        # names cut short) and, in "last_in", the latest outcome.
        incoming = [
            [
                shortened(t.name, INCOMING_NAME),
                t.size,
                min(t.size, t.flow.written.count * t.chunk_size),
                t.ident,
            ]
            for t in list(self.transfers.values())[:INCOMING_SHOWN]
        ]
        self.facts["incoming"] = json.dumps(incoming, ensure_ascii=False)
        self.facts["writer_queue_peak"] = str(self.writer.queued_peak)
        # Decrypt buffers taken and not given back (0 whenever no chunk is in flight).
        self.facts["decrypt_buffers_out"] = str(self.writer.buffers.out_bytes)
        self.writer.report_counters(self.counters)  # direct-bytes, checks-early...
        super().report()

    def _outcome(self, t: Incoming, stored_as: str, reason: str) -> None:
        self.outcomes += 1
        outcome = {
            "seq": self.outcomes,
            "name": t.name[:80],
            "size": t.size,
            "stored_as": stored_as[:200],
            "ok": not reason,
            "reason": reason[:200],
        }
        self.facts["last_in"] = json.dumps(outcome, ensure_ascii=False)

    def _take_over(self, key: ResumeKey, low: int, chosen: int) -> tuple[Manifest, bool] | None:
        """A running transfer of the very same file from the same sender (in
        any chunks) is one whose sender restarted (a new offer means it
        forgot the old one): end it, and continue its part from what is
        written, in its own chunks if the offer allows them (``low`` up to
        ``key.chunk_size``), else rechunked to ``chosen``. A part holding no
        whole chunk of that is discarded by the writer after its queued work
        (deleted here, the writer would still write its last checkpoint).
        Its manifest as held now, and whether it continues."""
        for t in list(self.transfers.values()):
            if key.same_version(t.key) and not t.flow.finishing:
                # In its own chunks (its bitmap counts them), not the offer's largest.
                held = Manifest(t.key, t.tid, t.part.name, t.flow.written.to_bytes(), time.time())
                usable = key.continues(t.key, low or key.chunk_size) or bool(
                    rechunked(held, chosen).held().count
                )
                log.info("%s: offered again by its sender; the old transfer ends", t.name)
                self.count("taken-over")
                how = "continues it" if usable else "starts it afresh"
                ended = f"its sender offered the same file again; a newer offer {how}"
                self.tell("stats", self._record(t, ResultCode.ABORTED, ended))
                self._close(t, keep_part=usable, by_writer=not usable)
                # A sender that restarted does not hear it; one that did not
                # (the file sent twice at once, from a sender that cannot tell)
                # ends this send now instead of waiting out its acks.
                told = f"your node offered this file again; the newer offer {how}"
                self._send_sealed(t, Failed(code=ResultCode.ABORTED, reason=told))
                return held, usable
        return None

    def _resumable(self, key: ResumeKey, low: int, chosen: int) -> Manifest | None:
        """The kept part this offer continues (in chunks from ``low`` bytes up
        to ``key.chunk_size``, or rechunked to ``chosen``, the receiver's
        choice among them), if any; kept unicast parts of
        another version of the same file (same sender and name), or in
        other chunks holding no whole one of ``chosen``, are deleted.
        Multicast parts are never looked at: the mreceiver may be writing
        one of the same file from the same sender right now."""
        inbox = self.settings.inbox
        taken = self._take_over(key, low, chosen)
        found = scan(inbox, prefix=f".{key.name}.", multicast=False)
        # A part taken over is what it holds now, not its last checkpoint;
        # one the writer discards is none of the plan's (nor an orphan).
        gone = taken[0].part if taken is not None else ""
        kept = [m for m in found.manifests if m.part != gone and m.part not in self.discarding]
        if taken is not None and taken[1]:
            kept.append(taken[0])
        # Parts in use: running transfers' and those chosen by offers waiting
        # for the space ledger (their verdict opens them).
        self.completed.expire(self.now())
        in_use = [t.part.name for t in self.transfers.values()]
        in_use += [a.reuse.part for a in self.asking.values() if a.reuse is not None]
        plan = plan_resume(key, kept, in_use, low, chosen)
        for old in plan.obsolete:
            remove_part(inbox, old.part)
            self.tell("space", SpaceForget(part=old.part))
            self.count("parts-obsolete")
            if old.key.same_version(key):
                log.info("%s: the kept part holds no whole chunk of %d bytes; it restarts",
                         key.name, chosen)  # fmt: skip
            else:
                log.info("%s: the sender's file changed; the kept part restarts", key.name)
        # A part without a manifest (a node killed between creating it and its
        # first checkpoint) can never be resumed: it goes now, not at expiry.
        spared = {*in_use, *(k.part for k in kept), gone, *self.discarding}
        for orphan in found.kept:
            if orphan.manifest is None and orphan.has_part and orphan.part not in spared:
                remove_part(inbox, orphan.part)
                self.count("parts-orphaned")
                log.info("%s: a part without a manifest; deleted", orphan.part)
        return plan.reuse

    def _credit(
        self,
        chunk_size: int,
        others: int,
        current: int = 0,
        extra: int = 0,
        running: int | None = None,
        floor: int = 1,
    ) -> int:
        """A transfer's window: ``--window`` chunks, less to share the
        receive buffer with the transfers that have chunks left to write
        (plus ``extra`` about to start; ``running``: their count, if the
        caller has it), to stay within what the others' credit (``others``
        bytes) leaves of it and to grow from ``current`` by at most twice
        (core/receive_window.py, ``node_credit``)."""
        s = self.settings
        if running is None:
            running = self._sharing()
        running += extra
        return node_credit(s.window, chunk_size, s.receive_buffer, running, others, current, floor)

    def _credit_held(self) -> int:
        """Bytes of the receive buffer the running transfers hold together
        now (``allowance_bytes``: each one's credit, or what it has queued
        if more)."""
        now = self.now()
        return sum(
            allowance_bytes(t.flow.window, t.chunk_size, now) for t in self.transfers.values()
        )

    def _note_credit(self, held: int) -> None:
        if held > self.credit_peak:  # a fact only when it grows: rarely
            self.credit_peak = held
            self.facts["credit_peak"] = str(held)

    # -- data plane ---------------------------------------------------------------

    def _on_data(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:  # (the poller said one waits: rare)
                break
            self._on_message(frames)
            if not readable(sock):  # the batch ends here, not in a refused recv
                break
        self._flush_acks()

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        """One message of the data socket: a chunk, a sealed message or descriptors."""
        self.port_watch.delivered(frames)
        route = frames[0].bytes
        if not 2 <= len(frames) <= shm_ring.MAX_BATCH + 1:
            self._drop(route, "frames")
            return
        try:
            header = codec.decode(frames[1].buffer, HEADER_MAX_BYTES)
        except codec.DecodeError as exc:
            self._drop(route, exc.kind)
            return
        if isinstance(header, SlotHeader):  # descriptors only, one per frame
            self._on_slots(route, header, frames[2:])
            return
        if len(frames) != 3:
            self._drop(route, "frames")
            return
        if isinstance(header, ChunkHeader):
            self._on_chunk(route, header, frames[2].buffer)
        elif isinstance(header, SealedHeader):
            self._on_sealed(route, header, frames[2].buffer)
        else:
            self._drop(route, "unexpected")

    def _drop(self, route: bytes, kind: str, warn: bool = True) -> None:
        """Count a frame dropped; ``warn``: and say so (rate-limited). The
        frames of a transfer this node ended (its user cancelled it, it
        finished) that were on their way are expected: counted only."""
        self.count(f"data-dropped-{kind}")
        if warn:
            self.log_limited("receiver: dropped %s frame from a data peer", kind)

    def _chunk_of(self, route: bytes, h: ChunkHeader | SlotHeader) -> tuple[Incoming, int] | None:
        """The transfer a chunk's header names, and the length its sealed
        bytes must have; None (dropped) for any other header."""
        t = self.transfers.get(h.tid)
        if t is None:
            if h.tid in self.cancelled or h.tid in self.expired:
                self._answer_ended(route, h.tid)
            elif h.tid not in self.completed:
                self._drop(route, "unknown-transfer")
            return None
        # Pinned to the transfer's own connections (its route ids, or the
        # shared ones its sealed Attach named): dropped before a decryption.
        if route not in t.routes and not t.keys.owns_route(route):
            self._drop(route, "route")
            return None
        total = t.flow.total
        if not 0 <= h.index < total or h.last != (h.index == total - 1):
            self._drop(route, "bad-index")
            return None
        return t, min(t.chunk_size, t.size - h.index * t.chunk_size) + TAG_BYTES

    def _on_slots(self, route: bytes, first: SlotHeader, more: list[zmq.Frame]) -> None:
        """A message of descriptors (peercrypt/shm_ring.py), in the order sent."""
        self._on_slot(route, first)
        for frame in more:
            try:
                h = codec.decode_as(frame.buffer, SlotHeader, HEADER_MAX_BYTES)
            except codec.DecodeError as exc:
                self._drop(route, exc.kind)
                continue
            self._on_slot(route, h)

    def _on_slot(self, route: bytes, h: SlotHeader) -> None:
        """A chunk sealed into the transfer's shared-memory ring: copied into
        this node's own buffer first (the sender may rewrite the slot at any
        moment), then taken as a chunk of that copy; an authentic one
        releases its slot."""
        found = self._chunk_of(route, h)
        if found is None:
            return
        t, expected = found
        ring = t.ring
        offset = ring.intake.offset(h.seq, expected) if ring is not None else None
        if ring is None or offset is None:
            self._drop(route, "bad-slot")
            return
        if not t.replay.fresh(h.nonce):  # a replayed descriptor costs no copy
            self._drop(route, "replay")
            return
        if len(self.ring_copy) < expected:
            self.ring_copy = bytearray(expected)
        copy = memoryview(self.ring_copy)[:expected]
        ring.copy_out(offset, copy)
        ring.copied += 1
        if self._take_chunk(route, t, h, copy):
            ring.intake.consumed(h.seq)
            ring.taken += 1

    def _on_chunk(self, route: bytes, h: ChunkHeader, payload: memoryview) -> None:
        found = self._chunk_of(route, h)
        if found is None:
            return
        t, expected = found
        if len(payload) != expected:
            self._drop(route, "bad-length")
            return
        self._take_chunk(route, t, h, payload)

    def _take_chunk(
        self, route: bytes, t: Incoming, h: ChunkHeader | SlotHeader, payload: memoryview
    ) -> bool:
        """Authenticate, decrypt and queue a chunk of the checked length;
        whether it authenticated."""
        expected = len(payload)
        # Authenticate before anything else, duplicates included, and only
        # once per nonce: only the key holder may move the transfer's reply
        # route (among its own connections) or cause an ack, and a replayed
        # frame is neither.
        if not t.replay.fresh(h.nonce):
            self._drop(route, "replay")
            return False
        # Decrypted into a reused buffer, which the writer gives back once
        # written; every other way out (an exception too) gives it back here.
        pool = self.writer.buffers
        plaintext = pool.take(expected - TAG_BYTES)
        queued = False
        try:
            try:
                t.keys.open_chunk_into(h.index, h.last, h.nonce, payload, plaintext)
            except OpenError:
                self._drop(route, "auth")
                return False
            t.replay.accept(h.nonce)
            t.route = route
            arrival = t.flow.on_chunk(h.index, h.last, self.now())
            queued = arrival is Arrival.NEW and self.writer.write(t.tid, h.index, plaintext)
        finally:
            if not queued:
                pool.give(plaintext)
        if queued:
            return True
        if arrival is Arrival.NEW:
            t.flow.on_write_refused(h.index)
            self._drop(route, "writer-full")
        elif arrival is Arrival.OVER_CREDIT:
            self._drop(route, "over-credit")
        return True

    def _on_sealed(self, route: bytes, h: SealedHeader, payload: memoryview) -> None:
        t = self.transfers.get(h.tid)
        if t is None:
            done = self.completed.get(h.tid, self.now())
            echo = self.echoes.get(h.tid)
            if done is not None:  # our Verified was lost: answer the repeated Done again
                self._answer_finished(route, done)
            elif echo is not None:
                self._on_echo(echo, route, h, payload)
            elif h.tid in self.cancelled or h.tid in self.expired:
                self._answer_ended(route, h.tid)
            else:
                self._drop(route, "unknown-transfer")
            return
        msg = self._open_sealed(t.keys, t.replay, t.routes, route, h, payload)
        if msg is None:
            return
        t.route = route
        if isinstance(msg, Done):
            t.done_route = route
            t.flow.on_done(msg.digest, msg.chunks, self.now())
        elif isinstance(msg, Failed):
            t.flow.on_sender_failed(printable(msg.reason), self.now())
        else:
            self._drop(route, "unexpected")
        self._drive(t)
        if isinstance(msg, Done) and t.flow.finishing and self.transfers.get(t.tid) is t:
            checked = min(t.size, self.writer.checked(t.tid))  # still checking: keep waiting
            self._send_sealed(t, Verifying(chunks=msg.chunks, done_bytes=checked))

    def _open_sealed(
        self,
        keys: TransferKeys,
        replay: ReplayWindow,
        routes: set[bytes],
        route: bytes,
        h: SealedHeader,
        payload: memoryview,
    ) -> codec.Message | None:
        """A transfer's sealed message, if it comes on one of the transfer's
        own connections, authenticates and was not seen before (else counted
        and dropped: None). On another connection only a small frame is
        opened, and taken only as the transfer's :class:`Attach` naming that
        very connection: it joins ``routes`` (None too: nothing else to do)."""
        own = route in routes or keys.owns_route(route)
        if not own and len(payload) > ATTACH_MAX_BYTES:
            self._drop(route, "route")
            return None
        if not replay.fresh(h.nonce):
            self._drop(route, "replay")
            return None
        try:
            msg = codec.decode(keys.open_message(h.nonce, payload), HEADER_MAX_BYTES)
        except OpenError:
            self._drop(route, "auth" if own else "route")
            return None
        except codec.DecodeError as exc:
            self._drop(route, exc.kind)
            return None
        if isinstance(msg, Attach):
            # Its own id, so a copy raced from another connection attaches
            # nothing (and leaves the nonce to the real one); bounded.
            if not hmac.compare_digest(msg.route, route):
                self._drop(route, "route")
                return None
            if route not in routes and len(routes) >= MAX_ATTACHED:
                self._drop(route, "attached-too-many")
                return None
            replay.accept(h.nonce)
            if route not in routes:
                routes.add(route)
                self.count("data-attached")
            return None
        if not own:
            self._drop(route, "route")
            return None
        replay.accept(h.nonce)
        return msg

    def _send_sealed(self, t: Incoming, msg: codec.Message) -> tuple[bytes, bytes] | None:
        if t.route is None:
            return None
        nonce, sealed = t.keys.seal_message(codec.encode(msg))
        header = codec.encode(SealedHeader(tid=t.tid, nonce=nonce))
        self.data.send_multipart([t.route, header, sealed])
        return header, sealed

    def _flush_acks(self) -> None:
        held = -1  # what all of them hold: counted once, when an ack is due
        now = self.now()
        line: _Line | None = None  # (those waiting their turn: looked for once)
        for t in self.transfers.values():
            ring = t.ring
            # Slots copied out go back to the sender at once, not with the
            # ack of their write: a ring needs to cover the copy, not the
            # writer's queue (peercrypt/shm_ring.py).
            release = ring is not None and ring.release_due
            if t.flow.ack_due or release:
                if held < 0:
                    held, line = self._credit_held(), self._line()
                held = self._ack(t, held, now, force=release, line=line)
        if held >= 0 and any(t.flow.waiting for t in self.transfers.values()):
            self._grant_waiting(held, now)  # acks that shrank may have made room
        if held >= 0 and self.asking:
            self._admit_waiting()  # (after the running ones' turns)

    def _update_windows(self) -> None:
        """Window updates: every transfer whose credit changed since its
        last ack and that has not acked for a while is told its new credit
        (core/incoming.py), so a transfer that trickles gives back the
        node's buffer it no longer has a share of, and one whose share grew
        hears of it; and every transfer whose chunks wait for the writer
        and that has not acked for ``STILL_WRITING_AFTER`` seconds acks
        anyway (the sender's retransmission timer restarts on it). Run when
        a transfer starts, and every ``STILL_WRITING_AFTER`` / 2 seconds
        while any runs."""
        now = self.now()
        if self.asking:
            self._admit_waiting()
        due = [t for t in self.transfers.values() if t.route is not None and t.flow.update_due(now)]
        if not due:  # (the common case: one cheap look at each transfer, nothing more)
            return
        held = self._credit_held()
        running = self._sharing()
        line = self._line()
        due.sort(key=lambda t: t.flow.waited_at if t.flow.waiting else -1.0)  # the longest first
        for t in due:  # (a route: none before its first chunk, nowhere to send it)
            held = self._ack(t, held, now, update=True, running=running, line=line)

    def _grant_waiting(self, held: int, now: float) -> None:
        """Give the transfers waiting their turn (a credit of 0: the others
        held the buffer) what the buffer now has room for, the longest
        waiting first, at once (core/incoming.py, ``window_update``)."""
        line, running = self._line(), self._sharing()
        for t in self._waiting():
            if t.flow.waiting:  # (not given its turn by then)
                held = self._ack(t, held, now, update=True, running=running, line=line)

    def _sharing(self) -> int:
        """How many share the receive buffer: the transfers with chunks left
        to write (``receiving``) and the offers waiting for room."""
        running = receiving(t.flow.window for t in self.transfers.values())
        return running + sum(1 for a in self.asking.values() if a.room_since >= 0)

    def _waiting(self) -> list[Incoming]:
        """The transfers waiting their turn, the longest waiting first."""
        waiting = [t for t in self.transfers.values() if t.flow.waiting and t.route is not None]
        waiting.sort(key=lambda t: t.flow.waited_at)
        return waiting

    def _line(self) -> _Line:
        """The transfers waiting their turn and the offers waiting for room,
        in one line, the longest waiting first: the bytes of the buffer kept
        for them (one chunk each), in all and ahead of each waiting transfer.
        A transfer whose ack comes while others wait leaves them the room it
        frees, and each gets its turn (core/receive_window.py, ``node_credit``)."""
        line: list[tuple[float, int, Incoming | None]] = [
            (t.flow.waited_at, t.chunk_size, t) for t in self._waiting()
        ]
        line += [(a.room_since, a.key.chunk_size, None) for _, a in self._parked()]
        line.sort(key=lambda item: item[0])
        ahead: dict[bytes, int] = {}
        kept = 0
        for _, chunk, t in line:
            if t is not None:
                ahead[t.tid] = kept
            kept += chunk
        return _Line(kept, ahead)

    def _ack(
        self,
        t: Incoming,
        held: int,
        now: float,
        force: bool = False,
        update: bool = False,
        running: int | None = None,
        line: _Line | None = None,
    ) -> int:
        """Send ``t`` its ack if one is due (``update``: its window update
        if one is due), with the credit the others' allowances (of ``held``
        bytes, all transfers' together) and those waiting their turn ahead of
        it (``line``, if looked for) leave it; what they all hold after.
        ``running``: the transfers that share the buffer, if counted."""
        own = allowance_bytes(t.flow.window, t.chunk_size, now)
        flow = t.flow
        if line is None:
            line = self._line()
        # Kept for those waiting ahead of it (for all of them if it does not wait).
        others = held - own + line.ahead.get(t.tid, line.kept)
        credit = self._credit(
            t.chunk_size, others, flow.window.window, running=running, floor=flow.floor
        )
        still_writing, told_to_wait = flow.still_writing, flow.waiting
        too_long = flow.waited_too_long
        ack = flow.window_update(credit, now) if update else flow.ack(credit, now, force=force)
        if ack is None:
            return held
        if told_to_wait != flow.waiting:
            self.count("credit-turns" if told_to_wait else "credit-waits")
        if flow.waited_too_long and not too_long:
            self.count("credit-waits-too-long")  # one chunk at least from now on
        held += allowance_bytes(t.flow.window, t.chunk_size, now) - own
        self._note_credit(held)
        if flow.still_writing > still_writing:
            self.count("acks-still-writing")
        elif update:
            self.count("window-updates")
        cumulative, sack, window = ack
        ring = t.ring
        released = ring.told() if ring is not None else 0
        ack_msg = Ack(cumulative=cumulative, sack=flatten(sack), window=window, released=released)
        self._send_sealed(t, ack_msg)
        return held

    def _drive(self, t: Incoming) -> None:
        """Do what the transfer asks for."""
        for out in t.flow.poll():
            if isinstance(out, FinishFile):
                self.writer.finish(t.tid)
            elif isinstance(out, Store) and t.tree:  # verified: too late to cancel from here
                t.digest = out.digest
                self.count("trees-verified")
                self.writer.unpack(t.tid, self._tree_spec(t))
            elif isinstance(out, Store):  # named by the writer: this thread waits for no disk there
                t.digest = out.digest
                self.count("files-verified")
                s = self.settings
                self.writer.publish(t.tid, t.part, s.inbox, t.name, s.file_mode)
            else:
                self._abandon(t, out)

    def _tree_spec(self, t: Incoming) -> TreeSpec:
        """How the writer builds ``t``'s folder (actors/tree_store.py)."""
        s = self.settings
        return TreeSpec(s.inbox, t.part.name, t.tree, s.tree_max_files, s.file_mode, s.inbox_mode)

    def _abandon(self, t: Incoming, out: Abandon) -> None:
        # A part that holds no chunk resumes nothing: not kept (unless this
        # node's user said --keep). A member's offers left idle or abandoned
        # at once each left a part and its manifest (a bitmap of up to 4 MiB)
        # until --part-expiry, charged to no one's space.
        emptied = out.keep_part and t.flow.written.count == 0 and out.code != ResultCode.CANCELLED
        keep = out.keep_part and not emptied
        kept = "kept for resume" if keep else "no chunk to resume: removed"
        if out.code == ResultCode.ABORTED:
            log.info("sender abandoned %s: %s", t.name, out.reason)
            self.count("aborted-by-sender")
        elif out.code == "expired":
            log.info("%s: %s for %.0f s; %s", t.name, out.reason, t.flow.idle_timeout, kept)
            self.count("expired")
        elif out.code == "hash-mismatch":
            self.count("hash-mismatch")
            log.warning("%s: whole-file hash mismatch; discarded", t.name)
        elif out.code == ResultCode.NO_SPACE:
            self.count("no-space")
            log.error("%s: the inbox's disk is full; %s", t.name, kept)
        elif out.code == ResultCode.TIMEOUT:
            self.count("check-timeout")
            log.error("%s: %s; %s", t.name, out.reason, kept)
        elif out.code == ResultCode.CANCELLED:
            self.count("cancelled")
            deleted = "kept for resume" if keep else "its part deleted"
            log.info("%s (%s): cancelled by this node's user; %s", t.name, t.ident, deleted)
        else:
            log.error("writing %s failed: %s", t.name, out.reason)
        if out.notify:
            self._send_sealed(t, Failed(code=out.code, reason=out.reason))
        if out.code in (ResultCode.CANCELLED, "expired"):
            ended, memory = (
                (self.cancelled, CANCELLED_MEMORY)
                if out.code == ResultCode.CANCELLED
                else (self.expired, EXPIRED_MEMORY)
            )
            if len(ended) >= memory:
                ended.pop(next(iter(ended)))
            failed = Failed(code=out.code, reason=out.reason)
            told = self.now() if t.route is not None else float("-inf")
            ended[t.tid] = Cancelled(t.keys, set(t.routes), failed, told)
        self.tell("stats", self._record(t, out.code, out.reason))
        if emptied:
            self.count("parts-empty-not-kept")
        # A cancel must not wait for the disk (it may be what hangs): the
        # writer removes the part after its queued work (as one not kept,
        # whose chunks may still be queued).
        self._close(t, keep_part=keep, by_writer=out.code == ResultCode.CANCELLED or emptied)
        if out.code != "expired":
            self._outcome(t, "", out.reason or out.code)

    def _cancel(self, msg: CancelIncoming) -> SettingReply:
        """The local user cancels an incoming transfer by its id: it ends at
        once (in a final check too: a writer thread still inside that
        check's fsync is left to it, and what it finds is dropped), the
        sender is told, the slot and the space reservation are freed, and
        the part is deleted unless ``keep``."""
        t = next((t for t in self.transfers.values() if t.ident == msg.transfer), None)
        if t is None:
            text = f"no incoming transfer {msg.transfer[:32]} (see `peercrypt status`)"
            return SettingReply(request=msg.request, ok=False, text=text)
        who = fingerprint(t.peer) if t.peer else "?"
        if not t.flow.on_cancelled(keep_part=msg.keep):  # its folder is being stored
            text = (
                f"incoming transfer {t.ident} ({t.name} from {who}) is verified and being "
                "stored: too late to cancel"
            )
            return SettingReply(request=msg.request, ok=False, text=text)
        self._drive(t)
        kept = "its part is kept for a resume" if msg.keep else "its part is deleted"
        text = f"cancelled incoming transfer {t.ident} ({t.name} from {who}); {kept}"
        return SettingReply(request=msg.request, ok=True, text=text)

    def _answer_finished(self, route: bytes, done: Remembered) -> None:
        """A frame of a finished transfer: its Verified again, at most
        every ``CANCEL_ANSWER_EVERY`` (:class:`Remembered`)."""
        if route != done.route:
            self._drop(route, "route")
            return
        now = self.now()
        if now - done.answered < CANCEL_ANSWER_EVERY:
            self._drop(route, "finished", warn=False)
            return
        done.answered = now
        self.data.send_multipart([route, done.header, done.payload])

    def _answer_ended(self, route: bytes, tid: bytes) -> None:
        """A frame of a transfer this node's user cancelled, or that
        expired: the Failed again, on the transfer's own connections only,
        at most every ``CANCEL_ANSWER_EVERY`` (the frames are not opened: a
        sender that goes on costs one reply per interval)."""
        kind = "cancelled" if tid in self.cancelled else "expired"
        c = self.cancelled.get(tid) or self.expired[tid]
        now = self.now()
        own = route in c.routes or c.keys.owns_route(route)
        if not own:
            self._drop(route, kind)  # another connection naming it
            return
        if now - c.answered < CANCEL_ANSWER_EVERY:
            self._drop(route, kind, warn=False)
            return
        c.answered = now
        if kind == "expired":
            self.count("expired-answered")
        nonce, sealed = c.keys.seal_message(codec.encode(c.failed))
        self.data.send_multipart([route, codec.encode(SealedHeader(tid=tid, nonce=nonce)), sealed])

    # -- writer results -----------------------------------------------------------

    def _on_writer(self, sock: zmq.Socket[Any]) -> None:
        for result in self.writer.take_results(sock):
            if isinstance(result, Detached):  # a check that ended after its file
                self.count("late-checks-dropped")  # was closed (cancelled): nothing
                continue
            t = self.transfers.get(result.tid)
            if t is None:
                continue
            if isinstance(result, Written):
                t.flow.on_written(result.index, self.now())
            elif isinstance(result, Finished):
                t.flow.on_hashed(result.digest)
            elif isinstance(result, Unsaved):
                self.log_limited("cannot record %s for resume: %s", t.name, result.text)
                continue
            elif isinstance(result, Published):
                self._published(t, result)
                continue
            elif isinstance(result, Unpacked):
                self._stored_tree(t, result.stored)
                continue
            elif isinstance(result, WriteFailed) and t.digest and not t.tree:
                # (a fault while it was stored: its flow has ended, so it is
                # ended here, not left waiting for a name that never comes)
                text = f"cannot store the verified file: {result.text}"
                self._published(t, Published(t.tid, "", None, text))
                continue
            elif isinstance(result, TreeFailed):
                self._tree_failed(t, result)
                continue
            elif isinstance(result, WriteFailed) and result.no_space:
                t.flow.on_disk_full(result.text)
            else:
                t.flow.on_write_error(result.text)
            self._drive(t)
        self._flush_acks()

    def _published(self, t: Incoming, result: Published) -> None:
        """The writer gave ``t``'s verified file its final name, or could not
        (every name taken, or the link failed: its part is kept)."""
        if not result.stored:
            self._send_sealed(t, Failed(code=result.code, reason=result.text))
            self.tell("stats", self._record(t, result.code, result.text))
            self._close(t, keep_part=result.kept)
            return
        if result.stamp is not None:  # a re-offer of it is answered with this verdict
            delivery = Delivery(t.key, result.stored, t.digest, result.stamp, time.time())
            self.store.record(delivery)
        self._stored(t, t.digest, result.stored)

    def _stored_tree(self, t: Incoming, tops: tuple[str, ...]) -> None:
        """``t``'s folder is in the inbox under ``tops``: remembered (if not
        too large for the table) so a re-offer is answered with this verdict."""
        stamp = self._tree_stamp(tops)
        if stamp is not None:
            delivery = Delivery(t.key, stamp.stored_as, t.digest, stamp, time.time())
            self.store.record(delivery)
        else:
            self.count("trees-not-remembered")
        self._stored(t, t.digest, ", ".join(tops)[:1024])

    def _tree_failed(self, t: Incoming, result: TreeFailed) -> None:
        """The verified stream did not make a tree: a wrong manifest or a file
        that is not what its hash says (the sender's fault: nothing is kept),
        or an I/O error (the part is kept for a resume)."""
        code = "bad-tree" if result.bad else ResultCode.IO
        reason = f"the folder was not stored: {result.text}"
        self.count(f"tree-{code}")
        self.log_limited("%s from %s: %s", t.name, fingerprint(t.peer) if t.peer else "?", reason)
        self.tell("stats", self._record(t, code, reason))
        self._close(t, keep_part=not result.bad)
        self._outcome(t, "", reason)
        self._send_sealed(t, Failed(code=code, reason=reason[:500]))  # once nothing is left

    def _stored(self, t: Incoming, digest: bytes, stored: str) -> None:
        self.tell("stats", self._record(t, ResultCode.OK, stored=stored))
        self._close(t, keep_part=False)
        self.count("received")
        self.count("received-bytes", t.size)
        self._outcome(t, stored, "")
        log.info(
            "received %s (%d bytes) from %s", stored, t.size, fingerprint(t.peer) if t.peer else "?"
        )
        sent = self._send_sealed(t, Verified(digest=digest, stored_as=stored))
        if sent is not None:
            self._remember(t.tid, sent, t.done_route)

    # -- bookkeeping -------------------------------------------------------------

    def _manifests(self, t: Incoming) -> list[Path]:
        """The files of ``t``'s manifest (and its temporary) in the inbox."""
        name = manifest_name(t.part.name)
        return [self.settings.inbox / name, self.settings.inbox / (name + ".tmp")]

    def _close(self, t: Incoming, keep_part: bool, by_writer: bool = False) -> None:
        """End ``t``: the part removed unless ``keep_part`` (here, or by the
        writer after its queued work if ``by_writer``), its fd closed by the
        writer, its space released."""
        self.transfers.pop(t.tid, None)
        if not self.transfers:
            self.trim_when_idle(lambda: not self.transfers)
        if t.ring is not None:
            self.count("ring-chunks", t.ring.taken)
            self.count("ring-copies", t.ring.copied)
            t.ring.close()
        if by_writer and not keep_part:
            self.writer.close(t.tid, keep=False, discard=(t.part, self._manifests(t)))
            if len(self.discarding) >= CANCELLED_MEMORY:
                self.discarding.pop(next(iter(self.discarding)))
            self.discarding[t.part.name] = None
        elif not keep_part:
            # Before the writer may close the fd: the part's name is removed
            # only while it still refers to the file open as ``t.fd``.
            why = discard_part(t.part, t.fd)
            if why:  # (an inbox made read-only: the part stays, the rest of the close goes on)
                self.log_limited("receiver: cannot remove %s: %s", t.part.name, why)
            for path in self._manifests(t):
                remove_quietly(path)
        # The writer closes the fd after its queued work. Without keep_part no
        # write (hence no checkpoint) is pending: the transfer was finished,
        # or its file failed and the writer dropped it.
        if not by_writer or keep_part:
            self.writer.close(t.tid, keep=keep_part)
        written = self._written(t)
        self.tell(
            "space",
            SpaceRelease(
                owner=self.name, tid=t.tid, keep=keep_part, part=t.part.name, written=written
            ),
        )

    # -- the statistics history ---------------------------------------------------

    def _record(self, t: Incoming, result: str, reason: str = "", stored: str = "") -> StatsRecord:
        """``file``: the name it was stored under, else the offered name, sanitised."""
        who = fingerprint(t.peer) if t.peer else "?"
        return StatsRecord(
            session=t.tid.hex(),
            side="receive",
            peer=who,
            peer_fingerprint=who if t.peer else "",
            mode=t.mode,
            file=stored or t.name,
            size=t.size,
            done_bytes=t.size if result == ResultCode.OK else self._written(t),
            chunk_size=t.chunk_size,
            chunks=t.flow.total,
            started=t.wall,
            duration=self.now() - t.started,
            result=result[:32],
            reason=reason[:512],
            params={"files": str(t.files)} if t.tree else {},
            stats={"held_bytes": t.held},
        )

    def _report_progress(self) -> None:
        """Each transfer's bytes written to the space ledger, and its
        statistics sample (with many running, each every few ticks:
        :func:`~peercrypt.core.sampling.sample_due`)."""
        samples: list[StatsSample] = []
        moved: list[SpaceWritten] = []
        self.ticks += 1
        for t in self.transfers.values():
            written = self._written(t)
            if written != t.reported:  # its reservation shrinks as it writes
                t.reported = written
                moved.append(SpaceWritten(owner=self.name, tid=t.tid, written=written))
            if not sample_due(t.tid[0], self.ticks, len(self.transfers)):
                continue
            if not t.who:
                t.who = fingerprint(t.peer) if t.peer else "?"
            samples.append(
                StatsSample(
                    session=t.tid.hex(),
                    side="receive",
                    peer=t.who,
                    t=self.now() - t.started,
                    done_bytes=written,
                    credit=t.flow.window.window,
                )
            )
        for writes in columns.batches(moved, SpaceWrittens):  # one message, not one each
            self.tell("space", writes)
        for batch in batches(samples):
            self.tell("stats", batch)

    @staticmethod
    def _written(t: Incoming) -> int:
        return min(t.size, t.flow.written.count * t.chunk_size)

    def _expire_idle(self) -> None:
        now = self.now()
        for echo in list(self.echoes.values()):
            if now - echo.since >= self.settings.idle_timeout:
                del self.echoes[echo.tid]  # no Done came: a row, as any dropped transfer
                reason = f"no Done from the sender for {self.settings.idle_timeout:.0f} s"
                self.tell("stats", self._echo_record(echo, "expired", reason))
        for t in list(self.transfers.values()):
            if t.flow.finishing:  # the final checks' progress bounds it now: its
                # own, or that of one ahead of it in the writer's queue
                t.flow.on_checked(self.writer.checks_moved, now)
            t.flow.on_timer(now)
            self._drive(t)
        self.facts["active"] = str(len(self.transfers))
