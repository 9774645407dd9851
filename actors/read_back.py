"""The final check's read-back taken while a fresh part is written.

Part of the receiver's writer (:mod:`actors.file_writer`). The verdict hash
is over the part as stored: after the last chunk, the writer fsyncs the part
and reads it all back (1.1-1.4 s per GiB from this disk, wall time the user
waits). For a *fresh* part (created with ``O_EXCL`` in this run of the node:
no other process can hold a descriptor of it from before) the reading is
done as the part is written instead, and the verdict is the hash of those
reads only if nothing could have changed a range after it was read:

- :class:`Watches`: an inotify watch on the part (Linux), added right after
  the writer's own opens of it (the part's creation, its ``O_DIRECT``
  reopen), so that none is expected: any ``IN_OPEN`` of its inode afterwards
  (another process, through any name or ``/proc/PID/fd``), a lost event
  (``IN_Q_OVERFLOW``), an event stream that cannot be read, a watch that
  could not be added or that went away, and the final check reads the whole
  part back after the fsync, as before. (Events are counted as "one or more"
  on purpose: the kernel merges an event identical to the last one queued,
  so two opens may show as one.)
- :func:`whole`: ``truncate(2)`` by name opens nothing (it shows only as
  ``IN_MODIFY``, which the writer's own writes cause too). A range cut off
  and not written again is a hole (the writer writes each chunk once): the
  part must have its size and no hole below it (``SEEK_HOLE``), on a
  filesystem known to report holes (ext4, XFS, Btrfs, tmpfs) and seen to
  report the fresh part's (:func:`holes_seen`); elsewhere, the whole
  read-back. A cut inside a block zeroes the rest of that block but leaves
  it allocated (no hole), so the follower never reads closer than two
  windows (8 MiB) to what is written from the start, nor the file's last
  8 MiB (the final check reads those after the fsync): a cut below what
  was read then frees at least one whole block (4 KiB, a 2 MiB huge page)
  that is written and never written again, a hole. (That list has no
  network filesystem either, whose other clients' opens no inotify watch
  here would see.)
- :class:`Follower`: one thread (``pc-check``, at the checks' nice value) per
  writer follows each fresh part's contiguous written prefix (the writer
  tells it when that grows; chunks may come in any order), reads each new
  range back as the final check would (``O_DIRECT`` through a duplicate of
  the part's direct descriptor, or buffered) into one reused window of
  :data:`~actors.file_writer.HASH_WINDOW` bytes, and feeds an incremental
  BLAKE3 per part. The writer never waits for it; a chunk written again
  below what was handed to it taints its part (the whole read-back then).
- :class:`AsWritten`, where :func:`cut_unit` tells the block a cut leaves
  allocated and it divides the chunk (the writer's choice before the
  follower): no read behind the writes at all; each chunk hashed from its
  buffer but for its last block (the one a cut could zero unseen), read back
  once a chunk above it is written; any chunk written again taints the part.
  A part written directly has each chunk's last block written first,
  through the page cache (so that block is read back from there, and no
  moment between the two writes leaves the direct write's last block the
  highest). :class:`Hashing`: the thread (``pc-hash``) that does that
  hashing and reading, in the writer's order, while the writer writes on.

The residual window: an open between the part's creation and its watch
(the same actor call, microseconds) goes unseen, as does a process able to
take the node's own descriptor without opening the file (``pidfd_getfd``,
``ptrace``: the node's user or root, which can change the node itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import mmap
import os
import queue
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from peercrypt.runtime.actor import name_native_thread, yield_to_control_plane

IN_OPEN = 0x20
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
# Filesystems (statfs f_type) whose SEEK_HOLE reports the holes a truncate
# leaves: ext2/3/4, XFS, Btrfs, tmpfs. Elsewhere the generic SEEK_HOLE may
# call the whole file data, which would hide a truncated range.
HOLES_REPORTED = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994})
WAIT_STEP = 1.0  # s: a final check waiting for the follower wakes this often at most


class Watches:
    """One inotify instance, open while at least one part is watched (a
    user has 128 by default), shared by the writer's threads."""

    def __init__(self, libc: ctypes.CDLL | None) -> None:
        self._libc = libc
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._opened: dict[int, bool] = {}  # watch -> an open was seen (or may have been)

    def add(self, fd: int) -> int | None:
        """Watch the file open as ``fd`` for opens; its watch, or None if
        it cannot be watched (no inotify, no instance or watch left)."""
        if self._libc is None:
            return None
        with self._lock:
            if self._fd is None:
                ifd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if ifd < 0:
                    return None
                self._fd = ifd
            path = f"/proc/self/fd/{fd}".encode()  # the file itself, whatever its name now
            wd = int(self._libc.inotify_add_watch(self._fd, path, IN_OPEN))
            if wd < 0 or wd in self._opened:  # (the same file twice: neither is ours alone)
                if wd >= 0:
                    self._opened[wd] = True
                self._close_if_idle()
                return None
            self._opened[wd] = False
            return wd

    def opened(self, wd: int) -> bool:
        """Whether the file of ``wd`` may have been opened since it was
        watched (read every event queued first)."""
        with self._lock:
            self._drain()
            return self._opened.get(wd, True)

    def remove(self, wd: int) -> None:
        with self._lock:
            if self._opened.pop(wd, None) is None or self._fd is None or self._libc is None:
                return
            self._libc.inotify_rm_watch(self._fd, wd)  # (fails if it went with its file)
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if not self._opened and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _taint_all(self) -> None:
        for wd in self._opened:
            self._opened[wd] = True

    def _drain(self) -> None:
        while self._fd is not None:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError:  # unreadable: nothing can be trusted
                self._taint_all()
                return
            if not data:
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, at)
                at += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self._taint_all()
                elif wd in self._opened:  # IN_OPEN, or IN_IGNORED: its watch went away
                    self._opened[wd] = True


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, on Linux (its calls the os module lacks); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def filesystem(fd: int) -> int | None:
    """The type of ``fd``'s filesystem (statfs ``f_type``); None if unknown."""
    fstatfs = getattr(libc(), "fstatfs", None)
    if fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    if fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def whole(fd: int, size: int) -> bool:
    """Whether the file of ``fd`` is ``size`` bytes long with no hole below
    that, on a filesystem whose holes are known (else False)."""
    if os.fstat(fd).st_size != size or filesystem(fd) not in HOLES_REPORTED:
        return False
    if size == 0:
        return True
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) >= size
    except (OSError, AttributeError):
        return False


def holes_seen(fd: int) -> bool:
    """Whether the filesystem of ``fd`` (a part just created and sized
    with ``ftruncate``, nothing written yet) shows it as the hole it is:
    where ``SEEK_HOLE`` calls the whole file data (the generic one, ext2's
    own driver under ext2's magic number), :func:`whole` could not see a
    range a truncate cut, and the part is not read back as written."""
    size = os.fstat(fd).st_size
    if size == 0:
        return False  # (nothing to read back as written)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) == 0
    except (OSError, AttributeError):
        return False


@dataclass(eq=False)
class EarlyPart:
    """A fresh part followed by the :class:`Follower`. ``fd``: its own
    duplicate (closed by whichever of the follower and :meth:`Follower.remove`
    is last); ``target``: bytes written contiguously from the start (the
    writer's); ``frontier``: bytes read back and hashed (the follower's)."""

    fd: int
    direct: bool
    size: int
    wd: int
    hasher: Any = field(default_factory=blake3.blake3)  # (on every core for a buffered part)
    target: int = 0
    frontier: int = 0
    tainted: str = ""  # why the final check reads the whole part back instead
    closed: bool = False
    reading: bool = False
    fd_open: bool = True


class Follower:
    """The thread that reads fresh parts back as they are written (one per
    writer; it ends when no part is followed and starts again on the next)."""

    def __init__(self, window: int, align: int, lag: int | None = None) -> None:
        self._window, self._align = window, align
        # Never read closer than this to the written end (the file's end
        # included: the final check reads those bytes after the fsync).
        self._lag = 2 * window if lag is None else lag
        self._cond = threading.Condition()
        self._parts: list[EarlyPart] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.read_bytes = 0  # read back and hashed so far, all parts (the status shows it)

    def add(self, part: EarlyPart) -> None:
        with self._cond:
            if self._stopping:
                self._drop(part)
                return
            self._parts.append(part)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pc-check", daemon=True)
                self._thread.start()

    def advance(self, part: EarlyPart, target: int) -> None:
        """The part's first ``target`` bytes are written (writer thread)."""
        with self._cond:
            before, part.target = part.target, target
            if target == part.size or target // self._window > before // self._window:
                self._cond.notify_all()

    def taint(self, part: EarlyPart, why: str) -> None:
        """No verdict from this part's read-back: it stops (writer thread)."""
        with self._cond:
            part.tainted = part.tainted or why
            if not part.reading:
                self._drop(part)
            self._cond.notify_all()

    def remove(self, part: EarlyPart) -> None:
        """The part is closed: no more reads of it; its descriptor goes."""
        with self._cond:
            part.closed = True
            if not part.reading:
                self._drop(part)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for part in list(self._parts):
                part.closed = True
                if not part.reading:
                    self._drop(part)
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def take(self, part: EarlyPart, progress: Callable[[int], None]) -> int | None:
        """The part's final check takes it over (every chunk is written): no
        more reads of it here, once the one in progress ends (``progress(bytes
        read)`` meanwhile); how far it was read back and hashed (the check
        reads the rest), or None if its read-back cannot decide (tainted,
        closed, a read failed)."""
        shown = -1
        with self._cond:
            while part.reading and not part.closed:
                if part.frontier != shown:  # (a step only when it moved)
                    shown = part.frontier
                    progress(shown)
                self._cond.wait(WAIT_STEP)
            if part.closed or part.tainted:
                return None
            self._drop(part)
            self._cond.notify_all()  # (its thread ends if that was the last part)
            return part.frontier

    def _drop(self, part: EarlyPart) -> None:
        """(under the lock, not while it is read) Forget it, close its fd."""
        with contextlib.suppress(ValueError):
            self._parts.remove(part)
        if part.fd_open:
            part.fd_open = False
            os.close(part.fd)

    def _next(self) -> tuple[EarlyPart, int, int] | None:
        """(under the lock) A part with a whole window to read, its start and
        length: one that ends at least :attr:`_lag` bytes below what is
        written from the start (:func:`whole`: why)."""
        for i, part in enumerate(self._parts):
            end = part.target - self._lag
            end -= end % self._align
            if end - part.frontier >= self._window:
                self._parts.append(self._parts.pop(i))  # the others' turn next
                return part, part.frontier, self._window
        return None

    def _run(self) -> None:
        name_native_thread()
        yield_to_control_plane(bulk=True)
        window: mmap.mmap | None = None
        try:
            window = buffer = mmap.mmap(-1, self._window)
            while True:
                with self._cond:
                    while (job := self._next()) is None:
                        if not self._parts or self._stopping:
                            self._thread = None
                            return
                        self._cond.wait()
                    part, start, length = job
                    part.reading = True
                why = ""
                try:
                    with memoryview(buffer) as view:
                        if part.direct:
                            read_direct(part.fd, view, start, length, self._align)
                        else:
                            read_buffered(part.fd, view, start, length)
                        part.hasher.update(view[:length])
                except OSError as exc:
                    why = exc.strerror or str(exc)
                with self._cond:
                    part.reading = False
                    if why:
                        part.tainted = part.tainted or why
                    else:
                        part.frontier = start + length
                        self.read_bytes += length
                    if part.closed or part.tainted or part.frontier >= part.size:
                        self._drop(part)  # nothing more to read of it
                    self._cond.notify_all()
        except BaseException:  # a fault of ours: every part is read back whole at its check
            with self._cond:
                self._thread = None
                for part in list(self._parts):
                    part.tainted = part.tainted or "the read-back failed"
                    part.reading = False
                    self._drop(part)
                self._cond.notify_all()
            raise
        finally:
            if window is not None:
                window.close()


def tail_start(offset: int, end: int, unit: int) -> int:
    """Where the last ``unit``-block touched by a write of ``[offset, end)``
    begins (not below ``offset``): the bytes a later cut could zero without
    leaving a hole, while that write is the part's highest."""
    return max(offset, (end - 1) // unit * unit)


@dataclass(eq=False)
class AsWritten:
    """A fresh part hashed from its chunks as they are written (the writer's
    thread: no read of the part runs beside its writes), except for what a
    cut by name could change unseen.

    A ``truncate(2)`` by name at any moment, to inside a block, zeroes the
    rest of that block without a hole; every whole block above it that was
    written is freed for good (a hole: :func:`whole` sees it; a chunk
    written again, which could fill it back, taints the part). So a cut is
    unseen only inside the last block of the highest write at that moment:
    the last ``unit`` bytes of each chunk (``unit``: what such a cut leaves
    allocated, :func:`cut_unit`), and of a chunk's first write if it takes
    two.
    Those bytes, and chunks that came before the gap below them was filled,
    are read back from the part only once a chunk above them is written (a
    cut there then frees that chunk's blocks), or by the final check after
    the fsync. ``hashed``: the part's first bytes in the hash; ``fd``: its
    own duplicate of the part's descriptor (closed by :meth:`close`)."""

    fd: int
    direct: bool
    size: int
    wd: int
    unit: int
    hasher: Any = field(default_factory=blake3.blake3)
    hashed: int = 0
    tainted: str = ""  # why the final check reads the whole part back instead
    read_bytes: int = 0  # read back from the part so far (tails, early chunks)
    fd_open: bool = True
    # The thread that hashes it (jobs queued in order, so that the writer's
    # next write runs while this chunk is hashed); None: on the caller's.
    jobs: Hashing | None = None
    # A buffered descriptor of a part written directly but for each chunk's
    # last block, which the writer writes first through the page cache (the
    # chunk's highest block from the start: no second write's ``first``):
    # a read of one block, a tail, is a read of the page cache, not the disk.
    page_fd: int | None = None

    def wrote(
        self,
        offset: int,
        data: memoryview | bytes,
        contiguous: int,
        window: memoryview | None,
        may_read: bool = True,
        first: int | None = None,
        again: bool = False,
        release: Callable[[], None] | None = None,
    ) -> bool:
        """``data`` was just written at ``offset``; ``contiguous``: the bytes
        written from the start before it. ``window``: a page-aligned buffer
        for what is read back here (None with :attr:`jobs`: its thread has
        one). ``may_read``: False while the part's disk may hang (a final
        check is inside its fsync): nothing is read back then, nor hashed
        above what would be (the next chunk written in order, or the final
        check, reads it). ``first``: the bytes of ``data`` a first
        write put there, if a second one wrote the rest (a last chunk's
        whole pages directly, then the rest of a page): between the two, the
        first one's last block was the highest written, which a cut could
        zero unseen, so nothing of ``data`` from there on is hashed as
        written. ``again``: ``data`` was written there before: the part is
        tainted wherever that is (below what is hashed, the hash is of other
        bytes; above, it may fill back what a cut freed, the hole that would
        show the cut: a cut inside the block just below what is hashed frees
        only chunks not hashed yet when that block is a chunk's last).
        ``release``: gives ``data``'s buffer back; True if a job of
        :attr:`jobs` holds it now and calls it once hashed (the caller must
        not give it back itself)."""
        if self.tainted:
            return False
        if again or offset < self.hashed:  # (offset < hashed: a chunk overlapping the hash)
            self.tainted = "a chunk written again"
            return False
        if offset != contiguous:
            return False  # above a gap: read back once the gap is filled, or at the check
        if self.hashed < offset and not may_read:
            return False
        keep = tail_start(offset, offset + (first or len(data)), self.unit)
        held_bytes = 0  # what its hash step holds of the jobs' bound (Hashing.reserve)
        if keep > offset and self.jobs is not None:
            if self.jobs.reserve(len(data)):
                held_bytes = len(data)
            else:  # the thread is that far behind: read back with what comes above it
                keep = offset
        start, self.hashed = self.hashed, keep
        self.read_bytes += offset - start
        steps = []  # in this order: what is read back below it, then its own bytes
        if start < offset:
            steps.append(functools.partial(self._read_range, start, offset))
        if keep > offset:
            steps.append(functools.partial(self._hash, data, keep - offset, release, held_bytes))
        held = keep > offset and release is not None  # (its hash step gives it back)
        if self.jobs is not None:  # (on its thread)
            for step in steps:
                self.jobs.put(self, step)
            return held
        assert window is not None
        try:
            for step in steps:
                step(window)
        except OSError as exc:  # (a read back: the hash step did not run)
            self.tainted = exc.strerror or str(exc)
            return False
        return held

    def _read_range(self, start: int, stop: int, window: memoryview) -> None:
        """Read the part back from ``start`` to ``stop`` into the hash (a
        tail through ``page_fd``: the page cache). Raises OSError."""
        at = start
        while at < stop:
            length = min(len(window), stop - at)
            if self.page_fd is not None and stop - start <= self.unit:
                read_buffered(self.page_fd, window, at, length)
            elif self.direct:
                read_direct(self.fd, window, at, length, self.unit)
            else:
                read_buffered(self.fd, window, at, length)
            self.hasher.update(window[:length])
            at += length

    def _hash(
        self,
        data: memoryview | bytes,
        length: int,
        release: Callable[[], None] | None,
        held: int,
        window: memoryview,
    ) -> None:
        """(the hashing thread) ``data``'s first ``length`` bytes into the
        hash; then ``release`` its buffer, and the ``held`` bytes it took of
        the jobs' bound."""
        try:
            with memoryview(data) as view:
                self.hasher.update(view[:length])
        finally:
            if release is not None:
                release()
            if held and self.jobs is not None:
                self.jobs.unhold(held)

    def settle(self) -> None:
        """(the final check) Until every job queued for it ran."""
        if self.jobs is not None:
            ran = threading.Event()
            self.jobs.put(None, lambda window: ran.set())
            while not ran.wait(WAIT_STEP):
                pass

    def close(self) -> None:
        """Close its descriptors (on its hashing thread, once every job
        queued before ran: none reads a descriptor closed under it)."""
        if self.jobs is not None:
            self.jobs.put(None, lambda window: self._close())
        else:
            self._close()

    def _close(self) -> None:
        if self.fd_open:
            self.fd_open = False
            os.close(self.fd)
        if self.page_fd is not None:
            os.close(self.page_fd)
            self.page_fd = None


# Bytes of written chunks that may wait for the hashing thread in their
# buffers (Hashing's ``hold``; the receivers pass half the receive buffer):
# one further behind is read back from the part instead.
HASH_HOLD = 16 * 1024 * 1024


class Hashing:
    """The thread (``pc-hash``, one per writer, started at its first job)
    that hashes the parts hashed as written: the writer queues each chunk's
    bytes and each read back in the order :meth:`AsWritten.wrote` decides,
    and goes on with its next write while they are hashed (BLAKE3 and the
    disk's wait both release the interpreter lock). A job that fails
    taints its part (a read back: EIO) but never the thread; a chunk's
    buffer goes back once hashed, whatever happened. :meth:`stop` runs
    every job queued before it.

    The chunks its queued jobs hold (their buffers wait to be hashed) are at
    most ``hold`` bytes, or one chunk (:meth:`reserve`): a thread that falls
    behind the writer (its node's cores busy, its niceness) would otherwise
    hold every chunk written since, beyond any bound of the node. A chunk
    refused is not hashed from its buffer but read back from the part with
    the next chunk written above it, or by the final check (:attr:`deferred`
    counts them)."""

    def __init__(self, window: int, nice: bool = True, hold: int = HASH_HOLD) -> None:
        self._window = window
        self._hold = hold
        self._held = 0  # bytes of chunks queued jobs hold (under _held_lock)
        self._held_lock = threading.Lock()
        self.deferred = 0  # chunks refused (writer thread)
        self._stopped = False  # then every job runs on its caller's thread
        self._nice = nice  # False: at the node's priority (the multicast receiver's writer)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, part: AsWritten | None, job: Callable[[memoryview], None]) -> None:
        """Run ``job(window)`` after every job put before (``part``: the
        one a failed job taints)."""
        with self._lock:
            if self._stopped:  # (a check's mark, a close, after the writer stopped)
                with mmap.mmap(-1, self._window) as window, memoryview(window) as view:
                    job(view)
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pc-hash", daemon=True)
                self._thread.start()
        self._jobs.put((part, job))

    def reserve(self, size: int) -> bool:
        """Whether a job may hold a chunk of ``size`` bytes until it ran
        (then :meth:`unhold`): within ``hold``, or the only one held."""
        with self._held_lock:
            if self._held and self._held + size > self._hold:
                self.deferred += 1
                return False
            self._held += size
            return True

    def unhold(self, size: int) -> None:
        with self._held_lock:
            self._held -= size

    @property
    def held(self) -> int:
        """Bytes of chunks its queued jobs hold."""
        return self._held

    def stop(self, timeout: float = 5.0) -> None:
        """Run every job queued, end the thread; later jobs run on their
        callers' threads (under the lock: none before the queued ones)."""
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
                thread.join(timeout)

    def _run(self) -> None:
        name_native_thread()
        if self._nice:
            yield_to_control_plane(bulk=True)
        with mmap.mmap(-1, self._window) as window, memoryview(window) as view:
            while (queued := self._jobs.get()) is not None:
                part, job = queued
                try:
                    job(view)
                except Exception as exc:  # its part is read back whole; the thread goes on
                    if part is not None:
                        why = exc.strerror if isinstance(exc, OSError) else ""
                        part.tainted = part.tainted or why or "the hash as written failed"


_Job = tuple["AsWritten | None", Callable[[memoryview], None]]


PROBE_SIZE = 1 << 20


def cut_unit(fd: int, direct: int | None) -> int | None:
    """How many bytes a cut inside a part's first block leaves allocated (a
    block, a cluster, a huge page), rounded up to pages: probed on a file of
    its own (``O_TMPFILE``) in the directory of the part open as ``fd``,
    written as the part is (``O_DIRECT`` if ``direct`` is not None), cut
    to one byte and sized again. None if it cannot be told (no such file,
    no hole seen after the cut). On a tmpfs that may keep files in huge
    pages, at least a huge page: a cut inside one zeroes the rest of it
    when the page cannot be split, which the probe's page may have been."""
    try:
        directory = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
        flags = os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)
        if direct is not None:
            flags |= os.O_DIRECT
        probe = os.open(directory, flags, 0o600) if flags & getattr(os, "O_TMPFILE", 0) else -1
    except (OSError, AttributeError):
        return None
    if probe < 0:
        return None
    try:
        with mmap.mmap(-1, PROBE_SIZE) as buffer:
            buffer.write(b"\xa5" * PROBE_SIZE)
            if os.pwrite(probe, buffer, 0) != PROBE_SIZE:
                return None
        os.ftruncate(probe, 1)
        os.ftruncate(probe, PROBE_SIZE)
        kept = os.lseek(probe, 0, os.SEEK_HOLE)
    except OSError:
        return None
    finally:
        os.close(probe)
    if not 0 < kept < PROBE_SIZE:
        return None
    if filesystem(fd) == TMPFS and (huge := tmpfs_huge_page(fd)):
        kept = max(kept, huge)
    return -(-kept // mmap.PAGESIZE) * mmap.PAGESIZE


TMPFS = 0x01021994
THP = "/sys/kernel/mm/transparent_hugepage"


def tmpfs_huge_page(fd: int, thp: str = THP, mountinfo: str = "/proc/self/mountinfo") -> int:
    """The huge page's size if the tmpfs of ``fd`` may keep files in huge
    pages (its mount's ``huge=`` other than never, or ``force`` for all);
    else 0."""
    try:
        with open(f"{thp}/shmem_enabled") as f:
            policy = f.read()
        with open(f"{thp}/hpage_pmd_size") as f:
            size = int(f.read())
    except (OSError, ValueError):
        return 0  # (no transparent huge pages in this kernel)
    if "[deny]" in policy:
        return 0
    if "[force]" in policy:
        return size
    device = os.fstat(fd).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    options = fields[fields.index("-") + 3 :]
                    huge = [o for o in ",".join(options).split(",") if o.startswith("huge=")]
                    return size if huge and huge[-1] != "huge=never" else 0
    except OSError:
        pass
    return size  # (its mount not found: as if it might)


def read_direct(fd: int, view: memoryview, offset: int, length: int, align: int) -> None:
    """Read ``length`` bytes at ``offset`` of ``fd`` (opened with
    ``O_DIRECT``: whole ``align`` blocks, a short read at the file's end)
    into ``view``. Raises OSError (EIO if the file is shorter)."""
    asked = -(-length // align) * align
    if os.preadv(fd, [view[:asked]], offset) < length:
        raise OSError(errno.EIO, "the part was cut short while it was checked")


def read_buffered(fd: int, view: memoryview, offset: int, length: int) -> None:
    """Read ``length`` bytes at ``offset`` of ``fd`` into ``view`` (a read
    may return less than asked: read on). Raises OSError (EIO if the file
    is shorter)."""
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:length]], offset + got)
        if n == 0:
            raise OSError(errno.EIO, "the part was cut short while it was checked")
        got += n
