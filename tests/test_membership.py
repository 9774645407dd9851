"""Tests for peercrypt.core.membership: authentication, SWIM precedence, merge laws."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import defaultdict
from functools import cache

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import (
    MAX_INCARNATION,
    DigestEntry,
    MemberRecord,
    MembershipTable,
    RejectReason,
    x25519_public_key,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(6)]
IDS = [bytes(k.verify_key) for k in KEYS]
SELF_KEY = SigningKey(b"\x99" * 32)
SELF_ID = bytes(SELF_KEY.verify_key)
PROPS = settings(max_examples=40, deadline=None)


def eps(port: int) -> dict[str, str]:
    return {"control": f"tcp://10.0.0.1:{port}", "data": f"tcp://10.0.0.1:{port + 1}"}


def alive(i: int, inc: int, port: int = 7000) -> MemberRecord:
    return MemberRecord.create(KEYS[i], IDS[i], inc, ALIVE, eps(port))


def claim(observer: int, subject: int, inc: int, state: MemberState) -> MemberRecord:
    return MemberRecord.create(KEYS[observer], IDS[subject], inc, state)


def table(**kw: object) -> MembershipTable:
    return MembershipTable(SELF_KEY, eps(9000), **kw)  # type: ignore[arg-type]


def state_of(t: MembershipTable) -> tuple[list[bytes], bool]:
    return sorted(r.to_wire() for r in t.records()), t.needs_refute


# --------------------------------------------------------------- records


def test_record_roundtrip_and_verify() -> None:
    rec = alive(0, 3)
    assert rec.verify() is True
    assert rec.origin == IDS[0]
    back = MemberRecord.from_wire(rec.to_wire())
    assert back == rec
    assert back.precedence == rec.precedence
    assert dict(back.endpoints) == eps(7000)
    pairs = [["control", "tcp://10.0.0.1:7000"], ["data", "tcp://10.0.0.1:7001"]]
    canonical = [b"peercrypt/member-record/v1", IDS[0], 3, "alive", pairs, IDS[0]]
    assert rec.signing_bytes == msgpack.packb(canonical, use_bin_type=True)


def test_x25519_derivation_matches_signing_key() -> None:
    expected = bytes(KEYS[0].to_curve25519_private_key().public_key)
    assert x25519_public_key(IDS[0]) == expected
    with pytest.raises(ValueError):
        x25519_public_key(b"short")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": b"x" * 31},
        {"incarnation": -1},
        {"incarnation": MAX_INCARNATION + 1},
        {"incarnation": True},
        {"signature": b"s" * 63},
        {"origin": IDS[1]},  # alive signed by someone else
        {"endpoints": {"control": "udp://h:1"}},
        {"endpoints": {"control": "tcp://h:0"}},
        {"endpoints": {"control": "tcp://:80"}},
        {"endpoints": {"": "tcp://h:80"}},
        # A control character in an address a member signed for itself
        # would reach every user's `peers` and `top` (escape sequences).
        {"endpoints": {"control": "tcp://\x1b]0;title\x07h:80"}},
        {"endpoints": {"control": "tcp://h\x1b[2J:80"}},
        {"endpoints": {"control": "tcp://h\x7f:80"}},
        {"endpoints": {"control": "tcp://h\t:80"}},
        {"endpoints": {"control": "tcp://h :80"}},
        {"endpoints": {"contr\x1bol": "tcp://h:80"}},
    ],
)
def test_record_structure_is_validated(kwargs: dict[str, object]) -> None:
    rec = alive(0, 1)
    with pytest.raises(ValueError):
        dataclasses.replace(rec, **kwargs)  # type: ignore[arg-type]


def test_claims_must_come_from_observer_without_endpoints() -> None:
    with pytest.raises(ValueError):
        MemberRecord.create(KEYS[0], IDS[0], 1, SUSPECT)
    with pytest.raises(ValueError):
        MemberRecord.create(KEYS[1], IDS[0], 1, DEAD, eps(1))
    with pytest.raises(ValueError):
        MemberRecord.create(KEYS[1], IDS[0], 1, ALIVE, eps(1))


def test_endpoints_are_immutable_and_order_independent() -> None:
    a = MemberRecord.create(
        KEYS[0], IDS[0], 1, ALIVE, {"data": "tcp://h:2", "control": "tcp://h:1"}
    )
    b = MemberRecord.create(
        KEYS[0], IDS[0], 1, ALIVE, {"control": "tcp://h:1", "data": "tcp://h:2"}
    )
    assert a == b
    assert a.signature == b.signature
    with pytest.raises(TypeError):
        a.endpoints["control"] = "tcp://evil:1"  # type: ignore[index]


# ----------------------------------------------------- SWIM precedence


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (("alive", 2), ("suspect", 1), 0),  # alive(i) beats suspect(j) iff i > j
        (("alive", 2), ("suspect", 2), 1),  # suspect(i) beats alive(j) iff i >= j
        (("alive", 1), ("suspect", 2), 0),  # a claim above its subject's incarnation is inert
        (("alive", 3), ("dead", 2), 0),  # rejoin with a higher incarnation
        (("alive", 2), ("dead", 2), 1),  # dead beats alive of same incarnation
        (("suspect", 2), ("dead", 2), 1),
        (("suspect", 5), ("dead", 2), 0),
        (("left", 2), ("alive", 2), 0),  # left is final for its incarnation
        (("left", 2), ("dead", 2), 0),
        (("left", 2), ("alive", 3), 1),
    ],
)
def test_swim_precedence(first: tuple[str, int], second: tuple[str, int], winner: int) -> None:
    def make(spec: tuple[str, int]) -> MemberRecord:
        state, inc = MemberState(spec[0]), spec[1]
        if state in (ALIVE, LEFT):
            return MemberRecord.create(KEYS[0], IDS[0], inc, state, eps(7000))
        return claim(1, 0, inc, state)

    recs = [make(first), make(second)]
    for order in (recs, recs[::-1]):
        t = table()
        t.merge(order, now=1.0)
        member = t.member(IDS[0])
        assert member is not None
        assert member.record == recs[winner]
        assert member.state is recs[winner].state
        assert member.incarnation == recs[winner].incarnation


def test_suspect_keeps_subject_endpoints() -> None:
    t = table()
    t.merge([alive(0, 1, port=7100), claim(1, 0, 1, SUSPECT)], now=0.0)
    m = t.member(IDS[0])
    assert m is not None
    assert m.state is SUSPECT
    assert dict(m.endpoints) == eps(7100)
    assert t.peers() == [IDS[0]]
    assert t.peers([ALIVE]) == []


# --------------------------------------------------------------- rejection


def test_merge_reports_changes_and_duplicates() -> None:
    t = table()
    r = alive(0, 1)
    res = t.merge([r, r.to_wire()], now=5.0)
    assert res.changed == (r,)
    assert res.duplicates == 1
    assert res.rejected == ()
    assert res.refute_needed is False
    m = t.member(IDS[0])
    assert m is not None
    assert m.updated_at == 5.0
    assert len(t) == 2
    assert IDS[0] in t


def test_forged_signature_rejected_and_counted() -> None:
    # Signed by KEYS[1] but claiming to be KEYS[0]'s own alive record.
    body = MemberRecord.create(KEYS[0], IDS[0], 5, ALIVE, eps(7000))
    forged_sig = KEYS[1].sign(body.signing_bytes).signature
    forged = dataclasses.replace(body, signature=forged_sig)
    t = table()
    res = t.merge([forged], now=0.0)
    assert res.changed == ()
    assert [r.reason for r in res.rejected] == [RejectReason.BAD_SIGNATURE]
    assert t.rejection_counts[RejectReason.BAD_SIGNATURE] == 1
    assert t.member(IDS[0]) is None


@pytest.mark.parametrize(
    "change",
    [
        {"incarnation": 6},
        {"state": SUSPECT, "origin": IDS[1], "endpoints": {}},
        {"endpoints": {"control": "tcp://evil:1"}},
    ],
)
def test_tampered_field_rejected(change: dict[str, object]) -> None:
    good = alive(0, 5)
    tampered = dataclasses.replace(good, **change)  # type: ignore[arg-type]
    t = table()
    res = t.merge([tampered, tampered.to_wire()], now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.BAD_SIGNATURE] * 2
    assert t.rejection_counts[RejectReason.BAD_SIGNATURE] == 2
    assert t.member(IDS[0]) is None


def test_malformed_bytes_rejected_and_counted() -> None:
    good = alive(0, 1).to_wire()
    bad = [b"", b"\xc1", good[:-3], msgpack.packb([2, *msgpack.unpackb(good)[1:]])]
    t = table()
    res = t.merge(bad, now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.MALFORMED] * 4
    assert all(r.record is None for r in res.rejected)
    assert t.rejection_counts[RejectReason.MALFORMED] == 4


def test_replayed_old_incarnation_rejected() -> None:
    t = table()
    old, new = alive(0, 1), alive(0, 2)
    t.merge([new], now=0.0)
    res = t.merge([old, claim(1, 0, 1, SUSPECT), claim(1, 0, 1, DEAD)], now=1.0)
    assert [r.reason for r in res.rejected] == [RejectReason.STALE] * 3
    assert t.rejection_counts[RejectReason.STALE] == 3
    m = t.member(IDS[0])
    assert m is not None
    assert (m.state, m.incarnation) == (ALIVE, 2)


def test_oversize_rejected_before_parsing() -> None:
    t = table(max_record_bytes=200)
    big = MemberRecord.create(KEYS[0], IDS[0], 1, ALIVE, {f"e{i}": "tcp://h:1" for i in range(20)})
    assert len(big.to_wire()) > 200
    res = t.merge([big, big.to_wire(), b"\x00" * 201], now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.OVERSIZE] * 3
    assert t.rejection_counts[RejectReason.OVERSIZE] == 3
    assert t.member(IDS[0]) is None
    with pytest.raises(ValueError):
        MembershipTable(SELF_KEY, {f"e{i}": "tcp://h:1" for i in range(20)}, max_record_bytes=200)


def test_too_many_members_rejected_known_members_still_update() -> None:
    t = table(max_members=3)  # ourselves + 2
    res = t.merge([alive(0, 1), alive(1, 1), alive(2, 1), claim(0, 3, 1, DEAD)], now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.TOO_MANY_MEMBERS] * 2
    assert t.rejection_counts[RejectReason.TOO_MANY_MEMBERS] == 2
    assert len(t) == 3
    assert t.member(IDS[2]) is None
    res = t.merge([alive(0, 2)], now=1.0)
    assert res.changed == (alive(0, 2),)


# --------------------------------------------------------------- ourselves


def test_suspicion_of_self_requires_refute() -> None:
    t = table(incarnation=4)
    accusation = MemberRecord.create(KEYS[0], SELF_ID, 4, SUSPECT)
    res = t.merge([accusation], now=0.0)
    assert res.refute_needed is True
    assert [r.reason for r in res.rejected] == [RejectReason.ABOUT_SELF]
    assert t.needs_refute is True
    assert t.local_record().state is ALIVE
    new = t.refute(now=1.0)
    assert (new.state, new.incarnation) == (ALIVE, 5)
    assert new.verify() is True
    assert t.needs_refute is False
    assert t.local_record() == new
    # The refutation wins over the accusation at any other node.
    other = MembershipTable(KEYS[5], eps(1))
    other.merge([accusation, new], now=0.0)
    m = other.member(SELF_ID)
    assert m is not None
    assert (m.state, m.incarnation) == (ALIVE, 5)


def test_old_accusation_and_own_echo_are_harmless() -> None:
    t = table(incarnation=4)
    res = t.merge([MemberRecord.create(KEYS[0], SELF_ID, 3, DEAD), t.local_record()], now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.STALE]
    assert res.duplicates == 1
    assert t.needs_refute is False


def test_refute_jumps_over_record_from_previous_run() -> None:
    previous_run = MembershipTable(SELF_KEY, eps(9000), incarnation=10).local_record()
    t = table()
    t.merge([previous_run], now=0.0)
    assert t.needs_refute is True
    assert t.refute(now=0.0).incarnation == 11


def test_mark_suspect_dead_left() -> None:
    t = table()
    t.merge([alive(0, 3)], now=0.0)
    s = t.mark_suspect(IDS[0], now=1.0)
    assert s is not None
    assert (s.state, s.incarnation, s.origin) == (SUSPECT, 3, SELF_ID)
    assert s.verify() is True
    assert t.mark_suspect(IDS[0], now=2.0) is None
    d = t.mark_dead(IDS[0], now=3.0)
    assert d is not None
    assert (d.state, d.incarnation) == (DEAD, 3)
    assert t.mark_dead(IDS[0], now=4.0) is None
    m = t.member(IDS[0])
    assert m is not None
    assert m.state is DEAD
    with pytest.raises(KeyError):
        t.mark_suspect(IDS[1], now=0.0)
    with pytest.raises(ValueError):
        t.mark_dead(SELF_ID, now=0.0)
    left = t.mark_left(now=5.0)
    assert (left.state, left.incarnation, left.verify()) == (LEFT, 0, True)
    assert t.refute(now=6.0).incarnation == 1  # rejoin


# --------------------------------------------------------------- expiry


def test_expire_forgets_dead_after_forget_after_and_keeps_tombstone() -> None:
    t = table(forget_after=30.0, tombstone_ttl=100.0)
    t.merge([alive(0, 2), alive(1, 1)], now=0.0)
    t.mark_dead(IDS[0], now=10.0)
    assert t.expire(now=39.0) == []
    assert t.expire(now=40.0) == [IDS[0]]
    assert IDS[0] not in t
    assert IDS[1] in t  # alive members are never expired
    res = t.merge([alive(0, 2), alive(0, 1), claim(2, 0, 2, SUSPECT)], now=41.0)
    assert [r.reason for r in res.rejected] == [RejectReason.STALE] * 3
    assert IDS[0] not in t
    res = t.merge([alive(0, 3)], now=42.0)  # rejoin with a higher incarnation
    assert res.changed == (alive(0, 3),)


def test_tombstone_expires_after_ttl() -> None:
    t = table(forget_after=0.0, tombstone_ttl=100.0)
    t.merge([alive(0, 2)], now=0.0)
    t.mark_dead(IDS[0], now=0.0)
    assert t.expire(now=0.0) == [IDS[0]]
    assert t.merge([alive(0, 2)], now=99.0).changed == ()
    t.expire(now=100.0)
    assert t.merge([alive(0, 2)], now=101.0).changed == (alive(0, 2),)


# --------------------------------------------------------------- gossip


def test_records_bounded_by_count_and_bytes() -> None:
    t = table()
    t.merge([alive(i, 1, port=7000 + 10 * i) for i in range(5)], now=0.0)
    all_recs = t.records()
    assert len(all_recs) == 6
    assert all_recs[0] == t.local_record()
    assert len(t.records(max_count=2)) == 2
    size = len(all_recs[0].to_wire())
    limited = t.records(max_bytes=3 * size)
    assert len(limited) == 3
    assert sum(len(r.to_wire()) for r in limited) <= 3 * size


def test_push_pull_converges() -> None:
    a = MembershipTable(KEYS[4], eps(1))
    b = MembershipTable(KEYS[5], eps(2))
    a.merge([alive(0, 1), alive(1, 3), claim(2, 1, 3, SUSPECT)], now=0.0)
    b.merge([alive(0, 2), alive(1, 3), alive(2, 1), claim(3, 1, 3, SUSPECT)], now=0.0)
    to_b = a.records_for(b.digest())
    to_a = b.records_for(a.digest())
    assert alive(0, 1) not in to_b  # b already has something newer
    b.merge(to_b, now=1.0)
    a.merge(to_a, now=1.0)
    view_a = {m.node_id: m.record for m in a.members()}
    view_b = {m.node_id: m.record for m in b.members()}
    assert view_a == view_b
    assert a.records_for(b.digest()) == []
    assert b.records_for(a.digest()) == []


def test_digest_entry_validates_state() -> None:
    with pytest.raises(ValueError):
        DigestEntry(1, "zombie", b"")  # type: ignore[arg-type]


# ----------------------------------------------------------- merge laws


@cache
def pooled(subject: int, inc: int, state: MemberState, observer: int, port: int) -> MemberRecord:
    if state in (ALIVE, LEFT):
        return MemberRecord.create(KEYS[subject], IDS[subject], inc, state, eps(port))
    obs = observer if observer != subject else (subject + 1) % 4
    return claim(obs, subject, inc, state)


def _pooled_args(args: tuple[int, int, MemberState, int, int]) -> MemberRecord:
    return pooled(*args)


record_st = st.tuples(
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(list(MemberState)),
    st.integers(0, 3),
    st.sampled_from([7000, 7100]),
).map(_pooled_args)
# Records about ourselves exercise the refutation bookkeeping too.
self_record_st = st.tuples(st.integers(0, 3), st.sampled_from([SUSPECT, DEAD])).map(
    lambda a: MemberRecord.create(KEYS[a[0]], SELF_ID, a[0], a[1])
)
batch_st = st.lists(st.one_of(record_st, self_record_st), max_size=12)


@PROPS
@given(batch_st, st.randoms(use_true_random=False))
def test_merge_commutative(batch: list[MemberRecord], rnd: random.Random) -> None:
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    t1, t2 = table(), table()
    t1.merge(batch, now=0.0)
    for rec in shuffled:
        t2.merge([rec], now=0.0)
    assert state_of(t1) == state_of(t2)


@PROPS
@given(batch_st, batch_st)
def test_merge_commutative_between_batches(a: list[MemberRecord], b: list[MemberRecord]) -> None:
    t1, t2 = table(), table()
    t1.merge(a, now=0.0)
    t1.merge(b, now=0.0)
    t2.merge(b, now=0.0)
    t2.merge(a, now=0.0)
    assert state_of(t1) == state_of(t2)


@PROPS
@given(batch_st)
def test_merge_idempotent(batch: list[MemberRecord]) -> None:
    t = table()
    t.merge(batch, now=0.0)
    before = state_of(t)
    again = t.merge(batch, now=1.0)
    assert again.changed == ()
    assert state_of(t) == before
    t.merge(t.records(), now=2.0)
    assert state_of(t) == before


def summarised(t: MembershipTable) -> tuple[dict[bytes, DigestEntry], int]:
    """The digest and the wire bytes of ``t`` worked out afresh from the
    records it holds (each encoded anew), not from anything it keeps."""
    held: defaultdict[bytes, list[bytes]] = defaultdict(list)
    for rec in t.records():
        held[rec.node_id].append(MemberRecord.from_wire(rec.to_wire()).to_wire())
    digest = {}
    for node_id, wires in held.items():
        member = t.member(node_id)
        assert member is not None
        tag = hashlib.blake2b(b"".join(sorted(wires)), digest_size=8).digest()
        digest[node_id] = DigestEntry(member.incarnation, member.state, tag)
    return digest, sum(len(w) for wires in held.values() for w in wires)


@PROPS
@given(st.lists(st.one_of(batch_st, st.sampled_from(["refute", "suspect", "dead"])), max_size=8))
def test_the_digest_and_wire_bytes_follow_every_change(steps: list[object]) -> None:
    """A member's digest entry and a record's encoding are kept between
    requests (every reply to a member needs them): whatever changed the
    table since, they are what working them out afresh gives."""
    t = table()
    for now, step in enumerate(steps):
        if step == "refute":
            t.refute(float(now))
        elif step in ("suspect", "dead"):
            for node_id in t.peers():
                (t.mark_suspect if step == "suspect" else t.mark_dead)(node_id, float(now))
        else:
            assert isinstance(step, list)
            t.merge(step, float(now))
        assert (t.digest(), t.wire_bytes()) == summarised(t)


@PROPS
@given(batch_st, batch_st, batch_st)
def test_merge_associative(
    a: list[MemberRecord], b: list[MemberRecord], c: list[MemberRecord]
) -> None:
    # (A join B) join C, where joins go through exported records (gossip) ...
    ab = table()
    ab.merge(a + b, now=0.0)
    left = table()
    left.merge(ab.records(), now=0.0)
    left.merge(c, now=0.0)
    # ... equals A join (B join C).
    bc = table()
    bc.merge(b, now=0.0)
    bc.merge(c, now=0.0)
    right = table()
    right.merge(a, now=0.0)
    right.merge(bc.records(), now=0.0)
    # Refutation state is local, not exported, so compare the exported view plus it.
    assert state_of(left)[0] == state_of(right)[0]
    direct = table()
    direct.merge(a + b + c, now=0.0)
    assert state_of(direct)[0] == state_of(left)[0]
    assert direct.needs_refute == (ab.needs_refute or bc.needs_refute or right.needs_refute)


@PROPS
@given(batch_st, record_st, st.integers(0, 63), st.integers(1, 255))
def test_tampered_bytes_never_change_the_table(
    batch: list[MemberRecord], victim: MemberRecord, pos: int, flip: int
) -> None:
    t = table()
    t.merge(batch, now=0.0)
    before = state_of(t)
    wire = bytearray(victim.to_wire())
    idx = len(wire) - 64 + pos  # inside the signature
    wire[idx] ^= flip
    res = t.merge([bytes(wire)], now=1.0)
    assert res.changed == ()
    assert state_of(t) == before
    # A record that would change nothing is rejected before its signature is
    # checked (stale, a newcomer to a full table, a claim ahead of us); one
    # that would change the table (or make us refute) fails on its signature.
    clean = table()
    clean.merge(batch, now=0.0)
    would = clean.merge([victim], now=1.0)
    reasons = [r.reason for r in res.rejected]
    if would.changed or would.refute_needed:
        assert reasons == [RejectReason.BAD_SIGNATURE]
    else:
        assert reasons in (
            [RejectReason.BAD_SIGNATURE],
            [RejectReason.STALE],
            [RejectReason.TOO_MANY_MEMBERS],
            [RejectReason.CLAIM_AHEAD],
        )


def test_records_that_change_nothing_cost_no_signature_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member replaying records (its own or others') costs the table their
    parsing only: duplicates, stale records and newcomers to a full table
    are rejected before any Ed25519 verification; a record that changes the
    table is verified once."""
    verified: list[bytes] = []
    real = MemberRecord.verify

    def counting(rec: MemberRecord) -> bool:
        verified.append(rec.node_id)
        return real(rec)

    monkeypatch.setattr(MemberRecord, "verify", counting)
    t = table(max_members=3)  # ourselves and two members
    fresh = [alive(0, 5).to_wire(), alive(1, 5).to_wire()]
    assert len(t.merge(fresh, now=0.0).changed) == 2
    assert verified == [IDS[0], IDS[1]]
    verified.clear()
    replay = fresh * 50 + [alive(0, 4).to_wire(), claim(2, 1, 4, SUSPECT).to_wire()]
    replay += [alive(3, 1).to_wire(), alive(4, 9).to_wire()]  # the table is full
    res = t.merge(replay, now=1.0)
    assert res.changed == () and verified == []
    assert res.duplicates == 100
    assert sorted(r.reason.value for r in res.rejected) == [
        "stale", "stale", "too_many_members", "too_many_members"
    ]  # fmt: skip
    newer = alive(0, 6)
    assert t.merge([newer.to_wire()], now=2.0).changed == (newer,)
    assert verified == [IDS[0]]


# ------------------------------------------------- claims cannot outrun their subject


def test_a_claim_at_the_largest_incarnation_cannot_kill_a_live_member() -> None:
    live = MemberRecord.create(KEYS[0], IDS[0], 3, ALIVE, eps(7000))
    doom = claim(1, 0, MAX_INCARNATION, DEAD)
    for order in ([live, doom], [doom, live]):
        t = table()
        t.merge(order, now=0.0)
        member = t.member(IDS[0])
        assert member is not None and member.state is ALIVE and member.incarnation == 3
    # An honest suspicion at the subject's incarnation still counts.
    t = table()
    t.merge([live, claim(2, 0, 3, SUSPECT)], now=0.0)
    member = t.member(IDS[0])
    assert member is not None and member.state is SUSPECT


def test_a_claim_about_us_above_our_incarnation_is_rejected_without_refuting() -> None:
    t = table(incarnation=4)
    doom = MemberRecord.create(KEYS[0], SELF_ID, MAX_INCARNATION, DEAD)
    res = t.merge([doom], now=0.0)
    assert [r.reason for r in res.rejected] == [RejectReason.CLAIM_AHEAD]
    assert res.refute_needed is False and t.needs_refute is False
    assert t.local_record().incarnation == 4


def test_refute_never_overflows() -> None:
    # Only our own key can sign a record at the largest incarnation (a run of
    # ours long ago); refuting it keeps the local record instead of raising.
    previous = MembershipTable(SELF_KEY, eps(9000), incarnation=MAX_INCARNATION).local_record()
    t = table()
    t.merge([previous], now=0.0)
    assert t.needs_refute is True
    kept = t.refute(now=0.0)
    assert kept == t.local_record() and kept.incarnation == 0
    assert t.needs_refute is False


def test_a_forged_claim_about_us_asks_no_refutation() -> None:
    """A claim about this node that would make it refute is checked for its
    signature first: forged, it changes nothing (no refutation, no threat)."""
    t = table()
    wire = bytearray(
        MemberRecord.create(KEYS[0], SELF_ID, t.local_record().incarnation, SUSPECT).to_wire()
    )
    wire[-1] ^= 1
    res = t.merge([bytes(wire)], now=1.0)
    assert [r.reason for r in res.rejected] == [RejectReason.BAD_SIGNATURE]
    assert not res.refute_needed and not t.needs_refute
    genuine = MemberRecord.create(KEYS[0], SELF_ID, t.local_record().incarnation, SUSPECT)
    assert t.merge([genuine.to_wire()], now=2.0).refute_needed and t.needs_refute
