"""Inbox space: what incoming transfers were promised, byte quotas, and which
kept parts give way.

Pure bookkeeping (no ``statvfs`` here: the caller passes the free bytes it
measured). The receiver handles offers one at a time, and every accepted
transfer *reserves* the bytes it has still to write; the free-space check of
the next offer subtracts every reservation. So two offers arriving together
cannot both pass a check that only one of them fits, and a transfer that was
accepted does not run out of disk because of one accepted after it (only
because of something else writing to the same disk; that case ends the
transfer with "no-space", keeping its part for a resume).

Charges
-------
- *running* transfer: reserves ``size - written`` of disk, plus ``extra``
  (a folder: its tree is built beside the part, so ``extra`` = ``size``
  until it is stored); charged ``size`` against the quotas;
- *kept* part (an interrupted transfer waiting to resume): occupies
  ``allocated`` bytes of disk (it is sparse) and is charged ``size``.

Quotas (0 = none): ``per_peer`` bytes of parts, running and kept, per proven
sender identity; ``total`` bytes of parts for all senders together.
``reserve``: bytes of free space never promised (room for the filesystem's
own metadata and for everyone else on the disk).

A kept part is chosen for a resume by its receiver, then named in the ask;
between the two the other receiver's ask may have made it give way. An ask
naming a part that gave way (the last :data:`GONE_MEMORY` such names are
remembered) is admitted (or not) as a fresh transfer and its verdict says so
(``Admission.fresh``): the receiver starts a new part instead of opening one
that is gone. Once reserved, a continued part is running, and running
transfers never give way.

Admission (:meth:`SpaceLedger.admit`) of an offer of ``size`` bytes from
``peer`` (continuing a kept part or not): kept parts give way first, oldest
checkpoint first, the sender's own before anyone's for its own quota; running
transfers never do. If even giving up every other kept part is not enough,
the offer is refused ("quota" or "no-space") and nothing is evicted.

One ledger per inbox (``actors/space.py`` owns it; the unicast and the
multicast receiver ask it): :meth:`SpaceLedger.reserve` admits and starts in
one step, so no answer given to one receiver can be invalidated by another's.
Every entry has an ``owner`` (the receiver that holds it): a restarted
receiver's entries are dropped (:meth:`SpaceLedger.reset`) and reported again
from what is on disk and what it runs. :meth:`SpaceLedger.stop` releases only
what was reserved under that transfer id, once.

An ask whose verdict came too late for its receiver (it stopped waiting and
answered "busy") is *cancelled* (:meth:`SpaceLedger.cancel`) by the number of
that ask: its reservation goes, and a kept part it would have continued is
kept again, as it was. A cancel names the ask, not only the transfer id, so a
late cancel can never take the reservation of the retry that followed it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

GONE_MEMORY = 1024  # names of parts that gave way, remembered (see reserve)


@dataclass(frozen=True)
class Quotas:
    total: int = 0
    per_peer: int = 0
    reserve: int = 0


@dataclass(frozen=True)
class Admission:
    """``ok``: accept, after deleting the kept parts named in ``evict``;
    otherwise refuse with ``code`` ("quota" or "no-space") and ``reason``.
    ``fresh``: the kept part the offer meant to continue is not kept (it
    gave way to another transfer since its receiver chose it): admitted as a
    new transfer, which must not open that part."""

    ok: bool
    code: str = ""
    reason: str = ""
    evict: tuple[str, ...] = ()
    fresh: bool = False


@dataclass
class _Running:
    peer: bytes
    size: int
    written: int
    part: str
    host: str = ""
    extra: int = 0  # disk beyond the part while it runs (a folder's tree)
    owner: str = ""
    request: int = 0  # the owner's ask that reserved it (0: reported running)
    resumed: _Kept | None = None  # the kept part it continues, as it was kept


@dataclass(frozen=True)
class _Kept:
    peer: bytes
    size: int
    allocated: int
    updated: float
    owner: str = ""


class SpaceLedger:
    """Running transfers (by transfer id) and kept parts (by part name)."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self._running: dict[bytes, _Running] = {}
        self._kept: dict[str, _Kept] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()  # parts that gave way, latest last

    # -- what is there ----------------------------------------------------------

    def keep(
        self, part: str, peer: bytes, size: int, allocated: int, updated: float, owner: str = ""
    ) -> None:
        """A kept part exists (found by a sweep, or left by a stopped transfer)."""
        self._gone.pop(part, None)
        self._kept[part] = _Kept(peer, max(0, size), max(0, allocated), updated, owner)

    def reset(self, owner: str) -> None:
        """``owner`` restarted: what it held is reported again from scratch."""
        self._running = {t: r for t, r in self._running.items() if r.owner != owner}
        self._kept = {p: k for p, k in self._kept.items() if k.owner != owner}

    def is_running(self, tid: bytes) -> bool:
        return tid in self._running

    def forget(self, part: str) -> None:
        """A kept part was deleted (or is no longer tracked)."""
        self._kept.pop(part, None)

    @property
    def kept(self) -> list[str]:
        return list(self._kept)

    def allocated(self, part: str) -> int:
        """Bytes of disk a kept part occupies (0 if it is not kept)."""
        k = self._kept.get(part)
        return k.allocated if k is not None else 0

    @property
    def promised(self) -> int:
        """Bytes running transfers still have to write (folders' trees included)."""
        return sum(max(0, r.size - r.written) + r.extra for r in self._running.values())

    def pending(self, *, peer: bytes | None = None, host: str | None = None) -> int:
        """Bytes the running transfers of ``peer`` (or from ``host``) still
        have to write: what a pending-bytes quota bounds."""
        return sum(
            max(0, r.size - r.written)
            for r in self._running.values()
            if (peer is None or r.peer == peer) and (host is None or r.host == host)
        )

    def over_pending(self, peer: bytes, host: str, need: int, limit: int) -> str:
        """Why ``need`` more bytes still to write from ``peer`` (at ``host``)
        would exceed the pending-bytes quota ``limit`` (0: none), or "".
        Per proven identity and per address: fresh identities cost nothing."""
        if limit and self.pending(peer=peer) + need > limit:
            return f"too many bytes still to come from you (max {limit})"
        if limit and self.pending(host=host) + need > limit:
            return f"too many bytes still to come from {host} (max {limit})"
        return ""

    def charged(self, peer: bytes | None = None) -> int:
        """Bytes charged against the quotas (of ``peer``, or of everyone)."""
        running = sum(r.size for r in self._running.values() if peer is None or r.peer == peer)
        kept = sum(k.size for k in self._kept.values() if peer is None or k.peer == peer)
        return running + kept

    # -- decisions ----------------------------------------------------------------

    def admit(
        self, peer: bytes, size: int, free: int, resume: str | None = None, extra: int = 0
    ) -> Admission:
        """May an offer of ``size`` bytes from ``peer`` start now, with
        ``free`` bytes free on the inbox's disk? ``resume``: the kept part it
        continues (its bytes are already on disk and already charged).
        ``extra``: disk it needs beyond its part (a folder's tree: ``size``)."""
        q = self.quotas
        continued = self._kept.get(resume) if resume is not None else None
        evict: list[str] = []
        oldest_first: list[tuple[float, str]] = []  # sorted once one must give way

        def give_way(excess: int, of_peer: bytes | None, disk: bool) -> int:
            """Evict kept parts (of ``of_peer`` only, if given), oldest first,
            until ``excess`` bytes (of quota, or of disk) are freed; what is
            still in excess. (Most offers need none to: the kept parts are not
            sorted for them, 58 ms an offer with 100,000 kept.)"""
            if excess > 0 and not oldest_first:
                kept = self._kept.items()
                oldest_first.extend(sorted((k.updated, n) for n, k in kept if n != resume))
            for _, name in oldest_first:
                if excess <= 0:
                    break
                k = self._kept[name]
                if name in evict or (of_peer is not None and k.peer != of_peer):
                    continue
                evict.append(name)
                excess -= k.allocated if disk else k.size
            return excess

        if q.per_peer:
            used = self.charged(peer)
            if continued is not None and continued.peer == peer:
                used -= continued.size
            if give_way(used + size - q.per_peer, peer, disk=False) > 0:
                return Admission(
                    False, "quota", f"over your quota of parts on this node ({q.per_peer} bytes)"
                )
        if q.total:
            used = self.charged() - (continued.size if continued is not None else 0)
            used -= sum(self._kept[n].size for n in evict)
            if give_way(used + size - q.total, None, disk=False) > 0:
                return Admission(
                    False, "quota", f"over the node's quota of parts ({q.total} bytes)"
                )
        need = size + extra - (continued.allocated if continued is not None else 0)
        available = free - self.promised - q.reserve
        freed = sum(self._kept[n].allocated for n in evict)
        if give_way(need - available - freed, None, disk=True) > 0:
            shown = max(0, available)
            return Admission(
                False, "no-space", f"not enough space in the inbox ({shown} bytes free)"
            )
        return Admission(True, evict=tuple(evict))

    def reserve(
        self,
        tid: bytes,
        peer: bytes,
        size: int,
        free: int,
        *,
        resume: str | None = None,
        held: int = 0,
        extra: int = 0,
        host: str = "",
        pending_limit: int = 0,
        owner: str = "",
        request: int = 0,
    ) -> Admission:
        """:meth:`admit` then, if admitted, the pending-bytes quota
        (``size - held`` more bytes to come, :meth:`over_pending`), then
        :meth:`start` under ``tid`` with the evicted parts forgotten: the
        caller deletes them. A ``tid`` already running is refused
        ("duplicate"): one reservation per transfer. ``request``: the
        owner's number for this ask (what :meth:`cancel` names)."""
        if tid in self._running:
            return Admission(False, "duplicate", "transfer id already in use")
        # The receiver chose ``resume`` before this ledger heard its ask; a
        # part that gave way meanwhile (the other receiver's ask evicted it)
        # is gone: admitted, if at all, as a fresh transfer.
        fresh = resume is not None and resume in self._gone
        if fresh:
            resume, held = None, 0
        verdict = self.admit(peer, size, free, resume, extra)
        if not verdict.ok:
            return verdict
        over = self.over_pending(peer, host, max(0, size - held), pending_limit)
        if over:
            return Admission(False, "quota", over)
        for name in verdict.evict:
            self.forget(name)
            self._gone[name] = None
            while len(self._gone) > GONE_MEMORY:
                self._gone.popitem(last=False)
        continued = self._kept.get(resume) if resume is not None else None
        self.start(tid, peer, size, held, resume or "", host, extra, owner)
        self._running[tid].request = request
        self._running[tid].resumed = continued
        return replace(verdict, fresh=True) if fresh else verdict

    def cancel(self, tid: bytes, request: int) -> bool:
        """The ask ``request`` that reserved ``tid`` was given up before its
        verdict was used (nothing was written under it): the reservation goes
        and the kept part it would have continued is kept again. False (and
        nothing changes) unless ``tid`` is reserved by that very ask."""
        r = self._running.get(tid)
        if r is None or not request or r.request != request:
            return False
        del self._running[tid]
        if r.resumed is not None and r.part:
            self._kept[r.part] = r.resumed
        return True

    # -- running transfers ----------------------------------------------------------

    def start(
        self,
        tid: bytes,
        peer: bytes,
        size: int,
        written: int,
        part: str,
        host: str = "",
        extra: int = 0,
        owner: str = "",
    ) -> None:
        """An admitted transfer runs (a continued kept part stops being kept);
        ``extra`` as for :meth:`admit`, reserved until it stops."""
        self._kept.pop(part, None)
        self._running[tid] = _Running(peer, size, max(0, written), part, host, extra, owner)

    def written(self, tid: bytes, nbytes: int) -> None:
        """``nbytes`` of the transfer's file are now on disk."""
        r = self._running.get(tid)
        if r is not None:
            r.written = max(r.written, nbytes)

    def stop(
        self,
        tid: bytes,
        keep: bool,
        updated: float,
        part: str = "",
        written: int | None = None,
    ) -> bool:
        """The transfer ended; ``keep``: its part (named ``part`` if it was
        not known at the start) stays for a resume, ``written`` bytes of it
        on disk. False if ``tid`` held no reservation (nothing changes)."""
        r = self._running.pop(tid, None)
        if r is None:
            return False
        if keep:
            allocated = r.written if written is None else max(r.written, written)
            self._kept[part or r.part] = _Kept(r.peer, r.size, allocated, updated, r.owner)
        return True
