"""Parallel-mode helpers of the sender actor: crypto workers and a hasher.

Part of the sender actor, not actors of their own. A :class:`LaneCrew` has
one worker thread per lane: each takes chunk indices from a shared queue,
reads the chunk with ``pread`` and seals it with its own lane's keys (own
AEAD objects, own nonce space), so reading and AES-GCM run on both cores
(both release the GIL). Results go to a queue and a byte on a pipe wakes the
actor, which alone touches the sockets. A hasher thread computes the
whole-file BLAKE3 in file order at the same time, reading the file once more
(from the page cache).

Results: ``("chunk", index, last, nonce, sealed)``, ``("hash", digest)``,
``("error", text)``.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import blake3

from peercrypt.crypto.transfer import TransferKeys

HASH_BLOCK = 1 << 20


class LaneCrew:
    def __init__(self, keys: TransferKeys, fd: int, size: int, chunk_size: int, lanes: int) -> None:
        self.results: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._read_fd, self._wake_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._fd, self._size, self._chunk = fd, size, chunk_size
        self._total = -(-size // chunk_size)
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._work, args=(keys.for_lane(i + 1),), name=f"pc-lane{i + 1}", daemon=True
            )
            for i in range(lanes)
        ]
        self._threads.append(threading.Thread(target=self._hash, name="pc-hash", daemon=True))
        for thread in self._threads:
            thread.start()

    @property
    def wake_fd(self) -> int:
        """Readable when results are waiting (the actor watches it)."""
        return self._read_fd

    def submit(self, index: int) -> None:
        self._jobs.put(index)

    def drain(self) -> list[tuple[Any, ...]]:
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

    def _post(self, result: tuple[Any, ...]) -> None:
        self.results.put(result)
        try:
            os.write(self._wake_fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        except OSError:
            pass  # closed: the crew is stopping

    def _work(self, keys: TransferKeys) -> None:
        while True:
            index = self._jobs.get()
            if index is None or self._stopping.is_set():
                return
            try:
                length = min(self._chunk, self._size - index * self._chunk)
                data = os.pread(self._fd, length, index * self._chunk)
                if len(data) != length:
                    raise OSError(f"file shrank while sending (chunk {index})")
                last = index == self._total - 1
                nonce, sealed = keys.seal_chunk(index, last, data)
            except OSError as exc:
                self._post(("error", str(exc)))
                continue
            self._post(("chunk", index, last, nonce, sealed))

    def _hash(self) -> None:
        hasher = blake3.blake3()
        offset = 0
        try:
            while offset < self._size and not self._stopping.is_set():
                block = os.pread(self._fd, min(HASH_BLOCK, self._size - offset), offset)
                if not block:
                    raise OSError("file shrank while hashing")
                hasher.update(block)
                offset += len(block)
        except OSError as exc:
            self._post(("error", str(exc)))
            return
        if not self._stopping.is_set():
            self._post(("hash", hasher.digest()))

    def stop(self) -> None:
        """Stop the threads (bounded wait) and close the pipe."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(5.0)
        os.set_blocking(self._wake_fd, False)
        os.close(self._wake_fd)
        os.close(self._read_fd)
