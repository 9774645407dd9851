"""Attacks by an admitted member (network key, any number of fresh
identities) on a real receiving node, each while a good transfer runs.

Every test asserts the attack was seen for what it is (the receiver's
counters), that the node kept running, and that the good transfer sent at
the same time still stored a file with the right hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import zmq

from actors.multicast_receiver import MAX_SESSIONS_PER_PEER
from actors.receiver import CANCEL_ANSWER_EVERY
from peercrypt.chunking import MAX_CHUNK
from peercrypt.core.answer_budget import BudgetLimits
from peercrypt.core.bitmap import MAX_RANGES, MAX_TRANSFER_CHUNKS, pairs
from peercrypt.core.port_guard import GuardLimits
from peercrypt.crypto.handshake import prove_hello
from peercrypt.crypto.identity import KeyPair, load_or_create_identity, network_server_keys
from peercrypt.testing.hostile import (
    CoReceiver,
    FloodingGateway,
    FloodingReceiver,
    HostNamingReceiver,
    member_gateway,
)
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    assert_stored,
    blake3_file,
    wait_until,
)
from peercrypt.testing.zmtp_flood import (
    CurveMember,
    RawDataPeer,
    curve_flood_and_reset,
    flood_and_reset,
    flood_and_reset_on,
    flood_until_closed,
    frame_header,
)
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Ack,
    Done,
    Hello,
    HelloReply,
    Offer,
    Refuse,
    SealedHeader,
    Verified,
)
from peercrypt.wire.multicast_messages import McAnnounce, McJoin, McRefuse, McStatus
from peercrypt.wire.text import printable

WAIT = 30.0
MiB = 1 << 20
# RSS a node may grow beyond its port's configured bound under a flood (each
# test says what it is made of).
GATEWAY_SLACK_MIB = 16


def accepted(t: HostileTransfer | Refused) -> HostileTransfer:
    assert isinstance(t, HostileTransfer), t
    return t


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """A process's peak (VmHWM) or current (VmRSS) resident memory, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def acks(t: HostileTransfer, sock: zmq.Socket[Any], timeout: float) -> list[Ack]:
    """The Acks that arrive on ``sock`` within ``timeout`` seconds."""
    out: list[Ack] = []
    wait = int(timeout * 1000)
    while sock.poll(wait):
        wait = 200
        frames = sock.recv_multipart()
        header = codec.decode_as(frames[0], SealedHeader)
        msg = codec.decode(t.keys.open_message(header.nonce, frames[1]))
        if isinstance(msg, Ack):
            out.append(msg)
    return out


def acked_on(t: HostileTransfer, sock: zmq.Socket[Any], cumulative: int) -> Ack:
    """The first Ack on ``sock`` that acknowledges every chunk below
    ``cumulative`` (acks of chunks still waiting for the writer may come
    before it); fails after WAIT seconds without one."""
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        frames = sock.recv_multipart()
        header = codec.decode_as(frames[0], SealedHeader)
        msg = codec.decode(t.keys.open_message(header.nonce, frames[1]))
        if isinstance(msg, Ack) and msg.cumulative >= cumulative:
            return msg
    raise AssertionError(f"no ack of {cumulative} chunks within {WAIT} s")


def test_a_replayed_chunk_cannot_redirect_acks(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A transfer is pinned to its own connections: frames of it from any
    other connection (replayed, or fresh ones raced from elsewhere) are
    dropped and counted, and its acks never go there."""
    receiver, sender = node_factory(), node_factory()
    good = make_file(4 * MiB)
    running = BackgroundSend(sender, good, receiver, "-r", str(2 * MiB))
    chunk = 64 * 1024
    content = os.urandom(4 * chunk)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        t = accepted(h.offer("replayed.bin", len(content), chunk))
        captured = t.send_chunk(0, content[:chunk])
        assert acks(t, t.data, WAIT)  # the sender's own connection is the route
        thief = t.connect(h.ctx)  # someone else's connection
        for _ in range(3):
            thief.send_multipart(captured)  # replays of a captured frame
        # A fresh, authentic frame (one captured before it arrived) raced from elsewhere.
        thief.send_multipart(t.chunk_frames(1, content[chunk : 2 * chunk]))
        receiver.wait_for_counter("receiver.data-dropped-route", 4, WAIT)
        t.send_frames(captured)  # a replay on the transfer's own connection
        receiver.wait_for_counter("receiver.data-dropped-replay", 1, WAIT)
        t.send_chunk(1, content[chunk : 2 * chunk])
        assert acked_on(t, t.data, 2).cumulative == 2
        assert acks(t, thief, 1.0) == []  # nothing was redirected to the other connection
        # The transfer's own second lane (its routing id from the keys) is welcome.
        lane = t.connect(h.ctx, lane=1)
        lane.send_multipart(t.chunk_frames(2, content[2 * chunk : 3 * chunk]))
        assert acked_on(t, lane, 3).cumulative == 3
        thief.close(0)
        lane.close(0)
    assert_sent(receiver, running.join(), good)


def test_a_finished_transfers_dones_get_answers_at_a_bounded_rate(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A member repeats the Done of its finished transfer as fast as it can:
    the receiver answers it from its memory of finished transfers (its
    Verified again) at most every CANCEL_ANSWER_EVERY, not once per frame;
    the rest are dropped and counted. The same Done from another connection
    (the data port is plain TCP: the id can be seen) gets nothing and takes
    no turn."""
    receiver, sender = node_factory(), node_factory()
    good = make_file(4 * MiB)
    running = BackgroundSend(sender, good, receiver, "-r", str(2 * MiB))
    chunk, burst = 64 * 1024, 200
    content = os.urandom(chunk)
    digest = blake3.blake3(content).digest()
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        t = accepted(h.offer("finished.bin", len(content), chunk))
        verdict = t.send_stream(content, WAIT)
        assert isinstance(verdict, Verified) and verdict.digest == digest, verdict
        thief = t.connect(h.ctx)  # someone else's connection
        for _ in range(3):
            nonce, sealed = t.keys.seal_message(codec.encode(Done(digest=digest, chunks=1)))
            thief.send_multipart([codec.encode(SealedHeader(tid=t.tid, nonce=nonce)), sealed])
        receiver.wait_for_counter("receiver.data-dropped-route", 3, WAIT)
        # Dones, a reply looked for after each (up to 10 ms), until at least
        # `burst` went and one was answered (an answer to a Done sent before
        # may have taken the interval the first ones came in).
        started = time.monotonic()
        sent = answers = 0
        while sent < burst or not answers:
            assert time.monotonic() - started < WAIT, "no repeated Done was answered"
            t.send_done(digest)
            sent += 1
            answers += sum(isinstance(m, Verified) for m in t.replies(0.01))

        def settled() -> bool | None:
            nonlocal answers
            answers += sum(isinstance(m, Verified) for m in t.replies(0.1))
            dropped = receiver.counters().get("receiver.data-dropped-finished", 0)
            return answers + dropped >= sent or None

        wait_until(settled, WAIT, "every Done answered or dropped")
        elapsed = time.monotonic() - started
        assert not thief.poll(0), "a connection not the transfer's got an answer"
        thief.close(0)
    # One answer per interval (and one to a Done sent before these):
    # without the bound every one of them is answered.
    assert answers <= 2 + elapsed / CANCEL_ANSWER_EVERY < sent / 2, (answers, sent, elapsed)
    assert_sent(receiver, running.join(), good)


def test_a_forged_chunk_changes_nothing_and_never_reaches_the_file(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A chunk with valid framing and a wrong tag, on the transfer's own
    connection: dropped ("auth"), nothing of it in the part, no ack, and its
    nonce not used up: the real chunk with the same nonce is taken, and the
    file is stored with the right hash."""
    receiver = node_factory()
    chunk = 64 * 1024
    content = os.urandom(3 * chunk)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        t = accepted(h.offer("forged.bin", len(content), chunk))
        header, sealed = t.chunk_frames(0, content[:chunk])
        forged = bytearray(sealed)
        forged[100] ^= 1  # one bit of the ciphertext: the tag no longer matches
        t.send_frames([header, bytes(forged)])
        receiver.wait_for_counter("receiver.data-dropped-auth", 1, WAIT)
        (part,) = receiver.inbox.glob(".forged.bin.*.part")
        assert part.read_bytes()[:chunk] == bytes(chunk)  # nothing of it was written
        assert acks(t, t.data, 0.5) == []  # the forged one caused no ack
        t.send_frames([header, sealed])  # the real one, with the same nonce
        assert t.acked(1, WAIT).cumulative == 1
        assert part.read_bytes()[:chunk] == content[:chunk]
        answer = t.send_stream(content)
        digest = blake3.blake3(content).digest()
        assert isinstance(answer, Verified) and answer.digest == digest, answer
        assert blake3_file(receiver.inbox / answer.stored_as) == digest.hex()
    # the real chunks all opened (counted before the file it makes is)
    assert receiver.counters_when("receiver.received", 1)["receiver.data-dropped-auth"] == 1
    # The buffer the forged chunk was decrypted into went back to the pool with the others'.
    out = lambda: receiver.status().get("decrypt_buffers_out") == "0" or None  # noqa: E731
    wait_until(out, WAIT, "the receiver's decrypt buffers all given back")
    assert receiver.running


def test_chunks_beyond_the_credit_are_dropped_and_memory_stays_bounded(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(8 * MiB)
    before = rss_kib(receiver.pid, "VmRSS")
    flood = 600  # MiB sent at once while the credit is 16 chunks (16 MiB)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        t = accepted(h.offer("flood.bin", 4096 * MiB, MiB))
        running = BackgroundSend(sender, good, receiver, "-r", str(4 * MiB))
        block = os.urandom(MiB)
        for index in range(flood):
            t.send_chunk(index, block)
        dropped = receiver.wait_for_counter("receiver.data-dropped-over-credit", 1, WAIT)
        assert_sent(receiver, running.join(), good)
        peak = rss_kib(receiver.pid)
        t.abandon()
    assert dropped >= 1
    # Credit (16 MiB), the good transfer's ring (its credit and 4 chunks),
    # allocator slack, and what ZeroMQ read ahead of the receiver's dropping:
    # not capped (a cap lets any peer abort the node, docs/security.md), so
    # as much as the dropping falls behind the flood: 90-250 MiB here, under
    # load. Well below the 600 MiB sent: the chunks were not kept.
    assert (peak - before) // 1024 < 400, f"RSS grew {(peak - before) // 1024} MiB"
    assert receiver.running


def test_a_sparse_offer_of_millions_of_chunks_is_acked_by_ranges(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(4 * MiB)
    chunk = 4096
    total = 4_000_000  # 16 GB, sparse on disk
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        too_many = h.offer("huge.bin", (MAX_TRANSFER_CHUNKS + 1) * chunk, chunk)
        assert isinstance(too_many, Refused) and isinstance(too_many.answer, Refuse)
        assert too_many.answer.code == "bad-offer"
        t = accepted(h.offer("sparse.bin", total * chunk, chunk))
        running = BackgroundSend(sender, good, receiver, "-r", str(2 * MiB))
        block = os.urandom(chunk)
        stride = total // 12  # 12 held chunks spread over the file, chunk 0 missing
        held = [k * stride + 7 for k in range(1, 12)] + [total - 1]
        for index in held:
            t.send_chunk(index, block[: t.chunk_length(index)])
        want = [(i, i + 1) for i in held]

        def full_ack() -> Ack | None:
            return next((a for a in acks(t, t.data, 0.5) if pairs(a.sack) == want), None)

        ack = wait_until(full_ack, WAIT, "an ack listing every held range")
        assert ack.cumulative == 0 and len(ack.sack) // 2 <= MAX_RANGES
        assert_sent(receiver, running.join(), good)
        t.abandon()
    assert receiver.running


def test_odd_and_oversize_fields_crash_nothing(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(2 * MiB)
    names = [
        "\U0001d11e" * 1024,  # the longest name, 4 bytes per character
        "\x1b[2J\x1b[31mred\x07.bin",  # terminal control sequences
        "evil\u202etxt.exe",  # a bidi override
        "line\nbreak\r.bin",
        "\ufeff\u200b\u2028\u2029\ud7ff\uffff",
        "../../" * 150 + "x",
        ".",
        "con",
        "\x00",
    ]
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        answers = [h.offer(name, 1, 4096) for name in names]
        running = BackgroundSend(sender, good, receiver)
        assert_sent(receiver, running.join(), good)
        for t in answers:
            if isinstance(t, HostileTransfer):
                t.abandon()
    assert receiver.running
    # (the reports that count the good send's file and offer have what came before)
    counters = receiver.counters_when("receiver.received", 1)
    assert counters.get("receiver.handler-errors", 0) == 0
    counters = receiver.counters_when("gateway.in-offer", len(names) + 1)
    assert counters.get("gateway.handler-errors", 0) == 0
    log = receiver.log_text()
    assert "\x1b" not in log and "\u202e" not in log and "\x07" not in log


def test_throwaway_identities_cannot_take_every_slot(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(2 * MiB)
    held: list[HostileSender] = []
    refused = 0
    try:
        # Nine fresh identities from another address, eight offers each: 72,
        # more than the receiver's 64 slots in all. (Of 64 MiB each: the 16
        # accepted reserve 1 GiB of the disk; of 1 GiB each they needed 16,
        # and two were refused for space in a run on a fuller disk.)
        for _ in range(9):
            h = HostileSender(network_key, receiver.host, receiver.port, source="127.0.0.2")
            held.append(h)
            for k in range(8):
                answer = h.offer(f"slot{k}.bin", 64 * MiB, MiB)
                refused += isinstance(answer, Refused)
        assert refused == 72 - 16  # at most 16 transfers per address
        assert_sent(receiver, sender.send_to(good, receiver), good)
    finally:
        for h in held:
            h.close()
    assert receiver.wait_for_counter("receiver.refused-busy", refused) == refused


def test_pending_bytes_are_bounded_per_identity_and_per_address(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """Offers of huge files that then send nothing promise the disk away; a
    pending-bytes quota bounds them per proven identity and per address, so
    fresh identities from the same address do not get around it."""
    quota = 4 << 30
    receiver, sender = node_factory("--pending-quota", str(quota)), node_factory()
    good = make_file(2 * MiB)
    held: list[HostileSender] = []

    def hostile() -> HostileSender:
        held.append(HostileSender(network_key, receiver.host, receiver.port, source="127.0.0.2"))
        return held[-1]

    try:
        first = hostile()
        accepted(first.offer("big.bin", 3 << 30, MiB))
        again = first.offer("more.bin", 2 << 30, MiB)  # same identity: 5 GiB > 4
        assert isinstance(again, Refused) and isinstance(again.answer, Refuse), again
        assert again.answer.code == "quota" and "from you" in again.answer.reason
        throwaway = hostile().offer("other.bin", 2 << 30, MiB)  # a fresh identity, same address
        assert isinstance(throwaway, Refused) and isinstance(throwaway.answer, Refuse)
        assert throwaway.answer.code == "quota" and "127.0.0.2" in throwaway.answer.reason
        accepted(hostile().offer("fits.bin", 512 * MiB, MiB))  # within the address's quota
        # Another address has its own: the good sender's file verifies meanwhile.
        assert_sent(receiver, sender.send_to(good, receiver), good)
    finally:
        for h in held:
            h.close()
    assert receiver.wait_for_counter("receiver.refused-quota", 2) == 2


def test_a_receiver_answering_with_terminal_escapes_reaches_no_terminal_raw(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    sender, receiver = node_factory(), node_factory()
    good = make_file(1 * MiB)
    ctx: zmq.Context[Any] = zmq.Context()
    router, port = member_gateway(ctx, network_key)
    stop = threading.Event()

    me = KeyPair.generate()

    def refuse_everything() -> None:  # a hostile "receiver" (it proves its own key)
        while not stop.is_set():
            if router.poll(50):
                route, payload = router.recv_multipart()[:2]
                try:
                    msg = codec.decode(payload)
                except codec.DecodeError:
                    continue
                if isinstance(msg, Hello):
                    proof = prove_hello(me, msg.challenge, "0")
                    reply = HelloReply(node_id=me.public, version="0", proof=proof)
                    router.send_multipart([route, codec.encode(reply)])
                    continue
                if not isinstance(msg, Offer):
                    continue
                offer = msg
                reason = ("\x1b[2J\x1b]0;owned\x07\u202e" * 100)[:512]
                router.send_multipart(
                    [route, codec.encode(Refuse(tid=offer.tid, code="x" * 32, reason=reason))]
                )

    thread = threading.Thread(target=refuse_everything, daemon=True)
    thread.start()
    try:
        answer = sender.cli("send", str(good), "127.0.0.1", str(port))
    finally:
        stop.set()
        thread.join(5)
        router.close(0)
        ctx.term()
    assert answer.returncode != 0
    shown = answer.stdout + answer.stderr
    assert "peercrypt: error:" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\x1b" not in sender.log_text()
    assert_sent(receiver, sender.send_to(good, receiver), good)  # the sender goes on
    assert sender.counters_when("sender.sent", 1).get("sender.handler-errors", 0) == 0


def test_one_identity_cannot_take_every_multicast_session(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(1 * MiB)
    hostile = CoReceiver(network_key)
    to = load_or_create_identity(receiver.data_dir).public  # what a hello to it tells
    try:
        announces = [
            hostile.sealed_announce(to, os.urandom(16), f"squat{i}.bin", 64 * MiB, 64 * 1024)
            for i in range(MAX_SESSIONS_PER_PEER + 2)
        ]
        answers = hostile.announce(receiver.host, receiver.port, announces)
        joined = [a for a in answers if isinstance(a, McJoin)]
        busy = [a for a in answers if isinstance(a, McRefuse) and a.code == "busy"]
        assert (len(joined), len(busy)) == (MAX_SESSIONS_PER_PEER, 2), answers
        # A real multicast from another identity still gets a session and verifies.
        done = sender.cli("send", str(good), receiver.host, str(receiver.port), "-m", "--json")
        assert done.returncode == 0, done.describe()
        assert_stored(receiver, done.json, blake3_file(good))
    finally:
        hostile.close()


def test_a_member_flooding_multicast_announces_has_no_more_opened_than_its_budget(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """Each announce cost the receiver two X25519s (its answer's and its
    sealed details') before any limit. A member with a fresh identity sends
    twice its budget of announces, each of a new session sealed to the
    receiver's key: the gateway hands on at most its budget (the rest are
    answered ``try-again`` unopened), and of those the receiver opens only
    the ones its session limits let in (the others are ``busy`` unopened).
    A real multicast from another member then still verifies."""
    receiver, sender = node_factory(), node_factory()
    good = make_file(256 * 1024)
    limits = BudgetLimits()
    rounds = 2 * limits.peer_burst
    hostile = CoReceiver(network_key)
    to = load_or_create_identity(receiver.data_dir).public  # what a hello to it tells
    try:
        announces = [
            hostile.sealed_announce(to, os.urandom(16), f"flood{i}.bin", MiB, 64 * 1024)
            for i in range(rounds)
        ]
        started = time.monotonic()
        answers = hostile.announce(receiver.host, receiver.port, announces)
        seen = receiver.counters_when("gateway.in-mc-announce", rounds, timeout=60)
        elapsed = time.monotonic() - started
        over = seen.get("gateway.announces-over-peer", 0)
        handed = rounds - over
        assert over > 0, "every announce was handed to the multicast receiver"
        assert handed <= limits.peer_burst + limits.peer_rate * elapsed + 1, (handed, elapsed)
        later = [
            a for a in answers
            if isinstance(a, McRefuse) and a.code == "try-again"
            and a.reason == "too many announces from you at once"
        ]  # fmt: skip
        busy = [a for a in answers if isinstance(a, McRefuse) and a.code == "busy"]
        joined = [a for a in answers if isinstance(a, McJoin)]
        assert 0 < len(later) <= over, (len(later), over)
        assert len(joined) == MAX_SESSIONS_PER_PEER and busy, answers[:8]
        assert all(a.reason == f"too many sessions from you (max {MAX_SESSIONS_PER_PEER})"
                   for a in busy)  # fmt: skip
        # Every busy one refused before its key agreement: only the joined opened.
        mine = receiver.counters_when("mreceiver.refused-busy", len(busy))
        assert mine.get("mreceiver.announces-opened") == MAX_SESSIONS_PER_PEER, mine
        done = sender.cli("send", str(good), receiver.host, str(receiver.port), "-m", "--json")
        assert done.returncode == 0, done.describe()
        assert_stored(receiver, done.json, blake3_file(good))
    finally:
        hostile.close()


def test_a_multicast_announce_with_its_name_in_clear_is_refused(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """An announce whose name and size travel in clear (not sealed to the
    receiver's key after a hello, as every sender of ours does) is refused
    before it costs a session or a part, and the receiver goes on: a sealed
    one from the same member is joined."""
    receiver = node_factory()
    hostile = CoReceiver(network_key)
    to = load_or_create_identity(receiver.data_dir).public
    try:
        sealed = hostile.sealed_announce(to, os.urandom(16), "sealed.bin", 1 * MiB, 64 * 1024)
        clear = McAnnounce(
            sid=os.urandom(16),
            name="clear.bin",
            size=1 * MiB,
            chunk_size=64 * 1024,
            eph_pub=KeyPair.generate().public,
            pub_host="",
            pub_port=1,
            signer=hostile.signer.public,
        )
        answers = hostile.announce(receiver.host, receiver.port, [clear, sealed])
    finally:
        hostile.close()
    by_sid = {a.sid: a for a in answers}
    refused, joined = by_sid.get(clear.sid), by_sid.get(sealed.sid)
    assert isinstance(refused, McRefuse) and refused.code == "unsealed", answers
    assert "sealed" in refused.reason
    assert isinstance(joined, McJoin), answers
    assert receiver.wait_for_counter("mreceiver.refused-unsealed", 1) == 1
    assert not [p for p in receiver.inbox.iterdir() if "clear" in p.name]


def test_a_multicast_announce_naming_another_host_for_its_chunks_is_refused(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """An announce's ``pub_host`` would have the receiver dial any TCP
    endpoint a member names (``a b`` made its connect fail, and the session
    sat joined until it expired): our senders leave it empty, and one that
    names a host is refused before it costs a session; the same member's
    announce without it is joined."""
    receiver = node_factory()
    hostile = CoReceiver(network_key)
    to = load_or_create_identity(receiver.data_dir).public
    try:
        plain = hostile.sealed_announce(to, os.urandom(16), "plain.bin", 1 * MiB, 64 * 1024)
        elsewhere = [
            dataclasses.replace(
                hostile.sealed_announce(to, os.urandom(16), f"{n}.bin", 1 * MiB, 64 * 1024),
                pub_host=host,
            )
            for n, host in enumerate(["10.0.0.1;127.0.0.1", "a b", receiver.host])
        ]
        answers = hostile.announce(receiver.host, receiver.port, [*elsewhere, plain])
    finally:
        hostile.close()
    by_sid = {a.sid: a for a in answers}
    for announce in elsewhere:
        refused = by_sid.get(announce.sid)
        assert isinstance(refused, McRefuse) and refused.code == "protocol", answers
        assert refused.reason == "the chunks come from the sender's own address only"
    assert isinstance(by_sid.get(plain.sid), McJoin), answers
    counters = receiver.counters_when("mreceiver.refused-protocol", len(elsewhere))
    assert counters["mreceiver.refused-protocol"] == len(elsewhere), counters
    assert counters.get("mreceiver.handler-errors", 0) == 0, counters
    assert not [p for n in range(len(elsewhere)) for p in receiver.inbox.glob(f".{n}.bin.*")]


def test_a_multicast_senders_end_reason_reaches_no_terminal_raw(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member ends a session it announced with a reason made of escape
    sequences and a forged log line: the receiving node's log and its
    statistics history (which `stats show` prints) hold it escaped."""
    receiver = node_factory()
    hostile = CoReceiver(network_key)
    to = load_or_create_identity(receiver.data_dir).public
    forged = "\x1b]0;PWNED\x07\x1b[2K\rgot invoice.pdf, verified\n2099-01-01 INFO forged line"
    sid = os.urandom(16)
    try:
        sealed = hostile.sealed_announce(to, sid, "ended.bin", 1 * MiB, 64 * 1024)
        (joined,) = hostile.announce(receiver.host, receiver.port, [sealed])
        assert isinstance(joined, McJoin), joined
        hostile.ask(receiver.host, receiver.port, [McStatus(sid=sid, horizon=0, end=forged)])
        receiver.wait_for_counter("mreceiver.dropped-by-sender", 1, WAIT)
    finally:
        hostile.close()
    log = receiver.log_text()
    assert "ended by the sender: \\x1b]0;PWNED\\x07" in log, receiver.log_tail()
    assert "\x1b" not in log and "\n2099-01-01 INFO forged" not in log
    rows = json.loads(receiver.cli("stats", "list", "--json").stdout)
    (row,) = [r for r in rows if r["file"] == "ended.bin"]
    shown = receiver.cli("stats", "show", str(row["id"])).stdout
    assert "the sender ended the session: \\x1b]0;PWNED" in shown, shown
    assert "\x1b" not in shown and "\x07" not in shown


def test_a_senders_transfer_mode_reaches_no_terminal_raw(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member offers a file claiming a transfer mode made of escape
    sequences and a forged result line (the mode is kept for the statistics
    history, which `stats list` and `stats show` print): the file is
    received, its mode recorded as "other", and nothing of the claim
    reaches the terminal or the log; the same member's offer naming a known
    mode is recorded with it."""
    receiver = node_factory()
    content = os.urandom(64 * 1024)
    forged = "\x1b]0;PWNED\x07\nresult     ok\n"
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        t = accepted(h.offer("moded.bin", len(content), 16 * 1024, mode=forged))
        assert isinstance(t.send_stream(content), Verified)
        t = accepted(h.offer("aimd.bin", len(content), 16 * 1024, mode="aimd"))
        assert isinstance(t.send_stream(content), Verified)
    for name in ("moded.bin", "aimd.bin"):
        assert blake3_file(receiver.inbox / name) == blake3.blake3(content).hexdigest()

    def recorded() -> list[dict[str, Any]] | None:
        rows = json.loads(receiver.cli("stats", "list", "--json").stdout)
        ok = {r["file"]: r for r in rows if r["result"] == "ok"}
        return [ok["moded.bin"], ok["aimd.bin"]] if len(ok) == 2 else None

    moded, aimd = wait_until(recorded, WAIT, "both files in the statistics history")
    assert (moded["mode"], aimd["mode"]) == ("other", "aimd"), (moded, aimd)
    listed = receiver.cli("stats", "list").stdout
    shown = receiver.cli("stats", "show", str(moded["id"])).stdout
    assert "other" in listed and "other" in shown, (listed, shown)
    assert "PWNED" not in listed + shown
    for text in (listed, shown, receiver.log_text()):
        assert "\x1b" not in text and "\x07" not in text


def test_tiny_frames_heartbeats_and_a_reset_cannot_abort_the_receiver(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Any peer reaching the data port (its ZMTP needs no key): a flood of
    one-byte messages with heartbeat PINGs among them, then a reset. With a
    finite receive queue libzmq 4.3.5 stops reading that connection with
    PINGs still in its buffer, marks it failed on the reset, and aborts the
    whole process on the PONG once the queue drains
    (peercrypt/testing/zmtp_flood.py). The node keeps running, counted what
    it dropped, and still stores a good file with the right hash."""
    receiver, sender = node_factory(), node_factory()
    for _ in range(5):
        flood_and_reset(receiver.host, receiver.data_port)
        assert receiver.running, receiver.log_tail()
    dropped = receiver.wait_for_counter("receiver.data-dropped-malformed", 1, WAIT)
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)
    assert dropped >= 1
    assert receiver.running, receiver.log_tail()


def test_a_publisher_flooding_a_multicast_receivers_sub_with_heartbeats_cannot_abort_it(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """The same attack from a multicast session's sender, on the SUB socket
    the receiver connects to the publishing port its announce names, and on
    the receiver's repair port: a
    member announces a session of its own, gives the key, and on each
    connection the SUB makes there floods one-byte messages under the
    session's topic with PINGs among them, then resets it (the SUB connects
    again; with the SUB's receive queue at 256, as before, the node aborted
    at the first; so did it with the repair port's at 16). Then one-byte
    messages under the topic without end on the SUB's next connection:
    closed after 8-9 MiB, the node grown 17-18 MiB at load 9-15 (the SUB
    reads without a cap now; unguarded, 32 MiB of it grew the node 106
    MiB), and the SUB connects again after a pause. The receiver keeps
    running and a real multicast from another node still stores a file that
    verifies."""
    memory = 16 * MiB
    receiver, sender = node_factory("--data-port-memory", str(memory)), node_factory()
    to = load_or_create_identity(receiver.data_dir).public
    hostile = CoReceiver(network_key)
    publishing = socket.create_server(("127.0.0.1", 0))
    publishing.settimeout(WAIT)
    try:
        sid = hostile.publish_to(receiver.host, receiver.port, to, publishing.getsockname()[1])
        for _ in range(5):
            try:
                sub, _ = publishing.accept()  # the receiver's SUB, connecting (again)
            except TimeoutError:
                raise AssertionError(f"no SUB came: {receiver.log_tail()}") from None
            flood_and_reset_on(sub, socket_type=b"PUB", topic=sid)
            assert receiver.running, receiver.log_tail()
        # Its repair port, which admits the sender of a running session (its
        # queue was 16 messages).
        repair = int(receiver.status()["multicast_repair_port"])
        for _ in range(5):
            flood_and_reset(receiver.host, repair, socket_type=b"PUSH")
            assert receiver.running, receiver.log_tail()
        before = rss_kib(receiver.pid, "VmRSS")
        peer = RawDataPeer.accepted(publishing.accept()[0], b"PUB")
        sent = flood_until_closed(peer, 64, topic=sid)
        grown = (rss_kib(receiver.pid) - before) // 1024
        publishing.accept()[0].close()  # it comes back after its pause
    finally:
        publishing.close()
        hostile.close()
    # The slack as for the data port's floods (what arrives between two
    # readings of the counters).
    assert grown < memory // MiB + 64, f"RSS grew {grown} MiB"
    assert sent is not None, "still open after 64 MiB"
    assert receiver.wait_for_counter("mreceiver.sub-closed-unread", 1, WAIT) >= 1
    good = make_file(4 * MiB)
    code, result = sender.send(good, receiver.host, receiver.port, "-m")
    assert code == 0, result
    assert_stored(receiver, result, blake3_file(good))
    assert receiver.running, receiver.log_tail()


def test_tiny_message_floods_cost_bounded_memory_round_after_round(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Anyone who reaches the data port floods it with one-byte messages (3
    bytes on the wire, a 64-byte slot each in libzmq: 21 times the wire),
    is disconnected, reconnects and floods again. Whole messages libzmq
    queued outlive the connection, so its address keeps their debt until the
    receiver has taken them: memory stays near the bound over three rounds
    (counted by wire bytes and forgotten at each close, the first round alone
    held 16 MiB of wire, ~340 MiB), and a good transfer still verifies."""
    memory = 16 * MiB
    receiver, sender = node_factory("--data-port-memory", str(memory)), node_factory()
    before = rss_kib(receiver.pid, "VmRSS")
    for round_ in range(3):
        peer = RawDataPeer(receiver.host, receiver.data_port, "127.0.0.2")
        try:
            sent = flood_until_closed(peer)
        except ConnectionError:  # closed in its handshake: the round before's debt
            # (the receiver has not yet taken what libzmq queued from the
            # address, on a loaded machine) is over its share, so its new
            # connection goes at once, before any flood: the guard at work.
            assert round_ > 0, "the first connection was closed in its handshake"
            sent = 0
        assert sent is not None, f"round {round_}: still open after 64 MiB"
        assert receiver.running, receiver.log_tail()
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)
    grown = (rss_kib(receiver.pid) - before) // 1024
    # The slack: what arrives before the receiver reads the counters again (a
    # MiB sent is 22 MiB in libzmq; 20 ms before a quarter of the bound is
    # held, 2 ms after, later on a loaded machine: 29-35 MiB grown in all
    # here at load 8-11), the good transfer's chunks, the allocator's own.
    assert grown < memory // MiB + 64, f"RSS grew {grown} MiB"
    assert receiver.wait_for_counter("receiver.data-closed-unread", 3, WAIT) >= 3
    assert receiver.running, receiver.log_tail()


def test_a_member_flooding_the_gateway_with_heartbeats_cannot_abort_the_node(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """The same attack through the gateway's CURVE (a member with a fresh
    key): its messages and PINGs are sealed, the abort the same. The node
    keeps running and still stores a good file with the right hash.

    The member floods from 127.0.0.2, as in the gateway's other flood
    tests: what its floods leave unread is its address's debt, and a
    member sharing that address may have its connections closed while the
    debt is beyond the address's share (by design: the guard accounts per
    address), which is not what this test is about."""
    receiver, sender = node_factory(), node_factory()
    server = network_server_keys(network_key).public
    for _ in range(5):
        curve_flood_and_reset(receiver.host, receiver.port, server, source="127.0.0.2")
        assert receiver.running, receiver.log_tail()
    good = make_file(4 * MiB)
    # (its gateway may still be reading the floods' backlog: the send's
    # pre-send check waits behind it, 10 s by default, which a loaded CI
    # machine once passed; the node's survival is the point, not the time)
    assert_sent(receiver, sender.send_to(good, receiver, "--timeout", "60", timeout=120), good)
    assert receiver.running, receiver.log_tail()


def test_a_member_flooding_the_gateway_with_tiny_messages_costs_bounded_memory(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A member with a fresh key floods the gateway with one-byte messages
    (36 bytes on the wire with CURVE, about 145 bytes of the node's memory
    each while libzmq holds them, and each one costs the gateway a decode
    and a refusal: libzmq reads them far faster than the gateway takes
    them). The node's RSS grows by at most the bound plus a slack, the
    flooding connection is closed, and a good transfer sent meanwhile
    verifies (unbounded, 1.6 million such messages in a minute grew a node
    by about 190 MiB; charged 64 bytes each, the node grew twice the bound)."""
    memory = 32 * MiB
    receiver = node_factory("--control-port-memory", str(memory))
    sender = node_factory()
    good = make_file(4 * MiB)
    server = network_server_keys(network_key).public
    before = rss_kib(receiver.pid, "VmRSS")
    member = CurveMember(receiver.host, receiver.port, server, source="127.0.0.2")
    try:
        running = BackgroundSend(sender, good, receiver)
        started = time.monotonic()
        sent = member.flood(2_000_000, seconds=60.0)
        took = time.monotonic() - started
        assert_sent(receiver, running.join(), good)
        grown = (rss_kib(receiver.pid) - before) // 1024
        # The slack: the good transfer's chunks (4 MiB, in the socket and the
        # writer's queue), what arrives before the gateway reads the counters
        # again (~70,000 messages a second here, 10 MiB a second: 5 ms once a
        # quarter is held, later on a loaded machine), the allocator's own.
        assert grown < memory // MiB + GATEWAY_SLACK_MIB, (
            f"RSS grew {grown} MiB ({sent} sent in {took:.1f} s)"
        )
        assert member.closed_by_node(WAIT), f"still open after {sent} messages"
    finally:
        member.close()
    assert receiver.wait_for_counter("gateway.closed-unread", 1, WAIT) >= 1
    assert receiver.running, receiver.log_tail()


def test_a_member_quiet_until_the_gateway_stops_reading_it_is_seen_when_it_floods(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member connects, says nothing until the gateway has stopped reading
    its connection (the kernel is to tell of its next byte:
    ``connections-listened``), then floods one-byte messages. The kernel's
    word wakes the gateway at the first byte, however soon libzmq read it:
    the connection is closed and the node's RSS grows by at most the bound
    plus a slack (were that word lost, nothing would read the connection
    again and the flood would go on unseen: the test fails so)."""
    memory = 32 * MiB
    receiver = node_factory("--control-port-memory", str(memory))
    listened = receiver.counters().get("gateway.connections-listened", 0)
    server = network_server_keys(network_key).public
    member = CurveMember(receiver.host, receiver.port, server, source="127.0.0.2")
    try:
        receiver.wait_for_counter("gateway.connections-listened", listened + 1, WAIT)
        before = rss_kib(receiver.pid, "VmRSS")
        sent = member.flood(2_000_000, seconds=60.0)
        grown = (rss_kib(receiver.pid) - before) // 1024
        # The slack as for the flood above, less the good transfer's chunks.
        assert grown < memory // MiB + GATEWAY_SLACK_MIB, f"RSS grew {grown} MiB ({sent} sent)"
        assert member.closed_by_node(WAIT), f"still open after {sent} messages"
    finally:
        member.close()
    assert receiver.wait_for_counter("gateway.closed-unread", 1, WAIT) >= 1
    assert receiver.running, receiver.log_tail()


def test_anyone_flooding_a_multicast_publisher_with_heartbeats_cannot_abort_it(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The same attack on a multicast sender's publishing port (an XPUB:
    plain ZMTP, which anyone who reaches it may join as a subscriber, whose
    messages are subscriptions the sender reads; with its receive queue
    capped the node aborted at the first flood). The node keeps running, a
    subscriber flooding one-byte messages without end is closed (what libzmq
    holds of the port is bounded), and a multicast send after that still
    stores a file that verifies."""
    sender, receiver = node_factory(), node_factory()
    first = make_file(5000)
    code, result = sender.send(first, receiver.host, receiver.port, "-m")
    assert code == 0, result  # the publishing port is bound at the first session
    pub_port = int(
        wait_until(lambda: sender.status().get("multicast_pub_port"), 5, "the PUB port fact")
    )
    for _ in range(5):
        flood_and_reset(sender.host, pub_port, socket_type=b"SUB")
        assert sender.running, sender.log_tail()
    # From another address: 127.0.0.1 may still be closed for the floods'
    # debt (what libzmq queued of them is charged to it until taken).
    sent = flood_until_closed(RawDataPeer(sender.host, pub_port, "127.0.0.2", b"SUB"))
    assert sent is not None, "still open after 64 MiB"
    assert sender.wait_for_counter("msender.sub-closed-unread", 1, WAIT) >= 1
    good = make_file(4 * MiB)
    code, result = sender.send(good, receiver.host, receiver.port, "-m")
    assert code == 0, result
    assert_stored(receiver, result, blake3_file(good))
    assert sender.running, sender.log_tail()


def test_data_port_connections_and_unread_bytes_are_bounded(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Anyone who reaches the data port (no key needed) opens 1,000
    connections, each stopping in the middle of a long frame, and one more
    that sends a multipart message that never ends: what libzmq holds of
    them (read, never delivered) stays under the node's bound, the
    connections beyond it are closed, and a good transfer still verifies."""
    memory = 32 * MiB
    receiver, sender = node_factory("--data-port-memory", str(memory)), node_factory()
    good = make_file(4 * MiB)
    before = rss_kib(receiver.pid, "VmRSS")
    partial = os.urandom(64 * 1024)  # the connections kept hold 8 MiB: under the bound
    peers: list[RawDataPeer] = []
    try:
        for _ in range(1000):  # each stops inside a frame of the largest size
            peer = RawDataPeer(receiver.host, receiver.data_port, source="127.0.0.2")
            peers.append(peer)
            peer.greet()
            peer.send(frame_header(MAX_CHUNK, more=True) + partial)
        # Every connection counted before the next attack. The 128 kept ones
        # stay (8 MiB, within their share of the bound, whatever the endless
        # one's debt): a debt closes only its own address's connections.
        over = 1000 - GuardLimits.per_address
        receiver.wait_for_counter("receiver.data-closed-over-cap", over, WAIT)
        endless = RawDataPeer(receiver.host, receiver.data_port, source="127.0.0.3")
        endless.handshake()
        block = frame_header(MiB, more=True) + os.urandom(MiB)
        sent = 0
        while sent < 1024 and endless.send(block):  # 1 GiB, every frame under MAXMSGSIZE
            sent += 1
        assert endless.closed_by_node(WAIT), f"still open after {sent} MiB"
        assert_sent(receiver, sender.send_to(good, receiver), good)
        peak = rss_kib(receiver.pid)
        # A busy machine may show a close later than 10 ms: look again at
        # those still open while more than the cap are.
        kept = [peer for peer in peers if not peer.closed_by_node(0.01)]
        deadline = time.monotonic() + WAIT
        while len(kept) > GuardLimits.per_address and time.monotonic() < deadline:
            kept = [peer for peer in kept if not peer.closed_by_node(0.01)]
        closed = len(peers) - len(kept)
    finally:
        for peer in peers:
            peer.close()
    grown = (peak - before) // 1024
    # The bound, plus what arrives while the receiver reads the counters (a
    # loaded machine delays it: at load 13, with another copy of the suite
    # running, 139 MiB over the bound was seen once), the good transfer's
    # buffers, the allocator's slack. Unguarded, the endless peer alone
    # makes the node hold its whole GiB.
    assert grown < memory // MiB + 192, f"RSS grew {grown} MiB"
    assert closed >= 1000 - GuardLimits.per_address
    # (A node's counters reach its status a little after the fact.)
    assert receiver.wait_for_counter("receiver.data-closed-unread", 1, WAIT) >= 1
    assert receiver.wait_for_counter("receiver.data-closed-connections", closed, WAIT) >= closed
    assert receiver.counters()["receiver.data-closed-over-cap"] >= 1000 - GuardLimits.per_address
    assert receiver.running


def test_a_receiver_flooding_the_senders_data_connection_costs_bounded_memory(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A member answers an offer as a receiver and floods the data
    connection the sender makes to it with one-byte messages (3 bytes on the
    wire, a 64-byte slot each in libzmq, which reads them ahead without a
    cap). The sender closes that connection once what it holds unread passes
    its bound, its send fails saying why (not retried: an honest receiver
    sends at most an ack per chunk), the sender's RSS grows by at most the
    bound plus a slack (unbounded, 32 MiB of such a flood grows a node by
    about 700 MiB), and a good file it sends next verifies."""
    memory = 16 * MiB
    sender = node_factory("--data-port-memory", str(memory))
    receiver = node_factory()
    identity = load_or_create_identity(sender.data_dir).public
    hostile = FloodingReceiver(network_key, identity, megabytes=32)
    before = rss_kib(sender.pid, "VmRSS")
    try:
        answer = sender.cli("send", str(make_file(4 * MiB)), "127.0.0.1", str(hostile.port))
        flooded = wait_until(lambda: list(hostile.flooded), WAIT, "the flood's end")
    finally:
        hostile.close()
    grown = (rss_kib(sender.pid) - before) // 1024
    # The slack: what arrives before the sender reads the counters again (a
    # MiB sent is 22 MiB in libzmq; 20 ms before a quarter of the bound is
    # held, 2 ms after, later on a loaded machine: 24-40 MiB grown in all
    # here at load 14), the file's chunks and the allocator's own.
    assert grown < memory // MiB + 64, f"RSS grew {grown} MiB ({flooded} MiB flooded)"
    assert flooded[0] is not None, "the sender kept reading 32 MiB of flood"
    assert answer.returncode != 0
    assert "holds unread" in answer.stdout + answer.stderr, answer.describe()
    assert sender.wait_for_counter("sender.data-closed-unread", 1, WAIT) >= 1
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)
    assert sender.counters_when("sender.sent", 1).get("sender.handler-errors", 0) == 0


def zmq_sockets(pid: int) -> int:
    """The ZeroMQ sockets a process holds: each has an eventfd (its mailbox)."""
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # (closed meanwhile)
            held += "eventfd" in os.readlink(fd)
    return held


def test_a_receiver_naming_a_data_host_that_cannot_be_dialled_ends_the_send_at_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A member answers offers with accepts naming, as the host of its data
    port, text libzmq's connect raises on (a blank, punctuation, a letter
    that is not ASCII) or reads more into (a source address before a `;`).
    Each send ends at once with one line naming that host, not after its
    timeout as unanswered (its data socket and that socket's monitor were
    left open, the connect raising in the middle of the accept); the sender
    holds no socket more for them, and a good file it sends next verifies."""
    sender, receiver = node_factory(), node_factory()
    identity = load_or_create_identity(sender.data_dir).public
    hosts = ["a b", "x!y", "\u00e9", "127.0.0.2;127.0.0.1", "-", "a b", "x!y", "\u00e9"]
    hostile = HostNamingReceiver(network_key, identity, hosts[0])
    small = make_file(64 * 1024)
    held: list[int] = []
    try:
        for host in hosts:
            hostile.data_host = host
            answer = sender.cli(
                "send", "--timeout", "60", str(small), "127.0.0.1", str(hostile.port)
            )
            errors = [line for line in answer.stderr_lines if "error" in line]
            assert answer.returncode != 0 and len(errors) == 1, answer.describe()
            said = f"sent an invalid accept: its data host '{printable(host)}' is no host name"
            assert said in errors[0], answer.describe()
            assert answer.seconds < 30, answer.describe()
            held.append(zmq_sockets(sender.pid))
        assert hostile.offers == len(hosts)
    finally:
        hostile.close()
    # (the first send made the sender's link to the member; each leaked two)
    assert held[-1] <= held[0] + 2, held
    counters = sender.counters_when("sender.failed-protocol", len(hosts))
    assert counters.get("sender.handler-errors", 0) == 0, counters
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)


@pytest.mark.parametrize("held", [False, True], ids=["at-once", "after-a-quiet-while"])
def test_a_member_flooding_a_link_the_node_dialled_costs_bounded_memory(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
    held: bool,
) -> None:
    """A member the node dials (here as the receiver of an offer; a member
    gossiped with or probed is met the same way) answers on that link with
    one-byte messages without end (about 145 bytes of the node's memory each
    while libzmq holds them, read ahead without a cap). The node closes the
    link's connection once what it holds unread passes its bound and
    connects again only after a pause, its RSS grows by at most the bound
    plus a slack, and a good file it sends meanwhile verifies. Whether the
    flood comes at once or after the link was quiet long enough that the
    node stopped reading it (``held``: the kernel is to tell of its next
    byte)."""
    memory = 16 * MiB
    sender = node_factory("--control-port-memory", str(memory))
    receiver = node_factory()
    hostile = FloodingGateway(network_key, messages=2_000_000, held=held)
    before = rss_kib(sender.pid, "VmRSS")
    try:
        listened = sender.counters().get("sender.link-connections-listened", 0)
        offer = threading.Thread(
            target=sender.cli, args=("send", str(make_file(MiB)), "127.0.0.1", str(hostile.port))
        )
        offer.start()
        if held:  # quiet until the sender stopped reading its link (the kernel tells)
            sender.wait_for_counter("sender.link-connections-listened", listened + 1, WAIT)
            hostile.flood.set()
        wait_until(lambda: hostile.sent >= hostile.messages or None, 120.0, "the flood")
        grown = (rss_kib(sender.pid) - before) // 1024
        # The slack as for the gateway's flood (14-31 MiB grown here at load
        # 10-13; unguarded, 306 MiB).
        assert grown < memory // MiB + 64, f"RSS grew {grown} MiB"
        assert sender.wait_for_counter("sender.link-closed-unread", 1, WAIT) >= 1
        good = make_file(4 * MiB)
        assert_sent(receiver, sender.send_to(good, receiver), good)
        offer.join(60.0)
    finally:
        hostile.close()
    assert sender.counters_when("sender.sent", 1).get("sender.handler-errors", 0) == 0
