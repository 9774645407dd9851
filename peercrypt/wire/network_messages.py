"""Messages of discovery (gossip membership) and health monitoring.

Control plane (node <-> node, over CURVE, through the peer's gateway):

- ``Gossip``: one push-pull exchange. ``records`` are signed membership
  records (:class:`peercrypt.core.membership.MemberRecord` wire bytes),
  ``digest`` summarises the sender's table (:func:`pack_digest`). With
  ``reply`` the receiver answers ``GossipReply`` carrying the records the
  sender lacks and its own digest; the initiator then pushes, in a final
  ``Gossip`` without ``reply``, what the answerer lacks. ``origin`` is the
  sender's node id; the gateway-verified CURVE key must be the X25519 key
  derived from it, or the whole message is dropped.
- Health probes use the existing ``Ping``/``Pong`` (periodic) and
  ``Hello``/``HelloReply`` (one-shot checks, which also name the peer).

Local (actor <-> actor, CLI <-> node): membership updates for the health
monitor, its verdicts and scores for discovery, and the requests behind
``peers``, ``join``, ``health-check``, ``reconnect`` and ``gossip``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from peercrypt.core.member_state import ORDER, MemberState
from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.fields import code, counter, fixed, port, reason

NODE_ID = 32
MAX_GOSSIP_RECORDS = 512
MAX_RECORD_WIRE = 4096  # per record on the wire; the table's own bound is smaller
MAX_DIGEST = 512
DIGEST_ENTRY = struct.Struct(">32sQB8s")  # node id, incarnation, state rank, tag
MAX_PEERS_LISTED = 512


def pack_digest_entry(node_id: bytes, incarnation: int, state: str, tag: bytes) -> bytes:
    """One digest entry as fixed-size bytes (49 bytes)."""
    return DIGEST_ENTRY.pack(node_id, incarnation, MemberState(state).rank, tag)


def unpack_digest_entry(data: bytes) -> tuple[bytes, int, str, bytes]:
    """Inverse of :func:`pack_digest_entry`. Raises ValueError on bad input."""
    if len(data) != DIGEST_ENTRY.size:
        raise ValueError("digest entry has the wrong size")
    node_id, incarnation, rank, tag = DIGEST_ENTRY.unpack(data)
    if rank >= len(ORDER):
        raise ValueError("digest entry has an unknown state")
    return node_id, incarnation, ORDER[rank], tag


def _request() -> dict[str, int]:
    return bounded(2**62)


# ---- control plane ------------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class Gossip(Message):
    TYPE = "gossip"
    origin: bytes = fixed(NODE_ID)
    records: list[bytes] = field(metadata=bounded(MAX_GOSSIP_RECORDS))
    digest: list[bytes] = field(metadata=bounded(MAX_DIGEST))
    reply: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class GossipReply(Message):
    TYPE = "gossip-reply"
    origin: bytes = fixed(NODE_ID)
    records: list[bytes] = field(metadata=bounded(MAX_GOSSIP_RECORDS))
    digest: list[bytes] = field(metadata=bounded(MAX_DIGEST))


# ---- local: between actors ------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class LocalPort(Message):
    """Gateway -> discovery: the public port actually bound (``--port 0``)."""

    TYPE = "local-port"
    port: int = port()


@message
@dataclass(frozen=True, kw_only=True)
class MemberUpdate(Message):
    """Discovery -> health: a member's current state and control endpoint."""

    TYPE = "member-update"
    node_id: bytes = fixed(NODE_ID)
    state: str = field(metadata=bounded(16, 1))
    incarnation: int = field(metadata=bounded(2**63 - 1))
    url: str = field(metadata=bounded(300))


@message
@dataclass(frozen=True, kw_only=True)
class MemberGone(Message):
    """Discovery -> health: a member expired from the table."""

    TYPE = "member-gone"
    node_id: bytes = fixed(NODE_ID)


@message
@dataclass(frozen=True, kw_only=True)
class HealthVerdict(Message):
    """Health -> discovery: the local failure detector's verdict changed
    ("suspect", "dead") or a suspect/dead member answered ("alive")."""

    TYPE = "health-verdict"
    node_id: bytes = fixed(NODE_ID)
    state: str = field(metadata=bounded(16, 1))


@message
@dataclass(frozen=True, kw_only=True)
class Scores(Message):
    """Health -> discovery: reliability scores, for choosing gossip targets."""

    TYPE = "scores"
    node_ids: list[bytes] = field(metadata=bounded(MAX_PEERS_LISTED))
    values: list[float] = field(metadata=bounded(MAX_PEERS_LISTED))


@message
@dataclass(frozen=True, kw_only=True)
class Proven(Message):
    """Health -> discovery, every round (a discovery restarted learns it
    again): the members whose identity answered at an address, and that
    address (``urls``, one each: a record alone is a claim, and a member
    proven at one address may sign a record of another). Discovery keeps
    only these, where their record still names that address, for the
    rejoin after a restart (peercrypt/members_file.py). A message of its
    own, not a field of Scores: an attached actor of the build before
    drops it as unknown."""

    TYPE = "proven"
    node_ids: list[bytes] = field(metadata=bounded(MAX_PEERS_LISTED))
    urls: list[str] = field(metadata=bounded(MAX_PEERS_LISTED))


@message
@dataclass(frozen=True, kw_only=True)
class TransferOutcome(Message):
    """Control -> health: how a send to HOST:PORT ended."""

    TYPE = "transfer-outcome"
    host: str = field(metadata=bounded(255, 1))
    port: int = port()
    ok: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class SendProven(Message):
    """Sender -> control, just before send ``request``'s result "ok": the
    identity whose X25519 key is ``key`` verified it (under the keys of the
    handshake it finished), so the success is that identity's, whatever
    address the user named it by. Messages of their own, not fields of
    SendResult and TransferOutcome: an actor of the build before drops them
    as unknown (its sends are then scored by address, and a health actor of
    that build attached to a newer node scores no verified send)."""

    TYPE = "send-proven"
    request: int = counter()
    key: bytes = fixed(NODE_ID)


@message
@dataclass(frozen=True, kw_only=True)
class ProvenOutcome(Message):
    """Control -> health: a send that the identity whose X25519 key is
    ``key`` verified (:class:`SendProven`): a success of that identity's (a
    failure is scored by its address: :class:`TransferOutcome`)."""

    TYPE = "proven-outcome"
    key: bytes = fixed(NODE_ID)


# ---- local: CLI <-> node ----------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class PeersRequest(Message):
    TYPE = "peers-request"
    request: int = field(metadata=_request())


@message
@dataclass(frozen=True, kw_only=True)
class PeersReply(Message):
    """One map per peer: id, address, state, rtt_ms, failures, reliability,
    last_seen (seconds ago), incarnation, transfers_ok, transfers_failed,
    proven (``yes``: its identity answered at that address)."""

    TYPE = "peers-reply"
    request: int = field(metadata=_request())
    peers: list[dict[str, str]] = field(metadata=bounded(MAX_PEERS_LISTED))


@message
@dataclass(frozen=True, kw_only=True)
class JoinRequest(Message):
    TYPE = "join-request"
    request: int = field(metadata=_request())
    host: str = field(metadata=bounded(255, 1))
    port: int = port()


@message
@dataclass(frozen=True, kw_only=True)
class JoinResult(Message):
    """``code`` "ok" or a failure code (see :mod:`peercrypt.errors`).
    ``members``: the records held, this node's and gone members' included;
    ``live``: the other members alive or suspect, ``gone``: those dead or
    left (kept until they expire)."""

    TYPE = "join-result"
    request: int = field(metadata=_request())
    code: str = code()
    reason: str = reason()
    members: int = field(default=0, metadata=bounded(2**31))
    live: int = field(default=0, metadata=bounded(2**31))
    gone: int = field(default=0, metadata=bounded(2**31))


@message
@dataclass(frozen=True, kw_only=True)
class CheckRequest(Message):
    """Health-check HOST:PORT now (one-shot, with retries). ``reconnect``
    also drops and rebuilds the connection of the member at that address;
    ``budget`` (seconds, 0 = none) bounds the whole check."""

    TYPE = "check-request"
    request: int = field(metadata=_request())
    host: str = field(metadata=bounded(255, 1))
    port: int = port()
    reconnect: bool = False
    budget: float = 0.0


MAX_MEMBERS_AT = 16  # fingerprints of members at one address, in a MembersAtReply
MAX_ADDRESSES = 64  # addresses in one MembersAtRequest (a multicast's targets)


@message
@dataclass(frozen=True, kw_only=True)
class CheckResult(Message):
    TYPE = "check-result"
    request: int = field(metadata=_request())
    code: str = code()
    reason: str = reason()
    rtt: float = 0.0
    fingerprint: str = field(default="", metadata=bounded(64))
    attempts: int = field(default=0, metadata=bounded(1000))
    version: str = field(default="", metadata=bounded(32))  # the peer's, as its proof signs it


@message
@dataclass(frozen=True, kw_only=True)
class MembersAtRequest(Message):
    """control -> health: which members' own signed records list an endpoint
    at each of these ``HOST:PORT`` addresses (a send's or a multicast's targets)."""

    TYPE = "members-at-request"
    request: int = field(metadata=_request())
    addresses: list[str] = field(metadata=bounded(MAX_ADDRESSES))


@message
@dataclass(frozen=True, kw_only=True)
class MembersAtReply(Message):
    """health -> control: address -> fingerprints (addresses no record lists are left out)."""

    TYPE = "members-at-reply"
    request: int = field(metadata=_request())
    members: dict[str, list[str]] = field(metadata=bounded(MAX_ADDRESSES))


REPAIR_DOMAIN = b"peercrypt-repair"  # the ZAP domain of a node's multicast repair port
MAX_REPAIR_SENDERS = 64


@message
@dataclass(frozen=True, kw_only=True)
class RepairSenders(Message):
    """mreceiver -> admission: the addresses the repair port admits (the
    senders of the running multicast sessions); every other connection to it
    is refused in the ZAP handshake, before it can queue a frame."""

    TYPE = "repair-senders"
    hosts: list[str] = field(metadata=bounded(MAX_REPAIR_SENDERS))


@message
@dataclass(frozen=True, kw_only=True)
class GossipControl(Message):
    """``mode``: "on", "off", "interval" (with ``interval``) or "show"."""

    TYPE = "gossip-control"
    request: int = field(metadata=_request())
    mode: str = field(metadata=bounded(16, 1))
    interval: float = 0.0


@message
@dataclass(frozen=True, kw_only=True)
class GossipState(Message):
    """Gossip's state; the members counted as in :class:`JoinResult`."""

    TYPE = "gossip-state"
    request: int = field(metadata=_request())
    enabled: bool = True
    interval: float = 0.0
    members: int = field(default=0, metadata=bounded(2**31))
    live: int = field(default=0, metadata=bounded(2**31))
    gone: int = field(default=0, metadata=bounded(2**31))
