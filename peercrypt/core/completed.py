"""The finished transfers a receiver remembers, to answer a repeated Done.

Pure: every call gets the current time as ``now``; nothing reads a clock.

A sender sends its Done right after its last chunk and again until the
receiver's sealed Verified repeats its hash; that Verified can be lost
(dropped on the way, or the receiver answered a connection that broke).
The receiver then answers each repeated Done with the same sealed Verified,
kept here by transfer id. A sender repeats its Done for at most its
``--timeout`` (:data:`~peercrypt.cli.fast.MAX_TIMEOUT` at most) after the
last answer it heard, so an entry is kept ``keep`` seconds (at least that
long) and then forgotten (:meth:`expire`: the receiver calls it at each
remember and at its inbox sweep, every 10 minutes). The count is bounded too
(``limit``, the node's ``completed_memory`` setting): more transfers
finished within ``keep`` than that forget the oldest first, and their
senders find out by offering the file again (``actors/sender.py``: a Done
unanswered for the sender's timeout is offered again; the receiver's table
of delivered files answers it with the earlier verdict, sealed under the new
transfer's keys, or the file is sent again). Memory: ``limit`` entries of
the tid (16 bytes), the sealed Verified (its header and the hash and stored
name sealed), the time and the routing id the Done came on (the receiver's
:class:`~actors.receiver.Remembered`): about 520 bytes with Python's objects
for a short name, up to about 4.8 KiB for a folder's stored names (1024
characters) and a routing id of 255 bytes (docs/architecture.md, "Bounds").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["KEEP", "CompletedMemory"]

# Seconds an entry is kept: the longest --timeout a sender may repeat its
# Done for (cli/fast.py's MAX_TIMEOUT, 3600 s), and a minute of slack.
KEEP = 3660.0

V = TypeVar("V")


class CompletedMemory(Generic[V]):
    """tid -> what was answered, kept ``keep`` seconds after it was
    remembered and never more than ``limit`` of them (the oldest forgotten
    first). :attr:`evicted` counts the entries forgotten before their time."""

    def __init__(self, limit: int, keep: float = KEEP) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self.limit = limit
        self.keep = keep
        self.evicted = 0
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tid: object) -> bool:
        return tid in self._entries

    def remember(self, tid: bytes, value: V, now: float) -> None:
        """Keep ``value`` for ``tid`` from ``now`` (again: from ``now`` anew)."""
        self.expire(now)
        self._entries.pop(tid, None)
        while len(self._entries) >= self.limit:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[tid] = (now, value)

    def get(self, tid: bytes, now: float) -> V | None:
        """What was remembered for ``tid``, unless it is older than ``keep``."""
        entry = self._entries.get(tid)
        if entry is None or now - entry[0] >= self.keep:
            return None
        return entry[1]

    def expire(self, now: float) -> int:
        """Forget the entries older than ``keep``; how many."""
        gone = 0
        entries = self._entries
        while entries:
            tid, (since, _) = next(iter(entries.items()))
            if now - since < self.keep:
                break
            del entries[tid]
            gone += 1
        return gone
