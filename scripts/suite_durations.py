"""Per-file times of a whole test run, and the order the suite hands files out in.

Reads the output of a run with ``--durations=0`` (every setup, call and
teardown of at least 5 ms), sums each test file's phases, prints the
longest files, and the end of a simulated run on ``--workers`` workers that
take files one at a time as each becomes free: in the order of
``tests/durations.json`` (longest first, what ``tests/conftest.py`` does),
and by number of tests (xdist's own ``--loadscope-reorder``). The
simulation leaves out the machine (workers sharing 2 cores run slower
together than alone), so its ends are lower than a real run's; what it
compares is how long workers sit idle at the end.

    PYTEST_WORKERS=3 bash scripts/test.sh --durations=0 | tee /tmp/suite.log
    .venv/bin/python scripts/suite_durations.py /tmp/suite.log [--write]

``--write`` replaces ``tests/durations.json`` with this run's times.
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
from collections import Counter
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "tests" / "durations.json"
LINE = re.compile(r"^\s*([0-9.]+)s (setup|call|teardown)\s+tests/([^:]+)::(\S+)")


def read(log: Path) -> tuple[dict[str, float], Counter[str]]:
    """(seconds per file, tests seen per file) of a ``--durations=0`` output."""
    seconds: dict[str, float] = {}
    tests: dict[str, set[str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            seconds[m[3]] = seconds.get(m[3], 0.0) + float(m[1])
            tests.setdefault(m[3], set()).add(m[4])
    return seconds, Counter({name: len(ids) for name, ids in tests.items()})


def makespan(order: list[str], seconds: dict[str, float], workers: int) -> tuple[float, float]:
    """(end of the last worker, end of the first to run out of files)."""
    free = [0.0] * workers
    for name in order:
        start = heapq.heappop(free)
        heapq.heappush(free, start + seconds.get(name, 0.0))
    return max(free), min(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="output of a run with --durations=0")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="write tests/durations.json")
    args = parser.parse_args()
    seconds, tests = read(args.log)
    if not seconds:
        raise SystemExit(f"no --durations lines in {args.log}")
    total = sum(seconds.values())
    print(f"{len(seconds)} files, {total:.0f} s of test phases")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {s:7.1f} s  {tests[name]:4d} tests  {name}")
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    default = sum(table.values()) / max(len(table), 1)
    orders = {
        "tests/durations.json, longest first": sorted(
            seconds, key=lambda n: (-table.get(n, default), n)
        ),
        "by number of tests (xdist's reorder)": sorted(seconds, key=lambda n: -tests[n]),
        "this run's times, longest first": sorted(seconds, key=lambda n: -seconds[n]),
    }
    print(f"simulated on {args.workers} workers (ideal {total / args.workers:.0f} s):")
    for label, order in orders.items():
        last, first = makespan(order, seconds, args.workers)
        print(f"  {label}: ends at {last:.0f} s, first worker idle from {first:.0f} s")
    if args.write:
        ordered = sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0]))
        TABLE.write_text(json.dumps({n: round(s, 1) for n, s in ordered}, indent=1) + "\n")
        print(f"wrote {TABLE}")


if __name__ == "__main__":
    main()
