"""Parallel-mode helpers of the sender actor: crypto workers that also hash.

Part of the sender actor, not actors of their own. A :class:`LaneCrew` has
a few worker threads (:func:`crew_size`: one per core, at most one per
connection): each takes chunk indices from a shared queue,
reads the chunk with ``pread`` and seals it with its own lane's keys (own
AEAD objects, own nonce space), so reading and AES-GCM run on both cores
(both release the GIL). Results go to a queue and a byte on a pipe wakes the
actor, which alone touches the sockets.

The whole-file BLAKE3 is computed from the chunks the workers read, so the
file is read once: a worker hands its plaintext to :class:`_OrderedHash`,
and whichever worker brings the chunk at the hash position hashes it and the
chunks held after it (one thread at a time, in file order). At most
``2 x lanes`` chunks are held (bounded memory, by configuration); a chunk
beyond that, and a chunk the receiver already held (resume, never sent), is
read back from the file when the hash gets there. No worker ever waits for
another.

Results (typed): :class:`ChunkSealed`, :class:`FileHashed` (once, when
the last chunk was hashed), :class:`ReadFailed`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from actors.file_chunks import Stream, read_chunk
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.crypto.transfer import TransferKeys
from peercrypt.runtime.actor import name_native_thread, yield_to_control_plane


@dataclass(frozen=True)
class ChunkSealed:
    """Chunk ``index`` read and sealed (with ``nonce``): send it."""

    index: int
    last: bool
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True)
class FileHashed:
    """The whole file's BLAKE3, in chunk order."""

    digest: bytes


@dataclass(frozen=True)
class ReadFailed:
    """Reading the file failed (``text`` says why)."""

    text: str


LaneResult = ChunkSealed | FileHashed | ReadFailed


class _OrderedHash:
    """BLAKE3 of a file in chunk order, fed chunks in any order by many threads.

    Nobody waits: the thread that hands over the chunk at the hash position
    hashes it and the held chunks after it; any other thread just leaves its
    chunk (at most ``max_held`` of them, then only a bit saying "read it
    back") and goes on."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        total: int,
        skip: ChunkBitmap,
        max_held: int,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self._read = read
        self._stopped = stopped  # the send ended: hash no further
        self._total = total
        self._skip = skip  # never handed over (the receiver had them): read them
        self._unheld = ChunkBitmap(total)  # handed over while ``_held`` was full: read them
        self._max_held = max(1, max_held)
        self._hasher = blake3.blake3()
        self._held: dict[int, bytes] = {}
        self._position = 0  # chunks hashed
        self._busy = False  # one thread hashes at a time
        self._digest_given = False
        self._lock = threading.Lock()

    def offer(self, index: int, data: bytes) -> bytes | None:
        """Hand over chunk ``index`` as read from the file; hash whatever is
        now in order. Returns the digest when this call hashed the last chunk
        (so exactly one caller gets it). Raises OSError from reading back."""
        with self._lock:
            if index < self._position or index in self._held:
                return None  # a retransmission of a chunk already hashed or held
            if index == self._position or len(self._held) < self._max_held:
                self._held[index] = data
            else:
                self._unheld.add(index)
                return None  # not needed before the chunk at the position comes
            if self._busy:
                return None  # the thread hashing now takes it
            self._busy = True
        return self._advance()

    def start(self) -> bytes | None:
        """Hash the leading chunks the receiver already held (if any)."""
        with self._lock:
            if self._busy:
                return None
            self._busy = True
        return self._advance()

    def _advance(self) -> bytes | None:
        try:
            while True:
                with self._lock:
                    if self._stopped():  # (a resumed prefix may take long to read back)
                        self._busy = False
                        return None
                    position = self._position
                    if position >= self._total:
                        self._busy = False
                        if self._digest_given:
                            return None
                        self._digest_given = True
                        return bytes(self._hasher.digest())
                    data = self._held.pop(position, None)
                    if data is None and not (position in self._skip or position in self._unheld):
                        self._busy = False  # its thread will find nobody hashing
                        return None
                if data is None:
                    data = self._read(position)
                self._hasher.update(data)
                with self._lock:
                    self._position = position + 1
        except BaseException:
            with self._lock:
                self._busy = False
            raise


def crew_size(lanes: int, cores: int | None) -> int:
    """Sealing workers for ``lanes`` connections: one per core at most.
    Connections are what a per-connection cap counts; threads beyond the
    cores only take turns on them (``-t 8`` on two cores cost 1.25x normal's
    time uncapped with eight workers)."""
    return max(1, min(lanes, cores or 1))


class LaneCrew:
    def __init__(
        self,
        keys: TransferKeys,
        fd: int | Stream,
        size: int,
        chunk_size: int,
        lanes: int,
        skip: ChunkBitmap | None = None,
    ) -> None:
        """``skip``: chunks that will never be submitted (the receiver holds
        them); the crew still hashes them, reading them itself. The crew
        reads a file ``fd`` through a descriptor of its own (a dup): the
        caller may close ``fd`` once :meth:`stop` returned, while a worker
        still ends its read."""
        self.results: queue.SimpleQueue[LaneResult] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        # Both ends non-blocking: a worker's wake-up never waits on a full
        # pipe (full, it is readable: the byte is not needed), not even once
        # nobody drains it any more (stopped).
        self._read_fd, self._wake_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._fd: int | Stream = os.dup(fd) if isinstance(fd, int) else fd
        except OSError:
            os.close(self._read_fd)
            os.close(self._wake_fd)
            raise
        self._size, self._chunk = size, chunk_size
        self._total = -(-size // chunk_size)
        self._stopping = threading.Event()
        # The pipe and the dup are closed by whoever is last: stop(), or the
        # last worker to end after it (never under a worker still reading).
        self._life = threading.Lock()
        self._alive = 0  # workers started and not ended
        self._stop_called = False
        self._hash = _OrderedHash(
            self._read_chunk,
            self._total,
            skip if skip is not None else ChunkBitmap(self._total),
            2 * lanes,
            self._stopping.is_set,
        )
        self._threads = [
            threading.Thread(
                target=self._work, args=(keys.for_lane(i + 1),), name=f"pc-lane{i + 1}", daemon=True
            )
            for i in range(lanes)
        ]
        try:
            for thread in self._threads:
                with self._life:
                    self._alive += 1
                try:
                    thread.start()
                except BaseException:
                    with self._life:
                        self._alive -= 1
                    raise
        except BaseException:
            self.stop()
            raise
        self._jobs.put(-1)  # hash leading chunks the receiver already held

    @property
    def wake_fd(self) -> int:
        """Readable when results are waiting (the actor watches it)."""
        return self._read_fd

    def submit(self, index: int) -> None:
        self._jobs.put(index)

    def drain(self) -> list[LaneResult]:
        """Results so far (clears the wake-up pipe)."""
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                return out

    def _post(self, result: LaneResult) -> None:
        self.results.put(result)
        try:
            os.write(self._wake_fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        except OSError:  # (not expected: the pipe is closed only after the last worker)
            pass

    def _read_chunk(self, index: int) -> bytes:
        return read_chunk(self._fd, index, self._chunk, self._size)

    def _work(self, keys: TransferKeys) -> None:
        try:
            self._serve(keys)
        finally:
            with self._life:
                self._alive -= 1
                last = self._alive == 0 and self._stop_called
            if last:
                self._release()

    def _serve(self, keys: TransferKeys) -> None:
        name_native_thread()
        yield_to_control_plane(bulk=True)
        while True:
            index = self._jobs.get()
            if index is None or self._stopping.is_set():
                return
            try:
                if index < 0:
                    digest = self._hash.start()
                else:
                    data = self._read_chunk(index)
                    last = index == self._total - 1
                    nonce, sealed = keys.seal_chunk(index, last, data)
                    self._post(ChunkSealed(index, last, nonce, sealed))
                    digest = self._hash.offer(index, data)
            except OSError as exc:
                self._post(ReadFailed(str(exc)))
                continue
            if digest is not None and not self._stopping.is_set():
                self._post(FileHashed(digest))

    def stop(self) -> None:
        """Stop the workers: each ends after the chunk it is reading (a
        resumed prefix being hashed, after its current chunk). Nothing waits
        for them here (a read stuck in a disk that hangs must not hold the
        sender); the pipe and the crew's descriptor of the file are closed
        now if they all ended, else by the last of them as it ends. The
        caller stops watching :attr:`wake_fd` first."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        with self._life:
            if self._stop_called:
                return
            self._stop_called = True
            last = self._alive == 0
        if last:
            self._release()

    def _release(self) -> None:
        os.close(self._wake_fd)
        os.close(self._read_fd)
        if isinstance(self._fd, int):
            os.close(self._fd)
