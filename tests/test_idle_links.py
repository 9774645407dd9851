"""A send's control connection, once the receiver accepted, waits for the
next send to the same address (actors/peer_link.py ``IdleLinks``): that
send takes it (no new connection, CURVE handshake or admission) and still
does its own hello, known-peers check and offer; a connection the receiver
dropped meanwhile is never taken (real nodes, content checked by hash)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peercrypt import errors
from peercrypt.testing.nodes import NodeProcess, assert_sent

KiB = 1024


def test_the_next_send_to_the_address_takes_the_connection(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    first, second = make_file(1 * KiB, name="a.bin"), make_file(300 * KiB, name="b.bin")
    assert_sent(receiver, sender.send_to(first, receiver), first)
    assert_sent(receiver, sender.send_to(second, receiver), second)
    # each send proves the receiver again (counters are reported every 0.5 s)
    assert sender.wait_for_counter("sender.hellos", 2) == 2
    assert sender.wait_for_counter("sender.control-links-reused", 1) == 1


def test_a_connection_the_receiver_dropped_is_not_taken(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The receiver stops after a send: the next send finds no one there,
    said at once as for any address where nothing listens (unreachable, exit
    3), not after its --timeout as a connection that only stays silent."""
    sender, receiver = node_factory(), node_factory()
    first, second = make_file(1 * KiB, name="a.bin"), make_file(1 * KiB, name="b.bin")
    assert_sent(receiver, sender.send_to(first, receiver), first)
    host, port = receiver.host, receiver.port
    assert receiver.stop() == 0
    # --timeout 60: a taken connection would wait that long for an answer;
    # the loose CLI timeout of the harness is longer still.
    result = sender.send_result(second, host, port, "--timeout", "60")
    assert result.returncode == errors.UNREACHABLE, result.describe()
    assert "cannot connect" in result.json["error"]
    assert sender.wait_for_counter("sender.hellos", 2) >= 2  # (retried while unreachable)
    assert sender.counters().get("sender.control-links-reused", 0) == 0
