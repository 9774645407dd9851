"""The node's end of an attached actor (actors/attach.py) between its hello
and its proxy's restart: the status says ``attaching``, a request handed to
it is refused as while nothing is attached (the restart would fail it while
the attached process runs it), other mail goes through; once the proxy has
restarted it is the node's actor. The actor runs in this thread with real
sockets (the gateway's, the control's and the proxy's mailboxes bound here);
its clock is a fake one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.attach import AttachActor
from peercrypt.crypto.identity import fingerprint, new_network_key
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.clock import FakeClock
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import ActorMail, AttachHello, AttachReply, LinkChanged
from peercrypt.wire.local_messages import SendRequest, SendResult
from peercrypt.wire.messages import ErrorReply, FlowGrant, Inbound, Outbound

ROUTE = b"\x00route-of-the-attached-process"
PEER = bytes(range(32))  # its CURVE key, as the gateway proved it


@dataclass
class Rig:
    actor: AttachActor
    mailboxes: dict[str, zmq.Socket[Any]]

    def told(self, name: str, wait: float = 0.2) -> list[codec.Message]:
        """Everything told to ``name`` (the actor runs in this thread: what it
        sent is there already; ``wait`` only bounds the look)."""
        got = []
        sock = self.mailboxes[name]
        while sock.poll(int(wait * 1000)):
            got.append(codec.decode(sock.recv()))
            wait = 0.05
        return got

    def hello(self) -> None:
        hello = codec.encode(AttachHello(actor="sender"))
        self.actor.on_mail(Inbound(route=ROUTE, peer=PEER, peer_host="10.0.0.2", payload=hello))

    def to_sender(self, msg: codec.Message) -> None:
        """Mail the sender's proxy hands on (a node actor told "sender")."""
        self.actor.on_mail(ActorMail(dest="sender", payload=codec.encode(msg)))

    def status(self) -> str:
        return self.actor.facts["remote_sender"]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    ctx: zmq.Context[Any] = zmq.Context()
    env = ActorEnv(context=ctx, node_uid=f"at{time.monotonic_ns()}", clock=FakeClock())
    mailboxes = {}
    for name in ("gateway", "control", "sender"):
        sock = ctx.socket(zmq.PULL)
        sock.linger = 0
        sock.bind(env.address(name))
        mailboxes[name] = sock
    settings = loopback_settings(
        tmp_path,
        new_network_key(),
        remote_actors=("sender",),
        attach_allow=frozenset({fingerprint(PEER)}),
    )
    actor = AttachActor(env, settings)
    actor.setup()
    try:
        yield Rig(actor, mailboxes)
    finally:
        for sock in mailboxes.values():
            sock.close(0)
        for sock in actor._sockets:
            sock.close(0)
        ctx.term()


def _send(request: int) -> SendRequest:
    return SendRequest(request=request, path="/x", host="127.0.0.1", port=9, chunk_size=4096)


def _outbound(msgs: list[codec.Message]) -> list[codec.Message]:
    """What went to the attached process: the mail inside each Outbound to it."""
    inner = []
    for msg in msgs:
        assert isinstance(msg, Outbound) and msg.route == ROUTE, msg
        mail = codec.decode(msg.payload)
        inner.append(codec.decode(mail.payload) if isinstance(mail, ActorMail) else mail)
    return inner


def test_a_request_before_the_proxy_restarted_is_refused_not_handed_on(rig: Rig) -> None:
    assert rig.status() == "waiting"
    rig.hello()
    assert _outbound(rig.told("gateway")) == [AttachReply(actor="sender", code="ok", reason="")]
    restart = rig.told("sender")
    assert len(restart) == 1 and isinstance(restart[0], LinkChanged)
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    # A send handed on now would be failed by the restart ("the sender
    # crashed") while the attached process runs it: refused, as before.
    rig.to_sender(_send(5))
    refused = rig.told("control")
    assert len(refused) == 1 and isinstance(refused[0], SendResult), refused
    assert refused[0].request == 5 and "no sender actor is attached" in refused[0].reason
    # A peer's request: an error reply to the peer, nothing to the process.
    offer = Inbound(route=b"\x00a-peer", peer=PEER, peer_host="10.0.0.3", payload=b"x")
    rig.to_sender(offer)
    answered = rig.told("gateway")
    assert len(answered) == 1 and isinstance(answered[0], Outbound)
    assert answered[0].route == b"\x00a-peer"
    assert isinstance(codec.decode(answered[0].payload), ErrorReply)
    # Anything else goes through (what the restart makes the actors say again).
    grant = FlowGrant(request=1, nbytes=1 << 20)
    rig.to_sender(grant)
    assert _outbound(rig.told("gateway")) == [grant]
    assert rig.actor.counters["request-while-attaching"] == 2
    # The proxy restarted: the attached process is the node's sender.
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.to_sender(_send(6))
    assert _outbound(rig.told("gateway")) == [_send(6)]
    assert rig.told("control") == []


def test_the_same_process_saying_hello_again_changes_nothing(rig: Rig) -> None:
    rig.hello()
    rig.told("gateway")
    rig.told("sender")
    rig.actor.on_actor_restarted("sender")
    rig.hello()  # (its hello again, on the same connection)
    assert _outbound(rig.told("gateway")) == [AttachReply(actor="sender", code="ok", reason="")]
    assert rig.told("sender") == []  # no restart
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.to_sender(_send(7))
    assert _outbound(rig.told("gateway")) == [_send(7)]
