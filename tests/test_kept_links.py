"""The control link a sender keeps after a send's accept (``IDLE_KEEP``,
actors/sender.py) for its next send to the same receiver, with real node
processes and receivers that misbehave on it
(peercrypt/testing/hostile_link.py): a link that dropped before the accept
is not kept, and what a receiver says on a kept link is never taken as the
next send's answer."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt.testing.hostile_link import DroppingReceiver
from peercrypt.testing.nodes import LOCALHOST, NodeProcess, dead_port, wait_until

KiB = 1024
CLOSE_WAIT = "08"  # a TCP socket's state in /proc/net/tcp: the peer closed its end


@pytest.fixture
def closed_port() -> Iterator[int]:
    with dead_port() as port:
        yield port


def peer_closed(port: int) -> bool:
    """A connection to local ``port`` whose dialling end saw it closed."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == CLOSE_WAIT:
                    return True
    return False


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
            wait_until(lambda: peer_closed(peer.port), 10, "the sender's end to see the close")
        finally:
            os.kill(sender.pid, signal.SIGCONT)
        sending.join(60)
        code, result = results[0]
        assert code != 0 and not result["ok"], result  # its data port is closed
        counters = sender.counters_when("sender.links-down-not-kept", 1)
        assert counters.get("sender.links-kept", 0) == 0, counters
    finally:
        peer.go.set()
        sending.join(60)
        peer.close()
