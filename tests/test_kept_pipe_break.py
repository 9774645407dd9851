"""A sender's kept data connection (``IDLE_KEEP``, actors/sender.py) whose
break libzmq already reported, the event still unread by the actor's loop
(it was busy), is not taken by the next transfer to that receiver: its
monitor's pending events are read first, and it is closed and replaced.

A real SenderActor in this process (its loop not running, so the event
stays unread until the test's call) and a real ZeroMQ ROUTER as the
receiver's data port, on loopback; every wait has a timeout."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import zmq

from actors.sender import IDLE_KEEP, SenderActor
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.runtime.actor import ActorEnv
from peercrypt.settings import NodeSettings

WAIT_MS = 10_000  # generous: a loaded machine; each wait ends on its event


def test_a_kept_connection_whose_break_is_unread_is_not_taken(tmp_path: Path) -> None:
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path / "inbox",
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
        local_ipc=False,
    )
    context = zmq.Context()
    port = context.socket(zmq.ROUTER)
    port.linger = 0
    number = port.bind_to_random_port("tcp://127.0.0.1")
    actor = SenderActor(ActorEnv(context=context, node_uid=f"t{time.monotonic_ns()}"), settings)
    try:
        args = (f"tcp://127.0.0.1:{number}", None, 0, ("127.0.0.1", number), "receiver")
        pipe = actor._pipe(*args)
        pipe.sock.send(b"hello")  # connected once the port has it
        assert port.poll(WAIT_MS), "the data connection did not connect"
        route, _ = port.recv_multipart()
        port.send_multipart([route, b"back"])
        # Its answer comes after the handshake: its events are queued by then.
        assert pipe.sock.poll(WAIT_MS) and pipe.sock.recv() == b"back"
        # Its transfer ended: kept for the next one (as _leave_pipes keeps it).
        pipe.idle = actor.call_later(IDLE_KEEP, functools.partial(actor._drop_idle_pipe, pipe))
        while pipe.monitor.poll(0):  # its connect and handshake, read
            actor._on_data_monitor(pipe, pipe.monitor)
        port.close()  # the receiver goes away ...
        # ... and libzmq reports it; the loop has not read it yet.
        assert pipe.monitor.poll(WAIT_MS), "no event for the closed connection"
        again = actor._pipe(*args)
        assert again is not pipe, "took the kept connection that broke"
        assert pipe.sock.closed
        assert actor.counters.get("data-idle-dropped") == 1, actor.counters
        assert "data-connections-reused" not in actor.counters, actor.counters
        assert actor.counters["data-connections"] == 2
    finally:
        for sock in actor._sockets:  # as the actor's loop does when it ends
            sock.close(linger=0)
        port.close()
        context.term()
