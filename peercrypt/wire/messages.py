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
from typing import Any

from peercrypt.core.bitmap import MAX_SACK_RANGES
from peercrypt.wire.codec import MAX_MESSAGE_BYTES, Message, bounded, message

TID_BYTES = 16
KEY_BYTES = 32
NONCE_BYTES = 12
HASH_BYTES = 32
MAX_NAME = 1024  # characters of a file name as offered; sanitised on receipt
MAX_CHUNKS = 2**40
# A control-plane message wrapped in Inbound/Outbound mail must still fit the
# codec's frame limit with its envelope.
MAX_WRAPPED = MAX_MESSAGE_BYTES - 1024


# Field makers (a dataclasses.field object must not be shared between classes).
def _tid() -> Any:
    return field(metadata=bounded(TID_BYTES, TID_BYTES))


def _key() -> Any:
    return field(metadata=bounded(KEY_BYTES, KEY_BYTES))


def _text() -> Any:
    return field(metadata=bounded(512))


# ---- control plane (node <-> node, over CURVE) ------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """Ask a node who it is."""

    TYPE = "hello"


@message
@dataclass(frozen=True, kw_only=True)
class HelloReply(Message):
    TYPE = "hello-reply"
    node_id: bytes = _key()
    version: str = _text()


@message
@dataclass(frozen=True, kw_only=True)
class Ping(Message):
    TYPE = "ping"
    seq: int = field(metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class Pong(Message):
    TYPE = "pong"
    seq: int = field(metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class Offer(Message):
    """A sender proposes a file. Travels inside CURVE, so name and size are
    encrypted on the wire."""

    TYPE = "offer"
    tid: bytes = _tid()
    name: str = field(metadata=bounded(MAX_NAME, 1))
    size: int = field(metadata=bounded(2**62))
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 1))
    eph_pub: bytes = _key()
    hash_alg: str = field(metadata=bounded(16, 1))


@message
@dataclass(frozen=True, kw_only=True)
class Accept(Message):
    """The receiver takes the offer. ``data_port`` is where chunks go (on the
    host the sender already reached, unless ``data_host`` names another);
    ``window`` is the initial credit in chunks; ``have`` lists ranges
    [start, end) already held (resume)."""

    TYPE = "accept"
    tid: bytes = _tid()
    eph_pub: bytes = _key()
    data_host: str = field(metadata=bounded(255))
    data_port: int = field(metadata=bounded(65535, 1))
    window: int = field(metadata=bounded(4096, 1))
    have: list[int] = field(metadata=bounded(2 * MAX_SACK_RANGES))


@message
@dataclass(frozen=True, kw_only=True)
class Refuse(Message):
    TYPE = "refuse"
    tid: bytes = _tid()
    code: str = field(metadata=bounded(32, 1))
    reason: str = _text()


@message
@dataclass(frozen=True, kw_only=True)
class ErrorReply(Message):
    """Answer to a control message the node could not take."""

    TYPE = "error"
    code: str = field(metadata=bounded(32, 1))
    reason: str = _text()


# ---- data plane (plain frames; payloads sealed with the transfer keys) ------


@message
@dataclass(frozen=True, kw_only=True)
class ChunkHeader(Message):
    """Header frame of a chunk; the next frame is the AES-GCM ciphertext.
    ``tid``, ``index`` and ``last`` are bound into the AAD."""

    TYPE = "chunk"
    tid: bytes = _tid()
    index: int = field(metadata=bounded(MAX_CHUNKS))
    last: bool = False
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class SealedHeader(Message):
    """Header frame of a sealed transfer-control message (next frame)."""

    TYPE = "sealed"
    tid: bytes = _tid()
    nonce: bytes = field(default=b"", metadata=bounded(NONCE_BYTES, NONCE_BYTES))


@message
@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """Receiver -> sender: every chunk below ``cumulative`` is written, plus
    the ranges in ``sack`` ([start, end) pairs); ``window`` is the credit."""

    TYPE = "ack"
    cumulative: int = field(metadata=bounded(MAX_CHUNKS))
    sack: list[int] = field(metadata=bounded(2 * MAX_SACK_RANGES))
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
    code: str = field(metadata=bounded(32, 1))
    reason: str = _text()


# ---- local: CLI <-> node control socket, actor <-> actor --------------------


@message
@dataclass(frozen=True, kw_only=True)
class SendRequest(Message):
    """Ask the node to send a file (CLI -> control -> sender)."""

    TYPE = "send-request"
    request: int = field(metadata=bounded(2**62))
    path: str = field(metadata=bounded(4096, 1))
    host: str = field(metadata=bounded(255, 1))
    port: int = field(metadata=bounded(65535, 1))
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 4096))
    timeout: float = 10.0


@message
@dataclass(frozen=True, kw_only=True)
class CancelRequest(Message):
    """Stop a send in progress (the CLI was interrupted)."""

    TYPE = "cancel-request"
    request: int = field(metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class Progress(Message):
    TYPE = "progress"
    request: int = field(metadata=bounded(2**62))
    done_bytes: int = field(metadata=bounded(2**62))
    total_bytes: int = field(metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class SendResult(Message):
    """Outcome of a send. ``code`` is "ok" or a failure code (see
    :mod:`peercrypt.errors`); ``digest`` is the verified BLAKE3 hash."""

    TYPE = "send-result"
    request: int = field(metadata=bounded(2**62))
    code: str = field(metadata=bounded(32, 1))
    reason: str = _text()
    size: int = field(metadata=bounded(2**62))
    digest: bytes = field(metadata=bounded(HASH_BYTES))
    stored_as: str = field(metadata=bounded(MAX_NAME))
    seconds: float = 0.0
    retransmits: int = field(default=0, metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class StatusRequest(Message):
    TYPE = "status-request"
    request: int = field(metadata=bounded(2**62))


@message
@dataclass(frozen=True, kw_only=True)
class StatusReply(Message):
    """The node's status as a flat map of counters and facts (msgpack-able)."""

    TYPE = "status-reply"
    request: int = field(metadata=bounded(2**62))
    node: dict[str, str] = field(metadata=bounded(64))
    counters: dict[str, int] = field(metadata=bounded(256))


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
