"""What writing into memory the host does not back costs on this machine.

Not a benchmark of PeerCrypt: a check of the host under the tmpfs numbers.
It writes ``--size`` (3 GiB) of random bytes into a file under ``--dir``
(/dev/shm) in segments of ``--segment`` (256 MiB), printing each segment's
MiB/s and the writing thread's CPU seconds, removes it, waits ``--gap``
seconds and writes the same again, for each gap given.

On the VM this project is developed on, the first ~2.5 GiB of a write run
at ~2 GiB/s and every segment beyond at ~250 MiB/s, with about 8 times the
CPU: memory the guest has not used lately has to be backed by the host
again (the balloon driver reports free memory to it). Written again at once
after the removal, the whole size is fast; half a second later, what lies
beyond the ~2.5 GiB is slow again. A benchmark whose files in tmpfs and
page cache together pass that mark pays it in its last part and not in a
smaller run before or after it (docs/benchmarks.md, "64 at once:
the host's memory, and the cost per byte under load").

    .venv/bin/python scripts/host_memory.py [--size 3G] [--segment 256M]
        [--dir /dev/shm] [--gap 0 0.5 2 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from peercrypt.testing.nodes import parse_size

MiB = 1 << 20


def write(path: Path, size: int, segment: int) -> list[tuple[float, float]]:
    """(MiB/s, CPU s) of each segment of a ``size``-byte write of ``path``."""
    block = os.urandom(MiB)
    out = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // segment):
            started, cpu = time.perf_counter(), time.thread_time()
            for _ in range(segment // MiB):
                os.write(fd, block)
            out.append((segment / MiB / (time.perf_counter() - started), time.thread_time() - cpu))
    finally:
        os.close(fd)
    return out


def show(label: str, segments: list[tuple[float, float]]) -> None:
    rates = " ".join(f"{rate:.0f}" for rate, _ in segments)
    cpu = sum(c for _, c in segments)
    print(f"{label}: MiB/s per segment {rates}; CPU {cpu:.2f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="3G")
    parser.add_argument("--segment", default="256M")
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--gap", type=float, nargs="+", default=[0.0, 0.5, 2.0, 5.0])
    args = parser.parse_args()
    size, segment = parse_size(args.size), parse_size(args.segment)
    if segment < MiB or size < segment:
        parser.error("--segment must be at least 1 MiB and --size at least one segment")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="host-memory-") as tmp:
        path = Path(tmp) / "fill"
        for gap in args.gap:
            show("first ", write(path, size, segment))
            path.unlink()
            time.sleep(gap)
            show(f"after {gap:g} s", write(path, size, segment))
            path.unlink()
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
