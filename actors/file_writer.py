"""The receiver's writer thread: positioned writes and the streaming hash.

Part of the receiver actor (not an actor of its own): the actor thread
authenticates and decrypts, this thread writes and hashes, so the two
overlap (AES-GCM, BLAKE3 and write() all release the GIL). Work comes in on
a queue whose length the transfer credit bounds; results go back to the
actor over an inproc PAIR socket this thread owns, as msgpack tuples:

- ``("written", tid, index)``
- ``("finished", tid, digest)``  (after fsync)
- ``("error", tid, text)``

Written ranges are handed to the kernel's writeback at once
(``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux): the disk then works
while the network delivers, and the final fsync waits only for the tail
instead of the whole file (on this machine that is the difference between
about half and nearly all of the disk's write rate).

The hash is computed in file order while chunks may arrive out of order
(parallel lanes, retransmissions): a chunk written ahead of the hash position
is kept in memory until the gap before it fills, up to ``hold`` chunks per
file (the transfer's credit, so memory stays bounded by configuration:
queued plus held is at most twice the credit); beyond that, or for chunks
held from an earlier run (resume), it is read back from the (page-cached)
file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
import zmq

from peercrypt.core.bitmap import ChunkBitmap

SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], None]:
    """``start(fd, offset, length)``: begin writeback of a range, not waiting."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            sync_file_range = libc.sync_file_range
            sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            pass
        else:

            def start(fd: int, offset: int, length: int) -> None:
                sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)

            return start
    return lambda fd, offset, length: None


@dataclass
class _File:
    fd: int
    chunk_size: int
    size: int
    written: ChunkBitmap
    hold: int = 0  # chunks ahead of the hash position kept in memory, at most
    held: dict[int, bytes] = field(default_factory=dict)
    hasher: Any = field(default_factory=blake3.blake3)
    hashed: int = 0  # chunks hashed, in order


class FileWriter:
    def __init__(self, context: zmq.Context[Any], address: str) -> None:
        self._context = context
        self._address = address
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pc-writer", daemon=True)
        self._start_writeback = _writeback_starter()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5.0)

    def open(
        self, tid: bytes, fd: int, chunk_size: int, size: int, held: ChunkBitmap, hold: int = 0
    ) -> None:
        """Start hashing/writing ``fd``; ``held`` chunks are already in the file.
        Up to ``hold`` chunks written ahead of the hash position are kept in
        memory for the hash instead of being read back."""
        self._queue.put(("open", tid, fd, chunk_size, size, held.to_bytes(), held.total, hold))

    def write(self, tid: bytes, index: int, data: bytes) -> None:
        self._queue.put(("write", tid, index, data))

    def finish(self, tid: bytes) -> None:
        self._queue.put(("finish", tid))

    def forget(self, tid: bytes) -> None:
        self._queue.put(("forget", tid))

    def _run(self) -> None:
        out: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        out.linger = 0
        out.connect(self._address)
        files: dict[bytes, _File] = {}
        try:
            while True:
                op = self._queue.get()
                if op is None:
                    return
                tid = op[1]
                try:
                    result = self._apply(files, op)
                except OSError as exc:
                    files.pop(tid, None)
                    result = ("error", tid, exc.strerror or str(exc))
                if result is not None:
                    out.send(msgpack.packb(result, use_bin_type=True))
        finally:
            out.close(linger=0)

    def _apply(self, files: dict[bytes, _File], op: tuple[Any, ...]) -> tuple[Any, ...] | None:
        kind, tid = op[0], op[1]
        if kind == "open":
            _, _, fd, chunk_size, size, held, total, hold = op
            files[tid] = _File(fd, chunk_size, size, ChunkBitmap.from_bytes(total, held), hold)
            self._advance_hash(files[tid], None, None)
            return None
        f = files.get(tid)
        if f is None:
            return None  # forgotten (transfer aborted) while work was queued
        if kind == "write":
            _, _, index, data = op
            # the hash is taken from ``data``: it must be what the file holds
            if os.pwrite(f.fd, data, index * f.chunk_size) != len(data):
                raise OSError(f"short write of chunk {index} (disk full?)")
            self._start_writeback(f.fd, index * f.chunk_size, len(data))
            f.written.add(index)
            self._advance_hash(f, index, data)
            return ("written", tid, index)
        if kind == "finish":
            self._advance_hash(f, None, None)
            if f.hashed != f.written.total:
                return ("error", tid, "finish before all chunks were written")
            os.fsync(f.fd)
            del files[tid]
            return ("finished", tid, f.hasher.digest())
        if kind == "forget":
            del files[tid]
            return None
        raise ValueError(f"unknown writer op {kind!r}")

    @staticmethod
    def _advance_hash(f: _File, index: int | None, data: bytes | None) -> None:
        if index is not None and data is not None and index > f.hashed:
            if len(f.held) < f.hold:
                f.held[index] = data
            return  # the gap before it is not written yet
        while f.hashed < f.written.total and f.hashed in f.written:
            if f.hashed == index and data is not None:
                chunk = data
            else:
                held = f.held.pop(f.hashed, None)
                if held is not None:
                    chunk = held
                else:
                    length = min(f.chunk_size, f.size - f.hashed * f.chunk_size)
                    chunk = os.pread(f.fd, length, f.hashed * f.chunk_size)
            f.hasher.update(chunk)
            f.hashed += 1
