"""The final check's tail: the wall time from the last chunk written to the
verdict, for a fresh part (read back as it is written) and for a kept one
(fsync, then all of it read back), variants alternated run by run.

A real writer (``actors.file_writer.FileWriter``) in this process writes one
part of ``--size`` random bytes into ``--dir`` in chunks of ``--chunk``
(through its pool's buffers, as the receiver hands them over), at most at
``--rate`` bytes per second (a transfer's pace; 0: as fast as it takes
them), then finishes it. Printed per run with the load average: the writing
phase's MiB/s, the tail (finish to verdict), and the process's CPU seconds
per GiB (user+sys, all threads); then the medians. Every digest must be the
content's. Where ``--dir``'s filesystem takes ``O_DIRECT`` the writer
writes the part directly and a fresh part too is read back whole after its
fsync (``FileWriter.watch``): ``--no-direct`` writes through the page cache
(as ``--no-direct-writes``), where a fresh part is read back as written.

    .venv/bin/python scripts/bench_check_tail.py [--size 1G] [--runs 3] [--dir /tmp]
        [--chunk 4M] [--rate 400M] [--no-direct]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.file_writer import FileWriter, Finished, Written
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.testing.nodes import parse_size

WAIT = 600.0


def run(
    directory: Path, data: bytes, chunk: int, rate: float, fresh: bool, direct: bool = True
) -> tuple[float, ...]:
    ctx: zmq.Context[Any] = zmq.Context()
    address = f"inproc://tail-{time.monotonic_ns()}"
    sock = ctx.socket(zmq.PAIR)
    sock.bind(address)
    writer = FileWriter(ctx, address, 64 << 20, direct=direct)
    writer.start()

    def result() -> Any:
        deadline = time.monotonic() + WAIT
        while True:
            with contextlib.suppress(queue.Empty):
                return writer.results.get_nowait()
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not sock.poll(left):
                raise TimeoutError("no result from the writer")
            sock.recv()

    size = len(data)
    total = -(-size // chunk)
    path = directory / f".tail-{os.getpid()}.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        watched = writer.watch(fd) if fresh else None
        writer.open(b"t", fd, chunk, size, ChunkBitmap(total), fresh=watched)
        cpu, start = os.times(), time.perf_counter()
        done = 0  # Written results taken

        def take_written() -> None:
            nonlocal done
            got = result()
            assert isinstance(got, Written), got
            done += 1

        for index in range(total):
            piece = data[index * chunk : (index + 1) * chunk]
            if rate:
                due = start + (index * chunk) / rate
                while (now := time.perf_counter()) < due:
                    time.sleep(due - now)  # (the transfer's pace, not a wait for a result)
            buffer = writer.buffers.take(len(piece))
            buffer[:] = piece
            while not writer.write(b"t", index, buffer):
                take_written()  # (the queue is full: a chunk written frees room)
        while done < total:
            take_written()
        wrote = time.perf_counter()
        writer.finish(b"t")
        verdict = result()
        end, after = time.perf_counter(), os.times()
        assert isinstance(verdict, Finished), verdict
        assert verdict.digest == blake3.blake3(data).digest(), "wrong digest"
        early = writer.early_checks
    finally:
        writer.close(b"t", keep=False)  # (closes fd; applied before the stop)
        writer.stop()
        sock.close(linger=0)
        ctx.term()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    cpu_s = (after.user - cpu.user) + (after.system - cpu.system)
    mib = size / (1 << 20)
    return mib / (wrote - start), end - wrote, cpu_s / (size / (1 << 30)), float(early)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--chunk", default="4M")
    parser.add_argument("--rate", default="400M", help="bytes per second at most (0: no cap)")
    parser.add_argument("--no-direct", action="store_true", help="write through the page cache")
    args = parser.parse_args()
    size, chunk, rate = parse_size(args.size), parse_size(args.chunk), parse_size(args.rate)
    data = os.urandom(size)
    seen: dict[str, list[tuple[float, ...]]] = {"fresh": [], "kept": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for n in range(args.runs):
            for name in ("fresh", "kept") if n % 2 == 0 else ("kept", "fresh"):
                mibs, tail, cpu, early = run(
                    Path(d), data, chunk, rate, name == "fresh", not args.no_direct
                )
                seen[name].append((mibs, tail, cpu))
                load = os.getloadavg()[0]
                print(
                    f"run {n + 1} {name:5}: writing {mibs:6.0f} MiB/s, tail {tail:5.2f} s,"
                    f" CPU {cpu:4.2f} s/GiB, early verdict {int(early)}, load {load:.1f}",
                    flush=True,
                )
    for name, rows in seen.items():
        mibs, tail, cpu = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"median {name:5}: writing {mibs:.0f} MiB/s, tail {tail:.2f} s, CPU {cpu:.2f} s/GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
