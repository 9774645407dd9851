"""Sender actor: offers files to peers and streams them, sealed, under credit.

Per transfer (``SendRequest`` from the control actor):

1. A CURVE DEALER to the peer's public port carries the Offer (name and size
   travel inside CURVE); a socket monitor tells *why* nothing came back:
   connection refused, handshake failed (wrong network key), or not admitted.
2. On Accept: the transfer keys are derived and a plain DEALER to the
   advertised data port carries chunks, read with ``pread``, hashed (BLAKE3,
   in file order, on first read) and sealed with a fresh nonce each time.
   :class:`~peercrypt.core.send_window.SendWindow` decides what to send.
3. When every chunk is acked: a sealed Done with the whole-file hash; the
   result is "ok" only when the receiver's sealed Verified repeats that hash.

Modes (see :mod:`peercrypt.core.modes`): ``aimd`` caps the chunks in
flight by an :class:`~peercrypt.core.aimd.AimdWindow` fed by acks and
timeouts; paced flows (``token-bucket``, or any flow while the node has a
rate cap, ``qos`` priorities) send only bytes the scheduler granted;
``parallel`` reads and seals on a :class:`~actors.lanes.LaneCrew` of worker
threads and spreads chunks over as many connections.

Progress goes to the requester every 0.1 s. Memory per transfer is the
credit window (chunks queued in ZeroMQ), never the file size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import blake3
import zmq

from actors.lanes import LaneCrew
from actors.peer_link import Link, url_host
from peercrypt.core.aimd import AimdWindow
from peercrypt.core.bitmap import ChunkBitmap, pairs
from peercrypt.core.modes import Policy, PolicyError, with_overrides
from peercrypt.core.send_window import SendWindow
from peercrypt.crypto.transfer import Ephemeral, OpenError, TransferKeys
from peercrypt.runtime.actor import Actor, ActorEnv, Timer
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Accept,
    Ack,
    CancelRequest,
    ChunkHeader,
    Done,
    ErrorReply,
    Failed,
    FlowDemand,
    FlowEnd,
    FlowGrant,
    FlowPacing,
    FlowStart,
    Offer,
    Progress,
    Refuse,
    SealedHeader,
    SendRequest,
    SendResult,
    TransfersReply,
    TransfersRequest,
    Verified,
)

log = logging.getLogger("peercrypt.sender")

PROGRESS_INTERVAL = 0.1
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))
DONE_RETRIES = 5


@dataclass
class Outgoing:
    request: SendRequest
    policy: Policy
    chunk_size: int
    requester: str
    tid: bytes
    fd: int
    size: int
    mtime_ns: int
    total: int
    eph: Ephemeral
    started: float
    link: Link | None = None
    deadline: Timer | None = None
    keys: TransferKeys | None = None
    data: zmq.Socket[Any] | None = None
    window: SendWindow | None = None
    hasher: Any = field(default_factory=blake3.blake3)
    hashed: int = 0
    digest: bytes = b""
    done_sent: int = 0
    last_progress: float = 0.0
    retransmit_timer: Timer | None = None
    lanes: list[zmq.Socket[Any]] = field(default_factory=list)
    crew: LaneCrew | None = None
    next_lane: int = 0
    cwnd: AimdWindow | None = None
    paced: bool = False
    allowance: int = 0
    demand_pending: bool = False

    @property
    def peer(self) -> str:
        return f"{self.request.host}:{self.request.port}"


class SenderActor(Actor):
    name = "sender"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.transfers: dict[bytes, Outgoing] = {}
        self.waiting: deque[SendRequest] = deque()  # beyond max_outgoing, in order

    def setup(self) -> None:
        self.call_every(PROGRESS_INTERVAL, self._progress)

    def teardown(self) -> None:
        waiting, self.waiting = self.waiting, deque()
        for req in waiting:
            self.tell("control", _result(req.request, "cancelled", "the node is stopping"))
        for t in list(self.transfers.values()):
            self._end(t, "cancelled", "the node is stopping")

    # -- requests -------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, FlowGrant):
            t = self._by_request(msg.request)
            if t is not None:
                t.allowance += msg.nbytes
                t.demand_pending = False
                self._pump(t)
        elif isinstance(msg, FlowPacing):
            t = self._by_request(msg.request)
            if t is not None:
                t.paced = msg.paced
                t.demand_pending = False
                self._pump(t)
        elif isinstance(msg, TransfersRequest):
            self.tell("control", TransfersReply(request=msg.request, transfers=self._listing()))
        elif isinstance(msg, SendRequest):
            if len(self.transfers) < self.settings.max_outgoing:
                self._start(msg)
            else:
                self.waiting.append(msg)
                self.count("queued")
        elif isinstance(msg, CancelRequest):
            for t in list(self.transfers.values()):
                if t.request.request == msg.request:
                    self._end(t, "cancelled", "cancelled by the user")
            for req in [r for r in self.waiting if r.request == msg.request]:
                self.waiting.remove(req)
                self.tell("control", _result(req.request, "cancelled", "cancelled by the user"))
        else:
            super().on_mail(msg)

    def _listing(self) -> list[dict[str, str]]:
        rows = []
        for t in list(self.transfers.values())[:1000]:
            acked = t.window.acked.count * t.chunk_size if t.window is not None else 0
            rows.append(
                {
                    "id": str(t.request.request),
                    "file": t.request.path[-200:],
                    "peer": t.peer,
                    "mode": t.policy.mode,
                    "state": "offered" if t.window is None else "sending",
                    "bytes": str(min(t.size, acked)),
                    "size": str(t.size),
                    "seconds": f"{time.monotonic() - t.started:.1f}",
                }
            )
        rows += [
            {
                "id": str(r.request),
                "file": r.path[-200:],
                "peer": f"{r.host}:{r.port}",
                "mode": r.mode or "",
                "state": "waiting",
                "bytes": "0",
                "size": "?",
                "seconds": "0",
            }
            for r in list(self.waiting)[: 1000 - len(rows)]
        ]
        return rows

    def _by_request(self, request: int) -> Outgoing | None:
        for t in self.transfers.values():
            if t.request.request == request and t.window is not None:
                return t
        return None

    def _start(self, req: SendRequest) -> None:
        def fail(code: str, reason: str) -> None:
            self.tell("control", _result(req.request, code, reason))

        try:
            fd = os.open(req.path, os.O_RDONLY)
        except OSError as exc:
            return fail("local", f"cannot read {req.path}: {exc.strerror}")
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            os.close(fd)
            return fail("local", f"{req.path} is not a regular file")
        try:
            policy = with_overrides(Policy(), **{n: getattr(req, n) for n in POLICY_FIELDS})
        except PolicyError as exc:
            os.close(fd)
            return fail("local", str(exc))
        chunk_size = policy.chunk_size_for(req.chunk_size)
        tid = os.urandom(16)
        t = Outgoing(
            request=req,
            policy=policy,
            chunk_size=chunk_size,
            requester="control",
            tid=tid,
            fd=fd,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            total=-(-st.st_size // chunk_size),
            eph=Ephemeral(),
            started=time.monotonic(),
        )
        self.transfers[tid] = t
        t.link = Link(
            self,
            self.settings,
            f"tcp://{url_host(req.host)}:{req.port}",
            functools.partial(self._on_control, t),
            monitored=True,
            on_failure=functools.partial(self._on_link_failure, t),
        )
        if t.link.failure:
            return self._end(t, t.link.failure, t.link.detail)
        offer = Offer(
            tid=tid,
            name=os.path.basename(req.path),
            size=t.size,
            chunk_size=chunk_size,
            eph_pub=t.eph.public,
            hash_alg="blake3",
        )
        t.link.send(offer)
        t.deadline = self.call_later(req.timeout, lambda: self._offer_timeout(t))
        self.count("offers")

    # -- control plane replies ----------------------------------------------------------

    def _on_link_failure(self, t: Outgoing) -> None:
        if t.tid in self.transfers and t.window is None and t.link is not None:
            self._end(t, t.link.failure, t.link.detail)

    def _offer_timeout(self, t: Outgoing) -> None:
        if t.tid not in self.transfers or t.window is not None or t.link is None:
            return
        code, reason = t.link.timeout_reason(t.request.timeout)
        self._end(t, code, reason)

    def _on_control(self, t: Outgoing, msg: codec.Message) -> None:
        if t.tid not in self.transfers or t.window is not None:
            return
        if isinstance(msg, Accept) and msg.tid == t.tid:
            self._on_accept(t, msg)
        elif isinstance(msg, Refuse) and msg.tid == t.tid:
            self._end(t, "refused", f"{t.peer} refused: {msg.reason}")
        elif isinstance(msg, ErrorReply):
            self._end(t, "refused", f"{t.peer} rejected the offer: {msg.reason}")
        else:
            self.count("control-unexpected")

    def _on_accept(self, t: Outgoing, accept: Accept) -> None:
        if t.deadline is not None:
            t.deadline.cancel()
        try:
            t.keys = t.eph.agree(t.tid, accept.eph_pub, initiator=True)
            have = pairs(accept.have)
        except ValueError as exc:
            return self._end(t, "protocol", f"{t.peer} sent an invalid accept: {exc}")
        p = t.policy
        # Lanes are separate connections: their chunks arrive out of order by
        # up to the whole window, which SACK loss detection would take for
        # losses; there, only the RTO finds a lost chunk.
        dupthresh = max(p.ack_threshold, accept.window) if p.mode == "parallel" else p.ack_threshold
        t.window = SendWindow(t.total, dupthresh=dupthresh)
        t.window.on_accept(have, accept.window)
        host = accept.data_host or t.request.host
        for _ in range(p.lanes if p.mode == "parallel" else 1):
            data = self.socket(zmq.DEALER)
            data.sndhwm = 0  # credit bounds what is queued
            data.rcvhwm = 0
            data.maxmsgsize = 64 * 1024
            data.connect(f"tcp://{url_host(host)}:{accept.data_port}")
            self.watch(data, functools.partial(self._on_data, t))
            t.lanes.append(data)
        t.data = t.lanes[0]
        if p.mode == "parallel":
            held = ChunkBitmap(t.total)
            held.add_ranges(have)
            t.crew = LaneCrew(t.keys, t.fd, t.size, t.chunk_size, p.lanes, skip=held)
            self.watch(t.crew.wake_fd, functools.partial(self._on_crew, t))
        if p.mode == "aimd":
            t.cwnd = AimdWindow.from_kb(
                p.window_kb,
                p.min_window_kb,
                p.max_window_kb,
                dupack_threshold=p.ack_threshold if p.dupack_detect else None,
                timeout_decrease=p.timeout_detect,
            )
        # The scheduler has the last word (a live max-rate): it answers FlowPacing.
        t.paced = p.mode == "token-bucket" or self.settings.max_rate > 0
        self.tell(
            "scheduler",
            FlowStart(
                request=t.request.request,
                priority=p.priority,
                rate=p.rate if p.mode == "token-bucket" else 0,
                burst=p.burst_for(t.chunk_size) if p.mode == "token-bucket" else 0,
                paced=t.paced,
            ),
        )
        # The control connection's job is done.
        if t.link is not None:
            t.link.close()
        t.last_progress = self.now()
        self._pump(t)

    # -- data plane --------------------------------------------------------------------

    def _read(self, t: Outgoing, index: int) -> bytes:
        data = os.pread(t.fd, t.chunk_size, index * t.chunk_size)
        expected = min(t.chunk_size, t.size - index * t.chunk_size)
        if len(data) != expected:
            raise OSError(f"file shrank while sending (chunk {index})")
        return data

    def _pump(self, t: Outgoing) -> None:
        if t.tid not in self.transfers or t.done_sent:
            return
        assert t.window is not None and t.keys is not None and t.data is not None
        now = self.now()
        if t.cwnd is not None:
            t.window.limit = max(1, t.cwnd.window // t.chunk_size)
        limit = t.allowance // t.chunk_size if t.paced else None
        try:
            for index in t.window.next_to_send(now, limit):
                if t.paced:
                    t.allowance -= t.chunk_size
                if t.cwnd is not None:
                    t.cwnd.on_send(min(t.size, (index + 1) * t.chunk_size))
                if t.crew is not None:
                    t.crew.submit(index)
                    continue
                while t.hashed < index:  # chunks the receiver already held (resume)
                    t.hasher.update(self._read(t, t.hashed))
                    t.hashed += 1
                chunk = self._read(t, index)
                if index == t.hashed:
                    t.hasher.update(chunk)
                    t.hashed += 1
                last = index == t.total - 1
                nonce, sealed = t.keys.seal_chunk(index, last, chunk)
                self._send_chunk(t, index, last, nonce, sealed)
        except OSError as exc:
            return self._end(t, "local", f"reading {t.request.path} failed: {exc}")
        if t.window.done:
            self._send_done(t)
            return
        self._arm_retransmit(t)
        if t.paced and not t.demand_pending:
            room = t.window.room()
            wanted = room * t.chunk_size - t.allowance
            if wanted > 0:
                t.demand_pending = True
                self.tell("scheduler", FlowDemand(request=t.request.request, nbytes=wanted))

    def _send_chunk(self, t: Outgoing, index: int, last: bool, nonce: bytes, sealed: bytes) -> None:
        header = codec.encode(ChunkHeader(tid=t.tid, index=index, last=last, nonce=nonce))
        lane = t.lanes[t.next_lane % len(t.lanes)]
        t.next_lane += 1
        lane.send_multipart([header, sealed], copy=False)

    def _on_crew(self, t: Outgoing, _fd: object = None) -> None:
        if t.crew is None or t.tid not in self.transfers:
            return
        for result in t.crew.drain():
            if result[0] == "chunk":
                _, index, last, nonce, sealed = result
                self._send_chunk(t, index, last, nonce, sealed)
            elif result[0] == "hash":
                t.digest = result[1]
                t.hashed = t.total
                if t.window is not None and t.window.done:
                    self._send_done(t)
            else:
                return self._end(t, "local", f"reading {t.request.path} failed: {result[1]}")

    def _arm_retransmit(self, t: Outgoing) -> None:
        assert t.window is not None
        if t.retransmit_timer is not None:
            t.retransmit_timer.cancel()
        due = t.window.next_deadline()
        if due is not None:
            t.retransmit_timer = self.call_later(due - self.now(), lambda: self._on_rto(t))

    def _on_rto(self, t: Outgoing) -> None:
        if t.tid not in self.transfers or t.window is None or t.window.done:
            return
        if self.now() - t.last_progress > t.request.timeout:
            return self._end(t, "timeout", f"{t.peer} stopped acknowledging")
        timeouts = t.window.timeouts
        t.window.on_timer(self.now())
        if t.cwnd is not None and t.window.timeouts > timeouts:
            t.cwnd.on_timeout(self.now())
        self._pump(t)

    def _send_done(self, t: Outgoing) -> None:
        assert t.keys is not None and t.data is not None
        if t.crew is not None and not t.digest:
            return  # the lanes have not hashed every chunk yet; their result calls us again
        while t.hashed < t.total:
            try:
                t.hasher.update(self._read(t, t.hashed))
            except OSError as exc:
                return self._end(t, "local", f"reading {t.request.path} failed: {exc}")
            t.hashed += 1
        st = os.fstat(t.fd)
        if (st.st_size, st.st_mtime_ns) != (t.size, t.mtime_ns):
            return self._end(t, "local", f"{t.request.path} changed while it was being sent")
        if t.done_sent >= DONE_RETRIES:
            return self._end(t, "timeout", f"{t.peer} did not confirm the file")
        if t.crew is None:
            t.digest = t.hasher.digest()
        t.done_sent += 1
        self._send_sealed(t, Done(digest=t.digest, chunks=t.total))
        assert t.window is not None
        delay = max(1.0, t.window.rtt.rto * 2**t.done_sent)
        t.retransmit_timer = self.call_later(delay, lambda: self._done_timeout(t))

    def _done_timeout(self, t: Outgoing) -> None:
        if t.tid in self.transfers:
            self._send_done(t)

    def _send_sealed(self, t: Outgoing, msg: codec.Message) -> None:
        assert t.keys is not None and t.data is not None
        nonce, sealed = t.keys.seal_message(codec.encode(msg))
        t.data.send_multipart([codec.encode(SealedHeader(tid=t.tid, nonce=nonce)), sealed])

    def _on_data(self, t: Outgoing, sock: zmq.Socket[Any]) -> None:
        assert t.keys is not None and t.window is not None
        progressed = False
        while t.tid in self.transfers:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                if len(frames) != 2:
                    raise codec.DecodeError("frames", str(len(frames)))
                header = codec.decode_as(frames[0], SealedHeader, 512)
                if header.tid != t.tid:
                    raise codec.DecodeError("wrong-transfer", "")
                msg = codec.decode(t.keys.open_message(header.nonce, frames[1]), 4096)
            except (codec.DecodeError, OpenError) as exc:
                self.count("data-dropped")
                self.log_once("data", t.peer, "sender: dropped a frame from %s: %s", t.peer, exc)
                continue
            if isinstance(msg, Ack):
                try:
                    sack = pairs(msg.sack)
                except ValueError:
                    self.count("data-dropped")
                    continue
                sack_losses = t.window.fast_retransmits
                if t.window.on_ack(msg.cumulative, sack, msg.window, self.now()):
                    progressed = True
                if t.cwnd is not None and t.window.fast_retransmits > sack_losses:
                    t.cwnd.on_sack_loss(self.now())
                if t.cwnd is not None:
                    acked_bytes = min(t.size, t.window.acked.cumulative * t.chunk_size)
                    t.cwnd.on_ack(acked_bytes, self.now())
            elif isinstance(msg, Verified):
                if hmac.compare_digest(msg.digest, t.digest) and t.done_sent:
                    return self._end(t, "ok", "", stored_as=msg.stored_as)
                return self._end(t, "verify", "the receiver stored a different hash")
            elif isinstance(msg, Failed):
                return self._end(t, msg.code, f"{t.peer} failed the transfer: {msg.reason}")
        if progressed:
            t.last_progress = self.now()
        self._pump(t)

    # -- progress and the end --------------------------------------------------------

    def _progress(self) -> None:
        for t in self.transfers.values():
            if t.window is not None:
                acked = min(t.size, t.window.acked.count * t.chunk_size)
                self.tell(
                    t.requester,
                    Progress(request=t.request.request, done_bytes=acked, total_bytes=t.size),
                )

    def _end(self, t: Outgoing, code: str, reason: str, stored_as: str = "") -> None:
        self.transfers.pop(t.tid, None)
        for timer in (t.deadline, t.retransmit_timer):
            if timer is not None:
                timer.cancel()
        if code != "ok" and t.keys is not None and t.data is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._send_sealed(t, Failed(code="aborted", reason=reason[:200]))
        if t.crew is not None:
            self.unwatch(t.crew.wake_fd)
            t.crew.stop()
        if t.window is not None:
            self.tell("scheduler", FlowEnd(request=t.request.request))
        if t.link is not None:
            t.link.close()
        for sock in t.lanes:
            if not sock.closed:
                self.close_socket(sock)
        os.close(t.fd)
        self.count("sent" if code == "ok" else f"failed-{code}")
        while self.waiting and len(self.transfers) < self.settings.max_outgoing:
            self._start(self.waiting.popleft())
        retransmits = t.window.retransmits if t.window is not None else 0
        self.tell(
            t.requester,
            SendResult(
                request=t.request.request,
                code=code[:32],
                reason=reason[:500],
                size=t.size,
                digest=t.digest if code == "ok" else b"",
                stored_as=stored_as,
                seconds=time.monotonic() - t.started,
                retransmits=retransmits,
                mode=t.policy.mode,
                stats=_stats(t),
                window_history=_history(t),
            ),
        )


def _stats(t: Outgoing) -> dict[str, float]:
    """The transfer's flow and congestion statistics."""
    if t.window is None:
        return {}
    w, rtt = t.window, t.window.rtt
    stats: dict[str, float] = {
        "chunk_size": t.chunk_size,
        "chunks": t.total,
        "retransmits": w.retransmits,
        "timeouts": w.timeouts,
        "fast_retransmits": w.fast_retransmits,
        "rto": round(rtt.rto, 6),
    }
    if rtt.srtt is not None and rtt.rttvar is not None:
        stats["srtt"] = round(rtt.srtt, 6)
        stats["rttvar"] = round(rtt.rttvar, 6)
    if t.crew is not None:
        stats["lanes"] = len(t.lanes)
    if t.cwnd is not None:
        stats["window_bytes"] = t.cwnd.window
        stats["window_decreases"] = t.cwnd.decreases
        stats["congestion_timeouts"] = t.cwnd.timeouts
        stats["dupack_retransmits"] = t.cwnd.fast_retransmits
    if t.policy.mode == "token-bucket":
        stats["rate"] = t.policy.rate
    return stats


def _history(t: Outgoing) -> list[int]:
    """The AIMD window over time as [ms since start, bytes, ...] (bounded)."""
    if t.cwnd is None:
        return []
    out: list[int] = []
    for when, window in list(t.cwnd.history)[-1000:]:
        out += [max(0, int((when - t.started) * 1000)), int(window)]
    return out


def _result(request: int, code: str, reason: str) -> SendResult:
    return SendResult(
        request=request, code=code, reason=reason[:500], size=0, digest=b"", stored_as=""
    )


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
