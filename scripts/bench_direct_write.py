"""Buffered against O_DIRECT writes of one file, as the receiver's writer
does them: CPU and wall per GiB, alternated run by run.

Each run writes ``--size`` bytes in ``--chunk`` pieces from a few reused
buffers (the writer's chunk buffers stay resident) into a new file in
``--dir``, syncs it, reads it back for the verdict hash (BLAKE3, as the
receiver does), and deletes it. Variants:

- ``buffered``: ``fallocate`` + ``pwrite`` + ``sync_file_range(WRITE)`` per
  chunk, ``fsync``, the read-back mapped (``mmap``) and hashed on every core
  (the writer of today);
- ``direct``: the file opened with ``O_DIRECT``, ``fallocate`` + ``pwrite``
  from page-aligned anonymous buffers, ``fsync``, the read-back with
  ``O_DIRECT`` into an aligned buffer and hashed;
- ``direct-hash``: as ``direct`` but hashing each chunk on the way (the file
  written in order), no read-back.

CPU is the process's user+sys (``os.times``), all threads; ``/proc/vmstat``'s
``pgalloc_normal`` delta counts the pages the kernel handed out.

    .venv/bin/python scripts/bench_direct_write.py --size 1G --runs 4 --dir /tmp
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import resource
import sys
import time

import blake3

SYNC_FILE_RANGE_WRITE = 2
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def vmstat(key: str) -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name == key:
                return int(value)
    return 0


def switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def run(kind: str, path: str, size: int, chunk: int, buffers: list[mmap.mmap]) -> dict[str, float]:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    direct = kind.startswith("direct")
    if direct:
        flags |= os.O_DIRECT
    pages0 = vmstat("pgalloc_normal")
    c0, w0, s0 = cpu(), time.perf_counter(), switches()
    fd = os.open(path, flags, 0o600)
    try:
        os.ftruncate(fd, size)
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for i, offset in enumerate(range(0, size, chunk)):
            n = min(chunk, size - offset)
            buf = buffers[i % len(buffers)]
            buf[:8] = offset.to_bytes(8, "little")  # every chunk differs
            libc.fallocate(fd, 0, offset, n)
            view = memoryview(buf)[:n]
            if os.pwrite(fd, view, offset) != n:
                raise OSError("short write")
            if kind == "direct-hash":
                hasher.update(view)
            if not direct:
                libc.sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)
        os.fsync(fd)
        c1, w1, s1 = cpu(), time.perf_counter(), switches()
        if kind == "buffered":
            window = 4 << 20
            for offset in range(0, size, window):
                with mmap.mmap(
                    fd, min(window, size - offset), prot=mmap.PROT_READ, offset=offset
                ) as v:
                    hasher.update(v)
        elif kind == "direct":
            window = 4 << 20
            rbuf = mmap.mmap(-1, window)
            for offset in range(0, size, window):
                got = os.preadv(fd, [rbuf], offset)
                hasher.update(memoryview(rbuf)[:got])
            rbuf.close()
        hasher.digest()
    finally:
        os.close(fd)
        os.unlink(path)
    c2, w2 = cpu(), time.perf_counter()
    gib = size / (1 << 30)
    return {
        "write_cpu": (c1 - c0) / gib,
        "write_wall": (w1 - w0) / gib,
        "check_cpu": (c2 - c1) / gib,
        "check_wall": (w2 - w1) / gib,
        "pages": (vmstat("pgalloc_normal") - pages0) / (size / 4096),
        "switches": (s1 - s0) / gib,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--chunk", default="1M")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--kinds", default="buffered,direct,direct-hash")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    args = parser.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    kinds = args.kinds.split(",")
    buffers = [mmap.mmap(-1, chunk) for _ in range(4)]  # page-aligned, reused
    for b in buffers:
        b.write(os.urandom(chunk))
    path = os.path.join(args.dir, f".direct-bench-{os.getpid()}")
    print("run kind          write CPU s/GiB  wall s/GiB  check CPU  check wall", end="")
    print("  pages/page  switches/GiB (write)")
    for r in range(args.runs):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            try:
                m = run(kind, path, size, chunk, buffers)
            except OSError as exc:
                print(f"{r + 1:3} {kind:13} {exc}")
                continue
            print(
                f"{r + 1:3} {kind:13} {m['write_cpu']:14.3f} {m['write_wall']:11.3f}"
                f" {m['check_cpu']:10.3f} {m['check_wall']:11.3f} {m['pages']:10.2f}"
                f" {m['switches']:10.0f}",
                flush=True,
            )
            time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
