"""Multicast sender actor (``msender``): one file to many receivers at once.

Per session (``McSendRequest`` from the control actor):

1. A CURVE DEALER per target carries ``McAnnounce`` (name, size, chunk size,
   a fresh ephemeral key, this node's PUB port). A target answers ``McJoin``
   with its own ephemeral key, its identity key and a proof that it holds it
   (crypto/handshake.py), and its repair port; only if the proof verifies and
   the identity is the one trusted at that address (crypto/known_peers.py)
   does it get the session's random content key wrapped for it alone
   (``McKey``). Targets that refuse the
   connection or fail the handshake are reported at once; publishing starts
   when every target joined or failed, or after ``JOIN_WAIT`` s with at least
   one joined; a target that joins later catches up by repairs, and the
   announce is repeated to it until it joins or the timeout passes.
2. Each chunk is read once, hashed (BLAKE3, in order) and sealed once with the
   content key, and published once on the PUB socket (topic = session id) or,
   with a multicast group, sent once to the group as UDP datagrams; paced by
   :class:`~peercrypt.core.multicast.SessionPlan` (the slowest multicast
   member's written point plus an AIMD window).
3. Receivers ack and NAK over the control connection; the plan decides each
   repair: re-publish (two or more asked) or unicast to the receiver's repair
   port (one asked). A repair is read and sealed once however many get it.
4. Each receiver verifies the whole-file hash and answers ``McDone``; every
   target's outcome is streamed to the requester (``McTargetResult``) and the
   session ends with ``McSendResult`` listing them all.

Memory: the PUB and repair sockets have bounded high-water marks (a drop is a
NAK later); the plan's per-member state is bounded by the NAK limit.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import blake3
import zmq
from zmq.utils.monitor import recv_monitor_message

from actors import udp_multicast
from actors.file_chunks import read_chunk
from peercrypt.core import fragments
from peercrypt.core.address import join_host_port, split_host_port
from peercrypt.core.bitmap import pairs
from peercrypt.core.fragments import fragment_count, parse_group
from peercrypt.core.multicast import DONE, FAILED, JOINING, LOST, Repair, SessionPlan
from peercrypt.crypto.chunk_signature import (
    RECEIVER_KEY_BYTES,
    TOKEN_BYTES,
    ChunkSigner,
    repair_tag,
    subscription_token,
)
from peercrypt.crypto.handshake import Initiator, ProofError
from peercrypt.crypto.identity import fingerprint
from peercrypt.crypto.keywrap import ContentSealer, new_content_key
from peercrypt.crypto.keywrap import wrap as wrap_key
from peercrypt.crypto.known_peers import KnownPeersFile, explain
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv, SetupError, Timer, bound_port
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelRequest,
    ErrorReply,
    FlowDemand,
    FlowEnd,
    FlowGrant,
    FlowPacing,
    FlowStart,
    Progress,
)
from peercrypt.wire.multicast_messages import (
    McAck,
    McAnnounce,
    McChunk,
    McDone,
    McJoin,
    McKey,
    McRefuse,
    McSendRequest,
    McSendResult,
    McStatus,
    McTargetResult,
)
from peercrypt.wire.stats_messages import StatsRecord, StatsSample
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.msender")

JOIN_WAIT = 2.0  # seconds publishing waits for every target to join
ANNOUNCE_INTERVAL = 0.5  # re-announce to targets that did not join (yet)
TICK = 0.05
# An ack is answered with McStatus (horizon, hash, ack interval) at most this
# often per receiver - sooner when it NAKed or the hash or the interval is new
# to it: acks come every few written chunks, and answering each cost the
# sender CPU per receiver.
STATUS_INTERVAL = 0.1
PUBLISH_BATCH = 16  # chunks per loop step (acks are read in between)
PUB_HWM = 256  # messages queued per subscriber before the PUB drops
REPAIR_HWM = 64
REFUSALS_UNREACHABLE = 5
MONITOR_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass
class Target:
    name: str
    host: str
    port: int
    ctl: zmq.Socket[Any]
    monitor: zmq.Socket[Any]
    wraps: dict[int, Initiator] = field(default_factory=dict)
    attempt: int = 0
    joined: bool = False
    repair: zmq.Socket[Any] | None = None
    repair_port: int = 0
    connected: bool = False
    handshaken: bool = False
    refusals: int = 0
    noticed: bool = False
    result: tuple[str, str, str] | None = None  # code, reason, stored_as
    seconds: float = 0.0
    status_at: float = -1e9  # when the last McStatus went to it
    status_digest: bool = False  # whether one carried the whole-file hash
    status_ack_every: int = 0  # the ack interval it was last told
    # Its key for the session (McJoin): tags repairs to it; its subscription token.
    repair_key: bytes = b""
    token: bytes = b""
    subscribed: bool = False
    proven: str = ""  # its fingerprint, once it proved its key and is trusted


@dataclass
class Session:
    request: McSendRequest
    sid: bytes
    fd: int
    size: int
    mtime_ns: int
    chunk_size: int
    total: int
    name: str
    sealer: ContentSealer
    content_key: bytes
    plan: SessionPlan
    started: float
    targets: dict[str, Target] = field(default_factory=dict)
    publishing: bool = False
    hasher: Any = field(default_factory=blake3.blake3)
    digest: bytes = b""
    seals_first: int = 0
    seals_repair: int = 0
    published_bytes: int = 0
    unicast_bytes: int = 0
    timers: list[Timer] = field(default_factory=list)
    pump_scheduled: bool = False
    # The node's --max-rate (scheduler grants) paces sessions too.
    paced: bool = False
    allowance: int = 0
    demand_pending: bool = False
    subscriptions: int = 0
    # UDP/IP multicast (docs/multicast.md, "Transports"): the group, this
    # session's socket, and the targets ready for datagrams (they acked after
    # their key: they joined the group before joining the session).
    group: tuple[str, int] | None = None
    udp: udp_multicast.GroupSender | None = None
    header_key: bytes = b""  # tags datagram headers (core/fragments.py)
    ready: set[str] = field(default_factory=set)
    datagrams: int = 0
    datagrams_unsent: int = 0
    # Paced UDP: sealed chunks whose datagrams wait for granted bytes, as
    # [index, last, nonce, (sealed, signature), next offset] (about 2 chunks).
    backlog: deque[list[Any]] = field(default_factory=deque)
    wall: float = field(default_factory=time.time)  # when it started, for the history


class MulticastSenderActor(Actor):
    name = "msender"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.sessions: dict[bytes, Session] = {}
        self.known_peers = KnownPeersFile(settings.data_dir)
        self.pub: zmq.Socket[Any] | None = None
        self.pub_port = 0
        self.signer = ChunkSigner(settings.identity.seed)

    def setup(self) -> None:
        if self.settings.multicast_group:
            self.facts["multicast_group"] = self.settings.multicast_group
        running = lambda: bool(self.sessions)  # noqa: E731
        self.call_every_while(TICK, self._tick, running)
        self.call_every_while(0.1, self._progress, running)

    def teardown(self) -> None:
        for sess in list(self.sessions.values()):
            self._finish(sess, ResultCode.CANCELLED, "the node is stopping")

    def _ensure_pub(self) -> None:
        """Bind the PUB socket on first use (nodes that never multicast open no port)."""
        if self.pub is not None:
            return
        # XPUB: the same as PUB, but every subscription is reported to us
        # (verbose), so publishing waits until the joined receivers subscribed.
        pub = self.socket(zmq.XPUB)
        pub.sndhwm = PUB_HWM
        # Manual: a subscription takes effect only when we apply it, which we
        # do for a joined receiver's token alone - any other connection gets
        # nothing queued (docs/multicast.md, "Keys").
        pub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.bind(pub, self.settings.host, self.settings.multicast_pub_port)
        self.pub = pub
        self.pub_port = bound_port(pub)
        self.facts["multicast_pub_port"] = str(self.pub_port)
        self.watch(pub, self._on_subscription)

    def _on_subscription(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(256):
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
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
            if not target.subscribed:
                target.subscribed = True
                sess.subscriptions += 1
                self._maybe_start(sess)

    # -- requests --------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, McSendRequest):
            self._start(msg)
        elif isinstance(msg, FlowGrant | FlowPacing):
            for sess in list(self.sessions.values()):
                if sess.request.request == msg.request:
                    if isinstance(msg, FlowGrant):
                        sess.allowance += msg.nbytes
                    else:
                        sess.paced = msg.paced
                    sess.demand_pending = False
                    self._pump(sess)
        elif isinstance(msg, CancelRequest):
            for sess in list(self.sessions.values()):
                if sess.request.request == msg.request:
                    self._finish(sess, ResultCode.CANCELLED, "cancelled by the user")
        else:
            super().on_mail(msg)

    def _fail_request(self, req: McSendRequest, code: str, reason: str) -> None:
        self.tell(
            "control",
            McSendResult(request=req.request, code=code, reason=reason[:500], size=0, digest=b""),
        )

    def _start(self, req: McSendRequest) -> None:
        bad = [t for t in req.targets if not _valid_target(t)]
        if not req.targets or bad:
            return self._fail_request(
                req, ResultCode.LOCAL, f"invalid targets: {bad or 'none'}"[:500]
            )
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
        try:
            fd = os.open(req.path, os.O_RDONLY)
        except OSError as exc:
            if udp is not None:
                udp.close()
            return self._fail_request(
                req, ResultCode.LOCAL, f"cannot read {req.path}: {exc.strerror}"
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if udp is not None:
                udp.close()
            return self._fail_request(req, ResultCode.LOCAL, f"{req.path} is not a regular file")
        sid = os.urandom(16)
        key = new_content_key()
        total = max(1, -(-st.st_size // req.chunk_size))
        plan = SessionPlan(
            total,
            window=req.window or self.settings.multicast_window,
            stall_timeout=req.timeout,
        )
        sess = Session(
            request=req,
            sid=sid,
            fd=fd,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            chunk_size=req.chunk_size,
            total=total,
            name=os.path.basename(req.path),
            sealer=ContentSealer(sid, key),
            content_key=key,
            plan=plan,
            started=self.now(),
            group=group,
            udp=udp,
            header_key=fragments.header_key(key),
        )
        self.sessions[sid] = sess
        self.count("sessions")
        for name in dict.fromkeys(req.targets):
            self._open_target(sess, name, *split_host_port(name))
        sess.timers.append(self.call_later(JOIN_WAIT, lambda: self._join_wait_over(sess)))
        sess.timers.append(self.call_every(ANNOUNCE_INTERVAL, lambda: self._reannounce(sess)))

    def _open_target(self, sess: Session, name: str, host: str, port: int) -> None:
        s = self.settings
        ctl = self.socket(zmq.DEALER)
        ctl.curve_serverkey = s.server_keys.z85_public
        ctl.curve_publickey = s.identity.z85_public
        ctl.curve_secretkey = s.identity.z85_secret
        ctl.maxmsgsize = 64 * 1024 + 1024
        ctl.reconnect_ivl = 100
        ctl.immediate = True  # nothing queues for a peer that is not connected
        ctl.sndhwm = 1000
        address = f"inproc://pc-{self.env.node_uid}/mmonitor/{sess.sid.hex()}/{len(sess.targets)}"
        ctl.monitor(address, MONITOR_EVENTS)
        monitor = self.socket(zmq.PAIR)
        monitor.connect(address)
        t = Target(name=name, host=host, port=port, ctl=ctl, monitor=monitor)
        sess.targets[name] = t
        sess.plan.add(name, self.now())
        self.tell("stats", _record(sess, t, self.now()))
        self.watch(ctl, functools.partial(self._on_control, sess, t))
        self.watch(monitor, functools.partial(self._on_monitor, sess, t))
        try:
            ctl.connect(f"tcp://{join_host_port(host, port)}")
        except zmq.ZMQError as exc:
            self._target_failed(sess, t, ResultCode.LOCAL, f"invalid address {name}: {exc}")

    def _announce(self, sess: Session, t: Target) -> None:
        t.attempt += 1
        wrap = Initiator(self.settings.identity)
        t.wraps[t.attempt] = wrap
        while len(t.wraps) > 4:
            t.wraps.pop(next(iter(t.wraps)))
        msg = McAnnounce(
            sid=sess.sid,
            name=sess.name,
            size=sess.size,
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
        try:
            t.ctl.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.count("control-not-sent")

    def _reannounce(self, sess: Session) -> None:
        for t in sess.targets.values():
            if t.result is None and not t.joined and t.connected:
                self._announce(sess, t)

    # -- connection events -----------------------------------------------------------

    def _on_monitor(self, sess: Session, t: Target, _sock: object = None) -> None:
        while sess.sid in self.sessions and not t.monitor.closed:
            try:
                event = recv_monitor_message(t.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_CONNECTED:
                t.connected = True
                t.refusals = 0
            elif event == zmq.EVENT_CONNECT_RETRIED:
                t.connected = False
                t.refusals += 1
                if (
                    t.refusals >= REFUSALS_UNREACHABLE
                    and not t.noticed
                    and not t.joined
                    and t.result is None
                ):
                    t.noticed = True
                    self._notice(
                        sess, t, ResultCode.UNREACHABLE, f"cannot connect to {t.name} (yet)"
                    )
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                t.handshaken = True
                if not t.joined and t.result is None:
                    self._announce(sess, t)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and t.result is None:
                self._target_failed(
                    sess, t, ResultCode.NOT_ADMITTED, f"{t.name} did not admit this node"
                )
            elif (
                event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
                and not t.handshaken
                and t.result is None
            ):
                self._target_failed(
                    sess,
                    t,
                    ResultCode.HANDSHAKE,
                    f"handshake with {t.name} failed: wrong network key, or not a PeerCrypt node",
                )

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

    def _on_control(self, sess: Session, t: Target, _sock: object = None) -> None:
        acked = False
        for _ in range(256):
            if sess.sid not in self.sessions or t.ctl.closed:
                return
            try:
                data = t.ctl.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = codec.decode(data)
            except codec.DecodeError as exc:
                self.count(f"control-{exc.kind}")
                continue
            if t.result is not None:
                continue
            if isinstance(msg, McAck) and msg.sid == sess.sid:
                acked = True
                self._on_ack(sess, t, msg)
            elif isinstance(msg, McJoin) and msg.sid == sess.sid:
                self._on_join(sess, t, msg)
            elif isinstance(msg, McDone) and msg.sid == sess.sid:
                self._on_done(sess, t, msg)
            elif isinstance(msg, McRefuse) and msg.sid == sess.sid:
                if msg.code == "unknown-session":  # it restarted: announce again
                    t.joined = False
                    sess.plan.end(t.name, LOST)
                    self._announce(sess, t)
                else:
                    self._target_failed(
                        sess, t, ResultCode.REFUSED, f"{t.name} refused: {printable(msg.reason)}"
                    )
            elif isinstance(msg, ErrorReply):
                self._target_failed(
                    sess, t, ResultCode.REFUSED, f"{t.name} rejected: {printable(msg.reason)}"
                )
            else:
                self.count("control-unexpected")
        if acked:
            self._pump(sess)

    def _on_join(self, sess: Session, t: Target, j: McJoin) -> None:
        wrap = t.wraps.pop(j.attempt, None)
        if wrap is None:
            self.count("join-stale")
            return
        # The content key goes only to a receiver that proved its identity
        # and is the one this node trusts at that address.
        try:
            secrets = wrap.finish(sess.sid, j.static_pub, j.eph_pub, j.proof)
        except ProofError:
            who = fingerprint(j.static_pub)
            reason = f"{t.name} could not prove it holds the key it named ({who}); no key sent"
            return self._target_failed(sess, t, ResultCode.IMPOSTOR, reason)
        except ValueError:
            return self._target_failed(
                sess, t, ResultCode.PROTOCOL, f"{t.name} sent an invalid key"
            )
        decision = self.known_peers.check(t.host, t.port, fingerprint(j.static_pub))
        if not decision.trusted:
            return self._target_failed(
                sess, t, ResultCode.UNTRUSTED, explain(decision, t.host, t.port)
            )
        if len(j.repair_key) != RECEIVER_KEY_BYTES:
            return self._target_failed(
                sess, t, ResultCode.PROTOCOL, f"{t.name} sent no receiver key"
            )
        t.proven = fingerprint(j.static_pub)
        wrapped = wrap_key(secrets, sess.sid, sess.content_key)
        if j.repair_key != t.repair_key:
            t.repair_key, t.token = j.repair_key, subscription_token(j.repair_key)
        member = sess.plan.members.get(t.name)
        rejoin = member is None or member.state in (JOINING, LOST)
        if rejoin:
            sess.plan.join(t.name, self.now())
            self.count("joins")
        t.joined = True
        if t.repair is None or j.repair_port != t.repair_port:
            if t.repair is not None:
                self.close_socket(t.repair)
            repair = t.repair = self.socket(zmq.PUSH)
            repair.sndhwm = REPAIR_HWM
            repair.connect(f"tcp://{join_host_port(t.host, j.repair_port)}")
            t.repair_port = j.repair_port
        self._send_ctl(t, McKey(sid=sess.sid, wrapped=wrapped, attempt=j.attempt))
        self._maybe_start(sess)

    def _maybe_start(self, sess: Session) -> None:
        """Publish once every target joined (or failed) and subscribed."""
        targets = sess.targets.values()
        joined = sum(1 for t in targets if t.joined)
        ready = len(sess.ready) if sess.group else sess.subscriptions
        if (
            not sess.publishing
            and joined
            and all(t.joined or t.result is not None for t in targets)
            and ready >= joined
        ):
            self._start_publishing(sess)

    def _on_ack(self, sess: Session, t: Target, a: McAck) -> None:
        try:
            naks = pairs(a.naks)
        except ValueError:
            self.count("control-bad-naks")
            return
        member = sess.plan.members.get(t.name)
        if member is None or member.state in (DONE, FAILED, JOINING):
            return
        now = self.now()
        plan = sess.plan
        plan.on_ack(t.name, a.cumulative, naks, now)
        ack_every = plan.ack_interval
        if (
            naks
            or (sess.digest and not t.status_digest)
            or ack_every != t.status_ack_every
            or now - t.status_at >= STATUS_INTERVAL
        ):
            t.status_at, t.status_digest, t.status_ack_every = now, bool(sess.digest), ack_every
            horizon = plan.published if sess.publishing else 0
            digest = sess.digest
            self._send_ctl(
                t, McStatus(sid=sess.sid, horizon=horizon, digest=digest, ack_every=ack_every)
            )
        if sess.group and t.name not in sess.ready:
            sess.ready.add(t.name)
            self._maybe_start(sess)

    def _on_done(self, sess: Session, t: Target, d: McDone) -> None:
        if not d.ok:
            return self._target_failed(
                sess, t, ResultCode.FAILED, f"{t.name} failed: {printable(d.reason)}"
            )
        if not sess.digest or not hmac.compare_digest(d.digest, sess.digest):
            return self._target_failed(
                sess, t, ResultCode.VERIFY, f"{t.name} stored a different hash"
            )
        t.result = (ResultCode.OK, "", printable(d.stored_as))
        t.seconds = self.now() - sess.started
        sess.plan.end(t.name, DONE)
        self._report_target(sess, t)
        self._maybe_end(sess)

    def _target_failed(self, sess: Session, t: Target, code: str, reason: str) -> None:
        if t.result is not None:
            return
        t.result = (code, reason, "")
        t.seconds = self.now() - sess.started
        sess.plan.end(t.name, FAILED, reason)
        if t.joined:
            self._send_ctl(t, McStatus(sid=sess.sid, horizon=0, end=reason[:500]))
        log.info("multicast to %s failed: %s", t.name, reason)
        self._report_target(sess, t)
        self._maybe_end(sess)

    def _report_target(self, sess: Session, t: Target) -> None:
        assert t.result is not None
        code, reason, stored = t.result
        self.tell("stats", _record(sess, t, self.now()))
        self.tell(
            "control",
            McTargetResult(
                request=sess.request.request,
                target=t.name,
                code=code[:32],
                reason=reason[:500],
                stored_as=stored,
                seconds=t.seconds,
            ),
        )

    # -- publishing -------------------------------------------------------------------

    def _join_wait_over(self, sess: Session) -> None:
        joined = any(t.joined for t in sess.targets.values())
        if sess.sid in self.sessions and not sess.publishing and joined:
            self._start_publishing(sess)

    def _start_publishing(self, sess: Session) -> None:
        sess.publishing = True
        sess.paced = self.settings.max_rate > 0  # the scheduler corrects it (FlowPacing)
        self.tell(
            "scheduler",
            FlowStart(
                request=sess.request.request,
                priority=1,
                rate=0,
                burst=0,
                paced=sess.paced,
                owner=self.name,
            ),
        )
        for t in sess.targets.values():
            if not t.joined and t.result is None and not t.noticed:
                t.noticed = True
                self._notice(sess, t, "not joined", f"{t.name} has not joined")
        self._pump(sess)

    def _read(self, sess: Session, index: int) -> bytes:
        return read_chunk(sess.fd, index, sess.chunk_size, sess.size)

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
        if sess.paced:  # datagrams leave as the scheduler grants bytes
            sess.backlog.append([index, last, nonce, blob, 0])
            self._flush(sess)
            return
        unsent = sess.udp.send_sealed(sess.sid, index, last, nonce, blob, sess.header_key)
        sess.datagrams += fragment_count(fragments.blob_len(blob), sess.udp.fragment) - unsent
        if unsent:
            sess.datagrams_unsent += unsent
            self.count("datagrams-unsent", unsent)

    def _flush(self, sess: Session) -> None:
        """Paced UDP: send queued datagrams while granted bytes are left, so
        a chunk's datagrams are spread over time at the node's rate instead
        of leaving in one burst that a bottleneck's queue would drop. (When
        the rate cap was lifted meanwhile, all of them.)"""
        if sess.udp is None or sess.group is None:
            return
        frag = sess.udp.fragment
        while sess.backlog and (sess.allowance > 0 or not sess.paced):
            item = sess.backlog[0]
            index, last, nonce, blob, offset = item
            size = fragments.blob_len(blob)
            end = min(size, offset + frag)
            head = fragments.header(sess.sid, index, last, nonce, size, offset, key=sess.header_key)
            sent = sess.udp.send_datagram(head, fragments.blob_slice(blob, offset, end))
            sess.allowance -= end - offset
            if not sent:  # the rest of this chunk is useless: it is NAKed
                unsent = fragment_count(size, frag) - offset // frag
                sess.datagrams_unsent += unsent
                self.count("datagrams-unsent", unsent)
                sess.backlog.popleft()
                continue
            sess.datagrams += 1
            if end >= size:
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

    def _publish_next(self, sess: Session) -> None:
        """Read, hash (in order) and seal the next new chunk, and publish it."""
        index = sess.plan.published
        data = self._read(sess, index)
        sess.hasher.update(data)
        nonce, frames = self._frames(sess, index, data)
        sess.seals_first += 1
        self.count("seals-first")
        self._publish(sess, index, nonce, frames)
        sess.plan.on_published()

    def _demand(self, sess: Session, nbytes: int) -> None:
        if nbytes > 0 and not sess.demand_pending:
            sess.demand_pending = True
            self.tell("scheduler", FlowDemand(request=sess.request.request, nbytes=nbytes))

    def _pump(self, sess: Session) -> None:
        if sess.sid not in self.sessions or not sess.publishing:
            return
        if sess.paced and sess.udp is not None:
            return self._pump_datagrams(sess)
        self._flush(sess)  # what a paced session left queued before the cap was lifted
        plan = sess.plan
        # Paced: first sends and repairs together stay within the granted bytes.
        budget = sess.allowance // sess.chunk_size if sess.paced else plan.window
        try:
            for repair in plan.plan(self.now(), budget=min(budget, plan.window)):
                budget -= 1
                sess.allowance -= sess.chunk_size if sess.paced else 0
                self._repair(sess, repair)
            wanted = plan.can_publish()
            n = min(wanted, PUBLISH_BATCH, max(0, budget) if sess.paced else PUBLISH_BATCH)
            if sess.paced:
                sess.allowance -= n * sess.chunk_size
                # Ask for what is left to publish now, plus a window's worth
                # for repairs when the grant ran out (they may be waiting).
                need = max(0, wanted - n) + (plan.window if budget - n <= 0 else 0)
                if n < PUBLISH_BATCH:
                    self._demand(sess, need * sess.chunk_size)
            for _ in range(n):
                self._publish_next(sess)
        except OSError as exc:
            return self._finish(
                sess, ResultCode.LOCAL, f"reading {sess.request.path} failed: {exc}"
            )
        self._check_read_all(sess)
        if n == PUBLISH_BATCH and not sess.pump_scheduled:
            sess.pump_scheduled = True
            self.call_later(0, lambda: self._pump_again(sess))

    def _pump_datagrams(self, sess: Session) -> None:
        """Paced UDP: one chunk at a time goes into the backlog, whose
        datagrams :meth:`_flush` sends within the granted bytes."""
        plan = sess.plan
        try:
            self._flush(sess)
            for _ in range(PUBLISH_BATCH):
                if sess.backlog or sess.allowance <= 0:
                    break
                repairs = plan.plan(self.now(), budget=1)
                if repairs:
                    if not repairs[0].publish:
                        sess.allowance -= sess.chunk_size  # unicast: the whole chunk now
                    self._repair(sess, repairs[0])
                elif plan.can_publish():
                    self._publish_next(sess)
                else:
                    break
        except OSError as exc:
            return self._finish(
                sess, ResultCode.LOCAL, f"reading {sess.request.path} failed: {exc}"
            )
        self._check_read_all(sess)
        if sess.allowance <= 0:
            queued = sum(fragments.blob_len(item[3]) - item[4] for item in sess.backlog)
            self._demand(sess, queued + (plan.can_publish() + plan.window) * sess.chunk_size)

    def _check_read_all(self, sess: Session) -> None:
        """Once every chunk was read: the whole-file hash (if the file did not change)."""
        if sess.plan.published == sess.plan.total and not sess.digest:
            st = os.fstat(sess.fd)
            if (st.st_size, st.st_mtime_ns) != (sess.size, sess.mtime_ns):
                return self._finish(
                    sess, ResultCode.LOCAL, f"{sess.request.path} changed while sending"
                )
            sess.digest = sess.hasher.digest()

    def _pump_again(self, sess: Session) -> None:
        sess.pump_scheduled = False
        self._pump(sess)

    def _tick(self) -> None:
        now = self.now()
        for sess in list(self.sessions.values()):
            if not sess.publishing:
                if now - sess.started >= sess.request.timeout:
                    for t in list(sess.targets.values()):
                        if not t.joined:
                            code = ResultCode.TIMEOUT if t.handshaken else ResultCode.UNREACHABLE
                            self._target_failed(sess, t, code, _not_joined(t))
                    if sess.sid in self.sessions:
                        self._start_publishing(sess)
                continue
            for name, state in sess.plan.tick(now):
                t = sess.targets[name]
                if state == LOST:
                    log.info("multicast: %s went silent; announcing again", name)
                    t.joined = False
                    self.count("lost")
                elif state == FAILED:
                    member = sess.plan.members[name]
                    reason = member.reason
                    code = ResultCode.TIMEOUT
                    if not t.joined and not t.connected:
                        code, reason = ResultCode.UNREACHABLE, _not_joined(t)
                    self._target_failed(sess, t, code, reason)
            if sess.sid in self.sessions:
                self._pump(sess)

    def _progress(self) -> None:
        for sess in self.sessions.values():
            if sess.publishing:
                live = [
                    m.cumulative
                    for m in sess.plan.members.values()
                    if m.state not in (FAILED, JOINING)
                ]
                done = min(live) if live else 0
                for t in sess.targets.values():
                    if t.result is None:
                        self.tell("stats", _sample(sess, t, self.now()))
                self.tell(
                    "control",
                    Progress(
                        request=sess.request.request,
                        done_bytes=min(sess.size, done * sess.chunk_size),
                        total_bytes=sess.size,
                    ),
                )

    # -- the end -------------------------------------------------------------------------

    def _maybe_end(self, sess: Session) -> None:
        if sess.sid in self.sessions and all(t.result is not None for t in sess.targets.values()):
            failed = [t for t in sess.targets.values() if t.result and t.result[0] != ResultCode.OK]
            if not failed:
                self._finish(sess, ResultCode.OK, "")
            else:
                first = failed[0]
                assert first.result is not None
                ok = len(sess.targets) - len(failed)
                reason = f"{ok} of {len(sess.targets)} receivers verified; {first.result[1]}"
                self._finish(sess, first.result[0], reason)

    def _finish(self, sess: Session, code: str, reason: str) -> None:
        if self.sessions.pop(sess.sid, None) is None:
            return
        if sess.publishing:
            self.tell("scheduler", FlowEnd(request=sess.request.request))
        for timer in sess.timers:
            timer.cancel()
        for t in sess.targets.values():
            if t.result is None:
                t.result = (code if code != ResultCode.OK else ResultCode.CANCELLED, reason, "")
                t.seconds = self.now() - sess.started
                self.tell("stats", _record(sess, t, self.now()))
                if t.joined:
                    self._send_ctl(t, McStatus(sid=sess.sid, horizon=0, end=reason[:500] or code))
            for sock in (t.ctl, t.monitor, t.repair):
                if sock is not None and not sock.closed:
                    if sock is t.ctl:
                        sock.disable_monitor()
                    self.close_socket(sock)
        os.close(sess.fd)
        if sess.udp is not None:
            sess.udp.close()
        self.count("sent" if code == ResultCode.OK else f"failed-{code}")
        plan = sess.plan
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
            "window": plan.window,
            "udp": 1.0 if sess.group else 0.0,
            "datagrams": sess.datagrams,
            "datagrams_unsent": sess.datagrams_unsent,
            # the datagram size chosen for the path, and datagrams per send (GSO)
            "datagram_bytes": sess.udp.datagram if sess.udp else 0,
            "gso_batch": sess.udp.batch if sess.udp else 0,
        }
        results = [
            {
                "target": t.name,
                "code": t.result[0] if t.result else code,
                "error": (t.result[1] if t.result else reason)[:300],
                "stored_as": t.result[2] if t.result else "",
                "seconds": f"{t.seconds:.3f}",
            }
            for t in sess.targets.values()
        ]
        self.tell(
            "control",
            McSendResult(
                request=sess.request.request,
                code=code[:32],
                reason=reason[:500],
                size=sess.size,
                digest=sess.digest if code == ResultCode.OK else b"",
                seconds=self.now() - sess.started,
                results=results,
                stats=stats,
            ),
        )


def _record(sess: Session, t: Target, now: float) -> StatsRecord:
    """One receiver of the session as the statistics history keeps it."""
    m = sess.plan.members.get(t.name)
    code, reason, _ = t.result or ("running", "", "")
    acked = min(sess.size, (m.cumulative if m else 0) * sess.chunk_size)
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
        duration=t.seconds if t.result else now - sess.started,
        result=code[:32],
        reason=reason[:512],
        retransmits=m.naked if m else 0,
        params={
            "receivers": str(len(sess.targets)),
            "transport": "udp" if sess.group else "pubsub",
        },
        stats={"demoted": 1.0 if m and m.demoted else 0.0},
    )


def _sample(sess: Session, t: Target, now: float) -> StatsSample:
    m = sess.plan.members.get(t.name)
    return StatsSample(
        session=sess.sid.hex(),
        side="send",
        peer=t.name[-300:],
        t=now - sess.started,
        done_bytes=min(sess.size, (m.cumulative if m else 0) * sess.chunk_size),
        window=sess.plan.window * sess.chunk_size,
    )


def _not_joined(t: Target) -> str:
    if not t.connected:
        return f"cannot connect to {t.name} (no node listening there?)"
    return f"{t.name} did not join the session"


def _valid_target(text: str) -> bool:
    try:
        split_host_port(text)
    except ValueError:
        return False
    return True
