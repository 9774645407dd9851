"""Bounds that keep memory independent of file size and of the number of
transfers: the sender's queue beyond ``max_outgoing`` and the receiver's
shared receive buffer. In-process nodes (their settings are not CLI options
yet), real sockets on loopback, content checked by hash."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt.client import ControlClient
from peercrypt.node import Node
from peercrypt.testing.nodes import blake3_file, loopback_settings, wait_until
from peercrypt.wire.messages import CancelRequest, SendRequest, SendResult

CHUNK = 64 * 1024


@pytest.fixture
def in_process_node(tmp_path: Path, network_key: str) -> Iterator[Callable[..., Any]]:
    started: list[Node] = []

    def make(name: str, **overrides: Any) -> tuple[Node, ControlClient, dict[str, str]]:
        data_dir = tmp_path / name
        node = Node(loopback_settings(data_dir, network_key, **overrides))
        node.start()
        started.append(node)
        client = ControlClient.for_data_dir(data_dir)

        def ready() -> dict[str, str] | None:
            facts = client.status().node
            return facts if "port" in facts and "data_port" in facts else None

        facts = wait_until(ready, 10.0, "the node's ports")
        return node, client, facts

    yield make
    for node in started:
        node.stop()


def results(client: ControlClient, count: int) -> dict[int, SendResult]:
    out: dict[int, SendResult] = {}
    while len(out) < count:
        msg = client.receive(60.0)
        if isinstance(msg, SendResult):
            out[msg.request] = msg
    return out


def send_all(sender: ControlClient, files: list[Path], rfacts: dict[str, str]) -> None:
    """Ask ``sender`` to send each file to the receiver (request i: file i)."""
    for i, path in enumerate(files):
        sender.send(
            SendRequest(
                request=i,
                path=str(path),
                host="127.0.0.1",
                port=int(rfacts["port"]),
                chunk_size=CHUNK,
            )
        )


def assert_delivered(got: dict[int, SendResult], files: list[Path], rfacts: dict[str, str]) -> None:
    """Every file was stored by the receiver with its own content."""
    inbox = Path(rfacts["inbox"])
    for i, path in enumerate(files):
        assert got[i].code == "ok", got[i].reason
        assert blake3_file(inbox / got[i].stored_as) == blake3_file(path)


def test_sends_beyond_max_outgoing_wait_their_turn(
    in_process_node: Any, make_file: Callable[..., Path]
) -> None:
    _, receiver, rfacts = in_process_node("receiver")
    _, sender, _ = in_process_node("sender", max_outgoing=1)
    files = [make_file(300_000 + i, name=f"f{i}.bin") for i in range(4)]
    send_all(sender, files, rfacts)
    sender.send(CancelRequest(request=3))  # still waiting in line: cancelled there
    got = results(sender, 4)
    assert got[3].code == "cancelled"
    inbox = Path(rfacts["inbox"])
    for i in range(3):
        assert got[i].code == "ok", got[i].reason
        assert got[i].digest.hex() == blake3_file(files[i])
        assert blake3_file(inbox / got[i].stored_as) == blake3_file(files[i])
    assert not (inbox / "f3.bin").exists()

    def all_sent() -> dict[str, int] | None:
        counters = dict(sender.status().counters)
        return counters if counters.get("sender.sent") == 3 else None

    counters = wait_until(all_sent, 5.0, "sender.sent == 3")
    # Only one ran at a time: 1 and 2 waited in line (3 was cancelled before
    # or after reaching the line, depending on its pre-send health check).
    assert counters["sender.queued"] >= 2
    receiver.close()
    sender.close()


def test_small_receive_buffer_is_shared_and_transfers_still_complete(
    in_process_node: Any, make_file: Callable[..., Path]
) -> None:
    # Room for two chunks in all: three concurrent transfers get one chunk of
    # credit each and must still finish with the right content.
    _, receiver, rfacts = in_process_node("receiver", receive_buffer=2 * CHUNK)
    _, sender, _ = in_process_node("sender")
    files = [make_file(20 * CHUNK + i, name=f"g{i}.bin") for i in range(3)]
    send_all(sender, files, rfacts)
    assert_delivered(results(sender, 3), files, rfacts)
    receiver.close()
    sender.close()


def test_the_credit_of_all_incoming_transfers_stays_within_the_receive_buffer(
    in_process_node: Any, make_file: Callable[..., Path]
) -> None:
    # Six transfers start at once against a buffer of six chunks: each one's
    # credit is bounded by what the others leave, so what they may have
    # queued together, and the writer's queue itself, stay within the buffer
    # plus one chunk for each transfer that started while the others held
    # all of it (docs/architecture.md, "Bounds"). Without the node-wide
    # bound the first would take the whole buffer, the next half of it...
    count, buffer = 6, 6 * CHUNK
    _, receiver, rfacts = in_process_node("receiver", receive_buffer=buffer)
    _, sender, _ = in_process_node("sender")
    files = [make_file(30 * CHUNK + i, name=f"h{i}.bin") for i in range(count)]
    send_all(sender, files, rfacts)
    assert_delivered(results(sender, count), files, rfacts)
    bound = buffer + (count - 1) * CHUNK

    def peaks() -> dict[str, str] | None:  # as reported after the last transfer ended
        facts = receiver.status().node
        ended = json.loads(facts.get("last_in", "{}")).get("seq") == count
        return facts if ended and "credit_peak" in facts else None

    facts = wait_until(peaks, 10.0, "the receiver's peaks")
    assert CHUNK <= int(facts["credit_peak"]) <= bound
    assert 0 < int(facts["writer_queue_peak"]) <= int(facts["credit_peak"])
    receiver.close()
    sender.close()
