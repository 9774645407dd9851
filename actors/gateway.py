"""Gateway actor: owns the node's one public port (the control plane).

A CURVE server ROUTER socket, admission by the ``admission`` actor (ZAP, with
the domain enforced so a missing handler means *no* admission). It answers
``hello`` (proving the node's identity over the asker's challenge) and
``ping`` itself, within an answer budget per asking identity, per address
and for the node (``peercrypt/core/answer_budget.py``: a question beyond it
is dropped unanswered and counted, ``unanswered-over-peer``,
``unanswered-over-address``, ``unanswered-over-node``); offers and
multicast announces, whose sealed details cost their actor public-key work,
go on within budgets of the same size (beyond them refused ``busy``,
respectively ``try-again``, unopened: ``offers-over-peer``,
``announces-over-peer``, ...),
and hands every other control message, with
the peer's ZAP-verified key, to the actor that owns that message type
(gossip within a budget of bytes per identity, address and node, and no
more than ``core/mail_credit.py``'s bound of bytes not yet taken by that
actor: beyond either it is dropped and counted, ``gossip-over-peer`` ...,
``inbound-dropped-ACTOR``);
their answers come back as ``Outbound`` mail. Malformed or unexpected input
is counted per kind and logged once per peer and kind; it never stops the
gateway.

What libzmq holds of the port's connections (read, not yet taken by the
gateway: a member can send tiny messages far faster than the gateway
refuses them) is bounded by ``--control-port-memory``, counted per address,
beyond which the addresses costing more than their share of it are
disconnected, the costliest first (``closed-unread``; ``core/port_guard.py``,
``actors/port_watch.py``).
"""

from __future__ import annotations

from typing import Any

import zmq
import zmq.utils.z85

import peercrypt
from actors.port_watch import PUBLIC_PORT_SAMPLING, PortWatch
from peercrypt.core.address import peer_address
from peercrypt.core.answer_budget import GOSSIP_LIMITS, AnswerBudget, Verdict
from peercrypt.core.mail_credit import MailCredit, inbound_cost
from peercrypt.core.port_guard import CURVE_HANDSHAKE, GuardLimits, curve_framed_size
from peercrypt.crypto.handshake import prove_hello
from peercrypt.crypto.identity import fingerprint
from peercrypt.runtime.actor import PEER_RCVHWM, Actor, ActorEnv, bound_port
from peercrypt.settings import NodeSettings
from peercrypt.wire import actor_messages as _am
from peercrypt.wire import codec
from peercrypt.wire import multicast_messages as _mc
from peercrypt.wire.messages import (
    MAX_WRAPPED,
    ErrorReply,
    Hello,
    HelloReply,
    Inbound,
    InboundTaken,
    Offer,
    Outbound,
    Ping,
    Pong,
    Refuse,
)
from peercrypt.wire.network_messages import Gossip, LocalPort

MISMATCHED_MEMORY = 1024  # peers of another protocol version remembered as logged
CONTROL_MAX_BYTES = MAX_WRAPPED  # so that it can be handed on in Inbound mail
# Which actor owns which control-plane message type.
ROUTES: dict[type[codec.Message], str] = {
    Offer: "receiver",
    Gossip: "discovery",  # membership gossip (docs/membership.md)
    _mc.McAnnounce: "mreceiver",  # multicast (docs/multicast.md)
    _mc.McKey: "mreceiver",
    _mc.McStatus: "mreceiver",
    _am.AttachHello: "attach",  # attached actors (actors/attach.py)
    _am.AttachBeat: "attach",
    _am.ActorMail: "attach",
}


class GatewayActor(Actor):
    name = "gateway"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.offer_key = b""  # an attached receiver's key (actors/attach.py)
        self.answers = AnswerBudget(self.now())
        self.offers = AnswerBudget(self.now())  # offers handed to the receiver
        self.announces = AnswerBudget(self.now())  # multicast announces handed to the mreceiver
        self.gossip = AnswerBudget(self.now(), GOSSIP_LIMITS)  # bytes of gossip taken
        self.mail = MailCredit()  # bytes handed to each actor, not yet taken
        # Peers of another protocol version already logged (peer, address, version).
        self.mismatched: set[tuple[str, str, int]] = set()

    def setup(self) -> None:
        s = self.settings
        sock = self.router = self.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_secretkey = s.server_keys.z85_secret
        sock.curve_publickey = s.server_keys.z85_public
        sock.zap_domain = b"peercrypt"
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.maxmsgsize = CONTROL_MAX_BYTES + 1024
        sock.rcvhwm = PEER_RCVHWM  # a finite queue lets any member abort the node
        sock.router_mandatory = False
        # A member's links (discovery, health, a sender's offers, a
        # session's control) are a few connections per address.
        limits = GuardLimits(held=s.control_port_memory, connections=2048, per_address=256)
        self.port_watch = PortWatch(
            limits,
            self.count,
            framing=curve_framed_size,
            allowance=CURVE_HANDSHAKE,
            sampling=PUBLIC_PORT_SAMPLING,
        )
        self.port_watch.start(self, sock, "gateway")
        self.bind(sock, s.host, s.port or 0)
        self.facts["port"] = str(bound_port(sock))
        self.tell("discovery", LocalPort(port=bound_port(sock)))  # what it advertises
        self.facts["fingerprint"] = fingerprint(s.identity.public)
        self.watch(sock, self._on_peer)

    def _on_peer(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.port_watch.delivered(frames)
            route = frames[0].bytes
            frame = frames[-1]  # (its message's properties: any of its frames')
            peer_z85 = str(frame.get("User-Id") or "")
            address = peer_address(str(frame.get("Peer-Address") or ""))
            if len(frames) != 2:
                self._reject(route, peer_z85, address, "frames", f"{len(frames) - 1} frames")
                continue
            try:
                msg = codec.decode(frame.buffer, CONTROL_MAX_BYTES)
            except codec.VersionMismatch as exc:
                self._other_version(route, peer_z85, address, exc.theirs)
                continue
            except codec.DecodeError as exc:
                self._reject(route, peer_z85, address, exc.kind, exc.detail)
                continue
            self.count(f"in-{msg.TYPE}")
            if isinstance(msg, Hello | Ping) and not self._may_answer(peer_z85, address):
                continue
            if isinstance(msg, Offer) and not self._may_open(msg, route, peer_z85, address):
                continue
            if isinstance(msg, _mc.McAnnounce) and not self._may_announce(
                msg, route, peer_z85, address
            ):
                continue
            if isinstance(msg, Hello):
                identity, version = self.settings.identity, peercrypt.__version__
                try:
                    proof = prove_hello(identity, msg.challenge, version, self.offer_key)
                except ValueError:
                    self._reject(route, peer_z85, address, "bad-challenge", "degenerate key")
                    continue
                reply: codec.Message = HelloReply(
                    node_id=identity.public, version=version, proof=proof, offer_key=self.offer_key
                )
                sock.send_multipart([route, codec.encode(reply)])
            elif isinstance(msg, Ping):
                sock.send_multipart([route, codec.encode(Pong(seq=msg.seq))])
            elif type(msg) in ROUTES:
                dest = ROUTES[type(msg)]
                payload = frame.bytes
                cost = inbound_cost(payload, route)
                if not self._may_hand_on(msg, dest, cost, peer_z85, address):
                    continue
                peer = zmq.utils.z85.decode(peer_z85) if peer_z85 else b""
                self.tell(
                    dest,
                    Inbound(
                        route=route,
                        peer=peer,
                        peer_host=address,
                        payload=payload,
                    ),
                )
            else:
                self._reject(route, peer_z85, address, "unexpected", msg.TYPE)

    def _may_answer(self, peer: str, address: str) -> bool:
        """Whether the answer budget (peercrypt/core/answer_budget.py) lets
        this question of ``peer`` at ``address`` be answered: a hello's proof,
        a ping's pong, and the error answers to what the gateway refuses (a
        member repeating a refused message earns no more answers than one
        asking hellos)."""
        verdict = self.answers.ask(peer.encode(), address, self.now())
        if verdict is Verdict.ANSWER:
            return True
        self.count(f"unanswered-{verdict.value}")
        return False

    def _may_open(self, offer: Offer, route: bytes, peer: str, address: str) -> bool:
        """Whether ``offer`` goes on to the receiver, which opens its sealed
        details (an X25519 and AES-GCM, about 0.65 ms) and answers it: within
        a budget of offers per identity, address and node of the same size
        as the answers' (offers had none: one identity at its limit of
        transfers had ~1,500 a second opened and refused). Beyond it the
        offer is refused ``busy`` here, unopened (a sender then offers again
        after its busy wait; dropped, it waited out its --timeout and
        failed), within the answer budget: a flood earns no more."""
        busy = Refuse(tid=offer.tid, code="busy", reason="too many offers from you at once")
        return self._within(self.offers, "offers", busy, route, peer, address)

    def _may_announce(
        self, announce: _mc.McAnnounce, route: bytes, peer: str, address: str
    ) -> bool:
        """Whether a multicast ``announce`` goes on to the mreceiver, which
        (for a session it has, or a new one within its session limits)
        works out the key agreement and opens the sealed details (two
        X25519s, about 0.2 ms) and answers it: within a budget of announces
        per identity, address and node of the same size as the offers'
        (announces had none). Beyond it the announce is answered
        ``try-again`` here, unopened, within the answer budget (a sender
        announces again until the target joins)."""
        why = "too many announces from you at once"
        later = _mc.McRefuse(sid=announce.sid, code="try-again", reason=why)
        return self._within(self.announces, "announces", later, route, peer, address)

    def _within(
        self,
        budget: AnswerBudget,
        kind: str,
        refusal: codec.Message,
        route: bytes,
        peer: str,
        address: str,
    ) -> bool:
        """Whether ``budget`` lets a message of ``peer`` at ``address`` go
        on; else it is counted (``KIND-over-peer``...) and answered with
        ``refusal`` within the answer budget."""
        verdict = budget.ask(peer.encode(), address, self.now())
        if verdict is Verdict.ANSWER:
            return True
        self.count(f"{kind}-{verdict.value}")
        if self._may_answer(peer, address):
            self.router.send_multipart([route, codec.encode(refusal)])
        return False

    def _may_hand_on(
        self, msg: codec.Message, dest: str, size: int, peer: str, address: str
    ) -> bool:
        """Whether a peer's message of ``size`` bytes goes on to ``dest``:
        gossip within its budget of bytes per identity, address and node
        (core/answer_budget.py's ``GOSSIP_LIMITS``), and any message only
        while what ``dest`` has not yet taken stays within its bound
        (core/mail_credit.py). Else it is dropped, as a lost message is."""
        now = self.now()
        if isinstance(msg, Gossip):
            verdict = self.gossip.ask(peer.encode(), address, now, size)
            if verdict is not Verdict.ANSWER:
                self.count(f"gossip-{verdict.value}")
                return False
        if not self.mail.may_send(dest, size, now):
            self.count(f"inbound-dropped-{dest}")
            self.log_limited("gateway: %s is behind on peers' messages; dropping them", dest)
            return False
        return True

    def _other_version(self, route: bytes, peer: str, address: str, theirs: int) -> None:
        """A node of another protocol version: one line here, and an answer
        in its own version's envelope that says both (docs/security.md,
        "Protocol versions"), whatever it asked, within the answer budget."""
        self.count("rejected-version")
        if (peer, address, theirs) not in self.mismatched:  # once per peer: it gossips on
            if len(self.mismatched) >= MISMATCHED_MEMORY:
                self.mismatched.clear()
            self.mismatched.add((peer, address, theirs))
            who = fingerprint(zmq.utils.z85.decode(peer)) if peer else "unknown peer"
            self.log_limited("gateway: %s", codec.mismatch_text(f"{who} at {address}", theirs))
        if self._may_answer(peer, address):
            self.router.send_multipart([route, codec.mismatch_reply(theirs)])

    def _reject(self, route: bytes, peer: str, address: str, kind: str, detail: str) -> None:
        self.count(f"rejected-{kind}")
        who = fingerprint(zmq.utils.z85.decode(peer)) if peer else "unknown peer"
        self.log_limited("gateway: dropped %s message from %s (%s)", kind, who, detail)
        if self._may_answer(peer, address):
            reply = ErrorReply(code=kind[:32], reason=f"rejected: {kind}")
            self.router.send_multipart([route, codec.encode(reply)])

    def on_actor_restarted(self, name: str) -> None:
        self.mail.restarted(name)
        if name == "discovery":
            self.tell("discovery", LocalPort(port=bound_port(self.router)))

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, Outbound):
            self.router.send_multipart([msg.route, msg.payload])
        elif isinstance(msg, InboundTaken):
            self.mail.taken(msg.actor, msg.taken, self.now())
        elif isinstance(msg, _am.OfferKey):
            self.offer_key = msg.key
        else:
            super().on_mail(msg)
