"""Messages of actors attached across hosts (docs/architecture.md, "Attached actors").

An actor run as its own process (``peercrypt actor KIND --attach HOST:PORT``)
reaches its node through the node's public port, over CURVE, admitted by the
node's ZAP policy like any member, then by the node's ``--attach-allow``
list. Over that link:

- ``AttachHello`` (actor -> node): "I am the node's actor KIND";
  ``AttachReply`` says ok or why not.
- ``ActorMail`` (both ways): one encoded actor message and the actor it is
  for (on the node: any of its actors; on the attached side: the actor).
- ``AttachBeat`` (both ways, every ``BEAT`` s): a link silent for
  ``LOST_AFTER`` s is lost on both sides.

Local (node side): ``LinkChanged`` from the ``attach`` actor to the proxy
that stands in for the remote actor: the actor was lost, or attached anew.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.fields import code, counter
from peercrypt.wire.messages import MAX_WRAPPED

ACTOR_NAME = 32
# The largest message an attached actor's link carries: it travels through the
# node's gateway wrapped in ActorMail, itself wrapped in Inbound/Outbound mail.
MAX_MAIL = MAX_WRAPPED - 512


@message
@dataclass(frozen=True, kw_only=True)
class AttachHello(Message):
    TYPE = "attach-hello"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))


@message
@dataclass(frozen=True, kw_only=True)
class AttachReply(Message):
    TYPE = "attach-reply"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))
    code: str = code()  # ok, not-allowed, not-remote
    reason: str = field(default="", metadata=bounded(200))


@message
@dataclass(frozen=True, kw_only=True)
class ActorMail(Message):
    TYPE = "actor-mail"
    dest: str = field(metadata=bounded(ACTOR_NAME, 1))
    payload: bytes = field(metadata=bounded(MAX_MAIL))


@message
@dataclass(frozen=True, kw_only=True)
class AttachBeat(Message):
    TYPE = "attach-beat"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))
    seq: int = counter()
    echo: float = 0.0  # the beat's send time on the attached side, echoed back (RTT)


@message
@dataclass(frozen=True, kw_only=True)
class LinkChanged(Message):
    """attach -> a proxy: its actor attached or was lost; the proxy restarts
    (``why``: what its restart's log line says)."""

    TYPE = "link-changed"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))
    why: str = field(default="", metadata=bounded(512))
    seq: int = counter(0)  # which of attach's restarts this is (ProxyStopped names it)


@message
@dataclass(frozen=True, kw_only=True)
class ProxyStopped(Message):
    """A proxy -> attach, the last thing it says before it stops: after all
    the mail it handed on, so attach knows that none of it is still coming.
    ``seq``: the LinkChanged that stopped it (0: something else did)."""

    TYPE = "proxy-stopped"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))
    seq: int = counter(0)


@message
@dataclass(frozen=True, kw_only=True)
class DataPlaneEnded(Message):
    """The node's watcher of a data-plane process -> attach
    (``--isolate-data-plane``): the process of ``actor`` ended, so its link
    is lost now, not once it has been silent for ``LOST_AFTER`` s."""

    TYPE = "data-plane-ended"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))


@message
@dataclass(frozen=True, kw_only=True)
class ActorRestarted(Message):
    """To an actor in another process (through its proxy, attach and its
    link): the node's actor ``actor`` restarted, as the supervisor tells an
    actor of the node's own process. The link also tells its receiver that
    the node's space ledger is new to it at its first attachment, when the
    report the receiver made at its start went nowhere."""

    TYPE = "actor-restarted"
    actor: str = field(metadata=bounded(ACTOR_NAME, 1))


@message
@dataclass(frozen=True, kw_only=True)
class OfferKey(Message):
    """attach -> gateway: the identity key of the receiver attached to this
    node (b"": none). Hello replies name it, bound into their proof, so
    senders seal offers to the process that will open them."""

    TYPE = "offer-key"
    key: bytes = field(metadata=bounded(32))
