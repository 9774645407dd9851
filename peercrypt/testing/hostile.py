"""A hostile co-receiver of multicast sessions, for tests (docs/security.md).

:class:`CoReceiver` is what an admitted member writes to attack the other
receivers of a session it was invited to: it holds the network key and a
fresh identity, listens like a node's gateway (CURVE server with the
network's key), joins the sessions announced to it and so learns each
session's id and content key - and then uses them against an honest
receiver:

- :meth:`forged_frames`: chunks sealed with the real content key (AES-GCM
  accepts them) but with other bytes, signed with its own identity;
- :meth:`push_repairs`: frames pushed to a receiver's unicast repair port;
- :meth:`forged_datagrams`: the same chunks as datagrams for the group;
- :meth:`announce`: sessions of its own announced to a receiver (for
  instance with ids that share a prefix with the real one and the same file
  name), as a sender would;
- ``CoReceiver(key, verify_forever=True)``: towards the sender, it acks every
  chunk of each session it joins for ever (as a receiver verifying does)
  and never sends its verdict;
- ``CoReceiver(key, legacy=True)``: not hostile, only old - it refuses
  sealed details it does not know (``McFileDetails``) as a node of an
  older release does, and joins with the plain ``McDetails`` it gets next;
- ``CoReceiver(key, held_as=other)``: to a file's announce it answers
  ``McHeld`` (it holds the file, it claims) proven with the identity
  ``other`` - not the one it proved in the hello;
- ``CoReceiver(key, held_as=other, held_blind=True)``: the same, to an
  announce without a source tag too (plain ``McDetails``);
- ``CoReceiver(key, late_hello=True)``: not hostile, only slow - it holds
  its (genuine) answer to a hello until the sender asks again, then answers
  both, in order: the first answer is to a challenge no longer current;
- :meth:`CoReceiver.digest`: the whole-file hash of a session it joined, as
  the sender's statuses tell every receiver.

:class:`Squatter` is the same member at another target's address (that
node is down): it answers nothing - no hello, no join, so it proves
nothing there - and says what the test tells it to whoever connected.

Hostile unicast receivers live here too: :class:`FloodingReceiver` (floods
the sender's data connection), :class:`MismatchingReceiver` (claims to
hold every file, answers every Done with a mismatch),
:class:`WaitingReceiver` (takes one chunk, then tells the send to wait its
turn for ever) and :class:`HostNamingReceiver` (names any text as the host
of its data port).

Everything they do goes to 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
from nacl.signing import VerifyKey

from peercrypt.core import fragments
from peercrypt.crypto.chunk_signature import ChunkSigner
from peercrypt.crypto.handshake import (
    Initiator,
    Response,
    SessionSecrets,
    open_details,
    prove_hello,
    respond,
)
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.crypto.keywrap import ContentSealer, new_content_key, unwrap
from peercrypt.crypto.keywrap import wrap as wrap_key
from peercrypt.crypto.transfer import OpenError, TransferKeys
from peercrypt.testing.zmtp_flood import RawDataPeer, flood_until_closed
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Accept,
    Ack,
    ChunkHeader,
    Done,
    Failed,
    Hello,
    HelloReply,
    Offer,
    OfferDetails,
    Refuse,
    SealedHeader,
    Verified,
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
    McStatus,
)

LOCALHOST = "127.0.0.1"


def member_gateway(ctx: zmq.Context[Any], network_key: str) -> tuple[zmq.Socket[Any], int]:
    """A member's gateway as a peer meets it: a CURVE ROUTER with the
    network's server key on a free loopback port (no ZAP handler in ``ctx``:
    every client is admitted). The socket and its port."""
    server = network_server_keys(network_key)
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server = True
    router.curve_secretkey = server.z85_secret
    router.curve_publickey = server.z85_public
    return router, router.bind_to_random_port(f"tcp://{LOCALHOST}")


@dataclass
class Joined:
    """What the co-receiver learnt of one session."""

    announce: McAnnounce
    key: bytes = b""
    source: bytes = b""  # the file version's source tag, if its details carried one
    ready: threading.Event = field(default_factory=threading.Event)


class CoReceiver:
    """A hostile member's node: joins sessions, then forges for the others."""

    def __init__(
        self,
        network_key: str,
        verify_forever: bool = False,
        late_hello: bool = False,
        identity: KeyPair | None = None,
        legacy: bool = False,
        held_as: KeyPair | None = None,
        held_blind: bool = False,
    ) -> None:
        """``identity``: one to use (a node's, loaded from its data
        directory: the test then speaks as that node); a fresh one if None."""
        self.verify_forever = verify_forever
        self.late_hello = late_hello
        self.legacy = legacy
        self.held_as = held_as
        self.held_blind = held_blind
        self.held_claims = 0
        self.legacy_refusals = 0
        self._held: list[tuple[bytes, Hello]] = []  # hellos not answered yet (late_hello)
        self._acking: list[tuple[bytes, McAck]] = []  # (route, ack) sent every 0.5 s
        self.identity = identity or KeyPair.from_seed(os.urandom(32))
        self.signer = ChunkSigner(self.identity.seed)
        self.server_public = network_server_keys(network_key).z85_public
        self.ctx = zmq.Context()
        self.router, self.port = member_gateway(self.ctx, network_key)
        self.sink = self.ctx.socket(zmq.PULL)  # its own "repair port" (drained)
        self.sink.linger = 0
        self.repair_port = self.sink.bind_to_random_port(f"tcp://{LOCALHOST}")
        self.sessions: dict[bytes, Joined] = {}
        self.first = threading.Event()
        self.digests: dict[bytes, bytes] = {}  # sid -> the whole-file hash a status told
        self._digest = threading.Event()
        self._wraps: dict[tuple[bytes, int], SessionSecrets] = {}
        self._links: list[zmq.Socket[Any]] = []  # to nodes it publishes to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # -- as a receiver ------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.sink, zmq.POLLIN)
        next_ack = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(20))
            if self._acking and time.monotonic() >= next_ack:
                next_ack = time.monotonic() + 0.5
                for route, ack in self._acking:
                    self._reply(route, ack)
            if self.sink in events:
                while self.sink.poll(0):
                    self.sink.recv_multipart()
            if self.router in events:
                while self.router.poll(0):
                    route, payload = self.router.recv_multipart()[:2]
                    self._on_message(route, payload)

    def _reply(self, route: bytes, msg: codec.Message) -> None:
        self.router.send_multipart([route, codec.encode(msg)])

    def _on_message(self, route: bytes, payload: bytes) -> None:
        try:
            msg = codec.decode(payload)
        except codec.DecodeError:
            return
        if isinstance(msg, Hello):  # it proves its own key, honestly
            self._held.append((route, msg))
            if self.late_hello and len(self._held) == 1:
                return  # answered with the next one
            for held_route, hello in self._held:
                proof = prove_hello(self.identity, hello.challenge, "0")
                reply = HelloReply(node_id=self.identity.public, version="0", proof=proof)
                self._reply(held_route, reply)
            self._held.clear()
        elif isinstance(msg, McAnnounce):
            # It joins honestly, under its own identity (it is invited): the
            # sender's identity key is the X25519 form of the announced signer.
            sender = VerifyKey(msg.signer).to_curve25519_public_key().encode()
            source = b""
            if msg.details:  # sealed to the key it proved: it reads name and size
                plain = open_details(msg.sid, self.identity, sender, msg.eph_pub, msg.details)
                d = codec.decode(plain)
                if isinstance(d, McFileDetails) and self.legacy:
                    self.legacy_refusals += 1
                    self._reply(
                        route, McRefuse(sid=msg.sid, code="protocol", reason=LEGACY_REFUSAL)
                    )
                    return
                if not isinstance(d, McDetails | McFileDetails):
                    return
                source = d.source if isinstance(d, McFileDetails) else b""
                msg = dataclasses.replace(msg, name=d.name, size=d.size, details=b"")
            joined = self.sessions.setdefault(msg.sid, Joined(msg, source=source))
            if joined.key:
                return
            if self.held_as is not None and (source or self.held_blind):
                claim = respond(msg.sid, self.held_as, sender, msg.eph_pub)
                self.held_claims += 1
                eph, key, proof = claim.eph_pub, claim.static_pub, claim.proof
                held = McHeld(sid=msg.sid, eph_pub=eph, static_pub=key, proof=proof)
                self._reply(route, dataclasses.replace(held, attempt=msg.attempt))
                return
            answer = respond(msg.sid, self.identity, sender, msg.eph_pub)
            self._wraps[(msg.sid, msg.attempt)] = answer.secrets
            self._reply(
                route,
                McJoin(
                    sid=msg.sid,
                    eph_pub=answer.eph_pub,
                    static_pub=answer.static_pub,
                    proof=answer.proof,
                    repair_port=self.repair_port,
                    attempt=msg.attempt,
                    repair_key=os.urandom(32),
                ),
            )
        elif isinstance(msg, McStatus):
            if msg.digest and msg.sid in self.sessions:
                self.digests.setdefault(msg.sid, msg.digest)
                self._digest.set()
        elif isinstance(msg, McKey):
            joined_or_none = self.sessions.get(msg.sid)
            wrap_or_none = self._wraps.pop((msg.sid, msg.attempt), None)
            if joined_or_none is None or wrap_or_none is None or joined_or_none.key:
                return
            joined = joined_or_none
            joined.key = unwrap(wrap_or_none, msg.sid, msg.wrapped)
            if self.verify_forever:
                a = joined.announce
                total = max(1, -(-a.size // a.chunk_size))
                self._acking.append((route, McAck(sid=msg.sid, cumulative=total, written=total)))
                joined.ready.set()
                self.first.set()
                return
            # Acked (so the sender need not wait for it), then out of the
            # session: it keeps the content key.
            self._reply(route, McAck(sid=msg.sid, cumulative=0, written=0, naks=[]))
            self._reply(
                route,
                McDone(sid=msg.sid, ok=False, digest=b"", stored_as="", reason="leaving"),
            )
            joined.ready.set()
            self.first.set()

    def session(self, timeout: float = 15.0) -> Joined:
        """The first session it joined and got the key of."""
        if not self.first.wait(timeout):
            raise TimeoutError("no multicast session was joined")
        return next(j for j in self.sessions.values() if j.key)

    def digest(self, timeout: float = 15.0) -> tuple[bytes, bytes]:
        """(session id, whole-file hash) of the first session whose hash a
        status told it (a receiver verifies its copy against it)."""
        if not self._digest.wait(timeout):
            raise TimeoutError("no status carried a session's hash")
        return next(iter(self.digests.items()))

    # -- against the others ---------------------------------------------------------

    def forged_frames(self, joined: Joined, index: int) -> list[bytes]:
        """[McChunk header, sealed, signature] for chunk ``index``: sealed with
        the real content key (so AES-GCM opens it) over bytes of its own,
        signed with its own identity."""
        a = joined.announce
        total = max(1, -(-a.size // a.chunk_size))
        last = index == total - 1
        plain = b"\xee" * min(a.chunk_size, a.size - index * a.chunk_size)
        nonce, sealed = ContentSealer(a.sid, joined.key).seal_chunk(index, last, plain)
        signature = self.signer.sign(a.sid, index, last, nonce, sealed)
        header = codec.encode(McChunk(sid=a.sid, index=index, last=last, nonce=nonce))
        return [header, sealed, signature]

    def forged_datagrams(self, joined: Joined, index: int) -> list[bytes]:
        """The forged chunk ``index`` as datagrams for the session's group."""
        a = joined.announce
        header, sealed, signature = self.forged_frames(joined, index)
        chunk = codec.decode_as(header, McChunk)
        blob = (sealed, signature)
        size = fragments.blob_len(blob)
        header_key = fragments.header_key(joined.key)  # it has the content key
        out = []
        for offset, end in fragments.split(size, a.fragment):
            head = fragments.header(
                a.sid, index, chunk.last, chunk.nonce, size, offset, key=header_key
            )
            out.append(head + b"".join(bytes(v) for v in fragments.blob_slice(blob, offset, end)))
        return out

    def push_repairs(
        self, host: str, port: int, messages: list[list[bytes]], source: str = ""
    ) -> None:
        """Push multipart messages to a receiver's repair port (bounded wait);
        ``source``: the local address to connect from (another host on loopback)."""
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 1000
        push.sndtimeo = 1000
        try:
            push.connect(f"tcp://{source + ':0;' if source else ''}{host}:{port}")
            for frames in messages:
                try:
                    push.send_multipart(frames)
                except zmq.Again:
                    break
        finally:
            push.close()

    # -- as a sender ----------------------------------------------------------------

    def _dealer(self, host: str, port: int) -> zmq.Socket[Any]:
        """A link of its own identity to a node's public port."""
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.sndtimeo = 10_000  # a send never waits for ever (zmq.Again)
        dealer.curve_serverkey = self.server_public
        dealer.curve_publickey = self.identity.z85_public
        dealer.curve_secretkey = self.identity.z85_secret
        dealer.connect(f"tcp://{host}:{port}")
        return dealer

    def publish_to(self, host: str, port: int, to: bytes, pub_port: int) -> bytes:
        """Announce a session of its own to the node whose identity key is
        ``to``, published at ``pub_port`` (the caller's), and give it the
        content key once it joins: the node's SUB then connects there. The
        session's id (the topic the node subscribes to). The link stays
        open until :meth:`close`."""
        sid, wrap = os.urandom(16), Initiator(self.identity)
        details = wrap.seal_details(sid, to, codec.encode(McDetails(name="pub.bin", size=1 << 20)))
        dealer = self._dealer(host, port)
        self._links.append(dealer)
        announce = McAnnounce(
            sid=sid,
            details=details,
            chunk_size=64 * 1024,
            eph_pub=wrap.public,
            pub_host="",
            pub_port=pub_port,
            signer=self.signer.public,
        )
        dealer.send(codec.encode(announce))
        if not dealer.poll(10_000):
            raise TimeoutError("the node did not answer the announce")
        join = codec.decode(dealer.recv())
        assert isinstance(join, McJoin), join
        secrets = wrap.finish(sid, join.static_pub, join.eph_pub, join.proof)
        wrapped = wrap_key(secrets, sid, new_content_key())
        dealer.send(codec.encode(McKey(sid=sid, wrapped=wrapped, attempt=join.attempt)))
        return sid

    def announce(self, host: str, port: int, messages: list[McAnnounce]) -> list[Any]:
        """Announce sessions of its own to a node (as a sender would, signed
        by its own identity); the decoded answers that came within 2 s."""
        return self.ask(host, port, messages)

    def ask(self, host: str, port: int, messages: Sequence[codec.Message]) -> list[Any]:
        """Send messages to a node's public port over a new link of its own
        identity, as a sender would; the decoded answers that came within 2 s."""
        dealer = self._dealer(host, port)
        answers: list[Any] = []
        try:
            for msg in messages:
                dealer.send(codec.encode(msg))
            while len(answers) < len(messages) and dealer.poll(2000):
                answers.append(codec.decode(dealer.recv()))
        finally:
            dealer.close()
        return answers

    def own_announce(self, like: McAnnounce, sid: bytes, to: bytes) -> McAnnounce:
        """An announce of a session of its own that looks like ``like``, its
        name and size sealed to the receiver key ``to`` as a sender's are."""
        return dataclasses.replace(
            self.sealed_announce(to, sid, like.name, like.size, like.chunk_size),
            pub_port=like.pub_port or 1,
            group=like.group,
            group_port=like.group_port,
            fragment=like.fragment,
        )

    def sealed_announce(
        self, to: bytes, sid: bytes, name: str, size: int, chunk_size: int, source: bytes = b""
    ) -> McAnnounce:
        """An announce of a session of its own (PUB port 1), signed by its
        own identity, its name and size sealed to the receiver key ``to``
        (with ``source``: as McFileDetails, naming that file version)."""
        wrap = Initiator(self.identity)
        plain: codec.Message = McDetails(name=name, size=size)
        if source:
            plain = McFileDetails(name=name, size=size, source=source)
        details = wrap.seal_details(sid, to, codec.encode(plain))
        return McAnnounce(
            sid=sid,
            details=details,
            chunk_size=chunk_size,
            eph_pub=wrap.public,
            pub_host="",
            pub_port=1,
            signer=self.signer.public,
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for link in self._links:
            link.close(0)
        self.router.close(0)
        self.sink.close(0)
        self.ctx.term()


class Squatter:
    """A member (the network key, no identity proven) listening at a target's
    address: it answers nothing it is sent, and :meth:`say` sends a message
    to every connection that reached it (a sender's link to that target)."""

    def __init__(self, network_key: str) -> None:
        self.ctx = zmq.Context()
        self.router, self.port = member_gateway(self.ctx, network_key)
        self.heard: list[Any] = []  # what it was sent (decoded), unanswered
        self._routes: list[bytes] = []
        self._reached = threading.Event()
        self._lock = threading.Lock()  # (the socket belongs to its thread)
        self._outbox: list[codec.Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.router.poll(20):
                route, payload = self.router.recv_multipart()[:2]
                with contextlib.suppress(codec.DecodeError):
                    self.heard.append(codec.decode(payload))
                if route not in self._routes:
                    self._routes.append(route)
                self._reached.set()
            with self._lock:
                outbox, self._outbox = self._outbox, []
            for msg in outbox:
                for route in self._routes:
                    self.router.send_multipart([route, codec.encode(msg)])

    def say(self, msg: codec.Message, timeout: float = 15.0) -> None:
        """Send ``msg`` on every connection that reached it (waits for one)."""
        if not self._reached.wait(timeout):
            raise TimeoutError("no one connected to the squatted address")
        with self._lock:
            self._outbox.append(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.close(0)
        self.ctx.term()


def next_request(router: zmq.Socket[Any], identity: KeyPair) -> tuple[bytes, Any] | None:
    """The next message on a member's gateway ``router`` (one is waiting): a
    hello is answered, proving ``identity`` (None); anything else that
    decodes is returned with its route."""
    route, payload = router.recv_multipart()[:2]
    try:
        msg = codec.decode(payload)
    except codec.DecodeError:
        return None
    if not isinstance(msg, Hello):
        return route, msg
    proof = prove_hello(identity, msg.challenge, "0")
    reply = HelloReply(node_id=identity.public, version="0", proof=proof)
    router.send_multipart([route, codec.encode(reply)])
    return None


class _Receiver(abc.ABC):
    """A member's gateway that proves its own fresh identity (as a receiver
    must) and accepts every offer from the sender whose identity key is
    ``sender`` (:meth:`_accept` answers it), with a thread of its own for
    the data port the accepts name (:meth:`_data`). :attr:`offers` counts
    the offers accepted."""

    def __init__(self, network_key: str, sender: bytes) -> None:
        self.sender = sender
        self.offers = 0
        self.identity = KeyPair.generate()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.router, self.port = member_gateway(self.ctx, network_key)
        self.data_port = 0  # set by the subclass before _start()
        self.data_host = LOCALHOST  # what its accepts name as the data port's host
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._gateway, daemon=True)]

    def _start(self) -> None:
        self._threads.append(threading.Thread(target=self._data, daemon=True))
        for thread in self._threads:
            thread.start()

    def _gateway(self) -> None:
        while not self.stop.is_set():
            if not self.router.poll(50):
                continue
            request = next_request(self.router, self.identity)
            if request is None:
                continue
            route, msg = request
            if isinstance(msg, Offer):
                reply = self._accept(msg, respond(msg.tid, self.identity, self.sender, msg.eph_pub))
                self.router.send_multipart([route, codec.encode(reply)])
                self.offers += 1

    def _accept(self, offer: Offer, answer: Response) -> Accept:
        window, have, chunk_size = self._terms(offer, answer)
        return Accept(
            tid=offer.tid,
            eph_pub=answer.eph_pub,
            static_pub=answer.static_pub,
            proof=answer.proof,
            data_host=self.data_host,
            data_port=self.data_port,
            window=window,
            have=have,
            chunk_size=chunk_size,
        )

    @abc.abstractmethod
    def _terms(self, offer: Offer, answer: Response) -> tuple[int, list[int], int]:
        """The accept's credit, held ranges and chunk size (0: the offer's)."""

    @abc.abstractmethod
    def _data(self) -> None:
        """The data port's thread: until :attr:`stop`."""

    @abc.abstractmethod
    def _close_data(self) -> None:
        """Close the data port (its thread has ended)."""

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(15)
        self._close_data()
        self.router.close(0)
        self.ctx.term()


class FloodingReceiver(_Receiver):
    """A hostile unicast receiver (:class:`_Receiver`) naming a data port of
    its own; each data connection the sender makes there is flooded with
    one-byte messages (3 bytes on the wire, a 64-byte slot each in the
    sender's libzmq) in blocks of a MiB until the sender closes it or
    ``megabytes`` were sent. :attr:`flooded` holds, per connection, the MiB
    sent before the sender closed it (None: it did not). ``chunk_size``: the
    chunk its accepts choose (0: the offer's), any the codec lets through."""

    def __init__(
        self, network_key: str, sender: bytes, megabytes: int = 32, chunk_size: int = 0
    ) -> None:
        super().__init__(network_key, sender)
        self.megabytes, self.chunk_size = megabytes, chunk_size
        self.data = socket.create_server((LOCALHOST, 0))
        self.data.settimeout(0.05)
        self.data_port = self.data.getsockname()[1]
        self.flooded: list[int | None] = []
        self._start()

    def _terms(self, offer: Offer, answer: Response) -> tuple[int, list[int], int]:
        return 16, [], self.chunk_size

    def _data(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.data.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                sent = flood_until_closed(RawDataPeer.accepted(conn), self.megabytes)
            except OSError:
                sent = None
            self.flooded.append(sent)

    def _close_data(self) -> None:
        self.data.close()


class _DataRouter(_Receiver):
    """A hostile receiver (:class:`_Receiver`) whose data port is a ROUTER
    of its own, as a node's is; it keeps each accepted transfer's keys
    (:meth:`_keep_keys`) to open what comes and seal what it answers."""

    def __init__(self, network_key: str, sender: bytes) -> None:
        super().__init__(network_key, sender)
        self.data = self.ctx.socket(zmq.ROUTER)
        self.data_port = self.data.bind_to_random_port(f"tcp://{LOCALHOST}")
        self._keys: dict[bytes, TransferKeys] = {}
        self._lock = threading.Lock()

    def _keep_keys(self, offer: Offer, answer: Response) -> None:
        with self._lock:
            self._keys[offer.tid] = TransferKeys.for_receiver(offer.tid, answer.secrets)

    def _next(self) -> tuple[bytes, Any, bytes, TransferKeys] | None:
        """The next message of a transfer it accepted, within 50 ms: its
        route, header, last frame and the transfer's keys (None: none came,
        or one it drops)."""
        if not self.data.poll(50):
            return None
        frames = self.data.recv_multipart()
        if len(frames) != 3:
            return None
        route, head, payload = frames
        try:
            header = codec.decode(head)
        except codec.DecodeError:
            return None
        with self._lock:
            keys = self._keys.get(getattr(header, "tid", b""))
        return None if keys is None else (route, header, payload, keys)

    def _answer(self, route: bytes, tid: bytes, keys: TransferKeys, msg: codec.Message) -> None:
        nonce, sealed = keys.seal_message(codec.encode(msg))
        self.data.send_multipart([route, codec.encode(SealedHeader(tid=tid, nonce=nonce)), sealed])

    def _close_data(self) -> None:
        self.data.close(0)


class MismatchingReceiver(_DataRouter):
    """A hostile unicast receiver (:class:`_Receiver`) whose accepts claim
    to hold the whole file already (as a receiver that had delivered it
    does), and which answers every Done on its data port with
    ``Failed(hash-mismatch)`` (or ``code``), offer after offer. :attr:`dones` counts the
    Dones it answered. ``holds=False``: its accepts claim nothing held (the
    sender sends every chunk, acked by nobody; a one-chunk file's Done goes
    with its chunk)."""

    def __init__(
        self, network_key: str, sender: bytes, holds: bool = True, code: str = "hash-mismatch"
    ) -> None:
        super().__init__(network_key, sender)
        self.holds = holds
        self.code = code  # what its Failed says (any text the codec lets through)
        self.dones = 0
        self._start()

    def _terms(self, offer: Offer, answer: Response) -> tuple[int, list[int], int]:
        plain = open_details(offer.tid, self.identity, self.sender, offer.eph_pub, offer.details)
        details = codec.decode(plain)
        assert isinstance(details, OfferDetails)
        self._keep_keys(offer, answer)
        return 1, [0, -(-details.size // details.chunk_size)] if self.holds else [], 0

    def _data(self) -> None:
        while not self.stop.is_set():
            came = self._next()
            if came is None:
                continue
            route, header, payload, keys = came
            if not isinstance(header, SealedHeader):
                continue
            try:
                msg = codec.decode(keys.open_message(header.nonce, payload))
            except (OpenError, codec.DecodeError):
                continue
            if isinstance(msg, Done):
                self.dones += 1
                self._on_done(route, header.tid, keys, msg)

    def _on_done(self, route: bytes, tid: bytes, keys: TransferKeys, done: Done) -> None:
        failed = Failed(code=self.code, reason="the copy held changed")
        self._answer(route, tid, keys, failed)


class CheckingReceiver(MismatchingReceiver):
    """A unicast receiver (a :class:`MismatchingReceiver` that answers
    otherwise) whose verdict of a send is
    lost and which is still checking the file when the send is retried, as
    an honest one after an outage: it claims to hold every file; the first
    offer's Done goes unanswered (its answers lost with the link); the next
    ``refusals`` offers are refused ``verifying`` (its final check runs on);
    then the one after is accepted and its Done answered ``Verified``, as
    its table of delivered files answers. :attr:`dones` counts the Dones
    that came."""

    def __init__(self, network_key: str, sender: bytes, refusals: int = 2) -> None:
        self.refusals = refusals  # (set before the threads start)
        self.refused = 0
        self._silent: set[bytes] = set()  # the first offer's transfer
        super().__init__(network_key, sender)

    def _gateway(self) -> None:
        while not self.stop.is_set():
            if not self.router.poll(50):
                continue
            request = next_request(self.router, self.identity)
            if request is None or not isinstance(request[1], Offer):
                continue
            route, offer = request
            reply: codec.Message
            if self.offers and self.refused < self.refusals:
                self.refused += 1
                reason = (
                    "an earlier send of this file from you is in its final hash check; "
                    "its result decides"
                )
                reply = Refuse(tid=offer.tid, code="verifying", reason=reason)
            else:
                if not self.offers:
                    self._silent.add(offer.tid)
                answer = respond(offer.tid, self.identity, self.sender, offer.eph_pub)
                reply = self._accept(offer, answer)
                self.offers += 1
            self.router.send_multipart([route, codec.encode(reply)])

    def _on_done(self, route: bytes, tid: bytes, keys: TransferKeys, done: Done) -> None:
        if tid not in self._silent:
            self._answer(route, tid, keys, Verified(digest=done.digest, stored_as="checked.bin"))


class WaitingReceiver(_DataRouter):
    """A hostile unicast receiver (:class:`_Receiver`) that accepts with a
    credit of one chunk, acks that chunk with a credit of 0 (wait your turn,
    as an honest receiver whose buffer is taken says) and says 0 again every
    second for ever, never giving the turn an honest receiver gives within
    2 s. :attr:`chunks` counts the chunks that came, :attr:`waits` the acks
    of 0 it sent."""

    def __init__(self, network_key: str, sender: bytes) -> None:
        super().__init__(network_key, sender)
        self.chunks = 0
        self.waits = 0
        self._told: dict[bytes, tuple[bytes, int]] = {}  # tid: (route, cumulative)
        self._start()

    def _terms(self, offer: Offer, answer: Response) -> tuple[int, list[int], int]:
        self._keep_keys(offer, answer)
        return 1, [], 0

    def _wait_your_turn(self, tid: bytes, route: bytes, cumulative: int) -> None:
        with self._lock:
            keys = self._keys[tid]
        self._answer(route, tid, keys, Ack(cumulative=cumulative, sack=[], window=0))
        self.waits += 1

    def _data(self) -> None:
        again = time.monotonic() + 1.0
        while not self.stop.is_set():
            if time.monotonic() >= again:
                again = time.monotonic() + 1.0
                for tid, (route, cumulative) in list(self._told.items()):
                    self._wait_your_turn(tid, route, cumulative)
            came = self._next()
            if came is None or not isinstance(came[1], ChunkHeader):
                continue
            route, header = came[0], came[1]
            self.chunks += 1
            cumulative = max(header.index + 1, self._told.get(header.tid, (b"", 0))[1])
            self._told[header.tid] = (route, cumulative)
            self._wait_your_turn(header.tid, route, cumulative)


class HostNamingReceiver(_Receiver):
    """A hostile unicast receiver (:class:`_Receiver`) whose accepts name
    :attr:`data_host` (any text the codec lets through; change it between
    offers) as the host of its data port, which listens nowhere."""

    def __init__(self, network_key: str, sender: bytes, data_host: str) -> None:
        super().__init__(network_key, sender)
        self.data_host = data_host
        self.data_port = 9
        self._start()

    def _terms(self, offer: Offer, answer: Response) -> tuple[int, list[int], int]:
        return 16, [], 0

    def _data(self) -> None:
        self.stop.wait()

    def _close_data(self) -> None:
        pass


class FloodingGateway:
    """A hostile member's gateway: it proves its own fresh identity to a
    hello (as any member does) and answers anything else a node sends it on
    a link (an offer, a probe, gossip) with up to ``messages`` one-byte
    messages, as fast as libzmq takes them (never a full send queue: what
    the node does not read waits here). ``held``: only once :attr:`flood`
    is set (a member quiet for a while, then flooding)."""

    def __init__(self, network_key: str, messages: int = 5_000_000, held: bool = False) -> None:
        self.messages = messages
        self.flood = threading.Event()
        if not held:
            self.flood.set()
        self.identity = KeyPair.generate()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.router, self.port = member_gateway(self.ctx, network_key)
        self.router.sndhwm = 0
        self.sent = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        flooding: bytes | None = None
        while not self.stop.is_set():
            if flooding is not None and self.sent < self.messages and self.flood.is_set():
                for _ in range(10_000):
                    self.router.send(flooding, zmq.SNDMORE)
                    self.router.send(b"x")
                self.sent += 10_000
                if not self.router.poll(0):
                    continue
            elif not self.router.poll(50):
                continue
            request = next_request(self.router, self.identity)
            if request is not None:
                flooding = request[0]

    def close(self) -> None:
        self.stop.set()
        self._thread.join(15)
        self.router.close(0)
        self.ctx.term()
