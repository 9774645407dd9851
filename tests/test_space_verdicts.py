"""The receivers and the space actor, pumped into each other in memory.

A verdict that comes after its receiver stopped waiting cannot be produced
on demand with real processes (the space actor answers in microseconds), so
these tests drive the real actors' message handlers by hand: every message
one of them tells another is recorded (through the codec, as the runtime
sends it) and handed to the other in the order it was sent, which is the
order the runtime delivers one actor's mail to another. Time is a
:class:`FakeClock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
import zmq

from actors.data_pipes import new_route_id
from actors.inbox import create_part, save_manifest
from actors.multicast_receiver import SPACE_VERDICT_TIMEOUT as MC_TIMEOUT
from actors.multicast_receiver import MulticastReceiverActor
from actors.receiver import (
    ATTACH_MAX_BYTES,
    MAX_ATTACHED,
    SPACE_VERDICT_TIMEOUT,
    ReceiverActor,
)
from actors.space import SpaceActor
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.delivered import Delivery
from peercrypt.core.multicast import session_resume_key, session_tid
from peercrypt.core.resume import Manifest, ResumeKey
from peercrypt.crypto.chunk_signature import ChunkSigner
from peercrypt.crypto.handshake import Initiator
from peercrypt.crypto.identity import KeyPair
from peercrypt.crypto.transfer import TransferKeys
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.testing.clock import FakeClock
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Accept,
    Attach,
    ChunkHeader,
    Done,
    Failed,
    Inbound,
    Offer,
    OfferDetails,
    Outbound,
    Refuse,
    SealedHeader,
    Verifying,
)
from peercrypt.wire.multicast_messages import McAnnounce, McDetails, McJoin, McRefuse
from peercrypt.wire.space_messages import SpaceCancel, SpaceReserve, SpaceVerdict, SpaceWrittens
from peercrypt.wire.stats_messages import StatsRecord

SENDER_SEED = b"s" * 32
SENDER = KeyPair.from_seed(SENDER_SEED)
CHUNK = 64 * 1024


Mail = list[tuple[str, codec.Message]]


def record(actor: Actor) -> Mail:
    """What ``actor`` tells other actors, in order, as decoded from the wire."""
    sent: Mail = []

    def tell(to: str, msg: codec.Message) -> None:
        sent.append((to, codec.decode(codec.encode(msg))))

    actor.tell = tell  # type: ignore[method-assign,assignment]
    return sent


def take(mail: Mail, to: str) -> list[codec.Message]:
    """The messages to ``to`` (removed from ``mail``)."""
    mine = [m for t, m in mail if t == to]
    mail[:] = [(t, m) for t, m in mail if t != to]
    return mine


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ActorEnv, NodeSettings, FakeClock]]:
    settings = loopback_settings(tmp_path, None)
    settings.inbox.mkdir()
    clock = FakeClock()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ActorEnv(ctx, "verdicts", clock=clock), settings, clock
    finally:
        ctx.term()


def _offer(tid: bytes, to: bytes, key: ResumeKey | None = None) -> bytes:
    return _sealed_offer(tid, to, key)[0]


def _sealed_offer(tid: bytes, to: bytes, key: ResumeKey | None = None) -> tuple[bytes, Initiator]:
    """SENDER's offer of ``key`` to ``to``, and its half of the handshake."""
    eph = Initiator(SENDER)
    key = key or ResumeKey(SENDER.public, "late.bin", 1000, CHUNK, b"x" * 32)
    details = OfferDetails(
        name=key.name,
        size=key.size,
        chunk_size=key.chunk_size,
        hash_alg="blake3",
        source=key.source,
    )
    sealed = eph.seal_details(tid, to, codec.encode(details))
    return codec.encode(Offer(tid=tid, eph_pub=eph.public, details=sealed)), eph


def _announce(sid: bytes, to: bytes, size: int = 1000, chunk: int = CHUNK) -> bytes:
    wrap = Initiator(SENDER)
    sealed = wrap.seal_details(sid, to, codec.encode(McDetails(name="late.bin", size=size)))
    announce = McAnnounce(
        sid=sid,
        details=sealed,
        chunk_size=chunk,
        eph_pub=wrap.public,
        pub_host="",
        pub_port=1,
        signer=ChunkSigner(SENDER_SEED).public,
    )
    return codec.encode(announce)


def _kept_part(inbox: Path, key: ResumeKey, tid: bytes, part: Path, fd: int) -> Path:
    """``part`` (open as ``fd``) kept with its first chunk written, as an
    interrupted transfer of ``key`` leaves it."""
    try:
        os.pwrite(fd, b"x" * key.chunk_size, 0)
        held = ChunkBitmap(key.total)
        held.add(0)
        save_manifest(inbox, fd, Manifest(key, tid, part.name, held.to_bytes(), time.time()))
    finally:
        os.close(fd)
    return part


def _kept_session_part(inbox: Path, sid: bytes, size: int, chunk: int) -> Path:
    """The part a receiver kept of SENDER's session ``sid`` of "late.bin"."""
    key = session_resume_key(SENDER.public, "late.bin", size, chunk, sid)
    created = create_part(inbox, key.name, sid.hex(), size, kind="mc", unique=True)
    return _kept_part(inbox, key, sid, *created)


def _inbound(payload: bytes) -> Inbound:
    return Inbound(route=b"route", peer=SENDER.public, peer_host="127.0.0.1", payload=payload)


def _ledger_tid(kind: str, tid: bytes) -> bytes:
    """The ledger's id of SENDER's transfer (multicast session) ``tid``: a
    session is its sender's and its id together (core/multicast.py)."""
    return tid if kind == "receiver" else session_tid(SENDER.public, tid)


@pytest.mark.parametrize("kind", ["receiver", "mreceiver"])
def test_a_verdict_too_late_for_its_ask_never_blocks_the_retry(
    node: tuple[ActorEnv, NodeSettings, FakeClock], kind: str
) -> None:
    """The space actor is slow: an offer (a multicast announce) waits past
    the timeout, and the sender offers the same id again. The first ask's
    reservation, granted after its receiver stopped waiting, is cancelled as
    soon as it is granted: the retry is admitted (not refused "duplicate"),
    and the late verdict, when it comes, does not take the retry's
    reservation."""
    env, settings, clock = node
    tid = os.urandom(16)
    actor: ReceiverActor | MulticastReceiverActor
    if kind == "receiver":
        actor, timeout = ReceiverActor(env, settings), SPACE_VERDICT_TIMEOUT
    else:
        actor, timeout = MulticastReceiverActor(env, settings), MC_TIMEOUT

    def payload() -> bytes:
        """The offer (the announce), sealed afresh as a sender's retry is."""
        seal = _offer if kind == "receiver" else _announce
        return seal(tid, settings.identity.public)

    space = SpaceActor(env, settings)
    from_actor, from_space = record(actor), record(space)

    actor.on_mail(_inbound(payload()))
    [first] = take(from_actor, "space")
    assert isinstance(first, SpaceReserve) and first.tid == _ledger_tid(kind, tid)
    clock.advance(timeout)
    expire = actor._expire_asks if isinstance(actor, ReceiverActor) else actor._expire_joins
    expire()
    # The offer (the announce) is answered, saying why: "busy" to a sender,
    # which offers again; "try-again" to a multicast sender, which announces
    # again (as to a target that has not joined yet) instead of failing it.
    [busy] = take(from_actor, "gateway")
    assert isinstance(busy, Outbound)
    refused = codec.decode(busy.payload)
    assert isinstance(refused, Refuse if kind == "receiver" else McRefuse), refused
    assert refused.code == ("busy" if kind == "receiver" else "try-again")
    assert "could not be checked in time" in refused.reason
    actor.on_mail(_inbound(payload()))  # the retry, before the space actor answered
    for msg in [first, *take(from_actor, "space")]:
        space.on_mail(msg)
    verdicts = take(from_space, kind)
    assert all(isinstance(v, SpaceVerdict) for v in verdicts)
    assert [(v.ok, v.code) for v in verdicts if isinstance(v, SpaceVerdict)] == [
        (True, ""),
        (True, ""),
    ]
    late, fresh = verdicts
    assert isinstance(late, SpaceVerdict) and isinstance(fresh, SpaceVerdict)
    assert late.request == first.request != fresh.request
    actor.on_mail(late)  # comes to no ask: cancelled by its number, no answer to the sender
    assert take(from_actor, "gateway") == []
    cancels = take(from_actor, "space")
    assert cancels == [SpaceCancel(owner=kind, tid=_ledger_tid(kind, tid), request=first.request)]
    for msg in cancels:
        space.on_mail(msg)
    assert space.ledger.is_running(kind.encode() + b"/" + _ledger_tid(kind, tid))
    assert space.ledger.promised == 1000  # the retry's reservation, once


def test_a_kept_part_that_gave_way_after_it_was_chosen_starts_afresh(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """The receiver chose its kept part to continue an offer; before the
    space actor heard that ask, the multicast receiver's ask made the part
    give way (then was given up, so there is room again). The offer is
    accepted as a new transfer (nothing held, a new part), not refused for
    the part that is gone."""
    env, settings, clock = node
    settings = dataclasses.replace(settings, part_quota=210_000)
    size, chunk = 200_000, 65_536
    source = b"y" * 32
    key = ResumeKey(SENDER.public, "kept.bin", size, chunk, source)
    part = _kept_part(
        settings.inbox, key, b"t" * 16, *create_part(settings.inbox, key.name, "abc", size)
    )
    receiver = ReceiverActor(env, settings)
    mreceiver = MulticastReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    from_receiver, from_mreceiver, from_space = record(receiver), record(mreceiver), record(space)
    receiver.setup()  # reports its kept part to the ledger; opens its writer
    try:
        for msg in take(from_receiver, "space"):
            space.on_mail(msg)
        assert space.ledger.kept == [part.name]

        tid = os.urandom(16)
        receiver.on_mail(_inbound(_offer(tid, settings.identity.public, key)))
        [resume] = take(from_receiver, "space")
        assert isinstance(resume, SpaceReserve) and resume.resume == part.name
        # Meanwhile: a multicast session over the quota; the kept part gives way.
        announce = _announce(os.urandom(16), settings.identity.public, 20_000)
        mreceiver.on_mail(_inbound(announce))
        [other] = take(from_mreceiver, "space")
        space.on_mail(other)
        assert not part.exists() and space.ledger.kept == []
        clock.advance(MC_TIMEOUT)  # ... and that session was given up
        mreceiver._expire_joins()
        for msg in [*take(from_mreceiver, "space"), resume]:
            space.on_mail(msg)
        verdicts = take(from_space, "receiver")
        assert [(v.ok, v.fresh) for v in verdicts if isinstance(v, SpaceVerdict)] == [(True, True)]
        receiver.on_mail(verdicts[0])
        [answer] = take(from_receiver, "gateway")
        assert isinstance(answer, Outbound)
        accept = codec.decode(answer.payload)
        assert isinstance(accept, Accept), accept
        assert accept.tid == tid and accept.have == []  # nothing held: from the first byte
        assert receiver.counters.get("resume-part-gone") == 1
        [new] = [t.part for t in receiver.transfers.values()]
        assert new.exists() and new != part and not part.exists()
        assert space.ledger.promised == size  # the whole file is still to come
    finally:
        receiver.teardown()
        for sock in receiver._sockets:
            sock.close(linger=0)


def test_a_kept_multicast_part_that_gave_way_after_it_was_chosen_starts_afresh(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """The same race the other way round: the multicast receiver chose the
    part it kept of a session to rejoin it; the unicast receiver's ask made
    that part give way (then was given up). The session is joined with a new
    part, from nothing."""
    env, settings, clock = node
    settings = dataclasses.replace(settings, part_quota=210_000)
    size, chunk, sid = 200_000, 65_536, os.urandom(16)
    part = _kept_session_part(settings.inbox, sid, size, chunk)
    receiver = ReceiverActor(env, settings)
    mreceiver = MulticastReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    from_receiver, from_mreceiver, from_space = record(receiver), record(mreceiver), record(space)
    mreceiver.setup()  # reports its kept part to the ledger; opens its writer
    try:
        for msg in take(from_mreceiver, "space"):
            space.on_mail(msg)
        assert space.ledger.kept == [part.name]
        mreceiver.on_mail(_inbound(_announce(sid, settings.identity.public, size, chunk)))
        [rejoin] = take(from_mreceiver, "space")
        assert isinstance(rejoin, SpaceReserve) and rejoin.resume == part.name
        # Meanwhile: a unicast offer over the quota; the kept part gives way.
        other = ResumeKey(SENDER.public, "other.bin", 20_000, CHUNK, b"o" * 32)
        receiver.on_mail(_inbound(_offer(os.urandom(16), settings.identity.public, other)))
        [offer] = take(from_receiver, "space")
        space.on_mail(offer)
        assert not part.exists() and space.ledger.kept == []
        clock.advance(SPACE_VERDICT_TIMEOUT)  # ... and that offer was given up
        receiver._expire_asks()
        for msg in [*take(from_receiver, "space"), rejoin]:
            space.on_mail(msg)
        verdicts = take(from_space, "mreceiver")
        assert [(v.ok, v.fresh) for v in verdicts if isinstance(v, SpaceVerdict)] == [(True, True)]
        mreceiver.on_mail(verdicts[0])
        [answer] = take(from_mreceiver, "gateway")
        assert isinstance(answer, Outbound)
        joined = codec.decode(answer.payload)
        assert isinstance(joined, McJoin) and joined.sid == sid, joined
        assert mreceiver.counters.get("resume-part-gone") == 1
        sess = mreceiver.sessions[session_tid(SENDER.public, sid)]
        assert sess.tracker.written.count == 0  # nothing held: every chunk to come
        assert sess.part.exists() and sess.part != part and not part.exists()
        assert space.ledger.promised == size
    finally:
        mreceiver.teardown()
        for sock in mreceiver._sockets:
            sock.close(linger=0)


@dataclasses.dataclass
class Rejoin:
    """A multicast receiver that kept a part of SENDER's session ``sid`` and
    asked the space ledger to rejoin it (``ask``); the ledger, and what each
    of them told."""

    sid: bytes
    part: Path
    mreceiver: MulticastReceiverActor
    space: SpaceActor
    from_mreceiver: Mail
    from_space: Mail
    announce: bytes
    ask: SpaceReserve


@contextlib.contextmanager
def _rejoin(env: ActorEnv, settings: NodeSettings, size: int, chunk: int) -> Iterator[Rejoin]:
    sid = os.urandom(16)
    part = _kept_session_part(settings.inbox, sid, size, chunk)
    mreceiver = MulticastReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    from_mreceiver, from_space = record(mreceiver), record(space)
    mreceiver.setup()  # reports its kept part to the ledger; opens its writer
    try:
        for msg in take(from_mreceiver, "space"):
            space.on_mail(msg)
        announce = _announce(sid, settings.identity.public, size, chunk)
        mreceiver.on_mail(_inbound(announce))
        [ask] = take(from_mreceiver, "space")
        assert isinstance(ask, SpaceReserve) and ask.resume == part.name
        yield Rejoin(sid, part, mreceiver, space, from_mreceiver, from_space, announce, ask)
    finally:
        mreceiver.teardown()
        for sock in mreceiver._sockets:
            sock.close(linger=0)


def test_a_kept_multicast_part_removed_before_it_is_opened_is_asked_for_again(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """The part kept of a session, chosen to rejoin it, is removed by hand
    before the space verdict opens it: the announce is answered "try again"
    (not an "io" failure of the whole send to this receiver), its space and
    what is left of the part go, and the next announce joins from nothing."""
    env, settings, _ = node
    with _rejoin(env, settings, 200_000, 65_536) as r:
        mreceiver, space, from_mreceiver, from_space = (
            r.mreceiver,
            r.space,
            r.from_mreceiver,
            r.from_space,
        )
        r.part.unlink()  # by hand, meanwhile
        space.on_mail(r.ask)
        [verdict] = take(from_space, "mreceiver")
        assert isinstance(verdict, SpaceVerdict) and (verdict.ok, verdict.fresh) == (True, False)
        mreceiver.on_mail(verdict)
        [answer] = take(from_mreceiver, "gateway")
        assert isinstance(answer, Outbound)
        refused = codec.decode(answer.payload)
        assert isinstance(refused, McRefuse) and refused.code == "try-again", refused
        assert "kept part" in refused.reason
        assert mreceiver.counters.get("resume-part-gone") == 1
        for msg in take(from_mreceiver, "space"):
            space.on_mail(msg)
        assert space.ledger.promised == 0 and space.ledger.kept == []
        assert not list(settings.inbox.glob(".late.bin.*"))  # its manifest went too

        mreceiver.on_mail(_inbound(r.announce))  # the sender announces again
        [ask] = take(from_mreceiver, "space")
        assert isinstance(ask, SpaceReserve) and not ask.resume
        space.on_mail(ask)
        mreceiver.on_mail(take(from_space, "mreceiver")[0])
        [answer] = take(from_mreceiver, "gateway")
        assert isinstance(answer, Outbound)
        joined = codec.decode(answer.payload)
        assert isinstance(joined, McJoin) and joined.sid == r.sid, joined
        sess = mreceiver.sessions[session_tid(SENDER.public, r.sid)]
        assert sess.tracker.written.count == 0 and sess.part.exists()


@pytest.mark.parametrize("kind", ["receiver", "mreceiver"])
def test_a_verdict_for_another_id_under_the_same_number_leaves_the_ask_waiting(
    node: tuple[ActorEnv, NodeSettings, FakeClock], kind: str
) -> None:
    """A receiver that restarted numbers its asks from 1 again: a verdict
    its earlier self asked for may arrive under the number of a new ask. It
    is cancelled (not ours), and the new ask still gets its own answer."""
    env, settings, _ = node
    tid, stale = os.urandom(16), os.urandom(16)
    actor: ReceiverActor | MulticastReceiverActor
    if kind == "receiver":
        actor = ReceiverActor(env, settings)
        sent = record(actor)
        actor.on_mail(_inbound(_offer(tid, settings.identity.public)))
    else:
        actor = MulticastReceiverActor(env, settings)
        sent = record(actor)
        actor.on_mail(_inbound(_announce(tid, settings.identity.public)))
    [ask] = take(sent, "space")
    assert isinstance(ask, SpaceReserve)
    request = ask.request
    actor.on_mail(SpaceVerdict(request=request, tid=stale, ok=True))
    assert sent == [("space", SpaceCancel(owner=kind, tid=stale, request=request))]
    sent.clear()
    no_space = SpaceVerdict(
        request=request, tid=_ledger_tid(kind, tid), ok=False, code="no-space", reason="full"
    )
    actor.on_mail(no_space)
    [answer] = take(sent, "gateway")
    assert isinstance(answer, Outbound)
    refused = codec.decode(answer.payload)
    assert getattr(refused, "code", None) == "no-space", refused


def _both_granted(
    actor: Actor, from_actor: Mail, space: SpaceActor, from_space: Mail, asks: list[codec.Message]
) -> list[codec.Message]:
    """The space actor hears ``asks`` (two, in order) and grants both, as
    continued or new (none ``fresh``); ``actor`` hears the verdicts. Its
    answers to the senders."""
    for msg in asks:
        space.on_mail(msg)
    verdicts = take(from_space, actor.name)
    assert [(v.ok, v.fresh) for v in verdicts if isinstance(v, SpaceVerdict)] == [
        (True, False),
        (True, False),
    ]
    for v in verdicts:
        actor.on_mail(v)
    gateway = take(from_actor, "gateway")
    return [codec.decode(m.payload) for m in gateway if isinstance(m, Outbound)]


def test_a_kept_part_chosen_by_an_offer_waiting_for_space_is_not_deleted_as_obsolete(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """The receiver chose its kept part of a file to continue an offer, and
    that offer waits for the space ledger; meanwhile the same sender offers
    another version of the same file. The part is in use (as a running
    transfer's is): the new version gets a part of its own, and the first
    offer continues the kept part. Before, the new version's offer deleted
    that part as obsolete and the first was refused "io"."""
    env, settings, _clock = node
    size, chunk = 200_000, 65_536
    key = ResumeKey(SENDER.public, "kept.bin", size, chunk, b"1" * 32)
    newer = dataclasses.replace(key, source=b"2" * 32)
    part = _kept_part(
        settings.inbox, key, b"t" * 16, *create_part(settings.inbox, key.name, "abc", size)
    )
    receiver = ReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    from_receiver, from_space = record(receiver), record(space)
    receiver.setup()
    try:
        for msg in take(from_receiver, "space"):
            space.on_mail(msg)
        first, second = os.urandom(16), os.urandom(16)
        receiver.on_mail(_inbound(_offer(first, settings.identity.public, key)))
        [resume] = take(from_receiver, "space")
        assert isinstance(resume, SpaceReserve) and resume.resume == part.name
        receiver.on_mail(_inbound(_offer(second, settings.identity.public, newer)))
        assert part.exists()
        answers = _both_granted(
            receiver, from_receiver, space, from_space, [resume, *take(from_receiver, "space")]
        )
        assert [type(a) for a in answers] == [Accept, Accept], answers
        by_tid = {a.tid: a for a in answers if isinstance(a, Accept)}
        assert by_tid[first].have == [0, 1]  # the kept chunk: continued
        assert by_tid[second].have == []
        parts = {t.tid: t.part for t in receiver.transfers.values()}
        assert parts[first] == part and parts[second] != part and parts[second].exists()
    finally:
        receiver.teardown()
        for sock in receiver._sockets:
            sock.close(linger=0)


def test_a_kept_multicast_part_chosen_by_a_join_waiting_for_space_is_not_deleted(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """The multicast receiver chose the part it kept of a session to rejoin
    it, and that join waits for the space ledger; meanwhile the same sender
    announces another session of the same file. The kept part is in use:
    the session rejoined continues it (before, the other session's announce
    deleted it as obsolete and the rejoin was refused "io")."""
    env, settings, _clock = node
    size, chunk = 200_000, 65_536
    with _rejoin(env, settings, size, chunk) as r:
        mreceiver, space, from_mreceiver, from_space = (
            r.mreceiver,
            r.space,
            r.from_mreceiver,
            r.from_space,
        )
        sid, part, rejoin = r.sid, r.part, r.ask
        other = os.urandom(16)
        mreceiver.on_mail(_inbound(_announce(other, settings.identity.public, size, chunk)))
        assert part.exists()
        answers = _both_granted(
            mreceiver, from_mreceiver, space, from_space, [rejoin, *take(from_mreceiver, "space")]
        )
        assert sorted(a.sid for a in answers if isinstance(a, McJoin)) == sorted([sid, other])
        sess = mreceiver.sessions[session_tid(SENDER.public, sid)]
        assert sess.part == part and sess.tracker.written.count == 1  # continued
        assert mreceiver.sessions[session_tid(SENDER.public, other)].part != part


def _holding(env: ActorEnv, settings: NodeSettings, key: ResumeKey) -> tuple[ReceiverActor, Mail]:
    """A receiver set up with ``key``'s file in its inbox, and its mail out."""
    (settings.inbox / key.name).write_bytes(b"d" * key.size)
    receiver = ReceiverActor(env, settings)
    from_receiver = record(receiver)
    receiver.setup()
    return receiver, from_receiver


def _re_offered(
    receiver: ReceiverActor, from_receiver: Mail, key: ResumeKey
) -> tuple[bytes, Accept, Initiator]:
    """SENDER offers ``key`` again after its file (in the inbox) was recorded
    as delivered: the transfer id, the receiver's Accept, the offer's keys."""
    stamp = receiver._stamp(key.name)
    assert stamp is not None
    receiver.delivered.record(Delivery(key, key.name, b"h" * 32, stamp, time.time()))
    tid = os.urandom(16)
    offer, eph = _sealed_offer(tid, receiver.settings.identity.public, key)
    receiver.on_mail(_inbound(offer))
    [answer] = take(from_receiver, "gateway")
    assert isinstance(answer, Outbound)
    accept = codec.decode(answer.payload)
    assert isinstance(accept, Accept)
    return tid, accept, eph


@pytest.mark.parametrize("how", ["expired", "failed", "unexpected"])
def test_a_re_offer_of_a_delivered_file_its_sender_does_not_finish_is_a_row_in_the_history(
    node: tuple[ActorEnv, NodeSettings, FakeClock], how: str
) -> None:
    """A re-offer answered from the table of deliveries whose sender never
    sends its Done (it vanished: dropped after the idle time), sends
    Failed (its file could not be hashed) or another message (dropped, as
    for a transfer: the re-offer still waits for its Done, then is dropped
    after the idle time) leaves a row in the statistics history, as any
    transfer that ends so does."""
    env, settings, clock = node
    key = ResumeKey(SENDER.public, "late.bin", 1000, CHUNK, b"x" * 32)
    receiver, from_receiver = _holding(env, settings, key)
    try:
        tid, accept, eph = _re_offered(receiver, from_receiver, key)
        assert accept.have == [0, key.total]
        take(from_receiver, "stats")
        if how == "failed":
            secrets = eph.finish(tid, settings.identity.public, accept.eph_pub, accept.proof)
            keys = TransferKeys.for_sender(tid, secrets)
            nonce, failed = keys.seal_message(codec.encode(Failed(code="local", reason="unread")))
            header = SealedHeader(tid=tid, nonce=nonce)
            receiver._on_echo(receiver.echoes[tid], keys.route_id(0), header, memoryview(failed))
            result, reason = "local", "unread"
        else:
            if how == "unexpected":  # a message a sender never sends here
                secrets = eph.finish(tid, settings.identity.public, accept.eph_pub, accept.proof)
                keys = TransferKeys.for_sender(tid, secrets)
                nonce, odd = keys.seal_message(codec.encode(Verifying(chunks=1)))
                header = SealedHeader(tid=tid, nonce=nonce)
                receiver._on_echo(receiver.echoes[tid], keys.route_id(0), header, memoryview(odd))
                assert receiver.counters.get("data-dropped-unexpected") == 1
                assert tid in receiver.echoes
            clock.advance(settings.idle_timeout)
            receiver._expire_idle()
            result, reason = "expired", f"no Done from the sender for {settings.idle_timeout:.0f} s"
        rows = [r for r in take(from_receiver, "stats") if isinstance(r, StatsRecord)]
        assert [(r.session, r.result, r.reason, r.params) for r in rows] == [
            (tid.hex(), result, reason, {"delivered_before": key.name})
        ]
        assert receiver.echoes == {}
    finally:
        receiver.teardown()
        for sock in receiver._sockets:
            sock.close(linger=0)


def test_at_its_limit_a_sender_gets_no_slot_beyond_its_running_transfers_own(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """At the sender's limit only an offer taking over its running transfer
    of the same file comes in. One answered from the table of deliveries
    instead (the same file delivered before, while a transfer of it runs:
    offered once as a folder of that name) takes nothing over: refused
    `busy`, else each such re-offer was a slot more, past both limits."""
    env, settings, _clock = node
    settings = dataclasses.replace(settings, max_transfers_per_peer=1, max_transfers_per_host=1)
    key = ResumeKey(SENDER.public, "late.bin", 1000, CHUNK, b"x" * 32)
    receiver, space = ReceiverActor(env, settings), SpaceActor(env, settings)
    from_receiver, from_space = record(receiver), record(space)
    receiver.setup()
    try:
        for m in take(from_receiver, "space"):
            space.on_mail(m)
        running = os.urandom(16)
        receiver.on_mail(_inbound(_offer(running, settings.identity.public, key)))
        for m in take(from_receiver, "space"):
            space.on_mail(m)
        for m in take(from_space, "receiver"):
            receiver.on_mail(m)
        (accept,) = take(from_receiver, "gateway")
        assert isinstance(codec.decode(accept.payload), Accept)
        # The same file, delivered too.
        (settings.inbox / key.name).write_bytes(b"d" * key.size)
        stamp = receiver._stamp(key.name)
        receiver.delivered.record(Delivery(key, key.name, b"h" * 32, stamp, time.time()))
        for _ in range(3):
            receiver.on_mail(_inbound(_offer(os.urandom(16), settings.identity.public, key)))
        replies = [codec.decode(m.payload) for m in take(from_receiver, "gateway")]
        assert [(type(r), getattr(r, "code", "")) for r in replies] == [(Refuse, "busy")] * 3
        assert receiver.echoes == {} and list(receiver.transfers) == [running]
    finally:
        receiver.teardown()
        for sock in (*receiver._sockets, *space._sockets):
            sock.close(linger=0)


def _sealed_until(
    sock: zmq.Socket[bytes], keys: TransferKeys, cls: type[codec.M]
) -> list[codec.Message]:
    """The sealed messages a receiver sent to the data connection ``sock``,
    up to the first of type ``cls`` (AssertionError if none came in 10 s)."""
    out: list[codec.Message] = []
    deadline = time.monotonic() + 10.0
    while not out or not isinstance(out[-1], cls):
        left = deadline - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1000)), f"no {cls.TYPE}: {out}"
        header, sealed = sock.recv_multipart()
        nonce = codec.decode_as(header, SealedHeader).nonce
        out.append(codec.decode(keys.open_message(nonce, sealed)))
    return out


def _written(
    receiver: ReceiverActor,
    space: SpaceActor,
    mail: tuple[Mail, Mail],
    key: ResumeKey,
    content: bytes,
    data: zmq.Socket[bytes],
) -> tuple[bytes, TransferKeys]:
    """SENDER's transfer of ``content`` (``key``), accepted (the space actor
    asked) and every chunk of it sent over ``data`` and written by the
    receiver's writer: its tid and keys."""
    from_receiver, from_space = mail
    tid = os.urandom(16)
    offer, eph = _sealed_offer(tid, receiver.settings.identity.public, key)
    receiver.on_mail(_inbound(offer))
    for msg in take(from_receiver, "space"):
        space.on_mail(msg)
    for msg in take(from_space, "receiver"):
        receiver.on_mail(msg)
    [answer] = take(from_receiver, "gateway")
    assert isinstance(answer, Outbound)
    accept = codec.decode(answer.payload)
    assert isinstance(accept, Accept), accept
    secrets = eph.finish(tid, accept.static_pub, accept.eph_pub, accept.proof)
    keys = TransferKeys.for_sender(tid, secrets)
    data.routing_id = keys.route_id(0)
    data.connect(f"tcp://127.0.0.1:{receiver.data_port}")
    t = receiver.transfers[tid]
    for i in range(key.total):
        last = i == key.total - 1
        nonce, sealed = keys.seal_chunk(i, last, content[i * CHUNK : (i + 1) * CHUNK])
        data.send_multipart(
            [codec.encode(ChunkHeader(tid=tid, index=i, last=last, nonce=nonce)), sealed]
        )
    deadline = time.monotonic() + 20
    while not t.flow.written.complete:
        assert time.monotonic() < deadline, "the chunks were not written"
        if receiver.data.poll(50):
            receiver._on_data(receiver.data)
        if receiver.writer_results.poll(50):
            receiver._on_writer(receiver.writer_results)
    return tid, keys


def _done(
    receiver: ReceiverActor, data: zmq.Socket[bytes], keys: TransferKeys, content: bytes
) -> None:
    """The sender's Done of ``content`` over ``data``, taken by the receiver,
    which tells the sender to wait (Verifying)."""
    total = -(-len(content) // CHUNK)
    nonce, done = keys.seal_message(
        codec.encode(Done(digest=blake3.blake3(content).digest(), chunks=total))
    )
    data.send_multipart([codec.encode(SealedHeader(tid=keys.tid, nonce=nonce)), done])
    t = receiver.transfers[keys.tid]
    deadline = time.monotonic() + 20
    while not t.flow.finishing:
        assert time.monotonic() < deadline, "the Done was not taken"
        if receiver.data.poll(50):
            receiver._on_data(receiver.data)
    _sealed_until(data, keys, Verifying)


def test_a_final_check_that_stops_moving_ends_and_frees_the_slot_and_space(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """Every chunk is written and the sender's Done came, then the writer
    stops answering (a disk that hangs, a part that cannot be read back):
    the check covers nothing for the idle timeout. The transfer ends
    "timeout": the sender gets a sealed Failed saying so, the part stays
    for a resume (charged as kept), the slot and the reservation are freed,
    and the statistics history has its row. Before, it waited for ever in
    its final check and every offer of the file was refused "verifying"."""
    env, settings, clock = node
    content = os.urandom(3 * CHUNK - 100)
    key = ResumeKey(SENDER.public, "stuck.bin", len(content), CHUNK, b"k" * 32)
    receiver = ReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    from_receiver, from_space = record(receiver), record(space)
    receiver.setup()
    data: zmq.Socket[bytes] = env.context.socket(zmq.DEALER)
    data.linger = 0
    unclosed = -1
    try:
        tid, keys = _written(receiver, space, (from_receiver, from_space), key, content, data)
        t = receiver.transfers[tid]
        receiver.writer.stop()  # from here on the writer answers nothing
        unclosed = t.fd  # nor closes the part (the test does, at the end)
        _done(receiver, data, keys, content)
        take(from_receiver, "stats")
        clock.advance(settings.idle_timeout - 1)
        receiver._expire_idle()
        assert tid in receiver.transfers  # still within its bound
        clock.advance(1.5)
        receiver._expire_idle()
        assert tid not in receiver.transfers
        failed = [m for m in _sealed_until(data, keys, Failed) if isinstance(m, Failed)]
        reason = (
            "the receiver's final check of the file made no progress "
            f"for {settings.idle_timeout:g} s"
        )
        assert [(f.code, f.reason) for f in failed] == [("timeout", reason)]
        assert receiver.counters.get("check-timeout") == 1
        rows = [r for r in take(from_receiver, "stats") if isinstance(r, StatsRecord)]
        assert [(r.session, r.result, r.reason) for r in rows] == [(tid.hex(), "timeout", reason)]
        for msg in take(from_receiver, "space"):
            space.on_mail(msg)
        assert not space.ledger.is_running(b"receiver/" + tid)
        assert space.ledger.promised == 0 and space.ledger.kept == [t.part.name]
        assert t.part.exists()  # kept: a resend resumes with every chunk held
    finally:
        data.close(linger=0)
        receiver.teardown()
        if unclosed >= 0:
            os.close(unclosed)
        for sock in receiver._sockets:
            sock.close(linger=0)


def _started(
    env: ActorEnv, settings: NodeSettings
) -> tuple[ReceiverActor, SpaceActor, tuple[Mail, Mail]]:
    """A receiver, set up (its writer runs), and a space actor; the mail
    each one tells recorded."""
    receiver = ReceiverActor(env, settings)
    space = SpaceActor(env, settings)
    mail = record(receiver), record(space)
    receiver.setup()
    return receiver, space, mail


def test_a_tick_tells_the_ledger_what_every_transfer_wrote_in_one_message(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """At a progress tick the receiver tells the space actor the bytes on
    disk of every transfer that wrote since the last tick, all in one
    ``SpaceWrittens`` (not a message per transfer and tick), and each
    reservation shrinks by what its transfer wrote; a tick with nothing new
    tells nothing."""
    env, settings, _ = node
    receiver, space, mail = _started(env, settings)
    sockets: list[zmq.Socket[bytes]] = []
    try:
        sizes: dict[bytes, int] = {}
        for name, size in (("a.bin", 3 * CHUNK - 100), ("b.bin", 2 * CHUNK)):
            key = ResumeKey(SENDER.public, name, size, CHUNK, os.urandom(32))
            data: zmq.Socket[bytes] = env.context.socket(zmq.DEALER)
            data.linger = 0
            sockets.append(data)
            tid, _ = _written(receiver, space, mail, key, os.urandom(size), data)
            sizes[tid] = size
        assert space.ledger.promised == sum(sizes.values())
        receiver._report_progress()
        [writes] = take(mail[0], "space")
        assert isinstance(writes, SpaceWrittens)
        assert dict(zip(writes.tid, writes.written, strict=True)) == sizes
        space.on_mail(writes)
        assert space.ledger.promised == 0
        receiver._report_progress()
        assert take(mail[0], "space") == []
    finally:
        for sock in sockets:
            sock.close(linger=0)
        receiver.teardown()
        for sock in receiver._sockets:
            sock.close(linger=0)


def test_a_final_check_queued_behind_one_that_moves_waits_for_it(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """Two transfers finish together. The receiver's one writer thread
    checks the first (a big file read back from a slow disk) for longer
    than the idle timeout, making progress all along; the second's check
    starts only after it. The second waits its turn: it does not end
    "timeout" while the writer moves. Once the writer stops moving, both
    end so."""
    env, settings, clock = node
    receiver, space, mail = _started(env, settings)
    socks: list[zmq.Socket[bytes]] = []
    unclosed: list[int] = []
    try:
        sent = []
        for name in ("first.bin", "second.bin"):
            content = os.urandom(2 * CHUNK + 7)
            key = ResumeKey(
                SENDER.public, name, len(content), CHUNK, blake3.blake3(name.encode()).digest()
            )
            sock: zmq.Socket[bytes] = env.context.socket(zmq.DEALER)
            sock.linger = 0
            socks.append(sock)
            tid, keys = _written(receiver, space, mail, key, content, sock)
            sent.append((tid, keys, sock, content))
        first, second = sent[0][0], sent[1][0]
        receiver.writer.stop()  # the test plays the writer's progress from here on
        unclosed = [receiver.transfers[tid].fd for tid, *_ in sent]
        for _tid, keys, sock, content in sent:
            _done(receiver, sock, keys, content)  # the writer checks them in this order
        progress = receiver.writer._checked_setter(first)  # the first's hash, as it goes
        for step in range(1, 5):
            clock.advance(settings.idle_timeout / 2)
            progress(step * 1024 * 1024)
            receiver._expire_idle()
            assert {first, second} <= receiver.transfers.keys(), step
        assert receiver.counters.get("check-timeout") is None
        clock.advance(settings.idle_timeout + 1)  # then the writer stops moving
        receiver._expire_idle()
        assert not receiver.transfers and receiver.counters.get("check-timeout") == 2
    finally:
        for sock in socks:
            sock.close(linger=0)
        receiver.teardown()
        for fd in unclosed:
            os.close(fd)
        for s in receiver._sockets:
            s.close(linger=0)


def test_an_attach_takes_only_the_connection_it_names_and_is_bounded(
    node: tuple[ActorEnv, NodeSettings, FakeClock],
) -> None:
    """A sender's shared data connection joins a transfer by the transfer's
    own sealed Attach naming that connection's routing id (here a re-offer
    of a delivered file, which waits for its Done like a transfer): a copy
    arriving on another connection attaches nothing and leaves its nonce to
    the real one; a large frame from a connection not attached is not even
    opened; a transfer attaches at most MAX_ATTACHED connections; its Done
    is then taken from the connection it attached."""
    env, settings, _ = node
    key = ResumeKey(SENDER.public, "shared.bin", 1000, CHUNK, b"s" * 32)
    receiver, from_receiver = _holding(env, settings, key)
    try:
        tid, accept, eph = _re_offered(receiver, from_receiver, key)
        keys = TransferKeys.for_sender(
            tid, eph.finish(tid, settings.identity.public, accept.eph_pub, accept.proof)
        )
        echo = receiver.echoes[tid]

        def sealed(msg: codec.Message) -> tuple[SealedHeader, memoryview]:
            nonce, body = keys.seal_message(codec.encode(msg))
            return SealedHeader(tid=tid, nonce=nonce), memoryview(body)

        shared, other = new_route_id(0), new_route_id(0)
        header, body = sealed(Attach(route=shared))
        receiver._on_echo(echo, other, header, body)  # raced from another connection
        assert echo.routes == set() and receiver.counters["data-dropped-route"] == 1
        receiver._on_echo(echo, shared, header, body)  # the real one: its nonce still fresh
        assert echo.routes == {shared} and receiver.counters["data-attached"] == 1
        receiver._on_echo(echo, shared, header, body)
        assert receiver.counters["data-dropped-replay"] == 1
        big, _ = sealed(Attach(route=other))
        receiver._on_echo(echo, other, big, memoryview(bytes(ATTACH_MAX_BYTES + 1)))
        assert receiver.counters["data-dropped-route"] == 2 and echo.routes == {shared}
        for _ in range(MAX_ATTACHED - 1):
            route = new_route_id(1)
            receiver._on_echo(echo, route, *sealed(Attach(route=route)))
        assert len(echo.routes) == MAX_ATTACHED
        receiver._on_echo(echo, other, *sealed(Attach(route=other)))
        assert receiver.counters["data-dropped-attached-too-many"] == 1
        assert other not in echo.routes
        receiver._on_echo(echo, shared, *sealed(Done(digest=b"h" * 32, chunks=key.total)))
        assert tid not in receiver.echoes  # answered: Verified went to the shared connection
        assert receiver.counters["delivered-before-verified"] == 1
    finally:
        receiver.teardown()
        for sock in receiver._sockets:
            sock.close(linger=0)
