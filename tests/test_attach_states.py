"""The node's end of an attached actor (actors/attach.py) between its hello
and the end of its proxy's restart: the status says ``attaching``, a send
request handed to it is refused as while nothing is attached (the restart
would fail it while the attached process runs it), other mail goes through;
once the proxy that stopped has said so (after all it handed on) and every
actor heard of the restart, it is the node's actor; a restart that never
came is asked for again. The actor runs in this thread with real sockets
(the mailboxes it tells bound here); its clock is a fake one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.attach import (
    ATTACHING_AGAIN_AFTER,
    ENDED_GRACE,
    LOST_AFTER,
    AttachActor,
    proxy_for,
)
from actors.link import LinkActor
from peercrypt.crypto.identity import fingerprint, new_network_key
from peercrypt.runtime.actor import Actor
from peercrypt.testing.clock import FakeClock
from peercrypt.testing.in_thread import actor_env
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import (
    ActorMail,
    ActorRestarted,
    AttachHello,
    AttachReply,
    DataPlaneEnded,
    LinkChanged,
    ProxyStopped,
)
from peercrypt.wire.local_messages import SendRequest, SendResult
from peercrypt.wire.messages import Announce, FlowGrant, Inbound, Outbound

ROUTE = b"\x00route-of-the-attached-process"
PEER = bytes(range(32))  # its CURVE key, as the gateway proved it


@dataclass
class Rig:
    actor: AttachActor
    clock: FakeClock
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
    with actor_env(("gateway", "control", "sender", "attach")) as (env, clock, mailboxes):
        settings = loopback_settings(
            tmp_path,
            new_network_key(),
            remote_actors=("sender",),
            attach_allow=frozenset({fingerprint(PEER)}),
        )
        actor = AttachActor(env, settings)
        actor.setup()
        yield Rig(actor, clock, mailboxes)


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


def test_a_send_before_the_proxy_restarted_is_refused_not_handed_on(rig: Rig) -> None:
    assert rig.status() == "waiting"
    rig.hello()
    assert _outbound(rig.told("gateway")) == [AttachReply(actor="sender", code="ok", reason="")]
    restart = rig.told("sender")
    assert len(restart) == 1 and isinstance(restart[0], LinkChanged) and restart[0].seq > 0
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    # A send handed on now would be failed by the restart ("the sender
    # crashed") while the attached process runs it: refused, as before.
    rig.to_sender(_send(5))
    refused = rig.told("control")
    assert len(refused) == 1 and isinstance(refused[0], SendResult), refused
    assert refused[0].request == 5 and "no sender actor is attached" in refused[0].reason
    assert _outbound(rig.told("gateway")) == []
    # Anything else goes through: a peer's request (the restart fails
    # nothing of it), what the restart makes the actors say again.
    offer = Inbound(route=b"\x00a-peer", peer=PEER, peer_host="10.0.0.3", payload=b"x")
    grant = FlowGrant(request=1, nbytes=1 << 20)
    rig.to_sender(offer)
    rig.to_sender(grant)
    assert _outbound(rig.told("gateway")) == [offer, grant]
    assert rig.actor.counters["request-while-attaching"] == 1
    # Every actor heard that the proxy restarted, and then (or before) the
    # stopped proxy's last word came, after all it had handed on: ready.
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    rig.to_sender(_send(6))  # (what the old proxy handed on before it stopped)
    assert [m.request for m in rig.told("control") if isinstance(m, SendResult)] == [6]
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=restart[0].seq))
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.to_sender(_send(7))
    assert _outbound(rig.told("gateway")) == [_send(7)]
    assert rig.told("control") == []


def test_only_the_restart_it_asked_for_makes_the_actor_attached(rig: Rig) -> None:
    """A proxy that stopped for another reason (a crash: seq 0) or for an
    earlier restart says so in its ProxyStopped: not the one this link waits
    for, in either order with the restart's news."""
    rig.hello()
    (restart,) = rig.told("sender")
    assert isinstance(restart, LinkChanged)
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=0))
    rig.actor.on_actor_restarted("sender")
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=restart.seq - 1))
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=restart.seq))
    assert rig.status() == f"attached {fingerprint(PEER)}"


def test_a_restart_that_never_came_is_asked_for_again(rig: Rig) -> None:
    rig.hello()
    (first,) = rig.told("sender")
    assert isinstance(first, LinkChanged)
    rig.clock.advance(ATTACHING_AGAIN_AFTER + 1)
    rig.hello()  # (the process's beats keep the link; its hello again changes nothing)
    rig.actor._beat()
    (again,) = rig.told("sender")
    assert isinstance(again, LinkChanged) and again.seq > first.seq
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=first.seq))  # (a late one)
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=again.seq))
    assert rig.status() == f"attached {fingerprint(PEER)}"


@pytest.mark.parametrize("stopped_first", [False, True])
def test_a_link_lost_and_found_at_once_takes_the_restart_under_way(
    rig: Rig, stopped_first: bool
) -> None:
    """The node stopped for a while (Ctrl-Z): its attach finds the link
    silent, loses it and restarts the proxy, and the process's hello comes
    at once. Another LinkChanged now would reach a proxy that stopped and
    is not started yet, and be lost (attaching for 15 s): the restart under
    way serves, in either order with the stopped proxy's last word."""
    rig.hello()
    (first,) = rig.told("sender")
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=first.seq))
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.clock.advance(LOST_AFTER + 1)
    rig.actor._beat()
    (lost,) = rig.told("sender")
    assert isinstance(lost, LinkChanged) and lost.seq > first.seq
    if stopped_first:
        rig.actor.on_mail(ProxyStopped(actor="sender", seq=lost.seq))
    rig.told("gateway")
    rig.hello()
    assert _outbound(rig.told("gateway")) == [AttachReply(actor="sender", code="ok", reason="")]
    assert rig.told("sender") == []  # no second restart
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    if not stopped_first:
        rig.actor.on_mail(ProxyStopped(actor="sender", seq=lost.seq))
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attached {fingerprint(PEER)}"
    assert rig.actor.counters.get("attach-restart-again", 0) == 0


def test_a_data_plane_process_that_ended_is_lost_at_once(rig: Rig) -> None:
    """The node's watcher saw the process end (DataPlaneEnded): its link is
    lost once what it said last had ENDED_GRACE to come in, not after
    LOST_AFTER of silence. Only a link on the private endpoint is such a
    process: one through the gateway (an actor on another host) waits for
    its silence."""
    rig.hello()
    (first,) = rig.told("sender")
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=first.seq))
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.actor.on_mail(DataPlaneEnded(actor="sender"))
    rig.clock.advance(ENDED_GRACE + 0.01)
    rig.actor._run_timers()
    assert rig.told("sender") == []
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.actor.links["sender"].local = True  # (as if it had said hello on the endpoint)
    rig.actor.on_mail(DataPlaneEnded(actor="sender"))
    assert rig.told("sender") == []
    # Its last words, still on their way, go where they were meant to.
    last = SendResult(request=9, code="ok", reason="", size=1, digest=b"d" * 32, stored_as="x")
    words = codec.encode(ActorMail(dest="control", payload=codec.encode(last)))
    rig.actor._from_link(ROUTE, PEER, "this host", words, local=True)
    assert rig.told("control") == [last]
    rig.clock.advance(ENDED_GRACE + 0.01)
    rig.actor._run_timers()
    (lost,) = rig.told("sender")
    assert isinstance(lost, LinkChanged) and "its process ended" in lost.why
    assert rig.status() == "lost"


def test_the_proxy_says_which_restart_stopped_it_last(rig: Rig) -> None:
    """The proxy's ProxyStopped goes out in its teardown, after the mail it
    handed on, on the same socket, and names the LinkChanged that stopped it."""
    proxy = proxy_for("sender")(rig.actor.env)
    proxy.setup()
    try:
        proxy.on_mail(FlowGrant(request=3, nbytes=1))
        proxy.on_mail(LinkChanged(actor="sender", why="test", seq=41))
        proxy.teardown()
        attach = rig.mailboxes["attach"]
        got = []
        while attach.poll(200):
            got.append(codec.decode(attach.recv()))
        assert [type(m) for m in got] == [ActorMail, ProxyStopped]
        assert got[1] == ProxyStopped(actor="sender", seq=41)
    finally:
        for sock in proxy._sockets:
            sock.close(0)


def test_the_same_process_saying_hello_again_changes_nothing(rig: Rig) -> None:
    rig.hello()
    rig.told("gateway")
    (restart,) = rig.told("sender")
    assert isinstance(restart, LinkChanged)
    rig.actor.on_actor_restarted("sender")
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=restart.seq))
    rig.hello()  # (its hello again, on the same connection)
    assert _outbound(rig.told("gateway")) == [AttachReply(actor="sender", code="ok", reason="")]
    assert rig.told("sender") == []  # no restart
    assert rig.status() == f"attached {fingerprint(PEER)}"
    rig.to_sender(_send(7))
    assert _outbound(rig.told("gateway")) == [_send(7)]


def test_the_attached_process_cannot_say_its_proxy_stopped(rig: Rig) -> None:
    """Mail from the link goes to the node's actors only: an attached process
    (or a member posing as one) that addresses the attach actor itself with
    the proxy's last word does not make itself the node's actor early."""
    rig.hello()
    (restart,) = rig.told("sender")
    assert isinstance(restart, LinkChanged)
    forged = ProxyStopped(actor="sender", seq=restart.seq)
    mail = ActorMail(dest="attach", payload=codec.encode(forged))
    rig.actor.on_mail(
        Inbound(route=ROUTE, peer=PEER, peer_host="10.0.0.2", payload=codec.encode(mail))
    )
    rig.actor.on_actor_restarted("sender")
    assert rig.status() == f"attaching {fingerprint(PEER)}"
    assert rig.actor.counters["link-bad-dest"] == 1
    assert rig.told("attach") == []


def test_a_restarted_control_is_told_the_attached_actors_last_report_again(rig: Rig) -> None:
    """The attached process is not told that the node's control restarted
    (its own actors are): the node's end tells control its last report
    again, rather than leave it out of `status` until the process's
    unchanged report comes (once a minute)."""
    rig.hello()
    rig.told("gateway")
    (restart,) = rig.told("sender")
    rig.actor.on_actor_restarted("sender")
    rig.actor.on_mail(ProxyStopped(actor="sender", seq=restart.seq))
    rig.actor.on_actor_restarted("control")
    assert rig.told("control") == []  # nothing reported yet: nothing to tell again
    report = Announce(actor="sender", facts={"data_port": "9"}, counters={"sent": 3})
    link = Announce(actor="link", facts={"link_rtt_ms": "0.31"}, counters={})
    other = Announce(actor="gateway", facts={"port": "666"}, counters={})  # not its to say
    for told in (report, link, other):
        mail = ActorMail(dest="control", payload=codec.encode(told))
        rig.actor.on_mail(
            Inbound(route=ROUTE, peer=PEER, peer_host="10.0.0.2", payload=codec.encode(mail))
        )
    assert rig.told("control") == [report, link, other]  # (relayed as before)
    rig.actor.on_actor_restarted("control")
    assert rig.told("control") == [report, link]
    rig.actor.on_actor_restarted("stats")  # (another actor's restart: nothing to tell)
    assert rig.told("control") == []


def test_an_attached_process_cannot_speak_attachs_own_words(rig: Rig) -> None:
    """Mail an attached process relays to the node's actors never carries the
    attachment's own messages: a LinkChanged handed to the sender's proxy
    would restart it and fail every send in flight."""
    rig.hello()
    rig.told("gateway")  # (the reply, and the proxy's restart: not what this is about)
    rig.told("sender")
    for word in (
        LinkChanged(actor="sender", why="told so", seq=99),
        ProxyStopped(actor="sender", seq=1),
        ActorRestarted(actor="scheduler"),
        DataPlaneEnded(actor="sender"),
    ):
        mail = codec.encode(ActorMail(dest="control", payload=codec.encode(word)))
        rig.actor.on_mail(Inbound(route=ROUTE, peer=PEER, peer_host="10.0.0.2", payload=mail))
    assert rig.told("control") == []
    assert rig.actor.counters["link-mail-control"] == 4
    report = Announce(actor="sender", facts={}, counters={})
    mail = codec.encode(ActorMail(dest="control", payload=codec.encode(report)))
    rig.actor.on_mail(Inbound(route=ROUTE, peer=PEER, peer_host="10.0.0.2", payload=mail))
    assert rig.told("control") == [report]  # (its own reports still go)


def test_a_proxy_tells_its_attached_actor_which_node_actor_restarted(tmp_path: Path) -> None:
    """What the supervisor tells an actor of the node's process (a scheduler
    or a space ledger restarted) reaches the attached one too: its proxy
    hands it on, and the actor's own hook runs (peercrypt/runtime/actor.py)."""
    with actor_env(("attach",)) as (env, _clock, mailboxes):
        proxy = proxy_for("sender")(env)
        proxy.on_actor_restarted("scheduler")
        assert mailboxes["attach"].poll(2000), "the proxy handed nothing on"
        got = codec.decode(mailboxes["attach"].recv())
    assert isinstance(got, ActorMail) and got.dest == "sender"
    assert codec.decode(got.payload) == ActorRestarted(actor="scheduler")

    heard: list[str] = []

    class Hearing(Actor):
        name = "hearing"

        def on_actor_restarted(self, name: str) -> None:
            heard.append(name)

        def on_mail(self, msg: codec.Message) -> None:
            heard.append(f"mail {msg.TYPE}")

    with actor_env(()) as (env, _clock, _mailboxes):
        actor = Hearing(env)
        actor._on_mailbox_mail(ActorRestarted(actor="space"))
        actor._on_mailbox_mail(ProxyStopped(actor="x"))
    assert heard == ["space", "mail proxy-stopped"]


@pytest.mark.parametrize(
    ("local", "nodes", "news", "heard"),
    [
        ((), 1, "space", True),  # the isolated receiver: the node's ledger is its own
        (("space",), 1, "space", False),  # a receiver on another host: its ledger is local
        ((), 2, "sender", False),  # a scheduler shared by two nodes: not every node's
        ((), 1, "receiver", False),  # its own name: the proxy that stands in for it
    ],
)
def test_a_link_hands_on_only_the_restart_news_its_actor_is_concerned_by(
    tmp_path: Path, local: tuple[str, ...], nodes: int, news: str, heard: bool
) -> None:
    settings = loopback_settings(tmp_path, new_network_key())
    targets = [("127.0.0.1", 9), ("127.0.0.1", 10)][:nodes]  # (nothing listens there)
    with actor_env(("receiver",)) as (env, _clock, mailboxes):
        link = LinkActor(env, settings, "receiver", targets, local=local)
        link.setup()
        mail = ActorMail(dest="receiver", payload=codec.encode(ActorRestarted(actor=news)))
        link._to_actor(0, mail)
        got = mailboxes["receiver"].poll(300)
    assert bool(got) is heard
    assert link.counters.get("restart-news-ignored", 0) == (0 if heard else 1)
