"""Multicast sender actor (``msender``): one file to many receivers at once.

Per session (``McSendRequest`` from the control actor):

1. A CURVE peer link per target (``actors/peer_link.Link``, kept trying)
   carries first a ``Hello``: the target proves its identity key, which must
   be the one trusted at its address (a pin, known peers, members' records),
   else it is dropped with nothing announced. Then ``McAnnounce`` (name and
   size sealed to that key, chunk size, a fresh ephemeral key, this node's
   PUB port). A target answers ``McJoin``
   with its own ephemeral key, its identity key and a proof that it holds it
   (crypto/handshake.py), and its repair port; only if the proof verifies and
   the identity is the one trusted at that address (crypto/known_peers.py)
   does it get the session's random content key wrapped for it alone
   (``McKey``). Targets that fail the CURVE handshake or admission are
   reported at once, unreachable ones after the timeout; publishing starts
   when every target joined or failed, or after ``JOIN_WAIT`` s (2) with at least
   one joined; a target that joins later catches up by repairs, and the
   announce is repeated to it until it joins or the timeout passes. The
   sealed details of one file carry its source tag (``McFileDetails``): a
   target that stored this very version from this node answers ``McHeld``
   (with its proof, checked and trusted as a join) and only gets the
   whole-file hash to answer with its verdict (docs/multicast.md, "Sending
   again"); a target that refuses ``McFileDetails`` as malformed (an older
   release) is announced plain ``McDetails``.
2. Each chunk is read once, hashed (BLAKE3, in order) and sealed once with the
   content key, and published once on the PUB socket (topic = session id) or,
   with a multicast group, sent once to the group as UDP datagrams; paced by
   the session's sans-IO object (below: the slowest multicast member's
   written point plus an AIMD window, and the scheduler's grants).
3. Receivers ack and NAK over the control connection; the plan decides each
   repair: re-publish (two or more asked) or unicast to the receiver's repair
   port (one asked). A repair is read and sealed once however many get it.
4. Each receiver verifies the whole-file hash and answers ``McDone``; every
   target's outcome is streamed to the requester (``McTargetResult``) and the
   session ends with ``McSendResult`` listing them all.

Every decision - who joined, when publishing starts, what to publish or
repair now, statuses, grants, timeouts, each target's result and the
session's end - is :class:`~peercrypt.core.multicast_outgoing.MulticastOutgoing`'s:
this actor feeds it what arrives (with ``now``), does what its ``poll``
returns (read, hash, seal, sign, publish, send) and arms one timer per
session at its ``next_timer``.

Memory: the PUB and repair sockets have bounded high-water marks (a drop is a
NAK later); the plan's per-member state is bounded by the NAK limit.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import zmq

from actors import udp_multicast
from actors.file_chunks import (
    SOURCE_CHECK_EVERY,
    NotRegularFile,
    changed_since,
    open_source,
    read_chunk,
    version_tag,
)
from actors.peer_link import Link
from actors.port_watch import PortWatch
from actors.tree_source import TreeSource
from actors.tree_source import Walk as TreeWalk
from peercrypt.core import fragments
from peercrypt.core.address import dialled_target, join_host_port, split_host_port
from peercrypt.core.bitmap import pairs
from peercrypt.core.cancels import CANCELLED_BY_USER
from peercrypt.core.fragments import parse_group
from peercrypt.core.grants import RequestGrant
from peercrypt.core.modes import default_burst
from peercrypt.core.multicast import JOINING, LOST, Repair
from peercrypt.core.multicast_outgoing import (
    Announce,
    HashAll,
    MulticastOutgoing,
    Publish,
    SendStatus,
    SessionEnded,
    StartPublishing,
    TargetEnded,
    TargetLost,
)
from peercrypt.core.names import shortened
from peercrypt.core.outgoing import HashFile
from peercrypt.core.port_guard import NULL_HANDSHAKE, GuardLimits
from peercrypt.core.tree import TreeError
from peercrypt.core.tree import source_tag as tree_source_tag
from peercrypt.crypto.chunk_signature import (
    RECEIVER_KEY_BYTES,
    TOKEN_BYTES,
    ChunkSigner,
    repair_tag,
    subscription_token,
)
from peercrypt.crypto.handshake import (
    IMPOSTOR,
    PROVEN,
    HelloRound,
    Initiator,
    ProofError,
    SessionSecrets,
)
from peercrypt.crypto.identity import fingerprint
from peercrypt.crypto.keywrap import ContentSealer, new_content_key
from peercrypt.crypto.keywrap import wrap as wrap_key
from peercrypt.crypto.known_peers import KnownPeersFile, UnreadablePins, explain, pin_of
from peercrypt.errors import NOT_THE_PEERS, ResultCode
from peercrypt.runtime.actor import (
    PEER_RCVHWM,
    Actor,
    ActorEnv,
    SetupError,
    Timer,
    bound_port,
    dial,
)
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelRequest,
    ErrorReply,
    FlowDemand,
    FlowEnd,
    FlowGrant,
    FlowPacing,
    FlowRate,
    FlowStart,
    Hello,
    HelloReply,
    McTargetProgress,
    Progress,
    TransfersReply,
    TransfersRequest,
)
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
    McRefuse,
    McSendRequest,
    McSendResult,
    McStatus,
    McTargetResult,
)
from peercrypt.wire.network_messages import ProvenOutcome, TransferOutcome
from peercrypt.wire.stats_messages import StatsRecord, StatsSample, batches
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.msender")

PUB_HWM = 256  # messages queued per subscriber before the PUB drops
REPAIR_HWM = 64
# What the publishing port's connections may make libzmq hold, read and not
# yet taken (honest subscribers send two subscriptions a session).
PUB_MEMORY = 4 << 20
REFUSALS_UNREACHABLE = 5
# Bytes of the file hashed per turn of the loop when its targets all hold it
# (HashAll: nothing is published, the hash is all they wait for).
HASH_STEP = 32 * 1024 * 1024
PROGRESS_INTERVAL = 0.1  # seconds between a session's Progress (and its samples)
SOURCE_CHECK_TICKS = round(SOURCE_CHECK_EVERY / PROGRESS_INTERVAL)


@dataclass
class Target:
    name: str
    host: str
    port: int
    link: Link
    wraps: dict[int, Initiator] = field(default_factory=dict)
    attempt: int = 0
    repair: zmq.Socket[Any] | None = None
    repair_port: int = 0
    refusals: int = 0
    noticed: bool = False
    # Its key for the session (McJoin): tags repairs to it; its subscription token.
    repair_key: bytes = b""
    token: bytes = b""
    proven: str = ""  # its fingerprint, once it proved its key and is trusted
    proven_key: bytes = b""  # that key (X25519): whose score its verified end raises
    # The hello before the announce: its challenges (an answer to an earlier
    # one, e.g. from before a reconnect, is stale, not a failed proof), then
    # the key it proved and this node trusts at its address (name and size
    # are sealed to it).
    hellos: HelloRound = field(default_factory=HelloRound)
    hello_key: bytes = b""
    asked_on: int = 0  # the link's handshake (connection) the last hello at once went on
    # It refused McFileDetails as malformed (a node of an older release): it
    # is announced plain McDetails, without the file's source tag.
    legacy: bool = False


@dataclass
class Session:
    """The I/O side of one session; ``flow`` decides."""

    request: McSendRequest
    sid: bytes
    fd: int
    size: int
    mtime_ns: int
    chunk_size: int
    name: str
    sealer: ContentSealer
    content_key: bytes
    flow: MulticastOutgoing
    targets: dict[str, Target] = field(default_factory=dict)
    hasher: Any = field(default_factory=blake3.blake3)
    seals_first: int = 0
    seals_repair: int = 0
    published_bytes: int = 0
    unicast_bytes: int = 0
    timer: Timer | None = None
    # UDP/IP multicast (docs/multicast.md, "Transports"): the group, this
    # session's socket.
    group: tuple[str, int] | None = None
    udp: udp_multicast.GroupSender | None = None
    header_key: bytes = b""  # tags datagram headers (core/fragments.py)
    datagrams: int = 0
    datagrams_unsent: int = 0
    # Paced UDP: sealed chunks whose datagrams wait for granted bytes, as
    # [index, last, nonce, (sealed, signature), next offset].
    backlog: deque[list[Any]] = field(default_factory=deque)
    wall: float = field(default_factory=time.time)  # when it started, for the history
    tree: TreeSource | None = None  # a folder or several files, read as one stream (fd -1)
    hashing: int | None = None  # the next chunk _hash_step reads (HashAll), if running
    # The file version's source tag (core/resume.py), sealed in each announce:
    # a receiver that stored this very version from us answers McHeld. b"": a tree.
    version: bytes = b""
    # What a second send of the same files is known by: their source tag (a
    # tree's covers them all) and name (_sending_already).
    same_as: tuple[bytes, str] = (b"", "")

    @property
    def source(self) -> int | TreeSource:
        return self.tree if self.tree is not None else self.fd

    @property
    def total(self) -> int:
        return self.flow.total

    def queued(self) -> int:
        """Bytes of datagrams waiting in the backlog."""
        return sum(fragments.blob_len(item[3]) - item[4] for item in self.backlog)


class MulticastSenderActor(Actor):
    name = "msender"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.sessions: dict[bytes, Session] = {}
        # request -> its folder being walked, and the request
        self.walking: dict[int, tuple[TreeWalk, McSendRequest]] = {}
        self.known_peers = KnownPeersFile(settings.data_dir)
        self.pub: zmq.Socket[Any] | None = None
        self.pub_port = 0
        self.signer = ChunkSigner(settings.identity.seed)
        self.ticks = 0  # progress reports so far (every SOURCE_CHECK_TICKS-th looks at files)

    def setup(self) -> None:
        if self.settings.multicast_group:
            self.facts["multicast_group"] = self.settings.multicast_group
        running = lambda: bool(self.sessions)  # noqa: E731
        self.call_every_while(PROGRESS_INTERVAL, self._progress, running)
        self.trim_while_busy(running)

    def teardown(self) -> None:
        for request, (walk, _) in list(self.walking.items()):
            walk.cancel()
            self._fail_request_id(request, ResultCode.CANCELLED, "the node is stopping")
        self.walking.clear()
        for sess in list(self.sessions.values()):
            sess.flow.fail(ResultCode.CANCELLED, "the node is stopping", self.now())
            self._drive(sess)

    def _ensure_pub(self) -> None:
        """Bind the PUB socket on first use (nodes that never multicast open no port)."""
        if self.pub is not None:
            return
        # XPUB: the same as PUB, but every subscription is reported to us
        # (verbose), so publishing waits until the joined receivers subscribed.
        pub = self.socket(zmq.XPUB)
        pub.sndhwm = PUB_HWM
        # Anyone who reaches the port may connect as a subscriber (plain
        # ZMTP) and send "subscriptions": a capped queue lets it abort the
        # node (runtime/actor.py, PEER_RCVHWM), so what it makes libzmq hold
        # is bounded from outside (core/port_guard.py; sub-closed-*).
        pub.rcvhwm = PEER_RCVHWM
        self.pub_watch = PortWatch(
            GuardLimits(held=PUB_MEMORY), self.count, prefix="sub-", allowance=NULL_HANDSHAKE
        )
        self.pub_watch.start(self, pub, "msender-pub")
        # Manual: a subscription takes effect only when we apply it, which we
        # do for a joined receiver's token alone - any other connection gets
        # nothing queued (docs/multicast.md, "Keys").
        pub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.bind(pub, self.settings.host, self.settings.multicast_pub_port, "the multicast port")
        self.pub = pub
        self.pub_port = bound_port(pub)
        self.facts["multicast_pub_port"] = str(self.pub_port)
        self.watch(pub, self._on_subscription)

    def _on_subscription(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(256):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.pub_watch.delivered([frame], first=0)
            event = frame.bytes
            if event[:1] != b"\x01":
                continue  # unsubscriptions: the connection is gone or stale
            sid, token = event[1:17], event[17:]
            sess = self.sessions.get(sid)
            target = None
            if sess is not None and len(token) == TOKEN_BYTES:
                target = next(
                    (t for t in sess.targets.values() if hmac.compare_digest(t.token, token)),
                    None,
                )
            if sess is None or target is None:
                self.count("subscription-refused")
                continue
            sock.setsockopt(zmq.SUBSCRIBE, sid)  # for the connection that asked
            sess.flow.on_subscribed(target.name, self.now())
            self._drive(sess)

    # -- requests --------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, McSendRequest):
            self._start(msg)
        elif isinstance(msg, FlowRate):
            for sess in list(self.sessions.values()):
                if sess.request.request == msg.request:
                    sess.flow.on_rate(msg.rate)
        elif isinstance(msg, FlowGrant | FlowPacing):
            for sess in list(self.sessions.values()):
                if sess.request.request == msg.request:
                    if isinstance(msg, FlowGrant):
                        sess.flow.on_grant(msg.nbytes)
                    else:
                        sess.flow.on_pacing(msg.paced)
                    self._drive(sess)
        elif isinstance(msg, TransfersRequest):  # control merges it with the sender's
            self.tell(
                "control",
                TransfersReply(
                    request=msg.request,
                    transfers=codec.rows_within(sorted(self._listing(), key=codec.by_id)),
                    actor=self.name,
                ),
            )
        elif isinstance(msg, CancelRequest):
            walking = self.walking.pop(msg.request, None)
            if walking is not None:
                walking[0].cancel()
                self._fail_request_id(msg.request, ResultCode.CANCELLED, CANCELLED_BY_USER)
            for sess in list(self.sessions.values()):
                if sess.request.request == msg.request:
                    sess.flow.fail(ResultCode.CANCELLED, CANCELLED_BY_USER, self.now())
                    self._drive(sess)
        else:
            super().on_mail(msg)

    def _listing(self) -> list[dict[str, str]]:
        """``transfers`` rows of the sessions (as the sender's of its sends),
        so that ``cancel ID`` finds them; the phase and bytes as in ``Progress``."""
        rows = []
        now = self.now()
        for sess in list(self.sessions.values())[:1000]:
            state, done_bytes = _phase(sess)
            rows.append(
                {
                    "id": str(sess.request.request),
                    "file": sess.request.path[-200:],
                    "peer": ", ".join(sess.request.targets)[:200],
                    "mode": "multicast",
                    "state": state,
                    "bytes": str(done_bytes),
                    "size": str(sess.size),
                    "seconds": f"{now - sess.flow.started:.1f}",
                }
            )
        for ident, (walk, req) in list(self.walking.items())[: max(0, 1000 - len(rows))]:
            rows.append(walk.row(ident, req.path, ", ".join(req.targets), "multicast", now))
        return rows

    def _sending_already(self, req: McSendRequest, same_as: tuple[bytes, str]) -> str | None:
        """Why ``req`` is refused if a session of this node sends the same
        files (the same version, whatever the path's spelling) to a receiver
        it has not ended with: that receiver would store them twice. None if
        none does."""
        for sess in self.sessions.values():
            if sess.same_as != same_as:
                continue
            theirs = {  # those it still sends to (one that ended may be sent again)
                dialled_target(name) for name, r in sess.flow.receivers.items() if r.result is None
            }
            both = [t for t in req.targets if dialled_target(t) in theirs]
            if both:
                first, twin = sess.request.path, sess.request.request
                same = "" if first == req.path else f" (the same file as {req.path})"
                return (
                    f"already sending {first}{same} by multicast to {both[0]} "
                    f"(transfer {twin}): wait for it, or cancel transfer {twin} first"
                )
        return None

    def _fail_request(self, req: McSendRequest, code: str, reason: str) -> None:
        self._fail_request_id(req.request, code, reason)

    def _fail_request_id(self, request: int, code: str, reason: str) -> None:
        self.tell(
            "control",
            McSendResult(
                request=request, code=code, reason=shortened(reason, 500), size=0, digest=b""
            ),
        )

    def _walk(self, req: McSendRequest) -> None:
        """Walk and hash a folder or several files in a thread (as a unicast
        send does: actors/tree_source.py); :meth:`_walked` starts the session."""
        paths = [Path(p) for p in (req.path, *req.more)]
        walk = TreeWalk(self, paths, functools.partial(self._walked, req), self.now())
        self.walking[req.request] = (walk, req)
        self.tell(
            "control", Progress(request=req.request, done_bytes=0, total_bytes=0, phase="walking")
        )

    def _walked(self, req: McSendRequest, result: TreeSource | Exception) -> None:
        self.walking.pop(req.request, None)
        if isinstance(result, TreeSource):
            return self._start(req, result)
        if isinstance(result, TreeError):
            reason = f"cannot send {req.path}: {result}"
        else:
            what = getattr(result, "filename", None) or req.path
            reason = f"cannot read {what}: {getattr(result, 'strerror', None) or result}"
        self._fail_request(req, ResultCode.LOCAL, reason)

    def _start(self, req: McSendRequest, tree: TreeSource | None = None) -> None:
        bad = [t for t in req.targets if not _valid_target(t)]
        if not req.targets or bad:
            return self._fail_request(
                req, ResultCode.LOCAL, f"invalid targets: {bad or 'none'}"[:500]
            )
        if tree is None and (req.more or os.path.isdir(req.path)):
            return self._walk(req)
        group: tuple[str, int] | None = None
        udp: udp_multicast.GroupSender | None = None
        try:
            if req.group or self.settings.multicast_group:
                group = parse_group(req.group or self.settings.multicast_group)
                host = split_host_port(req.targets[0])[0]
                interface = udp_multicast.interface_toward(host)
                udp = udp_multicast.GroupSender(
                    interface,
                    group,
                    self.settings.multicast_ttl,
                    self.settings.multicast_sndbuf,
                    self.settings.multicast_fragment + fragments.HEADER_BYTES,
                )
            else:
                self._ensure_pub()
        except ValueError as exc:
            return self._fail_request(req, ResultCode.LOCAL, str(exc))
        except OSError as exc:
            return self._fail_request(
                req, ResultCode.LOCAL, f"cannot send to the group: {exc.strerror}"
            )
        except SetupError as exc:
            return self._fail_request(req, ResultCode.LOCAL, str(exc))
        if tree is not None:
            fd, size, mtime_ns = -1, tree.total_size, 0
        else:
            try:
                fd, st = open_source(req.path)
            except (NotRegularFile, OSError) as exc:
                if udp is not None:
                    udp.close()
                if isinstance(exc, NotRegularFile):
                    return self._fail_request(req, ResultCode.LOCAL, str(exc))
                why = f"cannot read {req.path}: {exc.strerror}"
                return self._fail_request(req, ResultCode.LOCAL, why)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        version = b""
        if tree is None:
            try:
                version = version_tag(fd, st)
            except OSError as exc:
                os.close(fd)
                if udp is not None:
                    udp.close()
                return self._fail_request(
                    req, ResultCode.LOCAL, f"cannot read {req.path}: {exc.strerror}"
                )
        same_as = (
            tree_source_tag(tree.manifest) if tree is not None else version,
            os.path.basename(req.path),
        )
        running = self._sending_already(req, same_as)
        if running is not None:
            if fd >= 0:
                os.close(fd)
            if udp is not None:
                udp.close()
            return self._fail_request(req, ResultCode.LOCAL, running)
        sid = os.urandom(16)
        key = new_content_key()
        now = self.now()
        flow = MulticastOutgoing(
            size,
            req.chunk_size,
            list(dict.fromkeys(req.targets)),
            timeout=req.timeout,
            now=now,
            window=req.window or self.settings.multicast_window,
            datagrams=group is not None,
            files=tree.files if tree is not None else 0,
        )
        # Paced until the scheduler says otherwise (FlowPacing): the node's
        # cap may have been set since it started (`max-rate`), and a session
        # publishes a few MiB before that word would come (20 MiB in 0.09 s
        # under a 2 MB/s cap, found by use).
        flow.on_pacing(True)
        sess = Session(
            request=req,
            sid=sid,
            fd=fd,
            size=size,
            mtime_ns=mtime_ns,
            chunk_size=req.chunk_size,
            name=os.path.basename(req.path),
            sealer=ContentSealer(sid, key),
            content_key=key,
            flow=flow,
            group=group,
            udp=udp,
            header_key=fragments.header_key(key),
            tree=tree,
            version=version,
            same_as=same_as,
        )
        self.sessions[sid] = sess
        self.count("sessions")
        for name in flow.receivers:
            self._open_target(sess, name, *split_host_port(name))
        self._send_samples(self._report_progress(sess))
        self._drive(sess)

    def _open_target(self, sess: Session, name: str, host: str, port: int) -> None:
        # The one CURVE peer link (actors/peer_link.py), kept trying: a target
        # may come up late or restart; nothing queues while it is not connected.
        link = Link(
            self,
            self.settings,
            f"tcp://{join_host_port(host, port)}",
            lambda msg: self._on_control(sess, t, msg),
            monitored=True,
            on_failure=lambda: self._on_link_failure(sess, t),
            keep_trying=True,
            on_state=lambda: self._on_link_state(sess, t),
            sndhwm=1000,
        )
        t = Target(name=name, host=host, port=port, link=link)
        sess.targets[name] = t
        self.tell("stats", _record(sess, t, self.now()))
        if link.failure:  # an address ZeroMQ would not take
            sess.flow.fail_target(name, link.failure, link.detail, self.now())

    def _hello(self, t: Target, connection: bool = False) -> None:
        """Ask ``t`` to prove its key (as the unicast pre-send check does):
        the announce follows only for a proven, trusted key. A new
        ``connection`` asks at once (whoever answers there proves its key
        again); a re-announce only when no challenge is out (or it went
        unanswered for a while): asking again while an answer is on its way
        would only make that answer stale."""
        now = self.now()
        if not connection and not t.hellos.due(now):
            return
        t.hello_key = b""
        if t.link.send(Hello(challenge=t.hellos.ask(now))):
            self.count("hellos")
        else:
            t.hellos.unsent()
            self.count("control-not-sent")

    def _trust(self, sess: Session, t: Target, key: bytes) -> tuple[str, str]:
        """The code and why ``key`` is not the one trusted at ``t``'s address
        (("", ""): it is): a pin, the known-peers file, members' records; a
        known-peers file that cannot be read trusts no one (a local problem)."""
        req, proven = sess.request, fingerprint(key)
        try:
            decision = self.known_peers.check(
                t.host, t.port, proven, pin_of(req.expect, proven), req.members.get(t.name, ())
            )
        except UnreadablePins as exc:
            return ResultCode.LOCAL, f"{exc}; nothing sent"
        if decision.trusted:
            return "", ""
        return ResultCode.UNTRUSTED, explain(decision, t.host, t.port)

    def _on_hello(self, sess: Session, t: Target, msg: HelloReply) -> None:
        now = self.now()
        verdict = t.hellos.check(msg.node_id, msg.version, msg.proof, msg.offer_key)
        if verdict == IMPOSTOR:
            who = fingerprint(msg.node_id)
            reason = f"{t.name} could not prove it holds the key it named ({who}); nothing sent"
            return sess.flow.fail_target(t.name, ResultCode.IMPOSTOR, reason, now)
        if verdict != PROVEN:  # an answer to an earlier challenge: only late
            self.count("hello-stale")
            return
        code, why = self._trust(sess, t, msg.node_id)
        if code:
            return sess.flow.fail_target(t.name, code, why, now)
        t.hello_key = msg.node_id  # the node's own key: its mreceiver proves it in the join
        self._announce(sess, t)

    def _announce(self, sess: Session, t: Target) -> None:
        """The session to ``t``, its name and size sealed to the key it proved."""
        t.attempt += 1
        wrap = Initiator(self.settings.identity)
        try:
            tree = sess.tree
            plain: codec.Message
            if sess.version and not t.legacy:
                plain = McFileDetails(name=sess.name, size=sess.size, source=sess.version)
            else:
                plain = McDetails(
                    name=sess.name,
                    size=sess.size,
                    tree=len(tree.manifest) if tree is not None else 0,
                    files=tree.files if tree is not None else 0,
                )
            details = codec.encode(plain)
            sealed = wrap.seal_details(sess.sid, t.hello_key, details)
        except ValueError:
            reason = f"{t.name} proved an invalid key"
            return sess.flow.fail_target(t.name, ResultCode.PROTOCOL, reason, self.now())
        t.wraps[t.attempt] = wrap
        while len(t.wraps) > 4:
            t.wraps.pop(next(iter(t.wraps)))
        msg = McAnnounce(
            sid=sess.sid,
            details=sealed,
            chunk_size=sess.chunk_size,
            eph_pub=wrap.public,
            pub_host="",
            pub_port=0 if sess.group else self.pub_port,
            attempt=t.attempt,
            group=sess.group[0] if sess.group else "",
            group_port=sess.group[1] if sess.group else 0,
            fragment=sess.udp.fragment if sess.udp else 0,
            signer=self.signer.public,
        )
        self._send_ctl(t, msg)

    def _send_ctl(self, t: Target, msg: codec.Message) -> None:
        if not t.link.send(msg):
            self.count("control-not-sent")

    # -- connection events -----------------------------------------------------------

    def _on_link_state(self, sess: Session, t: Target) -> None:
        """The link to ``t`` connected, completed CURVE, or failed to connect."""
        if sess.sid not in self.sessions:
            return
        link, flow = t.link, sess.flow
        r = flow.receivers[t.name]
        flow.on_connection(
            t.name, connected=link.connected, handshaken=link.handshaken, cause=link.cause
        )
        waiting = not r.joined and r.result is None
        if link.retries >= REFUSALS_UNREACHABLE and not t.noticed and waiting:
            t.noticed = True
            why = f"cannot connect to {t.name} (yet): {link.cause or 'no answer'}"
            self._notice(sess, t, ResultCode.UNREACHABLE, why)
        if link.connected and link.handshaken and waiting and t.asked_on != link.handshakes:
            # Once per connection, when its handshake is done (a reconnect
            # reports "connected" while still handshaken from before: asking
            # then too made the first answer stale). Whoever answers proves
            # its key again.
            t.asked_on = link.handshakes
            self._hello(t, connection=True)
        self._drive(sess)

    def _on_link_failure(self, sess: Session, t: Target) -> None:
        """CURVE failed (a wrong network key, not admitted by the target), or
        the target speaks another protocol version."""
        if sess.sid in self.sessions:
            sess.flow.fail_target(t.name, t.link.failure, t.link.detail, self.now())
            self._drive(sess)

    def _notice(self, sess: Session, t: Target, code: str, reason: str) -> None:
        """Tell the requester about a target before the end (not its final result)."""
        self.tell(
            "control",
            McTargetResult(
                request=sess.request.request,
                target=t.name,
                code="waiting",
                reason=f"{reason}; trying until the timeout ({code})"[:500],
            ),
        )

    # -- control plane replies -----------------------------------------------------------

    def _on_control(self, sess: Session, t: Target, msg: codec.Message) -> None:
        """One message from ``t`` over its link."""
        flow = sess.flow
        if sess.sid not in self.sessions or flow.receivers[t.name].result is not None:
            return
        now = self.now()
        if isinstance(msg, McAck) and msg.sid == sess.sid:
            try:
                naks = pairs(msg.naks)
            except ValueError:
                self.count("control-bad-naks")
                return
            flow.on_ack(t.name, msg.cumulative, naks, now)
        elif isinstance(msg, HelloReply):
            self._on_hello(sess, t, msg)
        elif isinstance(msg, McJoin) and msg.sid == sess.sid:
            self._on_join(sess, t, msg)
        elif isinstance(msg, McHeld) and msg.sid == sess.sid:
            self._on_held(sess, t, msg)
        elif isinstance(msg, McDone) and msg.sid == sess.sid:
            stored, reason = printable(msg.stored_as), printable(msg.reason)
            if not flow.on_done(t.name, msg.ok, msg.digest, stored, reason, now):
                self.count("done-unproven")  # no join or held answer proved it here
        elif isinstance(msg, McRefuse) and msg.sid == sess.sid:
            if msg.code == "unknown-session":  # it restarted: announce again
                flow.on_unknown(t.name)
            elif msg.code == "try-again":  # its space check came too late, or its
                # budget of announces was spent: the next announce (until it
                # joins) asks anew
                self.count("announce-try-again")
            elif msg.code == "protocol" and msg.reason == LEGACY_REFUSAL and not t.legacy:
                # A receiver of an older release does not know McFileDetails:
                # it gets the details it knows (and no "had it" answer).
                t.legacy = True
                self.count("announce-legacy")
                self._announce(sess, t)
            elif msg.code == "wrong-receiver":  # not the key that proved itself in the hello
                who = fingerprint(t.hello_key)
                reason = f"{t.name} cannot read an announce sealed to {who}; no key sent"
                flow.fail_target(t.name, ResultCode.IMPOSTOR, reason, now)
            else:
                reason = f"{t.name} refused: {printable(msg.reason)}"
                flow.fail_target(t.name, ResultCode.REFUSED, reason, now)
        elif isinstance(msg, ErrorReply):
            reason = f"{t.name} rejected: {printable(msg.reason)}"
            flow.fail_target(t.name, ResultCode.REFUSED, reason, now)
        else:
            self.count("control-unexpected")
        self._drive(sess)

    def _on_join(self, sess: Session, t: Target, j: McJoin) -> None:
        # The content key goes only to a receiver that proved its identity
        # and is the one this node trusts at that address.
        secrets = self._proven(sess, t, j.attempt, j)
        if secrets is None:
            return
        now = self.now()
        if len(j.repair_key) != RECEIVER_KEY_BYTES:
            reason = f"{t.name} sent no receiver key"
            return sess.flow.fail_target(t.name, ResultCode.PROTOCOL, reason, now)
        t.proven, t.proven_key = fingerprint(j.static_pub), j.static_pub
        wrapped = wrap_key(secrets, sess.sid, sess.content_key)
        if j.repair_key != t.repair_key:
            t.repair_key, t.token = j.repair_key, subscription_token(j.repair_key)
        if t.repair is None or j.repair_port != t.repair_port:
            if t.repair is not None:
                self.close_socket(t.repair)
            repair = t.repair = self.socket(zmq.PUSH)
            repair.sndhwm = REPAIR_HWM
            dial(repair, f"tcp://{join_host_port(t.host, j.repair_port)}")
            t.repair_port = j.repair_port
        self._send_ctl(t, McKey(sid=sess.sid, wrapped=wrapped, attempt=j.attempt))
        if sess.flow.on_join(t.name, now):
            self.count("joins")

    def _proven(
        self, sess: Session, t: Target, attempt: int, answer: McJoin | McHeld
    ) -> SessionSecrets | None:
        """The secrets of ``t``'s answer to announce ``attempt`` if it proves
        its identity and is the node trusted at its address; else None (the
        target failed, or the answer is stale)."""
        wrap = t.wraps.pop(attempt, None)
        if wrap is None:
            self.count("join-stale")
            return None
        now = self.now()
        try:
            secrets = wrap.finish(sess.sid, answer.static_pub, answer.eph_pub, answer.proof)
        except ProofError:
            who = fingerprint(answer.static_pub)
            reason = f"{t.name} could not prove it holds the key it named ({who}); no key sent"
            sess.flow.fail_target(t.name, ResultCode.IMPOSTOR, reason, now)
            return None
        except ValueError:
            reason = f"{t.name} sent an invalid key"
            sess.flow.fail_target(t.name, ResultCode.PROTOCOL, reason, now)
            return None
        # Trusted like a unicast receiver: a pin, the known-peers file, members' records.
        code, why = self._trust(sess, t, answer.static_pub)
        if code:
            sess.flow.fail_target(t.name, code, why, now)
            return None
        return secrets

    def _on_held(self, sess: Session, t: Target, h: McHeld) -> None:
        """``t`` holds the file (this version, from us): no key, no chunks;
        it gets the whole-file hash and answers with its verdict."""
        if self._proven(sess, t, h.attempt, h) is None:
            return
        if not sess.version or t.legacy:  # its announce named no file version
            reason = f"{t.name} claimed to hold a file it was not told the version of"
            return sess.flow.fail_target(t.name, ResultCode.PROTOCOL, reason, self.now())
        r = sess.flow.receivers.get(t.name)
        if r is not None and not (r.joined or r.held):  # (else on_held changes nothing)
            t.proven, t.proven_key = fingerprint(h.static_pub), h.static_pub
        self.count("held")
        sess.flow.on_held(t.name, self.now())

    def _report_target(self, sess: Session, t: Target, end: TargetEnded) -> None:
        self.tell("stats", _record(sess, t, self.now()))
        # Health's score of the member, as for a unicast send (actors/control.py):
        # verified, that of the identity that proved itself in the session
        # (whatever its address's spelling); failed, that of the address. Not
        # a timeout: a session waits for this node's own pace too (a rate too
        # low for its size, grants that do not come, this node stopped).
        if end.code == ResultCode.OK and t.proven_key:
            self.tell("health", ProvenOutcome(key=t.proven_key))
        elif end.code not in (ResultCode.OK, ResultCode.TIMEOUT, *NOT_THE_PEERS):
            with contextlib.suppress(ValueError):  # (its name was parsed at the request)
                host, port = split_host_port(t.name)
                self.tell("health", TransferOutcome(host=host, port=port, ok=False))
        self.tell(
            "control",
            McTargetResult(
                request=sess.request.request,
                target=t.name,
                code=end.code[:32],
                reason=shortened(end.reason, 500),
                stored_as=end.stored_as,
                seconds=end.seconds,
                held=end.held,
            ),
        )

    # -- the session's object drives ---------------------------------------------------

    def _drive(self, sess: Session) -> None:
        """Do what the session asks for until it asks for nothing more (an
        action may feed it, e.g. the hash), then arm its next timer."""
        flow = sess.flow
        while sess.sid in self.sessions:
            self._flush(sess)
            outputs = flow.poll(self.now(), sess.queued() if sess.backlog else 0)
            if not outputs:
                break
            for out in outputs:
                try:
                    self._do(sess, out)
                except OSError as exc:
                    reason = f"reading {sess.request.path} failed: {exc}"
                    flow.fail(ResultCode.LOCAL, reason, self.now())
                if sess.sid not in self.sessions:
                    return
            if flow.again:
                break  # a full batch: read the acks first (the timer is due now)
        if sess.timer is not None:
            sess.timer.cancel()
            sess.timer = None
        now = self.now()
        due = flow.next_timer(now)
        if due is not None and sess.sid in self.sessions:
            sess.timer = self.call_later(due - now, functools.partial(self._on_timer, sess))

    def _on_timer(self, sess: Session) -> None:
        sess.timer = None
        if sess.sid in self.sessions:
            sess.flow.on_timer(self.now())
            self._drive(sess)

    def _do(self, sess: Session, out: object) -> None:
        """One output of the session's :meth:`MulticastOutgoing.poll`."""
        if isinstance(out, Publish):
            self._publish_next(sess, out.index)
        elif isinstance(out, Repair):
            self._repair(sess, out)
        elif isinstance(out, SendStatus):
            status = McStatus(
                sid=sess.sid, horizon=out.horizon, digest=out.digest, ack_every=out.ack_every
            )
            self._send_ctl(sess.targets[out.target], status)
        elif isinstance(out, Announce):
            t = sess.targets[out.target]
            if sess.flow.receivers[out.target].connected:
                self._announce(sess, t) if t.hello_key else self._hello(t)
        elif isinstance(out, RequestGrant):
            self.tell("scheduler", FlowDemand(request=sess.request.request, nbytes=out.nbytes))
        elif isinstance(out, HashFile):
            self._hash_done(sess)
        elif isinstance(out, HashAll):
            self._hash_all(sess, out.start)
        elif isinstance(out, StartPublishing):
            self._start_publishing(sess, out.paced)
        elif isinstance(out, TargetLost):
            log.info("multicast: %s went silent; announcing again", out.target)
            self.count("lost")
        elif isinstance(out, TargetEnded):
            t = sess.targets[out.target]
            if out.tell:
                end = McStatus(sid=sess.sid, horizon=0, end=shortened(out.reason, 500) or out.code)
                self._send_ctl(t, end)
            if out.alone:
                if out.code != ResultCode.OK:
                    log.info("multicast to %s failed: %s", t.name, out.reason)
                self._report_target(sess, t, out)
            else:
                self.tell("stats", _record(sess, t, self.now()))
        elif isinstance(out, SessionEnded):
            self._finish(sess, out.code, out.reason)

    def _hash_done(self, sess: Session) -> None:
        """Every chunk was read: the whole-file hash (if the file, or no file
        of the tree, changed)."""
        if sess.tree is not None:
            changed = sess.tree.changed()
        else:
            changed = "x" if changed_since(sess.fd, sess.size, sess.mtime_ns) else ""
        if changed:
            reason = f"{changed if sess.tree else sess.request.path} changed while sending"
            sess.flow.fail(ResultCode.LOCAL, reason, self.now())
        else:
            sess.flow.on_digest(sess.hasher.digest(), self.now())

    def _hash_all(self, sess: Session, start: int) -> None:
        """Every target left holds the file: read and hash what publishing
        did not read (all of it when nothing was published), ``HASH_STEP``
        bytes per turn of the loop so the actor's other sessions go on; they
        wait for the hash."""
        sess.hashing = start
        self.call_later(0, functools.partial(self._hash_step, sess))

    def _hash_step(self, sess: Session) -> None:
        start = sess.hashing
        if sess.sid not in self.sessions or start is None:
            return
        end = min(sess.total, start + max(1, HASH_STEP // sess.chunk_size))
        try:
            for index in range(start, end):
                sess.hasher.update(self._read(sess, index))
        except OSError as exc:
            sess.hashing = None
            sess.flow.fail(
                ResultCode.LOCAL, f"reading {sess.request.path} failed: {exc}", self.now()
            )
            self._drive(sess)
            return
        if end < sess.total:
            sess.hashing = end
            self.call_later(0, functools.partial(self._hash_step, sess))
            return
        sess.hashing = None
        self._hash_done(sess)
        self._drive(sess)

    # -- publishing -------------------------------------------------------------------

    def _start_publishing(self, sess: Session, paced: bool) -> None:
        self.tell("scheduler", self._flow_start(sess, paced))
        for t in sess.targets.values():
            r = sess.flow.receivers[t.name]
            if not r.joined and not r.held and r.result is None and not t.noticed:
                t.noticed = True
                self._notice(sess, t, "not joined", f"{t.name} has not joined")

    def _flow_start(self, sess: Session, paced: bool) -> FlowStart:
        # No chunk size: its receivers are kept alive by its status, not by
        # its chunks, so no share is too small for its chunks.
        # Its own rate only if one was set live (a restarted scheduler keeps it).
        rate = sess.flow.own_rate(0)
        burst = default_burst(rate) if rate else 0
        return FlowStart(
            request=sess.request.request,
            priority=1,
            rate=rate,
            burst=burst,
            paced=paced,
            owner=self.name,
        )

    def on_actor_restarted(self, name: str) -> None:
        # A scheduler that crashed (or was attached anew) knows no flow: tell
        # it the publishing sessions again and let paced ones ask for grants
        # afresh (as the sender does); else they wait for grants until their
        # timeout, holding their sockets and sending threads.
        if name != "scheduler":
            return
        for sess in list(self.sessions.values()):
            if sess.flow.publishing:
                self.tell("scheduler", self._flow_start(sess, sess.flow.paced))
                sess.flow.on_pacing(sess.flow.paced)
                self._drive(sess)

    def _read(self, sess: Session, index: int) -> bytes:
        return read_chunk(sess.source, index, sess.chunk_size, sess.size)

    def _frames(self, sess: Session, index: int, data: bytes) -> tuple[bytes, list[bytes]]:
        """Seal and sign a chunk: its nonce, and the frames [McChunk header,
        sealed, signature] (crypto/chunk_signature.py: a co-receiver holds the
        content key too, only the signature tells the sender's chunks)."""
        last = index == sess.total - 1
        nonce, sealed = sess.sealer.seal_chunk(index, last, data)
        signature = self.signer.sign(sess.sid, index, last, nonce, sealed)
        header = codec.encode(McChunk(sid=sess.sid, index=index, last=last, nonce=nonce))
        return nonce, [header, sealed, signature]

    def _publish(self, sess: Session, index: int, nonce: bytes, frames: list[bytes]) -> None:
        """One sealed chunk to every subscriber: PUB/SUB, or the UDP group."""
        sealed, signature = frames[1], frames[2]
        sess.published_bytes += len(sealed)
        if sess.udp is None or sess.group is None:
            assert self.pub is not None
            self.pub.send_multipart([sess.sid, *frames], copy=False)
            return
        last = index == sess.total - 1
        blob = (sealed, signature)  # the datagrams carry sealed || signature
        if sess.flow.paced:  # datagrams leave as the scheduler grants bytes
            sess.backlog.append([index, last, nonce, blob, 0])
            self._flush(sess)
            return
        sess.udp.submit(udp_multicast.Send(sess.sid, index, last, nonce, blob, sess.header_key))

    def _flush(self, sess: Session) -> None:
        """Paced UDP: send queued datagrams while granted bytes are left, so
        a chunk's datagrams are spread over time at the node's rate instead
        of leaving in one burst that a bottleneck's queue would drop. (When
        the rate cap was lifted meanwhile, all of them.)"""
        if sess.udp is None or sess.group is None:
            return
        flow = sess.flow
        while sess.backlog and (flow.allowance > 0 or not flow.paced):
            item = sess.backlog[0]
            index, last, nonce, blob, offset = item
            budget = flow.allowance if flow.paced else None
            key = sess.header_key
            end = sess.udp.submit(
                udp_multicast.Send(sess.sid, index, last, nonce, blob, key, offset, budget)
            )
            flow.spend(end - offset)
            if end >= fragments.blob_len(blob):
                sess.backlog.popleft()
            else:
                item[4] = end

    def _repair(self, sess: Session, repair: Repair) -> None:
        """Read and seal a chunk once; re-publish it or unicast it to each asker."""
        nonce, frames = self._frames(sess, repair.index, self._read(sess, repair.index))
        sess.seals_repair += 1
        self.count("seals-repair")
        if repair.publish:
            self._publish(sess, repair.index, nonce, frames)
            return
        last = repair.index == sess.total - 1
        for name in repair.to:
            t = sess.targets[name]
            if t.repair is None:
                continue
            tag = repair_tag(t.repair_key, sess.sid, repair.index, last, nonce)
            chunk = McChunk(sid=sess.sid, index=repair.index, last=last, nonce=nonce, tag=tag)
            try:
                t.repair.send_multipart([codec.encode(chunk), *frames[1:]], zmq.NOBLOCK, copy=False)
                sess.unicast_bytes += len(frames[1])
            except zmq.Again:
                self.count("repair-queue-full")

    def _publish_next(self, sess: Session, index: int) -> None:
        """Read, hash (in order) and seal the next new chunk, and publish it."""
        data = self._read(sess, index)
        if sess.hashing is None:  # else the hash reads it (a target came back meanwhile)
            sess.hasher.update(data)
        nonce, frames = self._frames(sess, index, data)
        sess.seals_first += 1
        self.count("seals-first")
        self._publish(sess, index, nonce, frames)

    def _progress(self) -> None:
        self.ticks += 1
        if self.ticks % SOURCE_CHECK_TICKS == 0:
            for sess in [s for s in self.sessions.values() if _source_changed(s)]:
                # Failed now, not once every chunk was read (a rewrite in place
                # keeps the size: only the end's check saw it).
                reason = f"{sess.request.path} changed while sending"
                sess.flow.fail(ResultCode.LOCAL, reason, self.now())
                self.count("source-changed")
                self._drive(sess)
        samples: list[StatsSample] = []
        for sess in list(self.sessions.values()):
            samples += self._report_progress(sess)
        self._send_samples(samples)

    def _send_samples(self, samples: list[StatsSample]) -> None:
        for batch in batches(samples):
            self.tell("stats", batch)

    def _report_progress(self, sess: Session) -> list[StatsSample]:
        """The session's Progress and a McTargetProgress per receiver (every
        0.1 s, and once at the start: a short session still shows each); the
        statistics samples of its running receivers are returned, to go to
        the stats actor with every other session's."""
        request, flow = sess.request.request, sess.flow
        for t in sess.targets.values():
            state, acked = _target_state(sess, t)
            self.tell(
                "control",
                McTargetProgress(
                    request=request,
                    target=t.name,
                    state=state,
                    done_bytes=acked,
                    total_bytes=sess.size,
                ),
            )
        phase, done_bytes = _phase(sess)
        if not flow.publishing:
            self.tell(
                "control",
                Progress(request=request, done_bytes=0, total_bytes=sess.size, phase=phase),
            )
            return []
        samples = [
            _sample(sess, t, self.now())
            for t in sess.targets.values()
            if flow.receivers[t.name].result is None
        ]
        tree = sess.tree
        self.tell(
            "control",
            Progress(
                request=request,
                done_bytes=done_bytes,
                total_bytes=sess.size,
                phase=phase,
                done_files=tree.layout.files_done(done_bytes) if tree is not None else 0,
                total_files=tree.files if tree is not None else 0,
            ),
        )
        return samples

    # -- the end -------------------------------------------------------------------------

    def _finish(self, sess: Session, code: str, reason: str) -> None:
        """The session ended (every target has its result): close its sockets
        and file, and report."""
        if self.sessions.pop(sess.sid, None) is None:
            return
        if not self.sessions:
            self.trim_when_idle(lambda: not self.sessions)
        if sess.flow.publishing:
            self.tell("scheduler", FlowEnd(request=sess.request.request))
        if sess.timer is not None:
            sess.timer.cancel()
        for t in sess.targets.values():
            t.link.close()
            if t.repair is not None and not t.repair.closed:
                self.close_socket(t.repair)
        if sess.fd >= 0:
            os.close(sess.fd)
        if sess.udp is not None:
            sess.udp.close()
            sess.datagrams, sess.datagrams_unsent = sess.udp.sent, sess.udp.unsent
            if sess.udp.unsent:
                self.count("datagrams-unsent", sess.udp.unsent)
        self.count("sent" if code == ResultCode.OK else f"failed-{code}")
        plan = sess.flow.plan
        stats: dict[str, float] = {
            "chunks": sess.total,
            "chunk_size": sess.chunk_size,
            "seals_first": sess.seals_first,
            "seals_repair": sess.seals_repair,
            "published_bytes": sess.published_bytes,
            "unicast_bytes": sess.unicast_bytes,
            "repairs_published": plan.repairs_published,
            "repairs_unicast": plan.repairs_unicast,
            "demotions": plan.demotions,
            "window_decreases": plan.decreases,
            # receivers that had the file (McHeld): nothing stored again
            "held": sum(1 for r in sess.flow.receivers.values() if r.result and r.result.held),
            "window": plan.window,
            "udp": 1.0 if sess.group else 0.0,
            "datagrams": sess.datagrams,
            "datagrams_unsent": sess.datagrams_unsent,
            # the datagram size chosen for the path, and datagrams per send (GSO)
            "datagram_bytes": sess.udp.datagram if sess.udp else 0,
            "gso_batch": sess.udp.batch if sess.udp else 0,
        }
        if sess.tree is not None:
            stats["files"] = sess.tree.files
            stats["file_bytes"] = sess.tree.file_bytes
            stats["skipped"] = len(sess.tree.skipped)
        ends = [sess.flow.receivers[t.name].result for t in sess.targets.values()]
        results = [
            {
                "target": t.name,
                "code": end.code if end else code,
                "error": (end.reason if end else reason)[:300],
                "stored_as": end.stored_as if end else "",
                "seconds": f"{end.seconds if end else 0.0:.3f}",
                "held": "1" if end and end.held else "0",
            }
            for t, end in zip(sess.targets.values(), ends, strict=True)
        ]
        self.tell(
            "control",
            McSendResult(
                request=sess.request.request,
                code=code[:32],
                reason=shortened(reason, 500),
                size=sess.size,
                digest=sess.flow.digest if code == ResultCode.OK else b"",
                seconds=self.now() - sess.flow.started,
                results=results,
                stats=stats,
            ),
        )


def _phase(sess: Session) -> tuple[str, int]:
    """What the session waits for (as ``Progress`` names it), and its bytes done."""
    flow = sess.flow
    if not flow.publishing:
        return "offering", 0
    done = flow.done_chunks()
    return "verifying" if done >= flow.total else "sending", min(sess.size, done * sess.chunk_size)


def _target_state(sess: Session, t: Target) -> tuple[str, int]:
    """One receiver's state as the CLI shows it, and the bytes it acknowledged."""
    flow = sess.flow
    receiver, m = flow.receivers[t.name], flow.member(t.name)
    acked = min(sess.size, (m.cumulative if m else 0) * sess.chunk_size)
    if receiver.result is not None:
        return ("verified" if receiver.result.code == ResultCode.OK else "failed"), acked
    if m is None or m.state == JOINING:
        return ("joining" if receiver.connected else "connecting"), acked
    if m.cumulative >= flow.total and m.state != LOST:
        return "verifying", acked
    return m.state, acked


def _record(sess: Session, t: Target, now: float) -> StatsRecord:
    """One receiver of the session as the statistics history keeps it."""
    m = sess.flow.member(t.name)
    end = sess.flow.receivers[t.name].result
    code, reason = (end.code, end.reason) if end else ("running", "")
    acked = _target_state(sess, t)[1]
    return StatsRecord(
        session=sess.sid.hex(),
        side="send",
        peer=t.name[-300:],
        peer_fingerprint=t.proven,
        mode="multicast",
        file=sess.request.path[-1024:],
        size=sess.size,
        done_bytes=sess.size if code == ResultCode.OK else acked,
        chunk_size=sess.chunk_size,
        chunks=sess.total,
        started=sess.wall,
        duration=end.seconds if end else now - sess.flow.started,
        result=code[:32],
        reason=shortened(reason, 512),
        retransmits=m.naked if m else 0,
        params={
            "receivers": str(len(sess.targets)),
            "transport": "udp" if sess.group else "pubsub",
            **({"files": str(sess.tree.files)} if sess.tree is not None else {}),
        },
        stats={
            "demoted": 1.0 if m and m.demoted else 0.0,
            # It had the file (McHeld): none of its bytes crossed.
            **({"held_bytes": float(sess.size)} if end is not None and end.held else {}),
            # A rate set live for the session, the last one (as a send's).
            **({"rate": float(rate)} if (rate := sess.flow.own_rate(0)) else {}),
        },
    )


def _sample(sess: Session, t: Target, now: float) -> StatsSample:
    m = sess.flow.member(t.name)
    return StatsSample(
        session=sess.sid.hex(),
        side="send",
        peer=t.name[-300:],
        t=now - sess.flow.started,
        done_bytes=min(sess.size, (m.cumulative if m else 0) * sess.chunk_size),
        window=sess.flow.plan.window * sess.chunk_size,
        rate=sess.flow.own_rate(0),  # a live `rate` of the session
    )


def _source_changed(sess: Session) -> bool:
    """A session's one file whose size or mtime is not the one it began
    with (a folder's files are checked once all are read)."""
    return sess.fd >= 0 and not sess.flow.ended and changed_since(sess.fd, sess.size, sess.mtime_ns)


def _valid_target(text: str) -> bool:
    try:
        split_host_port(text)
    except ValueError:
        return False
    return True
