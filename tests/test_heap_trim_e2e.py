"""A node gives its heap's free pages back once its transfers end
(peercrypt/runtime/memory.py ``trim``, the actors' ``trim_when_idle``), on
both sides, with real node processes; the file verified by its hash. What
it saves over rounds of many transfers: scripts/bench_rounds.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.nodes import NodeProcess, assert_sent

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
