"""Multicast receiver actor (``mreceiver``): joins sessions, repairs, verifies.

Announces arrive from the gateway (control plane, CURVE). Per session:

1. ``McAnnounce`` (within the gateway's budget of announces per identity,
   address and node) -> for a new session, the session limits (all, per
   identity, per address: ``busy``) before any public-key work; its name
   and size opened with this node's identity key
   (sealed to it by the sender after a hello; ``wrong-receiver`` if sealed
   to another key, ``unsealed`` if they came in clear), checks (
   name, chunk size, the signing key is the identity CURVE proved for the
   sender), space and quotas (asked of the node's one space ledger,
   ``actors/space.py``, shared with unicast offers; the announce waits for
   its verdict), a part file in the inbox
   (``actors/inbox.py``) with its resume manifest - or the part this node kept
   of this very session from this very sender, when it restarted mid-session
   (``core/multicast.py``, :func:`session_resume_key`): the chunks it holds are
   neither NAKed nor written again -, ``McJoin`` with a fresh ephemeral key,
   this node's identity key and its proof (crypto/handshake.py), and this
   actor's unicast repair port.
2. ``McKey`` -> the content key is unwrapped; a SUB socket connects to the
   sender's advertised PUB port and subscribes to the session id. With a UDP
   multicast group in the announce, the receiver joined the group at step 1
   instead (``actors/udp_multicast.py``) and reassembles each sealed chunk
   from its datagrams (``peercrypt/core/fragments.py``).
3. Chunks (from the SUB socket, the group or the repair PULL socket) are
   authenticated by the sender's signature (a co-receiver has the content
   key too: ``peercrypt/crypto/chunk_signature.py``), decrypted with the
   content key and queued to the writer thread (the
   receiver's :class:`~actors.file_writer.FileWriter`: positioned writes,
   BLAKE3 in file order). Every ``ACK_INTERVAL`` an ``McAck`` reports the
   written point and NAK ranges from :class:`~peercrypt.core.multicast.GapTracker`.
4. When every chunk is written and the sender's ``McStatus`` carried the
   whole-file hash: fsync, compare, link the verified open file under a free
   name, ``McDone``.

A session here is the proven sender's and its id together
(:func:`~peercrypt.core.multicast.session_tid` keys the tables, the writer
and the space ledger): senders choose ids and every co-receiver learns them,
so another member announcing the same id gets a session of its own, and
neither is refused nor displaced for the other. A chunk's header names only
the id: a published chunk belongs to the session of the SUB socket it came
in on, a datagram to the session of the group socket that read it (each
session has its own), a repair to the one session of that id whose repair
key made its tag; the sender's signature then decides.

The writer keeps the part's manifest (every 16 MiB or 64 chunks, after an
``fdatasync``), so a receiver killed mid-session and restarted answers the
sender's next status with ``unknown-session``, is announced to again, and
continues from what it holds. A part is dropped when its session ends
without it (the sender ended it, or it went silent); one left by a node that
never came back is reclaimed after ``--part-expiry`` like a unicast part, by
this actor (the unicast receiver never touches a ``.mc.part``).

A file this node stored from a session (one plain file) is remembered
(:class:`~peercrypt.core.delivered.DeliveredTable`, kept in the data
directory as ``multicast-delivered.msgpack`` and its journal, keyed as a unicast
delivery: the proven sender, the name, size and the source tag the sealed
``McFileDetails`` carried). The same sender announcing the same version
again, while the stored file is unchanged, is answered ``McHeld`` (with this
node's proof, as a join) instead of a join: nothing is written; once the
sender's ``McStatus`` carries the whole-file hash, the answer is ``McDone``
with the earlier name if it is the hash verified then, else a failure (and
the entry is forgotten: the next send is a fresh transfer).

Memory: chunks queued to the writer are bounded (``QUEUE_CHUNKS``; beyond it
a chunk is dropped and NAKed later); the SUB high-water mark is bounded;
nothing depends on the file size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from actors import udp_multicast
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
    open_part,
    remove_part,
    remove_quietly,
    scan,
    stamp,
    sweep,
)
from actors.port_watch import DIAL_EVENTS, PortWatch, recv_monitor_message
from actors.read_back import HASH_HOLD
from actors.space import drop_gone_part, remake_inbox, report_holdings
from peercrypt.core import fragments
from peercrypt.core.address import join_host_port
from peercrypt.core.bitmap import flatten
from peercrypt.core.completed import CompletedMemory
from peercrypt.core.delivered import Delivery, FileStamp
from peercrypt.core.multicast import GapTracker, session_resume_key, session_tid
from peercrypt.core.multicast_incoming import (
    ACK_INTERVAL,
    FinishFile,
    MulticastIncoming,
    SendAck,
)
from peercrypt.core.names import INCOMING_NAME, shortened
from peercrypt.core.port_guard import NULL_HANDSHAKE, GuardLimits, held_limit
from peercrypt.core.redial import Redial
from peercrypt.core.resume import RECLAIM_INTERVAL, Manifest, ResumeKey, plan_resume
from peercrypt.core.tree import offer_refusal
from peercrypt.crypto.chunk_signature import (
    RECEIVER_KEY_BYTES,
    SIG_BYTES,
    ChunkVerifier,
    proven_signer,
    repair_tag,
    subscription_token,
)
from peercrypt.crypto.handshake import (
    ProofError,
    Response,
    SessionSecrets,
    open_details,
    respond,
)
from peercrypt.crypto.identity import fingerprint
from peercrypt.crypto.keywrap import ContentSealer, unwrap
from peercrypt.crypto.transfer import TAG_BYTES, OpenError
from peercrypt.runtime.actor import PEER_RCVHWM, Actor, ActorEnv, SetupError, bound_port, dial
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import MAX_NAME, Inbound, Outbound
from peercrypt.wire.multicast_messages import (
    LEGACY_REFUSAL,
    McAck,
    McAnnounce,
    McChunk,
    McDetails,
    McDone,
    McFileDetails,
    McHeld,
    McJoin,
    McKey,
    McListen,
    McListenEnd,
    McListening,
    McReceived,
    McRefuse,
    McStatus,
)
from peercrypt.wire.network_messages import MAX_REPAIR_SENDERS, REPAIR_DOMAIN, RepairSenders
from peercrypt.wire.space_messages import (
    SpaceCancel,
    SpaceForget,
    SpaceRelease,
    SpaceReserve,
    SpaceVerdict,
    SpaceWritten,
)
from peercrypt.wire.stats_messages import StatsRecord, StatsSample, batches
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.mreceiver")

# Characters of a session's id in its part's name, as a unicast part's
# (``.NAME.ID-RANDOM.mc.part.manifest.tmp``: 200 bytes of a name and 52).
PART_ID_CHARS = 12
QUEUE_CHUNKS = 128  # authenticated chunks waiting for the writer, per session
STATS_INTERVAL = 0.1  # seconds between samples for the statistics history
STORES_AT_STOP = 3.0  # as the receiver's (actors/receiver.py)
# The SUB sockets and the repair port read without a cap (PEER_RCVHWM: with
# one, a publisher or a repair sender could abort the node, docs/security.md);
# what they hold unread is bounded from outside libzmq (core/port_guard.py).
_sub_ids = itertools.count()
_repair_ids = itertools.count()
MAX_SESSIONS = 16
# Of those, from one proven identity (CURVE key) and from one address (fresh
# identities cost nothing).
MAX_SESSIONS_PER_PEER = 4
MAX_SESSIONS_PER_HOST = 8
MAX_LISTENERS = 16
HEADER_MAX_BYTES = 512
WRAP_MEMORY = 4  # announce attempts whose derived secrets we keep
# Bytes of chunks being reassembled from datagrams, per session (at least 2
# chunks): 15 chunks of 1 MiB (each with its tag and signature).
PENDING_BYTES = 16 * 1024 * 1024
# An announce waits this long for the space ledger's verdict, then is
# forgotten (the sender announces again).
SPACE_VERDICT_TIMEOUT = 5.0
# Files stored from sessions, in the data directory (core/delivered.py); the
# unicast receiver keeps its own (delivered.msgpack).
DELIVERED_FILE = "multicast-delivered.msgpack"
DELIVERED_JOURNAL = "multicast-delivered.journal"  # rows since that snapshot


@dataclass
class Session:
    tid: bytes  # session_tid(peer, sid): its key here, in the writer and the ledger
    sid: bytes
    peer: bytes
    route: bytes
    name: str
    size: int
    chunk_size: int
    flow: MulticastIncoming
    verifier: ChunkVerifier
    part: Path
    fd: int
    pub_endpoint: str
    started: float
    wraps: dict[int, SessionSecrets] = field(default_factory=dict)
    sealer: ContentSealer | None = None
    sub: zmq.Socket[Any] | None = None
    sub_monitor: zmq.Socket[Any] | None = None  # its connections, for the watch
    sub_paused: bool = False  # disconnected by the watch, until the redial
    redial: Redial = field(default_factory=Redial)
    queued: int = 0
    # UDP/IP multicast (docs/multicast.md, "Transports").
    # Its socket and receiving thread (datagrams -> chunks, once the key is known).
    udp: udp_multicast.GroupReceiver | None = None
    # Ours alone, given to the sender in McJoin: tags its repairs to us and
    # makes our subscription token (crypto/chunk_signature.py).
    receiver_key: bytes = field(default_factory=lambda: os.urandom(RECEIVER_KEY_BYTES))
    wall: float = field(default_factory=time.time)  # when it started, for the history
    host: str = ""  # the sender's address as the gateway saw it (quotas)
    tree: int = 0  # a folder or several files: its manifest's bytes (peercrypt/core/tree.py)
    files: int = 0
    reported: int = 0  # bytes written, as the space ledger last heard
    held: int = 0  # bytes its kept part held when it began (a resume): they did not cross
    source: bytes = b""  # the file version's source tag (McFileDetails); b"": none

    @property
    def tracker(self) -> GapTracker:
        return self.flow.tracker


@dataclass
class Joining:
    """An announce that passed every check but space, waiting for the ledger."""

    announce: McAnnounce
    env: Inbound
    tid: bytes  # session_tid(env.peer, announce.sid)
    answer: Response
    verifier: ChunkVerifier
    name: str
    key: ResumeKey
    kept: Manifest | None
    since: float
    tree: int = 0  # a folder or several files: its manifest's bytes
    files: int = 0
    source: bytes = b""


@dataclass
class Holding:
    """An announce of a file this node delivered before (same proven sender,
    name, size and source tag; the stored file unchanged): it waits for the
    sender's whole-file hash, then answers with the earlier verdict. The
    sender's status comes every 0.5 s meanwhile; without one for the idle
    timeout it is forgotten."""

    tid: bytes
    sid: bytes
    peer: bytes
    host: str
    route: bytes
    delivery: Delivery
    since: float  # its announce, then the sender's last status
    chunk_size: int
    began: float = 0.0  # its announce (the actor's clock)
    wall: float = field(default_factory=time.time)


class MulticastReceiverActor(Actor):
    name = "mreceiver"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        # Keyed by session_tid(proven sender, session id): a co-receiver knows
        # the id, so it may announce it too - as a session of its own.
        self.sessions: dict[bytes, Session] = {}
        # tid -> its McDone, to answer the sender again (an hour, at most completed_memory)
        self.completed: CompletedMemory[bytes] = CompletedMemory(settings.completed_memory)
        self.listeners: dict[int, int] = {}  # request -> sessions still to report (0: all)
        self.outcomes = 0  # sessions ended, for "last_multicast_in" (the shell announces it)
        # Multicast parts, running and kept, are in the node's one space
        # ledger with unicast ones (actors/space.py; docs/multicast.md, "Part files").
        self.joining: dict[int, Joining] = {}  # request -> announce waiting for space
        self._requests = itertools.count(1)
        # Files stored from sessions (one plain file each), and the announces
        # of one of them again, waiting for the sender's hash (tid -> ...).
        self.delivered = DeliveredStore(self, settings.data_dir, DELIVERED_FILE, DELIVERED_JOURNAL)
        self.holding: dict[bytes, Holding] = {}

    def setup(self) -> None:
        s = self.settings
        s.inbox.mkdir(parents=True, exist_ok=True, mode=s.inbox_mode)
        self.repair: zmq.Socket[Any] | None = None
        self.repair_monitor: zmq.Socket[Any] | None = None  # the repair socket's PortWatch monitor
        # What publishers (the SUBs) and repair senders (the repair port)
        # make libzmq hold unread, each bounded as the data port is.
        limits = GuardLimits(held=s.data_port_memory or held_limit(s.receive_buffer, self._frame()))
        self.sub_watch = PortWatch(
            limits,
            self.count,
            prefix="sub-",
            allowance=NULL_HANDSHAKE,
            on_closed=self._on_sub_flood,
        )
        self.sub_watch.attach(self)
        self.repair_watch = PortWatch(
            limits, self.count, prefix="repair-", allowance=NULL_HANDSHAKE
        )
        low, high = s.multicast_repair_ports
        self._bind_repair(low, high)
        address = f"inproc://pc-{self.env.node_uid}/mreceiver-writer"
        self.writer_results = self.socket(zmq.PAIR)
        self.writer_results.bind(address)
        self.watch(self.writer_results, self._on_writer)
        # At the node's priority, unlike the unicast receiver's writer: the
        # written point it reports is what moves the sender's window, so a
        # writer waiting for a core holds back the session for every
        # receiver (docs/multicast.md, "The datagram path").
        queued, pooled = writer_bounds(self.settings)
        self.writer = FileWriter(
            self.env.context,
            address,
            queued,
            nice=False,
            direct=self.settings.direct_writes,
            as_written=self.settings.check_as_written,
            pool_bytes=pooled,
        )
        self.writer.start()
        running = lambda: bool(self.sessions)  # noqa: E731
        self.call_every_while(ACK_INTERVAL, self._on_timers, running)
        self.call_every_while(1.0, self._count_sessions, running)
        self.call_every_while(STATS_INTERVAL, self._report_progress, running)
        self.trim_while_busy(running)
        self.call_every_while(
            1.0, self._expire_joins, lambda: bool(self.joining) or bool(self.holding)
        )
        self._reclaim()
        self.call_every(RECLAIM_INTERVAL, self._reclaim)
        self.delivered.load()
        self._report_space()

    def report(self) -> None:
        # Counter ``direct-bytes``: what the writer wrote with O_DIRECT
        # (--direct-writes), as the unicast receiver reports its writer's.
        self.writer.report_counters(self.counters)
        self.facts["multicast_decrypt_buffers_out"] = str(self.writer.buffers.out_bytes)
        # What `top` shows under "Receiving" (a few, names cut short): a
        # session's name, size, bytes written and sender.
        self.facts["incoming_multicast"] = json.dumps(
            [
                [shortened(s.name, INCOMING_NAME), s.size, _written(s), fingerprint(s.peer)[:19]]
                for s in list(self.sessions.values())  # at most MAX_SESSIONS
            ],
            ensure_ascii=False,
        )
        super().report()

    def _report_space(self) -> None:
        """Tell the space ledger, from scratch, what this receiver holds: the
        multicast parts kept on disk and the sessions running."""
        for x in self.sessions.values():
            x.reported = _written(x)
        report_holdings(self, self.settings.inbox, multicast=True, running=self.sessions.values())

    def _reclaim(self) -> None:
        """Delete multicast parts (the unicast receiver leaves them alone)
        whose session did not come back within ``part_expiry``."""
        in_use = [x.part.name for x in self.sessions.values()]
        s = self.settings
        try:  # only multicast parts
            gone = sweep(s.inbox, time.time(), s.part_expiry, in_use, multicast=True)
        except OSError as exc:
            self.log_limited("cannot sweep the inbox: %s", exc)
            return
        for part in gone:
            self.tell("space", SpaceForget(part=part))
            log.info("%s: no rejoin for %.0f s; deleted", part, self.settings.part_expiry)
        self.count("parts-reclaimed", len(gone))

    def _bind_repair(self, low: int, high: int) -> None:
        """Bind the unicast repair socket to the first free port in [low, high]
        (0, 0: any free port). Raises SetupError when none is free."""
        sock = self.socket(zmq.PULL)
        sock.maxmsgsize = self._frame()
        sock.rcvhwm = PEER_RCVHWM
        monitor = self.repair_watch.start(self, sock, f"mreceiver-repair{next(_repair_ids)}")
        # Admission before buffering: the ZAP handler lets a connection in only
        # from the address of a sender of a running session (REPAIR_DOMAIN),
        # so no one else's frames are read ahead at all.
        sock.zap_domain = REPAIR_DOMAIN
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        ports = [0] if low == 0 else list(range(low, max(low, high) + 1))
        for port in ports:
            try:
                self.bind(sock, self.settings.host, port, "a repair port")
            except SetupError as exc:
                if port == ports[-1]:
                    self._close_repair(sock, monitor, bound=False)
                    raise SetupError(f"no free repair port in {low}-{high} ({exc})") from None
                continue
            break
        if self.repair is not None and self.repair_monitor is not None:
            self._close_repair(self.repair, self.repair_monitor)
        self.repair, self.repair_monitor = sock, monitor
        self.repair_port = bound_port(sock)
        self.facts["multicast_repair_port"] = str(self.repair_port)
        self.watch(sock, self._on_data)

    def _close_repair(
        self, sock: zmq.Socket[Any], monitor: zmq.Socket[Any], bound: bool = True
    ) -> None:
        """Close a repair socket and its monitor (``bound``: the one in use;
        else one that found no free port). A monitor left open was a socket,
        a descriptor and a watched handler for the node's lifetime per re-bind."""
        self.repair_watch.stop(sock, monitor, bound)
        self.close_socket(sock)

    def _frame(self) -> int:
        """The largest frame a publisher or repair sender may send."""
        return self.settings.max_chunk + TAG_BYTES + 1024

    def teardown(self) -> None:
        if hasattr(self, "writer"):
            try:
                self._await_stores(STORES_AT_STOP)
            except Exception as exc:  # (a fault of ours: the rest of the stop goes on)
                log.error("mreceiver: storing at the stop failed (%s)", type(exc).__name__)
        # Kept (with a last checkpoint): a restarted node rejoins its sessions.
        # Files still being named: recorded as delivered once linked (now,
        # and after the writer's last work), the others interrupted.
        storing = {s.tid: s for s in self.sessions.values() if s.flow.hashed and not s.tree}
        recorded: set[bytes] = set()
        self._record_named(storing, recorded)
        for sess in list(self.sessions.values()):
            if sess.tid not in storing:
                self.tell("stats", _record(sess, self.now(), "interrupted", "the node stopped"))
            self._close(sess, keep_part=True)
        if hasattr(self, "writer"):
            self.writer.stop()
            self._record_named(storing, recorded)
        for tid, sess in storing.items():
            if tid not in recorded:
                self.tell("stats", _record(sess, self.now(), "interrupted", "the node stopped"))

    def _record_named(self, storing: dict[bytes, Session], recorded: set[bytes]) -> None:
        """At the stop: which of ``storing`` the writer linked under a name,
        recorded as delivered and in ``recorded``."""
        if not hasattr(self, "writer"):
            return
        for tid, (stored, linked) in self.writer.named_at_stop().items():
            sess = storing.get(tid)
            if sess is None or tid in recorded:
                continue
            recorded.add(tid)
            self._record_delivery(sess, sess.flow.digest, stored, linked)
            self.tell("stats", _record(sess, self.now(), "ok", "", stored))
            log.info("%s was stored as the node stopped", stored)

    def _await_stores(self, within: float) -> None:
        """Files verified and being given their names by the writer (at the
        node's stop) get them first, within ``within`` seconds."""
        deadline = time.monotonic() + within
        storing = sum(1 for sess in self.sessions.values() if sess.flow.hashed)
        if storing:
            log.info("stopping: up to %g s for %d verified file(s) to be stored", within, storing)
        while any(sess.flow.hashed for sess in self.sessions.values()):
            left = deadline - time.monotonic()
            if left <= 0 or not self.writer_results.poll(int(left * 1000) + 1):
                return
            self._on_writer(self.writer_results)

    # -- control plane ------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, McListen):
            self._listen(msg)
            return
        if isinstance(msg, SpaceVerdict):
            self._on_verdict(msg)
            return
        if not isinstance(msg, Inbound):
            return super().on_mail(msg)
        try:
            inner = codec.decode(msg.payload)
        except codec.DecodeError as exc:
            self.count(f"control-{exc.kind}")
            return
        reply: codec.Message | None = None
        if isinstance(inner, McAnnounce):
            reply = self._on_announce(inner, msg)
        elif isinstance(inner, McKey):
            reply = self._on_key(inner, msg)
        elif isinstance(inner, McStatus):
            reply = self._on_status(inner, msg)
        else:
            self.count("control-unexpected")
        if reply is not None:
            self._reply(msg.route, reply)

    def _reply(self, route: bytes, reply: codec.Message) -> None:
        self.tell("gateway", Outbound(route=route, payload=codec.encode(reply)))

    def _on_announce(self, a: McAnnounce, env: Inbound) -> codec.Message | None:
        def refuse(code: str, reason: str) -> McRefuse:
            return self._refused(a.sid, env.peer, code, reason)

        tid = session_tid(env.peer, a.sid)  # its session, whoever else uses the id
        done = self.completed.get(tid, self.now())
        if done is not None:
            return codec.decode(done)
        if not a.details:  # our senders always seal: a name in clear is no one's to trust
            return refuse(
                "unsealed", "the announce's name and size must be sealed to this node's key"
            )
        sess = self.sessions.get(tid)
        holding = self.holding.get(tid)
        if sess is None and holding is None:
            if any(j.tid == tid for j in self.joining.values()):
                return None  # the space ledger's verdict answers it
            # A new session: the limits before any public-key work, so that a
            # member past its share costs no X25519 with each announce.
            full = self._session_limit(env)
            if full:
                return refuse("busy", full)
        # The sender's identity is its CURVE client key; we prove ours in the join.
        self.count("announces-opened")
        try:
            answer = respond(a.sid, self.settings.identity, env.peer, a.eph_pub)
        except ValueError:
            return refuse("protocol", "invalid ephemeral or identity key")
        try:  # name and size sealed to the key this node proved in a hello
            plain = open_details(a.sid, self.settings.identity, env.peer, a.eph_pub, a.details)
            d = codec.decode(plain)
        except ProofError:
            return refuse("wrong-receiver", "the announce was not sealed to this node's key")
        except (ValueError, codec.DecodeError):
            return refuse("protocol", LEGACY_REFUSAL)
        if isinstance(d, McDetails):
            tree, files, source = d.tree, d.files, b""
        elif isinstance(d, McFileDetails):  # one file, and its version's tag
            tree, files, source = 0, 0, d.source
        else:
            return refuse("protocol", LEGACY_REFUSAL)
        a = dataclasses.replace(a, name=d.name, size=d.size, details=b"")
        if holding is not None:  # a re-announce: the same answer, for this attempt
            holding.route = env.route
            return _held(a, answer)
        if sess is None:
            s = self.settings
            if a.group:
                try:
                    fragments.parse_group(f"{a.group}:{a.group_port}")
                except ValueError as exc:
                    return refuse("protocol", str(exc))
                if not fragments.MIN_FRAGMENT <= a.fragment <= fragments.MAX_FRAGMENT:
                    return refuse("protocol", f"fragment size {a.fragment} out of range")
            elif not a.pub_port:
                return refuse("protocol", "neither a PUB port nor a multicast group")
            if a.pub_host:  # (a member's word would have us dial any endpoint it names)
                return refuse("protocol", "the chunks come from the sender's own address only")
            try:
                verifier = proven_signer(a.signer, env.peer)
            except ValueError as exc:
                return refuse("protocol", f"chunks not signed by the sender: {exc}")
            shape = offer_refusal(tree, files, a.size, s.tree_max_files)
            if shape is not None:
                return refuse(*shape)
            tree_bytes = a.size if tree else 0  # built beside its part
            remake_inbox(self, s.inbox, s.inbox_mode)
            try:
                name = check_offer(s, a.name, a.chunk_size, a.size)
                if source:  # this very version from this proven sender, stored before?
                    version = ResumeKey(env.peer, name, a.size, a.chunk_size, source)
                    prior = self.delivered.lookup(version, lambda n: stamp(s.inbox, n))
                    if prior is not None:
                        return self._hold(a, env, tid, answer, prior)
                key = session_resume_key(env.peer, name, a.size, a.chunk_size, a.sid)
                kept = self._kept(key)
            except Refusal as exc:
                return refuse(exc.code, exc.reason)
            except OSError as exc:
                return refuse("io", f"cannot read the inbox: {exc.strerror}")
            request = next(self._requests)
            self.joining[request] = Joining(
                a, env, tid, answer, verifier, name, key, kept, self.now(), tree, files, source
            )
            # Space, quotas of parts and of bytes still to come, for
            # multicast and unicast together (kept parts may give way).
            self.tell(
                "space",
                SpaceReserve(
                    owner=self.name,
                    request=request,
                    tid=tid,
                    peer=env.peer,
                    host=env.peer_host,
                    size=a.size,
                    resume=kept.part if kept is not None else "",
                    held=kept.held_bytes() if kept is not None else 0,
                    tree=tree_bytes,
                ),
            )
            return None
        return self._joined(sess, a, env, answer)

    def _session_limit(self, env: Inbound) -> str:
        """Why a new session from ``env``'s sender cannot be taken now ("":
        it can): every session, those of its identity, those of its address."""
        joining = list(self.joining.values())
        held = list(self.holding.values())
        if len(self.sessions) + len(joining) + len(held) >= MAX_SESSIONS:
            return f"receiver busy ({MAX_SESSIONS} multicast sessions)"
        peers = [x.peer for x in self.sessions.values()] + [j.env.peer for j in joining]
        peers += [h.peer for h in held]
        if peers.count(env.peer) >= MAX_SESSIONS_PER_PEER:
            return f"too many sessions from you (max {MAX_SESSIONS_PER_PEER})"
        hosts = [x.host for x in self.sessions.values()] + [j.env.peer_host for j in joining]
        hosts += [h.host for h in held]
        if hosts.count(env.peer_host) >= MAX_SESSIONS_PER_HOST:
            return f"too many sessions from {env.peer_host} (max {MAX_SESSIONS_PER_HOST})"
        return ""

    def _hold(
        self, a: McAnnounce, env: Inbound, tid: bytes, answer: Response, prior: Delivery
    ) -> McHeld:
        """Answer an announce of a file delivered before: nothing is written;
        the verdict waits for the sender's whole-file hash (:meth:`_on_held_status`)."""
        now = self.now()
        self.holding[tid] = Holding(
            tid, a.sid, env.peer, env.peer_host, env.route, prior, now, a.chunk_size, now
        )
        self.count("delivered-before")
        log.info(
            "%s from %s: delivered before as %s; not written again",
            prior.key.name,
            _who(env.peer),
            prior.stored_as,
        )
        return _held(a, answer)

    def _on_held_status(self, h: Holding, st: McStatus) -> codec.Message | None:
        """The sender's status to an announce this node held: once it carries
        the whole-file hash, the earlier verdict if the hash is the one
        verified then and the file is still the one stored; else a failure,
        and the entry is forgotten (the next send is a fresh transfer)."""
        d = h.delivery
        if st.end:
            del self.holding[h.tid]
            self.count("delivered-before-ended")
            return None
        if not st.digest:  # the sender is still at work (publishing to others)
            h.since = self.now()
            return None
        del self.holding[h.tid]
        current = stamp(self.settings.inbox, d.stored_as)
        ok = hmac.compare_digest(st.digest, d.digest) and current == d.stamp
        if ok:
            done = McDone(sid=h.sid, ok=True, digest=d.digest, stored_as=d.stored_as)
            self.count("delivered-before-verified")
            reason = ""
        else:
            self.delivered.forget(d.key)
            reason = f"the file differs from the one stored as {d.stored_as}; send it again"
            done = McDone(sid=h.sid, ok=False, digest=b"", stored_as="", reason=reason)
            self.count("delivered-before-mismatch")
        payload = codec.encode(done)
        self.completed.remember(h.tid, payload, self.now())
        self.tell("stats", _held_record(h, self.now(), ok, reason))
        self._tell_listeners(d.key.name, d.stored_as if ok else "", d.key.size, ok, reason, ok)
        return done

    def _on_verdict(self, v: SpaceVerdict) -> None:
        j = self.joining.get(v.request)
        if j is None or j.tid != v.tid:
            # Given up meanwhile, or asked by this actor before it restarted
            # (its numbers start again): not ours to hold, and the ask that
            # has this number now waits for its own verdict.
            if v.ok:
                self.tell("space", SpaceCancel(owner=self.name, tid=v.tid, request=v.request))
            return
        del self.joining[v.request]
        a, env = j.announce, j.env
        if not v.ok:
            self._reply(env.route, self._refused(a.sid, env.peer, v.code or "io", v.reason))
            return
        sess = self.sessions.get(j.tid)
        if sess is not None:  # cannot happen: one request per sender and session id
            self.tell("space", SpaceCancel(owner=self.name, tid=v.tid, request=v.request))
            return
        if v.fresh and j.kept is not None:  # it gave way before our ask was heard
            drop_gone_part(self, self.settings.inbox, j.kept.part, j.name)
            j = dataclasses.replace(j, kept=None)
        try:
            sess = self._start_session(j)
        except Refusal as exc:
            self.tell("space", SpaceRelease(owner=self.name, tid=j.tid, keep=False))
            self._reply(env.route, self._refused(a.sid, env.peer, exc.code, exc.reason))
            return
        self._reply(env.route, self._joined(sess, a, env, j.answer))

    def _expire_joins(self) -> None:
        now = self.now()
        for tid, h in list(self.holding.items()):  # a sender that never sent its hash
            if now - h.since >= self.settings.idle_timeout:
                del self.holding[tid]
                self.count("delivered-before-expired")
        for request, j in list(self.joining.items()):
            if now - j.since >= SPACE_VERDICT_TIMEOUT:
                del self.joining[request]
                # Whatever the ledger grants this ask now is cancelled as soon
                # as it is granted (the mail is handled in order), so a
                # re-announce of the same session finds no reservation.
                cancel = SpaceCancel(owner=self.name, tid=j.tid, request=request)
                self.tell("space", cancel)
                self.count("space-verdict-late")
                # The sender learns why and announces again (as to a target
                # that has not joined yet), which asks the ledger anew.
                reason = "the inbox's space could not be checked in time; try again"
                sid, peer = j.announce.sid, j.env.peer
                self._reply(j.env.route, self._refused(sid, peer, "try-again", reason))

    def _refused(self, sid: bytes, peer: bytes, code: str, reason: str) -> McRefuse:
        self.count(f"refused-{code}")
        self.log_limited(
            "refused multicast session from %s: %s", _who(peer), reason, level=logging.INFO
        )
        return McRefuse(sid=sid, code=code, reason=reason)

    def _start_session(self, j: Joining) -> Session:
        """The ledger reserved the space: the part (a new one, or the one kept
        of this very session) and the session. Raises Refusal."""
        s = self.settings
        a, env, kept, name, key = j.announce, j.env, j.kept, j.name, j.key
        held = kept.held() if kept is not None else None
        watched: Fresh | None = None  # a new part, read back as it is written
        try:
            if kept is not None:
                try:
                    part, fd = s.inbox / kept.part, open_part(s.inbox, kept.part, a.size)
                except PartGone:  # (removed by hand: its space was booked as a rejoin's)
                    drop_gone_part(self, s.inbox, kept.part, name)
                    reason = "the kept part it was to continue is gone; try again"
                    raise Refusal("try-again", reason) from None
            else:
                # The id's start plus a local random suffix: a co-receiver
                # knowing the id cannot make us open or remove its file. (The
                # whole id made the manifest's name of a 184-byte name longer
                # than a filesystem's 255 bytes.)
                ident = a.sid.hex()[:PART_ID_CHARS]
                part, fd = create_part(s.inbox, name, ident, a.size, kind="mc", unique=True)
                # (a folder's part keeps today's check: its feeder hashes it in order)
                watched = None if j.tree else self.writer.watch(fd)
        except OSError as exc:
            raise Refusal("io", f"cannot write the inbox: {exc.strerror}") from None
        total = -(-a.size // a.chunk_size)
        host = env.peer_host or "127.0.0.1"
        now = self.now()
        sess = Session(
            tid=j.tid,
            sid=a.sid,
            peer=env.peer,
            host=env.peer_host,
            route=env.route,
            name=name,
            size=a.size,
            chunk_size=a.chunk_size,
            flow=MulticastIncoming(total, now, s.idle_timeout, have=held),
            verifier=j.verifier,
            part=part,
            fd=fd,
            pub_endpoint=f"tcp://{join_host_port(host, a.pub_port)}" if a.pub_port else "",
            started=now,
            tree=j.tree,
            files=j.files,
            held=kept.held_bytes() if kept is not None else 0,
        )
        sess.source = j.source
        self.sessions[j.tid] = sess
        sess.reported = sess.held
        self._tell_repair_senders()
        self.tell("stats", _record(sess, self.now(), "running"))
        if a.group:
            self._join_group(sess, a, env.peer_host or "127.0.0.1")
        template = Manifest(key, a.sid, part.name, b"", 0.0)
        self.writer.open(
            j.tid,
            fd,
            a.chunk_size,
            a.size,
            sess.tracker.written,
            (s.inbox, template),
            tree=self._tree_spec(sess) if sess.tree else None,
            fresh=watched,
        )
        self.count("joined")
        if held is not None:
            self.count("resumed")
            self.count("resumed-chunks", held.count)
            log.info(
                "rejoining multicast session %s (%s): %d of %d chunks already held",
                a.sid.hex()[:12],
                name,
                held.count,
                total,
            )
        else:
            log.info("joining multicast session %s (%s, %d bytes)", a.sid.hex()[:12], name, a.size)
        return sess

    def _joined(self, sess: Session, a: McAnnounce, env: Inbound, answer: Response) -> McJoin:
        """A (re)announce of a running session: its join, for this attempt."""
        sess.route = env.route
        sess.flow.on_announce(self.now())
        sess.wraps[a.attempt] = answer.secrets
        while len(sess.wraps) > WRAP_MEMORY:
            sess.wraps.pop(next(iter(sess.wraps)))
        return McJoin(
            sid=a.sid,
            eph_pub=answer.eph_pub,
            static_pub=answer.static_pub,
            proof=answer.proof,
            repair_port=self.repair_port,
            attempt=a.attempt,
            repair_key=sess.receiver_key,
        )

    def _kept(self, key: ResumeKey) -> Manifest | None:
        """The part this node kept of the session ``key`` names (it restarted
        mid-session), if any. Only multicast parts are looked at; kept parts of
        other sessions of the same file from the same sender are deleted (a
        session that ended cannot be rejoined)."""
        inbox = self.settings.inbox
        found = scan(inbox, prefix=f".{key.name}.", multicast=True)
        kept = found.manifests
        # Parts in use: running sessions' and those chosen by joins waiting
        # for the space ledger (their verdict opens them).
        in_use = [x.part.name for x in self.sessions.values()]
        in_use += [j.kept.part for j in self.joining.values() if j.kept is not None]
        plan = plan_resume(key, kept, in_use)
        for old in plan.obsolete:
            remove_part(inbox, old.part)
            self.tell("space", SpaceForget(part=old.part))
            self.count("parts-obsolete")
        return plan.reuse

    def _join_group(self, sess: Session, a: McAnnounce, sender_host: str) -> None:
        """Join the announced group before joining the session, so the sender
        may start as soon as we ack our key. When the group cannot be joined the
        session goes on without it: the sender finishes us by unicast repairs
        (docs/multicast.md)."""
        interface = udp_multicast.interface_toward(sender_host)
        try:
            sock = udp_multicast.GroupReceiver(
                a.group, a.group_port, interface, self.settings.multicast_rcvbuf, a.fragment
            )
        except OSError as exc:
            self.count("group-join-failed")
            log.warning(
                "cannot join multicast group %s:%d on %s (%s); this session will be "
                "repaired by unicast",
                a.group,
                a.group_port,
                interface,
                exc.strerror or exc,
            )
            return
        got = sock.got
        if got < self.settings.multicast_rcvbuf:
            self.log_limited(
                "multicast receive buffer is %d KiB (asked %d KiB; raise net.core.rmem_max "
                "to lose less)",
                got // 1024,
                self.settings.multicast_rcvbuf // 1024,
            )
        sess.udp = sock
        self.watch(sock.fileno(), functools.partial(self._on_datagrams, sess))

    def _on_key(self, k: McKey, env: Inbound) -> codec.Message | None:
        sess = self.sessions.get(session_tid(env.peer, k.sid))
        if sess is None:
            return McRefuse(sid=k.sid, code="unknown-session", reason="no such session here")
        secrets = sess.wraps.pop(k.attempt, None)
        if secrets is None:
            self.count("key-stale")
            return None
        try:
            key = unwrap(secrets, k.sid, k.wrapped)
        except OpenError:
            self.count("key-invalid")
            return None
        sess.route = env.route
        sess.sealer = ContentSealer(k.sid, key)
        if sess.udp is not None:
            sess.udp.start(self._intake(sess, key), sess.tracker.received)
        if sess.sub is None and sess.udp is None and sess.pub_endpoint:
            sub = sess.sub = self.socket(zmq.SUB)
            sub.rcvhwm = PEER_RCVHWM
            sub.maxmsgsize = self._frame()
            address = f"inproc://pc-{self.env.node_uid}/mreceiver-sub/{next(_sub_ids)}"
            sub.monitor(address, DIAL_EVENTS)
            monitor = sess.sub_monitor = self.socket(zmq.PAIR)
            monitor.rcvhwm = 0  # inproc: no event is ever dropped
            monitor.connect(address)
            self.watch(monitor, functools.partial(self._on_sub_monitor, sess))
            # The token (for the sender, which applies only subscriptions that
            # carry a joined receiver's) and the id (our own filter).
            sub.setsockopt(zmq.SUBSCRIBE, k.sid + subscription_token(sess.receiver_key))
            sub.setsockopt(zmq.SUBSCRIBE, k.sid)
            dial(sub, sess.pub_endpoint)
            self.watch(sub, functools.partial(self._on_data, owner=sess))
        sess.flow.on_key(self.now())
        self._drive(sess)
        return None

    def _on_sub_monitor(self, sess: Session, monitor: zmq.Socket[Any]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.sub_watch.on_event(event, owner=sess.tid)

    def _on_sub_flood(self, tid: Any) -> None:
        """The watch closed a session's SUB connection: its publisher sent
        more than the node holds unread (a publisher faster than the
        receiver, or a flood). libzmq would connect again at once: the SUB
        is disconnected for a pause (core/redial.py); what the publisher
        sends meanwhile is missed, NAKed and repaired."""
        sess = self.sessions.get(tid)
        if sess is None or sess.sub is None or sess.sub_paused:
            return
        sess.sub_paused = True
        with contextlib.suppress(zmq.ZMQError):
            sess.sub.disconnect(sess.pub_endpoint)
        delay = sess.redial.closed(self.now())
        self.call_later(delay, functools.partial(self._sub_again, sess))

    def _sub_again(self, sess: Session) -> None:
        if self.sessions.get(sess.tid) is not sess or sess.sub is None or not sess.sub_paused:
            return
        sess.sub_paused = False
        sess.redial.connected(self.now())
        with contextlib.suppress(zmq.ZMQError):
            dial(sess.sub, sess.pub_endpoint)

    def _intake(self, sess: Session, key: bytes) -> fragments.Intake:
        """The reassembly of the session's datagrams (for its receiving thread)."""
        assert sess.udp is not None
        chunk = sess.chunk_size

        def expected(index: int) -> int:
            return min(chunk, sess.size - index * chunk) + TAG_BYTES + SIG_BYTES

        pending = max(2, PENDING_BYTES // (chunk + TAG_BYTES + SIG_BYTES))
        asm = fragments.Reassembler(sess.tracker.total, expected, sess.udp.fragment, pending)
        return fragments.Intake(sess.sid, fragments.header_key(key), asm)

    def _on_status(self, st: McStatus, env: Inbound) -> codec.Message | None:
        tid = session_tid(env.peer, st.sid)
        done = self.completed.get(tid, self.now())
        if done is not None:
            return codec.decode(done)
        holding = self.holding.get(tid)
        if holding is not None:
            holding.route = env.route
            return self._on_held_status(holding, st)
        sess = self.sessions.get(tid)
        if sess is None:
            return McRefuse(sid=st.sid, code="unknown-session", reason="no such session here")
        sess.route = env.route
        if st.end and sess.flow.hashed:
            # Verified, and being stored: its verdict follows (as a cancel
            # from the receiving node's user is too late then).
            self.count("ended-while-storing")
            return None
        if st.end:
            why = printable(st.end)  # the sender's words: no escape reaches a terminal
            log.info("multicast session %s ended by the sender: %s", sess.name, why)
            self.count("dropped-by-sender")
            self._report(sess, "", ok=False, reason=f"the sender ended the session: {why}")
            self._close(sess, keep_part=False)
            return None
        sess.flow.on_status(st.horizon, st.digest, st.ack_every, self.now())
        self._drive(sess)
        return None

    # -- data ----------------------------------------------------------------------

    def _on_data(self, sock: zmq.Socket[Any], owner: Session | None = None) -> None:
        """Chunks from a session's SUB socket (``owner``) or the repair port.
        Their header names only the session id, which senders choose and
        co-receivers learn: a published chunk belongs to the session whose
        socket it came in on, a repair to the one session of that id whose
        own repair key made its tag; its signature is then that session's
        sender's, or it is dropped."""
        subscribed = owner is not None
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if owner is not None:
                self.sub_watch.delivered_to(owner.tid, map(len, frames))
                frames = frames[1:]  # the topic (session id) frame
            else:
                self.repair_watch.delivered(frames, first=0)
            if len(frames) != 3:  # header, sealed chunk, signature
                self.count("data-dropped-frames")
                continue
            try:
                header = codec.decode_as(frames[0].buffer, McChunk, HEADER_MAX_BYTES)
            except codec.DecodeError as exc:
                self.count(f"data-dropped-{exc.kind}")
                continue
            if owner is None:
                sess = self._repaired(header)
                if sess is None:
                    continue
            elif owner.sid != header.sid or self.sessions.get(owner.tid) is not owner:
                self.count("data-dropped-unknown-session")  # its subscription is to its id
                continue
            else:
                sess = owner
            self._on_chunk(
                sess,
                header.index,
                header.last,
                header.nonce,
                frames[1].buffer,
                frames[2].buffer,
                repair=not subscribed,
            )

    def _repaired(self, header: McChunk) -> Session | None:
        """The session a repair is for: of those with its id (a few at most:
        the limits per identity and per address bound them), the one whose
        repair key made its tag - only that session's sender has the key."""
        known = False
        for sess in self.sessions.values():
            if sess.sid != header.sid:
                continue
            known = True
            tag = repair_tag(sess.receiver_key, header.sid, header.index, header.last, header.nonce)
            if hmac.compare_digest(tag, header.tag):
                return sess
        # Not from a sender of ours: no more work.
        self.count("repair-dropped-tag" if known else "data-dropped-unknown-session")
        return None

    def _on_datagrams(self, sess: Session, _fd: object = None) -> None:
        """Chunks the session's receiving thread reassembled from the group's
        datagrams (and what it refused, counted here)."""
        sock = sess.udp
        if sock is None:
            return
        chunks, dropped = sock.take()
        for name, n in dropped.items():
            self.count(name, n)
        for got in chunks:
            blob = memoryview(got.blob)
            sealed, signature = blob[:-SIG_BYTES], blob[-SIG_BYTES:]
            self._on_chunk(sess, got.index, got.last, got.nonce, sealed, signature)
            if self.sessions.get(sess.tid) is not sess:
                return  # finished or closed meanwhile
            # _on_chunk keeps no view of it (the signature is checked and the
            # chunk opened into a buffer of the writer's pool before it
            # returns): the next chunk is assembled in it.
            sock.recycle(got.blob)

    def _on_chunk(
        self,
        sess: Session,
        index: int,
        last: bool,
        nonce: bytes,
        payload: memoryview,
        signature: memoryview,
        *,
        repair: bool = False,
    ) -> None:
        if sess.sealer is None:
            self.count("data-dropped-unknown-session")
            return
        t = sess.tracker
        if not 0 <= index < t.total or last != (index == t.total - 1):
            self.count("data-dropped-bad-index")
            return
        if len(payload) != min(sess.chunk_size, sess.size - index * sess.chunk_size) + TAG_BYTES:
            self.count("data-dropped-bad-length")
            return
        if index in t.received:
            t.duplicates += 1
            self.count("duplicates")
            return
        if sess.queued >= QUEUE_CHUNKS:
            self.count("data-dropped-queue-full")  # NAKed later
            return
        try:
            sess.verifier.verify(sess.sid, index, last, nonce, payload, signature)
        except OpenError:
            self.count("data-dropped-forged")  # not the sender's: NAKed, repaired
            return
        # Opened into one of the writer's reused buffers (it gives it back
        # once written): a fresh plaintext per chunk cost mapping, zeroing
        # (twice) and unmapping a MiB (docs/multicast.md, "The datagram path").
        # Every way out but a queued write (an exception too) gives it back here.
        pool = self.writer.buffers
        plaintext = pool.take(len(payload) - TAG_BYTES)
        queued = False
        try:
            try:
                sess.sealer.open_chunk_into(index, last, nonce, payload, plaintext)
            except OpenError:
                self.count("data-dropped-auth")
                return
            if repair and sess.udp is not None:
                sess.udp.forget(index)  # it came whole: stop assembling it
            if not sess.flow.on_chunk(index, self.now()):
                return
            queued = self.writer.write(sess.tid, index, plaintext)
        finally:
            if not queued:
                pool.give(plaintext)
        if queued:
            sess.queued += 1
        else:  # missing again: NAKed and repaired, never counted as held
            sess.flow.on_write_refused(index)
            self.count("data-dropped-writer-full")

    def _on_writer(self, sock: zmq.Socket[Any]) -> None:
        for result in self.writer.take_results(sock):
            sess = self.sessions.get(result.tid)
            if sess is None or isinstance(result, Detached):  # (a closed file's check)
                continue
            if isinstance(result, Written):
                sess.queued -= 1
                self.count("chunks-written")
                sess.flow.on_written(result.index, self.now())
                self._drive(sess)
            elif isinstance(result, Finished):
                sess.flow.on_hashed()
                self._finish(sess, result.digest)
            elif isinstance(result, Published):
                if result.stored:
                    self._stored(sess, sess.flow.digest, result.stored, result.stamp)
                else:
                    digest = sess.flow.digest
                    self._done(sess, ok=False, digest=digest, stored="", reason=result.text)
            elif isinstance(result, Unpacked):
                self._stored(sess, sess.flow.digest, ", ".join(result.stored))
            elif isinstance(result, TreeFailed):
                self.count("tree-bad-tree" if result.bad else "tree-io")
                reason = f"the folder was not stored: {result.text}"
                self.log_limited("%s from %s: %s", sess.name, _who(sess.peer), reason)
                self._done(sess, ok=False, digest=b"", stored="", reason=reason)
            else:
                text = result.text
                log.error("writing %s failed: %s", sess.name, text)
                self._done(sess, ok=False, digest=b"", stored="", reason=f"cannot write: {text}")

    def _drive(self, sess: Session) -> None:
        """Do what the session's :class:`MulticastIncoming` asks for."""
        for out in sess.flow.poll():
            if self.sessions.get(sess.tid) is not sess:
                return
            if isinstance(out, SendAck):
                ack = McAck(
                    sid=sess.sid,
                    cumulative=out.cumulative,
                    written=out.written,
                    naks=flatten(out.naks),
                )
                self._reply(sess.route, ack)
            elif isinstance(out, FinishFile):
                self.writer.finish(sess.tid)
            elif out.checking:  # the sender waits for the verdict: tell it
                reason = f"the final check of the file made no progress for {out.seconds:.0f} s"
                log.error("%s: %s; dropped", sess.name, reason)
                self.count("check-timeout")
                self._done(sess, ok=False, digest=b"", stored="", reason=reason)
            else:
                log.info("%s: no traffic for %.0f s; dropped", sess.name, out.seconds)
                self.count("expired")
                self._report(sess, "", ok=False, reason="the sender went silent")
                self._close(sess, keep_part=False)

    def _on_timers(self) -> None:
        """Acks due, and sessions gone silent."""
        now = self.now()
        for sess in list(self.sessions.values()):
            if sess.flow.finishing:  # the final checks' progress bounds it now
                sess.flow.on_checked(self.writer.checks_moved, now)
            if sess.udp is not None and sess.udp.backlog():
                # Its receiving thread is behind (waiting for a core): what
                # waits in the socket is not lost, do not NAK it yet.
                sess.flow.on_backlog(now)
            sess.flow.on_timer(now)
            self._drive(sess)

    # -- the end -------------------------------------------------------------------------

    def _finish(self, sess: Session, digest: bytes) -> None:
        if not hmac.compare_digest(digest, sess.flow.digest):
            self.count("hash-mismatch")
            log.warning("%s: whole-file hash mismatch; discarded", sess.name)
            self._done(sess, ok=False, digest=digest, stored="", reason="whole-file hash mismatch")
            return
        s = self.settings
        if sess.tree:  # a folder: the writer publishes the tree it built
            self.writer.unpack(sess.tid, self._tree_spec(sess))
            return
        # Named by the writer too: this thread waits for no disk there.
        self.writer.publish(sess.tid, sess.part, s.inbox, sess.name, s.file_mode)

    def _tree_spec(self, sess: Session) -> TreeSpec:
        """How the writer builds the session's folder (actors/tree_store.py)."""
        s = self.settings
        return TreeSpec(
            s.inbox, sess.part.name, sess.tree, s.tree_max_files, s.file_mode, s.inbox_mode
        )

    def _stored(
        self, sess: Session, digest: bytes, stored: str, now: FileStamp | None = None
    ) -> None:
        stored = stored[:MAX_NAME]
        self.count("received")
        self.count("received-bytes", sess.size)
        log.info("received %s (%d bytes) by multicast from %s", stored, sess.size, _who(sess.peer))
        self._record_delivery(sess, digest, stored, now)
        self._done(sess, ok=True, digest=digest, stored=stored, reason="")

    def _record_delivery(
        self, sess: Session, digest: bytes, stored: str, now: FileStamp | None = None
    ) -> None:
        """``sess``'s file, stored as ``stored`` (``now``: its stamp as
        stored, else read by name): its McHeld answer next time."""
        now = now or stamp(self.settings.inbox, stored)
        if sess.source and not sess.tree and now is not None:
            key = ResumeKey(sess.peer, sess.name, sess.size, sess.chunk_size, sess.source)
            self.delivered.record(Delivery(key, stored, digest, now, time.time()))

    def _done(self, sess: Session, *, ok: bool, digest: bytes, stored: str, reason: str) -> None:
        msg = McDone(sid=sess.sid, ok=ok, digest=digest, stored_as=stored, reason=reason)
        payload = codec.encode(msg)
        self.tell("gateway", Outbound(route=sess.route, payload=payload))
        self.completed.remember(sess.tid, payload, self.now())
        self._report(sess, stored, ok=ok, reason=reason)
        self._close(sess, keep_part=False)

    def _report_progress(self) -> None:
        samples: list[StatsSample] = []
        for sess in self.sessions.values():
            written = _written(sess)
            if written != sess.reported:  # its reservation shrinks as it writes
                sess.reported = written
                self.tell("space", SpaceWritten(owner=self.name, tid=sess.tid, written=written))
            samples.append(_sample(sess, self.now()))
        for batch in batches(samples):
            self.tell("stats", batch)

    def _report(self, sess: Session, stored: str, *, ok: bool, reason: str) -> None:
        self.tell("stats", _record(sess, self.now(), "ok" if ok else "failed", reason, stored))
        self._tell_listeners(sess.name, stored, sess.size, ok, reason)

    def _tell_listeners(
        self, name: str, stored: str, size: int, ok: bool, reason: str, held: bool = False
    ) -> None:
        """A session ended: to each ``multicast-receive`` waiting for it, and
        as the latest outcome among the facts (what the shell announces)."""
        self.outcomes += 1
        outcome = {
            "seq": self.outcomes,
            "name": name[:80],
            "size": size,
            "stored_as": stored[:200],
            "ok": ok,
            "reason": shortened(reason, 200),
            "held": held,
        }
        self.facts["last_multicast_in"] = json.dumps(outcome, ensure_ascii=False)
        # Reported now, ahead of the listeners' word: whoever the word ends
        # (the shell's `multicast-receive`) then finds the outcome among the
        # facts, taken as told (a session ends now and then: no flood).
        self.report()
        for request, left in list(self.listeners.items()):
            self.tell(
                "control",
                McReceived(
                    request=request,
                    name=name,
                    stored_as=stored,
                    size=size,
                    ok=ok,
                    reason=shortened(reason, 500),
                    held=held,
                ),
            )
            if left == 1:
                del self.listeners[request]
                self.tell("control", McListenEnd(request=request))
            elif left > 1:
                self.listeners[request] = left - 1

    def _tell_repair_senders(self) -> None:
        """Whom the repair port admits: the senders' addresses of the running sessions."""
        hosts = sorted({x.host for x in self.sessions.values() if x.host})
        self.tell("admission", RepairSenders(hosts=hosts[:MAX_REPAIR_SENDERS]))

    def on_actor_restarted(self, name: str) -> None:
        if name == "admission":
            self._tell_repair_senders()
        elif name == "space":  # its ledger is empty: tell it again what is here
            self._report_space()

    def _close(self, sess: Session, keep_part: bool) -> None:
        if self.sessions.get(sess.tid) is sess:
            del self.sessions[sess.tid]
            if not self.sessions:
                self.trim_when_idle(lambda: not self.sessions)
        self._tell_repair_senders()
        if sess.sub is not None:
            self.sub_watch.forget_owner(sess.tid)
            with contextlib.suppress(zmq.ZMQError):
                sess.sub.disable_monitor()
            self.close_socket(sess.sub)
            sess.sub = None
        if sess.sub_monitor is not None:
            self.close_socket(sess.sub_monitor)
            sess.sub_monitor = None
        if sess.udp is not None:
            self.unwatch(sess.udp.fileno())
            sess.udp.close()
            sess.udp = None
        manifests = _manifests(self.settings.inbox, sess.part)
        if not keep_part:
            # Before the writer closes the fd: the name is removed only while
            # it still refers to the file open as ``sess.fd``. (At once: the
            # sender told of a verdict finds no part left.)
            why = discard_part(sess.part, sess.fd)
            if why:  # (an inbox made read-only: the part stays, the rest of the close goes on)
                self.log_limited("mreceiver: cannot remove %s: %s", sess.part.name, why)
            for path in manifests:
                remove_quietly(path)
        # The writer closes the fd after its queued work (``keep``: with a
        # last checkpoint) and forgets the session; without ``keep`` it
        # removes the part and its manifests then too (only a name that
        # still is this file): its queued work (a chunk's checkpoint, the
        # open's first one) wrote the manifest again beside no part, left
        # until --part-expiry.
        discard = None if keep_part else (sess.part, manifests)
        self.writer.close(sess.tid, keep=keep_part, discard=discard)
        written = _written(sess)
        self.tell(
            "space",
            SpaceRelease(
                owner=self.name, tid=sess.tid, keep=keep_part, part=sess.part.name, written=written
            ),
        )

    def _count_sessions(self) -> None:
        self.facts["multicast_sessions"] = str(len(self.sessions))

    # -- multicast-receive ------------------------------------------------------------------

    def _listen(self, msg: McListen) -> None:
        if msg.low or msg.high:
            if not 1 <= msg.low <= msg.high:
                self.tell(
                    "control",
                    McListening(
                        request=msg.request, repair_port=0, code="local", reason="bad port range"
                    ),
                )
                return
            if not msg.low <= self.repair_port <= msg.high:
                try:
                    self._bind_repair(msg.low, msg.high)
                except SetupError as exc:
                    reply = McListening(
                        request=msg.request, repair_port=0, code="local", reason=str(exc)[:500]
                    )
                    self.tell("control", reply)
                    return
        if len(self.listeners) >= MAX_LISTENERS:
            self.listeners.pop(next(iter(self.listeners)))
        self.listeners[msg.request] = msg.count
        self.tell("control", McListening(request=msg.request, repair_port=self.repair_port))


def _manifests(inbox: Path, part: Path) -> list[Path]:
    """``part``'s manifest and the temporary file of its next one."""
    return [inbox / manifest_name(part.name), inbox / (manifest_name(part.name) + ".tmp")]


def writer_bounds(s: NodeSettings) -> tuple[int, int]:
    """The writer's queue bound and its buffer pool's. Each session queues at
    most QUEUE_CHUNKS chunks (checked before the writer's bound, which is so
    never what drops a chunk here); the pool's is as the unicast receiver's
    (:func:`~actors.file_writer.pool_bytes`), the receive buffer and what
    its writer's hash as written holds (HASH_HOLD): 16 MiB kept 4 chunks of
    4 MiB, and a session of 4 MiB chunks decrypted every fifth or so into a
    new mapping."""
    return MAX_SESSIONS * QUEUE_CHUNKS * s.max_chunk, pool_bytes(s.receive_buffer, HASH_HOLD)


def _who(peer: bytes) -> str:
    return fingerprint(peer) if peer else "?"


def _record(
    sess: Session, now: float, result: str, reason: str = "", stored: str = ""
) -> StatsRecord:
    """The session as this receiver's statistics history keeps it."""
    return StatsRecord(
        session=sess.sid.hex(),
        side="receive",
        peer=_who(sess.peer),
        peer_fingerprint=fingerprint(sess.peer) if sess.peer else "",
        mode="multicast",
        file=stored or sess.name,
        size=sess.size,
        done_bytes=sess.size if result == "ok" else _written(sess),
        chunk_size=sess.chunk_size,
        chunks=sess.tracker.total,
        started=sess.wall,
        duration=now - sess.started,
        result=result,
        reason=shortened(reason, 512),
        retransmits=sess.tracker.naked,
        params={
            "transport": "udp" if sess.udp is not None else "pubsub",
            **({"files": str(sess.files)} if sess.tree else {}),
        },
        stats={"held_bytes": sess.held},
    )


def _held(a: McAnnounce, answer: Response) -> McHeld:
    """This node holds the announced file: proven as in a join."""
    return McHeld(
        sid=a.sid,
        eph_pub=answer.eph_pub,
        static_pub=answer.static_pub,
        proof=answer.proof,
        attempt=a.attempt,
    )


def _held_record(h: Holding, now: float, ok: bool, reason: str) -> StatsRecord:
    """An announce answered from the table of deliveries, as the history keeps
    it: nothing moved (``params.delivered_before`` names the copy, and its
    ``held_bytes`` are the whole file), as a unicast re-offer's."""
    d = h.delivery
    return StatsRecord(
        session=h.sid.hex(),
        side="receive",
        peer=_who(h.peer),
        peer_fingerprint=fingerprint(h.peer) if h.peer else "",
        mode="multicast",
        file=d.stored_as if ok else d.key.name,
        size=d.key.size,
        done_bytes=d.key.size if ok else 0,
        chunk_size=h.chunk_size,
        chunks=-(-d.key.size // h.chunk_size) if h.chunk_size else 0,
        started=h.wall,
        duration=now - h.began,
        result="ok" if ok else "failed",
        reason=shortened(reason, 512),
        params={"delivered_before": d.stored_as[:256]},
        stats={"held_bytes": d.key.size if ok else 0},
    )


def _sample(sess: Session, now: float) -> StatsSample:
    return StatsSample(
        session=sess.sid.hex(),
        side="receive",
        peer=_who(sess.peer),
        t=now - sess.started,
        done_bytes=_written(sess),
    )


def _written(sess: Session) -> int:
    return min(sess.size, sess.tracker.written.count * sess.chunk_size)
