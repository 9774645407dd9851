"""Node side of actors attached across hosts (docs/architecture.md, "Attached actors").

A node started with ``--remote-actor NAME`` does not run its own actor NAME:
a :func:`proxy_for` actor stands in under that name, and the real one runs
as ``peercrypt actor NAME --attach HOST:PORT`` in another process, possibly
on another host (:mod:`actors.link` is its end of the link).

- The attached process connects to the node's public port like any member:
  CURVE with the network key, admitted by the node's ZAP policy. Its
  ``AttachHello`` comes through the gateway to :class:`AttachActor`, which
  also requires the CURVE-proven identity to be on ``--attach-allow`` and
  NAME to be one of the node's remote actors; else ``AttachReply`` refuses.
  A later hello for the same NAME (the process restarted, or moved) replaces
  the link; the old one is treated as lost.
- The node's own data-plane processes (``--isolate-data-plane``,
  peercrypt/data_plane.py) attach on the node's private endpoint instead:
  a ROUTER on ``DATA_DIR/ipc/attach.sock`` (a folder only the node's user
  may enter; the socket 0600), which this actor reads itself (no CURVE, no
  gateway: the cheap path for their mail) and removes at its stop. There
  and only there: the public port refuses their names to every identity,
  the node's own too, and the endpoint refuses every other name.
- Mail: the node's actors ``tell(NAME, msg)`` as always; the proxy wraps it
  in ``ActorMail`` for the attach actor, which sends it through the gateway
  to the link. ``ActorMail`` from the link is decoded (strictly) and told to
  the node actor it names.
- Supervision: beats both ways every ``BEAT`` s; a link silent for
  ``LOST_AFTER`` s is lost. The proxy then stops, the supervisor restarts it
  and tells every actor that NAME restarted, exactly as after a local crash:
  the control actor fails the sends in flight ("the sender crashed; try
  again"), the scheduler forgets their flows. The same happens when an
  actor attaches (again): the sender re-announces its running flows to a
  scheduler that comes back, and they go on. An actor that attaches is
  NAME only once that restart is done (the status says ``attached`` then):
  the proxy that stops says ``ProxyStopped`` last (after all it handed
  on), and every actor, attach too, hears that it restarted. A send
  request handed on before, which the restart would fail (the control
  actor fails the sends in flight when the sender restarts) while the
  attached process runs it, is refused instead, as while nothing is
  attached; other mail goes through (nothing else is failed by the
  restart, and what the restart makes the node's actors say again may come
  first). A link still attaching after ``ATTACHING_AGAIN_AFTER`` seconds
  (a restart that was lost) asks for the restart again. While nothing is
  attached, mail to NAME is dropped and counted; a peer's request (an
  offer) gets an error reply and a local send request a failed result at
  once, so nobody waits for an actor that is not there.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from peercrypt import local_ipc
from peercrypt.crypto.identity import fingerprint
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
    DataPlaneEnded,
    LinkChanged,
    OfferKey,
    ProxyStopped,
)
from peercrypt.wire.messages import (
    Announce,
    ErrorReply,
    Inbound,
    Outbound,
    SendRequest,
    SendResult,
)

log = logging.getLogger("peercrypt.attach")

# Actors that may run as their own process attached to a node.
ATTACHABLE = ("sender", "receiver", "scheduler", "discovery", "health")
# Every actor name of a node (what an attached actor may write to).
NODE_ACTORS = (
    "control",
    "scheduler",
    "sender",
    "health",
    "msender",
    "receiver",
    "gateway",
    "discovery",
    "mreceiver",
    "space",
    "stats",
)
# The messages of the attachment itself: mail an attached process relays
# to the node's actors never carries one (a LinkChanged to the sender's
# proxy would restart it and fail every send in flight).
LINK_CONTROL = frozenset(
    {AttachHello, AttachReply, AttachBeat, ActorMail, LinkChanged, ProxyStopped, OfferKey,
     ActorRestarted, DataPlaneEnded}
)  # fmt: skip
BEAT = 0.5  # seconds between beats on a link, both ways
LOST_AFTER = 3.0  # a link silent this long is lost
# A link still attaching this long asks for its proxy's restart again (the
# supervisor's restart delay grows to 10 s for a proxy restarted often).
ATTACHING_AGAIN_AFTER = 15.0
# The private endpoint's sockets (both ends): a message at most (a wrapped
# mail and its envelope), and the messages queued each way.
LOCAL_MAX_MESSAGE = MAX_MAIL + 4096
LOCAL_HWM = 10_000
LOCAL_BATCH = 256  # messages read from the endpoint per wake, at most
LAST_BATCHES = 16  # of them, read at the stop (see AttachActor.teardown)
# Seconds between a data-plane process's end (DataPlaneEnded) and its link's
# loss: what it said last reaches the endpoint meanwhile.
ENDED_GRACE = 0.1


@dataclass
class _Link:
    route: bytes  # the gateway's routing id of the attached process (or the endpoint's)
    peer: str  # its fingerprint (CURVE-proven; the node's own on the private endpoint)
    host: str  # its address, as the gateway saw it
    last_heard: float
    local: bool = False  # on the private endpoint, not through the gateway
    seq: int = 0
    # Whether the proxy has restarted since it attached (see the module
    # docs): until then a send request for it is refused, not handed on.
    ready: bool = False
    restart: int = 0  # the LinkChanged it waits for (its seq)
    asked: float = 0.0  # when that was told
    stopped: bool = False  # that restart's proxy said ProxyStopped
    # The last reports to control of its actor and of its process's link
    # (by actor): told again when control restarts (its process is not told
    # of that; its unchanged reports come once a minute).
    reports: dict[str, Announce] = field(default_factory=dict)
    restarted: bool = False  # every actor was told since that the proxy restarted


class AttachActor(Actor):
    """Admits attached actors and relays their mail (see the module docstring)."""

    name = "attach"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.links: dict[str, _Link] = {}
        self.offer_key = b""  # the attached receiver's identity key
        self.restarts = 0  # LinkChanged told so far (their seq)
        self.restarting: dict[str, int] = {}  # by proxy: the restart under way (its seq)
        self.proxy_stopped: dict[str, int] = {}  # by proxy: the seq of its last ProxyStopped
        self.endpoint: zmq.Socket[Any] | None = None  # the private one (see the module docs)
        self.endpoint_bound = (0, 0)  # which file its socket is (local_ipc.remove)

    def setup(self) -> None:
        for actor in self.settings.remote_actors:
            self.facts[f"remote_{actor}"] = "waiting"
        s = self.settings
        if s.isolated_actors and s.isolated_endpoint:
            sock = self.endpoint = self.socket(zmq.ROUTER)
            sock.setsockopt(zmq.MAXMSGSIZE, LOCAL_MAX_MESSAGE)
            sock.setsockopt(zmq.SNDHWM, LOCAL_HWM)
            sock.setsockopt(zmq.RCVHWM, LOCAL_HWM)
            path = s.isolated_endpoint.removeprefix("ipc://")
            sock.bind(s.isolated_endpoint)
            os.chmod(path, 0o600)
            self.endpoint_bound = local_ipc.bound_as(Path(path))
            self.watch(sock, self._from_endpoint)
            self.facts["private_endpoint"] = path
        self.call_every_while(BEAT, self._beat, lambda: bool(self.links))  # idle: no beat

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, Inbound):
            self._from_gateway(msg)
        elif isinstance(msg, ActorMail):
            self._to_link(msg)
        elif isinstance(msg, DataPlaneEnded):
            link = self.links.get(msg.actor)
            if link is not None and link.local:
                # What the process said last may still be on its way through
                # the endpoint: it is read (the link still known) before the
                # link is lost; a link that replaced this one meanwhile stays.
                self.call_later(ENDED_GRACE, functools.partial(self._lose_ended, msg.actor, link))
        elif isinstance(msg, ProxyStopped):
            self.proxy_stopped[msg.actor] = msg.seq
            link = self.links.get(msg.actor)
            if link is not None and not link.ready and msg.seq == link.restart:
                link.stopped = True
                self._ready(msg.actor, link)
        else:
            super().on_mail(msg)

    # -- from the attached processes (through the gateway) ---------------------------

    def _from_endpoint(self, sock: zmq.Socket[Any]) -> None:
        """Mail on the private endpoint: the node's own data-plane processes."""
        own = self.settings.identity.public
        for _ in range(LOCAL_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.count("endpoint-frames")
                continue
            self._from_link(frames[0], own, "this host", frames[1], local=True)

    def _from_gateway(self, inbound: Inbound) -> None:
        self._from_link(inbound.route, inbound.peer, inbound.peer_host, inbound.payload)

    def _from_link(
        self, route: bytes, key: bytes, host: str, payload: bytes, local: bool = False
    ) -> None:
        try:
            msg = codec.decode(payload)
        except codec.DecodeError as exc:
            self.count(f"link-decode-{exc.kind}")
            return
        peer = fingerprint(key) if len(key) == 32 else ""
        if isinstance(msg, AttachHello):
            self._hello(route, peer, host, msg.actor, local)
            link = self.links.get("receiver")
            if (
                msg.actor == "receiver"
                and link is not None
                and (link.route, link.local) == (route, local)
            ):
                self._offer_key(key)
            return
        actor = next(
            (a for a, link in self.links.items() if link.route == route and link.local == local),
            None,
        )
        if actor is None:
            self.count("link-unknown")
            if not local:  # (on the endpoint: the node's own process, lost a moment ago)
                self.log_limited("attach: mail from %s, which is not attached", peer)
            return
        link = self.links[actor]
        link.last_heard = self.now()
        if isinstance(msg, AttachBeat):
            self._send(link, AttachBeat(actor=actor, seq=msg.seq, echo=msg.echo))
        elif isinstance(msg, ActorMail):
            self._deliver(actor, msg)
        else:
            self.count("link-unexpected")

    def _send(self, link: _Link, msg: codec.Message) -> None:
        self._send_to(link.route, link.local, codec.encode(msg))

    def _send_to(self, route: bytes, local: bool, payload: bytes) -> None:
        if not local:
            self.tell("gateway", Outbound(route=route, payload=payload))
            return
        if self.endpoint is None:
            return
        try:
            self.endpoint.send_multipart([route, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.count("endpoint-send-dropped")

    def _hello(self, route: bytes, peer: str, host: str, actor: str, local: bool) -> None:
        s = self.settings
        if actor not in s.remote_actors:
            code, reason = "not-remote", f"this node runs its own {actor!r} actor"
        elif actor in s.isolated_actors and not local:
            # The node's own data-plane processes attach on its private
            # endpoint: through the public port nobody may, whatever
            # identity it proves (the node's own too).
            reason = f"this node runs its own {actor!r} actor (in a process of its own)"
            code = "not-remote"
        elif local and actor not in s.isolated_actors:
            code, reason = "not-remote", f"{actor!r} does not attach on the private endpoint"
        elif local:
            code, reason = "ok", ""
        elif peer not in s.attach_allow:
            code, reason = "not-allowed", f"{peer} is not on this node's --attach-allow list"
        else:
            code, reason = "ok", ""
        reply = AttachReply(actor=actor, code=code, reason=reason[:200])
        self._send_to(route, local, codec.encode(reply))
        if code != "ok":
            self.count(f"attach-refused-{code}")
            self.log_limited("attach: refused %s as %s: %s", peer, actor, code)
            return
        old = self.links.get(actor)
        if old is not None and old.route == route and old.local == local:
            old.last_heard = self.now()  # (the same process saying hello again)
            return
        # The proxy restarts so every actor hears "restarted" now that the
        # actor is reachable (e.g. senders re-announce their flows); one
        # replacing another: the loss restarts it.
        if old is not None:
            restart = self._lose(actor, "replaced by a new attachment")
        else:
            restart = self._restart_proxy(actor, f"now runs attached from {host} ({peer})")
        log.info("attach: %s attaching as the node's %s actor", peer, actor)
        self.count("attached")
        self.links[actor] = _Link(
            route=route, peer=peer, host=host, last_heard=self.now(), restart=restart,
            asked=self.now(), local=local, stopped=self.proxy_stopped.get(actor) == restart,
        )  # fmt: skip
        self.facts[f"remote_{actor}"] = f"attaching {peer}"

    def _restart_proxy(self, actor: str, why: str, again: bool = False) -> int:
        """Tell ``actor``'s proxy to restart; the LinkChanged's seq. One
        already under way (asked for, and not every actor heard of it yet)
        serves, unless asked ``again``: every actor hears of it after this,
        and a proxy that stopped for it and is not started yet would lose
        the word (a link lost and found at once: the node was stopped)."""
        pending = self.restarting.get(actor)
        if pending is not None and not again:
            return pending
        self.restarts += 1
        self.tell(actor, LinkChanged(actor=actor, why=why, seq=self.restarts))
        self.restarting[actor] = self.restarts
        return self.restarts

    def _ready(self, actor: str, link: _Link) -> None:
        """``link``'s actor is the node's once the restart it asked for is
        done: its proxy stopped (after all it handed on) and every actor
        heard that it restarted."""
        if link.stopped and link.restarted:
            link.ready = True
            self.facts[f"remote_{actor}"] = f"attached {link.peer}"
            log.info("attach: %s attached as the node's %s actor", link.peer, actor)

    def _deliver(self, actor: str, mail: ActorMail) -> None:
        if mail.dest not in NODE_ACTORS or mail.dest == actor:
            self.count("link-bad-dest")
            return
        try:
            inner = codec.decode(mail.payload)
        except codec.DecodeError as exc:
            self.count(f"link-mail-{exc.kind}")
            return
        if type(inner) in LINK_CONTROL:  # attach's own words: not an attached actor's to say
            self.count("link-mail-control")
            self.log_limited("attach: %s mail from %s dropped", inner.TYPE, actor)
            return
        link = self.links.get(actor)
        if (
            link is not None
            and isinstance(inner, Announce)
            and mail.dest == "control"
            and inner.actor in (actor, "link")
        ):
            link.reports[inner.actor] = inner
        self.tell(mail.dest, inner)

    # -- to the attached processes ------------------------------------------------------

    def _to_link(self, mail: ActorMail) -> None:
        link = self.links.get(mail.dest)
        if link is None:
            self.count("mail-not-attached")
            self._refuse_unattached(mail)
            return
        if not link.ready and _is_send(mail) and self._refuse_unattached(mail):
            self.count("request-while-attaching")
            return
        self._send(link, mail)

    def _refuse_unattached(self, mail: ActorMail) -> bool:
        """Answer a request for an actor that is not attached (yet) with an
        error; whether ``mail`` was one."""
        try:
            inner = codec.decode(mail.payload)
        except codec.DecodeError:
            return False
        if isinstance(inner, Inbound):  # a peer's request: answer, do not leave it hanging
            reply = ErrorReply(
                code="unavailable", reason=f"this node's {mail.dest} is not attached"
            )
            self.tell("gateway", Outbound(route=inner.route, payload=codec.encode(reply)))
            return True
        if isinstance(inner, SendRequest):
            self.tell(
                "control",
                SendResult(
                    request=inner.request,
                    code="internal",
                    reason=f"no {mail.dest} actor is attached to this node",
                    size=0,
                    digest=b"",
                    stored_as="",
                ),
            )
            return True
        return False

    # -- liveness -------------------------------------------------------------------------

    def _beat(self) -> None:
        now = self.now()
        for actor, link in list(self.links.items()):
            if now - link.last_heard > LOST_AFTER:
                self._lose(actor, f"silent for {LOST_AFTER:g} s")
            elif not link.ready and now - link.asked > ATTACHING_AGAIN_AFTER:
                # The restart it waits for did not come (its LinkChanged was
                # lost): ask again, and wait for that one.
                self.count("attach-restart-again")
                why = f"now runs attached from {link.host} ({link.peer})"
                link.restart, link.asked = self._restart_proxy(actor, why, again=True), now
                link.stopped = link.restarted = False

    def _lose_ended(self, actor: str, link: _Link) -> None:
        if self.links.get(actor) is link:
            if self.endpoint is not None:
                self._from_endpoint(self.endpoint)
            if self.links.get(actor) is link:
                self._lose(actor, "its process ended")

    def _lose(self, actor: str, why: str) -> int:
        """``actor``'s link is lost (if it has one); the seq of the proxy's
        restart it asks for (0: none)."""
        link = self.links.pop(actor, None)
        if link is None:
            return 0
        log.warning("attach: lost the %s actor attached from %s (%s)", actor, link.peer, why)
        self.count("link-lost")
        self.facts[f"remote_{actor}"] = "lost"
        restart = self._restart_proxy(actor, f"lost its attachment from {link.host} ({why})")
        if actor == "receiver":
            self._offer_key(b"")
        return restart

    def _offer_key(self, key: bytes) -> None:
        """Offers to this node are opened by the attached receiver: hello
        replies name its key (the gateway proves it with the node's)."""
        if key != self.offer_key:
            self.offer_key = key
            self.tell("gateway", OfferKey(key=key))

    def teardown(self) -> None:
        if self.endpoint is None:
            return
        # What the node's own data-plane processes said last (they stop
        # before the node's actors) goes on to control and stats, which stop
        # after this actor.
        try:
            for _ in range(LAST_BATCHES):
                if not self.endpoint.poll(0):
                    break
                self._from_endpoint(self.endpoint)
        finally:
            path = Path(self.settings.isolated_endpoint.removeprefix("ipc://"))
            local_ipc.remove(path, self.endpoint_bound)

    def on_actor_restarted(self, name: str) -> None:
        self.restarting.pop(name, None)  # (every actor heard of it)
        if name == "control":  # it lost what the attached actors reported
            for attached in self.links.values():
                for report in attached.reports.values():
                    self.tell("control", report)
        if name == "gateway" and self.offer_key:
            self.tell("gateway", OfferKey(key=self.offer_key))
        link = self.links.get(name)
        if link is not None and not link.ready:  # (before its ProxyStopped is read, or after)
            link.restarted = True
            self._ready(name, link)


class RemoteActorProxy(Actor):
    """Stands in for an actor that runs attached elsewhere: forwards its mail
    to the link (through ``attach``); stops on ``LinkChanged`` (lost, or
    attached anew) so that the supervisor restarts it and tells every actor,
    as after a crash."""

    REPORT_TO = None  # the attached actor reports for itself
    stopped_for = 0  # the LinkChanged that stops it (its seq; 0: none)

    def teardown(self) -> None:
        # Last, after all it handed on (the same socket): see the module docs.
        self.tell("attach", ProxyStopped(actor=self.name, seq=self.stopped_for))

    def on_actor_restarted(self, name: str) -> None:
        # The attached actor hears it as a local one would (its link hands
        # it on): a receiver tells a new space ledger what it holds, a sender
        # announces its flows to a new scheduler.
        payload = codec.encode(ActorRestarted(actor=name))
        self.tell("attach", ActorMail(dest=self.name, payload=payload))

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, LinkChanged):
            self.stopped_for = msg.seq
            self.restart(msg.why or "changed its attachment")
            return
        payload = codec.encode(msg)
        if len(payload) > MAX_MAIL:
            self.count("mail-too-large")
            return
        self.tell("attach", ActorMail(dest=self.name, payload=payload))


def _is_send(mail: ActorMail) -> bool:
    """Whether ``mail`` is a send request (what a restart of the sender's
    proxy fails: the control actor fails the sends in flight)."""
    try:
        return isinstance(codec.decode(mail.payload), SendRequest)
    except codec.DecodeError:
        return False


def proxy_for(name: str) -> type[RemoteActorProxy]:
    """The proxy class for the node's actor ``name``."""
    cls: Any = type(f"Remote{name.title()}Proxy", (RemoteActorProxy,), {"name": name})
    proxy: type[RemoteActorProxy] = cls
    return proxy
