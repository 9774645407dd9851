"""The final check's read-back from the disk (``hash_direct``): wall and CPU
seconds per GiB, variants alternated run by run.

Writes one file of ``--size`` random bytes into ``--dir`` (a filesystem
that takes ``O_DIRECT``: not tmpfs), fsyncs it, then reads it back with
``actors.file_writer.hash_direct`` as the receiver's final check does
(``O_DIRECT``, BLAKE3 on the calling thread) once per variant and run:
``--in-flight 1,3`` runs this tree's code with that many reads in flight
(``READS_IN_FLIGHT``), and ``--tree DIR`` adds that source tree's
``hash_direct`` (an export of an older commit) as it stands. Every run's
numbers are printed with the load average, then the medians; every
digest must be the file's. CPU is the process's user+sys (all threads).

    .venv/bin/python scripts/bench_read_back.py [--size 1G] [--runs 5] [--dir /tmp]
        [--in-flight 1,3] [--tree /tmp/before]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import actors.file_writer as file_writer  # this tree's
from peercrypt.testing.nodes import parse_size


def tree_hash_direct(tree: str) -> Callable[[int, int], bytes]:
    """``hash_direct`` of the source tree ``tree``, loaded beside this one's."""
    path = Path(tree) / "actors" / "file_writer.py"
    spec = importlib.util.spec_from_file_location("tree_file_writer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.hash_direct  # type: ignore[no-any-return]


def timed(path: Path, size: int, hasher: Callable[[int, int], bytes]) -> tuple[float, float, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        cpu, wall = os.times(), time.perf_counter()
        digest = hasher(fd, size)
        wall, after = time.perf_counter() - wall, os.times()
    finally:
        os.close(fd)
    return wall, (after.user - cpu.user) + (after.system - cpu.system), digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--in-flight", default="1,3", help="READS_IN_FLIGHT values, e.g. 1,3")
    parser.add_argument("--tree", help="also that source tree's hash_direct")
    args = parser.parse_args()
    size = parse_size(args.size)
    gib = size / 2**30
    variants: dict[str, Callable[[int, int], bytes]] = {}
    for n in (int(x) for x in args.in_flight.split(",")):

        def this(fd: int, size: int, n: int = n) -> bytes:
            file_writer.READS_IN_FLIGHT = n
            return file_writer.hash_direct(fd, size)

        variants[f"{n} in flight"] = this
    if args.tree:
        variants["--tree"] = tree_hash_direct(args.tree)
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        path = Path(root) / "part"
        expected = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(path, "wb") as f:
            for offset in range(0, size, 16 << 20):
                block = os.urandom(min(16 << 20, size - offset))
                expected.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        walls: dict[str, list[float]] = {k: [] for k in variants}
        cpus: dict[str, list[float]] = {k: [] for k in variants}
        for run in range(1, args.runs + 1):
            row = []
            for name, hasher in variants.items():
                wall, cpu, digest = timed(path, size, hasher)
                if digest != expected.digest():
                    raise SystemExit(f"{name}: the digest is not the file's")
                walls[name].append(wall / gib)
                cpus[name].append(cpu / gib)
                rate = size / 2**20 / wall
                row.append(f"{name} {wall / gib:.2f} s ({rate:.0f} MiB/s, CPU {cpu / gib:.2f})")
            print(f"run {run}, load {os.getloadavg()[0]:.1f}: " + " | ".join(row), flush=True)
    print(f"medians of {args.runs} runs, per GiB ({args.size} into {args.dir}):")
    for name in variants:
        print(
            f"  {name:12s} wall {statistics.median(walls[name]):.2f} s, "
            f"CPU {statistics.median(cpus[name]):.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
