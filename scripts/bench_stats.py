"""Does recording the statistics history slow a transfer? (docs/statistics.md)

    .venv/bin/python scripts/bench_stats.py [--size-mib 1024] [--runs 4]

Two sending nodes on loopback, one recording (the default) and one started
with ``--no-stats``, send the same file to one receiver (also ``--no-stats``,
so only the sender's recording differs), interleaved ABBA after one
unmeasured warm-up each. Prints each run's seconds (offer to verified) and
the sending node's CPU seconds for it (utime + stime from /proc: what
recording costs, and far less disturbed than wall time when the machine is
shared), and the medians; the floor: the recording sender's median time and
CPU within 3% of the other's. Also prints the rows the recording sender kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.history.db import db_path, get_samples, list_transfers, open_reader
from peercrypt.testing.nodes import NodeProcess, random_file

MiB = 2**20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=4, help="measured runs per side (even)")
    args = parser.parse_args()
    key = new_network_key()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        path = random_file(root / "payload.bin", args.size_mib * MiB)
        with (
            NodeProcess(root / "recv", network_key=key, extra_args=("--no-stats",)) as recv,
            NodeProcess(root / "rec", network_key=key) as recording,
            NodeProcess(root / "plain", network_key=key, extra_args=("--no-stats",)) as plain,
        ):
            senders = {"recording": recording, "no-stats": plain}
            times: dict[str, list[float]] = {name: [] for name in senders}
            cpus: dict[str, list[float]] = {name: [] for name in senders}

            def send(name: str) -> tuple[float, float]:
                before = cpu_seconds(senders[name].pid)
                code, result = senders[name].send_to(path, recv, "--no-progress", timeout=900)
                if code != 0:
                    raise RuntimeError(f"send failed: {result}")
                cpu = cpu_seconds(senders[name].pid) - before
                (recv.inbox / result["stored_as"]).unlink()
                return float(result["seconds"]), cpu

            for name in senders:
                send(name)  # warm-up: page cache, first connections
            order = ["recording", "no-stats", "no-stats", "recording"] * (args.runs // 2)
            for name in order:
                seconds, cpu = send(name)
                times[name].append(seconds)
                cpus[name].append(cpu)
                print(
                    f"{name:10} {seconds:6.3f} s  {args.size_mib / seconds:7.1f} MiB/s  "
                    f"sender CPU {cpu:6.3f} s"
                )
            with open_reader(db_path(recording.data_dir)) as conn:
                rows = list_transfers(conn)
                points = [len(get_samples(conn, r["id"])) for r in rows]
        on, off = (statistics.median(times[n]) for n in ("recording", "no-stats"))
        print(
            f"median: recording {on:.3f} s, no-stats {off:.3f} s, "
            f"recording/no-stats = {on / off:.3f} (floor <= 1.03)"
        )
        con, coff = (statistics.median(cpus[n]) for n in ("recording", "no-stats"))
        print(
            f"median sender CPU: recording {con:.3f} s, no-stats {coff:.3f} s, "
            f"ratio {con / coff:.3f} (floor <= 1.03)"
        )
        print(f"rows kept by the recording sender: {len(rows)} transfers, points {points}")


if __name__ == "__main__":
    main()
