"""A hostile unicast sender, for tests and the soak script (docs/security.md).

:class:`HostileSender` is what an admitted member writes against a receiver:
it holds the network key and a fresh identity (a new one per instance, so
any number of them), and speaks the unicast protocol by hand, so it can do
what a real sender never does:

- offer anything the codec lets through (odd names, sparse sizes, many
  offers at once) and keep the slots (:meth:`HostileSender.offer`);
- send chunks beyond the credit, replay captured frames, send a ``Done``
  with a hash of its choice (:class:`HostileTransfer`);
- offer a folder (``tree=``) and stream a manifest of its own making
  (:meth:`HostileTransfer.send_stream`; peercrypt/core/tree.py).

Everything goes to the host and ports given (tests use 127.0.0.1); every
wait has a timeout.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import blake3
import zmq

from peercrypt.crypto.handshake import HelloChallenge, Initiator, SessionSecrets
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.crypto.transfer import OpenError, TransferKeys
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
    SealedHeader,
    Verified,
)

WAIT = 10.0


@dataclass
class Refused:
    """The receiver's answer when it did not accept (Refuse or ErrorReply)."""

    answer: codec.Message


class HostileTransfer:
    """An accepted transfer whose sender ignores the protocol at will."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        data_url: str,
        offer: Offer,
        details: OfferDetails,
        keys: TransferKeys,
    ) -> None:
        self.offer, self.keys, self.data_url = details, keys, data_url
        self.tid = offer.tid
        self.total = max(1, -(-details.size // details.chunk_size))
        self.data = self.connect(ctx, lane=0)
        self._unread: list[codec.Message] = []  # came with one wait_for returned
        # The Accept, and the key exchange's secrets (for its host tag).
        self.accept: Accept | None = None
        self.secrets: SessionSecrets | None = None

    def connect(self, ctx: zmq.Context[Any], lane: int | None = None) -> zmq.Socket[Any]:
        """A new data connection to the receiver: with ``lane``, one of the
        transfer's own (its routing id derived from the keys, as a real
        sender's); without, anyone else's (another routing id)."""
        sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndtimeo = int(WAIT * 1000)
        if lane is not None:
            sock.routing_id = self.keys.route_id(lane)
        sock.connect(self.data_url)
        return sock

    def chunk_length(self, index: int) -> int:
        return min(self.offer.chunk_size, self.offer.size - index * self.offer.chunk_size)

    def chunk_frames(self, index: int, data: bytes) -> list[bytes]:
        """[header, sealed] of chunk ``index`` carrying ``data`` (sealed with
        the transfer's real key, so it authenticates)."""
        last = index == self.total - 1
        nonce, sealed = self.keys.seal_chunk(index, last, data)
        header = codec.encode(ChunkHeader(tid=self.tid, index=index, last=last, nonce=nonce))
        return [header, sealed]

    def send_frames(self, frames: list[bytes]) -> None:
        self.data.send_multipart(frames)

    def send_chunk(self, index: int, data: bytes) -> list[bytes]:
        """Send chunk ``index``; the frames sent (to replay later)."""
        frames = self.chunk_frames(index, data)
        self.send_frames(frames)
        return frames

    def send_sealed(self, msg: codec.Message) -> None:
        nonce, sealed = self.keys.seal_message(codec.encode(msg))
        self.send_frames([codec.encode(SealedHeader(tid=self.tid, nonce=nonce)), sealed])

    def send_stream(self, data: bytes, timeout: float = WAIT) -> codec.Message:
        """Every chunk of ``data`` (the offered size; within the credit, so
        keep it to a window of chunks), then Done with its true hash (again
        every 0.2 s, as a sender does, until the chunks are written); the
        receiver's Verified or Failed."""
        assert len(data) == self.offer.size
        size = self.offer.chunk_size
        for index in range(self.total):
            self.send_chunk(index, data[index * size : (index + 1) * size])
        return self.done_until(blake3.blake3(data).digest(), (Verified, Failed), timeout)

    def done_until(
        self, digest: bytes, kinds: tuple[type[codec.Message], ...], timeout: float = WAIT
    ) -> codec.Message:
        """Send Done with ``digest`` every 0.2 s (a sender's probes) until
        the receiver answers with one of ``kinds``; that answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send_done(digest)
            for msg in self.replies(0.2):
                if isinstance(msg, kinds):
                    return msg
        names = " or ".join(k.TYPE for k in kinds)
        raise TimeoutError(f"no {names} from the receiver within {timeout} s")

    def send_done(self, digest: bytes) -> None:
        self.send_sealed(Done(digest=digest, chunks=self.total))

    def abandon(self) -> None:
        self.send_sealed(Failed(code="aborted", reason="hostile sender leaves"))

    def replies(self, timeout: float = 0.0) -> list[codec.Message]:
        """The sealed messages the receiver sent so far (waiting up to
        ``timeout`` for the first); frames that do not open are skipped."""
        out, self._unread = self._unread, []
        wait_ms = 0 if out else int(timeout * 1000)
        while self.data.poll(wait_ms):
            wait_ms = 0
            frames = self.data.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                header = codec.decode_as(frames[0], SealedHeader)
                out.append(codec.decode(self.keys.open_message(header.nonce, frames[1])))
            except (codec.DecodeError, OpenError):  # unreadable: skipped
                continue
        return out

    def wait_for(self, cls: type[codec.M], timeout: float = WAIT) -> codec.M:
        """The first sealed reply of type ``cls``; TimeoutError if none came."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.replies(min(left, 0.2))
            for n, msg in enumerate(got):
                if isinstance(msg, cls):
                    self._unread = got[n + 1 :]  # for the next call, in order
                    return msg
        raise TimeoutError(f"no {cls.TYPE} from the receiver within {timeout} s")

    def acked(self, cumulative: int, timeout: float = WAIT) -> Ack:
        """The first Ack that acknowledges every chunk below ``cumulative``
        (earlier ones are skipped: the receiver also acks while chunks wait
        for its writer, with what was written so far)."""
        deadline = time.monotonic() + timeout
        while True:
            ack = self.wait_for(Ack, max(0.0, deadline - time.monotonic()))
            if ack.cumulative >= cumulative:
                return ack

    def close(self) -> None:
        self.data.close(0)


class HostileSender:
    """An admitted member with a fresh identity, offering to one node."""

    def __init__(
        self,
        network_key: str | None,
        host: str,
        port: int,
        source: str = "",
        identity: KeyPair | None = None,
    ) -> None:
        """``source``: the local address to connect from (e.g. 127.0.0.2, to
        be another host on loopback); ``identity``: the member's (a fresh one
        by default; an earlier member's to be that member again)."""
        self.identity = identity or KeyPair.from_seed(os.urandom(32))
        self.host, self.port, self.source = host, port, source
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.linger = 0
        self.control.sndtimeo = int(WAIT * 1000)
        self.control.curve_serverkey = network_server_keys(network_key).z85_public
        self.control.curve_publickey = self.identity.z85_public
        self.control.curve_secretkey = self.identity.z85_secret
        self.control.connect(self.url(host, port))
        self.transfers: list[HostileTransfer] = []
        self.receiver_key = b""

    def _ask(self, msg: codec.Message, timeout: float) -> codec.Message:
        self.control.send(codec.encode(msg))
        if not self.control.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer to {msg.TYPE} within {timeout} s")
        return codec.decode(self.control.recv())

    def hello(self, timeout: float = WAIT) -> bytes:
        """The receiver's identity key, proven by a hello (what a real
        sender's pre-send check learns); offers are sealed to it (or to the
        key its proof vouches for: a receiver attached to the node)."""
        if not self.receiver_key:
            challenge = HelloChallenge()
            reply = self._ask(Hello(challenge=challenge.public), timeout)
            assert isinstance(reply, HelloReply), reply
            challenge.verify(reply.node_id, reply.version, reply.proof, reply.offer_key)
            self.receiver_key = reply.offer_key or reply.node_id
        return self.receiver_key

    def url(self, host: str, port: int) -> str:
        return f"tcp://{self.source + ':0;' if self.source else ''}{host}:{port}"

    def offer(
        self,
        name: str,
        size: int,
        chunk_size: int,
        tid: bytes | None = None,
        timeout: float = WAIT,
        source: bytes | None = None,
        tree: int = 0,
        files: int = 0,
        min_chunk: int = 0,
        mode: str = "",
    ) -> HostileTransfer | Refused:
        """Offer a file (or a folder whose manifest is the first ``tree``
        bytes); the accepted transfer or the refusal. ``source``: the offer's
        source tag (random by default: a file never offered before);
        ``min_chunk``: the smallest chunk the receiver may choose (0:
        ``chunk_size`` only; the transfer then cuts the accept's choice);
        ``mode``: the transfer mode it claims (the receiver's statistics)."""
        key = self.hello(timeout)
        eph = Initiator(self.identity)
        details = OfferDetails(
            name=name,
            size=size,
            chunk_size=chunk_size,
            min_chunk=min_chunk,
            hash_alg="blake3",
            mode=mode,
            source=source or os.urandom(32),
            tree=tree,
            files=files,
        )
        tid = tid or os.urandom(16)
        sealed = eph.seal_details(tid, key, codec.encode(details))
        offer = Offer(tid=tid, eph_pub=eph.public, details=sealed)
        self.control.send(codec.encode(offer))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.control.poll(int(left * 1000)):
                break
            answer = codec.decode(self.control.recv())
            if getattr(answer, "tid", offer.tid) != offer.tid:
                continue  # the answer to an earlier offer
            if not isinstance(answer, Accept):
                return Refused(answer)
            # It checks the receiver's proof like a real sender (it wants the keys).
            secrets = eph.finish(offer.tid, answer.static_pub, answer.eph_pub, answer.proof)
            keys = TransferKeys.for_sender(offer.tid, secrets)
            host = answer.data_host or self.host
            url = self.url(host, answer.data_port)
            # Cut as the receiver chose (its Accept), as a real sender does.
            cut = dataclasses.replace(details, chunk_size=answer.chunk_size or details.chunk_size)
            transfer = HostileTransfer(self.ctx, url, offer, cut, keys)
            transfer.accept, transfer.secrets = answer, secrets
            self.transfers.append(transfer)
            return transfer
        raise TimeoutError(f"no answer to the offer within {timeout} s")

    def close(self) -> None:
        for t in self.transfers:
            t.close()
        self.control.close(0)
        # Every socket of the context, also those a test made with
        # HostileTransfer.connect and did not close (an assert failed
        # first): term() alone would wait for them forever.
        self.ctx.destroy(linger=0)

    def __enter__(self) -> HostileSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
