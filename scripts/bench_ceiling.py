"""The ceiling of this machine for the transfer pipeline, without PeerCrypt.

    .venv/bin/python scripts/bench_ceiling.py [--size-mib 1024] [--runs 3] [--dest /dev/shm]

Two processes do only the essential work of one transfer, 1 MiB chunks:

- sender: ``pread`` the file, BLAKE3 it in file order, AES-256-GCM seal each
  chunk (``cryptography``'s AESGCM, own nonce space per thread), send it on a
  pyzmq PUSH socket over TCP loopback (``copy=False``);
- receiver: receive, open, write at the chunk's offset (starting its
  writeback at once with ``sync_file_range``, as PeerCrypt does), BLAKE3 the
  file in order, fsync; the hashes must match.

Variants, interleaved run by run (ABCD, then DCBA, ...):

- ``1x1``: one thread per side does everything (plus ZeroMQ's I/O thread);
- ``2x2``: two worker threads per side, each with its own socket (its own TCP
  connection) and half the chunks; the in-order hash runs in a third thread
  per side from the plaintexts the workers hand it (nothing read twice);
- ``2x1``: two sender workers (two connections) into one receiver thread
  (the shape of PeerCrypt's parallel mode);
- sink ``pwrite`` (decrypt to a buffer, ``pwrite`` it) or ``mmap`` (decrypt
  straight into a shared mapping of the file: one copy less).

Before every run of a variant, the same step (``--prepare``, default
``settle``: scripts/leg_conditions.py), so that none gets cheaper or dearer
pages for the page cache by what ran before it. Printed: MiB/s (first chunk sent to receiver's
fsync done) and CPU seconds per GiB of each process (``getrusage``; the
receiver's, and of it the thread CPU spent writing the file), medians over
the runs.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import multiprocessing as mp
import os
import queue
import resource
import statistics
import struct
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import blake3
import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leg_conditions  # the sibling script

MiB = 2**20
CHUNK = MiB
TAG = 16
HWM = 8  # messages queued per socket (bounds memory like the credit does)
_HEADER = struct.Struct(">QIQ")  # index, lane, counter
KEY = bytes(range(32))
TID = b"t" * 16


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class InOrderHasher:
    """BLAKE3 in file order from chunks handed over in any order (thread)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.hasher = blake3.blake3()
        self.jobs: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending: dict[int, Any] = {}
        nxt = 0
        while nxt < self.total:
            index, data = self.jobs.get()
            pending[index] = data
            while nxt in pending:
                self.hasher.update(pending.pop(nxt))
                nxt += 1

    def digest(self) -> bytes:
        self.thread.join()
        d: bytes = self.hasher.digest()
        return d


def sender(path: str, ports: list[int], threads: int, go: Connection) -> None:
    """``threads`` workers; worker ``i`` sends on a socket to ``ports[i % len(ports)]``."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    total = -(-size // CHUNK)
    ctx = zmq.Context()
    socks = []
    for lane in range(threads):
        s = ctx.socket(zmq.PUSH)
        s.sndhwm = HWM
        s.linger = -1
        s.connect(f"tcp://127.0.0.1:{ports[lane % len(ports)]}")
        socks.append(s)
    go.recv()
    cpu0 = cpu_seconds()
    hasher = InOrderHasher(total) if threads > 1 else None
    inline = blake3.blake3()

    def work(lane: int) -> None:
        aead = AESGCM(KEY)
        sock = socks[lane]
        for counter, index in enumerate(range(lane, total, threads), 1):
            data = os.pread(fd, CHUNK, index * CHUNK)
            if hasher is not None:
                hasher.jobs.put((index, data))
            else:
                inline.update(data)
            header = _HEADER.pack(index, lane + 1, counter)
            nonce = header[8:]
            sealed = aead.encrypt(nonce, data, TID + header[:8])
            sock.send_multipart([header, sealed], copy=False)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    digest = hasher.digest() if hasher is not None else inline.digest()
    for s in socks:
        s.close()
    ctx.term()
    go.send((digest, cpu_seconds() - cpu0))


def receiver(dest: str, size: int, threads: int, sink: str, port_out: Connection) -> None:
    total = -(-size // CHUNK)
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    view = None
    if sink == "mmap":
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(mapping)
    ctx = zmq.Context()
    socks = []
    for _ in range(threads):
        s = ctx.socket(zmq.PULL)
        s.rcvhwm = HWM
        port = s.bind_to_random_port("tcp://127.0.0.1")
        socks.append((s, port))
    port_out.send([p for _, p in socks])
    hasher = InOrderHasher(total) if threads > 1 else None
    inline = blake3.blake3()
    started: list[float] = []
    written_cpu = [0.0] * threads  # each worker's thread CPU in writing (leg_conditions)
    cpu0 = cpu_seconds()

    def work(lane: int) -> None:
        aead = AESGCM(KEY)
        sock = socks[lane][0]
        for _ in range(lane, total, threads):
            header, sealed = sock.recv_multipart(copy=False)
            if not started:
                started.append(time.monotonic())
            index = _HEADER.unpack(header.buffer)[0]
            nonce = header.buffer[8:]
            aad = TID + header.bytes[:8]
            offset = index * CHUNK
            length = min(CHUNK, size - offset)
            data: Any
            if view is not None:
                data = view[offset : offset + length]
                before = time.thread_time()  # the decryption writes the mapping
                aead.decrypt_into(nonce, sealed.buffer, aad, data)
            else:
                data = aead.decrypt(nonce, sealed.buffer, aad)
                before = time.thread_time()
                os.pwrite(fd, data, offset)
                # start writeback at once, as PeerCrypt's writer does (Linux)
                _libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
            written_cpu[lane] += time.thread_time() - before
            if hasher is not None:
                hasher.jobs.put((index, data))
            else:
                inline.update(data)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    digest = hasher.digest() if hasher is not None else inline.digest()
    os.fsync(fd)
    elapsed = time.monotonic() - started[0]
    if view is not None:
        view.release()
        mapping.close()
    os.close(fd)
    for s, _ in socks:
        s.close(linger=0)
    ctx.term()
    port_out.send((digest, elapsed, cpu_seconds() - cpu0, sum(written_cpu)))


def run_once(
    path: Path, dest: Path, s_threads: int, r_threads: int, sink: str
) -> tuple[float, float, float, float]:
    """(MiB/s, sender CPU s/GiB, receiver CPU s/GiB, of which in writing the file)"""
    size = path.stat().st_size
    gib = size / 2**30
    mpc = mp.get_context("fork")
    r_parent, r_child = mpc.Pipe()
    s_parent, s_child = mpc.Pipe()
    rp = mpc.Process(target=receiver, args=(str(dest), size, r_threads, sink, r_child))
    rp.start()
    if not r_parent.poll(30):
        raise RuntimeError("receiver did not start")
    ports = r_parent.recv()
    sp = mpc.Process(target=sender, args=(str(path), ports, s_threads, s_child))
    sp.start()
    s_parent.send("go")
    if not r_parent.poll(300) or not s_parent.poll(60):
        rp.kill()
        sp.kill()
        raise RuntimeError("transfer did not finish in time")
    r_digest, elapsed, r_cpu, w_cpu = r_parent.recv()
    s_digest, s_cpu = s_parent.recv()
    rp.join(30)
    sp.join(30)
    dest.unlink()
    if r_digest != s_digest:
        raise RuntimeError("hash mismatch")
    return size / MiB / elapsed, s_cpu / gib, r_cpu / gib, w_cpu / gib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dest", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument(
        "--prepare",
        choices=leg_conditions.PREPARATIONS,
        default="settle",
        help="the step before every run of a variant (scripts/leg_conditions.py)",
    )
    parser.add_argument(
        "--variants",
        default="1x1:pwrite,2x1:pwrite,2x2:pwrite,1x1:mmap,2x2:mmap",
        help="SENDER_THREADSxRECEIVER_THREADS:SINK,...",
    )
    args = parser.parse_args()
    variants = []
    for v in args.variants.split(","):
        threads, sink = v.split(":")
        s_threads, r_threads = threads.split("x")
        variants.append((int(s_threads), int(r_threads), sink))
    results: dict[tuple[int, int, str], list[tuple[float, float, float, float]]] = {
        v: [] for v in variants
    }
    with tempfile.TemporaryDirectory(prefix="pc-ceiling-") as tmp:
        path = Path(tmp) / "src.bin"
        block = os.urandom(MiB)
        with path.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(block)
        dest = args.dest / f"pc-ceiling-{os.getpid()}.bin"
        for _ in range(args.warmup):  # the first transfer after start-up is slow here
            run_once(path, dest, *variants[0])
        for run in range(args.runs):
            order = variants if run % 2 == 0 else variants[::-1]
            for v in order:
                leg_conditions.prepare(args.prepare, args.size_mib * MiB)
                results[v].append(run_once(path, dest, *v))
                rate, s_cpu, r_cpu, w_cpu = results[v][-1]
                print(
                    f"  run {run} {v[0]}x{v[1]}:{v[2]:6} {rate:7.0f} MiB/s  "
                    f"CPU s/GiB sender {s_cpu:.2f} receiver {r_cpu:.2f} "
                    f"(writing {w_cpu:.2f})",
                    flush=True,
                )
    base = statistics.median(r[0] for r in results[variants[0]])
    first = f"{variants[0][0]}x{variants[0][1]}:{variants[0][2]}"
    for (s_threads, r_threads, sink), rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        print(
            f"ceiling {s_threads}x{r_threads} {sink:6} into {args.dest}: {rate:6.0f} MiB/s "
            f"({rate / base:.2f}x of {first}), "
            f"CPU s/GiB sender {statistics.median(r[1] for r in rows):.2f} "
            f"receiver {statistics.median(r[2] for r in rows):.2f}; runs "
            f"{[round(r[0]) for r in rows]}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
