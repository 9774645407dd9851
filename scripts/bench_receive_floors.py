"""What each step of the receiving node costs by itself, per GiB: the
floors under the node's per-thread CPU (``scripts/bench.py`` prints that).

Each step runs alone on this process's thread, on the receiver's own code
where it has one, with the chunk size given (1 MiB, the default):

- ``decrypt``: ``TransferKeys.open_chunk_into`` of every chunk into a
  reused page-aligned buffer (the pc-receiver thread's AES-GCM);
- ``blake3``: BLAKE3 on one core over a buffer in cache (the read-back's
  hash without its reads);
- ``socket``: the chunks as ZeroMQ messages over a Unix socket from a
  child process, CPU of this process (ZeroMQ's I/O thread copies them out
  of the kernel; the node's ``ZMQbg/IO/1``);
- ``write``: the writer's direct writes (``O_DIRECT`` from a page-aligned
  buffer, each chunk's blocks allocated first) into ``--dir``, then fsync;
- ``read-back``: ``hash_direct`` of that file (the final check, its
  reader threads included: CPU of the whole process).

Every run prints every step with the load average, then the medians.
The node spends more than the sum (its Python per chunk and message, and
data that is no longer in the cache when the next step takes it).

    .venv/bin/python scripts/bench_receive_floors.py [--size 1G] [--runs 3]
        [--dir /tmp] [--chunk-size 1M]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors import file_writer
from peercrypt.crypto.transfer import TransferKeys
from peercrypt.testing.nodes import parse_size

_SENDER = """
import os, sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
block = os.urandom(int(sys.argv[2]) + 16)
for _ in range(int(sys.argv[3])):
    s.send_multipart([b"h" * 64, block], copy=False)
s.close(linger=-1); ctx.term()
"""


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def decrypt(size: int, chunk: int) -> float:
    keys = TransferKeys(bytes(16), bytes(range(32)), bytes(range(32)))
    plain = os.urandom(chunk)
    nonce, sealed = keys.seal_chunk(0, False, plain)
    out = memoryview(mmap.mmap(-1, chunk))
    started = time.thread_time()
    for _ in range(size // chunk):
        keys.open_chunk_into(0, False, nonce, sealed, out)
    return time.thread_time() - started


def hash_only(size: int, chunk: int) -> float:
    block = memoryview(os.urandom(file_writer.HASH_WINDOW))
    hasher = blake3.blake3()
    started = time.thread_time()
    for _ in range(size // len(block)):
        hasher.update(block)
    return time.thread_time() - started


def socket_copy(size: int, chunk: int, root: Path) -> float:
    ctx: zmq.Context[object] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    address = f"ipc://{root}/floors.sock"
    sock.bind(address)
    count = size // chunk
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, address, str(chunk), str(count)])
    try:
        started = cpu_now()
        for _ in range(count):
            if not sock.poll(60_000):
                raise SystemExit("socket: the sender stopped")
            sock.recv_multipart(copy=False)
        return cpu_now() - started
    finally:
        sender.wait(60)
        sock.close(linger=0)
        ctx.term()


def write_direct(size: int, chunk: int, path: Path) -> float:
    buffer = memoryview(mmap.mmap(-1, chunk))
    buffer[:] = os.urandom(chunk)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        direct = file_writer.open_direct(fd)
        if direct is None:
            raise SystemExit(f"write: {path.parent} takes no O_DIRECT (tmpfs?)")
        allocate = file_writer._block_allocator()
        started = time.thread_time()
        for offset in range(0, size, chunk):
            allocate(fd, offset, chunk)
            os.pwrite(direct, buffer, offset)
        spent = time.thread_time() - started
        os.fsync(fd)
        os.close(direct)
        return spent
    finally:
        os.close(fd)


def read_back(size: int, path: Path) -> float:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        started = cpu_now()
        file_writer.hash_direct(fd, size)
        return cpu_now() - started
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp", help="where the written file goes (not tmpfs)")
    parser.add_argument("--chunk-size", default="1M")
    args = parser.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk_size)
    size -= size % chunk
    gib = size / 2**30
    steps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        part = Path(root) / "part"
        for run in range(1, args.runs + 1):
            row = {
                "decrypt": decrypt(size, chunk),
                "blake3": hash_only(size, chunk),
                "socket": socket_copy(size, chunk, Path(root)),
                "write": write_direct(size, chunk, part),
                "read-back": read_back(size, part),
            }
            for name, seconds in row.items():
                steps.setdefault(name, []).append(seconds / gib)
            shown = " | ".join(f"{k} {v / gib:.3f}" for k, v in row.items())
            print(f"run {run}, load {os.getloadavg()[0]:.1f}: {shown}", flush=True)
            part.unlink()
    print(f"medians of {args.runs} runs, CPU s per GiB, chunks of {args.chunk_size}:")
    for name, values in steps.items():
        print(f"  {name:10s} {statistics.median(values):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
