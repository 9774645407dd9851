"""The budget of ``hello``/``ping`` answers (peercrypt/core/answer_budget.py)
in memory, and a member flooding a real node with hellos and pings: its
answers stay within its budget, and another member's hello is answered
meanwhile."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.answer_budget import MAX_TRACKED, AnswerBudget, BudgetLimits, Verdict
from peercrypt.crypto.handshake import HelloChallenge, Initiator
from peercrypt.crypto.identity import KeyPair, fingerprint, network_server_keys
from peercrypt.testing.hostile_sender import HostileSender
from peercrypt.testing.member_port import proven_hello
from peercrypt.testing.nodes import NodeProcess, assert_sent, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Accept,
    Hello,
    HelloReply,
    Offer,
    OfferDetails,
    Ping,
    Pong,
    Refuse,
)

MiB = 1024 * 1024

MiB = 1 << 20
SMALL = BudgetLimits(
    peer_rate=2.0, peer_burst=4, address_rate=3.0, address_burst=6, node_rate=5.0, node_burst=8
)


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 0.5, allow_nan=False)), max_size=300))
def test_answers_within_each_budget_over_any_run(questions: list[tuple[int, float]]) -> None:
    """Over [0, t] an identity gets at most burst + rate * t answers, the
    identities of an address and the node at most their own; one identity's
    refusals spend nothing of the node's."""
    budget = AnswerBudget(0.0, SMALL)
    now = 0.0
    per_peer: dict[int, int] = {}
    per_address: dict[int, int] = {}
    total = 0
    for who, step in questions:
        now += step
        verdict = budget.ask(bytes([who]), str(who % 2), now)
        if verdict is Verdict.ANSWER:
            per_peer[who] = per_peer.get(who, 0) + 1
            per_address[who % 2] = per_address.get(who % 2, 0) + 1
            total += 1
        assert per_peer.get(who, 0) <= SMALL.peer_burst + SMALL.peer_rate * now + 1e-9
        assert per_address.get(who % 2, 0) <= SMALL.address_burst + SMALL.address_rate * now + 1e-9
        assert total <= SMALL.node_burst + SMALL.node_rate * now + 1e-9


def test_a_flooding_identity_does_not_spend_the_others_budget() -> None:
    budget = AnswerBudget(0.0, SMALL)
    verdicts = [budget.ask(b"flooder", "a", 0.0) for _ in range(100)]
    assert verdicts.count(Verdict.ANSWER) == SMALL.peer_burst
    assert verdicts.count(Verdict.OVER_PEER) == 100 - SMALL.peer_burst
    # the node's budget (8) still has 4 answers: the next identity gets them
    assert [budget.ask(b"other", "b", 0.0) for _ in range(4)] == [Verdict.ANSWER] * 4
    assert budget.ask(b"third", "c", 0.0) is Verdict.OVER_NODE
    # refilled with time: 1 s later the node has 5 more, the flooder 2
    assert [budget.ask(b"flooder", "a", 1.0) for _ in range(3)] == [
        Verdict.ANSWER,
        Verdict.ANSWER,
        Verdict.OVER_PEER,
    ]


def test_fresh_identities_of_one_address_share_its_budget() -> None:
    budget = AnswerBudget(0.0, SMALL)
    verdicts = [budget.ask(bytes([i]), "flood", 0.0) for i in range(20)]
    assert verdicts.count(Verdict.ANSWER) == SMALL.address_burst
    assert verdicts.count(Verdict.OVER_ADDRESS) == 20 - SMALL.address_burst
    # the node's budget (8) has 2 left, for another address
    assert [budget.ask(b"other", "b", 0.0) for _ in range(3)] == [
        Verdict.ANSWER,
        Verdict.ANSWER,
        Verdict.OVER_NODE,
    ]


def test_the_table_of_identities_is_bounded() -> None:
    budget = AnswerBudget(0.0)
    for i in range(MAX_TRACKED + 50):
        budget.ask(i.to_bytes(4, "big"), str(i), 0.0)
    assert budget.tracked == MAX_TRACKED


def _member(ctx: zmq.Context[Any], network_key: str, queue: int) -> zmq.Socket[Any]:
    """A DEALER of a member (the network key, a fresh identity) whose queues
    hold ``queue`` messages each way, not yet connected."""
    sock = ctx.socket(zmq.DEALER)
    me = KeyPair.generate()
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = queue
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
    return sock


def test_a_member_flooding_hellos_and_pings_gets_its_budget_and_the_others_their_answers(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    node = node_factory()
    limits = BudgetLimits()  # the node's
    rounds = limits.peer_burst * 3 // 2  # a hello and a ping each: 3 x the burst
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _member(ctx, network_key, 4 * rounds)
    challenge = HelloChallenge()
    try:
        sock.connect(f"tcp://{node.host}:{node.port}")
        started = time.monotonic()
        for seq in range(rounds):
            sock.send(codec.encode(Hello(challenge=challenge.public)))
            sock.send(codec.encode(Ping(seq=seq)))
        # Another member, asking while the flood is handled, is answered.
        other = proven_hello(node.host, node.port, network_key)
        assert fingerprint(other.node_id) == node.fingerprint
        node.wait_for_counter("gateway.in-hello", rounds + 1, timeout=60)
        node.wait_for_counter("gateway.in-ping", rounds, timeout=60)
        elapsed = time.monotonic() - started
        refused = node.counters().get("gateway.unanswered-over-peer", 0)
        answered = 2 * rounds - refused
        assert answered <= limits.peer_burst + limits.peer_rate * elapsed + 1, (answered, elapsed)
        pongs: set[int] = set()
        for _ in range(answered):  # each a proof of our challenge, or a pong of ours
            assert sock.poll(10_000), "fewer answers than the node counted"
            reply = codec.decode(sock.recv())
            if isinstance(reply, Pong):
                assert reply.seq in range(rounds) and reply.seq not in pongs
                pongs.add(reply.seq)
                continue
            assert isinstance(reply, HelloReply), reply
            challenge.verify(reply.node_id, reply.version, reply.proof, reply.offer_key)
            assert reply.node_id == other.node_id
        assert pongs, "no ping was answered"
    finally:
        sock.close()
        ctx.term()


def test_a_member_repeating_refused_messages_gets_no_more_answers_than_its_budget(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """What the gateway refuses is answered too (an error naming why, a
    peer of another protocol version its own envelope's error): a member
    repeating such messages gets those answers within the same budget as
    hellos (it was answered every one), and another member's hello is
    answered meanwhile."""
    node = node_factory()
    limits = BudgetLimits()
    rounds = limits.peer_burst * 3 // 2  # two refused messages each: 3 x the burst
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _member(ctx, network_key, 4 * rounds)
    old = msgpack.packb([1, "hello", {"challenge": bytes(32)}], use_bin_type=True)
    try:
        sock.connect(f"tcp://{node.host}:{node.port}")
        started = time.monotonic()
        for _ in range(rounds):
            sock.send(old)  # another protocol version
            sock.send(b"\xc1 not msgpack")  # malformed
        other = proven_hello(node.host, node.port, network_key)
        assert fingerprint(other.node_id) == node.fingerprint
        node.wait_for_counter("gateway.rejected-version", rounds, timeout=60)
        node.wait_for_counter("gateway.rejected-malformed", rounds, timeout=60)
        elapsed = time.monotonic() - started
        refused = node.counters().get("gateway.unanswered-over-peer", 0)
        answered = 2 * rounds - refused
        assert refused > 0 and answered <= limits.peer_burst + limits.peer_rate * elapsed + 1, (
            answered,
            elapsed,
        )
        for _ in range(answered):  # each an error, in the envelope the message came in
            assert sock.poll(10_000), "fewer answers than the node counted"
            version, kind, _fields = msgpack.unpackb(sock.recv(), raw=False)
            assert kind == "error" and version in (1, codec.VERSION), (version, kind)
        assert not sock.poll(500), "more answers than the node counted"
    finally:
        sock.close()
        ctx.term()


def test_fresh_identities_flooding_hellos_cannot_starve_other_addresses(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """32 fresh identities from one address ask hellos as fast as they can
    (together 4x the node's rate, each within its own): the node answers
    within its budgets, and meanwhile a member at another address gets its
    hello answered and a send from there (its pre-send hello first) verifies."""
    receiver, sender = node_factory(), node_factory()
    good = make_file(MiB)
    limits = BudgetLimits()
    ctx: zmq.Context[Any] = zmq.Context()
    server = network_server_keys(network_key).z85_public
    flood: list[zmq.Socket[Any]] = []
    for _ in range(32):
        sock = ctx.socket(zmq.DEALER)
        me = KeyPair.generate()
        sock.linger = 0
        sock.curve_serverkey = server
        sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
        sock.connect(f"tcp://127.0.0.2:0;{receiver.host}:{receiver.port}")
        flood.append(sock)
    hello = codec.encode(Hello(challenge=HelloChallenge().public))
    stop = threading.Event()

    def run() -> None:  # every socket owned by this thread until it stops
        while not stop.is_set():
            for sock in flood:
                with contextlib.suppress(zmq.Again):
                    sock.send(hello, zmq.NOBLOCK)
                with contextlib.suppress(zmq.Again):
                    while True:
                        sock.recv(zmq.NOBLOCK)

    flooding = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    flooding.start()
    try:
        unanswered = ("gateway.unanswered-over-node", "gateway.unanswered-over-address")

        def saturated() -> int | None:
            got = sum(receiver.counters().get(k, 0) for k in unanswered)
            return got if got >= 2000 else None

        wait_until(saturated, 60, "the flood past the node's budget")
        other = proven_hello(receiver.host, receiver.port, network_key)
        assert fingerprint(other.node_id) == receiver.fingerprint
        assert_sent(receiver, sender.send_to(good, receiver), good)
    finally:
        stop.set()
        flooding.join(10)
        for sock in flood:
            sock.close()
        ctx.term()
    elapsed = time.monotonic() - started
    counters = receiver.counters()
    refused = sum(v for k, v in counters.items() if k.startswith("gateway.unanswered-"))
    answered = counters["gateway.in-hello"] - refused
    assert answered <= limits.node_burst + limits.node_rate * elapsed, (answered, elapsed)
    assert receiver.running and counters.get("gateway.handler-errors", 0) == 0


def test_a_member_flooding_offers_has_no_more_opened_than_its_budget(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """Each offer costs the receiver its sealed details opened (an X25519,
    AES-GCM) and an answer, also beyond its identity's limit of transfers
    (to see whether it takes one of them over): offers from one identity
    are handed to the receiver within a budget (they had none: about 1,500
    a second were opened and refused), the rest refused ``busy`` by the
    gateway unopened (a real sender offers again after its busy wait).
    Another member is answered meanwhile."""
    node = node_factory()
    limits = BudgetLimits()
    rounds = limits.peer_burst * 2
    with HostileSender(network_key, node.host, node.port) as member:
        key = member.hello()
        started = time.monotonic()
        for _ in range(rounds):
            tid, eph = os.urandom(16), Initiator(member.identity)
            details = OfferDetails(
                name="flood.bin", size=MiB, chunk_size=64 * 1024, min_chunk=0,
                hash_alg="blake3", source=os.urandom(32), tree=0, files=0,
            )  # fmt: skip
            sealed = eph.seal_details(tid, key, codec.encode(details))
            member.control.send(codec.encode(Offer(tid=tid, eph_pub=eph.public, details=sealed)))
        other = proven_hello(node.host, node.port, network_key)
        assert fingerprint(other.node_id) == node.fingerprint
        node.wait_for_counter("gateway.in-offer", rounds, timeout=60)
        elapsed = time.monotonic() - started
        over = node.counters().get("gateway.offers-over-peer", 0)
        opened = rounds - over
        assert over > 0, "every offer was handed to the receiver"
        assert opened <= limits.peer_burst + limits.peer_rate * elapsed + 1, (opened, elapsed)
        busy = 0
        while member.control.poll(2000):
            reply = codec.decode(member.control.recv())
            assert isinstance(reply, Accept | Refuse), reply
            busy += isinstance(reply, Refuse) and reply.reason == "too many offers from you at once"
        assert 0 < busy <= over, (busy, over)
