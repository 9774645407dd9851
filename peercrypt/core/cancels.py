"""Cancels of sends by their id (``peercrypt cancel N``, ``top``'s ``c``),
answered with how the send ended.

A cancel told to the actors that run send N cannot say at once what it
did: N may have ended on its own (verified, or failed) just as the cancel
came, its result already on its way, and the actor then ignores a cancel
for a send it no longer holds. So the control actor answers a cancel once
N's result has come: ``cancelled`` when the result says the user cancelled
it, else ``ended`` with the result's code and reason. An id whose result
came before the cancel is ``ended`` at once; a send whose result does not
come within the wait (an attached sender away) is ``unended``; an id the
node neither runs nor remembers is ``unknown``.

Pure: the actor feeds in the sends' results (:meth:`SendEnds.ended`), the
cancels (:meth:`SendEnds.cancel`) and the end of each cancel's wait
(:meth:`SendEnds.expire`), and sends the answers they return to the
waiters (anything that identifies a client's request). :func:`said` puts
an answer in the words and exit code of the command.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

from peercrypt.errors import FAILED, OK, USAGE, ResultCode

CANCEL_WAIT = 5.0  # seconds a cancel waits for its send's result
CANCELLED_BY_USER = "cancelled by the user"  # a send's reason when this node's user cancelled it
ENDS_KEPT = 1024  # sends' ends remembered (about 200 bytes each)

W = TypeVar("W")


class Outcome(enum.StrEnum):
    CANCELLED = "cancelled"  # the cancel stopped the send
    ENDED = "ended"  # the send had ended already, on its own (its code and reason)
    UNENDED = "unended"  # told to cancel, no result within the wait
    UNKNOWN = "unknown"  # no running or remembered send of that id


@dataclass(frozen=True)
class CancelVerdict:
    outcome: Outcome
    code: str = ""
    reason: str = ""

    @classmethod
    def told(cls, outcome: str, code: str, reason: str) -> CancelVerdict:
        """A verdict as a node told it (an outcome of a later release: as
        one not ended, which promises nothing)."""
        try:
            return cls(Outcome(outcome), code, reason)
        except ValueError:
            return cls(Outcome.UNENDED, code, reason)


class SendEnds(Generic[W]):
    """How the node's last ``keep`` sends ended, and the cancels waiting
    for a send's end."""

    def __init__(self, keep: int = ENDS_KEPT) -> None:
        self.keep = keep
        self.ends: dict[int, tuple[str, str]] = {}  # oldest first
        self.waiting: dict[int, list[W]] = {}

    def waiters(self) -> int:
        return sum(len(w) for w in self.waiting.values())

    def ended(self, transfer: int, code: str, reason: str) -> list[tuple[W, CancelVerdict]]:
        """Send ``transfer``'s result came: remembered, and the answers to
        the cancels that waited for it."""
        self.ends.pop(transfer, None)
        self.ends[transfer] = (code, reason)
        while len(self.ends) > self.keep:
            del self.ends[next(iter(self.ends))]
        if code == ResultCode.CANCELLED and reason == CANCELLED_BY_USER:
            answer = CancelVerdict(Outcome.CANCELLED)
        else:
            answer = CancelVerdict(Outcome.ENDED, code, reason)
        return [(w, answer) for w in self.waiting.pop(transfer, [])]

    def cancel(self, transfer: int, waiter: W, running: bool) -> CancelVerdict | None:
        """A cancel of ``transfer`` (``running``: the node holds it): its
        answer now, or None: ``waiter`` waits for the send's result (tell
        the send to cancel, and :meth:`expire` it after the wait)."""
        end = self.ends.get(transfer)
        if end is not None:
            return CancelVerdict(Outcome.ENDED, *end)
        if not running:
            return CancelVerdict(Outcome.UNKNOWN)
        self.waiting.setdefault(transfer, []).append(waiter)
        return None

    def expire(self, transfer: int, waiter: W) -> CancelVerdict | None:
        """The wait of ``waiter``'s cancel is over: ``unended`` if it still
        waits, else None (it was answered)."""
        waiters = self.waiting.get(transfer, [])
        if waiter not in waiters:
            return None
        waiters.remove(waiter)
        if not waiters:
            del self.waiting[transfer]
        return CancelVerdict(Outcome.UNENDED)


def how_it_ended(code: str, reason: str) -> str:
    """A send's end in a few words: verified, its cancel's reason, or its failure."""
    if code == ResultCode.OK:
        return "verified"
    if code == ResultCode.CANCELLED:
        return reason or "cancelled"
    return f"failed: {reason}" if reason else f"failed ({code})"


def said(transfer: int, answer: CancelVerdict, wait: float = CANCEL_WAIT) -> tuple[str, int]:
    """The command's line and exit code for ``answer`` (docs/commands.md,
    ``cancel``): 0 cancelled; 2, as for no running send of that number, a
    send that had ended already; 1 one told to cancel that had not ended
    after the wait."""
    if answer.outcome == Outcome.CANCELLED:
        return f"cancelled transfer {transfer}", OK
    if answer.outcome == Outcome.ENDED:
        how = how_it_ended(answer.code, answer.reason)
        return f"transfer {transfer} had already ended ({how})", USAGE
    if answer.outcome == Outcome.UNENDED:
        return (
            f"transfer {transfer} was told to cancel but had not ended after {wait:g} s "
            "(see `peercrypt transfers`)",
            FAILED,
        )
    return f"no running transfer {transfer} (see `peercrypt transfers`)", USAGE
