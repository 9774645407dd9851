"""Direct writes with and without reads behind them: why a part written
with ``O_DIRECT`` is not read back as it is written.

Writes ``--size`` bytes in 1 MiB ``O_DIRECT`` writes at increasing offsets
into a new file in ``--dir`` (a filesystem that takes ``O_DIRECT``: not
tmpfs), with ``fallocate`` of each chunk first (as the receiver's writer)
or not, alone or with a thread reading the written prefix back behind the
writes in 4 MiB reads (as ``actors/read_back.py``'s follower would),
``O_DIRECT`` or through the page cache (each window dropped from it once
read), then fsyncs it. Prints the write rate of every run and variant.

    .venv/bin/python scripts/bench_read_behind.py [--size 1G] [--runs 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import sys
import tempfile
import threading
import time

CHUNK = 1 << 20
WINDOW = 4 << 20


def size_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def one(
    directory: str, size: int, read_behind: bool, allocate: bool, buffered: bool = False
) -> float:
    """MiB/s of the writes (fsync included)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd, path = tempfile.mkstemp(dir=directory)
    os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    written = 0
    done = threading.Event()

    def reader() -> None:
        copy = os.open(path, os.O_RDONLY) if buffered else os.dup(fd)
        window = mmap.mmap(-1, WINDOW)
        front = 0
        try:
            while front < size:
                ahead = written - front
                if ahead >= WINDOW or (done.is_set() and ahead > 0):
                    n = min(WINDOW, ahead)
                    os.preadv(copy, [memoryview(window)[:n]], front)
                    if buffered:
                        os.posix_fadvise(copy, front, n, os.POSIX_FADV_DONTNEED)
                    front += n
                elif done.is_set():
                    return
                else:
                    done.wait(0.0005)  # (the writer has not written a window more yet)
        finally:
            window.close()
            os.close(copy)

    buffer = mmap.mmap(-1, CHUNK)
    buffer.write(os.urandom(CHUNK))
    thread = threading.Thread(target=reader) if read_behind else None
    try:
        started = time.perf_counter()
        if thread is not None:
            thread.start()
        for offset in range(0, size, CHUNK):
            if allocate:
                libc.fallocate(fd, 0, ctypes.c_long(offset), ctypes.c_long(CHUNK))
            os.pwrite(fd, buffer, offset)
            written = offset + CHUNK
        os.fsync(fd)
        seconds = time.perf_counter() - started
    finally:
        done.set()
        if thread is not None:
            thread.join(60)
        os.close(fd)
        os.unlink(path)
        buffer.close()
    return size / seconds / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_arg, default=1 << 30)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dir", default="/tmp")
    args = parser.parse_args()
    for run in range(args.runs):
        line = []
        for read_behind, buffered in ((False, False), (True, False), (True, True)):
            for allocate in (True, False):
                rate = one(args.dir, args.size, read_behind, allocate, buffered)
                name = ("read behind" if read_behind else "alone") + (
                    " buffered" if buffered else ""
                )
                name += ", fallocate" if allocate else ""
                line.append(f"{name} {rate:.0f}")
        print(f"run {run + 1}, load {os.getloadavg()[0]:.1f}: " + " | ".join(line) + " MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
