"""A transfer's Attach lost on the way, with real node processes.

A sender says, sealed, first on each data connection it shares among its
transfers, that a transfer's frames come on it (``Attach``); the receiver
drops a transfer's chunks on a connection it was not told of. A fault proxy
in front of the receiver's data port drops that one message: the receiver
drops every chunk of the transfer and acks none, and the sender says the
Attach again at its first retransmission timeout, so the send verifies
within its --timeout (it said it once, and the send failed 'stopped
acknowledging'; four aimd flows through a 1%-loss proxy did so now and
then)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.faults import Direction, FaultProxy
from peercrypt.testing.nodes import NodeProcess, blake3_file, free_port
from peercrypt.wire import codec
from peercrypt.wire.messages import SealedHeader

CHUNK = 64 * 1024


class FirstSealedDropped:
    """Drops the first sealed message upstream (a transfer's first on a data
    connection is its Attach); :attr:`dropped` counts it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dropped = 0

    def __call__(self, direction: Direction, client: bytes, frames: list[bytes]) -> bool:
        if direction != "upstream" or len(frames) != 2:
            return False
        try:
            header = codec.decode(frames[0])
        except codec.DecodeError:
            return False
        with self.lock:
            if isinstance(header, SealedHeader) and not self.dropped:
                self.dropped += 1
                return True
        return False


def test_a_lost_attach_is_said_again_at_the_first_timeout(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    data_port = free_port()
    drop = FirstSealedDropped()
    proxy = FaultProxy(f"tcp://127.0.0.1:{data_port}", drop_if=drop).start()
    try:
        receiver = node_factory(
            "--data-port", str(data_port), "--advertise-data-port", str(proxy.port)
        )
        sender = node_factory()
        f = make_file(1024 * 1024)
        code, result = sender.send(
            f, receiver.host, receiver.port, "--chunk-size", str(CHUNK), "--timeout", "20"
        )
    finally:
        assert proxy.stop(), "the fault proxy thread did not stop"
    assert proxy.error is None, proxy.error
    assert drop.dropped == 1
    assert code == 0, result
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(f)
    # One attempt, not a second one after --timeout (a fresh transfer, a fresh Attach).
    assert (result["stats"]["attempts"], result["stats"]["timeouts"] >= 1) == (1.0, True), result
    assert sender.wait_for_counter("sender.reattached", 1) >= 1
    assert receiver.wait_for_counter("receiver.data-dropped-route", 1) >= 1
