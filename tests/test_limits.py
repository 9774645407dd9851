"""Bounds that keep memory independent of file size and of the number of
transfers: the sender's queue beyond ``max_outgoing`` and the receiver's
shared receive buffer. In-process nodes (their settings are not CLI options
yet), real sockets on loopback, content checked by hash."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.control import ControlActor
from actors.scheduler import SchedulerActor
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.node import Node
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.nodes import blake3_file, loopback_settings, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import CancelRequest, SendRequest, SendResult
from peercrypt.wire.network_messages import MembersAtReply, MembersAtRequest

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


def send_all(
    sender: ControlClient, files: list[Path], rfacts: dict[str, str], first: int = 0
) -> None:
    """Ask ``sender`` to send each file to the receiver (request first + i: file i)."""
    for i, path in enumerate(files):
        sender.send(
            SendRequest(
                request=first + i,
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


def peaks(receiver: ControlClient, count: int) -> dict[str, str]:
    """The receiver's facts once its ``count``-th transfer ended (its peaks
    as reported after it: ``credit_peak``, ``writer_queue_peak``)."""

    def ended() -> dict[str, str] | None:
        facts = receiver.status().node
        done = json.loads(facts.get("last_in", "{}")).get("seq") == count
        return facts if done and "credit_peak" in facts else None

    return wait_until(ended, 10.0, "the receiver's peaks")


def counter(client: ControlClient, name: str) -> int:
    return dict(client.status().counters).get(name, 0)


def test_sends_beyond_max_outgoing_wait_their_turn(
    in_process_node: Any, make_file: Callable[..., Path], free_port: int, tmp_path: Path
) -> None:
    _, receiver, rfacts = in_process_node("receiver")
    # Send 0 goes to a port that refuses: its pre-send check retries (as
    # often as it likes, within its 600 s) and holds the only slot until the
    # test cancels it, so 1, 2 and 3 wait in line however slow the machine.
    _, sender, _ = in_process_node("sender", max_outgoing=1, max_retries=1_000_000)
    watch = ControlClient.for_data_dir(tmp_path / "sender")  # status apart from the results
    files = [make_file(300_000 + i, name=f"f{i}.bin") for i in range(4)]
    sender.send(
        SendRequest(
            request=0,
            path=str(files[0]),
            host="127.0.0.1",
            port=free_port,
            chunk_size=CHUNK,
            timeout=600.0,
        )
    )
    wait_until(lambda: counter(watch, "sender.hello-retries") >= 1, 30, "send 0 to retry")
    send_all(sender, files[1:], rfacts, first=1)
    wait_until(lambda: counter(watch, "sender.queued") == 3, 30, "sends 1 to 3 in line")
    sender.send(CancelRequest(request=3))  # taken from the line
    sender.send(CancelRequest(request=0))  # frees the slot: 1, then 2
    got = results(sender, 4)
    assert got[0].code == "cancelled" and got[3].code == "cancelled", (got[0], got[3])
    inbox = Path(rfacts["inbox"])
    for i in (1, 2):
        assert got[i].code == "ok", got[i].reason
        assert got[i].digest.hex() == blake3_file(files[i])
        assert blake3_file(inbox / got[i].stored_as) == blake3_file(files[i])
    assert not (inbox / "f3.bin").exists()
    wait_until(lambda: counter(watch, "sender.sent") == 2, 10, "sender.sent == 2")
    assert counter(watch, "sender.queued") == 3  # 2 waited in line again while 1 ran
    watch.close()
    receiver.close()
    sender.close()


def test_a_cancel_never_overtakes_its_send(tmp_path: Path) -> None:
    """The real control and scheduler actors, their mail handled by the test
    in the worst order a loaded machine allows: the scheduler runs only
    after the cancel. A send goes control -> scheduler -> sender, so a cancel
    told only to the sender came first, was ignored (the sender did not hold
    the send yet), and the send went on; the cancel must also reach the
    sender after its send."""
    ctx: zmq.Context[Any] = zmq.Context()
    mail: dict[str, list[codec.Message]] = {}
    settings = loopback_settings(tmp_path, None)
    env = ActorEnv(ctx, f"cancel{time.monotonic_ns()}")
    control = ControlActor(env, settings, "token")
    scheduler = SchedulerActor(env, settings)
    for actor in (control, scheduler):
        actor.tell = lambda to, msg: mail.setdefault(to, []).append(msg)  # type: ignore[method-assign,assignment]
    control.api = ctx.socket(zmq.ROUTER)  # the client's progress goes nowhere
    try:
        route = b"client"
        control._on_request(
            route, SendRequest(request=7, path="/x", host="127.0.0.1", port=9, chunk_size=CHUNK)
        )
        (placing,) = mail.pop("health")  # the members at its address
        assert isinstance(placing, MembersAtRequest)
        control.on_mail(MembersAtReply(request=placing.request, members={}))
        control._on_request(route, CancelRequest(request=7))  # the scheduler has not run yet
        for msg in mail.pop("scheduler"):
            scheduler.on_mail(msg)
        order = [type(m).__name__ for m in mail["sender"]]
        assert "SendRequest" in order and "CancelRequest" in order[order.index("SendRequest") :], (
            order
        )
        assert all(getattr(m, "request", None) == placing.request for m in mail["sender"])
    finally:
        control.api.close(0)
        ctx.term()


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
    # credit is bounded by what the others leave, and an offer for whose
    # first chunk they leave no room waits for it before its accept (at most
    # ROOM_WAIT, then it is accepted with one chunk), so what they may have
    # queued together, and the writer's queue itself, stay within the buffer
    # plus one chunk for each offer accepted without room (none on a machine
    # that is not stalled for a second; docs/architecture.md, "Bounds").
    # Without the node-wide bound the first would take the whole buffer, the
    # next half of it...; without the wait for room each transfer accepted
    # while the others held all of it held one chunk more.
    count, buffer = 6, 6 * CHUNK
    _, receiver, rfacts = in_process_node("receiver", receive_buffer=buffer)
    _, sender, _ = in_process_node("sender")
    files = [make_file(30 * CHUNK + i, name=f"h{i}.bin") for i in range(count)]
    send_all(sender, files, rfacts)
    assert_delivered(results(sender, count), files, rfacts)

    facts = peaks(receiver, count)
    counters = dict(receiver.status().counters)
    late = counters.get("receiver.offers-accepted-without-room", 0)
    # Offers waited, and room came for them before their second was out.
    assert counters.get("receiver.offers-waited-for-room", 0) > late, counters
    assert CHUNK <= int(facts["credit_peak"]) <= buffer + late * CHUNK, (facts, counters)
    assert 0 < int(facts["writer_queue_peak"]) <= int(facts["credit_peak"])
    receiver.close()
    sender.close()


def test_transfers_wait_their_turn_rather_than_hold_more_than_the_receive_buffer(
    in_process_node: Any, make_file: Callable[..., Path]
) -> None:
    # A buffer of three chunks and six paced transfers, started one after
    # another (each once the one before has bytes written): a credit of one
    # chunk each would be six chunks held. A transfer for whose next chunk
    # the others leave no room is told to wait (a credit of 0), and gets its
    # turn when a chunk of another is written: what they hold together stays
    # within the buffer plus the one chunk of the transfer just accepted,
    # every file verifies, and no honest sender's chunk is dropped as over
    # its credit (docs/architecture.md, "Bounds").
    count, buffer = 6, 3 * CHUNK
    _, receiver, rfacts = in_process_node("receiver", receive_buffer=buffer)
    _, sender, _ = in_process_node("sender")
    files = [make_file(160 * CHUNK + i, name=f"t{i}.bin") for i in range(count)]
    got: dict[int, SendResult] = {}

    def started(size: int) -> bool:
        with contextlib.suppress(NodeUnavailable):  # (nothing to read yet)
            msg = sender.receive(0.01)
            if isinstance(msg, SendResult):
                got[msg.request] = msg
        rows: list[list[Any]] = json.loads(receiver.status().node.get("incoming", "[]"))
        return any(int(row[1]) == size and int(row[2]) > 0 for row in rows)

    for i, path in enumerate(files):
        sender.send(
            SendRequest(
                request=i,
                path=str(path),
                host="127.0.0.1",
                port=int(rfacts["port"]),
                chunk_size=CHUNK,
                mode="token-bucket",
                rate=4 << 20,
            )
        )
        size = path.stat().st_size
        wait_until(
            lambda i=i, size=size: i in got or started(size), 30.0, f"transfer {i}'s first chunk"
        )
    while len(got) < count:
        got.update(results(sender, 1))
    assert_delivered(got, files, rfacts)

    facts = peaks(receiver, count)
    assert CHUNK <= int(facts["credit_peak"]) <= buffer + CHUNK
    counters = dict(receiver.status().counters)
    assert counters.get("receiver.credit-turns", 0) > 0, counters
    assert counters.get("receiver.data-dropped-over-credit", 0) == 0, counters
