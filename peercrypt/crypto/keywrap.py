"""Multicast keys: a random content key per session, wrapped per receiver.

The sender seals every chunk once with the session's content key
(AES-256-GCM; nonce = 32-bit zero lane + 64-bit counter, never repeating
under one key; AAD = session id, chunk index, last flag). Each receiver that
joins gets the content key wrapped under a key-encryption key from the same
mutual authentication as a unicast transfer (:mod:`peercrypt.crypto.
handshake`, context = session id): the receiver proves its identity in its
join, the sender checks that proof and whom it trusts before it wraps, and
only the holder of that identity's secret can unwrap. Whoever subscribes to
the PUB socket without a wrapped key sees only ciphertext. Ephemeral secrets
are used once and dropped.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercrypt.crypto.handshake import SessionSecrets
from peercrypt.crypto.transfer import OpenError

KEY_BYTES = 32
_INFO = b"peercrypt multicast key wrap v2"
_NONCE = struct.Struct(">IQ")
_CHUNK_AAD = struct.Struct(">16sQ?")


def wrap(secrets: SessionSecrets, sid: bytes, content_key: bytes) -> bytes:
    """Sender side: nonce || the content key sealed for the receiver that
    proved itself in the exchange that made ``secrets``."""
    nonce = os.urandom(12)
    return nonce + AESGCM(secrets.to_responder).encrypt(nonce, content_key, _INFO + sid)


def unwrap(secrets: SessionSecrets, sid: bytes, wrapped: bytes) -> bytes:
    """Receiver side. Raises OpenError (tampered, or sealed for someone else)."""
    try:
        key = AESGCM(secrets.to_responder).decrypt(wrapped[:12], wrapped[12:], _INFO + sid)
    except (InvalidTag, ValueError):
        raise OpenError("wrapped key failed authentication") from None
    if len(key) != KEY_BYTES:
        raise OpenError("wrapped key has the wrong length")
    return key


def new_content_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class ContentSealer:
    """Seal (sender) or open (receivers) a session's chunks."""

    __slots__ = ("_aead", "_counter", "sid")

    def __init__(self, sid: bytes, key: bytes) -> None:
        self.sid = sid
        self._aead = AESGCM(key)
        self._counter = 0

    def seal_chunk(self, index: int, last: bool, plaintext: bytes) -> tuple[bytes, bytes]:
        self._counter += 1
        nonce = _NONCE.pack(0, self._counter)
        return nonce, self._aead.encrypt(nonce, plaintext, _CHUNK_AAD.pack(self.sid, index, last))

    def open_chunk(self, index: int, last: bool, nonce: bytes, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, _CHUNK_AAD.pack(self.sid, index, last))
        except (InvalidTag, ValueError):
            raise OpenError("chunk failed authentication") from None

    def open_chunk_into(
        self,
        index: int,
        last: bool,
        nonce: bytes,
        sealed: bytes | memoryview,
        out: bytearray | memoryview,
    ) -> None:
        """:meth:`open_chunk` into ``out`` (exactly the plaintext's length):
        a receiver reuses its buffers, so no chunk maps, zeroes and unmaps a
        fresh MiB. Raises OpenError, and then what ``out`` holds is not
        authenticated: it must not be used."""
        try:
            self._aead.decrypt_into(nonce, sealed, _CHUNK_AAD.pack(self.sid, index, last), out)
        except (InvalidTag, ValueError):
            raise OpenError("chunk failed authentication") from None
