"""How many bytes of peers' messages the gateway may still hand to each actor.

Pure: every call gets the current time as ``now``; nothing reads a clock.

The gateway reads the node's public port as fast as members write to it (it
must, to refuse what it refuses) and hands every routed message (an offer,
gossip, a multicast session's, an attached actor's) to the actor that owns
it, as ``Inbound`` mail. Mailboxes are bounded in messages, not bytes, so an
actor slower than a member's writing (discovery checking the signatures of
a gossip flood) would let up to a mailbox's count of 64 KiB messages pile up
in memory (gigabytes). So the gateway counts the bytes it hands each actor
(:meth:`MailCredit.may_send`), each actor reports the running total it has
taken (``InboundTaken`` after each batch of mail: :meth:`MailCredit.taken`),
and a message that would put more than ``limit`` bytes in flight towards
one actor is dropped, as a lost message would be (the gateway counts it,
``inbound-dropped-ACTOR``): what peers' messages hold between the gateway
and an actor stays within ``limit`` for each actor.

A report can be lost (an attached actor's link that broke, a proxy that
dropped the mail while nothing was attached): an actor whose bytes reach the
limit and that has reported nothing for ``stale_after`` seconds is taken to
have taken them all. An actor that restarts starts from 0 on both sides
(:meth:`MailCredit.restarted`), and so does every actor's report when the
gateway restarts. Each message counts its payload, routing id and
:data:`INBOUND_OVERHEAD` (:func:`inbound_cost`). An attached actor's proxy
reports for it (its own process does not: ``ActorEnv.reports_inbound``);
should two reports under one name differ, the larger total counts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INBOUND_MAIL_BYTES", "INBOUND_OVERHEAD", "STALE_AFTER", "MailCredit", "inbound_cost"]

INBOUND_MAIL_BYTES = 4 * 1024 * 1024  # in flight towards one actor at most
STALE_AFTER = 10.0  # seconds over the limit without a report: taken as lost
# What a message costs beyond its payload and routing id: the Inbound's
# fields and encoding (~130 bytes), libzmq's message (~100): a member's
# tiny messages count at what they hold, not at their own few bytes.
INBOUND_OVERHEAD = 256


def inbound_cost(payload: bytes, route: bytes) -> int:
    """What a peer's message handed to an actor counts against its bound,
    on both sides (the gateway's charge, the actor's report)."""
    return len(payload) + len(route) + INBOUND_OVERHEAD


@dataclass
class _Flow:
    sent: int = 0
    taken: int = 0
    heard: float = 0.0  # its last report, or when it last had nothing in flight


class MailCredit:
    """Bytes handed to each actor and not yet reported taken (module docs)."""

    def __init__(self, limit: int = INBOUND_MAIL_BYTES, stale_after: float = STALE_AFTER) -> None:
        self.limit, self.stale_after = limit, stale_after
        self._flows: dict[str, _Flow] = {}

    def in_flight(self, actor: str) -> int:
        flow = self._flows.get(actor)
        return 0 if flow is None else flow.sent - flow.taken

    def may_send(self, actor: str, nbytes: int, now: float) -> bool:
        """Whether a message of ``nbytes`` may go to ``actor`` at ``now``
        (then it counts as in flight)."""
        flow = self._flows.setdefault(actor, _Flow(heard=now))
        if flow.sent == flow.taken:
            flow.heard = now  # nothing was owed: its silence counts from now
        if flow.sent - flow.taken + nbytes > self.limit:
            if now - flow.heard < self.stale_after:
                return False
            flow.taken, flow.heard = flow.sent, now  # its reports were lost
        flow.sent += nbytes
        return True

    def taken(self, actor: str, total: int, now: float) -> None:
        """``actor`` says it has taken ``total`` bytes since it started."""
        flow = self._flows.get(actor)
        if flow is None:
            return
        flow.taken = min(flow.sent, max(flow.taken, total))
        flow.heard = now

    def restarted(self, actor: str) -> None:
        """``actor`` started again: nothing of it is in flight any more, and
        its reports count from 0."""
        self._flows.pop(actor, None)
