"""A member flooding a real node's public port with gossip (the network key,
a fresh identity, the same pre-signed records over and over): the node takes
only its gossip budget of bytes from it (core/answer_budget.py's
``GOSSIP_LIMITS``), its memory does not grow with the flood, records that
change nothing cost no signature check, and it goes on serving sends."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from nacl.signing import SigningKey

from peercrypt.core.answer_budget import GOSSIP_LIMITS
from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import MemberRecord
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.testing.member_port import MemberPort
from peercrypt.testing.nodes import LOCALHOST, NodeProcess, assert_sent, random_file, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import MAX_WRAPPED
from peercrypt.wire.network_messages import DIGEST_ENTRY, Gossip, GossipReply

MESSAGES = 1500  # of ~63 KiB each: ~95 MB


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def _read_all_or_closed(counters: dict[str, int]) -> bool | None:
    read = counters.get("gateway.in-gossip", 0) >= MESSAGES
    return read or counters.get("gateway.closed-unread", 0) > 0 or None


def _flood_message(me: KeyPair) -> bytes:
    """One Gossip from ``me`` with as many valid records of fresh identities
    as fit in a control message."""
    records = [
        MemberRecord.create(
            key, bytes(key.verify_key), 0, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
        ).to_wire()
        for key in (SigningKey(os.urandom(32)) for _ in range(400))
    ]
    count = len(records)
    while True:
        try:
            data = codec.encode(Gossip(origin=me.node_id, records=records[:count], digest=[]))
        except ValueError:  # larger than a message
            data = b""
        if data and len(data) <= MAX_WRAPPED - 256:
            return data
        count -= 8


def test_a_gossip_flood_gets_its_budget_and_costs_no_memory(
    node_factory: Callable[..., NodeProcess], network_key: str, tmp_path: Path
) -> None:
    node = node_factory()
    sender = node_factory()
    pid = node.pid
    before = _vm(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from here
    me = KeyPair.from_seed(os.urandom(32))  # an identity: gossip names it as origin
    data = _flood_message(me)
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        sock.sndhwm = 64
        sock.curve_serverkey = network_server_keys(network_key).z85_public
        sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
        sock.connect(f"tcp://{node.host}:{node.port}")
        started = time.monotonic()
        for _ in range(MESSAGES):
            assert sock.poll(30_000, zmq.POLLOUT), "the node stopped reading its port"
            sock.send(data)
        # All read, or the port's guard closed the flooding connection (on a
        # loaded machine the gateway reads slower than the flood comes: what
        # libzmq held unread passed --control-port-memory).
        wait_until(lambda: _read_all_or_closed(node.counters()), 120, "the flood to be read or cut")
        counters = node.counters()
        elapsed = time.monotonic() - started
    finally:
        sock.close()
        ctx.term()
    read = counters.get("gateway.in-gossip", 0)
    refused = counters.get("gateway.gossip-over-peer", 0)
    assert read >= 100 and refused > 0, counters
    # At any moment, what went on to discovery is within the budget so far.
    budgeted = GOSSIP_LIMITS.peer_burst + GOSSIP_LIMITS.peer_rate * elapsed
    handed_on = read - refused - counters.get("gateway.inbound-dropped-discovery", 0)
    assert handed_on <= budgeted / len(data) + 1, (handed_on, elapsed)
    assert counters.get("discovery.gossip-received", 0) <= handed_on
    # The flood went through the port (and its CURVE) but not into memory.
    grown = _vm(pid, "VmHWM") - before
    assert grown < 96 * 2**20, f"the node's RSS grew by {grown >> 20} MiB"
    # It goes on serving: an honest send, verified.
    path = random_file(tmp_path / "after.bin", 1 << 20)
    assert_sent(node, sender.send_to(path, node), path)


def test_gossip_replies_nobody_asked_for_are_dropped_unread(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member the node gossips with answers on the node's own link (where
    the gateway's budget does not look) with replies nobody asked for, as
    fast as it writes, full of records that would change the table: only
    the answers to exchanges the node asked are read (their records checked);
    the rest are dropped unread (each used to cost a signature check per
    record: 15k a second)."""
    node = node_factory("--gossip-interval", "0.2")
    seed = os.urandom(32)
    me, signer = KeyPair.from_seed(seed), SigningKey(seed)
    port = MemberPort(network_key)
    forged = []
    for _ in range(20):  # new members, each signature broken: checked, then refused
        key = SigningKey(os.urandom(32))
        wire = bytearray(
            MemberRecord.create(
                key, bytes(key.verify_key), 0, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
            ).to_wire()
        )
        wire[-1] ^= 1
        forged.append(bytes(wire))
    replies = 300
    dealer: zmq.Socket[Any] | None = None
    try:
        record = MemberRecord.create(
            signer, me.node_id, 0, MemberState.ALIVE, {"control": f"tcp://{LOCALHOST}:{port.port}"}
        )
        dealer = port.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.curve_serverkey = network_server_keys(network_key).z85_public
        dealer.curve_publickey, dealer.curve_secretkey = me.z85_public, me.z85_secret
        dealer.connect(f"tcp://{node.host}:{node.port}")
        dealer.send(codec.encode(Gossip(origin=me.node_id, records=[record.to_wire()], digest=[])))
        route = b""
        deadline = time.monotonic() + 30
        while not route:  # the node's first exchange with us, on its own link
            assert time.monotonic() < deadline, "the node never gossiped with the member"
            for _sock in port.poll(100):
                frames = port.router.recv_multipart()
                msg = codec.decode(frames[-1])
                if isinstance(msg, Gossip) and msg.reply:
                    route = frames[0]
        junk = codec.encode(GossipReply(origin=me.node_id, records=forged, digest=[]))
        for _ in range(replies):
            port.router.send_multipart([route, junk])
        node.wait_for_counter("discovery.gossip-replies-unasked", replies - 8, timeout=60)
        counters = node.counters()
    finally:
        if dealer is not None:
            dealer.close()  # (before its context ends)
        port.close()
    # The exchanges it asked: a fanout of 3 a round at most, and MAX_ASKED owed.
    asked = 3 * counters.get("discovery.rounds", 0) + 4
    checked = counters.get("discovery.rejected-bad_signature", 0)
    assert checked <= len(forged) * asked, (checked, asked)


FAST = ("--gossip-interval", "0.2", "--health-check-interval", "0.3", "--timeout", "0.5")


def _alive_peers(node: NodeProcess) -> set[str]:
    rows = json.loads(node.cli("peers", "--json", timeout=30).stdout or "[]")
    return {row["id"] for row in rows if row["state"] == "alive"}


def test_a_member_asking_for_replies_in_a_loop_gets_its_budget_of_reply_bytes(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member (the network key, a fresh identity, from 127.0.0.2) fills a
    node's table with 200 members it signed, then asks for a reply in a
    loop with the tiniest exchange (no records, an empty digest: 75 bytes
    asking for every record, up to 32 KiB, and the whole digest). Its
    replies, made from the node's table, come to at most its budget of
    reply bytes (``GOSSIP_LIMITS`` per identity: each reply charged the most
    it can be), where before nearly every request got its 42 KB reply; and
    gossip goes on meanwhile: a node joining then is known alive by all."""
    a = node_factory(*FAST)
    boot = ("--bootstrap-host", LOCALHOST, "--bootstrap-port", str(a.port))
    b = node_factory(*FAST, *boot)
    c = node_factory(*FAST, *boot, start=False)
    me = KeyPair.from_seed(os.urandom(32))  # an identity: gossip names it as origin
    fakes = [
        MemberRecord.create(
            key, bytes(key.verify_key), 0, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
        ).to_wire()
        for key in (SigningKey(os.urandom(32)) for _ in range(200))
    ]
    ask = codec.encode(Gossip(origin=me.node_id, records=[], digest=[], reply=True))
    replies: list[GossipReply] = []
    timing: list[float] = []
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
    sock.connect(f"tcp://127.0.0.2:0;{a.host}:{a.port}")

    def flood(seconds: float) -> None:
        start = time.monotonic()
        timing.append(start)
        while time.monotonic() - start < seconds:
            if sock.poll(0, zmq.POLLOUT):
                sock.send(ask, zmq.NOBLOCK)
            while sock.poll(0):
                reply = codec.decode(sock.recv())
                assert isinstance(reply, GossipReply), reply
                replies.append(reply)
        while sock.poll(500) and time.monotonic() - start < seconds + 30:  # (what it asked last)
            replies.append(codec.decode_as(sock.recv(), GossipReply))
        timing.append(time.monotonic())

    try:
        sock.send(codec.encode(Gossip(origin=me.node_id, records=fakes, digest=[])))
        a.wait_for_counter("discovery.records-merged", len(fakes), 30)
        flooding = threading.Thread(target=flood, args=(6.0,), daemon=True)
        flooding.start()
        c.start()
        everyone = {a.fingerprint, b.fingerprint, c.fingerprint}
        for node in (a, b, c):
            wait_until(
                lambda n=node: everyone - {n.fingerprint} <= _alive_peers(n),
                60,
                "every node to know the others alive",
            )
        flooding.join(60)
        assert not flooding.is_alive(), "the flood did not end"
    finally:
        sock.close()
        ctx.term()
    elapsed = timing[1] - timing[0]
    # Each reply holds what it was charged: all the records held (32 KiB at
    # most) and a digest entry per member, as many as when it was charged
    # (a reply made just after a member joined may hold one more of each).
    sizes = [sum(map(len, r.records)) + DIGEST_ENTRY.size * len(r.digest) for r in replies]
    assert replies and min(sizes) > 30_000, sizes
    budget = GOSSIP_LIMITS.peer_burst + GOSSIP_LIMITS.peer_rate * elapsed
    assert sum(sizes) <= budget + max(sizes), (len(replies), sum(sizes), budget)
    assert a.wait_for_counter("discovery.replies-over-peer", 1) > 0
