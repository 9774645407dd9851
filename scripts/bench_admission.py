"""What one offer's admission costs the space ledger with many kept parts.

``SpaceLedger.admit`` of a 1 MiB offer with ``--kept`` (100,000) kept parts
of 4 KiB and no quota, on a disk with room: the ms per admission (mean of
``--rounds``). ``--tree DIR`` runs the same against the ledger of an
export of older code (``git archive REF | tar -x -C DIR``).

    .venv/bin/python scripts/bench_admission.py [--kept 100000] [--rounds 20] [--tree DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(kept: int, rounds: int) -> float:
    from peercrypt.core.space import Quotas, SpaceLedger

    ledger = SpaceLedger(Quotas())
    for k in range(kept):
        ledger.keep(f"part{k}", b"p" * 32, 4096, 4096, float(k))
    started = time.perf_counter()
    for _ in range(rounds):
        verdict = ledger.admit(b"q" * 32, 1 << 20, 1 << 40)
        assert verdict.ok and not verdict.evict
    return (time.perf_counter() - started) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kept", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tree", type=Path, help="also measure the code of this source tree")
    parser.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alone:
        print(f"{measure(args.kept, args.rounds):.3f}")
        return
    trees = [("this code", ROOT)] + ([("the tree", args.tree)] if args.tree else [])
    for label, tree in trees:
        argv = [
            sys.executable,
            __file__,
            "--alone",
            f"--kept={args.kept}",
            f"--rounds={args.rounds}",
        ]
        out = subprocess.run(
            argv,
            cwd=tree,
            env={"PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"{label}: {float(out.stdout):.3f} ms per admission, {args.kept} parts kept")


if __name__ == "__main__":
    main()
