"""The CPU a node's start costs: ``import peercrypt.node``, and a real node
(``peercrypt node --port 0`` on loopback with a network key) from its exec
until its "listening on" line, read from /proc/PID/stat.

    .venv/bin/python scripts/bench_start.py --runs 15 [--tree OTHER_CHECKOUT ...]

With ``--tree DIR`` (absolute; e.g. an export of an older commit,
byte-compiled as this one is) each run measures that tree and this one in
turn: an interleaved before/after on a shared, loaded machine. Prints the
median and every run of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peercrypt.crypto.identity import new_network_key

HERE = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def import_cpu(tree: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import peercrypt.node"], env=env, cwd=tree, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def node_cpu(tree: Path, key: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fd = os.open(d / "key", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        log_path = d / "log"
        with open(log_path, "wb") as log:
            argv = [sys.executable, "-m", "peercrypt", "--data-dir", str(d / "n"), "node",
                    "--host", "127.0.0.1", "--port", "0",
                    "--network-key-file", str(d / "key")]  # fmt: skip
            proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while b"listening on" not in log_path.read_bytes():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"node of {tree} did not start:\n{log_path.read_text()}")
                    time.sleep(0.01)
                return process_cpu(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    args = parser.parse_args()
    trees = [*args.tree, HERE]
    key = new_network_key()
    results: dict[tuple[Path, str], list[float]] = {}
    for _ in range(args.runs):
        for tree in trees:
            results.setdefault((tree, "import"), []).append(import_cpu(tree))
            results.setdefault((tree, "node"), []).append(node_cpu(tree, key))
    for (tree, what), runs in results.items():
        every = " ".join(f"{r:.2f}" for r in runs)
        print(f"{what:6s} {statistics.median(runs):.3f} CPU s (median)  {tree}  runs: {every}")


if __name__ == "__main__":
    main()
