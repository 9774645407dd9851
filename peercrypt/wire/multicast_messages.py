"""Messages of reliable encrypted multicast (docs/multicast.md).

Control plane (over CURVE, sender's DEALER -> receiver's gateway -> the
``mreceiver`` actor, answers back on the same connection): ``McAnnounce``,
``McJoin``/``McRefuse``, ``McKey``, ``McAck`` (acks and NAK ranges),
``McStatus`` and ``McDone``. Data plane: ``McChunk`` is the plain header
frame published on the sender's PUB socket (topic = session id) before the
AES-256-GCM sealed chunk and the sender's signature of it (with a UDP
multicast group, the same fields travel in each datagram's fixed header
instead: peercrypt/core/fragments.py).
Local: the CLI's requests and results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peercrypt.core.fragments import MAX_FRAGMENT
from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.fields import code, counter, fixed, port, ranges, reason
from peercrypt.wire.messages import (
    HASH_BYTES,
    KEY_BYTES,
    MAX_CHUNKS,
    MAX_DETAILS,
    MAX_NAME,
    NONCE_BYTES,
)

SID_BYTES = 16
SOURCE_BYTES = 32  # core/resume.py SOURCE_BYTES
WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + 16  # nonce || AES-GCM(content key) || tag
MAX_TARGETS = 64
# What a receiver answers (McRefuse ``protocol``) to sealed details it cannot
# decode: from a node of an older release, to McFileDetails.
LEGACY_REFUSAL = "malformed sealed details"


def _count() -> Any:
    return field(metadata=bounded(MAX_CHUNKS))


# ---- control plane ----------------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class McAnnounce(Message):
    """Sender -> receiver: a session; join it with your ephemeral key.
    ``details`` is the session's :class:`McDetails` (name and size) sealed
    to the key the receiver proved in a hello before (crypto/handshake.py,
    "sealed details"): a member answering at its address learns neither.
    An announce without ``details`` is refused (``unsealed``): ``name`` and
    ``size`` in clear are never read (senders leave them empty)."""

    TYPE = "mc-announce"
    sid: bytes = fixed(SID_BYTES)
    name: str = field(default="", metadata=bounded(MAX_NAME))
    size: int = counter(default=0)
    details: bytes = field(default=b"", metadata=bounded(MAX_DETAILS))
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 4096))
    eph_pub: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    # Always "": the PUB socket is at the host the receiver knows us by (a
    # receiver refuses any other: it would dial whatever a member names).
    pub_host: str = field(metadata=bounded(255))
    pub_port: int = field(metadata=bounded(65535))  # 0: no PUB socket (the group carries chunks)
    attempt: int = field(default=0, metadata=bounded(2**31))  # echoed by McJoin and McKey
    # UDP/IP multicast (core/fragments.py): chunks go as datagrams to
    # group:group_port, cut into fragments of `fragment` bytes. "": PUB/SUB.
    group: str = field(default="", metadata=bounded(15))
    group_port: int = field(default=0, metadata=bounded(65535))
    fragment: int = field(default=0, metadata=bounded(MAX_FRAGMENT))
    # The sender's Ed25519 identity, which signs every sealed chunk
    # (crypto/chunk_signature.py); it must map to the CURVE key of the
    # connection this announce came on.
    signer: bytes = field(default=b"", metadata=bounded(32))


@message
@dataclass(frozen=True, kw_only=True)
class McDetails(Message):
    """What a :class:`McAnnounce` offers, sealed inside it."""

    TYPE = "mc-details"
    name: str = field(metadata=bounded(MAX_NAME, 1))
    size: int = counter()
    # A folder or several files (peercrypt/core/tree.py): the stream's first
    # ``tree`` bytes are its manifest of ``files`` files; 0: one plain file.
    tree: int = counter(default=0)
    files: int = counter(default=0)


@message
@dataclass(frozen=True, kw_only=True)
class McFileDetails(Message):
    """:class:`McDetails` of one plain file plus ``source``, the sender's
    source tag of the file's version (core/resume.py ``source_tag``), sealed
    inside the announce like them: a receiver that stored this very version
    from this proven sender, unchanged since, answers :class:`McHeld`
    instead of joining. A receiver that does not know this type refuses the
    announce (``protocol``, "malformed sealed details"); the sender then
    announces to it again with plain :class:`McDetails`."""

    TYPE = "mc-file-details"
    name: str = field(metadata=bounded(MAX_NAME, 1))
    size: int = counter()
    source: bytes = field(metadata=bounded(SOURCE_BYTES, SOURCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class McHeld(Message):
    """Receiver -> sender: I hold the file this announce's sealed source tag
    names, verified and unchanged; send me the whole-file hash
    (``McStatus.digest``) and I answer :class:`McDone` with the name it is
    stored under if it is the hash I verified then. ``attempt`` echoes the
    announce's; the receiver proves its identity as in :class:`McJoin`
    (crypto/handshake.py), so only the node the sender trusts at that
    address can claim to hold the file."""

    TYPE = "mc-held"
    sid: bytes = fixed(SID_BYTES)
    eph_pub: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    static_pub: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    proof: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    attempt: int = field(default=0, metadata=bounded(2**31))


@message
@dataclass(frozen=True, kw_only=True)
class McJoin(Message):
    TYPE = "mc-join"
    sid: bytes = fixed(SID_BYTES)
    eph_pub: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    # The receiver's identity key and its proof (crypto/handshake.py): the
    # sender wraps the content key only for a receiver that proved itself.
    static_pub: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    proof: bytes = field(metadata=bounded(KEY_BYTES, KEY_BYTES))
    repair_port: int = port()  # unicast repairs go here
    attempt: int = field(default=0, metadata=bounded(2**31))
    # This receiver's random key for the session (crypto/chunk_signature.py):
    # tags the repairs pushed to it and makes its subscription token.
    repair_key: bytes = field(default=b"", metadata=bounded(32))


@message
@dataclass(frozen=True, kw_only=True)
class McRefuse(Message):
    TYPE = "mc-refuse"
    sid: bytes = fixed(SID_BYTES)
    code: str = code()
    reason: str = reason()


@message
@dataclass(frozen=True, kw_only=True)
class McKey(Message):
    """Sender -> one joined receiver: the content key wrapped for it."""

    TYPE = "mc-key"
    sid: bytes = fixed(SID_BYTES)
    wrapped: bytes = field(metadata=bounded(WRAPPED_BYTES, WRAPPED_BYTES))
    attempt: int = field(default=0, metadata=bounded(2**31))


@message
@dataclass(frozen=True, kw_only=True)
class McAck(Message):
    """Receiver -> sender: chunks written below ``cumulative``; ``naks`` the
    flattened [start, end) ranges it misses (bounded)."""

    TYPE = "mc-ack"
    sid: bytes = fixed(SID_BYTES)
    cumulative: int = _count()
    written: int = _count()
    naks: list[int] = ranges(optional=True)


@message
@dataclass(frozen=True, kw_only=True)
class McStatus(Message):
    """Sender -> receiver: chunks below ``horizon`` exist (NAK what you miss
    below it); the whole-file hash once known; ``end`` with a reason when the
    sender drops this receiver or the session."""

    TYPE = "mc-status"
    sid: bytes = fixed(SID_BYTES)
    horizon: int = _count()
    digest: bytes = field(default=b"", metadata=bounded(HASH_BYTES))
    end: str = field(default="", metadata=bounded(512))
    ack_every: int = field(default=0, metadata=bounded(4096))  # chunks; 0: the receiver's own


@message
@dataclass(frozen=True, kw_only=True)
class McDone(Message):
    """Receiver -> sender: the file is verified and stored, or failed."""

    TYPE = "mc-done"
    sid: bytes = fixed(SID_BYTES)
    ok: bool
    digest: bytes = field(metadata=bounded(HASH_BYTES))
    stored_as: str = field(metadata=bounded(MAX_NAME))
    reason: str = reason(default="")


# ---- data plane (PUB/SUB and unicast repair) -----------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class McChunk(Message):
    TYPE = "mc-chunk"
    sid: bytes = fixed(SID_BYTES)
    index: int = _count()
    last: bool
    nonce: bytes = field(metadata=bounded(NONCE_BYTES, NONCE_BYTES))
    tag: bytes = field(default=b"", metadata=bounded(16))  # repairs: for their receiver only


# ---- local (CLI <-> control <-> multicast actors) ---------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class McSendRequest(Message):
    TYPE = "mc-send-request"
    request: int = counter()
    path: str = field(metadata=bounded(4096, 1))
    # More files or folders sent with ``path`` as one session (a folder
    # ``path`` alone is one too); each travels under its own name.
    more: list[str] = field(default_factory=list, metadata=bounded(4096))
    targets: list[str] = field(metadata=bounded(MAX_TARGETS))  # "HOST:PORT", >= 1
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 4096))
    timeout: float = 10.0
    window: int = field(default=0, metadata=bounded(4096))  # chunks; 0: the default
    group: str = field(default="", metadata=bounded(32))  # "GROUP:PORT"; "": the node's
    # Fingerprints the user pinned (--expect): each receiver must prove one of them.
    expect: list[str] = field(default_factory=list, metadata=bounded(MAX_TARGETS))
    # Target -> fingerprints members' own signed records list there (the
    # control actor fills it in from health; crypto/known_peers.py decides with it).
    members: dict[str, list[str]] = field(default_factory=dict, metadata=bounded(MAX_TARGETS))
    # Its client shows no progress: as SendRequest.quiet (no McTargetProgress
    # at all; each receiver's result still comes as it happens).
    quiet: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class McTargetResult(Message):
    """One receiver's outcome (streamed as it happens; does not end the request)."""

    TYPE = "mc-target-result"
    request: int = counter()
    target: str = field(metadata=bounded(300))
    code: str = code()
    reason: str = reason()
    stored_as: str = field(default="", metadata=bounded(MAX_NAME))
    seconds: float = 0.0
    held: bool = False  # it had the file already (nothing stored again)


@message
@dataclass(frozen=True, kw_only=True)
class McSendResult(Message):
    TYPE = "mc-send-result"
    request: int = counter()
    code: str = code()  # "ok" only if every target verified
    reason: str = reason()
    size: int = counter()
    digest: bytes = field(metadata=bounded(HASH_BYTES))
    seconds: float = 0.0
    results: list[dict[str, str]] = field(default_factory=list, metadata=bounded(MAX_TARGETS))
    stats: dict[str, float] = field(default_factory=dict, metadata=bounded(32))


@message
@dataclass(frozen=True, kw_only=True)
class McListen(Message):
    """``multicast-receive``: (re)bind the repair port in [low, high] (0, 0:
    keep it) and report the next ``count`` sessions received (0: until the
    client goes away)."""

    TYPE = "mc-listen"
    request: int = counter()
    low: int = field(metadata=bounded(65535))
    high: int = field(metadata=bounded(65535))
    count: int = field(default=0, metadata=bounded(1 << 20))


@message
@dataclass(frozen=True, kw_only=True)
class McListening(Message):
    TYPE = "mc-listening"
    request: int = counter()
    repair_port: int = field(metadata=bounded(65535))
    code: str = field(default="ok", metadata=bounded(32, 1))
    reason: str = reason(default="")


@message
@dataclass(frozen=True, kw_only=True)
class McReceived(Message):
    """A session ended on the receiving side."""

    TYPE = "mc-received"
    request: int = counter()
    name: str = field(metadata=bounded(MAX_NAME))
    stored_as: str = field(metadata=bounded(MAX_NAME))
    size: int = counter()
    ok: bool
    reason: str = reason(default="")
    held: bool = False  # this node had the file already: nothing was stored again


@message
@dataclass(frozen=True, kw_only=True)
class McListenEnd(Message):
    """The ``count`` sessions were reported: the listen is over."""

    TYPE = "mc-listen-end"
    request: int = counter()
