"""The control link a sender keeps after a send's accept (``IDLE_KEEP``,
actors/sender.py) for its next send to the same receiver, with real node
processes and receivers that misbehave on it
(peercrypt/testing/hostile_link.py): a link that dropped before the accept
is not kept, and what a receiver says on a kept link is never taken as the
next send's answer."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile_link import DroppingReceiver, KeptLinkRelay
from peercrypt.testing.nodes import (
    LOCALHOST,
    NodeProcess,
    assert_sent,
    dead_port,
    wait_until,
)
from peercrypt.wire import codec
from peercrypt.wire.messages import Accept, ErrorReply, HelloReply, Refuse, Verified

KiB = 1024
CLOSE_WAIT = "08"  # a TCP socket's state in /proc/net/tcp: the peer closed its end


@pytest.fixture
def closed_port() -> Iterator[int]:
    with dead_port() as port:
        yield port


def peer_closed(port: int, pid: int) -> bool:
    """Whether process ``pid``'s dialling ends of its connections to local
    ``port`` all saw them closed: each is in CLOSE_WAIT (a FIN came) or gone
    (a reset came, as when the closing end had bytes left unread; the kernel
    then drops the socket from its tables). Only ``pid``'s sockets: once
    closed, the port may be another test's (tests run side by side), and
    its connections stay open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    states.append(fields[3])
    return all(state == CLOSE_WAIT for state in states)


def test_a_link_that_dropped_before_the_accept_is_not_kept(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
    closed_port: int,
) -> None:
    """The receiver proves its key and accepts, then its port closes at
    once: the sender (stopped meanwhile, so that it reads both together)
    reads the accept of a link that is no longer connected, and does not
    keep it for the next send (libzmq would only redial it)."""
    sender = node_factory("--max-retries", "0")
    peer = DroppingReceiver(network_key, closed_port)
    path = make_file(64 * KiB)
    results: list[tuple[int, dict[str, Any]]] = []
    sending = threading.Thread(
        target=lambda: results.append(sender.send(path, LOCALHOST, peer.port, "--timeout", "3"))
    )
    sending.start()
    try:
        assert peer.offered.wait(15), "no offer reached the receiver"
        os.kill(sender.pid, signal.SIGSTOP)
        try:
            peer.go.set()
            assert peer.dropped.wait(10)
            wait_until(
                lambda: peer_closed(peer.port, sender.pid), 30, "the sender's end to see the close"
            )
        finally:
            os.kill(sender.pid, signal.SIGCONT)
        sending.join(60)
        code, result = results[0]
        assert code != 0 and not result["ok"], result  # its data port is closed

        # The sender reads the accept and libzmq's disconnect event in either
        # order (two threads after SIGCONT): the link is either not kept, or
        # kept and closed as soon as it is seen down; never kept while down.
        def settled() -> dict[str, int] | None:
            counters = sender.counters()
            not_kept = counters.get("sender.links-down-not-kept", 0)
            kept = counters.get("sender.links-kept", 0)
            dropped = counters.get("sender.kept-links-dropped", 0)
            return counters if not_kept + dropped == 1 and kept == dropped else None

        wait_until(settled, 30, "the dropped link closed, never kept while down")
    finally:
        peer.go.set()
        sending.join(60)
        peer.close()


@pytest.fixture
def relay_to(network_key: str) -> Iterator[Callable[[NodeProcess, NodeProcess], KeptLinkRelay]]:
    made: list[KeptLinkRelay] = []

    def make(receiver: NodeProcess, sender: NodeProcess) -> KeptLinkRelay:
        identity = load_or_create_identity(sender.data_dir)  # the test's own node's
        made.append(KeptLinkRelay(network_key, receiver.address, identity))
        return made[-1]

    yield make
    for relay in made:
        relay.close()


def test_what_a_receiver_says_on_a_kept_link_is_never_the_next_sends_answer(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    relay_to: Callable[[NodeProcess, NodeProcess], KeptLinkRelay],
) -> None:
    """The receiver's side of the kept link (a relay in front of a real
    node) says, after the first send went on, what no send asked for:
    garbage, the first send's accept, hello reply and verdict again, a
    refusal and an error. The sender counts them and goes on; the second
    send takes the kept link and gets all of them again right after its
    hello, before the node's answer: it still proves the node afresh (a
    hello of its own, answered by the node), takes none of them as its
    answer (a replayed hello reply is stale, not an impostor's) and arrives,
    verified by its hash."""
    sender, receiver = node_factory(), node_factory()
    relay = relay_to(receiver, sender)
    first, second = make_file(256 * KiB + 1), make_file(256 * KiB + 2)
    done = sender.send(first, LOCALHOST, relay.port)
    assert_sent(receiver, done, first)
    assert sender.wait_for_counter("sender.links-kept", 1) == 1
    hello_reply = relay.answers(HelloReply)[0]
    accept = relay.answers(Accept)[0]
    tid = codec.decode_as(accept, Accept).tid
    stale = [
        b"\xc1 not msgpack",
        hello_reply,
        accept,
        codec.encode(Refuse(tid=tid, code="busy", reason="late")),
        codec.encode(Verified(digest=bytes(32), stored_as=first.name)),
    ]
    relay.inject([*stale, codec.encode(ErrorReply(code="late", reason="late"))])
    counters = sender.counters_when("sender.control-unexpected", 5)
    assert sum(v for k, v in counters.items() if k.startswith("sender.reply-")) == 1, counters
    relay.before_next_answer(stale)
    assert_sent(receiver, sender.send(second, LOCALHOST, relay.port), second)
    counters = sender.counters_when("sender.sent", 2)
    assert counters["sender.links-reused"] == 1  # the kept link took them all
    assert counters["sender.hellos-stale"] == 1
    assert counters["sender.control-unexpected"] == 5 + 3  # all but the garbage and the replay
    assert relay.hellos == 2 and len(relay.answers(HelloReply)) == 2  # the node proved it again
    second_reply = codec.decode_as(relay.answers(HelloReply)[1], HelloReply)
    assert second_reply.proof != codec.decode_as(hello_reply, HelloReply).proof
