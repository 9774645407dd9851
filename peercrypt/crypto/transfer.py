"""Per-transfer keys and AES-256-GCM sealing of chunks and control messages.

Key agreement: the offer/accept exchange (inside CURVE) is a mutual
authentication (:mod:`peercrypt.crypto.handshake`): ephemeral X25519 keys for
forward secrecy, both nodes' static identity keys mixed into the key schedule,
and a proof from the receiver that the sender checks before its first chunk.
It gives two independent 256-bit keys, one per direction; the ephemeral
secrets are dropped after derivation.

Nonces: 96 bits = a 32-bit lane number + a 64-bit counter, per key (so per
direction). The counter increments on every seal, including retransmissions
of the same chunk, so a nonce never repeats under a key even if the file
changes underneath a retransmission. Parallel lanes seal concurrently, each
with its own lane number (1, 2, ...; 0 is the actor's own), so their nonces
never meet either.

Routes: the sender's data connections carry ZeroMQ routing ids derived from
the sender-to-receiver key (:meth:`TransferKeys.route_id`, one per lane), and
the receiver takes a transfer's frames only from connections with those ids
(:meth:`TransferKeys.owns_route`): the transfer is pinned to its own
connections, which keep their ids across reconnects, and a frame of it from
any other connection (a replay, a captured frame raced from elsewhere) is
dropped before it costs a decryption. The ids are secret to everyone off the
path; one on the path sees them, but can do with them no more than it could
anyway (drop, delay): the frames still authenticate one by one.

A sender shares one connection per lane among its transfers to the same
receiver (actors/data_pipes.py); its routing id is random, not any one
transfer's. Each transfer attaches to it with a sealed ``Attach`` under its
own keys that names the connection's id: the receiver opens such a small
frame from a connection the transfer does not own yet, and takes the
connection for the transfer only when the Attach authenticates, is fresh
and names the very connection it came on (a copy raced from elsewhere
names another id). From then on the same pinning holds: chunks of the
transfer from any connection it did not attach are dropped unopened.

AAD: chunks bind (transfer id, chunk index, last-chunk flag); sealed control
messages bind (transfer id, "ctl"). A chunk moved to another index, another
transfer, or presented as (not) last fails to open; dropping the last chunk
leaves the transfer incomplete, never silently truncated.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercrypt.crypto.handshake import SessionSecrets

TAG_BYTES = 16
_NONCE = struct.Struct(">IQ")
_CHUNK_AAD = struct.Struct(">16sQ?")
ROUTE_LABEL = b"peercrypt data route v1"
ROUTE_LANES = 256  # lane numbers a route id may carry (as the replay window's MAX_LANES)


def _route_prefix(to_responder: bytes) -> bytes:
    # A ZeroMQ routing id must not start with a zero byte (those are the ROUTER's own).
    return b"r" + hmac.new(to_responder, ROUTE_LABEL, hashlib.sha256).digest()[:11]


class OpenError(Exception):
    """A sealed frame failed authentication (tampered, misplaced or forged)."""


class TransferKeys:
    """Sealing state of one side of one transfer."""

    __slots__ = ("_counter", "_keys", "_lane", "_recv", "_route", "_send", "tid")

    def __init__(self, tid: bytes, send_key: bytes, recv_key: bytes, lane: int = 0) -> None:
        self.tid = tid
        self._keys = (send_key, recv_key)
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._counter = 0
        self._lane = lane
        self._route = b""

    @classmethod
    def for_sender(cls, tid: bytes, secrets: SessionSecrets) -> TransferKeys:
        keys = cls(tid, send_key=secrets.to_responder, recv_key=secrets.to_initiator)
        keys._route = _route_prefix(secrets.to_responder)
        return keys

    @classmethod
    def for_receiver(cls, tid: bytes, secrets: SessionSecrets) -> TransferKeys:
        keys = cls(tid, send_key=secrets.to_initiator, recv_key=secrets.to_responder)
        keys._route = _route_prefix(secrets.to_responder)
        return keys

    def route_id(self, lane: int) -> bytes:
        """The routing id of the sender's data connection number ``lane``."""
        if not self._route or not 0 <= lane < ROUTE_LANES:
            raise ValueError("no route id for this lane")
        return self._route + lane.to_bytes(4, "big")

    def owns_route(self, route: bytes) -> bool:
        """Whether a frame from connection ``route`` may belong to this transfer."""
        return (
            len(route) == len(self._route) + 4
            and hmac.compare_digest(route[: len(self._route)], self._route)
            and int.from_bytes(route[-4:], "big") < ROUTE_LANES
        )

    def for_lane(self, lane: int) -> TransferKeys:
        """The same keys for a parallel lane (``lane`` >= 1): its own AEAD
        objects (for its own thread) and its own nonce space."""
        if not 1 <= lane < 2**32:
            raise ValueError("lane must be 1..2**32-1")
        keys = TransferKeys(self.tid, *self._keys, lane=lane)
        keys._route = self._route
        return keys

    def _next_nonce(self) -> bytes:
        self._counter += 1
        return _NONCE.pack(self._lane, self._counter)

    def seal_chunk(
        self, index: int, last: bool, plaintext: bytes | memoryview
    ) -> tuple[bytes, bytes]:
        """Return (nonce, ciphertext||tag) of one chunk."""
        nonce = self._next_nonce()
        aad = _CHUNK_AAD.pack(self.tid, index, last)
        return nonce, self._send.encrypt(nonce, plaintext, aad)

    def seal_chunk_into(
        self, index: int, last: bool, plaintext: bytes | memoryview, out: bytearray | memoryview
    ) -> bytes:
        """:meth:`seal_chunk` into ``out`` (exactly the plaintext's length plus
        :data:`TAG_BYTES`; the sender reuses its buffers, so no chunk
        allocates and zeroes one). Returns the nonce."""
        nonce = self._next_nonce()
        self._send.encrypt_into(nonce, plaintext, _CHUNK_AAD.pack(self.tid, index, last), out)
        return nonce

    def open_chunk(self, index: int, last: bool, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        """Authenticate and decrypt one chunk. Raises OpenError."""
        out = bytearray(max(0, len(sealed) - TAG_BYTES))
        self.open_chunk_into(index, last, nonce, sealed, out)
        return bytes(out)

    def open_chunk_into(
        self,
        index: int,
        last: bool,
        nonce: bytes,
        sealed: bytes | memoryview,
        out: bytearray | memoryview,
    ) -> None:
        """:meth:`open_chunk` into ``out`` (exactly the plaintext's length;
        the receiver reuses its buffers, so no chunk allocates and zeroes
        one). Raises OpenError, and then what ``out`` holds is not
        authenticated: it must not be used."""
        try:
            self._recv.decrypt_into(nonce, sealed, _CHUNK_AAD.pack(self.tid, index, last), out)
        except (InvalidTag, ValueError):
            raise OpenError("chunk failed authentication") from None

    def seal_message(self, payload: bytes) -> tuple[bytes, bytes]:
        nonce = self._next_nonce()
        return nonce, self._send.encrypt(nonce, payload, self.tid + b"ctl")

    def open_message(self, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        try:
            return self._recv.decrypt(nonce, sealed, self.tid + b"ctl")
        except (InvalidTag, ValueError):
            raise OpenError("control message failed authentication") from None
