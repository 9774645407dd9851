"""Space actor: the one ledger of the inbox's space (:mod:`peercrypt.core.space`).

The unicast receiver and the multicast receiver write into the same inbox,
so they ask one ledger (this actor's) before they accept anything: a unicast
offer and a multicast session arriving together cannot both pass a check
that only one of them fits, and the per-sender, total and pending-bytes
quotas count both kinds. Messages (``peercrypt/wire/space_messages.py``):

- ``SpaceReserve`` -> the free space measured now, :meth:`SpaceLedger.reserve`
  (admission, pending-bytes quota and the reservation in one step), the kept
  parts that give way deleted, ``SpaceVerdict`` to the asker.
- ``SpaceWritten`` (``SpaceWrittens``: those of one tick, one message),
  ``SpaceRelease``: a transfer's progress and its end (kept
  for a resume or not); a release that matches no reservation is counted
  (``release-unknown``) and changes nothing.
- ``SpaceCancel``: an ask its receiver stopped waiting for; its reservation,
  if it is still that ask's, goes (:meth:`SpaceLedger.cancel`).
- ``SpaceReset`` + ``SpaceKept`` / ``SpaceRunning``: a receiver reports what
  it holds from scratch, at its start (the parts it kept, found on disk) and
  when this actor restarted (kept parts and running transfers too).
- ``SpaceForget``: a kept part was deleted by its receiver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from actors.inbox import free_space, remake, remove_part, scan
from peercrypt.core.space import Quotas, SpaceLedger
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec, columns
from peercrypt.wire.space_messages import (
    SpaceCancel,
    SpaceForget,
    SpaceKept,
    SpaceRelease,
    SpaceReserve,
    SpaceReset,
    SpaceRunning,
    SpaceVerdict,
    SpaceWritten,
    SpaceWrittens,
)

log = logging.getLogger("peercrypt.space")

# Who may ask: the actors that write into the inbox (their names are also
# where verdicts go).
OWNERS = frozenset({"receiver", "mreceiver"})


class Holding(Protocol):
    """A running transfer or session as the ledger hears of it (a receiver's
    ``Incoming`` or an mreceiver's ``Session``)."""

    tid: bytes
    peer: bytes
    host: str
    size: int
    part: Path
    tree: int  # a folder's manifest bytes: room for the tree is reserved too
    reported: int  # bytes written, as the ledger last heard


def report_holdings(
    actor: Actor, inbox: Path, *, multicast: bool, running: Iterable[Holding]
) -> None:
    """Tell the ledger, from scratch, what ``actor`` (a receiver) holds: the
    parts of its kind kept in ``inbox`` (those with a manifest) and its
    ``running`` transfers (their ``reported`` bytes written, set by the caller)."""
    actor.tell("space", SpaceReset(owner=actor.name))
    entries = [
        SpaceRunning(
            owner=actor.name,
            tid=x.tid,
            peer=x.peer,
            host=x.host,
            size=x.size,
            written=x.reported,
            part=x.part.name,
            tree=x.size if x.tree else 0,
        )
        for x in running
    ]
    in_use = {r.part for r in entries}
    try:
        found = scan(inbox, multicast=multicast)
    except OSError as exc:
        actor.log_limited("cannot scan the inbox: %s", exc)
    else:
        for m in found.manifests:
            if m.part in found.allocated and m.part not in in_use:
                kept = SpaceKept(
                    owner=actor.name,
                    part=m.part,
                    peer=m.key.peer,
                    size=m.key.size,
                    allocated=found.allocated[m.part],
                    updated=m.updated,
                )
                actor.tell("space", kept)
    for r in entries:
        actor.tell("space", r)


def remake_inbox(actor: Actor, inbox: Path, mode: int) -> None:
    """Before an offer or announce is looked at: an inbox removed while the
    node ran is made again (a line in the log, counted ``inbox-made-again``),
    so sends go on being stored instead of refused "cannot read the inbox"
    until the user makes it."""
    why = remake(inbox, mode)
    if why == "":
        actor.count("inbox-made-again")
        log.warning("the inbox %s was removed while the node ran: made again", inbox)
    elif why:
        actor.log_limited("cannot make the removed inbox %s again: %s", str(inbox), why)


def drop_gone_part(actor: Actor, inbox: Path, part: str, name: str) -> None:
    """The kept ``part`` that ``actor`` (a receiver) chose to continue gave
    way to another transfer before its ask was heard (the verdict says
    ``fresh``), or was removed before it was opened: whatever is left of it
    goes; a new part replaces it."""
    try:
        remove_part(inbox, part)
    except OSError as exc:
        actor.log_limited("cannot delete %s: %s", part, exc)
    actor.count("resume-part-gone")
    log.info("%s: its kept part is gone; starting afresh", name)


def _entry(owner: str, tid: bytes) -> bytes:
    """The ledger's key of ``owner``'s transfer ``tid``: ids are chosen by
    peers, so each receiver's are its own (a unicast offer reusing a
    multicast session's id neither is refused for it nor displaces it)."""
    return owner.encode() + b"/" + tid


class SpaceActor(Actor):
    name = "space"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.ledger = SpaceLedger(
            Quotas(total=settings.part_quota, per_peer=settings.peer_part_quota)
        )

    def on_mail(self, msg: codec.Message) -> None:
        ledger = self.ledger
        if isinstance(msg, SpaceReserve):
            self._reserve(msg)
        elif isinstance(msg, SpaceWritten):
            ledger.written(_entry(msg.owner, msg.tid), msg.written)
        elif isinstance(msg, SpaceWrittens):
            each, dropped = columns.unpack(msg, SpaceWritten)
            if dropped:
                self.count("written-malformed", dropped)
            for w in each:
                ledger.written(_entry(w.owner, w.tid), w.written)
        elif isinstance(msg, SpaceRelease):
            entry = _entry(msg.owner, msg.tid)
            if not ledger.stop(entry, msg.keep, time.time(), msg.part, msg.written):
                self.count("release-unknown")
        elif isinstance(msg, SpaceCancel):
            if ledger.cancel(_entry(msg.owner, msg.tid), msg.request):
                self.count("reservations-cancelled")
        elif isinstance(msg, SpaceKept):
            ledger.keep(msg.part, msg.peer, msg.size, msg.allocated, msg.updated, msg.owner)
        elif isinstance(msg, SpaceRunning):
            entry = _entry(msg.owner, msg.tid)
            ledger.start(
                entry, msg.peer, msg.size, msg.written, msg.part, msg.host, msg.tree, msg.owner
            )
        elif isinstance(msg, SpaceForget):
            ledger.forget(msg.part)
        elif isinstance(msg, SpaceReset):
            ledger.reset(msg.owner)
        else:
            super().on_mail(msg)
            return
        self.facts["promised"] = str(ledger.promised)
        self.facts["kept"] = str(len(ledger.kept))

    def _reserve(self, ask: SpaceReserve) -> None:
        if ask.owner not in OWNERS:
            self.count("reserve-unknown-owner")
            return
        s = self.settings
        try:
            free = free_space(s.inbox)
        except OSError as exc:
            verdict = SpaceVerdict(
                request=ask.request,
                tid=ask.tid,
                ok=False,
                code="io",
                reason=f"cannot read the inbox: {exc.strerror}",
            )
            self.tell(ask.owner, verdict)
            return
        admitted = self.ledger.reserve(
            _entry(ask.owner, ask.tid),
            ask.peer,
            ask.size,
            free,
            resume=ask.resume or None,
            held=ask.held,
            extra=ask.tree,
            host=ask.host,
            pending_limit=s.pending_quota,
            owner=ask.owner,
            request=ask.request,
        )
        for part in admitted.evict:  # kept parts give way (their receiver is not using them)
            try:
                remove_part(s.inbox, part)
            except OSError as exc:
                self.log_limited("cannot delete %s: %s", part, exc)
            self.count("parts-given-way")
            log.info("%s: deleted to make room for a new transfer", part)
        if admitted.fresh:
            self.count("resumes-made-fresh")
        self.tell(
            ask.owner,
            SpaceVerdict(
                request=ask.request,
                tid=ask.tid,
                ok=admitted.ok,
                code=admitted.code,
                reason=admitted.reason,
                fresh=admitted.fresh,
            ),
        )
