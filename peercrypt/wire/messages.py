"""The messages PeerCrypt nodes and actors exchange.

Three families, one codec (:mod:`peercrypt.wire.codec`):

- control plane, between nodes over CURVE (``Hello``, ``Ping``, ``Offer`` ...);
- data plane, between a sender and a receiver: a plain ``ChunkHeader`` or
  ``SealedHeader`` frame followed by an AES-GCM sealed payload frame; the
  sealed payload of a ``SealedHeader`` is itself one of the ``Transfer*``
  messages (``Ack``, ``Done``, ``Verified``, ``Failed``);
- local, between actors of one node and between the CLI and its node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peercrypt.wire.codec import MAX_MESSAGE_BYTES, Message, bounded, message
from peercrypt.wire.fields import code, counter, fixed, port, ranges, reason

TID_BYTES = 16
KEY_BYTES = 32
NONCE_BYTES = 12
HASH_BYTES = 32
MAX_NAME = 1024  # characters of a file name as offered; sanitised on receipt
MAX_DETAILS = 8 * 1024  # a sealed OfferDetails (its name at 4 bytes per character, + tag)
MAX_CHUNKS = 2**40
MAX_STATUS_COUNTERS = 1000  # every actor's counters in one status reply (~40 KB at most)
# A control-plane message wrapped in Inbound/Outbound mail must still fit the
# codec's frame limit with its envelope.
MAX_WRAPPED = MAX_MESSAGE_BYTES - 1024


# ---- control plane (node <-> node, over CURVE) ------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """Ask a node who it is: ``challenge`` is a fresh ephemeral key the
    answer must prove the node's identity over (crypto/handshake.py)."""

    TYPE = "hello"
    challenge: bytes = fixed(KEY_BYTES)


@message
@dataclass(frozen=True, kw_only=True)
class HelloReply(Message):
    TYPE = "hello-reply"
    node_id: bytes = fixed(KEY_BYTES)
    version: str = reason()
    proof: bytes = fixed(KEY_BYTES)
    # The identity key offers to this node are sealed to, when its receiver
    # runs attached on another host (b"": node_id); covered by the proof.
    offer_key: bytes = field(default=b"", metadata=bounded(KEY_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class Ping(Message):
    TYPE = "ping"
    seq: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class Pong(Message):
    TYPE = "pong"
    seq: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class Offer(Message):
    """A sender proposes a file. What the file is (:class:`OfferDetails`)
    travels in ``details``, sealed to the identity key the receiver proved in
    the hello before (crypto/handshake.py, "sealed details"): a member
    answering at the receiver's address learns neither name nor size."""

    TYPE = "offer"
    tid: bytes = fixed(TID_BYTES)
    eph_pub: bytes = fixed(KEY_BYTES)
    details: bytes = field(metadata=bounded(MAX_DETAILS, 16))


@message
@dataclass(frozen=True, kw_only=True)
class OfferDetails(Message):
    """What an :class:`Offer` offers, sealed inside it. ``source``
    identifies the version of the file (:func:`~peercrypt.core.resume.source_tag`):
    with the sender's proven identity, name and size it lets the receiver
    continue a kept part."""

    TYPE = "offer-details"
    name: str = field(metadata=bounded(MAX_NAME, 1))
    size: int = counter()
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 1))
    hash_alg: str = field(metadata=bounded(16, 1))
    mode: str = field(default="", metadata=bounded(32))  # for the receiver's statistics
    source: bytes = field(metadata=bounded(HASH_BYTES, HASH_BYTES))
    # A folder or several files (peercrypt/core/tree.py): the stream's first
    # ``tree`` bytes are its manifest of ``files`` files; 0: one plain file.
    tree: int = counter(default=0)
    files: int = counter(default=0)


@message
@dataclass(frozen=True, kw_only=True)
class Accept(Message):
    """The receiver takes the offer. ``data_port`` is where chunks go (on the
    host the sender already reached, unless ``data_host`` names another);
    ``window`` is the initial credit in chunks; ``have`` lists ranges
    [start, end) already held (resume). ``static_pub`` is the receiver's
    identity key and ``proof`` shows it holds it (crypto/handshake.py); the
    sender checks both before its first chunk."""

    TYPE = "accept"
    tid: bytes = fixed(TID_BYTES)
    eph_pub: bytes = fixed(KEY_BYTES)
    static_pub: bytes = fixed(KEY_BYTES)
    proof: bytes = fixed(KEY_BYTES)
    data_host: str = field(metadata=bounded(255))
    data_port: int = port()
    window: int = field(metadata=bounded(4096, 1))
    have: list[int] = ranges()


@message
@dataclass(frozen=True, kw_only=True)
class Refuse(Message):
    TYPE = "refuse"
    tid: bytes = fixed(TID_BYTES)
    code: str = code()
    reason: str = reason()


@message
@dataclass(frozen=True, kw_only=True)
class ErrorReply(Message):
    """Answer to a control message the node could not take."""

    TYPE = "error"
    code: str = code()
    reason: str = reason()


# ---- data plane (plain frames; payloads sealed with the transfer keys) ------


@message
@dataclass(frozen=True, kw_only=True)
class ChunkHeader(Message):
    """Header frame of a chunk; the next frame is the AES-GCM ciphertext.
    ``tid``, ``index`` and ``last`` are bound into the AAD."""

    TYPE = "chunk"
    tid: bytes = fixed(TID_BYTES)
    index: int = field(metadata=bounded(MAX_CHUNKS))
    last: bool = False
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class SealedHeader(Message):
    """Header frame of a sealed transfer-control message (next frame)."""

    TYPE = "sealed"
    tid: bytes = fixed(TID_BYTES)
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """Receiver -> sender: every chunk below ``cumulative`` is written, plus
    the ranges in ``sack`` ([start, end) pairs); ``window`` is the credit."""

    TYPE = "ack"
    cumulative: int = field(metadata=bounded(MAX_CHUNKS))
    sack: list[int] = ranges()
    window: int = field(metadata=bounded(4096))


@message
@dataclass(frozen=True, kw_only=True)
class Done(Message):
    """Sender -> receiver: all chunks acknowledged; the whole-file hash."""

    TYPE = "done"
    digest: bytes = field(metadata=bounded(HASH_BYTES, HASH_BYTES))
    chunks: int = field(metadata=bounded(MAX_CHUNKS))


@message
@dataclass(frozen=True, kw_only=True)
class Verifying(Message):
    """Receiver -> sender, sealed, in answer to each Done while its final
    check runs (re-reading the part, building a folder): still at it, so
    the sender's wait for the verdict starts again."""

    TYPE = "verifying"
    chunks: int = field(metadata=bounded(MAX_CHUNKS))


@message
@dataclass(frozen=True, kw_only=True)
class Verified(Message):
    """Receiver -> sender: the file is stored, its hash verified."""

    TYPE = "verified"
    digest: bytes = field(metadata=bounded(HASH_BYTES, HASH_BYTES))
    stored_as: str = field(metadata=bounded(MAX_NAME, 1))


@message
@dataclass(frozen=True, kw_only=True)
class Failed(Message):
    """Either side: the transfer is over without a verified file."""

    TYPE = "failed"
    code: str = code()
    reason: str = reason()


# ---- local: CLI <-> node control socket, actor <-> actor --------------------


@message
@dataclass(frozen=True, kw_only=True)
class SendRequest(Message):
    """Ask the node to send a file (CLI -> control -> sender)."""

    TYPE = "send-request"
    request: int = counter()
    path: str = field(metadata=bounded(4096, 1))
    # More files or folders sent with ``path`` as one transfer (a folder
    # ``path`` alone is one too); each travels under its own name.
    more: list[str] = field(default_factory=list, metadata=bounded(4096))
    host: str = field(metadata=bounded(255, 1))
    port: int = port()
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 4096))
    timeout: float = 10.0
    # The transfer's policy (see peercrypt.core.modes); None: the node's default.
    mode: str | None = field(default=None, metadata=bounded(32))
    rate: int | None = field(default=None, metadata=bounded(2**62))
    burst: int | None = field(default=None, metadata=bounded(2**62))
    window_kb: int | None = field(default=None, metadata=bounded(2**40))
    min_window_kb: int | None = field(default=None, metadata=bounded(2**40))
    max_window_kb: int | None = field(default=None, metadata=bounded(2**40))
    ack_threshold: int | None = field(default=None, metadata=bounded(1 << 20))
    timeout_detect: bool | None = None
    dupack_detect: bool | None = None
    priority: int | None = field(default=None, metadata=bounded(3))
    lanes: int | None = field(default=None, metadata=bounded(64))
    # --force: the pre-send check (the sender's hello) refusing says so without
    # the hint at --force (and counts sender.forced-sends).
    force: bool = False
    # Set by the scheduler: whether the node's rate cap (live max-rate) paces
    # this send from its first byte (None: the cap it started with).
    node_capped: bool | None = None
    # The receiver's fingerprint the user pinned (--expect); "": known peers.
    expect: str = field(default="", metadata=bounded(64))
    # Fingerprints members' own signed records list at HOST:PORT (the control
    # actor asks health; crypto/known_peers.py decides with them).
    members: list[str] = field(default_factory=list, metadata=bounded(16))


@message
@dataclass(frozen=True, kw_only=True)
class CancelRequest(Message):
    """Stop a send in progress (the CLI was interrupted)."""

    TYPE = "cancel-request"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class CancelTransfer(Message):
    """CLI -> control: cancel running send ``transfer`` (an id from
    ``transfers``), whoever started it. Answered by a SettingReply."""

    TYPE = "cancel-transfer"
    request: int = counter()
    transfer: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class Progress(Message):
    """How far a send is, every 0.1 s while it runs. ``phase`` is what it
    waits for (:data:`PHASES`): ``checking`` the peer's health, ``waiting``
    for a free sending slot, ``offering`` until the receiver accepts,
    ``retrying`` (a pause before offering again after a network failure),
    ``sending`` (``done_bytes``: written by the receiver), ``hashing`` (the
    sender reads back what the receiver already held, for the whole-file
    hash: ``done_bytes`` hashed), ``verifying`` (the receiver checks the
    hash; ``done_bytes`` = ``total_bytes``). ``note``: what it is doing
    about a problem (e.g. the receiver's port closed; retrying), shown once
    to the user."""

    TYPE = "progress"
    request: int = counter()
    done_bytes: int = counter()
    total_bytes: int = counter()
    note: str = reason(default="")
    done_files: int = counter(default=0)  # a folder or several files: files fully acked
    total_files: int = counter(default=0)
    phase: str = field(default="sending", metadata=bounded(16))


PHASES = (
    "checking",
    "walking",  # a folder or several files: reading and hashing them for the manifest
    "waiting",
    "offering",
    "retrying",
    "sending",
    "hashing",
    "verifying",
)


@message
@dataclass(frozen=True, kw_only=True)
class McTargetProgress(Message):
    """One receiver's progress in a multicast send, every 0.1 s while the
    session runs (beside the send's Progress): its
    ``state`` (``joining``, ``multicast``, ``unicast``, ``lost``...) and the
    bytes it acknowledged."""

    TYPE = "mc-target-progress"
    request: int = counter()
    target: str = field(metadata=bounded(300))
    state: str = field(metadata=bounded(16))
    done_bytes: int = counter()
    total_bytes: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class SendResult(Message):
    """Outcome of a send. ``code`` is "ok" or a failure code (see
    :mod:`peercrypt.errors`); ``digest`` is the verified BLAKE3 hash."""

    TYPE = "send-result"
    request: int = counter()
    code: str = code()
    reason: str = reason()
    size: int = counter()
    digest: bytes = field(metadata=bounded(HASH_BYTES))
    stored_as: str = field(metadata=bounded(MAX_NAME))
    seconds: float = 0.0
    retransmits: int = counter(default=0)
    mode: str = field(default="", metadata=bounded(32))
    # Congestion and flow statistics (srtt, rto, timeouts, fast retransmits,
    # window decreases...) and the window over time as [ms, bytes, ...].
    stats: dict[str, float] = field(default_factory=dict, metadata=bounded(32))
    window_history: list[int] = field(default_factory=list, metadata=bounded(2048))


@message
@dataclass(frozen=True, kw_only=True)
class StatusRequest(Message):
    TYPE = "status-request"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class StatusReply(Message):
    """The node's status as a flat map of counters and facts (msgpack-able)."""

    TYPE = "status-reply"
    request: int = counter()
    node: dict[str, str] = field(metadata=bounded(64))
    counters: dict[str, int] = field(metadata=bounded(MAX_STATUS_COUNTERS))


@message
@dataclass(frozen=True, kw_only=True)
class Inbound(Message):
    """Gateway -> actor: a control-plane message from a peer. ``route`` is the
    ROUTER routing id to answer through; ``peer`` the admitted CURVE key."""

    TYPE = "inbound"
    route: bytes = field(metadata=bounded(256, 1))
    peer: bytes = field(metadata=bounded(64))
    peer_host: str = field(metadata=bounded(255))
    payload: bytes = field(metadata=bounded(MAX_WRAPPED))


@message
@dataclass(frozen=True, kw_only=True)
class Outbound(Message):
    """Actor -> gateway: answer a peer through its routing id."""

    TYPE = "outbound"
    route: bytes = field(metadata=bounded(256, 1))
    payload: bytes = field(metadata=bounded(MAX_WRAPPED))


@message
@dataclass(frozen=True, kw_only=True)
class Announce(Message):
    """Actor -> control: facts for status (bound ports, counters)."""

    TYPE = "announce"
    actor: str = field(metadata=bounded(64, 1))
    facts: dict[str, str] = field(metadata=bounded(32))
    counters: dict[str, int] = field(metadata=bounded(128))


# ---- scheduler: flows and live settings --------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class FlowStart(Message):
    """Sender -> scheduler: a transfer starts sending. ``rate`` > 0: its own
    token bucket (token-bucket mode); ``paced``: it waits for grants."""

    TYPE = "flow-start"
    request: int = counter()
    priority: int = field(metadata=bounded(3, 1))
    rate: int = counter()
    burst: int = counter()
    paced: bool = False
    owner: str = field(default="sender", metadata=bounded(32, 1))  # who gets the grants
    # aimd: the flow shares its peer's congestion window (FlowReport/FlowWindow)
    peer: str = field(default="", metadata=bounded(300))
    congestion: bool = False
    window_kb: int = field(default=0, metadata=bounded(2**40))
    min_window_kb: int = field(default=0, metadata=bounded(2**40))
    max_window_kb: int = field(default=0, metadata=bounded(2**40))
    timeout_detect: bool = True
    dupack_detect: bool = True


@message
@dataclass(frozen=True, kw_only=True)
class FlowReport(Message):
    """Sender -> scheduler, batched: what a congestion-managed flow saw since
    its last report (new bytes sent, bytes newly acked, losses and timeouts
    detected) and what it has in flight now."""

    TYPE = "flow-report"
    request: int = counter()
    sent: int = counter()
    acked: int = counter()
    losses: int = field(metadata=bounded(2**31))
    timeouts: int = field(metadata=bounded(2**31))
    in_flight: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class FlowWindow(Message):
    """Scheduler -> sender: the flow's share (bytes in flight) of its peer's
    congestion window, that window, and the window's decreases so far."""

    TYPE = "flow-window"
    request: int = counter()
    nbytes: int = counter()
    window: int = counter()
    decreases: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class FlowDemand(Message):
    """Sender -> scheduler: bytes the flow could send now beyond its balance."""

    TYPE = "flow-demand"
    request: int = counter()
    nbytes: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class FlowGrant(Message):
    """Scheduler -> sender: the flow may send ``nbytes`` more."""

    TYPE = "flow-grant"
    request: int = counter()
    nbytes: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class FlowEnd(Message):
    TYPE = "flow-end"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class FlowPacing(Message):
    """Scheduler -> sender: from now on the flow waits for grants (or not),
    e.g. after a live ``max-rate``."""

    TYPE = "flow-pacing"
    request: int = counter()
    paced: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class SettingRequest(Message):
    """CLI -> scheduler: change a live setting. ``name``: mode, max-rate, rate,
    congestion.window|min-window|max-window|timeout|dupack|threshold, lanes.
    ``transfer``: for ``rate``, one transfer's id (0: every paced transfer)."""

    TYPE = "setting-request"
    request: int = counter()
    name: str = field(metadata=bounded(64, 1))
    value: str = field(metadata=bounded(256))
    transfer: int = counter(default=0)


@message
@dataclass(frozen=True, kw_only=True)
class SettingReply(Message):
    TYPE = "setting-reply"
    request: int = counter()
    ok: bool = False
    text: str = field(default="", metadata=bounded(4096))
    settings: dict[str, str] = field(default_factory=dict, metadata=bounded(64))


@message
@dataclass(frozen=True, kw_only=True)
class TransfersRequest(Message):
    TYPE = "transfers-request"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class TransfersReply(Message):
    """Running sends, one map per transfer (id, file, peer, mode, bytes...)."""

    TYPE = "transfers-reply"
    request: int = counter()
    transfers: list[dict[str, str]] = field(metadata=bounded(1024))
