"""Node identity, fingerprints, and the network key.

- A node's long-term identity is an Ed25519 seed, created on first start in
  its data directory (``identity.key``, mode 0600). Its verify key is the
  node id that signs membership records; the X25519 key pair derived from it
  (``KeyPair.from_seed``) is the node's CURVE client key, so an admitted
  peer's ZAP-verified key maps to its node id.
- Users see and pin *fingerprints*: the first 20 bytes of SHA-256 of the public
  key in base32, grouped by four (``abcd-efgh-...``).
- The network key (a shared secret string; ``peercrypt keygen`` makes one that
  carries its network's own scrypt salt) is stretched with scrypt into the
  CURVE *server* key pair that every member's control socket uses. It admits;
  it never identifies (crypto/handshake.py proves who a peer is). Completing
  a CURVE handshake needs the server public key, which only holders of the
  network key can compute; scrypt makes guessing a weak network key from a
  captured handshake slow. ``--open`` uses a fixed, public key: the control
  plane is still encrypted, but anyone can join.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.utils.z85

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# cryptography's and PyNaCl's key classes are imported where a key is made:
# a command that only names fingerprints (send through a running node) does
# not load either library.

IDENTITY_FILE = "identity.key"
_OPEN_NETWORK = b"peercrypt open network: no admission control"
_SCRYPT_SALT = b"peercrypt-network-key-v2"


class IdentityError(Exception):
    """The identity file is unusable (wrong size or permissions)."""


@dataclass(frozen=True)
class KeyPair:
    """A raw X25519 key pair (32-byte secret and public). A node identity also
    keeps the Ed25519 ``seed`` it was derived from (else empty).

    The secret's key object (:meth:`private_key`) is made once per pair and
    kept with it: making one from the raw secret computes the public key
    again (a scalar multiplication, about as dear as the exchange itself),
    and an exchange (crypto/handshake.py) runs six per side per transfer."""

    secret: bytes
    public: bytes
    seed: bytes = b""
    _private: X25519PrivateKey | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The identity of an Ed25519 seed: its X25519 pair, keeping the seed."""
        from nacl.signing import SigningKey

        signing = SigningKey(seed)
        pair = cls.from_secret(signing.to_curve25519_private_key().encode())
        return cls(secret=pair.secret, public=pair.public, seed=seed, _private=pair._private)

    @property
    def node_id(self) -> bytes:
        """The Ed25519 verify key (identities only)."""
        from nacl.signing import SigningKey

        return bytes(SigningKey(self.seed).verify_key)

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls._of(X25519PrivateKey.from_private_bytes(secret))

    @classmethod
    def generate(cls) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls._of(X25519PrivateKey.generate())

    @classmethod
    def _of(cls, private: X25519PrivateKey) -> KeyPair:
        public = private.public_key().public_bytes_raw()
        return cls(secret=private.private_bytes_raw(), public=public, _private=private)

    def private_key(self) -> X25519PrivateKey:
        """The secret as a key object for :meth:`X25519PrivateKey.exchange`."""
        if self._private is None:  # (a pair built from its two halves)
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

            object.__setattr__(self, "_private", X25519PrivateKey.from_private_bytes(self.secret))
        assert self._private is not None
        return self._private

    @property
    def z85_secret(self) -> bytes:
        return zmq.utils.z85.encode(self.secret)

    @property
    def z85_public(self) -> bytes:
        return zmq.utils.z85.encode(self.public)

    def __repr__(self) -> str:  # never print the secret
        return f"KeyPair(public={fingerprint(self.public)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The node hands its settings to its own data-plane processes through
        # a pipe (peercrypt/data_plane.py); the key object is made again there.
        return (KeyPair, (self.secret, self.public, self.seed))


def fingerprint(public: bytes) -> str:
    """Human-comparable fingerprint of a 32-byte public key."""
    return _fingerprint(bytes(public))


@functools.lru_cache(maxsize=1024)
def _fingerprint(public: bytes) -> str:
    # Kept for the keys seen last: a send names its peer's in its log lines,
    # records and checks (5-8 times a side), and base32 is ~15 us in Python.
    # A pure function of the key; the cache is bounded, whatever peers send.
    digest = hashlib.sha256(b"peercrypt-fp" + public).digest()[:20]
    text = base64.b32encode(digest).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def normalise_fingerprint(text: str) -> str:
    """Accept fingerprints with or without dashes, any case. Raises ValueError."""
    raw = text.strip().lower().replace("-", "").replace(" ", "")
    if len(raw) != 32 or any(c not in "abcdefghijklmnopqrstuvwxyz234567" for c in raw):
        raise ValueError(f"not a PeerCrypt fingerprint: {text[:60]!r}")
    return "-".join(raw[i : i + 4] for i in range(0, 32, 4))


def load_or_create_identity(data_dir: Path) -> KeyPair:
    """Load ``identity.key`` from ``data_dir`` or create it (0600, atomically).

    Raises IdentityError if the file exists but is not a 32-byte key or is
    readable by others.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / IDENTITY_FILE
    if not path.exists():
        # Write a complete file under a private name, then link it into place:
        # a concurrent first use sees either no identity or a whole one, and
        # the loser of a race loads the winner's.
        pair = KeyPair.from_seed(os.urandom(32))
        tmp = data_dir / f".{IDENTITY_FILE}.{os.getpid()}.{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pair.seed)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            else:
                return pair
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(
            f"{path} is accessible by other users (mode {mode:o}); run: chmod 600 {path}"
        )
    seed = path.read_bytes()
    if len(seed) != 32:
        raise IdentityError(f"{path} is not a PeerCrypt identity (expected 32 bytes)")
    return KeyPair.from_seed(seed)


KEY_PREFIX = "pcn1."
MIN_PASSPHRASE = 20  # characters of a human-chosen network key


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def network_salt_and_secret(network_key: str) -> tuple[bytes, bytes]:
    """(scrypt salt, secret) of a network key. A key from :func:`new_network_key`
    (``pcn1.SALT.SECRET``) carries its network's own random salt, so every node
    derives the same server key with no round trip and no precomputation
    serves two networks. A human passphrase gets the fixed salt and must be at
    least ``MIN_PASSPHRASE`` characters. Raises ValueError (message fit for
    the user, never containing the key)."""
    if not network_key:
        raise ValueError("the network key is empty")
    if network_key.startswith(KEY_PREFIX):
        parts = network_key[len(KEY_PREFIX) :].split(".")
        try:
            salt, secret = (_b64decode(p) for p in parts) if len(parts) == 2 else (b"", b"")
        except ValueError:
            salt, secret = b"", b""
        if len(salt) != 16 or len(secret) != 32:
            raise ValueError(
                "the network key starts like a `peercrypt keygen` key but is damaged; copy it again"
            )
        return _SCRYPT_SALT + salt, secret
    if len(network_key) < MIN_PASSPHRASE:
        raise ValueError(
            f"the network key is a passphrase of {len(network_key)} characters; use at "
            f"least {MIN_PASSPHRASE}, or better a key from `peercrypt keygen`"
        )
    return _SCRYPT_SALT, network_key.encode("utf-8")


def network_server_keys(network_key: str | None) -> KeyPair:
    """The CURVE server key pair of a network (``None``: the open network).
    Raises ValueError for an empty, short or damaged key."""
    if network_key is None:
        return KeyPair.from_secret(hashlib.sha256(_OPEN_NETWORK).digest())
    return KeyPair.from_secret(_scrypt(*network_salt_and_secret(network_key)))


def network_server_keys_later(network_key: str | None) -> Callable[[], KeyPair]:
    """:func:`network_server_keys` begun in a thread: the key is checked now
    (ValueError), its scrypt (~50 ms of CPU, which OpenSSL runs without the
    GIL) runs meanwhile, and the returned call waits for it. A caller does
    other work in between: `peercrypt send`'s temporary node imports its
    actors. The secret stays in this process's memory, as with the call."""
    if network_key is None:
        pair = network_server_keys(None)
        return lambda: pair
    salt, password = network_salt_and_secret(network_key)
    secret: list[bytes] = []
    thread = threading.Thread(
        target=lambda: secret.append(_scrypt(salt, password)), name="pc-network-key", daemon=True
    )
    thread.start()

    def pair_when_derived() -> KeyPair:
        thread.join()
        if not secret:  # (the thread failed: MemoryError...) derived here, raising here
            return KeyPair.from_secret(_scrypt(salt, password))
        return KeyPair.from_secret(secret[0])

    return pair_when_derived


def _scrypt(salt: bytes, password: bytes) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=2**14, r=8, p=1, dklen=32)


def new_network_key() -> str:
    """A fresh network key: ``pcn1.`` + a random 128-bit salt + a random
    256-bit secret (URL-safe base64, joined by dots)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    return f"{KEY_PREFIX}{b64(os.urandom(16))}.{b64(os.urandom(32))}"
