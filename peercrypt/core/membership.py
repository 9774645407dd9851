"""Authenticated membership table for SWIM-style gossip.

Pure: nothing here reads a clock, sleeps, opens a socket or starts a thread.
Times are seconds as floats passed in as ``now``; they are only compared with
each other (for expiry), never put on the wire or signed.

Design rules
------------

Identity.  A node's identity (``node_id``) is its 32-byte **Ed25519 verify
key**.  Records are therefore self-certifying: a signature is checked against
a key that *is* the claimed identity, so there is no trust-on-first-use state
whose outcome would depend on the order in which records arrive (which would
break the merge laws below).  The X25519 key used for encryption is derived
from the identity with :func:`x25519_public_key`
(``crypto_sign_ed25519_pk_to_curve25519``); the user-facing fingerprint is
derived elsewhere.

Records.  A :class:`MemberRecord` says "node ``node_id`` at incarnation ``i``
is ``state``" and is signed with Ed25519 by ``origin``:

* ``alive`` and ``left`` are statements of a node about *itself*; they must be
  signed by the subject (``origin == node_id``) and carry its endpoints.  Only
  the owner ever bumps its incarnation.
* ``suspect`` and ``dead`` are claims of an *observer* about another node
  (``origin != node_id``); they carry the subject's incarnation and no
  endpoints, and are authenticated to the observer, not to the subject.

Admission (which keys may gossip at all) is the transport's job; this table
only guarantees that every record it stores is authentic to its ``origin``.

Canonical signing bytes are the msgpack encoding of the fixed-order array
``[DOMAIN, node_id, incarnation, state, [[name, url], ...sorted by name],
origin]``.  The wire form is ``[WIRE_VERSION, node_id, incarnation, state,
endpoints, origin, signature]``.

Precedence (SWIM rules).  Records about one node are totally ordered by
``(incarnation, rank(state), signing_bytes, signature)`` with ranks
``alive < suspect < dead < left``.  This yields exactly the SWIM rules:
alive(i) beats suspect(j) iff i > j; suspect(i) beats alive(j) iff i >= j;
dead(i) beats alive/suspect(j) for j <= i; left(i) is final for incarnation
i (only a higher incarnation, i.e. a rejoin, overrides it).  The trailing
bytes are a deterministic tie-break between distinct records with the same
incarnation and state (two observers suspecting the same node).

Claims never outrun their subject.  An observer claim counts only at or below
the incarnation of the subject's own greatest signed record: a claim above it
is kept (it is still the greatest claim) but inert, so the subject's own
record stays current, and a member holding the network key cannot make a
live node unrefutably dead by signing ``dead`` at the largest incarnation.
A claim about *us* above our own incarnation is rejected (``CLAIM_AHEAD``)
and asks for no refutation, so no claim can push our incarnation anywhere;
:meth:`MembershipTable.refute` never overflows (at the largest incarnation
it keeps the local record).

Merge laws.  For every node the table keeps the greatest subject-signed record
(``own``, source of the endpoints) and the greatest observer claim (``claim``),
the latter only while it beats ``own``.  Both are maxima, so merging a set of
valid records is commutative, associative and idempotent: the resulting
table does not depend on order or grouping, as long as ``max_members`` is not
reached (a full table rejects newcomers, first come first served, rather than
evicting known members).

Records about the table's own node never change it: a record that would beat
the local one (someone suspects us, or holds a newer record from a previous
run of ours) is rejected with ``ABOUT_SELF`` and makes :attr:`needs_refute`
true; :meth:`MembershipTable.refute` then re-signs ``alive`` at an
incarnation above every such record.

Expiry.  ``dead``/``left`` members keep being gossiped for ``forget_after``
seconds (default 300 s) after their last change, then :meth:`expire` drops
them, keeping a tombstone ``(incarnation, state)`` for ``tombstone_ttl``
seconds (default 24 h, at most ``max_members`` tombstones) so that replays of
their old records are still rejected as stale.

Bounds.  A record larger than ``max_record_bytes`` (wire size) is rejected
before it is parsed or verified; the table holds at most ``max_members``
members including itself; :meth:`records` and :meth:`records_for` can be
limited by count and total wire bytes.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import msgpack
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from peercrypt.core.address import split_host_port, visible_ascii
from peercrypt.core.member_state import MemberState

DOMAIN = b"peercrypt/member-record/v1"
WIRE_VERSION = 1
NODE_ID_BYTES = 32
SIGNATURE_BYTES = 64
MAX_INCARNATION = 2**63 - 1
DEFAULT_MAX_MEMBERS = 256
DEFAULT_MAX_RECORD_BYTES = 1024
DEFAULT_FORGET_AFTER = 300.0
DEFAULT_TOMBSTONE_TTL = 24 * 3600.0
_TAG_BYTES = 8


#: States a node may only assert about itself (signed by the subject).
SELF_SIGNED_STATES = frozenset({MemberState.ALIVE, MemberState.LEFT})


def x25519_public_key(node_id: bytes) -> bytes:
    """Return the X25519 public key derived from an Ed25519 ``node_id``.

    Raises ``ValueError`` if ``node_id`` is not a valid Ed25519 public key.
    """
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_BYTES:
        raise ValueError("node_id must be 32 bytes")
    try:
        return crypto_sign_ed25519_pk_to_curve25519(node_id)
    except (CryptoError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError("node_id is not a valid Ed25519 public key") from exc


def _check_endpoint(name: object, url: object) -> None:
    # Printable ASCII without blanks only: the address is shown to users
    # (`peers`, `top`, the shell), and a control character in it would reach
    # their terminals from a record its subject alone signed.
    if not isinstance(name, str) or not visible_ascii(name):
        raise ValueError("endpoint name must be a non-empty string of visible ASCII")
    if not isinstance(url, str) or not url.isascii() or not url.startswith("tcp://"):
        raise ValueError(f"endpoint {name!r} must be a 'tcp://host:port' string")
    if not visible_ascii(url):
        raise ValueError(f"endpoint {name!r} holds a blank or a control character")
    try:
        split_host_port(url, scheme="tcp")
    except ValueError:
        raise ValueError(
            f"endpoint {name!r} must be 'tcp://host:port' with 1 <= port <= 65535"
        ) from None


def _signing_bytes(
    node_id: bytes,
    incarnation: int,
    state: MemberState,
    endpoints: Mapping[str, str],
    origin: bytes,
) -> bytes:
    pairs = [[name, endpoints[name]] for name in sorted(endpoints)]
    packed: bytes = msgpack.packb(
        [DOMAIN, node_id, incarnation, state.value, pairs, origin], use_bin_type=True
    )
    return packed


@dataclass(frozen=True)
class MemberRecord:
    """One signed statement about a node's liveness.

    Construction validates the structure (lengths, incarnation range, endpoint
    syntax, which states must be self-signed) and raises ``ValueError`` on any
    violation; it does *not* check the signature (see :meth:`verify`), so
    forged records can be represented and rejected by the table.
    """

    node_id: bytes
    incarnation: int
    state: MemberState
    endpoints: Mapping[str, str] = field(hash=False)
    origin: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, bytes) or len(self.node_id) != NODE_ID_BYTES:
            raise ValueError("node_id must be 32 bytes")
        if not isinstance(self.origin, bytes) or len(self.origin) != NODE_ID_BYTES:
            raise ValueError("origin must be 32 bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("signature must be 64 bytes")
        if (
            isinstance(self.incarnation, bool)
            or not isinstance(self.incarnation, int)
            or not 0 <= self.incarnation <= MAX_INCARNATION
        ):
            raise ValueError(f"incarnation must be an int in [0, {MAX_INCARNATION}]")
        object.__setattr__(self, "state", MemberState(self.state))
        if not isinstance(self.endpoints, Mapping):
            raise ValueError("endpoints must be a mapping of name -> 'tcp://host:port'")
        for name, url in self.endpoints.items():
            _check_endpoint(name, url)
        frozen = MappingProxyType({name: self.endpoints[name] for name in sorted(self.endpoints)})
        object.__setattr__(self, "endpoints", frozen)
        if self.state in SELF_SIGNED_STATES:
            if self.origin != self.node_id:
                raise ValueError(f"a {self.state} record must be signed by its subject")
        else:
            if self.origin == self.node_id:
                raise ValueError(f"a {self.state} record must be signed by an observer")
            if self.endpoints:
                raise ValueError(f"a {self.state} record carries no endpoints")

    @classmethod
    def create(
        cls,
        signing_key: SigningKey,
        node_id: bytes,
        incarnation: int,
        state: MemberState,
        endpoints: Mapping[str, str] | None = None,
    ) -> MemberRecord:
        """Build and sign a record; ``origin`` is ``signing_key``'s verify key.

        Raises ``ValueError`` if the fields are malformed (see the class doc),
        e.g. an ``alive`` record about another node.
        """
        origin = bytes(signing_key.verify_key)
        eps = dict(endpoints or {})
        for name, url in eps.items():
            _check_endpoint(name, url)
        body = _signing_bytes(node_id, incarnation, MemberState(state), eps, origin)
        signature = signing_key.sign(body).signature
        return cls(node_id, incarnation, MemberState(state), eps, origin, signature)

    @cached_property
    def signing_bytes(self) -> bytes:
        """Canonical bytes covered by the signature."""
        return _signing_bytes(
            self.node_id, self.incarnation, self.state, self.endpoints, self.origin
        )

    @cached_property
    def precedence(self) -> tuple[int, int, bytes, bytes]:
        """Total-order key; the greater record wins (see module doc)."""
        return (self.incarnation, self.state.rank, self.signing_bytes, self.signature)

    def supersedes(self, other: MemberRecord) -> bool:
        """True if this record wins over ``other`` (same subject assumed)."""
        return self.precedence > other.precedence

    def verify(self) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature by ``origin``."""
        try:
            VerifyKey(self.origin).verify(self.signing_bytes, self.signature)
        except (CryptoError, ValueError, TypeError):
            return False
        return True

    def to_wire(self) -> bytes:
        """Encode as a msgpack array (see module doc)."""
        return self._wire

    @cached_property
    def _wire(self) -> bytes:
        # Once per record: gossip, digests and every answer to a member ask
        # for it again (a reply re-encoded the whole table each time).
        pairs = [[name, url] for name, url in self.endpoints.items()]
        packed: bytes = msgpack.packb(
            [
                WIRE_VERSION,
                self.node_id,
                self.incarnation,
                self.state.value,
                pairs,
                self.origin,
                self.signature,
            ],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def from_wire(cls, data: bytes) -> MemberRecord:
        """Decode :meth:`to_wire` output.

        Raises ``ValueError`` if ``data`` is not a well-formed record.  The
        signature is not checked here.
        """
        try:
            obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:  # msgpack raises a variety of types on garbage
            raise ValueError("record is not valid msgpack") from exc
        if not isinstance(obj, list) or len(obj) != 7 or obj[0] != WIRE_VERSION:
            raise ValueError("record must be a 7-element array with a known version")
        _, node_id, incarnation, state, pairs, origin, signature = obj
        if not isinstance(state, str) or state not in MemberState._value2member_map_:
            raise ValueError("unknown member state")
        if not isinstance(pairs, list):
            raise ValueError("endpoints must be an array of [name, url] pairs")
        endpoints: dict[str, str] = {}
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("endpoints must be an array of [name, url] pairs")
            name, url = pair
            _check_endpoint(name, url)
            if name in endpoints:
                raise ValueError(f"duplicate endpoint {name!r}")
            endpoints[name] = url
        return cls(node_id, incarnation, MemberState(state), endpoints, origin, signature)


class RejectReason(enum.StrEnum):
    """Why :meth:`MembershipTable.merge` refused a record."""

    OVERSIZE = "oversize"  # wire size above max_record_bytes (not parsed further)
    MALFORMED = "malformed"  # undecodable or structurally invalid bytes
    BAD_SIGNATURE = "bad_signature"  # signature does not verify against origin
    STALE = "stale"  # not newer than what the table holds: old incarnation or replay
    TOO_MANY_MEMBERS = "too_many_members"  # new node while the table is full
    ABOUT_SELF = "about_self"  # would override our own record: refute instead
    CLAIM_AHEAD = "claim_ahead"  # a claim about us above our own incarnation


@dataclass(frozen=True)
class Rejection:
    """A refused input; ``record`` is None when it could not be decoded."""

    record: MemberRecord | None
    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True)
class MergeResult:
    """Outcome of one :meth:`MembershipTable.merge` call.

    ``changed`` lists the records that were stored, in input order;
    ``duplicates`` counts records identical to ones already held;
    ``refute_needed`` is true if some record in this batch threatened our
    own record (see :attr:`MembershipTable.needs_refute`).
    """

    changed: tuple[MemberRecord, ...]
    rejected: tuple[Rejection, ...]
    duplicates: int
    refute_needed: bool


@dataclass(frozen=True)
class Member:
    """Read-only view of one member.

    ``record`` is the deciding record (greatest known); ``endpoints`` come from
    the greatest record signed by the member itself (empty if none is known).
    """

    node_id: bytes
    state: MemberState
    incarnation: int
    endpoints: Mapping[str, str] = field(hash=False)
    record: MemberRecord
    updated_at: float


@dataclass(frozen=True)
class DigestEntry:
    """Summary of one member for push-pull anti-entropy.

    ``tag`` is a short hash of the records held for the member so that two
    tables agreeing on ``(incarnation, state)`` but holding different records
    still exchange them.
    """

    incarnation: int
    state: MemberState
    tag: bytes

    def __post_init__(self) -> None:
        """Normalise ``state``; raises ``ValueError`` for an unknown state."""
        object.__setattr__(self, "state", MemberState(self.state))


@dataclass
class _Entry:
    own: MemberRecord | None
    claim: MemberRecord | None
    updated_at: float
    # Its digest entry for the records it held when last asked (compared by
    # identity: merge replaces a record, never changes one).
    _summary: tuple[MemberRecord | None, MemberRecord | None, DigestEntry] | None = None

    @property
    def current(self) -> MemberRecord:
        if self.own is None:
            assert self.claim is not None
            return self.claim
        claim = self.claim
        if (
            claim is not None
            and claim.incarnation <= self.own.incarnation
            and claim.supersedes(self.own)
        ):
            return claim
        return self.own

    def held(self) -> list[MemberRecord]:
        return [r for r in (self.own, self.claim) if r is not None]

    def tag(self) -> bytes:
        return self.summary().tag

    def summary(self) -> DigestEntry:
        """Its digest entry: made again only once its records changed."""
        known = self._summary
        if known is not None and known[0] is self.own and known[1] is self.claim:
            return known[2]
        blob = b"".join(sorted(r.to_wire() for r in self.held()))
        tag = hashlib.blake2b(blob, digest_size=_TAG_BYTES).digest()
        cur = self.current
        summary = DigestEntry(cur.incarnation, cur.state, tag)
        self._summary = (self.own, self.claim, summary)
        return summary


class MembershipTable:
    """The local view of the cluster, owned by one node.

    ``signing_key`` is the node's Ed25519 key; its verify key is ``self_id``.
    Raises ``ValueError`` if a bound is not positive or the local record does
    not fit in ``max_record_bytes``.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        endpoints: Mapping[str, str],
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        incarnation: int = 0,
        forget_after: float = DEFAULT_FORGET_AFTER,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        if max_members < 1:
            raise ValueError("max_members must be >= 1 (the table holds itself)")
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be >= 1")
        if forget_after < 0 or tombstone_ttl < 0:
            raise ValueError("forget_after and tombstone_ttl must be >= 0")
        self._key = signing_key
        self._self_id = bytes(signing_key.verify_key)
        self._endpoints = dict(endpoints)
        self.max_members = max_members
        self.max_record_bytes = max_record_bytes
        self.forget_after = forget_after
        self.tombstone_ttl = tombstone_ttl
        self._local = self._sign_self(incarnation, MemberState.ALIVE)
        self._local_entry = _Entry(self._local, None, float("inf"))  # (its tag, for digests)
        self._threat: MemberRecord | None = None
        self._entries: dict[bytes, _Entry] = {}
        self._tombstones: dict[bytes, tuple[tuple[int, int], float]] = {}
        self._rejections: dict[RejectReason, int] = dict.fromkeys(RejectReason, 0)

    # ------------------------------------------------------------------ views

    @property
    def self_id(self) -> bytes:
        """Our identity: the Ed25519 verify key."""
        return self._self_id

    @property
    def needs_refute(self) -> bool:
        """True if a received record about us beats our local record."""
        return self._threat is not None and self._threat.supersedes(self._local)

    @property
    def rejection_counts(self) -> dict[RejectReason, int]:
        """Cumulative count of rejected records per reason (a copy)."""
        return dict(self._rejections)

    def local_record(self) -> MemberRecord:
        """Our own current signed record."""
        return self._local

    def __len__(self) -> int:
        """Number of members held, including ourselves."""
        return len(self._entries) + 1

    def __contains__(self, node_id: object) -> bool:
        return node_id == self._self_id or node_id in self._entries

    def member(self, node_id: bytes) -> Member | None:
        """The view of ``node_id`` (ourselves included), or None if unknown."""
        if node_id == self._self_id:
            local = self._local
            return Member(
                node_id, local.state, local.incarnation, local.endpoints, local, float("-inf")
            )
        entry = self._entries.get(node_id)
        if entry is None:
            return None
        cur = entry.current
        endpoints: Mapping[str, str] = entry.own.endpoints if entry.own else MappingProxyType({})
        return Member(node_id, cur.state, cur.incarnation, endpoints, cur, entry.updated_at)

    def members(self) -> list[Member]:
        """All members (ourselves included), sorted by node_id."""
        ids = sorted([self._self_id, *self._entries])
        return [m for m in map(self.member, ids) if m is not None]

    def peers(
        self, states: Iterable[MemberState] = (MemberState.ALIVE, MemberState.SUSPECT)
    ) -> list[bytes]:
        """Node ids of other members whose current state is in ``states``, sorted."""
        wanted = frozenset(states)
        return sorted(n for n, e in self._entries.items() if e.current.state in wanted)

    # ------------------------------------------------------------------ merge

    def merge(self, records: Iterable[MemberRecord | bytes], now: float) -> MergeResult:
        """Merge records (objects or wire bytes) received by gossip.

        Each input is checked in this order: size (wire bytes above
        ``max_record_bytes`` -> OVERSIZE, before parsing), structure
        (MALFORMED), subject is us (CLAIM_AHEAD or STALE), tombstone or older
        than held (STALE), capacity for a new node (TOO_MANY_MEMBERS), a
        duplicate (no change), and only then the signature (BAD_SIGNATURE;
        ABOUT_SELF after it): a record that would change nothing costs no
        Ed25519 verification.  Never raises for bad input; every rejection is
        reported and counted in :attr:`rejection_counts`.
        """
        changed: list[MemberRecord] = []
        rejected: list[Rejection] = []
        duplicates = 0
        refute_needed = False
        for item in records:
            outcome = self._merge_one(item, now)
            if isinstance(outcome, Rejection):
                self._rejections[outcome.reason] += 1
                rejected.append(outcome)
                refute_needed = refute_needed or outcome.reason is RejectReason.ABOUT_SELF
            elif outcome is None:
                duplicates += 1
            else:
                changed.append(outcome)
        return MergeResult(tuple(changed), tuple(rejected), duplicates, refute_needed)

    def _merge_one(self, item: MemberRecord | bytes, now: float) -> MemberRecord | Rejection | None:
        if isinstance(item, bytes | bytearray | memoryview):
            raw = bytes(item)
            if len(raw) > self.max_record_bytes:
                return Rejection(None, RejectReason.OVERSIZE, f"{len(raw)} bytes")
            try:
                rec = MemberRecord.from_wire(raw)
            except ValueError as exc:
                return Rejection(None, RejectReason.MALFORMED, str(exc))
        else:
            rec = item
            size = len(rec.to_wire())
            if size > self.max_record_bytes:
                return Rejection(rec, RejectReason.OVERSIZE, f"{size} bytes")
        # Every check that needs no signature comes first: a record that would
        # change nothing (a duplicate, a stale one, a newcomer to a full table)
        # is rejected without an Ed25519 verification, so a member replaying
        # the same records costs the table no more than parsing them.
        if rec.node_id == self._self_id:
            return self._merge_about_self(rec)
        tomb = self._tombstones.get(rec.node_id)
        if tomb is not None and rec.precedence[:2] <= tomb[0]:
            return Rejection(rec, RejectReason.STALE, "forgotten member (tombstone)")
        entry = self._entries.get(rec.node_id)
        if entry is None:
            if len(self) >= self.max_members:
                return Rejection(rec, RejectReason.TOO_MANY_MEMBERS)
        elif rec.state in SELF_SIGNED_STATES:
            if rec == entry.own:
                return None
            if entry.own is not None and entry.own.supersedes(rec):
                return Rejection(rec, RejectReason.STALE, "older than held self-record")
        else:
            if rec == entry.claim or rec == entry.own:
                return None
            # The greatest claim is kept even while inert (above its
            # subject's incarnation), so the table stays a maximum.
            held = [r for r in (entry.own, entry.claim) if r is not None]
            if not all(rec.supersedes(r) for r in held):
                return Rejection(rec, RejectReason.STALE, "not newer than held record")
        if not rec.verify():
            return Rejection(rec, RejectReason.BAD_SIGNATURE)
        if tomb is not None:
            del self._tombstones[rec.node_id]
        if entry is None:
            own, claim = (rec, None) if rec.state in SELF_SIGNED_STATES else (None, rec)
            self._entries[rec.node_id] = _Entry(own, claim, now)
            return rec
        if rec.state in SELF_SIGNED_STATES:
            entry.own = rec
            if entry.claim is not None and rec.supersedes(entry.claim):
                entry.claim = None
        else:
            entry.claim = rec
        entry.updated_at = now
        return rec

    def _merge_about_self(self, rec: MemberRecord) -> Rejection | None:
        if rec == self._local:
            return None
        if rec.origin != self._self_id and rec.incarnation > self._local.incarnation:
            return Rejection(rec, RejectReason.CLAIM_AHEAD, f"{rec.state} at {rec.incarnation}")
        if not rec.supersedes(self._local):
            return Rejection(rec, RejectReason.STALE, "older than our own record")
        if not rec.verify():
            return Rejection(rec, RejectReason.BAD_SIGNATURE)
        if self._threat is None or rec.supersedes(self._threat):
            self._threat = rec
        return Rejection(rec, RejectReason.ABOUT_SELF, f"{rec.state} at {rec.incarnation}")

    # ------------------------------------------------------------ local acts

    def _sign_self(self, incarnation: int, state: MemberState) -> MemberRecord:
        rec = MemberRecord.create(self._key, self._self_id, incarnation, state, self._endpoints)
        if len(rec.to_wire()) > self.max_record_bytes:
            raise ValueError("local record exceeds max_record_bytes")
        return rec

    def refute(self, now: float) -> MemberRecord:
        """Re-assert ``alive`` at an incarnation above every claim about us.

        The new incarnation is ``max(local, highest threatening record) + 1``.
        Also used to rejoin after :meth:`mark_left`.  Returns the new local
        record (to be gossiped).  Never raises: at the largest incarnation
        (only a record we signed ourselves can be there) the local record is
        kept as it is.
        """
        del now  # refutation does not depend on time; kept for a uniform API
        top = self._local.incarnation
        if self._threat is not None:
            top = max(top, self._threat.incarnation)
        if top >= MAX_INCARNATION:
            self._threat = None
            return self._local
        self._local = self._sign_self(top + 1, MemberState.ALIVE)
        self._threat = None
        return self._local

    def mark_left(self, now: float) -> MemberRecord:
        """Sign our graceful departure at the current incarnation and return it."""
        del now
        if self._local.state is not MemberState.LEFT:
            self._local = self._sign_self(self._local.incarnation, MemberState.LEFT)
        return self._local

    def _claim(self, node_id: bytes, state: MemberState, now: float) -> MemberRecord | None:
        if node_id == self._self_id:
            raise ValueError(f"cannot mark ourselves {state}; use refute() or mark_left()")
        entry = self._entries[node_id]
        cur = entry.current
        if cur.state.rank >= state.rank:
            return None
        claim = MemberRecord.create(self._key, node_id, cur.incarnation, state)
        outcome = self._merge_one(claim, now)
        return claim if outcome is claim else None

    def mark_suspect(self, node_id: bytes, now: float) -> MemberRecord | None:
        """Sign and store our suspicion of an ``alive`` member.

        Returns the claim to gossip, or None if the member is already
        suspect, dead or left.  Raises ``KeyError`` for an unknown member and
        ``ValueError`` for ourselves.
        """
        return self._claim(node_id, MemberState.SUSPECT, now)

    def mark_dead(self, node_id: bytes, now: float) -> MemberRecord | None:
        """Sign and store our declaration that a member is dead.

        Returns the claim to gossip, or None if it is already dead or left.
        Raises ``KeyError`` for an unknown member and ``ValueError`` for
        ourselves.
        """
        return self._claim(node_id, MemberState.DEAD, now)

    def expire(self, now: float) -> list[bytes]:
        """Forget dead/left members unchanged for ``forget_after`` seconds.

        Forgotten members leave a tombstone (rejecting replays of records not
        newer than their last state) for ``tombstone_ttl`` seconds; at most
        ``max_members`` tombstones are kept, oldest dropped first.  Returns
        the forgotten node ids, sorted.
        """
        gone = sorted(
            node_id
            for node_id, entry in self._entries.items()
            if entry.current.state in (MemberState.DEAD, MemberState.LEFT)
            and now - entry.updated_at >= self.forget_after
        )
        for node_id in gone:
            entry = self._entries.pop(node_id)
            prec = entry.current.precedence
            self._tombstones[node_id] = ((prec[0], prec[1]), now)
        for node_id, (_, since) in list(self._tombstones.items()):
            if now - since >= self.tombstone_ttl:
                del self._tombstones[node_id]
        excess = len(self._tombstones) - self.max_members
        if excess > 0:
            oldest = sorted(self._tombstones, key=lambda n: (self._tombstones[n][1], n))
            for node_id in oldest[:excess]:
                del self._tombstones[node_id]
        return gone

    # ---------------------------------------------------------------- gossip

    def _local_as_entry(self) -> _Entry:
        if self._local_entry.own is not self._local:
            self._local_entry = _Entry(self._local, None, float("inf"))
        return self._local_entry

    def wire_bytes(self) -> int:
        """Wire bytes of every record held, ours included: the most that
        :meth:`records_for` can give, however little the asker holds."""
        held = sum(len(r.to_wire()) for e in self._entries.values() for r in e.held())
        return held + len(self._local.to_wire())

    def _ordered_entries(self) -> list[tuple[bytes, _Entry]]:
        return sorted(self._entries.items(), key=lambda kv: (-kv[1].updated_at, kv[0]))

    @staticmethod
    def _bounded(
        candidates: Iterable[MemberRecord], max_count: int | None, max_bytes: int | None
    ) -> list[MemberRecord]:
        out: list[MemberRecord] = []
        used = 0
        for rec in candidates:
            if max_count is not None and len(out) >= max_count:
                break
            size = len(rec.to_wire())
            if max_bytes is not None and used + size > max_bytes:
                continue
            out.append(rec)
            used += size
        return out

    def records(
        self, max_count: int | None = None, max_bytes: int | None = None
    ) -> list[MemberRecord]:
        """Records to push: our own first, then the most recently changed.

        For each member both its own signed record and a winning observer
        claim are included.  Records that would exceed ``max_bytes`` (total
        wire size) are skipped; at most ``max_count`` are returned.
        """
        candidates = [self._local]
        for _, entry in self._ordered_entries():
            candidates.extend(entry.held())
        return self._bounded(candidates, max_count, max_bytes)

    def digest(self) -> dict[bytes, DigestEntry]:
        """Compact summary of every member held (ourselves included)."""
        out = {self._self_id: self._local_as_entry().summary()}
        for node_id, entry in self._entries.items():
            out[node_id] = entry.summary()
        return out

    def records_for(
        self,
        digest: Mapping[bytes, DigestEntry],
        max_count: int | None = None,
        max_bytes: int | None = None,
    ) -> list[MemberRecord]:
        """Records a peer with ``digest`` lacks (pull half of push-pull).

        A member is sent if it is missing from ``digest``, if our deciding
        record is newer than the peer's ``(incarnation, state)``, or if both
        agree on that but hold different records (tag mismatch).  Bounded
        like :meth:`records`.
        """
        candidates: list[MemberRecord] = []
        ordered = [(self._self_id, self._local_as_entry())]
        ordered.extend(self._ordered_entries())
        for node_id, entry in ordered:
            theirs = digest.get(node_id)
            cur = entry.current
            if theirs is not None:
                ours_key = (cur.incarnation, cur.state.rank)
                their_key = (theirs.incarnation, theirs.state.rank)
                if ours_key < their_key:
                    continue
                if ours_key == their_key and theirs.tag == entry.tag():
                    continue
            candidates.extend(entry.held())
        return self._bounded(candidates, max_count, max_bytes)
