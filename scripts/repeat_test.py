#!/usr/bin/env python3
"""Run one test again and again; count passes, failures and node aborts.

For faults that show up in some runs only (a race with the kernel or an I/O
thread): each run gets its own base folder, and after it every node log
there is searched for an abort of libzmq or of the interpreter.

    .venv/bin/python scripts/repeat_test.py \\
        tests/test_send_faults_e2e.py::test_a_frozen_receiver_ends_the_send_at_its_timeout \\
        --runs 20

Prints one line per run and a summary; exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABORTS = ("Assertion failed", "Fatal Python error", "Aborted")
RUN_TIMEOUT = 600.0
MAX_ERROR_LINES = 6


def aborts_in(folder: Path) -> list[str]:
    """Lines of node logs under ``folder`` that tell of an abort."""
    found = []
    for log in folder.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if any(word in line for word in ABORTS):
                found.append(f"{log.relative_to(folder)}: {line.strip()}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", help="a pytest node id")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the folders of failed runs")
    args = parser.parse_args()
    env = dict(os.environ)
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    failed = aborted = 0
    for run in range(1, args.runs + 1):
        base = Path(tempfile.mkdtemp(prefix="repeat-"))
        started = time.monotonic()
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        argv += ["--basetemp", str(base / "t"), args.test]
        try:
            proc = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
            )
            lines = proc.stdout.strip().splitlines()
            ok, tail = proc.returncode == 0, lines[-1:]
            errors = [line for line in lines if line.startswith("E ")][:MAX_ERROR_LINES]
        except subprocess.TimeoutExpired:
            ok, tail = False, [f"no result within {RUN_TIMEOUT:.0f} s"]
            errors = []
        found = aborts_in(base)
        failed += not ok
        aborted += bool(found)
        verdict = "pass" if ok else "FAIL"
        print(f"run {run}: {verdict} in {time.monotonic() - started:.1f} s; {' '.join(tail)}")
        for line in errors:
            print(f"  {line[:300]}")
        for line in found:
            print(f"  abort: {line}")
        if ok or not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"  kept: {base}")
        sys.stdout.flush()
    passed = args.runs - failed
    print(f"{args.runs} runs: {passed} passed, {failed} failed, {aborted} with an abort")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
