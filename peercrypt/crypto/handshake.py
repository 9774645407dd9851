"""Mutual authentication of two nodes over one exchange (a transfer, a
multicast join, a hello).

Every node has a static X25519 key (its identity, :mod:`peercrypt.crypto.
identity`); a fingerprint is the hash of that public key. The *initiator*
(a sender, a multicast sender) starts with a fresh ephemeral key ``e_i``; the
*responder* (a receiver) answers with its own ephemeral ``e_r``, its static
public key ``s_r`` and a proof. The shape is Noise's KK/XK pattern, with a
key-confirmation MAC in place of the first payload:

    ikm  = DH(e_i, e_r) || DH(e_i, s_r) || DH(s_i, e_r)
    h    = SHA-256(LABEL || context || s_i || s_r || e_i || e_r)
    okm  = HKDF-SHA256(salt=context, ikm, info=LABEL || h, 96 bytes)
         = to_responder (32) || to_initiator (32) || confirm (32)
    proof = HMAC-SHA256(confirm, "responder proof" || h)

- ``DH(e_i, s_r)`` can only be computed by whoever holds the responder's
  static secret, so only the real owner of ``s_r`` can produce ``proof``
  (and read anything sealed under ``to_responder``); the initiator checks
  the proof, and whom ``s_r`` belongs to, before it sends a byte.
- ``DH(s_i, e_r)`` binds the initiator's identity: the responder learns
  ``s_i`` from the CURVE handshake that carried the exchange (the client key
  ZAP verified); an offer replayed by anyone else derives other keys.
- ``DH(e_i, e_r)`` gives forward secrecy: once both ephemeral secrets are
  dropped (they are used once), recorded traffic cannot be opened even with
  both static secrets.
- ``h`` binds the context (transfer or session id) and all four public keys:
  no key can be swapped, and a proof for one transfer is worthless for
  another.

*Sealed details*: an initiator that already knows the responder's static key
(a hello proved it, see below) seals what it offers (file name, size) to it
before the responder has proven anything in this exchange:

    k_d   = HKDF-SHA256(salt=context, DH(e_i, s_r) || DH(s_i, s_r),
                        info=DETAILS_LABEL || h_d), h_d = transcript without e_r
    sealed = AES-256-GCM(k_d, nonce 0, details, aad=h_d)

Only the holder of ``s_r``'s secret opens it (``DH(e_i, s_r)``), so a member
answering at the responder's address sees neither name nor size; ``k_d`` is
used once (``e_i`` is fresh per exchange), so the fixed nonce never repeats.

A *hello proof* is the one-way version for ``hello``: the challenger sends
an ephemeral key, the node answers with its static key and
``HMAC(HKDF(DH(s_r, e_c)), "hello proof" || h)``; only the owner of ``s_r``
can answer a fresh challenge.

Pure functions; no sockets, no clock. Raises :class:`ProofError` for a proof
that does not verify and ``ValueError`` for a malformed or degenerate key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from peercrypt.crypto.identity import KeyPair

LABEL = b"peercrypt mutual-auth v1"
HELLO_LABEL = b"peercrypt hello proof v1"
DETAILS_LABEL = b"peercrypt sealed details v1"
KEY_BYTES = 32
PROOF_BYTES = 32


class ProofError(Exception):
    """The peer's proof does not verify: it does not hold the key it names."""


@dataclass(frozen=True)
class SessionSecrets:
    """The two direction keys of one authenticated exchange."""

    to_responder: bytes
    to_initiator: bytes

    def __repr__(self) -> str:  # never print a key
        return "SessionSecrets(...)"


@dataclass(frozen=True)
class Response:
    """What a responder sends back (its ephemeral public key and proof) and
    the secrets it derived."""

    eph_pub: bytes
    static_pub: bytes
    proof: bytes
    secrets: SessionSecrets


def _dh(own: KeyPair, public: bytes) -> bytes:
    if len(public) != KEY_BYTES:
        raise ValueError("a public key must be 32 bytes")
    shared = own.private_key().exchange(X25519PublicKey.from_public_bytes(public))
    if shared == bytes(32):  # a low-order point: no contribution from the peer
        raise ValueError("degenerate peer key")
    return shared


@functools.lru_cache(maxsize=256)
def _static_dh(own: KeyPair, public: bytes) -> bytes:
    """:func:`_dh` of a node's long-term key, kept for the pairs seen last:
    anyone holding ``own``'s secret can compute it again, so keeping it
    gives away nothing that holding the key does not (forward secrecy rests
    on the ephemeral-ephemeral exchange, never kept). A send's static-static
    exchange is the same for every send between two nodes, and the
    receiver's exchange with the sender's ephemeral key is used twice (its
    details, its answer): each is ~0.1 ms. A refused key raises each time."""
    return _dh(own, public)


def transcript_hash(
    context: bytes, s_i: bytes, s_r: bytes, e_i: bytes, e_r: bytes, label: bytes = LABEL
) -> bytes:
    """SHA-256 over the label, context and every public key, length-framed."""
    h = hashlib.sha256(label)
    for part in (context, s_i, s_r, e_i, e_r):
        h.update(len(part).to_bytes(2, "big") + part)
    return h.digest()


def _schedule(context: bytes, ikm: bytes, h: bytes) -> tuple[SessionSecrets, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=context, info=LABEL + h).derive(ikm)
    return SessionSecrets(okm[:32], okm[32:64]), okm[64:]


def _proof(confirm: bytes, h: bytes) -> bytes:
    return hmac.new(confirm, b"responder proof" + h, hashlib.sha256).digest()


def _details_key(
    context: bytes, ikm: bytes, s_i: bytes, s_r: bytes, e_i: bytes
) -> tuple[AESGCM, bytes]:
    h = transcript_hash(context, s_i, s_r, e_i, b"", DETAILS_LABEL)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=DETAILS_LABEL + h)
    return AESGCM(key.derive(ikm)), h


def open_details(
    context: bytes, own: KeyPair, initiator_static: bytes, initiator_eph: bytes, sealed: bytes
) -> bytes:
    """Responder side: open what an initiator sealed to our static key.
    Raises ProofError if it was not sealed to us (or was altered), ValueError
    for a malformed or degenerate key."""
    ikm = _static_dh(own, initiator_eph) + _static_dh(own, initiator_static)
    aead, h = _details_key(context, ikm, initiator_static, own.public, initiator_eph)
    try:
        return aead.decrypt(bytes(12), sealed, h)
    except InvalidTag:
        raise ProofError("these details were not sealed to this node's key") from None


def respond(
    context: bytes,
    own: KeyPair,
    initiator_static: bytes,
    initiator_eph: bytes,
    ephemeral: KeyPair | None = None,
) -> Response:
    """Responder side: answer an initiator whose static key the carrier
    (CURVE) proved. ``ephemeral`` is fresh unless a test passes one. Raises
    ValueError for a malformed or degenerate key."""
    pair = ephemeral if ephemeral is not None else KeyPair.generate()
    e_pub = pair.public
    ikm = _dh(pair, initiator_eph) + _static_dh(own, initiator_eph) + _dh(pair, initiator_static)
    h = transcript_hash(context, initiator_static, own.public, initiator_eph, e_pub)
    secrets, confirm = _schedule(context, ikm, h)
    return Response(e_pub, own.public, _proof(confirm, h), secrets)


class Initiator:
    """Initiator side of one exchange: holds its ephemeral secret until
    :meth:`finish` (once) uses and forgets it."""

    def __init__(self, own: KeyPair) -> None:
        self._own = own
        self._secret: KeyPair | None = KeyPair.generate()
        self.public = self._secret.public
        # DH(e_i, s_r) of :meth:`seal_details`, which :meth:`finish` uses
        # again for the same key: (s_r, it), forgotten with the ephemeral.
        self._sealed: tuple[bytes, bytes] | None = None

    def seal_details(self, context: bytes, responder_static: bytes, details: bytes) -> bytes:
        """Seal ``details`` so that only the holder of ``responder_static``'s
        secret can read them (once per exchange). Raises ValueError for a
        malformed or degenerate key."""
        if self._secret is None:
            raise RuntimeError("this ephemeral key was already used")
        ephemeral = _dh(self._secret, responder_static)
        self._sealed = (responder_static, ephemeral)
        ikm = ephemeral + _static_dh(self._own, responder_static)
        aead, h = _details_key(context, ikm, self._own.public, responder_static, self.public)
        return aead.encrypt(bytes(12), details, h)

    def finish(
        self, context: bytes, responder_static: bytes, responder_eph: bytes, proof: bytes
    ) -> SessionSecrets:
        """Check the responder's proof and derive the secrets. Raises
        ProofError (the responder does not hold ``responder_static``) or
        ValueError (a malformed key); either way the ephemeral is spent."""
        if self._secret is None:
            raise RuntimeError("this ephemeral key was already used")
        secret, self._secret = self._secret, None
        sealed, self._sealed = self._sealed, None
        if sealed is not None and sealed[0] == responder_static:
            ephemeral_static = sealed[1]
        else:
            ephemeral_static = _dh(secret, responder_static)
        ikm = _dh(secret, responder_eph) + ephemeral_static + _dh(self._own, responder_eph)
        h = transcript_hash(context, self._own.public, responder_static, self.public, responder_eph)
        secrets, confirm = _schedule(context, ikm, h)
        if not hmac.compare_digest(_proof(confirm, h), proof):
            raise ProofError("the peer could not prove the identity it claims")
        return secrets


# -- hello: prove the static key to a challenger ---------------------------------------


def _hello_mac(
    shared: bytes, challenge: bytes, static: bytes, version: str, offer_key: bytes
) -> bytes:
    h = transcript_hash(version.encode("utf-8"), b"", static, challenge, offer_key, HELLO_LABEL)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HELLO_LABEL + h).derive(shared)
    return hmac.new(key, b"hello proof" + h, hashlib.sha256).digest()


def prove_hello(own: KeyPair, challenge: bytes, version: str, offer_key: bytes = b"") -> bytes:
    """A node's answer to a hello challenge (an ephemeral public key).
    ``offer_key``: the key that opens offers to this node when its receiver
    runs attached elsewhere (b"": its own), vouched for by the same proof."""
    return _hello_mac(_dh(own, challenge), challenge, own.public, version, offer_key)


class HelloChallenge:
    """A challenger's ephemeral key for one hello."""

    def __init__(self) -> None:
        self._secret = KeyPair.generate()
        self.public = self._secret.public

    def verify(self, static: bytes, version: str, proof: bytes, offer_key: bytes = b"") -> None:
        """Raises ProofError unless ``proof`` was made by the owner of
        ``static`` (for this ``offer_key``)."""
        try:
            shared = _dh(self._secret, static)
            expected = _hello_mac(shared, self.public, static, version, offer_key)
        except ValueError:
            raise ProofError("the peer's key is not a valid identity key") from None
        if not hmac.compare_digest(expected, proof):
            raise ProofError("the peer could not prove the identity it claims")


HELLO_MEMORY = 8  # challenges remembered per peer, to tell a stale answer
HELLO_RETRY = 5.0  # s without an answer before a live connection is asked again
# Each retry that went unanswered doubles that wait, up to this: a path whose
# round trip is longer than HELLO_RETRY is then proven (the answer to the
# newest challenge comes back before the next one leaves).
HELLO_RETRY_MAX = 80.0

PROVEN = "proven"  # the answer to the newest challenge, and it verifies
STALE = "stale"  # a genuine answer to an older challenge, or to none: dropped
IMPOSTOR = "impostor"  # it verifies against no challenge this peer was sent


class HelloRound:
    """The hellos a challenger sent to one peer address over a connection
    that may reconnect (a multicast target, kept trying).

    A hello can be sent again before its answer is back (a new connection
    after a restart, a retry): answers then arrive to earlier challenges, or
    twice. Only an answer to the newest challenge proves the key; an answer
    that verifies against an earlier one, or comes when nothing is out, is
    stale and dropped (its holder is genuine, only late); an answer that
    verifies against none of the last :data:`HELLO_MEMORY` challenges is an
    impostor's (nobody else can answer a challenge). A challenge unanswered
    for :attr:`retry` s is asked again, and each such retry doubles the
    wait for the next (up to :data:`HELLO_RETRY_MAX`; a proof starts it
    over): a round trip longer than :attr:`retry` would otherwise make every
    answer stale. Sans-IO: ``now`` is passed in.
    """

    def __init__(
        self, memory: int = HELLO_MEMORY, retry: float = HELLO_RETRY, most: float = HELLO_RETRY_MAX
    ) -> None:
        self.memory, self.retry, self.most = memory, retry, most
        self._sent: list[HelloChallenge] = []  # oldest first; the last is current
        self._asked_at: float | None = None  # when the current one left; None: none out
        self._wait = retry  # before the current one is asked again

    @property
    def pending(self) -> bool:
        """A challenge is out and its answer not yet back."""
        return self._asked_at is not None

    def due(self, now: float) -> bool:
        """Ask (again)? Nothing is out, or the current challenge got no
        answer for :attr:`retry` s. (A new connection asks at once.)"""
        return self._asked_at is None or now - self._asked_at >= self._wait

    def ask(self, now: float) -> bytes:
        """A fresh challenge, now the current one: its public key to send.
        Asked because the current one went unanswered its wait: the next
        wait doubles."""
        if self._asked_at is not None and now - self._asked_at >= self._wait:
            self._wait = min(self.most, 2 * self._wait)
        challenge = HelloChallenge()
        self._sent.append(challenge)
        del self._sent[: -self.memory]
        self._asked_at = now
        return challenge.public

    def unsent(self) -> None:
        """The current challenge never left (the connection was not ready):
        forget it, so the next chance asks again."""
        if self._asked_at is not None:
            self._sent.pop()
            self._asked_at = None

    def check(self, static: bytes, version: str, proof: bytes, offer_key: bytes = b"") -> str:
        """One answer: :data:`PROVEN`, :data:`STALE` or :data:`IMPOSTOR`."""
        if self._asked_at is None:
            return STALE  # nothing out (already proven, or never asked)
        for i in range(len(self._sent) - 1, -1, -1):
            try:
                self._sent[i].verify(static, version, proof, offer_key)
            except ProofError:
                continue
            if i == len(self._sent) - 1:  # the newest
                self._asked_at, self._wait = None, self.retry
                return PROVEN
            return STALE  # (a repeated answer too: it proves nothing new)
        return IMPOSTOR
