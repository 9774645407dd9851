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

Progress goes to the requester every 0.1 s. Memory per transfer is the
credit window (chunks queued in ZeroMQ), never the file size.
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
from typing import Any

import blake3
import zmq
from zmq.utils.monitor import recv_monitor_message

from peercrypt.core.bitmap import pairs
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
    Offer,
    Progress,
    Refuse,
    SealedHeader,
    SendRequest,
    SendResult,
    Verified,
)

log = logging.getLogger("peercrypt.sender")

PROGRESS_INTERVAL = 0.1
DONE_RETRIES = 5
# A peer that refuses this many connection attempts in a row (at least a
# second apart from the first) is reported unreachable before the timeout.
REFUSALS_UNREACHABLE = 5
MONITOR_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass
class Outgoing:
    request: SendRequest
    requester: str
    tid: bytes
    fd: int
    size: int
    mtime_ns: int
    total: int
    eph: Ephemeral
    ctl: zmq.Socket[Any]
    monitor: zmq.Socket[Any]
    started: float
    deadline: Timer | None = None
    keys: TransferKeys | None = None
    data: zmq.Socket[Any] | None = None
    window: SendWindow | None = None
    hasher: Any = field(default_factory=blake3.blake3)
    hashed: int = 0
    digest: bytes = b""
    connected: bool = False
    handshaken: bool = False
    refusals: int = 0
    done_sent: int = 0
    last_progress: float = 0.0
    retransmit_timer: Timer | None = None

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
        if isinstance(msg, SendRequest):
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
        tid = os.urandom(16)
        ctl = self.socket(zmq.DEALER)
        ctl.curve_serverkey = self.settings.server_keys.z85_public
        ctl.curve_publickey = self.settings.identity.z85_public
        ctl.curve_secretkey = self.settings.identity.z85_secret
        ctl.maxmsgsize = 64 * 1024 + 1024
        ctl.reconnect_ivl = 100
        monitor_address = f"inproc://pc-{self.env.node_uid}/monitor/{tid.hex()}"
        ctl.monitor(monitor_address, MONITOR_EVENTS)
        monitor = self.socket(zmq.PAIR)
        monitor.connect(monitor_address)
        t = Outgoing(
            request=req,
            requester="control",
            tid=tid,
            fd=fd,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            total=-(-st.st_size // req.chunk_size),
            eph=Ephemeral(),
            ctl=ctl,
            monitor=monitor,
            started=time.monotonic(),
        )
        self.transfers[tid] = t
        self.watch(ctl, functools.partial(self._on_control, t))
        self.watch(monitor, functools.partial(self._on_monitor, t))
        try:
            ctl.connect(f"tcp://{_url_host(req.host)}:{req.port}")
        except zmq.ZMQError as exc:
            return self._end(t, "local", f"invalid address {req.host}:{req.port}: {exc}")
        offer = Offer(
            tid=tid,
            name=os.path.basename(req.path),
            size=t.size,
            chunk_size=req.chunk_size,
            eph_pub=t.eph.public,
            hash_alg="blake3",
        )
        ctl.send(codec.encode(offer))
        t.deadline = self.call_later(req.timeout, lambda: self._offer_timeout(t))
        self.count("offers")

    # -- control plane replies ----------------------------------------------------------

    def _on_monitor(self, t: Outgoing, _sock: object = None) -> None:
        while t.tid in self.transfers and not t.monitor.closed:
            try:
                event = recv_monitor_message(t.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_CONNECTED:
                t.connected = True
            elif event == zmq.EVENT_CONNECT_RETRIED and not t.connected:
                t.refusals += 1
                if t.refusals >= REFUSALS_UNREACHABLE and time.monotonic() - t.started > 1.0:
                    self._end(t, "unreachable", f"cannot connect to {t.peer} (connection refused)")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                t.handshaken = True
            elif t.window is None and event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._end(
                    t,
                    "not-admitted",
                    f"{t.peer} did not admit this node (not on its allow-list)",
                )
            elif (
                t.window is None
                and not t.handshaken
                and event
                in (
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_DISCONNECTED,
                )
            ):
                self._end(
                    t,
                    "handshake",
                    f"handshake with {t.peer} failed: wrong network key, or not a PeerCrypt node",
                )

    def _offer_timeout(self, t: Outgoing) -> None:
        if t.tid not in self.transfers or t.window is not None:
            return
        if not t.connected:
            self._end(t, "unreachable", f"cannot connect to {t.peer} (no node listening there?)")
        elif not t.handshaken:
            self._end(t, "handshake", f"handshake with {t.peer} did not complete")
        else:
            self._end(t, "timeout", f"{t.peer} did not answer the offer")

    def _on_control(self, t: Outgoing, _sock: object = None) -> None:
        while t.tid in self.transfers and t.window is None:
            try:
                data = t.ctl.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = codec.decode(data)
            except codec.DecodeError as exc:
                self.count(f"control-{exc.kind}")
                continue
            if isinstance(msg, Accept) and msg.tid == t.tid and t.window is None:
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
        t.window = SendWindow(t.total)
        t.window.on_accept(have, accept.window)
        data = t.data = self.socket(zmq.DEALER)
        data.sndhwm = 0  # credit bounds what is queued
        data.rcvhwm = 0
        data.maxmsgsize = 64 * 1024
        host = accept.data_host or t.request.host
        data.connect(f"tcp://{_url_host(host)}:{accept.data_port}")
        self.watch(data, functools.partial(self._on_data, t))
        # The control socket's job is done; close it (and its monitor).
        t.ctl.disable_monitor()
        self.close_socket(t.ctl)
        self.close_socket(t.monitor)
        t.last_progress = self.now()
        self._pump(t)

    # -- data plane --------------------------------------------------------------------

    def _read(self, t: Outgoing, index: int) -> bytes:
        chunk_size = t.request.chunk_size
        data = os.pread(t.fd, chunk_size, index * chunk_size)
        expected = min(chunk_size, t.size - index * chunk_size)
        if len(data) != expected:
            raise OSError(f"file shrank while sending (chunk {index})")
        return data

    def _pump(self, t: Outgoing) -> None:
        assert t.window is not None and t.keys is not None and t.data is not None
        now = self.now()
        try:
            for index in t.window.next_to_send(now):
                while t.hashed < index:  # chunks the receiver already held (resume)
                    t.hasher.update(self._read(t, t.hashed))
                    t.hashed += 1
                chunk = self._read(t, index)
                if index == t.hashed:
                    t.hasher.update(chunk)
                    t.hashed += 1
                last = index == t.total - 1
                nonce, sealed = t.keys.seal_chunk(index, last, chunk)
                header = codec.encode(ChunkHeader(tid=t.tid, index=index, last=last, nonce=nonce))
                t.data.send_multipart([header, sealed], copy=False)
        except OSError as exc:
            return self._end(t, "local", f"reading {t.request.path} failed: {exc}")
        if t.window.done:
            self._send_done(t)
        else:
            self._arm_retransmit(t)

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
        t.window.on_timer(self.now())
        self._pump(t)

    def _send_done(self, t: Outgoing) -> None:
        assert t.keys is not None and t.data is not None
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

    def _on_data(self, t: Outgoing, _sock: object = None) -> None:
        assert t.keys is not None and t.data is not None and t.window is not None
        progressed = False
        while t.tid in self.transfers:
            try:
                frames = t.data.recv_multipart(zmq.NOBLOCK)
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
                if t.window.on_ack(msg.cumulative, sack, msg.window, self.now()):
                    progressed = True
            elif isinstance(msg, Verified):
                if hmac.compare_digest(msg.digest, t.digest) and t.done_sent:
                    return self._end(t, "ok", "", stored_as=msg.stored_as)
                return self._end(t, "verify", "the receiver stored a different hash")
            elif isinstance(msg, Failed):
                return self._end(t, msg.code, f"{t.peer} failed the transfer: {msg.reason}")
        if progressed:
            t.last_progress = self.now()
        if t.tid in self.transfers and not t.done_sent:
            self._pump(t)

    # -- progress and the end --------------------------------------------------------

    def _progress(self) -> None:
        for t in self.transfers.values():
            if t.window is not None:
                acked = min(t.size, t.window.acked.count * t.request.chunk_size)
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
        for sock in (t.ctl, t.monitor, t.data):
            if sock is not None and not sock.closed:
                if sock is t.ctl and t.window is None:
                    sock.disable_monitor()
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
            ),
        )


def _result(request: int, code: str, reason: str) -> SendResult:
    return SendResult(
        request=request, code=code, reason=reason[:500], size=0, digest=b"", stored_as=""
    )


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
