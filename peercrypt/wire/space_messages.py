"""Messages of the inbox's space ledger (``actors/space.py``), between local
actors only (no peer can send them: the gateway delivers peers' messages
wrapped in ``Inbound``).

- ``SpaceReserve`` (receiver or mreceiver -> space): may transfer ``tid`` of
  ``size`` bytes from ``peer`` (at ``host``) start, continuing the kept part
  ``resume`` (``held`` bytes of it already written)? ``tree``: disk beyond
  its part (a folder's tree is built beside it). Answered by ``SpaceVerdict``; admitted means
  reserved (and the kept parts that gave way already deleted). ``fresh``:
  the part ``resume`` named had given way meanwhile (to the other
  receiver's ask); the transfer was admitted as a new one and must start a
  new part.
- ``SpaceWritten``: ``written`` bytes of ``tid`` are on disk now;
  ``SpaceWrittens``: those of every transfer that wrote since the
  receiver's last tick, as one message of columns
  (:mod:`peercrypt.wire.columns`), not one per transfer and tick.
- Every id is the ``owner``'s own: a unicast transfer and a multicast session
  (ids chosen by peers) may share one without touching each other's
  reservation, and neither receiver can release the other's.
- ``SpaceRelease``: ``tid`` ended; with ``keep`` its part ``part`` stays for a
  resume, ``written`` bytes of it on disk.
- ``SpaceCancel``: the ``owner`` gave up waiting for the verdict of its ask
  ``request`` (for ``tid``); if that ask's reservation stands it goes (a
  kept part it would have continued stays kept). Sent when the wait times
  out and for a verdict that finds no ask waiting: the retry of the same
  ``tid`` is then not refused "duplicate", and the retry's own reservation
  is never taken by it (it names another ask).
- ``SpaceReset``, ``SpaceKept``, ``SpaceRunning``: a receiver (the ``owner``)
  reports what it holds from scratch: when it starts (its kept parts, from
  the disk) and when the space actor restarted (kept parts and running
  transfers).
- ``SpaceForget``: a kept part was deleted (reclaimed, or obsolete).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.columns import column
from peercrypt.wire.fields import counter, reason

OWNER = 32  # an actor's name
TID = 32  # transfer ids and session ids
PART = 1024  # a part file's name in the inbox
HOST = 256


def _owner() -> dict[str, int]:
    return bounded(OWNER, 1)


@message
@dataclass(frozen=True, kw_only=True)
class SpaceReserve(Message):
    TYPE = "space-reserve"
    owner: str = field(metadata=_owner())
    request: int = counter()
    tid: bytes = field(metadata=bounded(TID, 1))
    peer: bytes = field(metadata=bounded(32))
    host: str = field(default="", metadata=bounded(HOST))
    size: int = counter()
    resume: str = field(default="", metadata=bounded(PART))
    held: int = counter(0)
    tree: int = counter(0)


@message
@dataclass(frozen=True, kw_only=True)
class SpaceVerdict(Message):
    TYPE = "space-verdict"
    request: int = counter()
    tid: bytes = field(metadata=bounded(TID, 1))
    ok: bool
    code: str = field(default="", metadata=bounded(32))
    reason: str = reason("")
    fresh: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class SpaceWritten(Message):
    TYPE = "space-written"
    owner: str = field(metadata=_owner())
    tid: bytes = field(metadata=bounded(TID, 1))
    written: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class SpaceWrittens(Message):
    TYPE = "space-writtens"
    owner: list[str] = column(SpaceWritten, "owner")
    tid: list[bytes] = column(SpaceWritten, "tid")
    written: list[int] = column(SpaceWritten, "written")


@message
@dataclass(frozen=True, kw_only=True)
class SpaceRelease(Message):
    TYPE = "space-release"
    owner: str = field(metadata=_owner())
    tid: bytes = field(metadata=bounded(TID, 1))
    keep: bool
    part: str = field(default="", metadata=bounded(PART))
    written: int = counter(0)


@message
@dataclass(frozen=True, kw_only=True)
class SpaceCancel(Message):
    TYPE = "space-cancel"
    owner: str = field(metadata=_owner())
    tid: bytes = field(metadata=bounded(TID, 1))
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class SpaceReset(Message):
    TYPE = "space-reset"
    owner: str = field(metadata=_owner())


@message
@dataclass(frozen=True, kw_only=True)
class SpaceKept(Message):
    TYPE = "space-kept"
    owner: str = field(metadata=_owner())
    part: str = field(metadata=bounded(PART, 1))
    peer: bytes = field(metadata=bounded(32))
    size: int = counter()
    allocated: int = counter()
    updated: float = 0.0


@message
@dataclass(frozen=True, kw_only=True)
class SpaceRunning(Message):
    TYPE = "space-running"
    owner: str = field(metadata=_owner())
    tid: bytes = field(metadata=bounded(TID, 1))
    peer: bytes = field(metadata=bounded(32))
    host: str = field(default="", metadata=bounded(HOST))
    size: int = counter()
    written: int = counter(0)
    part: str = field(default="", metadata=bounded(PART))
    tree: int = counter(0)


@message
@dataclass(frozen=True, kw_only=True)
class SpaceForget(Message):
    TYPE = "space-forget"
    part: str = field(metadata=bounded(PART, 1))
