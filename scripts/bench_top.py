"""What does an open ``peercrypt top`` cost the node? (docs/statistics.md)

    .venv/bin/python scripts/bench_top.py [--seconds 30] [--interval 1]

A node sends a file paced at 2 MiB/s to another node for the whole
measurement (so ``top`` has a running transfer, peers and flows to show).
The sending node's CPU time (utime + stime from /proc/PID/stat) is sampled
over ``--seconds`` without ``top``, then with ``top`` running in a
pseudo-terminal (pexpect, 40x160), then without again. Prints each window's
CPU share of one core and the difference; the floor: top adds < 1% of a core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pexpect

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, cli_env, random_file, start_cli

MiB = 2**20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(pid: int, seconds: float) -> float:
    """The process's CPU share of one core over ``seconds``."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    key = new_network_key()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        rate = 2 * MiB
        path = random_file(root / "paced.bin", int(rate * (3 * args.seconds + 20)))
        with (
            NodeProcess(root / "recv", network_key=key) as recv,
            NodeProcess(root / "send", network_key=key) as node,
        ):
            send = start_cli(
                "send", path, recv.host, str(recv.port), "-r", str(rate), data_dir=node.data_dir
            )
            try:
                time.sleep(3)  # the transfer is running
                before = window(node.pid, args.seconds)
                top = pexpect.spawn(
                    sys.executable,
                    ["-m", "peercrypt", "--data-dir", str(node.data_dir), "top",
                     "--interval", str(args.interval)],
                    dimensions=(40, 160), env=cli_env(), encoding="utf-8",
                )  # fmt: skip
                try:
                    top.expect("paced.bin", timeout=15)
                    during = window(node.pid, args.seconds)
                    top.send("q")
                    top.expect(pexpect.EOF, timeout=10)
                finally:
                    top.close(force=True)
                after = window(node.pid, args.seconds)
            finally:
                send.kill()
                send.wait(10)
    idle = (before + after) / 2
    print(f"node CPU without top: {before:.2%} then {after:.2%} of a core")
    print(f"node CPU with top (every {args.interval:g} s): {during:.2%} of a core")
    print(f"top adds {during - idle:+.2%} of a core (floor < 1%)")


if __name__ == "__main__":
    main()
