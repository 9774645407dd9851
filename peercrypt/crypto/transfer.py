"""Per-transfer keys and AES-256-GCM sealing of chunks and control messages.

Key agreement: each side makes an ephemeral X25519 key for one transfer and
the offer/accept exchange (inside CURVE) carries the public halves. HKDF-SHA256
over the shared secret, salted with the transfer id and bound to both public
keys, gives two independent 256-bit keys, one per direction. Ephemeral keys
are dropped after derivation: forward secrecy.

Nonces: 96 bits = a 32-bit lane number + a 64-bit counter, per key (so per
direction). The counter increments on every seal, including retransmissions
of the same chunk, so a nonce never repeats under a key even if the file
changes underneath a retransmission. Parallel lanes seal concurrently, each
with its own lane number (1, 2, ...; 0 is the actor's own), so their nonces
never meet either.

AAD: chunks bind (transfer id, chunk index, last-chunk flag); sealed control
messages bind (transfer id, "ctl"). A chunk moved to another index, another
transfer, or presented as (not) last fails to open; dropping the last chunk
leaves the transfer incomplete, never silently truncated.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TAG_BYTES = 16
_INFO = b"peercrypt transfer v1"
_NONCE = struct.Struct(">IQ")
_CHUNK_AAD = struct.Struct(">16sQ?")


class OpenError(Exception):
    """A sealed frame failed authentication (tampered, misplaced or forged)."""


class Ephemeral:
    """One side's ephemeral key for one transfer."""

    def __init__(self) -> None:
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def agree(self, tid: bytes, peer_public: bytes, *, initiator: bool) -> TransferKeys:
        """Derive the transfer's keys; the ephemeral secret is forgotten.
        Raises ValueError for an invalid peer key."""
        if self._private is None:
            raise RuntimeError("ephemeral key already used")
        private, self._private = self._private, None
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        if shared == bytes(32):
            raise ValueError("degenerate peer key")
        sender_pub, receiver_pub = (
            (self.public, peer_public) if initiator else (peer_public, self.public)
        )
        okm = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=tid, info=_INFO + sender_pub + receiver_pub
        ).derive(shared)
        to_receiver, to_sender = okm[:32], okm[32:]
        if initiator:
            return TransferKeys(tid, send_key=to_receiver, recv_key=to_sender)
        return TransferKeys(tid, send_key=to_sender, recv_key=to_receiver)


class TransferKeys:
    """Sealing state of one side of one transfer."""

    __slots__ = ("_counter", "_keys", "_lane", "_recv", "_send", "tid")

    def __init__(self, tid: bytes, send_key: bytes, recv_key: bytes, lane: int = 0) -> None:
        self.tid = tid
        self._keys = (send_key, recv_key)
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._counter = 0
        self._lane = lane

    def for_lane(self, lane: int) -> TransferKeys:
        """The same keys for a parallel lane (``lane`` >= 1): its own AEAD
        objects (for its own thread) and its own nonce space."""
        if not 1 <= lane < 2**32:
            raise ValueError("lane must be 1..2**32-1")
        return TransferKeys(self.tid, *self._keys, lane=lane)

    def _next_nonce(self) -> bytes:
        self._counter += 1
        return _NONCE.pack(self._lane, self._counter)

    @property
    def seals(self) -> int:
        """How many seals this side made (each with a fresh nonce)."""
        return self._counter

    def seal_chunk(
        self, index: int, last: bool, plaintext: bytes | memoryview
    ) -> tuple[bytes, bytes]:
        """Return (nonce, ciphertext||tag) of one chunk."""
        nonce = self._next_nonce()
        aad = _CHUNK_AAD.pack(self.tid, index, last)
        return nonce, self._send.encrypt(nonce, plaintext, aad)

    def open_chunk(self, index: int, last: bool, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        """Authenticate and decrypt one chunk. Raises OpenError."""
        try:
            return self._recv.decrypt(nonce, sealed, _CHUNK_AAD.pack(self.tid, index, last))
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
