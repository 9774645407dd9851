"""Attached side of actors attached across hosts (see :mod:`actors.attach`).

``peercrypt actor KIND --attach HOST:PORT [--attach HOST2:PORT2 ...]`` runs
actor KIND and this ``link`` actor in one process. The link stands in for
every other actor of the node(s): it binds their mailboxes in this process,
so KIND's ``tell("control", ...)`` lands here and goes to the node as
``ActorMail`` over a CURVE DEALER to the node's public port; ``ActorMail``
from a node is decoded (strictly) and handed to KIND.

- Attaching: ``AttachHello`` every ``BEAT`` s until a node answers
  ``AttachReply(ok)``; a refusal (not on the node's ``--attach-allow``, or
  the node runs its own KIND) is final and reported through ``on_refused``.
- The attached actor's last status report (``Announce``) is kept and sent to
  a node as soon as it attaches (actors report only what changed).
- Beats both ways every ``BEAT`` s; a node silent for ``LOST_AFTER`` s is
  detached and hellos start again (ZeroMQ reconnects underneath). Each beat
  echoes its send time: the link's round trip is the fact ``link_rtt_ms``.
- Several nodes (one scheduler shared by two nodes): each node numbers its
  requests itself, so requests are renumbered on the way in and restored on
  the way out (:class:`peercrypt.core.request_map.RequestMap`). Mail with no
  known request (status announcements) goes to every attached node.
- Actors KIND takes along (``local``: a receiver's space ledger) run in this
  process; the link does not stand in for them, and keeps their status
  reports here (the node's actor of that name has its own).
- The node's own data-plane processes (``--isolate-data-plane``) attach on
  the node's private ``ipc://`` endpoint instead (``endpoint``;
  :class:`LocalLink`): a plain DEALER, no CURVE, no gateway on the node's
  side; the endpoint's directory is the node user's alone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from actors.attach import BEAT, LOCAL_HWM, LOCAL_MAX_MESSAGE, LOST_AFTER, NODE_ACTORS
from actors.peer_link import Link, queue
from peercrypt.core.address import join_host_port
from peercrypt.core.request_map import RequestMap
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import (
    MAX_MAIL,
    ActorMail,
    ActorRestarted,
    AttachBeat,
    AttachHello,
    AttachReply,
)
from peercrypt.wire.messages import Announce
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.link")

LOCAL_LINGER = 2000  # ms: see LocalLink.close
LOCAL_HELLO = 0.05  # s between hellos to the node's private endpoint until attached
LAST_WORDS = 64  # mailbox batches handed on at the stop, at most


class LocalLink:
    """A link to the node's private endpoint (see the module docs): what
    :class:`~actors.peer_link.Link` offers the link actor (``send``,
    ``close``), over a DEALER to an ``ipc://`` socket. Mail is decoded as
    strictly as any peer's."""

    def __init__(self, actor: Actor, url: str, on_message: Callable[[codec.Message], None]) -> None:
        self.actor = actor
        self.on_message = on_message
        sock = self.sock = actor.socket(zmq.DEALER)
        sock.setsockopt(zmq.MAXMSGSIZE, LOCAL_MAX_MESSAGE)
        sock.setsockopt(zmq.SNDHWM, LOCAL_HWM)
        sock.setsockopt(zmq.RCVHWM, LOCAL_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a node not there
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(url)
        actor.watch(sock, self._on_readable)
        self.closed = False

    def send(self, msg: codec.Message) -> int:
        """Queue ``msg``; returns the bytes sent, 0 if it could not be queued."""
        return 0 if self.closed else queue(self.sock, msg)

    def _on_readable(self, _sock: object = None) -> None:
        for _ in range(64):
            if self.closed:
                return
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = codec.decode(data)
            except codec.DecodeError as exc:
                self.actor.count(f"link-{exc.kind}")
                continue
            self.on_message(msg)

    def close(self) -> None:
        """Close it; what it still queues (the attached actor's last words)
        gets ``LOCAL_LINGER`` to reach the node, which outlives its
        data-plane processes."""
        if not self.closed:
            self.closed = True
            self.actor.close_socket(self.sock, linger=LOCAL_LINGER)


@dataclass
class _Node:
    where: str  # HOST:PORT as given
    link: Link | LocalLink
    attached: bool = False
    last_heard: float = 0.0
    seq: int = 0
    refused: str = ""
    warned: bool = False  # its failed handshake was told (once)


class LinkActor(Actor):
    name = "link"  # its status report reaches the node(s) through itself

    def __init__(
        self,
        env: ActorEnv,
        settings: NodeSettings,
        actor: str,
        nodes: list[tuple[str, int]],
        on_refused: Callable[[str], None] | None = None,
        local: tuple[str, ...] = (),
        endpoint: str = "",
    ) -> None:
        super().__init__(env)
        self.endpoint = endpoint  # the node's private endpoint (then ``nodes`` is empty)
        self.settings = settings
        self.actor = actor
        self.local = local  # actors of this process besides ``actor`` (not stood in for)
        self.targets = nodes
        self.on_refused = on_refused
        self.nodes: list[_Node] = []
        self.requests: RequestMap[int] = RequestMap()
        # The attached actor's last status report: actors report only what
        # changed, so a node that attaches (again) gets this one at once.
        self.last_report: Announce | None = None
        self.attached_once = False  # to some node, since this process started
        self.boxes: list[tuple[zmq.Socket[Any], Callable[[zmq.Socket[Any]], None]]] = []

    def setup(self) -> None:
        if self.endpoint:
            local = LocalLink(self, self.endpoint, functools.partial(self._from_node, 0))
            self.nodes.append(_Node(where="the node", link=local))
        for host, port in self.targets:
            index = len(self.nodes)
            url = f"tcp://{join_host_port(host, port)}"
            # Monitored to tell a handshake that fails (a wrong network key:
            # the node drops it, and the hellos went unanswered in silence)
            # from a node not up yet; ZeroMQ keeps dialling both.
            link = Link(
                self,
                self.settings,
                url,
                functools.partial(self._from_node, index),
                monitored=True,
                keep_trying=True,
                on_failure=functools.partial(self._link_failed, index),
            )
            self.nodes.append(_Node(where=join_host_port(host, port), link=link))
        for name in NODE_ACTORS:
            if name == self.actor or name in self.local:
                continue
            box = self.socket(zmq.PULL)
            box.rcvhwm = 100_000
            box.bind(self.env.address(name))
            drain = functools.partial(self.drain_mail, handler=functools.partial(self._route, name))
            self.watch(box, drain)
            self.boxes.append((box, drain))
        self._beat()
        self.call_every(BEAT, self._beat)
        if self.endpoint:  # (started with its node, it says hello as soon as the node binds)
            node = self.nodes[0]
            self.call_every_while(
                LOCAL_HELLO,
                self._hello_local,
                lambda: not node.attached and not node.refused and not self._node_stopping,
            )

    def _hello_local(self) -> None:
        if not self._node_stopping:  # (a repetition fires once more after its condition)
            self.nodes[0].link.send(AttachHello(actor=self.actor))

    # -- from the nodes -----------------------------------------------------------------

    def _from_node(self, index: int, msg: codec.Message) -> None:
        node = self.nodes[index]
        if isinstance(msg, AttachReply):
            if msg.code == "ok":
                was_attached = node.attached
                node.attached, node.last_heard = True, self.now()
                if not was_attached:
                    log.info("link: attached to %s as its %s actor", node.where, self.actor)
                    if self.last_report is not None:
                        self._send(node, "control", self.last_report)
                    if (
                        not self.attached_once
                        and len(self.nodes) == 1
                        and self.actor == "receiver"
                        and "space" not in self.local
                    ):
                        # What a receiver told the node's ledger at its start
                        # went nowhere (not attached yet): the ledger is new to it.
                        self.tell(self.actor, ActorRestarted(actor="space"))
                    self.attached_once = True
            elif not node.refused:
                reason = printable(msg.reason)  # the node's text, shown to a terminal
                self._refused(node, f"{node.where} refused to attach {self.actor}: {reason}")
            return
        if not node.attached:
            self.count("mail-before-attach")
            return
        node.last_heard = self.now()
        if isinstance(msg, AttachBeat):
            if msg.echo:
                self.facts["link_rtt_ms"] = f"{(self.now() - msg.echo) * 1000:.2f}"
        elif isinstance(msg, ActorMail):
            self._to_actor(index, msg)
        else:
            self.count("link-unexpected")

    def _link_failed(self, index: int) -> None:
        """The link to a node failed before its first handshake. Not on the
        node's allow-list: final, as a refusal is. A handshake dropped (a
        wrong network key; or no PeerCrypt node there: a proxy in front of
        a node that is down, or restarting, drops it the same way, and
        ZeroMQ tells them apart no better): said once, and dialled on."""
        node = self.nodes[index]
        link = node.link
        if node.refused or not isinstance(link, Link):
            return
        if link.failure == ResultCode.NOT_ADMITTED:
            self._refused(node, link.detail)
            return
        if not node.warned:
            node.warned = True
            log.warning("%s (still trying)", link.detail)
        self.count("handshakes-failed")
        link.dial_on()

    def _refused(self, node: _Node, why: str) -> None:
        """A node will not have this actor: said once, by whoever stops
        the process (``on_refused``: its one error line), else logged."""
        node.refused = why
        if self.on_refused is not None:
            log.debug("%s", why)
            self.on_refused(why)
        else:
            log.error("%s", why)

    def _to_actor(self, index: int, mail: ActorMail) -> None:
        if mail.dest != self.actor:
            self.count("link-bad-dest")
            return
        try:
            inner = codec.decode(mail.payload)
        except codec.DecodeError as exc:
            self.count(f"link-mail-{exc.kind}")
            return
        if isinstance(inner, ActorRestarted) and (
            len(self.nodes) > 1 or inner.actor in self.local or inner.actor == self.actor
        ):
            # (One node's sender that restarted is not the others': a shared
            # scheduler would drop every node's flows of that name. And the
            # node's actor of a name this process runs itself, such as an
            # attached receiver's own space ledger, is not the one it uses.)
            self.count("restart-news-ignored")
            return
        request = getattr(inner, "request", None)
        if isinstance(request, int) and len(self.nodes) > 1:
            inner = _with(inner, self.requests.inward(index, request))
        self.tell(self.actor, inner)

    # -- from the attached actor (to a node actor) -----------------------------------------

    def _route(self, dest: str, msg: codec.Message) -> None:
        if isinstance(msg, Announce) and msg.actor == self.actor:
            self.last_report = msg
        elif isinstance(msg, Announce) and msg.actor in self.local:
            return  # the node's own actor of that name reports its facts
        request = getattr(msg, "request", None)
        if len(self.nodes) > 1 and isinstance(request, int):
            found = self.requests.outward(request)
            if found is not None:
                index, theirs = found
                self._send(self.nodes[index], dest, _with(msg, theirs))
                return
        for node in self.nodes:
            if node.attached:
                self._send(node, dest, msg)

    def _send(self, node: _Node, dest: str, msg: codec.Message) -> None:
        payload = codec.encode(msg)
        if len(payload) > MAX_MAIL:
            self.count("mail-too-large")
            return
        if not node.attached or not node.link.send(ActorMail(dest=dest, payload=payload)):
            self.count("mail-not-attached")

    # -- liveness ------------------------------------------------------------------------

    def _beat(self) -> None:
        now = self.now()
        attached = 0
        for index, node in enumerate(self.nodes):
            if node.refused:
                continue
            if node.attached and now - node.last_heard > LOST_AFTER:
                log.warning("link: lost %s (silent %g s); attaching again", node.where, LOST_AFTER)
                self.count("link-lost")
                node.attached = False
                self.requests.forget_link(index)
            if node.attached:
                attached += 1
                node.seq += 1
                node.link.send(AttachBeat(actor=self.actor, seq=node.seq, echo=now))
            elif not self._node_stopping:  # (a process that stops attaches to nothing new)
                node.link.send(AttachHello(actor=self.actor))
        self.facts["attached"] = f"{attached}/{len(self.nodes)}"

    def teardown(self) -> None:
        # The attached actor stopped first (it started after the link): what
        # it said last, its sends' ends among it, is handed on before the
        # links close (a mailbox is otherwise read only when it wakes us).
        for box, drain in self.boxes:
            for _ in range(LAST_WORDS):
                if not box.poll(0):
                    break
                drain(box)
        for node in self.nodes:
            node.link.close()


def _with(msg: codec.Message, request: int) -> codec.Message:
    replaced: codec.Message = dataclasses.replace(msg, request=request)  # type: ignore[call-arg]
    return replaced
