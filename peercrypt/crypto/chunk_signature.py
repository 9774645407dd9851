"""Multicast content authenticated to each receiver: the sender signs every sealed chunk.

Every receiver of a multicast session holds the content key (that is what
lets it open the chunks), so AES-GCM alone cannot tell the sender's chunks
from chunks a co-receiver sealed itself. The sender therefore signs each
sealed chunk with its long-term Ed25519 identity (the seed in
``identity.key``): the signature covers a domain string, the session id,
the chunk index, the last flag, the nonce and the BLAKE3 of the sealed bytes
(ciphertext + tag). A receiver checks it *before* opening the chunk, against
the identity it has proven: the announce names the signing key, and the
receiver accepts it only if that Ed25519 key maps to the X25519 key that
CURVE proved for the control connection the announce came on
(:func:`proven_signer`). Nobody without the sender's seed - a co-receiver, a
member with the network key, anyone on the segment - can make a chunk that
passes; a forged chunk is dropped like a lost one and repaired.

One signature per chunk (one chunk = one AES-GCM seal): ~25 us to sign and
~70 us to verify besides one BLAKE3 pass over the sealed chunk (~0.35 ms per
MiB), the same for any number of receivers (docs/multicast.md, "Keys").
"""

from __future__ import annotations

import struct

import blake3
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from peercrypt.crypto.transfer import OpenError

SIG_BYTES = 64
SIGNER_BYTES = 32
_DOMAIN = b"peercrypt multicast chunk v1\x00"
_FIELDS = struct.Struct(">16sQ?12s")


def _message(sid: bytes, index: int, last: bool, nonce: bytes, sealed: bytes | memoryview) -> bytes:
    return _DOMAIN + _FIELDS.pack(sid, index, last, nonce) + blake3.blake3(sealed).digest()


class ChunkSigner:
    """The sender's side: sign sealed chunks with the node's identity seed."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)
        self.public = bytes(self._key.verify_key)

    def sign(self, sid: bytes, index: int, last: bool, nonce: bytes, sealed: bytes) -> bytes:
        return bytes(self._key.sign(_message(sid, index, last, nonce, sealed)).signature)


class ChunkVerifier:
    """A receiver's side: check sealed chunks against the sender's proven key."""

    __slots__ = ("_key",)

    def __init__(self, signer: bytes) -> None:
        self._key = VerifyKey(signer)

    def verify(
        self,
        sid: bytes,
        index: int,
        last: bool,
        nonce: bytes,
        sealed: bytes | memoryview,
        signature: bytes | memoryview,
    ) -> None:
        """Raises OpenError unless the sender signed exactly this sealed chunk."""
        if len(signature) != SIG_BYTES:
            raise OpenError("chunk signature has the wrong length")
        try:
            self._key.verify(_message(sid, index, last, nonce, sealed), bytes(signature))
        except (BadSignatureError, CryptoError, ValueError):
            raise OpenError("chunk signature is not the sender's") from None


def proven_signer(signer: bytes, curve_key: bytes) -> ChunkVerifier:
    """A verifier for ``signer`` (an Ed25519 public key, as announced) if it is
    the identity behind ``curve_key`` (the X25519 key CURVE proved for the
    connection the announce came on: a node's CURVE key is derived from the
    same seed). Raises ValueError otherwise. The Ed25519 -> X25519 map is
    many-to-one only up to the sign of the point, and no one can sign for the
    negated key without the seed."""
    if len(signer) != SIGNER_BYTES or not curve_key:
        raise ValueError("no signing key")
    try:
        mapped = VerifyKey(signer).to_curve25519_public_key().encode()
    except (CryptoError, ValueError):
        raise ValueError("invalid signing key") from None
    if mapped != curve_key:
        raise ValueError("the signing key is not the sender's proven identity")
    return ChunkVerifier(signer)


# -- per-receiver authentication of the unicast side (docs/multicast.md, "Keys") --
#
# Each receiver picks a random *receiver key* per session and gives it to the
# sender alone, inside CURVE (``McJoin.repair_key``). From it come a tag on
# every repair header the sender pushes to that receiver's repair port (junk
# is dropped before any hashing or signature work) and the token the
# receiver subscribes with (the sender's XPUB queues chunks only for
# subscriptions that carry a joined receiver's token).

RECEIVER_KEY_BYTES = 32
REPAIR_TAG_BYTES = 16
TOKEN_BYTES = 16
_REPAIR_FIELDS = struct.Struct(">16sQ?12s")


def repair_tag(receiver_key: bytes, sid: bytes, index: int, last: bool, nonce: bytes) -> bytes:
    """The tag of a repair header for one receiver (keyed BLAKE3)."""
    fields = _REPAIR_FIELDS.pack(sid, index, last, nonce)
    return blake3.blake3(fields, key=receiver_key).digest(REPAIR_TAG_BYTES)


def subscription_token(receiver_key: bytes) -> bytes:
    """What a receiver appends to the session id when it subscribes."""
    context = "peercrypt multicast subscription v1"
    return blake3.blake3(receiver_key, derive_key_context=context).digest(TOKEN_BYTES)
