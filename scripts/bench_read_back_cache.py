"""The final check's read-back from the page cache (``hash_file``: the part
on tmpfs, or written without ``O_DIRECT``), CPU and wall seconds per GiB,
this tree against another (``--tree``), interleaved (the read-back from
the disk, ``hash_direct``: ``scripts/bench_read_back.py``).

Each run hashes one file of ``--size`` random bytes in ``--dir`` (tmpfs by
default: the page cache is all there is) with each tree's
``actors.file_writer.hash_file``, in a fresh process of its own (CPU of that
process: BLAKE3's threads included), the order alternated; every run and
the load average are printed, then the medians.

    .venv/bin/python scripts/bench_read_back_cache.py --tree /tmp/before [--size 1G]
        [--runs 5] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peercrypt.testing.nodes import parse_size

HERE = Path(__file__).resolve().parent.parent
_CHILD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from actors.file_writer import hash_file
fd = os.open(sys.argv[2], os.O_RDONLY)
t0, w0 = os.times(), time.monotonic()
digest = hash_file(fd, int(sys.argv[3]))
t1, w1 = os.times(), time.monotonic()
print(t1.user + t1.system - t0.user - t0.system, w1 - w0, digest.hex())
"""


def one(tree: Path, path: Path, size: int) -> tuple[float, float, str]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(path), str(size)],
        capture_output=True, text=True, check=True, timeout=600, cwd=tree,
    ).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1]), out[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", required=True, help="the other tree (absolute path)")
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    size = parse_size(args.size)
    gib = size / 2**30
    trees = {"this": HERE, "other": Path(args.tree)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        path = Path(root) / "part"
        with open(path, "wb") as f:
            for _ in range(0, size, 1 << 24):
                f.write(os.urandom(min(1 << 24, size - f.tell())))
        for run in range(1, args.runs + 1):
            order = list(trees) if run % 2 else list(trees)[::-1]
            digests = set()
            for name in order:
                cpu, wall, digest = one(trees[name], path, size)
                digests.add(digest)
                results[name].append((cpu / gib, wall / gib))
                load = os.getloadavg()[0]
                print(f"run {run} {name:5s} load {load:4.1f}: CPU {cpu / gib:.3f} s/GiB, "
                      f"wall {wall / gib:.3f} s/GiB", flush=True)  # fmt: skip
            assert len(digests) == 1, "the trees' hashes differ"
    for name, values in results.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"{name} ({trees[name]}): median CPU {cpu:.3f} s/GiB, wall {wall:.3f} s/GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
