"""No message crashes an actor: hypothesis drives a real in-process node's
actors with well-typed messages at every extreme.

Every registered message type, with fields at their bounds (empty, the
longest, the largest and smallest integers, characters of every Unicode
category), goes to the node's public port (the gateway hands it to the
receiver, discovery, health or multicast actors) and, as chunk and sealed
headers with junk payloads, to its data port. After all of it no actor has
crashed or been restarted, no handler raised, and a real transfer through
the node still verifies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peercrypt.client import ControlClient
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.node import Node
from peercrypt.testing.extremes import any_message
from peercrypt.testing.nodes import loopback_settings, random_file, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import Ping, Pong, SendRequest, SendResult


@pytest.fixture
def node(tmp_path: Path, network_key: str) -> Iterator[tuple[Node, dict[str, str]]]:
    data_dir = tmp_path / "fuzzed"
    n = Node(loopback_settings(data_dir, network_key, gossip_interval=0.2, health_interval=0.2))
    n.start()
    try:
        client = ControlClient.for_data_dir(data_dir)

        def ports() -> dict[str, str] | None:
            facts = client.status().node
            return facts if "port" in facts and "data_port" in facts else None

        yield n, wait_until(ports, 10.0, "the node's ports")
    finally:
        n.stop()


def curve_dealer(ctx: zmq.Context[Any], network_key: str, port: int) -> zmq.Socket[Any]:
    me = KeyPair.from_seed(os.urandom(32))
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 5000
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey = me.z85_public
    sock.curve_secretkey = me.z85_secret
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def round_trip(sock: zmq.Socket[Any], seq: int) -> None:
    """A Ping answered: every frame sent before it was taken by the gateway."""
    sock.send(codec.encode(Ping(seq=seq)))
    while sock.poll(10_000):
        try:
            if codec.decode(sock.recv()) == Pong(seq=seq):
                return
        except codec.DecodeError:
            continue
    raise AssertionError("the node stopped answering pings")


def test_no_message_at_any_extreme_crashes_an_actor(
    node: tuple[Node, dict[str, str]], network_key: str, tmp_path: Path
) -> None:
    n, facts = node
    ctx: zmq.Context[Any] = zmq.Context()
    control = curve_dealer(ctx, network_key, int(facts["port"]))
    data = ctx.socket(zmq.DEALER)
    data.linger = 0
    data.sndtimeo = 5000
    data.connect(f"tcp://127.0.0.1:{facts['data_port']}")
    sent = 0

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(any_message, st.binary(max_size=64))
    def fuzz(msg: codec.Message, junk: bytes) -> None:
        nonlocal sent
        try:
            frame = codec.encode(msg)
        except ValueError:
            return  # over the frame limit as a whole: the codec would drop it
        control.send(frame)
        data.send_multipart([frame, junk])
        sent += 1
        if sent % 25 == 0:
            round_trip(control, sent)

    try:
        fuzz()
        round_trip(control, 0)
    finally:
        control.close(0)
        data.close(0)
        ctx.term()
    assert sent > 100
    client = ControlClient.for_data_dir(tmp_path / "fuzzed")
    assert all(v == 0 for v in n.supervisor.restarts.values()), n.supervisor.restarts
    # ... and the node still does its work: a file sent to itself verifies.
    src = random_file(tmp_path / "after-fuzz.bin", 300_000)
    client.send(
        SendRequest(
            request=7, path=str(src), host="127.0.0.1", port=int(facts["port"]), chunk_size=65536
        )
    )
    result = wait_until(
        lambda: next((m for m in [client.receive(30.0)] if isinstance(m, SendResult)), None),
        60.0,
        "the send result",
    )
    assert result.code == "ok", result
    assert (n.settings.inbox / result.stored_as).read_bytes() == src.read_bytes()
    # No handler failed on the fuzz. Actors report their counters at most
    # every 0.5 s: the fuzz's last errors could still be on their way. The
    # reports that count this file sent and received (later than the fuzz)
    # have the sender's and the receiver's, the data port's fuzz among them.

    def counted() -> dict[str, int] | None:
        counters = dict(client.status().counters)
        done = counters.get("sender.sent", 0) >= 1 and counters.get("receiver.received", 0) >= 1
        return counters if done else None

    counters = wait_until(counted, 10.0, "the file counted sent and received")
    assert not [k for k, v in counters.items() if k.endswith("handler-errors") and v], counters
