"""Files this receiver delivered, so a re-offer of one is answered with the
earlier verdict instead of storing a second copy.

Why: a sender whose link fails while the receiver makes its final check
gives up after ``--timeout``; the receiver meanwhile stores ``NAME``. When the
sender offers the file again (by its own retry, or a user sending again),
the receiver must not write ``NAME.1``: it answers that it holds every chunk,
the sender hashes its file and sends Done as always, and the receiver
answers Verified with the name it stored the file under - once the hash is
the one it verified then.

What counts as the same offer (:class:`~peercrypt.core.resume.ResumeKey`):
the sender's *proven* identity (CURVE), the sanitised name, size, chunk size
and the source tag of the file's version. Keyed by the proven identity, a
member with another identity learns nothing about anyone else's deliveries
(its offer never matches); the verdict itself still needs the sender's own
whole-file hash.

What counts as still delivered: the file under that name in the inbox is
the very one stored (:class:`FileStamp`: device, inode, size and mtime, as
``lstat`` gives them; not ctime, which the receiver's own removal of the
part's other name changes). A file that is gone, replaced or written to
makes the offer a fresh transfer, and the entry is forgotten.

Bounded: at most ``capacity`` entries, each of bounded size. When full, the
entry that goes is the oldest of the identity holding the most entries, so
a member delivering many tiny files pushes out its own entries first, not
everyone else's. A sender's entry goes only once no identity holds more
entries than it does: a member with many fresh identities, one delivery
each, can still push out a sender holding one. Persisted in the node's data
directory so a restart keeps them (:meth:`DeliveredTable.encode` / :meth:`DeliveredTable.decode`,
which never raises: an unreadable table is an empty one).

Persisted as a snapshot plus a journal: each delivery (and each entry
forgotten) is one small row appended to the journal (:func:`journal_row`,
:func:`forget_row`), not a rewrite of the whole table; once the journal has
:data:`JOURNAL_ROWS` rows (or :data:`JOURNAL_BYTES`), the caller writes a
new snapshot and empties it. :meth:`DeliveredTable.decode` replays the
journal over the snapshot and stops at the first row it cannot read (a
row cut short by a crash), keeping every row before it. Replaying a row
twice (a crash between a new snapshot and emptying the journal) may only
push out an old entry early: the worst a lost entry costs is a second copy
of that file, never a wrong answer (every answer checks the file's stamp
and its sender's hash).

Folders (a tree transfer: several files and folders stored under their
top-level names) are remembered the same way, keyed alike (the offer's
source tag of a tree is a keyed hash of its manifest: every path, size,
mode and content hash), with a :class:`TreeStamp` in place of the file's
stamp: the top-level names the tree got and one hash over the stamp of
every entry under them (path, mode, device, inode, size, mtime, ctime),
in path order (ctime too, unlike a file's stamp: nothing of the receiver's
own touches a stored folder's entries once it is stamped). So an entry stays
small whatever the folder holds, and any file written (even with its mtime
put back), added, removed or renamed in the stored folder since makes the
offer a fresh transfer. Checking it walks the stored folder (at every
re-offer and again before the answer), so a folder of more than
:data:`MAX_TREE_ENTRIES` entries, or with top-level names longer than
:data:`MAX_TOPS_BYTES` together, is simply not remembered (:func:`tree_stamp`
returns None): sent again, it is stored as a second copy, as before.

Pure: no file is opened here; the caller passes the stamps it measured.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import blake3
import msgpack

from peercrypt.core.resume import ResumeKey

CAPACITY = 256  # deliveries remembered
FORMAT = 1
MAX_NAME = 1024  # characters of a name kept (the inbox's own limit is lower)
MAX_TABLE_BYTES = 2 * 1024 * 1024
JOURNAL_ROWS = CAPACITY  # rows appended before a new snapshot
JOURNAL_BYTES = 512 * 1024  # or this many bytes of them
MAX_JOURNAL_BYTES = 2 * JOURNAL_BYTES  # read at most (a row is < 16 KiB)
_RECORD, _FORGET = 1, 0
# Entries (files and folders) of a stored folder the table remembers: each
# re-offer walks them twice (its lookup, its answer), in the receiver's loop.
MAX_TREE_ENTRIES = 1024
# UTF-8 bytes of a stored folder's top-level names together (", "-joined):
# its row holds them twice (the names and the text of its Verified), so 256
# such rows stay well within MAX_TABLE_BYTES.
MAX_TOPS_BYTES = 1024
# Seconds one walk of a stored folder may take (a cold cache, a slow or
# network disk): past it, the folder counts as changed (a fresh transfer). A
# walk takes ~4 ms; well above it, since a loaded machine stalls a walk for
# 0.25 s at times (then a Done is answered hash-mismatch); WalkBudget keeps
# slow walks from adding up.
TREE_STAMP_SECONDS = 1.0
# Of the receiver's loop, what walks of stored folders may take in the long
# run (a share of each second) and at once: a member re-offering its own
# remembered folder again and again costs the receiver a walk or two each
# time (its handshake costs it far less), so past this a folder's re-offer
# is not looked up (a fresh transfer, as for a folder not remembered).
TREE_WALK_SHARE = 0.1
TREE_WALK_BURST_SECONDS = 1.0
TREE_DIGEST_BYTES = 32
_TREE_CONTEXT = "peercrypt 2026-12 delivered tree stamp"


@dataclass(frozen=True)
class FileStamp:
    """What identifies one file on disk, and whether it changed."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class TreeStamp:
    """What identifies a stored folder on disk, and whether it changed: the
    names its top-level entries got in the inbox, how many entries it held
    and the hash of their stamps (:func:`tree_stamp`)."""

    tops: tuple[str, ...]
    entries: int
    digest: bytes

    @property
    def stored_as(self) -> str:
        """The names as a folder's Verified gives them."""
        return ", ".join(self.tops)


# One entry under a stored folder's top-level names, as ``lstat`` gives it:
# its path components, st_mode, st_dev, st_ino, st_size, st_mtime_ns and
# st_ctime_ns (which no one can set: a file written to and its mtime put
# back still changes it).
StampRow = tuple[tuple[str, ...], int, int, int, int, int, int]


def tree_stamp(tops: Sequence[str], rows: Iterable[StampRow]) -> TreeStamp | None:
    """The stamp of the folder stored under ``tops`` whose entries (every one,
    in the order the caller walks them) are ``rows``; None if it is not one
    the table remembers (more than :data:`MAX_TREE_ENTRIES` entries, or
    names beyond :data:`MAX_TOPS_BYTES`). Reads at most one row past the bound."""
    if not tops or not _valid_tops(tuple(tops)):
        return None
    h = blake3.blake3(derive_key_context=_TREE_CONTEXT)
    count = 0
    for row in itertools.islice(rows, MAX_TREE_ENTRIES + 1):
        count += 1
        path, *numbers = row
        h.update(msgpack.packb([list(path), *numbers]))
    if count > MAX_TREE_ENTRIES or count == 0:
        return None
    return TreeStamp(tuple(tops), count, h.digest())


def _valid_tops(tops: tuple[str, ...]) -> bool:
    return (
        all(t and "/" not in t and "\x00" not in t and t not in (".", "..") for t in tops)
        and 0 < len(", ".join(tops).encode("utf-8", "surrogatepass")) <= MAX_TOPS_BYTES
    )


class WalkBudget:
    """The time walks of stored folders may still take (:data:`TREE_WALK_SHARE`
    of each second, at most :data:`TREE_WALK_BURST_SECONDS` saved up). Every
    walk is charged, in full (a walk that overdraws leaves a debt); only a
    re-offer's lookup asks first (its Done's walk then follows), so walks
    take at most the burst, the share of the time and two walks more."""

    def __init__(
        self,
        now: float,
        share: float = TREE_WALK_SHARE,
        burst: float = TREE_WALK_BURST_SECONDS,
    ) -> None:
        self._share, self._burst = share, burst
        self._left, self._last = burst, now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._left = min(self._burst, self._left + (now - self._last) * self._share)
            self._last = now

    def allows(self, now: float) -> bool:
        """A re-offer's walk may start: some of the budget is left."""
        self._refill(now)
        return self._left > 0

    def charge(self, seconds: float, now: float) -> None:
        """A walk took ``seconds``."""
        self._refill(now)
        self._left -= max(0.0, seconds)


@dataclass(frozen=True)
class Delivery:
    key: ResumeKey
    stored_as: str  # in the inbox (one path component; a folder's: its names, ", ")
    digest: bytes  # the whole-file (whole-stream) hash verified when it was stored
    stamp: FileStamp | TreeStamp
    when: float  # wall clock


def _file_key(key: ResumeKey) -> ResumeKey:
    """The table's key: the file (sender, name, size, source tag), whatever
    chunk size its offer picked (a send capped by ``-r`` or a node's share
    cuts smaller chunks: the same file, not a second copy)."""
    return dataclasses.replace(key, chunk_size=0) if key.chunk_size else key


class DeliveredTable:
    """The last ``capacity`` deliveries, by :class:`ResumeKey` without its
    chunk size."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[ResumeKey, Delivery] = OrderedDict()
        self._per_peer: dict[bytes, int] = {}  # entries held, by identity

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Delivery]:
        """Every entry, oldest first."""
        return list(self._entries.values())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, ResumeKey) and _file_key(key) in self._entries

    def record(self, delivery: Delivery) -> None:
        """``delivery`` happened (it replaces an earlier one of the same key).
        Past ``capacity``, the oldest entry of the identity holding the most
        entries goes (ties: the identity whose oldest entry is oldest)."""
        key = _file_key(delivery.key)
        self._remove(key)
        self._entries[key] = delivery
        self._per_peer[key.peer] = self._per_peer.get(key.peer, 0) + 1
        while len(self._entries) > self.capacity:
            self._evict_one()

    def _remove(self, key: ResumeKey) -> bool:
        if self._entries.pop(key, None) is None:
            return False
        left = self._per_peer[key.peer] - 1
        if left:
            self._per_peer[key.peer] = left
        else:
            del self._per_peer[key.peer]
        return True

    def _evict_one(self) -> None:
        # (Counted as they come and go, not by a pass over the whole table
        # on every delivery once it is full: 4% of a receiving node's
        # interpreter time in a stream of small sends.)
        counts = self._per_peer
        most = max(counts.values())
        # The entries are in delivery order: the first one of a peer holding
        # ``most`` is the oldest of the oldest such peer.
        victim = next(k for k in self._entries if counts[k.peer] == most)
        self._remove(victim)

    def forget(self, key: ResumeKey) -> bool:
        return self._remove(_file_key(key))

    def get(self, key: ResumeKey) -> Delivery | None:
        """The entry of ``key``, unchecked (what :meth:`lookup` would check)."""
        return self._entries.get(_file_key(key))

    def lookup(
        self,
        key: ResumeKey,
        stamp_of: Callable[[str], FileStamp | None],
        tree_stamp_of: Callable[[tuple[str, ...]], TreeStamp | None] = lambda tops: None,
    ) -> Delivery | None:
        """The delivery an offer of ``key`` repeats, if its file is still the
        one stored (``stamp_of(name)``: the file's stamp now, None if it is
        gone or not a regular file; a folder's, ``tree_stamp_of(tops)``:
        None if one is gone or it is no longer one the table remembers). A
        file or folder gone or changed: the entry is forgotten and None
        returned (a fresh transfer)."""
        found = self._entries.get(_file_key(key))
        if found is None:
            return None
        if not unchanged(found, stamp_of, tree_stamp_of):
            self._remove(_file_key(key))
            return None
        return found

    # -- persistence --------------------------------------------------------------

    def encode(self) -> bytes:
        """The snapshot: every entry, oldest first."""
        rows = [_encode(d) for d in self._entries.values()]
        packed: bytes = msgpack.packb([FORMAT, rows], use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes, capacity: int = CAPACITY, journal: bytes = b"") -> DeliveredTable:
        """The table the snapshot ``data`` and then the ``journal`` hold; an
        invalid snapshot is an empty table, rows that are not valid are
        skipped, and the journal is read up to its first unreadable row."""
        table = cls(capacity)
        if len(data) <= MAX_TABLE_BYTES:
            try:
                fmt, rows = msgpack.unpackb(data, raw=False)
            except Exception:  # garbage raises several kinds in msgpack
                fmt, rows = None, None
            if fmt == FORMAT and isinstance(rows, list):
                for row in rows[-table.capacity :]:
                    delivery = _row(row)
                    if delivery is not None:
                        table.record(delivery)
        table._replay(journal[:MAX_JOURNAL_BYTES])
        return table

    def _replay(self, journal: bytes) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_JOURNAL_BYTES)
        unpacker.feed(journal)
        try:
            for entry in unpacker:
                if not isinstance(entry, list) or len(entry) != 2:
                    return
                kind, row = entry
                if kind == _RECORD and (delivery := _row(row)) is not None:
                    self.record(delivery)
                elif kind == _FORGET and (key := _key(row)) is not None:
                    self.forget(key)
                else:
                    return
        except Exception:  # a row cut short, or garbage: what came before stands
            return


def unchanged(
    d: Delivery,
    stamp_of: Callable[[str], FileStamp | None],
    tree_stamp_of: Callable[[tuple[str, ...]], TreeStamp | None],
) -> bool:
    """``d``'s file (or folder) is still the very one stored."""
    if isinstance(d.stamp, TreeStamp):
        return tree_stamp_of(d.stamp.tops) == d.stamp
    return stamp_of(d.stored_as) == d.stamp


def journal_row(delivery: Delivery) -> bytes:
    """The journal row that records ``delivery``."""
    packed: bytes = msgpack.packb([_RECORD, _encode(delivery)], use_bin_type=True)
    return packed


def forget_row(key: ResumeKey) -> bytes:
    """The journal row that forgets the entry of ``key``."""
    row = [key.peer, key.name, key.size, key.chunk_size, key.source]
    packed: bytes = msgpack.packb([_FORGET, row], use_bin_type=True)
    return packed


def _encode(d: Delivery) -> list[object]:
    t = d.stamp
    stamp = (
        [list(t.tops), t.entries, t.digest]
        if isinstance(t, TreeStamp)
        else [t.dev, t.ino, t.size, t.mtime_ns]
    )
    return [
        d.key.peer,
        d.key.name,
        d.key.size,
        d.key.chunk_size,
        d.key.source,
        d.stored_as,
        d.digest,
        stamp,
        d.when,
    ]


def _key(row: object) -> ResumeKey | None:
    if not isinstance(row, list) or len(row) != 5:
        return None
    peer, name, size, chunk, source = row
    if not (
        isinstance(peer, bytes)
        and len(peer) == 32
        and isinstance(name, str)
        and 0 < len(name) <= MAX_NAME
        and all(isinstance(n, int) and n >= 0 for n in (size, chunk))
        and isinstance(source, bytes)
        and len(source) <= 64
    ):
        return None
    return ResumeKey(peer, name, size, chunk, source)


def _row(row: object) -> Delivery | None:
    if not isinstance(row, list) or len(row) != 9:
        return None
    key = _key(row[:5])
    stored, digest, stamp, when = row[5:]
    if not (
        key is not None
        and isinstance(stored, str)
        and 0 < len(stored) <= MAX_NAME
        and "/" not in stored
        and stored not in (".", "..")
        and isinstance(digest, bytes)
        and len(digest) <= 64
        and isinstance(when, float | int)
    ):
        return None
    found = _stamp(stamp)
    if found is None or (isinstance(found, TreeStamp) and found.stored_as != stored):
        return None
    return Delivery(key, stored, digest, found, float(when))


def _stamp(row: object) -> FileStamp | TreeStamp | None:
    """A file's stamp (4 integers) or a folder's (its names, count, hash)."""
    if not isinstance(row, list):
        return None
    if len(row) == 4 and all(isinstance(n, int) for n in row):
        return FileStamp(*row)
    if len(row) != 3:
        return None
    tops, entries, digest = row
    if not (
        isinstance(tops, list)
        and tops
        and len(tops) <= MAX_TOPS_BYTES
        and all(isinstance(t, str) for t in tops)
        and _valid_tops(tuple(tops))
        and isinstance(entries, int)
        and 0 < entries <= MAX_TREE_ENTRIES
        and isinstance(digest, bytes)
        and len(digest) == TREE_DIGEST_BYTES
    ):
        return None
    return TreeStamp(tuple(tops), entries, digest)
