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

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from actors.multicast_receiver import SPACE_VERDICT_TIMEOUT as MC_TIMEOUT
from actors.multicast_receiver import MulticastReceiverActor
from actors.receiver import SPACE_VERDICT_TIMEOUT, ReceiverActor
from actors.space import SpaceActor
from peercrypt.crypto.chunk_signature import ChunkSigner
from peercrypt.crypto.handshake import Initiator
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.testing.clock import FakeClock
from peercrypt.wire import codec
from peercrypt.wire.messages import Inbound, Offer, OfferDetails, Outbound, Refuse
from peercrypt.wire.multicast_messages import McAnnounce, McDetails
from peercrypt.wire.space_messages import SpaceCancel, SpaceReserve, SpaceVerdict

SENDER_SEED = b"s" * 32
SENDER = KeyPair.from_seed(SENDER_SEED)
CHUNK = 64 * 1024


Mail = list[tuple[str, codec.Message]]


def record(actor: Actor) -> Mail:
    """What ``actor`` tells other actors, in order, as decoded from the wire."""
    sent: Mail = []

    def tell(to: str, msg: codec.Message) -> None:
        sent.append((to, codec.decode(codec.encode(msg))))

    actor.tell = tell  # type: ignore[method-assign]
    return sent


def take(mail: Mail, to: str) -> list[codec.Message]:
    """The messages to ``to`` (removed from ``mail``)."""
    mine = [m for t, m in mail if t == to]
    mail[:] = [(t, m) for t, m in mail if t != to]
    return mine


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ActorEnv, NodeSettings, FakeClock]]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=inbox,
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
    )
    clock = FakeClock()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ActorEnv(ctx, "verdicts", clock=clock), settings, clock
    finally:
        ctx.term()


def _offer(tid: bytes, to: bytes) -> bytes:
    eph = Initiator(SENDER)
    details = OfferDetails(
        name="late.bin", size=1000, chunk_size=CHUNK, hash_alg="blake3", source=b"x" * 32
    )
    sealed = eph.seal_details(tid, to, codec.encode(details))
    return codec.encode(Offer(tid=tid, eph_pub=eph.public, details=sealed))


def _announce(sid: bytes, to: bytes) -> bytes:
    wrap = Initiator(SENDER)
    sealed = wrap.seal_details(sid, to, codec.encode(McDetails(name="late.bin", size=1000)))
    announce = McAnnounce(
        sid=sid,
        details=sealed,
        chunk_size=CHUNK,
        eph_pub=wrap.public,
        pub_host="",
        pub_port=1,
        signer=ChunkSigner(SENDER_SEED).public,
    )
    return codec.encode(announce)


def _inbound(payload: bytes) -> Inbound:
    return Inbound(route=b"route", peer=SENDER.public, peer_host="127.0.0.1", payload=payload)


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
        actor = ReceiverActor(env, settings)
        payload, timeout = (lambda: _offer(tid, settings.identity.public)), SPACE_VERDICT_TIMEOUT
    else:
        actor = MulticastReceiverActor(env, settings)
        payload, timeout = (lambda: _announce(tid, settings.identity.public)), MC_TIMEOUT
    space = SpaceActor(env, settings)
    from_actor, from_space = record(actor), record(space)

    actor.on_mail(_inbound(payload()))
    [first] = take(from_actor, "space")
    assert isinstance(first, SpaceReserve) and first.tid == tid
    clock.advance(timeout)
    expire = actor._expire_asks if isinstance(actor, ReceiverActor) else actor._expire_joins
    expire()
    if kind == "receiver":  # the offer is answered "busy" (the sender tries again)
        [busy] = take(from_actor, "gateway")
        assert isinstance(busy, Outbound)
        refused = codec.decode(busy.payload)
        assert isinstance(refused, Refuse) and refused.code == "busy"
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
    assert cancels == [SpaceCancel(owner=kind, tid=tid, request=first.request)]
    for msg in cancels:
        space.on_mail(msg)
    assert space.ledger.is_running(kind.encode() + b"/" + tid)
    assert space.ledger.promised == 1000  # the retry's reservation, once
