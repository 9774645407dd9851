"""A node gives its heap's free pages back once its transfers end
(peercrypt/runtime/memory.py ``trim``, the actors' ``trim_when_idle``), and
once a second while they run (``trim_while_busy``), on both sides, unicast
and multicast, with real node processes; the file verified by its hash. What it saves over rounds of
many transfers: scripts/bench_rounds.py; under 64 at once:
scripts/bench_many.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from peercrypt.testing.nodes import BackgroundSend, NodeProcess, assert_sent, assert_stored

MiB = 1024 * 1024


def test_both_nodes_trim_their_heap_once_their_transfers_end(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(24 * MiB)
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sender.wait_for_counter("sender.heap-trimmed", 1, timeout=30) >= 1
    assert receiver.wait_for_counter("receiver.heap-trimmed", 1, timeout=30) >= 1


def test_both_nodes_trim_their_heap_while_a_transfer_runs(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A send paced at 4 MiB/s runs 6 s at least: both nodes trim within it,
    not only once it ended."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(24 * MiB)
    send = BackgroundSend(sender, path, receiver, "-r", "4M")
    # (counted only while the actor has a transfer: within the send)
    assert sender.wait_for_counter("sender.heap-trims-busy", 1, timeout=30) >= 1
    assert receiver.wait_for_counter("receiver.heap-trims-busy", 1, timeout=30) >= 1
    assert_sent(receiver, send.join(), path)


def test_multicast_sender_and_receiver_trim_while_a_session_runs_and_once_it_ended(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """The same for a multicast session (the sender's node paced at 4 MiB/s:
    a 16 MiB session runs 4 s at least)."""
    sender = node_factory("--max-rate", str(4 * MiB), name="sender")
    receiver = node_factory(name="receiver")
    path = make_file(16 * MiB)
    send = BackgroundSend(sender, path, receiver, "-m")
    assert sender.wait_for_counter("msender.heap-trims-busy", 1, timeout=30) >= 1
    assert receiver.wait_for_counter("mreceiver.heap-trims-busy", 1, timeout=30) >= 1
    code, result = send.join()
    assert code == 0, result
    assert_stored(receiver, result, blake3_file(path))
    assert sender.wait_for_counter("msender.heap-trimmed", 1, timeout=30) >= 1
    assert receiver.wait_for_counter("mreceiver.heap-trimmed", 1, timeout=30) >= 1
