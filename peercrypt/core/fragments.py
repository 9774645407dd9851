"""UDP/IP multicast data plane: sealed chunks as datagrams (pure, no sockets).

With a multicast group configured (docs/multicast.md, "Transports"), a
session's sealed chunks go to the group as UDP datagrams instead of over
ZeroMQ PUB/SUB, so the kernel or the network copies them to every receiver
and the sender writes each byte once, whatever the number of receivers.

A sealed chunk (AES-256-GCM ciphertext + tag, sealed once) is cut into
fragments of ``frag`` bytes; each datagram carries a fixed header::

    magic "PCm3" | session id (16) | chunk index (u64) | flags (u8, bit 0: last)
    | nonce (12) | blob length (u32) | fragment offset (u32) | header tag (16)

followed by ``blob[offset:offset + frag]``, where the blob is the sealed
chunk followed by the sender's signature of it. Nothing in the header is
secret (the same fields travel in clear as ``McChunk`` on the PUB socket).
The *header tag* is a keyed BLAKE3 of the chunk's fields (all but the
offset) under a key derived from the content key (:func:`header_key`): only
the session's sender and receivers can make a header (:func:`authentic`),
so an outsider on the segment can neither start a chunk's reassembly
(memory) nor start one over with a new nonce (churn). The tag is the same
for every fragment of one seal of a chunk, so the sender computes it once
per chunk and a receiver checks it once per chunk (:class:`HeaderCheck`
remembers the last authentic one): with datagrams sized to a 1500-byte MTU
a chunk of 1 MiB is ~750 datagrams. The offset is not covered: with a real
header an outsider can only put bytes at another aligned offset of a chunk
being sent, which is what it can do anyway by racing a copy of a real
fragment with other bytes. The payload is not covered (that would cost a
pass over every byte): a fragment a receiver already holds cannot be
replaced (the first copy wins), and the whole chunk is checked against the
sender's signature and AES-GCM when it is complete. A co-receiver knows the
content key, so it can make headers; what it forges fails the signature and
is NAKed and repaired. The :class:`Reassembler` accepts only fragments that
fit the session (index in range, the exact blob length of that index, an
aligned offset, the exact fragment length).

The datagrams of one chunk may travel as one UDP GSO buffer (``UDP_SEGMENT``,
actors/udp_multicast.py): each segment is a whole datagram of this format,
so a receiver with or without GRO, or a switch that splits them, sees the
same datagrams. :class:`Intake` takes a receive buffer (one datagram, or a
GRO buffer of equal segments) and gives complete chunks; it parses and
checks the first datagram of a run in full and then takes each following
one that has the very same header bytes (chunk, seal, tag) at the next
offset with a byte comparison and a copy: with 1500-byte datagrams a
receiver's Python work per datagram is what bounds its rate. A receiver
reads into :class:`ReadBuffers`: headers and payloads scattered apart
(:class:`Scattered`), and the payloads of the fragments most likely next
(:meth:`Reassembler.landing`) straight into their chunk's buffer, where
they count only once every header of the read says they belong there.

Memory: at most ``max_pending`` chunks are being reassembled per session
(beyond, the lowest index is given up: it will be NAKed), and at most
:data:`SPARE_BUFFERS` buffers of completed chunks are kept for reuse, so a
session holds at most ``max_pending`` + 6 chunks' bytes (chunk size + tag +
signature each), whatever the file size.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import blake3

from peercrypt.core.address import split_host_port

MAGIC = b"PCm3"
FIELDS = struct.Struct("!4s16sQB12sI")  # what the tag covers: all but the offset
OFFSET = struct.Struct("!I")
TAG_BYTES = 16
HEADER = struct.Struct(f"!{FIELDS.size}sI{TAG_BYTES}s")
HEADER_BYTES = HEADER.size  # 65
MAX_DATAGRAM = 65507  # the largest IPv4 UDP payload
MIN_FRAGMENT = 512
MAX_FRAGMENT = MAX_DATAGRAM - HEADER_BYTES
DEFAULT_FRAGMENT = 65000 - HEADER_BYTES
FLAG_LAST = 1
# Completed chunks' buffers a Reassembler keeps for reuse: as many as its
# receiving thread hands over at once (actors/udp_multicast.READY_CHUNKS, 4)
# and 2 more. The actor gives back a burst of them when it catches up; with
# 2 kept, a third of a run's chunks were assembled in a fresh MiB (zeroed,
# faulted in, freed) under load.
SPARE_BUFFERS = 6


class FragmentError(ValueError):
    """A datagram that does not belong to the session as announced; ``kind``
    names the reason for the counters."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Fragment:
    sid: bytes
    index: int
    last: bool
    nonce: bytes
    sealed_len: int
    offset: int
    fields: bytes = b""  # the header bytes the tag covers (all but the offset)
    tag: bytes = b""


def header_key(content_key: bytes) -> bytes:
    """The session's datagram header key (from its content key)."""
    return blake3.blake3(content_key, derive_key_context=_KEY_CONTEXT).digest()


_KEY_CONTEXT = "peercrypt multicast datagram header v2"


def _tag(key: bytes, fields: bytes | memoryview) -> bytes:
    return blake3.blake3(fields, key=key).digest(TAG_BYTES)


def chunk_header(
    sid: bytes, index: int, last: bool, nonce: bytes, sealed_len: int, *, key: bytes
) -> tuple[bytes, bytes]:
    """The parts of a header shared by every fragment of one seal of a chunk:
    (fields, tag); a fragment's header is ``fields + OFFSET.pack(offset) + tag``."""
    fields = FIELDS.pack(MAGIC, sid, index, FLAG_LAST if last else 0, nonce, sealed_len)
    return fields, _tag(key, fields)


def header(
    sid: bytes, index: int, last: bool, nonce: bytes, sealed_len: int, offset: int, *, key: bytes
) -> bytes:
    fields, tag = chunk_header(sid, index, last, nonce, sealed_len, key=key)
    return fields + OFFSET.pack(offset) + tag


def authentic(frag: Fragment, key: bytes) -> bool:
    """Whether the fragment's header was made with the session's header key."""
    return hmac.compare_digest(_tag(key, frag.fields), frag.tag)


class HeaderCheck:
    """:func:`authentic` for one session, remembering the last authentic
    (fields, tag): the fragments of a chunk share them, so the keyed hash
    runs once per chunk, not once per datagram. A header that differs in
    any covered byte or the tag is hashed and checked anew."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.last: tuple[bytes, bytes] = (b"", b"")

    def __call__(self, frag: Fragment) -> bool:
        if (frag.fields, frag.tag) == self.last:
            return True
        if not authentic(frag, self.key):
            return False
        self.last = (frag.fields, frag.tag)
        return True


def split(sealed_len: int, frag: int) -> Iterator[tuple[int, int]]:
    """(offset, end) of each fragment of a sealed chunk (at least one)."""
    if sealed_len <= 0:
        yield 0, 0
        return
    for offset in range(0, sealed_len, frag):
        yield offset, min(sealed_len, offset + frag)


Blob = tuple[bytes | memoryview, ...]


def blob_len(blob: Blob) -> int:
    """Length of a chunk's datagram payload: its parts back to back (the
    sealed chunk, then the sender's signature of it)."""
    return sum(len(part) for part in blob)


def blob_slice(blob: Blob, offset: int, end: int) -> list[memoryview]:
    """The views of ``blob[offset:end]`` across its parts (no copy)."""
    out: list[memoryview] = []
    base = 0
    for part in blob:
        lo, hi = max(offset, base), min(end, base + len(part))
        if lo < hi:
            out.append(memoryview(part)[lo - base : hi - base])
        base += len(part)
    return out


def payload_views(blob: Blob, frag: int, start: int, stop: int) -> list[bytes | memoryview]:
    """The payloads of the datagrams of ``blob`` from offset ``start`` (a
    fragment boundary) up to ``stop``: views into its first part (the sealed
    chunk) without a copy; the few that reach into a later part (the
    signature) joined."""
    head = memoryview(blob[0])
    size = blob_len(blob)
    limit = min(stop, size if len(blob) == 1 else len(head) - frag + 1)  # whole in ``head``
    out: list[bytes | memoryview] = [head[o : o + frag] for o in range(start, limit, frag)]
    for o in range(start + len(out) * frag, stop, frag):
        out.append(b"".join(blob_slice(blob, o, min(size, o + frag))))
    return out


def fragment_count(sealed_len: int, frag: int) -> int:
    return max(1, -(-sealed_len // frag))


def parse(datagram: bytes | bytearray | memoryview) -> tuple[Fragment, memoryview]:
    """Split a datagram into its header and payload; :class:`FragmentError`
    when it is not one of ours."""
    view = memoryview(datagram)
    if len(view) < HEADER_BYTES:
        raise FragmentError("short")
    fields, offset, tag = HEADER.unpack_from(view)
    magic, sid, index, flags, nonce, sealed_len = FIELDS.unpack(fields)
    if magic != MAGIC:
        raise FragmentError("magic")
    if flags & ~FLAG_LAST:
        raise FragmentError("flags")
    frag = Fragment(sid, index, bool(flags & FLAG_LAST), nonce, sealed_len, offset, fields, tag)
    return frag, view[HEADER_BYTES:]


@dataclass(slots=True)
class _Pending:
    """A chunk being assembled. Which of its fragments it holds is one byte
    each (1: held), so a run of them is checked and marked by C loops
    (``find``, a slice assignment) rather than element by element in a set:
    at 1472-byte datagrams a chunk of 1 MiB has ~750 fragments, and its set
    cost ~70 us a chunk, the bytes ~3."""

    nonce: bytes
    buf: bytearray
    held: bytearray  # per fragment number: 1 once held, 0 while missing
    left: int  # fragments still missing
    fields: bytes = b""  # its seal's header fields and tag (authentic: its first fragment's)
    tag: bytes = b""
    heads: bytes = b""  # the headers of all its fragments, back to back (made when first needed)

    def lacks(self, numbers: range) -> bool:
        """Whether every fragment of ``numbers`` is still missing (none of
        them beyond the chunk's last: as the set of the missing was). A
        reversed range is not: its slice would count from the end and
        :meth:`take` would cut the record short."""
        held, start, stop = self.held, numbers.start, numbers.stop
        return 0 <= start <= stop <= len(held) and held.find(1, start, stop) < 0

    def take(self, numbers: range) -> None:
        """Fragments ``numbers``, all missing (:meth:`lacks`), are held now."""
        self.held[numbers.start : numbers.stop] = b"\x01" * len(numbers)
        self.left -= len(numbers)

    @property
    def missing(self) -> set[int]:
        """The fragment numbers still to come (for tests and logs)."""
        return {k for k, h in enumerate(self.held) if not h}


@dataclass(frozen=True, slots=True)
class Landing:
    """Where a read's first ``count`` payloads are put straight away (no
    copy): fragments ``number``.. of chunk ``index``, all still missing from
    ``pending`` (:meth:`Reassembler.landing`). They count as placed only if
    every header of the read says they are exactly those fragments
    (:meth:`Reassembler.add_landed`); else the bytes are moved out to the
    read's own buffer before anything else, and the places stay missing."""

    index: int
    pending: _Pending
    number: int
    count: int


class Reassembler:
    """Fragments of one session's chunks back into sealed chunks.

    ``expected_len(index)`` is the sealed length of chunk ``index`` (plaintext
    length + tag); ``total`` the number of chunks. :meth:`add` returns
    ``(nonce, sealed)`` when a chunk is complete, ``None`` while it is not,
    and raises :class:`FragmentError` for a fragment that cannot belong to
    the session. A fragment with a later nonce than the chunk's pending ones
    (a repair sealed anew: nonces count seals) starts the chunk over; one
    with an earlier nonce (a late or replayed copy) is ignored.
    """

    def __init__(
        self,
        total: int,
        expected_len: Callable[[int], int],
        frag: int,
        max_pending: int,
    ) -> None:
        if not MIN_FRAGMENT <= frag <= MAX_FRAGMENT:
            raise ValueError(f"fragment size must be {MIN_FRAGMENT}-{MAX_FRAGMENT}")
        self.total = total
        self.expected_len = expected_len
        self.frag = frag
        self.max_pending = max(1, max_pending)
        self.pending: dict[int, _Pending] = {}
        self.spare: list[bytearray] = []  # buffers of chunks given back (<= SPARE_BUFFERS)
        self.given_up = 0  # chunks evicted half-assembled (they will be NAKed)
        self.restarted = 0  # chunks started over for a new nonce
        self.stale = 0  # fragments of an earlier seal than the one pending
        self.landed = 0  # fragments taken where a read put them (no copy)
        # Byte j of every fragment's packed offset, for j in 0..3 (made once, as needed).
        self._offset_bytes: list[bytes] = [b""] * OFFSET.size
        # (chunk, fragment) after the last one placed: where the next read
        # most likely goes on (the rest of a GSO batch's chunk).
        self.next: tuple[int, int] | None = None

    def add(self, f: Fragment, payload: memoryview) -> tuple[bytes, bytearray] | None:
        if not 0 <= f.index < self.total:
            raise FragmentError("index")
        if f.last != (f.index == self.total - 1):
            raise FragmentError("last")
        size = self.expected_len(f.index)
        if f.sealed_len != size:
            raise FragmentError("length")
        if f.offset % self.frag or f.offset >= size:
            raise FragmentError("offset")
        if len(payload) != min(self.frag, size - f.offset):
            raise FragmentError("fragment-length")
        number = f.offset // self.frag
        p = self.pending.get(f.index)
        if p is not None and f.nonce < p.nonce:
            self.stale += 1
            return None
        if p is not None and p.nonce != f.nonce:
            self.restarted += 1
            self._drop(f.index)
            p = None
        if p is None:
            count = fragment_count(size, self.frag)
            if count == 1:
                return f.nonce, bytearray(payload)
            while len(self.pending) >= self.max_pending:
                self._drop(min(self.pending))
                self.given_up += 1
            p = _Pending(f.nonce, self._buffer(size), bytearray(count), count, f.fields, f.tag)
            self.pending[f.index] = p
        if p.held[number]:
            return None  # a duplicate fragment
        p.buf[f.offset : f.offset + len(payload)] = payload
        p.held[number] = 1
        p.left -= 1
        if p.left:
            self.next = (f.index, number + 1)
            return None
        self.next = None
        del self.pending[f.index]
        return p.nonce, p.buf

    def add_following(
        self, first: Fragment, buf: memoryview, pos: int, step: int
    ) -> tuple[int, tuple[bytes, bytearray] | None]:
        """After ``first`` was added: take the datagrams of ``buf`` from
        ``pos`` (each ``step`` bytes, the last may be shorter) while they
        carry the same fields and tag as ``first`` at the next offsets and
        the exact fragment length; returns the position of the first one not
        taken (for :meth:`add`, which refuses or takes it with every check)
        and the chunk if it completed."""
        p = self.pending.get(first.index)
        if p is None or p.nonce != first.nonce:
            return pos, None
        fields, tag, frag, size = first.fields, first.tag, self.frag, first.sealed_len
        pack, held, n = OFFSET.pack, p.held, len(buf)
        following = first.offset + frag
        while pos < n and following < size:
            end = pos + step
            if end > n:
                end = n
            body = pos + HEADER_BYTES
            if bytes(buf[pos:body]) != fields + pack(following) + tag:
                break  # not the next datagram of this seal: the full checks
            length = end - body
            if length != (frag if size - following > frag else size - following):
                break
            number = following // frag
            if not held[number]:
                p.buf[following : following + length] = buf[body:end]
                held[number] = 1
                p.left -= 1
            pos, following = end, following + frag
            if not p.left:
                self.next = None
                del self.pending[first.index]
                return pos, (p.nonce, p.buf)
        self.next = (first.index, following // frag)
        return pos, None

    def add_scattered(
        self, first: Fragment, got: Scattered, k: int
    ) -> tuple[int, tuple[bytes, bytearray] | None]:
        """:meth:`add_following` for a :class:`Scattered` read: after
        ``first`` was added, take datagrams ``k``.. whose headers are the
        very ones the sender made for the next fragments of this seal (one
        comparison of all of them) and whose payloads are all missing (one
        copy); returns the first datagram not taken and the chunk if it
        completed. Anything else is left to :meth:`add`."""
        p = self.pending.get(first.index)
        if p is None or p.nonce != first.nonce or got.frag != self.frag:
            return k, None
        frag, size = self.frag, first.sealed_len
        start = first.offset + frag
        count = min(got.count - k, fragment_count(size, frag) - start // frag)
        if count <= 0:
            return k, None
        final = start + (count - 1) * frag  # offset of the last one in the run
        if got.length(k + count - 1) - HEADER_BYTES != min(frag, size - final):
            count -= 1  # a wrong length: the full checks refuse it
            if count <= 0:
                return k, None
        numbers = range(start // frag, start // frag + count)
        if not p.lacks(numbers):
            return k, None  # some held already: one by one (the first copy wins)
        if (first.fields, first.tag) != (p.fields, p.tag) or not self._run_is(p, got, k, numbers):
            return k, None
        nbytes = min(size, start + count * frag) - start
        p.buf[start : start + nbytes] = got.payloads[k * frag : k * frag + nbytes]
        return k + count, self._placed(first.index, p, numbers)

    def landing(self, slots: int) -> Landing | None:
        """Where the payloads of the next read may go straight: the up to
        ``slots`` whole fragments after the last ones placed, if their chunk
        is still being assembled and every one of them is missing (a
        fragment held is never written over: the first copy wins). The
        chunk's short last fragment is never among them. None: no guess."""
        if self.next is None:
            return None
        index, number = self.next
        p = self.pending.get(index)
        if p is None:
            return None
        count = min(slots, self.expected_len(index) // self.frag - number)
        if count <= 0 or not p.lacks(range(number, number + count)):
            return None
        return Landing(index, p, number, count)

    def add_landed(self, got: Scattered) -> tuple[bool, tuple[bytes, bytearray] | None]:
        """The read ``got`` was scattered with its first payloads straight
        into ``got.landing``: whether they are exactly those fragments (then
        they count as placed; and the chunk if that completed it). They are
        only if the chunk is still that pending one, they are all still
        missing, and the read's first datagrams are whole and carry the
        very headers of that seal at those offsets (one comparison of them
        all, as :meth:`add_scattered`); anything else is False, and the
        caller must move the payloads out of the chunk's buffer
        (:meth:`Intake.feed_scattered` does) and check them one by one."""
        land = got.landing
        if land is None:
            return False, None
        p, frag = land.pending, self.frag
        count = min(land.count, got.count)
        numbers = range(land.number, land.number + count)
        if (
            self.pending.get(land.index) is not p
            or got.frag != frag
            or got.length(count - 1) != frag + HEADER_BYTES
            or not p.lacks(numbers)
            or not self._run_is(p, got, 0, numbers)
        ):
            return False, None
        self.landed += count
        return True, self._placed(land.index, p, numbers)

    def _placed(self, index: int, p: _Pending, numbers: range) -> tuple[bytes, bytearray] | None:
        """Fragments ``numbers`` of chunk ``index`` are in its buffer: the
        chunk if it is complete."""
        p.take(numbers)
        if p.left:
            self.next = (index, numbers.stop)
            return None
        self.next = None
        del self.pending[index]
        return p.nonce, p.buf

    def forget(self, index: int) -> None:
        """The chunk arrived another way (a unicast repair): stop assembling it."""
        if index in self.pending:
            self._drop(index)

    def _drop(self, index: int) -> None:
        """Stop assembling chunk ``index``; its buffer is a spare. (A fresh
        one per chunk started over or given up let one datagram of a
        co-receiver cost a chunk's allocation and zeroing: 107 us for a MiB,
        4.6 ms for 16.) No view of it is left: a read planned into it
        (:meth:`landing`) is made before any other chunk is started, and
        :meth:`add_landed` takes nothing of a chunk no longer pending."""
        self.recycle(self.pending.pop(index).buf)

    def recycle(self, buf: bytearray) -> None:
        """Give back the buffer of a chunk :meth:`add` completed, once the
        caller holds no view of it any more: a later chunk of the same length
        is assembled in it (no allocation, no page faults for a fresh MiB).
        Its old bytes are never handed out: a chunk completes only when every
        one of its fragments was written into it. At most
        :data:`SPARE_BUFFERS` are kept."""
        if len(self.spare) < SPARE_BUFFERS:
            self.spare.append(buf)

    def _buffer(self, size: int) -> bytearray:
        for k, buf in enumerate(self.spare):
            if len(buf) == size:
                return self.spare.pop(k)
        return bytearray(size)

    def _run_is(self, p: _Pending, got: Scattered, k: int, numbers: range) -> bool:
        """Whether the headers of ``got`` from datagram ``k`` on are exactly
        those of fragments ``numbers`` of ``p``'s seal: the chunk's fields
        and tag in each, the offsets in order. One comparison of bytes with
        the seal's headers, made once per chunk (no Python per datagram)."""
        if not p.heads:
            count = fragment_count(len(p.buf), self.frag)
            if len(self._offset_bytes[0]) < count:
                packed = b"".join(OFFSET.pack(k * self.frag) for k in range(count))
                self._offset_bytes = [packed[j :: OFFSET.size] for j in range(OFFSET.size)]
            # Every header the same but its offset, whose bytes are then put
            # in place column by column (C loops: 15 us for a chunk of 746
            # fragments, where joining 3 parts per header took 84).
            heads = bytearray((p.fields + bytes(OFFSET.size) + p.tag) * count)
            for j, column in enumerate(self._offset_bytes):
                heads[FIELDS.size + j :: HEADER_BYTES] = column[:count]
            p.heads = bytes(heads)
        # As bytes: a memoryview compared with bytes goes item by item
        # (27 us for the 44 headers of a 64 KiB read), bytes use memcmp
        # (0.5 us, with the copy).
        return (
            bytes(got.heads[k * HEADER_BYTES : (k + len(numbers)) * HEADER_BYTES])
            == p.heads[numbers.start * HEADER_BYTES : numbers.stop * HEADER_BYTES]
        )


@dataclass(frozen=True, slots=True)
class Assembled:
    """A chunk complete from datagrams: its nonce and blob (sealed || signature)."""

    index: int
    last: bool
    nonce: bytes
    blob: bytearray


@dataclass(frozen=True, slots=True)
class Scattered:
    """One read of ``count`` datagrams scattered by the kernel into two
    buffers: datagram ``k``'s first :data:`HEADER_BYTES` bytes at
    ``heads[k * HEADER_BYTES:]``, the rest at ``payloads[k * frag:]``; every
    datagram is ``frag + HEADER_BYTES`` bytes but the last (``last_len``).
    The payloads of consecutive fragments of a chunk are then contiguous,
    so a run of them is placed with one copy."""

    heads: memoryview
    payloads: memoryview
    frag: int
    count: int
    last_len: int
    # The first payloads went straight into a chunk being assembled instead
    # of ``payloads`` (:class:`ReadBuffers`).
    landing: Landing | None = None

    def length(self, k: int) -> int:
        return self.last_len if k == self.count - 1 else self.frag + HEADER_BYTES


class ReadBuffers:
    """The buffers a read of up to ``size`` bytes of datagrams of
    ``frag + HEADER_BYTES`` bytes is scattered into: each datagram's header
    into :attr:`heads`, its payload into :attr:`payloads` (so the payloads
    of consecutive fragments lie back to back) - or, for the first ones,
    straight into the chunk's buffer where a :class:`Landing` says they
    most likely belong: then a read of the rest of a chunk's GSO batch
    costs no copy at all."""

    def __init__(self, frag: int, size: int) -> None:
        self.frag = frag
        self.datagram = frag + HEADER_BYTES
        self.slots = -(-size // self.datagram)  # datagrams in the largest read
        self.heads = memoryview(bytearray(self.slots * HEADER_BYTES))
        self.payloads = memoryview(bytearray(self.slots * frag))
        self.iov: list[memoryview] = []
        for k in range(self.slots):
            self.iov.append(self.heads[k * HEADER_BYTES : (k + 1) * HEADER_BYTES])
            self.iov.append(self.payloads[k * frag : (k + 1) * frag])

    def iov_for(self, landing: Landing | None) -> list[memoryview]:
        """The iovec of a read: payload slots ``0..landing.count - 1`` in the
        landing's chunk buffer, the rest in :attr:`payloads`."""
        if landing is None:
            return self.iov
        frag, count = self.frag, landing.count
        buf = memoryview(landing.pending.buf)
        base = landing.number * frag
        iov = self.iov.copy()
        iov[1 : 2 * count : 2] = [buf[o : o + frag] for o in range(base, base + count * frag, frag)]
        return iov

    def scattered(self, n: int, landing: Landing | None) -> Scattered:
        """The read of ``n`` bytes (datagrams of the session's size, the
        last maybe shorter) scattered by :meth:`iov_for` ``(landing)``."""
        count = max(1, -(-n // self.datagram))
        last = n - (count - 1) * self.datagram
        return Scattered(self.heads, self.payloads, self.frag, count, last, landing)


class BatchBuffers:
    """The buffers of one ``recvmmsg``: up to ``messages`` receive buffers
    (datagrams, or GRO buffers of up to ``batch`` datagrams of ``frag +
    HEADER_BYTES`` bytes each) scattered as :class:`ReadBuffers` does, with
    the slots of message ``m`` right after those of message ``m - 1``: the
    payloads of consecutive full buffers of one chunk (a sender's GSO
    batches) lie back to back, so :meth:`split` gives them as one
    :class:`Scattered` (one header comparison and one copy for all of
    them). Each message also has ``spare`` bytes after its slots, for
    datagrams beyond ``batch`` or of another size: such a message comes
    back as its bytes, to be checked the slow way."""

    def __init__(self, frag: int, batch: int, messages: int, spare: int) -> None:
        self.frag = frag
        self.datagram = frag + HEADER_BYTES
        self.batch = max(1, batch)
        self.messages = messages
        self.full = self.batch * self.datagram  # the bytes of a full message
        slots = self.batch * messages
        self.heads = memoryview(bytearray(slots * HEADER_BYTES))
        self.payloads = memoryview(bytearray(slots * frag))
        self.spares = memoryview(bytearray(messages * spare))
        self.iovs: list[list[memoryview]] = []  # each message's iovec
        for m in range(messages):
            iov: list[memoryview] = []
            for k in range(m * self.batch, (m + 1) * self.batch):
                iov.append(self.heads[k * HEADER_BYTES : (k + 1) * HEADER_BYTES])
                iov.append(self.payloads[k * frag : (k + 1) * frag])
            if spare:
                iov.append(self.spares[m * spare : (m + 1) * spare])
            self.iovs.append(iov)

    def split(
        self, reads: list[tuple[int, int]], first: int = 0
    ) -> list[Scattered | tuple[bytes, int]]:
        """Messages ``first``.. as read, each (bytes, GRO segment size: 0
        for one datagram), as :class:`Scattered` runs (a run ends with a
        message that is not full) and, for a message not of the session's
        size, its bytes and segment size (for :meth:`Intake.feed`)."""
        out: list[Scattered | tuple[bytes, int]] = []
        datagram, full, start = self.datagram, self.full, -1
        for m, (n, size) in enumerate(reads, first):
            if not (size == datagram or (size == 0 and n <= datagram)) or n > full:
                if start >= 0:  # the run before it (its last message was full)
                    out.append(self._run(start, m - 1, full))
                    start = -1
                out.append((b"".join(self.iovs[m])[:n], size))
                continue
            if start < 0:
                start = m
            if n != full:
                out.append(self._run(start, m, n))
                start = -1
        if start >= 0:
            out.append(self._run(start, first + len(reads) - 1, full))
        return out

    def _run(self, first: int, last: int, n: int) -> Scattered:
        """Messages ``first``..``last``, all full but the last (``n`` bytes)."""
        count = max(1, -(-n // self.datagram))
        slot = first * self.batch
        return Scattered(
            self.heads[slot * HEADER_BYTES :],
            self.payloads[slot * self.frag :],
            self.frag,
            (last - first) * self.batch + count,
            n - (count - 1) * self.datagram,
        )


class Held(Protocol):
    """The chunks a receiver already holds (a ``ChunkBitmap``, a set)."""

    def __contains__(self, index: int, /) -> bool: ...


class Intake:
    """One session's datagrams into chunks: the receiving side of the format
    (sans I/O: the actor reads the socket and hands each buffer to
    :meth:`feed`).

    Datagrams of other sessions on the same group are skipped; so are those
    of chunks already held (``have``). A header not made with the session's
    key is refused as ``tag`` before it reaches the :class:`Reassembler`.
    """

    def __init__(self, sid: bytes, key: bytes, reassembler: Reassembler) -> None:
        self.sid = sid
        self.check = HeaderCheck(key)
        self.reassembler = reassembler

    def feed(self, buf: memoryview, step: int, have: Held) -> Iterator[Assembled | FragmentError]:
        """The chunks that ``buf`` completes and the datagrams it refuses
        (:class:`FragmentError`, to be counted by kind), in order. ``step``:
        the GRO segment size (0 or ``len(buf)`` or more: one datagram)."""
        n = len(buf)
        if not 0 < step < n:
            step = n
        asm, pos = self.reassembler, 0
        while pos < n:
            end = min(pos + step, n)
            try:
                frag, payload = parse(buf[pos:end])
                pos = end
                if frag.sid != self.sid or frag.index in have:
                    continue  # another session on the group, or held already
                if not self.check(frag):
                    raise FragmentError("tag")  # costs nothing more
                done = asm.add(frag, payload)
                if done is None and pos < n:
                    pos, done = asm.add_following(frag, buf, pos, step)
            except FragmentError as exc:
                pos = end
                yield exc
                continue
            if done is not None:
                yield Assembled(frag.index, frag.last, done[0], done[1])

    def feed_scattered(self, got: Scattered, have: Held) -> Iterator[Assembled | FragmentError]:
        """:meth:`feed` for a :class:`Scattered` read. Payloads that went
        straight into a chunk (``got.landing``) are taken as they lie if
        the headers say they belong there; else they are moved out to
        ``got.payloads`` first (their places in the chunk stay missing) and
        checked one by one like the rest."""
        asm, k = self.reassembler, 0
        land = got.landing
        if land is not None:
            taken, done = asm.add_landed(got)
            if taken:
                k = min(land.count, got.count)
                if done is not None:
                    index = land.index
                    yield Assembled(index, index == asm.total - 1, done[0], done[1])
            else:
                nbytes = min(land.count, got.count) * got.frag
                start = land.number * got.frag
                got.payloads[:nbytes] = memoryview(land.pending.buf)[start : start + nbytes]
        while k < got.count:
            length, at = got.length(k), k
            k += 1
            try:
                if length < HEADER_BYTES:
                    raise FragmentError("short")
                frag, _ = parse(got.heads[at * HEADER_BYTES : (at + 1) * HEADER_BYTES])
                payload = got.payloads[at * got.frag : at * got.frag + length - HEADER_BYTES]
                if frag.sid != self.sid or frag.index in have:
                    continue  # another session on the group, or held already
                if not self.check(frag):
                    raise FragmentError("tag")
                done = asm.add(frag, payload)
                if done is None and k < got.count:
                    k, done = asm.add_scattered(frag, got, k)
            except FragmentError as exc:
                yield exc
                continue
            if done is not None:
                yield Assembled(frag.index, frag.last, done[0], done[1])


def parse_group(text: str) -> tuple[str, int]:
    """``"GROUP:PORT"`` -> (group, port); GROUP must be an IPv4 multicast
    address (224.0.0.0/4). ValueError with a user-facing message otherwise."""
    try:
        host, port = split_host_port(text)
    except ValueError:
        raise ValueError(f"multicast group must be GROUP:PORT, got {text!r}") from None
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address (multicast group)") from None
    if not addr.is_multicast:
        raise ValueError(f"{host} is not a multicast address (224.0.0.0/4, e.g. 239.255.0.1)")
    return str(addr), port
