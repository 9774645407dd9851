"""Resuming an interrupted transfer: what counts as "the same file to the
same peer", what the receiver records, what it answers, and when a kept part
is given up.

Pure: no file is opened here, time comes in as ``now`` (wall-clock seconds,
since a kept part outlives the process that wrote it).

Identity of a transfer (:class:`ResumeKey`)
-------------------------------------------
A part file may be continued only by an offer that agrees on all of:

- ``peer``: the sender's *proven* long-term key (the CURVE client key the
  receiver's gateway authenticated), never a claim inside the offer; a
  member with the network key and another identity cannot append to, or
  learn the progress of, someone else's part;
- ``name`` (sanitised) and ``size``;
- ``source``: the sender's :func:`source_tag` of the file being sent.

The part's ``chunk_size`` decides only how it continues: in its own chunks
if the offer allows them, else :func:`rechunked` to the receiver's choice.

``source`` is BLAKE3 (keyed by a fixed context string) over the file's
``(size, mtime_ns, inode, device)`` and three 4 KiB samples (start, middle,
end). Why these: every ordinary write changes ``mtime_ns``; a file replaced
by rename (editors, ``rsync``, package managers) changes the inode; the
samples catch a replacement that kept all of those (``cp -p`` over the same
inode is rare, but a restored backup is not). Reading 12 KiB and one
``fstat`` keeps the check far below a second for any size; hashing the whole
file to decide would cost a full read before the first byte moves. The tag
is a hash so the receiver learns nothing of the sender's inode numbers or
timestamps. A collision of all of these is not trusted either: the final
whole-file hash is verified as on every transfer, and a resumed transfer
that fails it is restarted from nothing by the sender (the receiver drops
the part on a mismatch).

Durability (:class:`Manifest`)
------------------------------
The manifest beside a part lists the chunks that are *durably* in the part:
the writer syncs the part (``fdatasync``) before each manifest it writes
(every :func:`checkpoint_every` chunks, 16 MiB or 64 chunks, whichever comes
first, and at every stop), and the manifest is
replaced atomically (write, fsync, rename). So after a crash a manifest
never lists a chunk the part lost, and resuming needs no re-read of the part
to decide what is held. Measured cost: 0.12-0.19 s of ``fdatasync`` per GiB
at one checkpoint per 64 MiB (writeback is already started per chunk), see
docs/benchmarks.md.

What the receiver answers
-------------------------
:func:`plan_resume` picks the part to continue (same key, not in use by a
running transfer, the most bytes held) and lists the *obsolete* ones: the
same peer and name with another size or source, i.e. an older version of
the file; they are deleted, so a changed source restarts cleanly and leaves
nothing behind. A part of the same version in chunks the offer does not
allow (a paced send's small ones, sent again unpaced) continues in the
chunk size the receiver chose: its held bytes as whole chunks of that size
(:func:`rechunked`). The Accept carries the held chunks as ranges
(at most :data:`~peercrypt.core.bitmap.MAX_RANGES`; anything beyond is
simply sent again).

Reclaiming (:func:`expired`)
----------------------------
A kept part whose manifest was last written more than ``expiry`` seconds
ago (default :data:`DEFAULT_PART_EXPIRY`, one day) is deleted, at node start
and every :data:`RECLAIM_INTERVAL` seconds; so is a part without a manifest
or a manifest without a part (a crash between the two). Space quotas may
reclaim sooner (:mod:`peercrypt.core.space`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import blake3
import msgpack

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap

MANIFEST_VERSION = 2
CHECKPOINT_CHUNKS = 64  # chunks written between two durable manifests, at most
CHECKPOINT_BYTES = 16 * 1024 * 1024  # bytes written between two, at most
# ... unless the last one is more recent than this (s): a checkpoint waits for
# the disk twice (the part's fdatasync, the manifest's fsync), and at a disk
# inbox's full rate one every 16 MiB held up the writer for a sixth of its
# time; a crash then costs at most this much of the transfer's time again.
CHECKPOINT_SPACING = 0.25
DEFAULT_PART_EXPIRY = 24 * 3600.0  # seconds a kept part waits for its resume
RECLAIM_INTERVAL = 600.0  # seconds between two sweeps of the inbox
SAMPLE_BYTES = 4096
SOURCE_BYTES = 32
PEER_BYTES = 32
TID_BYTES = 16
MAX_PART_NAME = 512
# A manifest is read whole: this bounds the memory a hostile or damaged one
# can cost (a bitmap of 2**27 chunks, 128 TiB at 1 MiB chunks).
MAX_BITMAP_BYTES = 2**24
MAX_MANIFEST_BYTES = MAX_BITMAP_BYTES + 4096
_SOURCE_CONTEXT = "peercrypt 2026 resume source tag v1"


class ManifestError(ValueError):
    """A manifest that is not one this node wrote (damaged, foreign, old)."""


def checkpoint_every(chunk_size: int) -> int:
    """Chunks between two checkpoints: what a crash can make us send again
    is bounded by 16 MiB (under 2% of a 1 GiB file) and by 64 chunks, or
    by what came in the last CHECKPOINT_SPACING seconds if that is more."""
    return max(1, min(CHECKPOINT_CHUNKS, CHECKPOINT_BYTES // max(1, chunk_size)))


def sample_offsets(size: int) -> list[int]:
    """Where :func:`source_tag` samples a file of ``size`` bytes: the start,
    the middle and the last :data:`SAMPLE_BYTES` (fewer for small files)."""
    if size <= 0:
        return []
    last = max(0, size - SAMPLE_BYTES)
    return sorted({0, (size // 2) // SAMPLE_BYTES * SAMPLE_BYTES, last})


def source_tag(
    size: int, mtime_ns: int, inode: int, device: int, samples: Sequence[bytes]
) -> bytes:
    """The sender's identity of a source file version (see the module
    docstring); ``samples`` are the bytes read at :func:`sample_offsets`."""
    h = blake3.blake3(derive_key_context=_SOURCE_CONTEXT)
    h.update(msgpack.packb([size, mtime_ns, inode, device, len(samples)]))
    for sample in samples:
        h.update(len(sample).to_bytes(8, "big"))
        h.update(sample)
    return h.digest()


@dataclass(frozen=True)
class ResumeKey:
    peer: bytes
    name: str
    size: int
    chunk_size: int
    source: bytes

    @property
    def total(self) -> int:
        return -(-self.size // self.chunk_size)

    def same_file(self, other: ResumeKey) -> bool:
        """Same sender and same name: the same file, perhaps another version."""
        return self.peer == other.peer and self.name == other.name

    def same_version(self, other: ResumeKey) -> bool:
        """The same version of the same file, whatever its chunk size."""
        return self.same_file(other) and (self.size, self.source) == (other.size, other.source)

    def continues(self, other: ResumeKey, low: int) -> bool:
        """An offer of this key, allowing chunks of ``low`` bytes up to its
        ``chunk_size``, may continue a part laid out as ``other``."""
        return self.same_version(other) and low <= other.chunk_size <= self.chunk_size


@dataclass(frozen=True)
class Manifest:
    """What a kept part holds. ``part`` is the part file's name in the inbox
    (one path component); ``written`` the bitmap of durable chunks;
    ``updated`` the wall-clock time of the last checkpoint."""

    key: ResumeKey
    tid: bytes
    part: str
    written: bytes
    updated: float

    def held(self) -> ChunkBitmap:
        return ChunkBitmap.from_bytes(self.key.total, self.written)

    def held_bytes(self) -> int:
        """Bytes of the file the part already holds."""
        k = self.key
        held = self.held()
        nbytes = held.count * k.chunk_size
        if k.total and (k.total - 1) in held:
            nbytes -= k.total * k.chunk_size - k.size  # the last chunk is short
        return nbytes

    def encode(self) -> bytes:
        k = self.key
        data: bytes = msgpack.packb(
            {
                "version": MANIFEST_VERSION,
                "peer": k.peer,
                "name": k.name,
                "size": k.size,
                "chunk_size": k.chunk_size,
                "source": k.source,
                "tid": self.tid,
                "part": self.part,
                "written": self.written,
                "updated": float(self.updated),
            },
            use_bin_type=True,
        )
        return data

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Strict: anything but a manifest of this version with consistent
        fields raises :class:`ManifestError` (and nothing else)."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest too large")
        try:
            obj = msgpack.unpackb(
                data, raw=False, strict_map_key=True, max_bin_len=MAX_BITMAP_BYTES, max_ext_len=0
            )
        except Exception as exc:  # msgpack raises many types on garbage
            raise ManifestError(f"malformed manifest ({type(exc).__name__})") from None
        if not isinstance(obj, dict) or obj.get("version") != MANIFEST_VERSION:
            raise ManifestError("not a manifest of this version")
        expected = {
            "version": int,
            "peer": bytes,
            "name": str,
            "size": int,
            "chunk_size": int,
            "source": bytes,
            "tid": bytes,
            "part": str,
            "written": bytes,
            "updated": float,
        }
        if obj.keys() != expected.keys():
            raise ManifestError("manifest fields differ")
        for field, tp in expected.items():
            if not isinstance(obj[field], tp) or isinstance(obj[field], bool):
                raise ManifestError(f"manifest field {field} has the wrong type")
        key = ResumeKey(obj["peer"], obj["name"], obj["size"], obj["chunk_size"], obj["source"])
        if (
            len(key.peer) != PEER_BYTES
            or len(key.source) != SOURCE_BYTES
            or len(obj["tid"]) != TID_BYTES
            or key.chunk_size <= 0
            or not 0 <= key.size < 2**62
            or not key.name
            or "/" in key.name
            or not 0 < len(obj["part"]) <= MAX_PART_NAME
            or "/" in obj["part"]
            or obj["part"] in (".", "..")
            or len(obj["written"]) != (key.total + 7) // 8
        ):
            raise ManifestError("manifest fields out of bounds")
        return cls(key, obj["tid"], obj["part"], obj["written"], obj["updated"])


@dataclass(frozen=True)
class ResumePlan:
    """``reuse``: the kept part to continue (None: start a new one);
    ``obsolete``: kept parts to delete: of an older version of the same file,
    or in chunks the offer does not allow holding no whole chunk of the
    receiver's choice."""

    reuse: Manifest | None
    obsolete: tuple[Manifest, ...]


# Runs of held chunks a conversion walks (the lowest): the walk is Python on
# the receiver's thread, and a sender offering one file in turn in two chunk
# sizes must not make it walk millions each time. An Accept names at most
# MAX_RANGES runs anyway; chunks beyond are sent again.
MAX_RECHUNK_RUNS = 4096


def rechunked(m: Manifest, chunk_size: int) -> Manifest:
    """``m`` laid out in chunks of ``chunk_size``: a chunk is held iff every
    byte of it lies in chunks ``m`` holds (in its lowest
    :data:`MAX_RECHUNK_RUNS` runs of held chunks). The part holds the file's bytes at
    their offsets whatever the chunk size that wrote them, and a chunk
    written again in another size is the same bytes of the same version (the
    final hash checks it), so the manifest on disk stays true meanwhile."""
    old = m.key
    if chunk_size == old.chunk_size:
        return m
    key = dataclasses.replace(old, chunk_size=chunk_size)
    held = ChunkBitmap(key.total)
    for start, end in m.held().ranges(0, MAX_RECHUNK_RUNS):  # runs of held chunks, as bytes
        low, high = start * old.chunk_size, min(end * old.chunk_size, old.size)
        first = -(-low // chunk_size)  # the first new chunk starting in the run
        last = key.total if high == old.size else high // chunk_size  # past the last inside it
        if first < last:
            held.add_range(first, last)
    return Manifest(key, m.tid, m.part, held.to_bytes(), m.updated)


def plan_resume(
    key: ResumeKey,
    kept: Iterable[Manifest],
    in_use: Iterable[str] = (),
    low: int = 0,
    chosen: int = 0,
) -> ResumePlan:
    """Decide what an offer with ``key`` continues. ``kept`` are the inbox's
    manifests; ``in_use`` the part names of running transfers (never reused
    nor deleted: two sends of one file at once each get their own part).
    ``low``: the offer allows chunks from ``low`` bytes up to
    ``key.chunk_size`` (0: that size only), so a part laid out in any of them
    continues (the chunk size of the one chosen is the transfer's). A part
    of the same version in chunks outside them continues :func:`rechunked`
    to ``chosen`` (the receiver's choice in the offer's range) if it holds a
    whole chunk of that size (0: none is; it is obsolete like another
    version)."""
    busy = set(in_use)
    reuse: Manifest | None = None
    reuse_count = -1
    obsolete: list[Manifest] = []
    for m in kept:
        if m.part in busy or not m.key.same_file(key):
            continue
        if not key.continues(m.key, low or key.chunk_size):
            again = rechunked(m, chosen) if chosen and m.key.same_version(key) else None
            if again is None or not again.held().count:
                obsolete.append(m)
                continue
            m = again
        count = m.held_bytes()  # bytes: kept parts may differ in chunk size
        newer = reuse is not None and m.updated > reuse.updated
        if count > reuse_count or (count == reuse_count and newer):
            reuse, reuse_count = m, count
    return ResumePlan(reuse, tuple(obsolete))


def accept_ranges(held: ChunkBitmap) -> list[tuple[int, int]]:
    """The held chunks as the Accept carries them: the lowest
    :data:`MAX_RANGES` [start, end) ranges."""
    return held.ranges(0, MAX_RANGES)


@dataclass(frozen=True)
class KeptPart:
    """One leftover in the inbox as a sweep sees it: a part file, its
    manifest, or both. ``updated``: the manifest's checkpoint time, or the
    file's mtime when there is no readable manifest."""

    part: str
    manifest: str | None
    has_part: bool
    updated: float


def expired(
    kept: Iterable[KeptPart], now: float, expiry: float, in_use: Iterable[str] = ()
) -> list[KeptPart]:
    """The leftovers a sweep at ``now`` deletes: not in use by a running
    transfer and not updated for ``expiry`` seconds or more (incomplete pairs,
    a part without manifest or a manifest without part, alike)."""
    busy = set(in_use)
    return [k for k in kept if k.part not in busy and now - k.updated >= expiry]
