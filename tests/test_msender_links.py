"""The multicast sender actor's control links to its targets, in memory:
the real actor and its real CURVE links to a real ROUTER standing in for a
target, the actor's handlers and timers run by the test (no node).

- a reconnected target is asked one hello, not two: the link reports the
  new connection (still "handshaken" from before) and then its handshake;
  asking on both made the first answer stale.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.multicast_sender import MulticastSenderActor
from peercrypt.crypto.handshake import prove_hello
from peercrypt.crypto.identity import KeyPair, fingerprint
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.hostile import member_gateway
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec
from peercrypt.wire.messages import Hello, HelloReply
from peercrypt.wire.multicast_messages import McAnnounce, McRefuse, McSendRequest

WAIT = 10.0


@pytest.fixture
def msender(tmp_path: Path, network_key: str) -> Iterator[MulticastSenderActor]:
    settings = loopback_settings(tmp_path, network_key)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actor = MulticastSenderActor(ActorEnv(ctx, "links"), settings)
    actor.tell = lambda to, msg: None  # type: ignore[method-assign,assignment]
    try:
        yield actor
    finally:
        actor.teardown()
        for sock in actor._sockets:
            sock.close(linger=0)
        ctx.term()


@pytest.fixture
def target(network_key: str) -> Iterator[tuple[zmq.Socket[Any], int]]:
    """A target's gateway (a CURVE ROUTER on the same network)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, port = member_gateway(ctx, network_key)
    try:
        yield router, port
    finally:
        router.close(linger=0)
        ctx.term()


def _run(actor: MulticastSenderActor, until: Callable[[], Any], what: str) -> Any:
    """Run the actor's socket handlers and timers until ``until()`` is truthy."""
    deadline = time.monotonic() + WAIT
    while not (done := until()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        poller = zmq.Poller()
        handlers = {s: h for s, h in actor._handlers.items() if isinstance(s, zmq.Socket)}
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        for sock, _ in poller.poll(20):
            handlers[sock](sock)
        actor._run_timers()
    return done


def _hellos(router: zmq.Socket[Any], wait: float) -> int:
    """Hellos the target received (waiting up to ``wait`` s for the first)."""
    count, wait_ms = 0, int(wait * 1000)
    while router.poll(wait_ms):
        _route, data = router.recv_multipart()
        count += isinstance(codec.decode(data), Hello)
        wait_ms = 200  # whatever was sent with it is here by then
    return count


def test_a_reconnected_target_is_asked_one_hello(
    msender: MulticastSenderActor, target: tuple[zmq.Socket[Any], int], tmp_path: Path
) -> None:
    actor = msender
    router, port = target
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10_000)
    name = f"127.0.0.1:{port}"
    actor._start(
        McSendRequest(request=1, path=str(path), targets=[name], chunk_size=4096, timeout=60.0)
    )
    (sess,) = actor.sessions.values()
    link = sess.targets[name].link
    _run(actor, lambda: link.handshakes == 1, "the first connection")
    assert _hellos(router, WAIT) == 1
    # The connection breaks and comes back; by the time the actor reads its
    # link's events the new handshake is done, so both reach it at once:
    # "connected" (the link still handshaken from before), then "handshake".
    link.connected = False
    link._changed()
    link.connected = True
    link._changed()
    link.handshakes += 1
    link._changed()
    assert _hellos(router, WAIT) == 1  # one challenge for the new connection
    assert actor.counters.get("hellos") == 2


def test_a_target_whose_space_check_came_too_late_is_announced_again(
    msender: MulticastSenderActor, target: tuple[zmq.Socket[Any], int], tmp_path: Path
) -> None:
    """A receiver answers an announce "try-again" when its space ledger's verdict
    did not come in time (a loaded node): it may take the next announce.
    The sender announces again and the target stays in the session (it
    failed it, "refused", on the first slow verdict)."""
    actor = msender
    router, port = target
    me = KeyPair.from_seed(os.urandom(32))
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10_000)
    name = f"127.0.0.1:{port}"
    request = McSendRequest(
        request=1, path=str(path), targets=[name], chunk_size=4096, timeout=60.0,
        expect=[fingerprint(me.public)],
    )  # fmt: skip
    actor._start(request)
    (sess,) = actor.sessions.values()
    announces: list[McAnnounce] = []

    def answered() -> bool:
        """The target's side: hellos proven, the first announce refused "try-again"."""
        while router.poll(0):
            route, data = router.recv_multipart()
            msg = codec.decode(data)
            reply: codec.Message | None = None
            if isinstance(msg, Hello):
                proof = prove_hello(me, msg.challenge, "0")
                reply = HelloReply(node_id=me.public, version="0", proof=proof)
            elif isinstance(msg, McAnnounce):
                announces.append(msg)
                if len(announces) == 1:
                    why = "the inbox's space could not be checked in time; try again"
                    reply = McRefuse(sid=msg.sid, code="try-again", reason=why)
            if reply is not None:
                router.send_multipart([route, codec.encode(reply)])
        return len(announces) >= 2

    _run(actor, answered, "a second announce")
    assert sess.flow.receivers[name].result is None  # still in the session
    assert actor.counters.get("announce-try-again") == 1
    assert announces[1].sid == announces[0].sid
    assert announces[1].attempt > announces[0].attempt
