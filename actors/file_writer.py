"""The receiver's writer thread: positioned writes and the verdict hash.

Part of the receiver actor (not an actor of its own): the actor thread
authenticates and decrypts, this thread writes (and hashes at the end), so
the two overlap (AES-GCM, BLAKE3 and write() all release the GIL). Work comes in on
a queue whose length the transfer credit bounds (the receiver drops chunks
beyond the credit) and that refuses a chunk outright once ``max_queued``
bytes wait, whatever a peer does; results go back to the
actor as typed results on :attr:`FileWriter.results`, announced by empty
frames on an inproc PAIR socket this thread owns (the actor watches it and,
at each wake-up, takes every result there: :meth:`FileWriter.take_results`).
A frame follows every result but :class:`Written`, whose frame waits while
more work is queued, up to :data:`ANNOUNCE_EVERY` of them or ``announce_bytes``
of chunks written (the actor acks a transfer's written chunks once every
``ACK_EVERY`` of them, or a quarter of its credit if less, or once none
waits: a wake-up per chunk only to note one written cost both threads a
context switch per chunk; a frame held for four 4 MiB chunks held the ack
that two of them make due, and the sender's credit with it), and never
waits across another kind of work or a checkpoint's sync:

- :class:`Written` ``(tid, index)``
- :class:`Finished` ``(tid, digest)``  (after fsync; the digest of the file
  as read back from disk, so what is verified is what is stored: read as
  it was written for a fresh part nothing else touched, below)
- :class:`WriteFailed` ``(tid, text, no_space)``  (``no_space``: the disk is
  full; the part is checkpointed). Any error in a file's work fails that
  file, an unexpected one (a fault of ours, logged by its type) too: the
  writer goes on with the others, and a queued chunk's buffer always
  goes back to :attr:`FileWriter.buffers`.
- :class:`Unsaved` ``(tid, text)``  (a manifest could not be written)
- :class:`Unpacked` ``(tid, stored)`` / :class:`TreeFailed` ``(tid, text,
  bad)``: a verified folder transfer was (or was not) stored as its tree
  (:mod:`actors.tree_store`; here so that the actor keeps receiving)
- :class:`Detached` ``(tid)``: a final check whose file was closed while it
  ran (its transfer cancelled or timed out) ended; its verdict is dropped
- :class:`Published` ``(tid, stored, stamp, text)``: a verified file was
  given its final name (:meth:`FileWriter.publish`), or was not
  (``text``); here, not on the actor's thread, so that a disk that hangs
  there holds up no offer's or cancel's answer. The link is made on this
  thread; the inbox folder's fsync that makes it durable on a thread of its
  own (``pc-sync``: one fsync for every name linked meanwhile), so that a
  disk that hangs in it holds up no other transfer's work on this thread.
  Once linked, the file's part and manifests are removed at once, here (in
  the link's journal transaction, as a rule: a crash keeps both names or
  neither), so what is left for the receiver's close is only lookups; a
  close with ``keep`` writes no checkpoint of it (:attr:`FileWriter.linked`)

Final checks (:meth:`FileWriter.finish`: fsync, then the read-back hash; a
folder's build catching up) run on threads of their own (``pc-check``), at
most :data:`MAX_CHECKS` at once, the rest waiting in order: a check of
minutes (a large file, a slow or hung disk) never holds up another
transfer's chunks, whose acks (the sender's credit) would otherwise wait
behind it until that transfer expired. A check works on its own duplicate
of the part's descriptor and hands its verdict back through this thread,
which posts it only while the file is still open: :meth:`FileWriter.close`
detaches a running check (a thread inside fsync cannot be interrupted; it
is left to return whenever the disk answers, and then only
:class:`Detached` is posted). At most :data:`MAX_DETACHED_CHECKS` such
threads may still run before new checks wait for one to end, so a disk
that never answers costs a bounded number of threads. A check that ends
in any exception still hands its place back (an unexpected one fails its
file as a write error, logged once by its type).

Resume checkpoints: a file opened with a manifest (unicast parts) has it
rewritten every :func:`~peercrypt.core.resume.checkpoint_every` written
chunks, at open, on :meth:`FileWriter.close` with ``keep`` and when the disk
fills, always after an ``fdatasync`` of the part
(:func:`~actors.inbox.save_manifest`), so it lists only chunks a crash
cannot take back. On a full disk the new manifest may not fit: the previous
one stays, and lists fewer chunks than the part holds (they are sent again).
The writer is the one place that knows which chunks are in the file, so it
is the one that records them.

Where the part's filesystem takes ``O_DIRECT`` (ext4, not tmpfs; tried
once per filesystem, :func:`open_direct`), the writer keeps a second
descriptor of the part opened so, and writes each chunk's whole pages
through it, straight from the pool's page-aligned buffers
(:class:`BufferPool`) to the disk; the rest of a page (a file's last
chunk) goes through the page cache, as does every chunk while a final
check is inside its fsync (a direct write waits for the disk). No page of
the page cache is taken for the part: on this VM, whose host takes back the
guest's free memory, a write into a new file's pages faults in the host
and cost the writer 1.8-2.4 CPU s per GiB instead of 0.32-0.36; written
directly, 0.10-0.18 (docs/benchmarks.md). The final check then reads the
part back the same way (:func:`hash_direct`: from the disk, after the
fsync, into four reused buffers, three read at once while the fourth is
hashed: the disk's queue never runs dry between reads). A
part may be written by both paths (a resumed part, a tail): the kernel
keeps them coherent (a direct write or read first writes back and drops
the page cache's copy of its range).
Folder transfers keep the page cache (their feeder reads chunks back).

Written ranges (through the page cache) are handed to the kernel's writeback at once
(``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux): the disk then works
while the network delivers, and the final fsync waits only for the tail
instead of the whole file (on this machine that is the difference between
about half and nearly all of the disk's write rate).

Each chunk's range is given its disk blocks (``fallocate``) right before
its ``pwrite``, where the filesystem keeps blocks (not tmpfs): ext4 would
otherwise reserve them page by page inside the write (delayed allocation)
and allocate them when writeback starts, both in this thread; allocating a
chunk's megabyte at once cost 0.20-0.24 CPU s per GiB of writes against
0.26-0.33 (docs/benchmarks.md). A full disk then shows as ``ENOSPC`` from
the allocation, handled as from the write.

The hash is of the part as stored, and nothing is held in memory for it. A
part this run of the node created (``O_EXCL``: :meth:`FileWriter.watch`,
then :meth:`FileWriter.open` with ``fresh``) is hashed as it is written
(:mod:`actors.read_back`): where what a truncate by name leaves allocated
can be told and divides the chunk, from each chunk's buffer but for its
last block, read back once a chunk above it is written
(:class:`~actors.read_back.AsWritten`, on this thread: nothing is read
beside the direct writes); else, through the page cache, read back by a
thread of the writer's (``pc-check``) that follows each such part's
contiguous written prefix (chunks come in any order: parallel lanes,
retransmissions). The check after the last chunk is then the fsync and the
rest. That hash is the verdict only if nothing could have changed the part
unseen: no open of it since the writer's own (inotify), its size and no
hole below it (a truncate by name), no chunk written again. Otherwise, and
for a kept part (resume: another process may hold a descriptor of it from
before), a folder's, or where inotify is missing, the hash is taken once,
at the end, of the whole part as read back after fsync (from the page
cache with BLAKE3 on every core, or from the disk on one core while three
threads read ahead: 1.1-1.4 s of wall time per GiB after the last chunk
on this disk).

A folder transfer (``open(..., tree=TreeSpec)``) is different: what is kept
is its tree, not its part. Once written, its chunks are handed in stream
order (one that came early once the gap before it is filled) to a thread of
its own (:class:`_Feeder`) that reads each back from the part (the page
cache: nothing more is held in memory) and feeds a
:class:`~actors.tree_store.TreeBuilder`, which builds the tree under its
hidden name meanwhile - so thousands of file creations never delay a
chunk's ``Written`` (the acks); ``finish`` waits for it to catch up
(:meth:`FileWriter.checked` follows it: the sender's "verifying" bar). The
verdict hash is taken of the same bytes in that order, and the part gets
no writeback of its own (its checkpoints still ``fdatasync`` it for resume).
The tree's files are hashed as written and made durable by one ``syncfs``
before anything is renamed into the inbox.
After an I/O error in the build (a full disk) the part is fsynced and
verified as above, and the tree built from it again (``unpack``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import logging
import mmap
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import blake3
import zmq

from actors.file_chunks import read_chunk
from actors.inbox import (
    LinkFailed,
    Refusal,
    discard_part,
    fsync_dir,
    link_verified,
    manifest_name,
    remove_quietly,
    save_manifest,
)
from actors.read_back import (
    HASH_HOLD,
    AsWritten,
    EarlyPart,
    Follower,
    Hashing,
    Watches,
    cut_unit,
    filesystem,
    holes_seen,
    read_buffered,
    read_direct,
    tail_start,
    whole,
)
from actors.read_back import libc as _libc
from actors.tree_store import TreeBuilder, unpack
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.delivered import FileStamp
from peercrypt.core.incoming import ACK_EVERY
from peercrypt.core.resume import CHECKPOINT_SPACING, Manifest, checkpoint_every
from peercrypt.core.tree import TreeError
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import name_native_thread, readable, yield_to_control_plane

log = logging.getLogger("peercrypt.writer")

SYNC_FILE_RANGE_WRITE = 2
# Filesystems whose files have no disk blocks to allocate (statfs f_type):
# allocating ahead there would only zero pages the write then overwrites.
MEMORY_FILESYSTEMS = frozenset({0x01021994, 0x858458F6})  # tmpfs, ramfs


@dataclass(frozen=True)
class Written:
    """Chunk ``index`` of ``tid`` is in the file."""

    tid: bytes
    index: int


@dataclass(frozen=True)
class Finished:
    """``tid`` is synced; ``digest`` is the BLAKE3 of the file as stored."""

    tid: bytes
    digest: bytes


@dataclass(frozen=True)
class WriteFailed:
    """Writing ``tid`` failed (``text`` says why; ``no_space``: disk full)."""

    tid: bytes
    text: str
    no_space: bool = False


@dataclass(frozen=True)
class Unsaved:
    """A resume manifest of ``tid`` could not be written (``text``: why)."""

    tid: bytes
    text: str


@dataclass(frozen=True)
class TreeSpec:
    """How to store a verified folder transfer (:func:`actors.tree_store.unpack`)."""

    inbox: Path
    part: str
    manifest_bytes: int
    max_files: int
    file_mode: int
    dir_mode: int


@dataclass(frozen=True)
class Unpacked:
    """The tree of ``tid`` is in the inbox; ``stored``: its top-level names."""

    tid: bytes
    stored: tuple[str, ...]


@dataclass(frozen=True)
class TreeFailed:
    """The tree of ``tid`` was not stored (``bad``: its manifest or a file's
    hash was wrong; else an I/O error); nothing of it is left."""

    tid: bytes
    text: str
    bad: bool


@dataclass(frozen=True)
class Published:
    """The verified file of ``tid`` is in the inbox as ``stored`` (its
    ``stamp`` as it was linked), or it is not (``stored`` empty, no stamp):
    ``text`` says why, ``code`` the failure's, ``kept`` if the part is kept
    (every candidate name was taken, or the link failed: a send of it again
    finds every chunk held)."""

    tid: bytes
    stored: str
    stamp: FileStamp | None
    text: str = ""
    kept: bool = False
    code: str = ResultCode.IO


@dataclass(frozen=True)
class Detached:
    """A final check of ``tid`` ended after its file was closed: no verdict."""

    tid: bytes


WriterResult = (
    Written | Finished | WriteFailed | Unsaved | Unpacked | TreeFailed | Published | Detached
)
# Written results posted at most before a frame announces them (while more
# work is queued; with none queued, at once): the receivers' ack cadence.
ANNOUNCE_EVERY = ACK_EVERY
# Bytes of chunks written before a frame announces them, whatever their
# number (FileWriter's ``announce_bytes``; the receivers pass a quarter of
# the receive buffer, the credit's quarter at which they ack).
ANNOUNCE_BYTES = 8 << 20
FAILED_MEMORY = 1024  # failed files remembered until their close()
MAX_CHECKS = 2  # final checks running at once (from the page cache, each on every core)
MAX_DETACHED_CHECKS = 4  # threads of closed files' checks still running (a hung fsync)


def _writeback_starter() -> Callable[[int, int, int], None]:
    """``start(fd, offset, length)``: begin writeback of a range, not waiting."""
    sync_file_range = getattr(_libc(), "sync_file_range", None)
    if sync_file_range is not None:
        sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

        def start(fd: int, offset: int, length: int) -> None:
            sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)

        return start
    return lambda fd, offset, length: None


# Chunk buffers kept for reuse, with those in flight, at most by default
# (docs/architecture.md, "Bounds"): a transfer's chunks cycle through a few
# while the writer keeps up. Both receivers' bound is what their pipeline
# holds between decryption and the hash (:func:`pool_bytes`).
POOL_BYTES = 16 * 1024 * 1024


def pool_bytes(receive_buffer: int, hash_hold: int) -> int:
    """The decrypt buffer pool's bound of either receiver (unicast and
    multicast alike): what its bounded pipeline holds from decryption to the
    hash, the receive buffer (the chunks in flight under the credit, queued
    to be written: 8 of 4 MiB by default) and ``hash_hold`` (written chunks
    whose buffers wait for the hash as written: :class:`Hashing`), at least
    POOL_BYTES. With the receive buffer alone (32 MiB) the chunks waiting
    for the hash pushed those in flight out of it: 24-34 of the 256 chunks
    of a 1 GiB send were decrypted into new mappings, their pages faulted in
    and zeroed (docs/benchmarks.md). What the pool keeps never adds to a
    peak of chunks in flight up to it (:class:`BufferPool`)."""
    return max(POOL_BYTES, receive_buffer + hash_hold)


def _block_allocator() -> Callable[[int, int, int], bool]:
    """``allocate(fd, offset, length)``: give a range of ``fd`` its disk
    blocks (``fallocate``, the size unchanged: the range is inside the
    file). False if the file's filesystem cannot (ask no more for that
    file); raises OSError otherwise (``ENOSPC``: the disk is full)."""
    fallocate = getattr(_libc(), "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

        def allocate(fd: int, offset: int, length: int) -> bool:
            while fallocate(fd, 0, offset, length) != 0:
                err = ctypes.get_errno()
                if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV):
                    return False
                if err != errno.EINTR:  # (a signal: again, as os functions do)
                    raise OSError(err, os.strerror(err))
            return True

        return allocate
    return lambda fd, offset, length: False


def _pooled(data: bytes | memoryview) -> bool:
    """Whether a chunk's ``data`` is a buffer of the writer's pool (the
    receivers decrypt into those), given back once written."""
    return isinstance(data, memoryview)


def _has_blocks(fd: int) -> bool:
    """Whether ``fd``'s filesystem keeps blocks worth allocating ahead (not
    tmpfs or ramfs; unknown: yes, and the first allocation tells)."""
    if _libc() is None:
        return False
    f_type = filesystem(fd)
    return f_type is None or f_type not in MEMORY_FILESYSTEMS


# The read-back reads this much of the file at a time, into one reused
# buffer: its pages count in the node's RSS, which must not grow with the
# file's size. 4 MiB costs the same CPU per GiB as 16 (BLAKE3 still spreads
# it over the cores) and 12 MiB less at the node's peak.
HASH_WINDOW = 4 * 1024 * 1024  # with 16 transfers in flight too (docs/architecture.md)


def hash_file(
    fd: int,
    size: int,
    progress: Callable[[int], None] | None = None,
    hasher: Any = None,
    start: int = 0,
) -> bytes:
    """BLAKE3 of the first ``size`` bytes of ``fd``, read back from the file
    (page cache; hashed on every core), HASH_WINDOW bytes at a time into one
    reused buffer; ``progress(bytes hashed so far)`` after each. ``hasher``
    and ``start``: go on with a hash of the first ``start`` bytes.

    Read, not mapped: a mapped page past the file's end faults with SIGBUS,
    which kills the whole node (every actor, every transfer), and no check
    before a window can tell the file will not be cut short (another
    process, a local ``truncate``) while the window is hashed. A read of a
    file cut short is short: this check fails with EIO, as a failed write
    fails its file, and the node goes on."""
    if hasher is None:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with mmap.mmap(-1, max(1, min(HASH_WINDOW, size))) as window, memoryview(window) as view:
        for offset in range(start, size, HASH_WINDOW):
            length = min(HASH_WINDOW, size - offset)
            read_buffered(fd, view, offset, length)
            hasher.update(view[:length])
            if progress is not None:
                progress(offset + length)
    digest: bytes = hasher.digest()
    return digest


# Reads of the direct read-back in flight at once (each into a window of its
# own, HASH_WINDOW bytes): one at a time left this disk idle between each
# read's end and the next one's start (~800 MB/s); with more, its queue
# never runs dry (docs/benchmarks.md, "The final check's read-back").
READS_IN_FLIGHT = 3


def hash_direct(
    fd: int,
    size: int,
    progress: Callable[[int], None] | None = None,
    hasher: Any = None,
    start: int = 0,
) -> bytes:
    """:func:`hash_file` for ``fd`` opened with ``O_DIRECT``: read from the
    disk into READS_IN_FLIGHT + 1 reused page-aligned windows of HASH_WINDOW
    bytes, so the read-back takes no page-cache pages (a written file's
    pages would be fresh ones: see :func:`open_direct`). READS_IN_FLIGHT
    threads of their own read the next windows, in order, while this one
    hashes the oldest read, on one core: the disk sets the pace, and
    BLAKE3's workers on every core, idle during each read, cost ten
    thousand context switches per GiB. ``hasher`` and ``start`` (a multiple
    of DIRECT_ALIGN): go on with a hash of the first ``start`` bytes."""
    if hasher is None:
        hasher = blake3.blake3()
    windows = [mmap.mmap(-1, HASH_WINDOW) for _ in range(READS_IN_FLIGHT + 1)]
    offsets = range(start, size, HASH_WINDOW)

    def read(offset: int, window: mmap.mmap) -> int:
        length = min(HASH_WINDOW, size - offset)
        with memoryview(window) as view:
            read_direct(fd, view, offset, length, DIRECT_ALIGN)
        return length

    # Jobs for the readers, in order (None: stop), each answered on its Future.
    jobs: queue.SimpleQueue[tuple[Future[int], int, mmap.mmap] | None] = queue.SimpleQueue()

    def reader() -> None:
        while (job := jobs.get()) is not None:
            pending, offset, window = job
            if pending.set_running_or_notify_cancel():
                try:
                    pending.set_result(read(offset, window))
                except Exception as exc:  # raised in the check's thread, whatever it is
                    pending.set_exception(exc)

    def submit(offset: int, window: mmap.mmap) -> tuple[Future[int], mmap.mmap]:
        pending: Future[int] = Future()
        jobs.put((pending, offset, window))
        return pending, window

    # Daemons, as the check's thread: a read stuck in a disk that never
    # answers must not hold up the node's exit. (They inherit the check's
    # name, pc-check, as the system shows it, and its nice value.)
    readers: list[threading.Thread] = []  # started ones only: each is stopped below
    reads: collections.deque[tuple[Future[int], mmap.mmap]] = collections.deque()
    try:
        for _ in range(min(READS_IN_FLIGHT, len(offsets))):
            thread = threading.Thread(target=reader, name="pc-check", daemon=True)
            thread.start()  # (may fail: out of threads)
            readers.append(thread)
        ahead = iter(offsets)
        for window in windows[:-1]:  # the last one is read into while one is hashed
            if (offset := next(ahead, None)) is None:
                break
            reads.append(submit(offset, window))
        spare = windows[-1]
        done = start
        while reads:
            pending, window = reads.popleft()
            length = pending.result()
            if (offset := next(ahead, None)) is not None:  # read into the spare meanwhile
                reads.append(submit(offset, spare))
            with memoryview(window) as view:
                hasher.update(view[:length])
            spare = window
            done += length
            if progress is not None:
                progress(done)
    finally:
        for pending, _ in reads:
            pending.cancel()  # (one not started yet is skipped)
        for _ in readers:
            jobs.put(None)
        for thread in readers:
            thread.join()  # no window is unmapped under a read
        for window in windows:
            window.close()
    digest: bytes = hasher.digest()
    return digest


# Direct writes and reads (O_DIRECT) move whole pages at page offsets from
# page-aligned memory (a page is a multiple of any disk's logical block).
DIRECT_ALIGN = mmap.PAGESIZE


def open_direct(fd: int) -> int | None:
    """A second descriptor of ``fd``'s file opened with ``O_DIRECT``, or
    None where its filesystem refuses that (``EINVAL``) or keeps no blocks
    (tmpfs: nothing to gain).

    Why: this VM's host takes back the guest's free memory, and a write
    into a page-cache page the host took back faults in the host: the
    writer's copy into a new file's pages cost 1.8-2.4 CPU s per GiB
    instead of 0.32-0.36 (docs/benchmarks.md). Writes from the reused,
    resident chunk buffers straight to the disk take no page-cache pages at
    all (0.10-0.18 CPU s per GiB, either way).
    Raises ``OSError`` for any other failure to open it (no descriptor
    left, no /proc): a passing one, that says nothing of the filesystem."""
    if not sys.platform.startswith("linux") or not _has_blocks(fd):
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None  # no O_DIRECT on this filesystem
        raise


def aligned(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` may be written directly: a :class:`BufferPool`
    buffer (it starts on a page), of at least a page."""
    if not isinstance(data, memoryview) or not isinstance(data.obj, mmap.mmap):
        return False
    if len(data) < DIRECT_ALIGN or data.readonly:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(data)) % DIRECT_ALIGN == 0


# Chunk buffers that are mappings of their own, alive at once, at most (a
# quarter of the kernel's default map entries per process; one of 2 MiB or
# more may take three, its advised part apart from its slack, but the
# credit keeps those to a few dozen); beyond, a buffer is the heap's and its
# chunk goes through the page cache.
MAX_MAPPED = 16384


# A chunk buffer of this size or more is laid on huge pages where the system
# gives them (:func:`_mapped`).
HUGE_PAGE = 2 * 1024 * 1024
_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _mapped(size: int) -> tuple[mmap.mmap, int]:
    """A fresh private anonymous mapping for a chunk buffer of ``size``
    bytes, and where in it the buffer starts: on a page, and for a buffer of
    HUGE_PAGE or more on a HUGE_PAGE boundary (the mapping a huge page less
    a page larger, the slack never touched), asked to be backed by
    transparent huge pages (``MADV_HUGEPAGE``: this kernel gives them only
    where asked). A 4 MiB chunk then lies on two pages instead of 1024: its
    ``O_DIRECT`` write pins two pages, decrypting and hashing it walk fewer
    pages, its first touch faults twice (with this kernel's ``defrag``
    setting it may compact memory for them first: only a fresh mapping, a
    few per GiB). Measured, one 1 GiB send in 4 MiB chunks alternated with
    the code before, then with the roles swapped: medians 1020 and 1003
    MiB/s CLI wall against 984 and 823, faster in 11 of 12 pairs, the
    writer's CPU per GiB 0.06 against 0.10 (docs/benchmarks.md, "Chunk
    buffers on huge pages"). Where there are none (``never``, or no 2 MiB
    block free), the same buffer on small pages."""
    if not _PRIVATE:  # (not POSIX)
        return mmap.mmap(-1, size), 0
    if size < HUGE_PAGE or _MADV_HUGEPAGE is None:
        return mmap.mmap(-1, size, flags=_PRIVATE), 0
    mapping = mmap.mmap(-1, size + HUGE_PAGE - mmap.PAGESIZE, flags=_PRIVATE)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(mapping)) % HUGE_PAGE
    with contextlib.suppress(OSError):  # (a kernel without them: small pages)
        mapping.madvise(_MADV_HUGEPAGE, start, size)
    return mapping, start


class BufferPool:
    """Reused chunk buffers: the actor decrypts each chunk into one
    (:meth:`take`), the writer gives it back once written (:meth:`give`).
    A fresh buffer per chunk cost an allocation and the zeroing of its
    pages for every chunk received. Each buffer is a view of private
    anonymous mapped memory of its own, so it starts on a page (one of 2 MiB
    or more on huge pages where the system gives them: :func:`_mapped`): the
    writer can hand it to the disk directly (``O_DIRECT``, :func:`aligned`). At most
    ``max_bytes`` wait here, fewer while buffers are out: those kept and
    those taken together stay within ``max_bytes`` (a buffer given back
    beyond that is dropped), and :meth:`clear` drops them all (the writer does when it closes its
    last open file). Either thread may call any method. Every buffer taken
    is given back once, on every path (:attr:`out_bytes` returns to 0): the
    writer gives a queued one back whatever became of its chunk (written, a
    full disk, an I/O error, its file failed or closed, a fault of ours),
    and the receivers every one they do not hand to :meth:`FileWriter.write`,
    in a ``finally``."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._held = 0
        self._out = 0  # bytes taken and not given back yet (in flight)
        self._free: dict[int, list[memoryview]] = {}
        self._lock = threading.Lock()
        self._mapped = 0
        self._mapped_lock = threading.Lock()
        self.maps = 0  # mappings made so far (each a new buffer's pages faulted in and zeroed)

    def take(self, size: int) -> memoryview:
        """A writable buffer of exactly ``size`` bytes (contents undefined):
        a mapping of its own while fewer than MAX_MAPPED live, else one of
        the heap's (written through the page cache). Each mapping takes one
        of the kernel's map entries (vm.max_map_count, 65530 by default),
        and the sender picks the chunk size: 4 KiB chunks within a large
        receive buffer would otherwise run the process out of them."""
        with self._lock:
            self._out += size
            free = self._free.get(size)
            if free:
                self._held -= size
                return free.pop()
            # Kept buffers of other sizes give way to this one in flight.
            for kept, buffers in self._free.items():
                while buffers and self._held + self._out > self._max_bytes:
                    buffers.pop()
                    self._held -= kept
        try:
            with self._mapped_lock:
                if size == 0 or self._mapped >= MAX_MAPPED:
                    return memoryview(bytearray(size))
                self._mapped += 1
                self.maps += 1
            try:
                mapping, start = _mapped(size)
            except BaseException:
                self._unmapped()
                raise
        except BaseException:  # (no memory for it: ENOMEM, MemoryError) not out after all
            with self._lock:
                self._out -= size
            raise
        weakref.finalize(mapping, self._unmapped)
        return memoryview(mapping)[start : start + size]

    def _unmapped(self) -> None:
        with self._mapped_lock:  # (never held while a mapping is dropped)
            self._mapped -= 1

    @property
    def mapped(self) -> int:
        """Buffers of this pool's that are mappings of their own, alive now."""
        return self._mapped

    def give(self, buffer: memoryview) -> None:
        """Take ``buffer`` back (the caller no longer uses it); dropped if
        the pool's buffers, kept and in flight together, would exceed its
        bound: what it keeps never adds to a peak of chunks in flight up to
        the bound (idle buffers of another chunk size included)."""
        size = len(buffer)
        with self._lock:
            self._out -= size
            if self._held + max(0, self._out) + size > self._max_bytes:
                return
            self._held += size
            self._free.setdefault(size, []).append(buffer)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def out_bytes(self) -> int:
        """Bytes taken and not given back yet: 0 whenever no chunk is in
        flight (a buffer never given back would shrink what is kept for good)."""
        return self._out


@dataclass
class _File:
    fd: int
    chunk_size: int
    size: int
    written: ChunkBitmap
    allocate: bool = False  # give each chunk its blocks before writing it
    direct: int | None = None  # the same file opened with O_DIRECT (open_direct)
    inbox: Path | None = None
    manifest: Manifest | None = None  # what to record at checkpoints
    since_checkpoint: int = 0
    checkpointed: float = 0.0  # time.monotonic() of its last checkpoint
    # A folder transfer: its tree built as the stream arrives (tree_store.py)
    # by its feeder, handed the chunks in order from ``fed`` on.
    feeder: _Feeder | None = None
    fed: int = 0
    check: _Check | None = None  # its final check, once finish() was asked
    # A fresh part read back as it is written (actors/read_back.py), and its
    # chunks written contiguously from the start, as the follower was told.
    early: EarlyPart | None = None
    prefix: int = 0
    # A fresh part written directly, hashed from its chunks as they are
    # written but for what a cut by name could change (actors/read_back.py).
    as_written: AsWritten | None = None
    linked: Path | None = None  # its part, once the file was linked under its name


class _FolderSync:
    """The fsync of an inbox folder after verified files were linked in it,
    on a thread of its own (``pc-sync``, started at the first): one fsync
    covers every name linked before it; each name comes back to the
    writer's ``queue`` as a ``synced`` op (with the fsync's error, if any)."""

    def __init__(self, queue_: queue.SimpleQueue[tuple[Any, ...] | None]) -> None:
        self._writer = queue_
        self._queue: queue.SimpleQueue[tuple[bytes, Path, str] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def add(self, tid: bytes, inbox: Path, name: str) -> None:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="pc-sync", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # (no thread to be had: synced here, this once)
                self._writer.put(("synced", tid, inbox, name, _synced(inbox)))
                return
            self._thread = thread
        self._queue.put((tid, inbox, name))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        name_native_thread()
        while (first := self._queue.get()) is not None:
            linked, last = [first], False
            while not self._queue.empty():
                more = self._queue.get()
                if more is None:
                    last = True
                    break
                linked.append(more)
            errors = {inbox: _synced(inbox) for inbox in {inbox for _, inbox, _ in linked}}
            for tid, inbox, name in linked:
                self._writer.put(("synced", tid, inbox, name, errors[inbox]))
            if last:
                return


def _synced(inbox: Path) -> str:
    """fsync ``inbox`` (a folder); why it failed, "" if it did not."""
    try:
        fsync_dir(inbox)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


@dataclass(frozen=True)
class Fresh:
    """A part just created, as :meth:`FileWriter.watch` prepared it: its
    ``O_DIRECT`` descriptor (None: buffered) and its watch (None: it could
    not be watched; its final check reads it all back after the fsync)."""

    direct: int | None
    wd: int | None


@dataclass(eq=False)
class _Check:
    """One final check: ``fd`` is its own duplicate of the part's (closed by
    its thread), so closing the file never pulls it from under the check.
    ``detached``: the file was closed meanwhile (set by the writer's thread)."""

    tid: bytes
    file: _File
    fd: int
    direct: bool = False  # fd was opened with O_DIRECT: read back with hash_direct
    detached: bool = False
    early: EarlyPart | None = None  # read back as written: the verdict if nothing changed it
    as_written: AsWritten | None = None  # hashed as written: the verdict if nothing changed it


class _Feeder:
    """A folder transfer's tree, built in a thread of its own from the
    chunks the writer hands it in stream order (read back from the part:
    the page cache; nothing else is held), so building - thousands of file
    creations in one chunk of small files - never delays a chunk's
    ``Written`` (the sender's acks). The stream is hashed in the same order.
    ``progress(bytes fed)`` after each chunk."""

    def __init__(
        self,
        builder: TreeBuilder,
        halt: threading.Event,
        f: _File,
        progress: Callable[[int], None],
    ) -> None:
        self.builder, self.halt = builder, halt
        self.hasher = blake3.blake3()
        self._file, self._progress = f, progress
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pc-tree", daemon=True)
        self._thread.start()

    def push(self, index: int) -> None:
        self._queue.put(index)

    def _run(self) -> None:
        f, fed = self._file, 0
        while (index := self._queue.get()) is not None and not self.halt.is_set():
            try:
                chunk = read_chunk(f.fd, index, f.chunk_size, f.size)
            except OSError as exc:
                self.builder.fail(exc)
                return
            self.hasher.update(chunk)
            self.builder.feed(chunk)
            fed += len(chunk)
            self._progress(fed)

    def finish(self) -> None:
        """Wait until every chunk handed over is built."""
        self._queue.put(None)
        self._thread.join()

    def cancel(self) -> None:
        """Stop building (at the next entry or block) and remove what was built."""
        self.halt.set()
        self._queue.put(None)
        self._thread.join()
        self.builder.discard()


class CheckSteps:
    """Steps of the writer's final checks, whichever file's, as the bound on
    a final check sees them (:attr:`FileWriter.checks_moved`): a hashed
    window, a folder's file, is one step (:meth:`step`, the checks' threads).
    An fsync reports nothing until it returns, and on a slow or busy disk it
    can take longer than the bound; so while one is in progress
    (:meth:`syncing`) every read of :meth:`moved` is a step too. A check
    inside fsync is alive, not stuck (its thread is in the kernel: ending
    the transfer would not free it), and the checks queued behind it wait;
    once its file is closed (:meth:`forget`), its sync counts no more. The
    reader's moved() always changes while a sync is in progress and never
    changes otherwise."""

    def __init__(self) -> None:
        self._steps = 0  # written by the checks' threads
        self._syncing: set[object] = set()  # in progress (the checks' threads)
        self._seen_syncing = 0  # reads during a sync (the reading actor)

    def step(self) -> None:
        self._steps += 1

    @contextlib.contextmanager
    def syncing(self, key: object | None = None) -> Iterator[None]:
        """Around an fsync of a final check (``key``: what :meth:`forget`
        names): a step before and after it."""
        token = key if key is not None else object()
        self.step()
        self._syncing.add(token)
        try:
            yield
        finally:
            self._syncing.discard(token)
            self.step()

    def forget(self, key: object) -> None:
        """The sync of ``key`` no longer counts (its file was closed)."""
        self._syncing.discard(key)

    def moved(self) -> int:
        if self._syncing:
            self._seen_syncing += 1
        return self._steps + self._seen_syncing


class FileWriter:
    """``nice``: the thread runs DATA_NICE nicer than the node (as the other
    threads that move bulk data do); False: at the node's priority (the
    multicast receiver's: its pace is the pace of the whole session).
    ``direct``: False never opens a part with O_DIRECT (``--no-direct-writes``):
    every chunk goes through the page cache and the check reads it back from
    there. ``as_written``: False never reads a part back before its final
    check (``--no-check-as-written``): :meth:`watch` watches nothing.
    ``checkpoint_spacing``: seconds at least between a file's periodic
    checkpoints (:func:`~peercrypt.core.resume.checkpoint_every` chunks
    apart, and no sooner than this after the last one). ``announce_bytes``:
    chunks written that the actor hears of at once, however few (the
    bytes a transfer acks at: see the module's docs). ``hash_hold``: bytes
    of written chunks that may wait in their buffers for the hashing thread
    (:class:`~actors.read_back.Hashing`; beyond, a chunk is read back from
    its part instead, counted ``hash-deferred-chunks``)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        address: str,
        max_queued: int,
        *,
        nice: bool = True,
        direct: bool = True,
        pool_bytes: int = POOL_BYTES,
        as_written: bool = True,
        checkpoint_spacing: float = CHECKPOINT_SPACING,
        announce_bytes: int = ANNOUNCE_BYTES,
        hash_hold: int = HASH_HOLD,
    ) -> None:
        self._nice = nice
        self._announce_bytes = announce_bytes
        self._as_written = as_written
        self._checkpoint_spacing = checkpoint_spacing
        self._direct = direct
        self.direct_bytes = 0  # written with O_DIRECT so far (writer thread; in the status)
        self._context = context
        self._address = address
        self._max_queued = max_queued
        self._queued = 0  # chunk bytes put in the queue and not yet applied
        self.queued_peak = 0  # the most ``_queued`` has been (the node's status shows it)
        self._queued_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pc-writer", daemon=True)
        self._start_writeback = _writeback_starter()
        self._allocate = _block_allocator()
        self._notes: list[WriterResult] = []  # results besides an op's own (writer thread)
        self.results: queue.SimpleQueue[WriterResult] = queue.SimpleQueue()
        self._out: zmq.Socket[Any] | None = None  # the frames' socket (writer thread)
        self._unannounced = 0  # results posted since the last frame (writer thread)
        self._unannounced_bytes = 0  # of the chunks those Written results wrote
        self._failed: dict[bytes, _File] = {}  # failed files awaiting close() (writer thread)
        # Verified files linked under their names whose folder's fsync has
        # not returned yet (set by the writer's thread; a stopping receiver
        # reads it): tid -> (name, the file's stamp as linked).
        self.linked: dict[bytes, tuple[str, FileStamp]] = {}
        self._folder_sync = _FolderSync(self._queue)
        self._stopping = threading.Event()  # ends a folder being unpacked, between blocks
        # Chunk buffers: one queued with write() comes back here once written.
        self.buffers = BufferPool(min(max_queued, pool_bytes))
        # Bytes the final check of each file has covered (written by this
        # thread, read by the actor: one int per key, replaced whole).
        self._checked: dict[bytes, int] = {}
        # Steps of every final check so far, whichever file's: the checks
        # queued behind a long one wait on it.
        self.check_steps = CheckSteps()
        self._fsync = os.fsync
        # Filesystems (st_dev) where O_DIRECT was tried: whether it opened.
        self._direct_devices: dict[int, bool] = {}
        # Final checks inside their fsync now, detached ones too (their threads).
        self._in_fsync: set[_Check] = set()
        self._halts: set[threading.Event] = set()  # of running feeders, set by stop()
        # Final checks (writer thread only): waiting in order, running, and
        # running though their file was closed.
        self._checks_waiting: collections.deque[_Check] = collections.deque()
        self._checks_running: set[_Check] = set()
        self._checks_detached: set[_Check] = set()
        # Fresh parts read back as they are written (actors/read_back.py):
        # their watches (any thread) and the thread that reads them.
        self._watches = Watches(_libc())
        self._follower = Follower(HASH_WINDOW, DIRECT_ALIGN)
        # The hashes as written, off the writer's thread (at its nice value).
        self._hashing = Hashing(HASH_WINDOW, nice, hash_hold)
        self._handed: memoryview | bytes | None = None  # the write's buffer, the hashing's now
        self._cut_units: dict[tuple[int, bool], int | None] = {}  # (st_dev, direct): cut_unit()
        self.as_written_read = 0  # bytes they read back (writer thread)
        self.early_checks = 0  # verdicts from the read-back as written (checks' threads)
        self.full_checks = 0  # verdicts from a whole read-back after the fsync
        self._count_lock = threading.Lock()

    def report_counters(self, counters: dict[str, int]) -> None:
        """Put the writer's counts in an actor's counters (each receiver
        calls it before it reports; each set only when it moved):
        ``direct-bytes`` (:attr:`direct_bytes`), ``checks-early`` and
        ``checks-full`` (final checks whose verdict came from the read-back
        as written, and from a whole read-back after the fsync), and
        ``read-back-early-bytes`` (bytes read back as written),
        ``hash-deferred-chunks`` and ``decrypt-buffers-mapped`` (decrypt
        buffers mapped anew: not taken from the pool)."""
        for name, value in (
            ("direct-bytes", self.direct_bytes),
            ("checks-early", self.early_checks),
            ("checks-full", self.full_checks),
            ("read-back-early-bytes", self._follower.read_bytes + self.as_written_read),
            ("hash-deferred-chunks", self._hashing.deferred),
            ("decrypt-buffers-mapped", self.buffers.maps),
        ):
            if value != counters.get(name, 0):
                counters[name] = value

    @property
    def checks_moved(self) -> int:
        """Steps of every final check so far (:class:`CheckSteps`): any
        change is progress; it changes at each read while a check's fsync
        is in progress."""
        return self.check_steps.moved()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._follower.stop()
        for halt in list(self._halts):
            halt.set()
        self._queue.put(None)
        self._thread.join(5.0)
        self._folder_sync.stop()  # (not waited for: one inside a hung fsync is left to it)
        self._hashing.stop()  # (after the writer: the jobs it queued run first)

    def open(
        self,
        tid: bytes,
        fd: int,
        chunk_size: int,
        size: int,
        held: ChunkBitmap,
        checkpoint: tuple[Path, Manifest] | None = None,
        tree: TreeSpec | None = None,
        fresh: Fresh | None = None,
    ) -> None:
        """Start writing ``fd``; ``held`` chunks are already in the file.
        ``checkpoint``: the inbox and the manifest to keep up to date (its
        ``written`` and ``updated`` are the writer's). ``tree``: a folder
        transfer, built under its hidden name as its chunks come in order.
        ``fresh``: :meth:`watch` of the part, which the caller has just
        created (not a folder's): read back as it is written
        (actors/read_back.py)."""
        bits = held.to_bytes()
        op = ("open", tid, fd, chunk_size, size, bits, held.total, checkpoint, tree, fresh)
        self._queue.put(op)

    def watch(self, fd: int) -> Fresh:
        """Right after the caller created a part (``O_EXCL``, in this run of
        the node: no other process can hold a descriptor of it from
        before), on its thread: open it for direct writes (the last open of
        ours), then watch it for any other open (actors/read_back.py). For
        :meth:`open`, to be called next, whatever happens.

        The part is hashed from its chunks as they are written, but for
        what a cut by name could change (:class:`~actors.read_back.AsWritten`),
        where that can be told (:func:`~actors.read_back.cut_unit`, probed
        on the writer's thread: :meth:`_cut_unit`); else, if
        it is written through the page cache, it is read back as written
        (:class:`~actors.read_back.Follower`). A part written with
        ``O_DIRECT`` is never read back while it is written: reading behind
        the writes cut this disk's direct writes from 820-1020 to 320-430
        MiB/s, whether the reads were direct or not (docs/benchmarks.md,
        "The read-back as written")."""
        direct = self._open_direct(fd)  # (before the watch: this open is ours)
        if not self._as_written or not holes_seen(fd):
            return Fresh(direct, None)
        return Fresh(direct, self._watches.add(fd))

    def write(self, tid: bytes, index: int, data: bytes | memoryview) -> bool:
        """Queue a chunk; False (nothing queued) if ``max_queued`` bytes wait.
        A :attr:`buffers` buffer is the writer's once queued: it goes back to
        :attr:`buffers` after the write (or when its file is gone)."""
        with self._queued_lock:
            if self._queued + len(data) > self._max_queued:
                return False
            self._queued += len(data)
            self.queued_peak = max(self.queued_peak, self._queued)
        self._queue.put(("write", tid, index, data))
        return True

    def finish(self, tid: bytes) -> None:
        self._queue.put(("finish", tid))

    def checked(self, tid: bytes) -> int:
        """Bytes of ``tid`` its final check (:meth:`finish`, and storing a
        folder built from its part) has covered so far; 0 before it starts."""
        return self._checked.get(tid, 0)

    def unpack(self, tid: bytes, spec: TreeSpec) -> None:
        """Store the finished (verified) file of ``tid`` as the tree it holds."""
        self._queue.put(("unpack", tid, spec))

    def publish(self, tid: bytes, part: Path, inbox: Path, name: str, mode: int) -> None:
        """Give the finished (verified) file of ``tid`` its final name in
        ``inbox`` (:func:`actors.inbox.link_verified`; its part ``part`` and
        manifests are removed once it is linked; then the folder's fsync):
        :class:`Published` once the name is durable."""
        self._queue.put(("publish", tid, part, inbox, name, mode))

    def named_at_stop(self) -> dict[bytes, tuple[str, FileStamp]]:
        """At a receiver's stop: the verified files linked under a name by
        now (their folder's fsync returned or not), by tid, with the file's
        stamp as linked. The results waiting are taken (the others dropped:
        the receiver is stopping)."""
        named = dict(self.linked)  # (a copy: this thread may run on)
        while not self.results.empty():
            result = self.results.get_nowait()
            if isinstance(result, Published) and result.stored and result.stamp is not None:
                named[result.tid] = (result.stored, result.stamp)
        return named

    def forget(self, tid: bytes) -> None:
        self._queue.put(("forget", tid))

    def close(self, tid: bytes, keep: bool, discard: tuple[Path, list[Path]] | None = None) -> None:
        """Stop writing ``tid`` and close its fd (after any queued work, so
        the number is never reused under a pending write); ``keep``: record a
        final checkpoint first. ``discard``: (its part, its manifests) to
        remove first, here rather than on the caller's thread (a cancel must
        not wait for a disk that hangs; the part only if its name still
        refers to the file open)."""
        self._queue.put(("close", tid, keep, discard))

    def _run(self) -> None:
        name_native_thread()
        if self._nice:
            yield_to_control_plane(bulk=True)
        out: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        out.linger = 0
        out.connect(self._address)
        self._out = out
        files: dict[bytes, _File] = {}
        try:
            while True:
                if self._unannounced and self._queue.empty():
                    self._announce()  # nothing more soon: the actor hears now
                op = self._queue.get()
                if op is None:
                    return
                if op[0] != "write":
                    self._announce()  # what was posted never waits behind other work
                self._do(files, op)
        finally:
            self._out = None
            out.close(linger=0)
            for f in files.values():  # (the actor closes the parts themselves)
                if f.as_written is not None:
                    f.as_written.close()

    def _do(self, files: dict[bytes, _File], op: tuple[Any, ...]) -> None:
        """Apply ``op`` and post its results. An error fails the op's file
        (kept for its close()); one of ours too (logged by its type): the
        writer goes on with every other file."""
        tid = op[1]
        try:
            result = self._apply(files, op)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            result = self._fail(files, tid, exc.strerror or str(exc), full)
        except Exception as exc:
            what = type(exc).__name__
            log.error("writing a file failed unexpectedly (%s)", what)
            log.debug("the writer's failure", exc_info=True)
            result = self._fail(files, tid, f"writing failed unexpectedly ({what})", False)
        finally:  # whatever happened to it, a chunk's queue place and buffer come back
            if op[0] == "write":
                self._done_with(op[3])
        if result is not None:
            self._post(result)
        while self._notes:
            self._post(self._notes.pop(0))

    def _done_with(self, data: bytes | memoryview) -> None:
        """A queued chunk's place in the queue and its buffer come back:
        before its result is posted, so that the actor, which gives the
        sender more credit once it hears of the write, never queues the
        chunks of that credit while this one still counts (the queue would
        pass its bound: docs/architecture.md, "Bounds")."""
        with self._queued_lock:
            self._queued -= len(data)
        if _pooled(data) and data is not self._handed:
            self.buffers.give(cast(memoryview, data))
        self._handed = None

    def _fail(self, files: dict[bytes, _File], tid: bytes, text: str, full: bool) -> WriteFailed:
        """``tid``'s file failed: kept for its close(); on a full disk with
        a checkpoint of what it holds first (its part is kept for a resume)."""
        f = files.pop(tid, None)
        if f is None:
            return WriteFailed(tid, text)
        if full:
            unsaved = self._checkpoint(f)
            if unsaved:
                self._notes.append(Unsaved(tid, unsaved))
        self._drop_early(f)  # (a failed file is never checked)
        self._remember_failed(tid, f)  # (after its checkpoint: it may close f)
        return WriteFailed(tid, text, no_space=full)

    def _post(self, result: WriterResult) -> None:
        self.results.put(result)  # before its frame: a frame always finds it
        self._unannounced += 1
        if (
            not isinstance(result, Written)
            or self._unannounced >= ANNOUNCE_EVERY
            or self._unannounced_bytes >= self._announce_bytes
        ):
            self._announce()

    def _announce(self) -> None:
        """One frame for the results posted since the last one, if any."""
        if self._unannounced and self._out is not None:
            self._unannounced = self._unannounced_bytes = 0
            self._out.send(b"")

    def take_results(self, sock: zmq.Socket[Any]) -> Iterator[WriterResult]:
        """The actor's side (its thread, ``sock`` the PAIR it bound): every
        frame waiting, then every result posted (a frame announces one or
        more; a result found early leaves its frame to find none)."""
        # (Asked, not tried: a refused recv and an empty get cost an
        # exception each, at every wake-up. This thread is the only taker.)
        while readable(sock):
            sock.recv(zmq.NOBLOCK)
        while not self.results.empty():
            yield self.results.get_nowait()

    def _apply(self, files: dict[bytes, _File], op: tuple[Any, ...]) -> WriterResult | None:
        kind, tid = op[0], op[1]
        if kind == "open":
            _, _, fd, chunk_size, size, held, total, checkpoint, tree, fresh = op
            opened = _File(fd, chunk_size, size, ChunkBitmap.from_bytes(total, held))
            opened.allocate = _has_blocks(fd)
            if fresh is not None:  # opened directly and watched on the caller's thread
                opened.direct = fresh.direct
                direct = fresh.direct is not None
                if fresh.wd is None:
                    pass  # (not watched: the whole read-back)
                elif (unit := self._cut_unit(fd, fresh.direct)) and chunk_size % unit == 0:
                    try:
                        copy = os.dup(fresh.direct if fresh.direct is not None else fd)
                    except OSError:  # (no descriptor left: the whole read-back, unwatched)
                        self._watches.remove(fresh.wd)
                    else:
                        opened.as_written = AsWritten(copy, direct, size, fresh.wd, unit)
                        if direct:  # (each chunk's last block is in the page cache: read there)
                            with contextlib.suppress(OSError):  # (else from the disk)
                                opened.as_written.page_fd = os.dup(fd)
                        opened.as_written.jobs = self._hashing
                elif direct:  # (never read back while written directly)
                    self._watches.remove(fresh.wd)
                else:  # written through the page cache: followed
                    # (on one core: every core made no difference for tmpfs
                    # parts, and BLAKE3's pool of workers would outlive the
                    # follower's thread)
                    hasher = blake3.blake3()
                    try:
                        copy = os.dup(fd)
                    except OSError:  # (no descriptor left: the whole read-back, unwatched)
                        self._watches.remove(fresh.wd)
                    else:
                        opened.early = EarlyPart(copy, False, size, fresh.wd, hasher)
                        self._follower.add(opened.early)
            elif tree is None:  # (a folder's feeder reads its chunks back from the page cache)
                opened.direct = self._open_direct(fd)
            files[tid] = opened
            if tree is not None:
                halt = threading.Event()
                self._halts.add(halt)
                builder = self._builder(tree, size, halt)
                opened.feeder = _Feeder(builder, halt, opened, self._checked_setter(tid))
                self._feed(opened)  # what a kept part holds already
            if checkpoint is not None:
                # The pair exists from the start: a crash before the first
                # checkpoint leaves a part that is known, not an orphan.
                opened.inbox, opened.manifest = checkpoint
                unsaved = self._checkpoint(opened)
                if unsaved:
                    self._notes.append(Unsaved(tid, unsaved))
            return None
        if kind == "checked":
            _, _, check, verdict = op
            return self._checked_verdict(files, check, verdict)
        if kind == "synced":  # (its file may be closed by now: a node stopping)
            _, _, _, name, error = op
            if error:  # (its data was synced by its check: the name may not be)
                log.warning("cannot sync the inbox after storing %s: %s", name, error)
            linked = self.linked.pop(tid, None)
            return Published(tid, name, linked[1] if linked is not None else None)
        if kind == "close":
            _, _, keep, discard = op
            closing = files.pop(tid, None) or self._failed.pop(tid, None)
            # (its check's thread leaves _in_fsync as its fsync returns; one
            # still waiting for a place waits behind checks that may be stuck
            # in the same disk: nothing of it is durable yet)
            syncing = closing is not None and (
                closing.check in self._in_fsync or closing.check in self._checks_waiting
            )
            if closing is not None:
                self._detach(closing)
                self._drop_feeder(closing)  # a tree not published: nothing of it stays
                self._drop_early(closing)
            self._checked.pop(tid, None)  # (after its feeder stopped noting it)
            if closing is None:
                return None
            # A file in its final check has every chunk written. A check
            # inside its fsync (or waiting for a place) may be stuck in the
            # disk, which a checkpoint's sync would join: its part is kept
            # with the last checkpoint's manifest. Past it (reading the part
            # back; a cancel, a node's stop), every chunk is durable, and the
            # checkpoint lists them all: a resume sends none of them again.
            keep = keep and not syncing
            if closing.linked is not None:
                keep = False  # under its final name: no manifest for a resume (its part is gone)
            try:
                if discard is not None:
                    part, manifests = discard
                    why = discard_part(part, closing.fd)
                    if why:
                        log.warning("cannot remove %s: %s", part, why)
                    for path in manifests:
                        remove_quietly(path)
                unsaved = self._checkpoint(closing) if keep else ""
            finally:  # (whatever failed above: the fds go, or they stayed to the node's end)
                os.close(closing.fd)
                if closing.direct is not None:
                    os.close(closing.direct)
            if not files:
                self.buffers.clear()  # nothing is written now: no buffer is kept
            return Unsaved(tid, unsaved) if unsaved else None
        if kind == "forget":
            forgotten = self._failed.pop(tid, None)
            if forgotten is not None:
                self._drop_feeder(forgotten)
        f = files.get(tid)
        if f is None:
            return None  # forgotten (transfer aborted) while work was queued
        if kind == "write":
            _, _, index, data = op
            offset = index * f.chunk_size
            contiguous = min(f.size, f.prefix * f.chunk_size)
            again = index in f.written
            if f.early is not None and offset < f.early.target:
                # (the follower may have read it: its hash would not be of this)
                self._follower.taint(f.early, "a chunk written again after it was read back")
            if f.allocate and not self._allocate(f.fd, offset, len(data)):
                f.allocate = False  # this filesystem cannot: the write reserves them
            first: int | None = None
            if f.as_written is not None and f.direct is not None:
                # Its last block first, through the page cache: it is what
                # is read back once a chunk above it is written (a read of
                # the page cache, not of the disk), and written first, it
                # is the chunk's highest block from the start (no moment
                # when the direct write's own last block is: AsWritten).
                split = tail_start(offset, offset + len(data), f.as_written.unit) - offset
                self._write_buffered(f, data, offset, split, index)
                done = self._write_direct(f, data[:split], offset)
                self._write_buffered(f, data[:split], offset, done, index)
            else:
                done = self._write_direct(f, data, offset)
                self._write_buffered(f, data, offset, done, index)
                first = done if 0 < done < len(data) else None  # (two writes)
            f.written.add(index)
            if f.feeder is not None:
                self._feed(f)
            if f.as_written is not None:
                before = f.as_written.read_bytes
                # (its hash on the hashing thread, which gives a pool buffer
                # back once hashed: not _run's give then)
                release = functools.partial(self.buffers.give, data) if _pooled(data) else None
                # (read back on the hashing thread, into its own window)
                if f.as_written.wrote(
                    offset, data, contiguous, None, not self._in_fsync, first, again, release
                ):
                    self._handed = data
                self.as_written_read += f.as_written.read_bytes - before
            if f.early is not None or f.as_written is not None:
                self._advance(f)
            f.since_checkpoint += 1
            if (
                f.since_checkpoint >= checkpoint_every(f.chunk_size)
                and time.monotonic() - f.checkpointed >= self._checkpoint_spacing
            ):
                self._announce()  # not held across the sync
                unsaved = self._checkpoint(f)
                if unsaved:
                    self._notes.append(Unsaved(tid, unsaved))
            self._unannounced_bytes += len(data)
            return Written(tid, index)
        if kind == "finish":
            if not f.written.complete:
                return WriteFailed(tid, "finish before all chunks were written")
            if f.check is not None:
                return None  # asked before: one check per file
            direct = f.direct is not None
            f.check = _Check(tid, f, os.dup(f.direct if f.direct is not None else f.fd), direct)
            f.check.early = f.early
            f.check.as_written = f.as_written
            self._checks_waiting.append(f.check)
            self._start_checks()
            return None
        if kind == "unpack":
            spec: TreeSpec = op[2]
            built = f.feeder.builder if f.feeder is not None else None
            try:
                if built is not None and (built.complete or isinstance(built.error, TreeError)):
                    return Unpacked(tid, tuple(built.publish()))  # or its TreeError
                stored = unpack(self._builder(spec, f.size, self._stopping), f.fd)
            except TreeError as exc:
                return TreeFailed(tid, str(exc), bad=True)
            except OSError as exc:
                return TreeFailed(tid, exc.strerror or str(exc), bad=False)
            return Unpacked(tid, tuple(stored))
        if kind == "publish":
            _, _, part, inbox, name, mode = op
            try:
                named = link_verified(part, f.fd, inbox, name, mode)
            except LinkFailed as exc:
                return Published(tid, "", None, exc.reason, kept=True, code=exc.code)
            except Refusal as exc:
                return Published(tid, "", None, exc.reason)
            except OSError as exc:  # (its mode)
                why = exc.strerror or str(exc)
                return Published(tid, "", None, f"cannot store the verified file: {why}")
            if named is None:
                return Published(tid, "", None, "no free name in the inbox", kept=True)
            # As the file was linked (not its name now: it may be moved meanwhile).
            st = os.fstat(f.fd)
            self.linked[tid] = (named, FileStamp(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            f.linked = part
            why = discard_part(part, f.fd)  # (only while that name still is this file)
            if why:
                log.warning("cannot remove %s: %s", part, why)
            manifest = inbox / manifest_name(part.name)
            for path in (manifest, manifest.with_name(manifest.name + ".tmp")):
                remove_quietly(path)
            self._folder_sync.add(tid, inbox, named)
            return None
        if kind == "forget":
            self._drop_early(f)
            files.pop(tid, None)
            return None
        raise ValueError(f"unknown writer op {kind!r}")

    def _open_direct(self, fd: int) -> int | None:
        """:func:`open_direct`, tried once per filesystem (device): where one
        file could not, no other is tried."""
        if not self._direct:
            return None
        device = os.fstat(fd).st_dev
        if not self._direct_devices.get(device, True):
            return None
        try:
            direct = open_direct(fd)
        except OSError:
            return None  # (this file through the page cache; the next one tries again)
        self._direct_devices[device] = direct is not None
        return direct

    def _write_buffered(
        self, f: _File, data: bytes | memoryview, offset: int, start: int, index: int
    ) -> None:
        """Write ``data[start:]`` at ``offset + start`` through the page cache
        (and start its writeback), if anything is left there."""
        if start >= len(data):
            return
        if os.pwrite(f.fd, data[start:], offset + start) != len(data) - start:
            raise OSError(errno.ENOSPC, f"short write of chunk {index} (disk full?)")
        if f.feeder is None:  # (a tree's files are what is kept: no writeback of the part)
            self._start_writeback(f.fd, offset + start, len(data) - start)

    def _write_direct(self, f: _File, data: bytes | memoryview, offset: int) -> int:
        """Write the whole pages of ``data`` at ``offset`` through ``f.direct``
        if it can take them; how many bytes it wrote (0: none, the caller
        writes them all through the page cache). Not while a final check
        is inside its fsync: a direct write waits for the disk, and a disk
        that hangs there would hold up every transfer's chunks behind the
        one being checked; the page cache takes them meanwhile."""
        if f.direct is None or self._in_fsync or offset % DIRECT_ALIGN or not aligned(data):
            return 0
        pages = len(data) - len(data) % DIRECT_ALIGN
        try:
            done = os.pwrite(f.direct, data[:pages], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Refused after all (a filesystem that accepts the flag at open
            # but not the write): this file and its filesystem go through
            # the page cache from now on.
            os.close(f.direct)
            f.direct = None
            with contextlib.suppress(OSError):
                self._direct_devices[os.fstat(f.fd).st_dev] = False
            return 0
        if done != pages:
            raise OSError(errno.ENOSPC, "short write (disk full?)")
        self.direct_bytes += pages
        return pages

    # -- final checks, on threads of their own ------------------------------------

    def _start_checks(self) -> None:
        """Start waiting checks while fewer than MAX_CHECKS run (and fewer
        than MAX_DETACHED_CHECKS of closed files' still do)."""
        while (
            self._checks_waiting
            and len(self._checks_running) < MAX_CHECKS
            and len(self._checks_running) + len(self._checks_detached)
            < MAX_CHECKS + MAX_DETACHED_CHECKS
        ):
            check = self._checks_waiting.popleft()
            self._checks_running.add(check)
            # Counted as in its fsync from now, on this thread: a chunk taken
            # after this must not be written directly before the check's own
            # thread has run (a disk stuck in that fsync would hold it).
            self._in_fsync.add(check)
            runner = threading.Thread(target=self._check, args=(check,), daemon=True)
            runner.name = "pc-check"
            try:
                runner.start()
            except RuntimeError as exc:  # out of threads: this file fails, its place is freed
                self._in_fsync.discard(check)
                os.close(check.fd)
                verdict = WriteFailed(check.tid, f"cannot start the final check ({exc})")
                self._queue.put(("checked", check.tid, check, verdict))

    def _check(self, check: _Check) -> None:
        """A check's thread: its verdict goes back through the writer's queue."""
        name_native_thread()
        yield_to_control_plane(bulk=True)
        verdict: Finished | WriteFailed = WriteFailed(check.tid, "the final check did not end")
        try:
            verdict = self._verdict(check)
        except (OSError, ValueError) as exc:  # the file failed
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)  # kept, as a write's
            verdict = WriteFailed(check.tid, getattr(exc, "strerror", None) or str(exc), full)
        except Exception as exc:  # a fault of ours: the file fails, the check's place is freed
            what = type(exc).__name__
            log.error("the final check of a file failed unexpectedly (%s)", what)
            log.debug("the final check's failure", exc_info=True)
            verdict = WriteFailed(check.tid, f"the final check failed unexpectedly ({what})")
        finally:
            self._in_fsync.discard(check)  # (one that ended before its fsync)
            try:
                os.close(check.fd)
            finally:  # whatever happened, the writer gets the check's place back
                self._queue.put(("checked", check.tid, check, verdict))

    def _verdict(self, check: _Check) -> Finished:
        f, tid = check.file, check.tid
        feeder = f.feeder  # once: a close on the writer thread may drop it meanwhile
        if feeder is not None:
            feeder.finish()  # the build catches up (checked() follows it)
            if not isinstance(feeder.builder.error, OSError):
                # Every byte was hashed in order as it was fed to the tree
                # (whose files are hashed as written and synced before
                # they are published): the part itself is never published.
                return Finished(tid, feeder.hasher.digest())
        note = self._check_setter(check)
        note(0)
        with self.check_steps.syncing(check):  # it reports nothing until it returns
            try:  # (in _in_fsync since it started)
                self._fsync(check.fd)
            finally:
                self._in_fsync.discard(check)
        # The verdict is on what the disk holds, not on what was written: a
        # part changed underneath us (another process, a faulty disk) must
        # not be published as verified. Read as it was written, if nothing
        # could have changed a range after it was read (actors/read_back.py);
        # else all of it now.
        if check.early is not None or check.as_written is not None:
            if check.as_written is not None:
                digest = self._as_written_verdict(check, check.as_written, note)
            else:
                assert check.early is not None
                digest = self._early_verdict(check, check.early, note)
            if digest is not None:
                with self._count_lock:
                    self.early_checks += 1
                return Finished(tid, digest)
        with self._count_lock:
            self.full_checks += 1
        read_back = hash_direct if check.direct else hash_file
        return Finished(tid, read_back(check.fd, f.size, note))

    def _early_verdict(
        self, check: _Check, early: EarlyPart, note: Callable[[int], None]
    ) -> bytes | None:
        """The hash of ``early`` as it was read back while written (what the
        follower has not read yet read here, after the fsync), if nothing
        could have changed a range of it after it was read: no chunk written
        again below what was read, no hole and its size (a truncate by
        name), no open of it since it was watched (events read last, right
        before the verdict); else None (the whole read-back)."""
        start = self._follower.take(early, note)
        if start is None:
            return None
        return self._rest_verdict(check, early, start, note)

    def _as_written_verdict(
        self, check: _Check, part: AsWritten, note: Callable[[int], None]
    ) -> bytes | None:
        """The hash of ``part`` from its chunks as written and what was read
        back of it (the rest read here, after the fsync), if nothing could
        have changed it unseen: no chunk written again below what was hashed,
        no hole and its size (a cut by name), no open of it since it was
        watched (events read last); else None (the whole read-back). Its
        writes are over: the writer's thread no longer touches its hash."""
        part.settle()  # (its hash's jobs all ran)
        if part.tainted:
            return None
        return self._rest_verdict(check, part, part.hashed, note)

    def _rest_verdict(
        self,
        check: _Check,
        part: EarlyPart | AsWritten,
        start: int,
        note: Callable[[int], None],
    ) -> bytes | None:
        """``part``'s hash once the rest of it, from ``start``, is read as
        the whole read-back would read it (three reads in flight from the
        disk), if it is not tainted, whole (its size, no hole) and was not
        opened since it was watched (events read last); else None."""
        note(start)
        read_back = hash_direct if check.direct else hash_file
        digest = read_back(check.fd, part.size, note, part.hasher, start)
        if part.tainted or not whole(check.fd, part.size) or self._watches.opened(part.wd):
            return None
        return digest

    def _checked_verdict(
        self, files: dict[bytes, _File], check: _Check, verdict: Finished | WriteFailed
    ) -> WriterResult | None:
        """A check's thread ended (writer thread): its verdict, if its file
        is still open; else only that a detached check ended."""
        self._checks_running.discard(check)
        self._checks_detached.discard(check)
        self._start_checks()
        if check.detached:
            return Detached(check.tid)
        f = files.get(check.tid)
        if f is not check.file:
            return Detached(check.tid)
        f.check = None  # (its fd is closed: nothing of it is left to detach)
        if isinstance(verdict, WriteFailed):  # as any failed file: closed by close()
            files.pop(check.tid, None)
            self._remember_failed(check.tid, f)
        return verdict

    def _remember_failed(self, tid: bytes, f: _File) -> None:
        """Keep failed ``f`` for its close(), or, with FAILED_MEMORY failed
        files kept already, close its descriptors now (its close() then
        finds nothing): never a descriptor left open for good."""
        if len(self._failed) < FAILED_MEMORY:
            self._failed[tid] = f
            return
        self._detach(f)
        self._drop_feeder(f)
        self._drop_early(f)
        os.close(f.fd)
        if f.direct is not None:
            os.close(f.direct)

    def _detach(self, f: _File) -> None:
        """``f`` is closed: its check, if any, no longer speaks for it (one
        waiting never starts; one running is left to its thread)."""
        check, f.check = f.check, None
        if check is None:
            return
        check.detached = True
        self.check_steps.forget(check)
        if check in self._checks_running:
            self._checks_running.discard(check)
            self._checks_detached.add(check)
            self._start_checks()
        elif check in self._checks_waiting:  # never started: its fd is still ours
            self._checks_waiting.remove(check)
            os.close(check.fd)

    def _check_setter(self, check: _Check) -> Callable[[int], None]:
        def note(done: int) -> None:
            if not check.detached:
                self._checked[check.tid] = done
            self.check_steps.step()

        return note

    def _checked_setter(self, tid: bytes) -> Callable[[int], None]:
        def note(done: int) -> None:
            self._checked[tid] = done
            self.check_steps.step()

        return note

    @staticmethod
    def _builder(spec: TreeSpec, size: int, stop: threading.Event) -> TreeBuilder:
        return TreeBuilder(
            spec.inbox, spec.part, spec.manifest_bytes, size, spec.max_files,
            spec.file_mode, spec.dir_mode, stop,
        )  # fmt: skip

    @staticmethod
    def _feed(f: _File) -> None:
        """Hand ``f``'s feeder the chunks written from ``f.fed`` on, in order."""
        assert f.feeder is not None
        total = f.written.total
        while f.fed < total and f.fed in f.written:
            f.feeder.push(f.fed)
            f.fed += 1

    def _advance(self, f: _File) -> None:
        """How far ``f`` is written from its start (the follower is told)."""
        total = f.written.total
        start = f.prefix
        while f.prefix < total and f.prefix in f.written:
            f.prefix += 1
        if f.prefix != start and f.early is not None:
            self._follower.advance(f.early, min(f.size, f.prefix * f.chunk_size))

    def _cut_unit(self, fd: int, direct: int | None) -> int | None:
        """(writer thread) :func:`~actors.read_back.cut_unit` for the part
        open as ``fd`` (after its watch: the probe's file is not this part),
        probed once per filesystem and way of writing it. Here, not in
        :meth:`watch`: the probe writes a MiB and cuts it, which a disk that
        hangs would make the caller's thread (the receiver's) wait for."""
        key = (os.fstat(fd).st_dev, direct is not None)
        if key not in self._cut_units:
            self._cut_units[key] = cut_unit(fd, direct)
        return self._cut_units[key]

    def _drop_early(self, f: _File) -> None:
        """``f`` is closed or failed: its read-back as written stops (its
        check, if one runs, reads it all instead) and its watch goes."""
        early, f.early = f.early, None
        if early is not None:
            self._follower.remove(early)
            self._watches.remove(early.wd)
        written, f.as_written = f.as_written, None
        if written is not None:
            written.close()
            self._watches.remove(written.wd)

    def _drop_feeder(self, f: _File) -> None:
        if f.feeder is not None:
            f.feeder.cancel()
            self._halts.discard(f.feeder.halt)
            f.feeder = None

    @staticmethod
    def _checkpoint(f: _File) -> str:
        """Sync the part and record what it holds; "" or why that failed."""
        f.since_checkpoint = 0
        f.checkpointed = time.monotonic()
        if f.manifest is None or f.inbox is None:
            return ""
        record = dataclasses.replace(f.manifest, written=f.written.to_bytes(), updated=time.time())
        try:
            save_manifest(f.inbox, f.fd, record)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""
