"""Multicast keys: a random content key per session, wrapped per receiver.

The sender seals every chunk once with the session's content key
(AES-256-GCM; nonce = 32-bit zero lane + 64-bit counter, never repeating
under one key; AAD = session id, chunk index, last flag). Each receiver that
joins gets the content key wrapped under a key-encryption key derived like
unicast transfer keys: an ephemeral X25519 exchange (both public halves
travel inside CURVE), HKDF-SHA256 salted with the session id and bound to
both public keys. Whoever subscribes to the PUB socket without a wrapped key
sees only ciphertext. Ephemeral secrets are used once and dropped.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from peercrypt.crypto.transfer import OpenError

KEY_BYTES = 32
_INFO = b"peercrypt multicast key wrap v1"
_NONCE = struct.Struct(">IQ")
_CHUNK_AAD = struct.Struct(">16sQ?")


class WrapKey:
    """One side's ephemeral X25519 key for wrapping one content key once."""

    def __init__(self) -> None:
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def _kek(self, sid: bytes, peer_public: bytes, *, sender: bool) -> AESGCM:
        if self._private is None:
            raise RuntimeError("ephemeral key already used")
        private, self._private = self._private, None
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        if shared == bytes(32):
            raise ValueError("degenerate peer key")
        pubs = self.public + peer_public if sender else peer_public + self.public
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=sid, info=_INFO + pubs).derive(shared)
        return AESGCM(kek)

    def wrap(self, sid: bytes, receiver_public: bytes, content_key: bytes) -> bytes:
        """Sender side: nonce || sealed content key. Raises ValueError for a bad peer key."""
        nonce = os.urandom(12)
        return nonce + self._kek(sid, receiver_public, sender=True).encrypt(nonce, content_key, sid)

    def unwrap(self, sid: bytes, sender_public: bytes, wrapped: bytes) -> bytes:
        """Receiver side. Raises OpenError (tampered) or ValueError (bad key)."""
        kek = self._kek(sid, sender_public, sender=False)
        try:
            key = kek.decrypt(wrapped[:12], wrapped[12:], sid)
        except (InvalidTag, ValueError):
            raise OpenError("wrapped key failed authentication") from None
        if len(key) != KEY_BYTES:
            raise OpenError("wrapped key has the wrong length")
        return key


def new_content_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class ContentSealer:
    """Seal (sender) or open (receivers) a session's chunks."""

    __slots__ = ("_aead", "_counter", "seals", "sid")

    def __init__(self, sid: bytes, key: bytes) -> None:
        self.sid = sid
        self._aead = AESGCM(key)
        self._counter = 0
        self.seals = 0

    def seal_chunk(self, index: int, last: bool, plaintext: bytes) -> tuple[bytes, bytes]:
        self._counter += 1
        self.seals += 1
        nonce = _NONCE.pack(0, self._counter)
        return nonce, self._aead.encrypt(nonce, plaintext, _CHUNK_AAD.pack(self.sid, index, last))

    def open_chunk(self, index: int, last: bool, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, _CHUNK_AAD.pack(self.sid, index, last))
        except (InvalidTag, ValueError):
            raise OpenError("chunk failed authentication") from None
