"""Benchmark: acks of a sparse transfer of 20 million chunks.

Builds the receiver's ack (cumulative index + up to 64 held ranges) and
applies it on the sender side, for bitmaps of growing size with the same
sparse shape (chunk 0 missing, 70 short held ranges spread over the file).
The goal (docs/security.md): under 10 ms at 20 million chunks, and the
sender's cumulative acks not quadratic.

    .venv/bin/python scripts/bench_bitmap.py [--repeat N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap


def sparse(total: int) -> ChunkBitmap:
    bm = ChunkBitmap(total)
    step = total // 71
    for k in range(1, 71):
        bm.add_range(k * step, k * step + 3)
    return bm


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(total: int, repeat: int) -> tuple[float, float, float]:
    """(build the ack, apply it on the sender, one more cumulative chunk)."""
    receiver = sparse(total)
    sack = receiver.ranges(receiver.cumulative, limit=MAX_RANGES)
    build = best(lambda: receiver.ranges(receiver.cumulative, limit=MAX_RANGES), repeat)
    sender = ChunkBitmap(total)
    apply = best(lambda: sender.add_ranges([(0, receiver.cumulative), *sack]), repeat)
    grow = ChunkBitmap(total)
    grow.add_range(0, total // 2)
    step = best(lambda: grow.add_range(0, total // 2 + 1), repeat)
    return build, apply, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'chunks':>12} {'build ack':>12} {'apply ack':>12} {'cumulative':>12}")
    for total in (1_000, 100_000, 1_000_000, 20_000_000):
        print(
            f"{total:>12,} " + " ".join(f"{t * 1e3:>10.3f}ms" for t in measure(total, args.repeat))
        )


if __name__ == "__main__":
    main()
