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

from peercrypt.local_ipc import MAX_HOST_TAG
from peercrypt.local_ipc import MAX_PATH as MAX_IPC_PATH
from peercrypt.shm_ring import MAX_PATH as MAX_RING_PATH
from peercrypt.shm_ring import MAX_SLOTS as MAX_RING_SLOTS
from peercrypt.shm_ring import TOKEN_BYTES as RING_TOKEN_BYTES
from peercrypt.wire.codec import MAX_MESSAGE_BYTES, Message, bounded, message
from peercrypt.wire.fields import code, counter, fixed, port, ranges, reason
from peercrypt.wire.local_messages import HASH_BYTES as HASH_BYTES
from peercrypt.wire.local_messages import MAX_NAME as MAX_NAME
from peercrypt.wire.local_messages import MAX_STATUS_COUNTERS as MAX_STATUS_COUNTERS
from peercrypt.wire.local_messages import PHASES as PHASES
from peercrypt.wire.local_messages import CancelRequest as CancelRequest
from peercrypt.wire.local_messages import ErrorReply as ErrorReply
from peercrypt.wire.local_messages import McTargetProgress as McTargetProgress
from peercrypt.wire.local_messages import Progress as Progress
from peercrypt.wire.local_messages import Progresses as Progresses
from peercrypt.wire.local_messages import SendRequest as SendRequest
from peercrypt.wire.local_messages import SendResult as SendResult
from peercrypt.wire.local_messages import StatusReply as StatusReply
from peercrypt.wire.local_messages import StatusRequest as StatusRequest
from peercrypt.wire.local_messages import StatusWait as StatusWait

TID_BYTES = 16
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_DETAILS = 8 * 1024  # a sealed OfferDetails (its name at 4 bytes per character, + tag)
MAX_CHUNKS = 2**40
MAX_ROUTE_ID = 64  # a data connection's routing id (ZeroMQ allows 255)
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
    continue a kept part. ``chunk_size``: the largest chunk the sender
    cuts; ``min_chunk`` the smallest (0: ``chunk_size`` only). The receiver
    chooses one in between (``Accept.chunk_size``)."""

    TYPE = "offer-details"
    name: str = field(metadata=bounded(MAX_NAME, 1))
    size: int = counter()
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 1))
    min_chunk: int = field(default=0, metadata=bounded(64 * 1024 * 1024))
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
    sender checks both before its first chunk. ``data_ipc`` and ``host_tag``
    (optional): the receiver's Unix data socket and its host's identity
    keyed with the transfer id (not the identity itself); a
    sender on the same host may send chunks there instead
    (peercrypt/local_ipc.py). ``data_ring``, ``ring_token`` and
    ``ring_slots`` (optional, under the same host tag): a ring of chunk
    slots in shared memory such a sender may seal its chunks into
    (peercrypt/shm_ring.py). ``chunk_size``: the chunk the receiver chose
    within what the offer allows (its ``min_chunk`` to its ``chunk_size``;
    0: the offer's ``chunk_size``); ``window`` and ``have`` count chunks of
    it. A sender fails the transfer on any other value."""

    TYPE = "accept"
    tid: bytes = fixed(TID_BYTES)
    eph_pub: bytes = fixed(KEY_BYTES)
    static_pub: bytes = fixed(KEY_BYTES)
    proof: bytes = fixed(KEY_BYTES)
    data_host: str = field(metadata=bounded(255))
    data_port: int = port()
    window: int = field(metadata=bounded(4096, 1))
    have: list[int] = ranges()
    data_ipc: str = field(default="", metadata=bounded(MAX_IPC_PATH))
    host_tag: str = field(default="", metadata=bounded(MAX_HOST_TAG))
    data_ring: str = field(default="", metadata=bounded(MAX_RING_PATH))
    ring_token: bytes = field(default=b"", metadata=bounded(RING_TOKEN_BYTES))
    ring_slots: int = field(default=0, metadata=bounded(MAX_RING_SLOTS))
    chunk_size: int = field(default=0, metadata=bounded(64 * 1024 * 1024))


@message
@dataclass(frozen=True, kw_only=True)
class Refuse(Message):
    TYPE = "refuse"
    tid: bytes = fixed(TID_BYTES)
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
class SlotHeader(Message):
    """A chunk sealed into the receiver's shared-memory ring (peercrypt/shm_ring.py)
    instead of a payload frame: a :class:`ChunkHeader` and the sequence number
    ``seq`` of its slot. A message holds one or more of them, one per frame."""

    TYPE = "slot"
    tid: bytes = fixed(TID_BYTES)
    index: int = field(metadata=bounded(MAX_CHUNKS))
    last: bool = False
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))
    seq: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class SealedHeader(Message):
    """Header frame of a sealed transfer-control message (next frame)."""

    TYPE = "sealed"
    tid: bytes = fixed(TID_BYTES)
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class Attach(Message):
    """Sender -> receiver, sealed with the transfer's keys, first on each
    data connection the sender shares among its transfers to that receiver
    (and again after the connection came back): frames of this transfer may
    come on the connection whose routing id is ``route`` from now on. Only
    taken on that very connection (``route`` is its id), so a copy raced
    from elsewhere attaches nothing (crypto/transfer.py, "Routes")."""

    TYPE = "attach"
    route: bytes = field(metadata=bounded(MAX_ROUTE_ID, 1))


@message
@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """Receiver -> sender: every chunk below ``cumulative`` is written, plus
    the ranges in ``sack`` ([start, end) pairs); ``window`` is the credit.
    ``released``: every slot of the shared-memory ring below this sequence
    number was copied out (peercrypt/core/slot_ring.py; 0 without a ring);
    an Ack goes for that alone after a read of the data socket that copied
    slots out, so it may repeat the other fields."""

    TYPE = "ack"
    cumulative: int = field(metadata=bounded(MAX_CHUNKS))
    sack: list[int] = ranges()
    window: int = field(metadata=bounded(4096))
    released: int = counter(default=0)


@message
@dataclass(frozen=True, kw_only=True)
class Done(Message):
    """Sender -> receiver: the whole-file hash, once every chunk was sent (right
    after the last one: held until every chunk is written) and again once all
    are acknowledged."""

    TYPE = "done"
    digest: bytes = field(metadata=bounded(HASH_BYTES, HASH_BYTES))
    chunks: int = field(metadata=bounded(MAX_CHUNKS))


@message
@dataclass(frozen=True, kw_only=True)
class Verifying(Message):
    """Receiver -> sender, sealed, in answer to each Done while its final
    check runs (re-reading the part, building a folder): still at it, so
    the sender's wait for the verdict starts again. ``done_bytes``: how
    much of the file the check has covered so far (its progress bar)."""

    TYPE = "verifying"
    chunks: int = field(metadata=bounded(MAX_CHUNKS))
    done_bytes: int = counter(default=0)


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
class CancelTransfer(Message):
    """CLI -> control: cancel running send ``transfer`` (an id from
    ``transfers``), whoever started it. Answered by a CancelAnswer once the
    node knows how the send ended (peercrypt.core.cancels)."""

    TYPE = "cancel-transfer"
    request: int = counter()
    transfer: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class CancelAnswer(Message):
    """Control -> CLI: how the send a CancelTransfer named ended
    (:class:`peercrypt.core.cancels.Outcome`: cancelled, ended on its own
    before the cancel came, not ended within the wait, unknown id); an
    ``ended`` one's result ``code`` and ``reason``."""

    TYPE = "cancel-answer"
    request: int = counter()
    outcome: str = field(metadata=bounded(16, 1))
    code: str = field(default="", metadata=bounded(32))
    reason: str = reason("")


@message
@dataclass(frozen=True, kw_only=True)
class CancelIncoming(Message):
    """CLI -> control -> receiver: cancel incoming transfer ``transfer`` (its
    id in ``status`` and ``top``, e.g. ``in3``); ``keep``: keep its part for
    a resume (else it is deleted). Answered by a SettingReply (``ok`` False:
    no such incoming transfer)."""

    TYPE = "cancel-incoming"
    request: int = counter()
    transfer: str = field(metadata=bounded(32, 1))
    keep: bool = False


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
class InboundTaken(Message):
    """Actor -> gateway: the bytes of ``Inbound`` payloads this actor has taken
    from its mailbox since it started (a running total, after each batch):
    the gateway hands an actor at most a bound of them not yet taken
    (``peercrypt/core/mail_credit.py``)."""

    TYPE = "inbound-taken"
    actor: str = field(metadata=bounded(32, 1))
    taken: int = counter()


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
    # Its chunks' size, if its receiver drops it when one takes too long (0: no).
    chunk_size: int = field(default=0, metadata=bounded(2**32))
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
class FlowRate(Message):
    """Scheduler -> sender: the flow's own rate from now (a live ``rate``;
    0: none), for its statistics. A message of its own: an actor attached
    from an older build drops it as unknown (its mail is decoded strictly, so
    a new field of FlowPacing would have cost it the pacing itself)."""

    TYPE = "flow-rate"
    request: int = counter()
    rate: int = counter()


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
    """Running sends, one map per transfer (id, file, peer, mode, bytes...).
    ``actor``: which actor listed them (to control); ``unanswered``: the
    actors whose sends are missing because they did not answer in time (an
    attached sender that is away), from control to its client."""

    TYPE = "transfers-reply"
    request: int = counter()
    transfers: list[dict[str, str]] = field(metadata=bounded(1024))
    actor: str = field(default="", metadata=bounded(32))
    unanswered: list[str] = field(default_factory=list, metadata=bounded(4))
