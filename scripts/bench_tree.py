"""Many small files in one transfer: peercrypt vs tar over ssh and scp -r.

10,000 files of 4 KiB (100 folders of 100) by default. Two node processes
on loopback; each round runs, interleaved, the CLI's wall time of

- ``peercrypt send DIR 127.0.0.1 PORT`` (through the running sender node,
  to the receiving node; it exits once every file is verified and durable:
  one ``syncfs`` of the receiver's filesystem, no fsync per file),
- ``tar c DIR | ssh 127.0.0.1 'tar x -C DEST'`` and the same followed by
  ``sync -f DEST`` on the receiving side (what peercrypt's durability costs
  tar),
- ``scp -rq DIR 127.0.0.1:DEST``,

against an sshd of our own on a loopback port (a temporary host key and
client key; nothing of the machine's ssh configuration is used or changed).
Without an sshd binary (``apt-get install -y openssh-server``) the ssh rows
fall back to a local ``tar c | tar x`` pipe with ``sync -f``, and say so.
The receiving folder is emptied before each run. Printed: every run as it
ends (its wall time and files per second; for peercrypt also the CPU
seconds each node process spent on it, from /proc), then each way's median,
the load average before and after, and one JSON line with every run.

    .venv/bin/python scripts/bench_tree.py [--files 10000] [--size 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, blake3_file, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_sshd import LoopbackSshd  # the sibling script


def make_tree(root: Path, files: int, size: int) -> None:
    per = 100
    for n in range(files):
        folder = root / f"d{n // per:04}"
        if n % per == 0:
            folder.mkdir(parents=True)
        (folder / f"f{n % per:03}.bin").write_bytes(os.urandom(size))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def sh(command: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
        work = Path(tmp)
        src = work / "tree"
        make_tree(src, args.files, args.size)
        dest = work / "dest"
        key = new_network_key()
        receiver = NodeProcess(data_dir=work / "receiver", network_key=key).start()
        sender = NodeProcess(data_dir=work / "sender", network_key=key).start()
        sshd: LoopbackSshd | None = None
        try:
            sshd = LoopbackSshd(work)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"no sshd ({exc}); comparing with a local tar | tar pipe instead")
        times: dict[str, list[float]] = {}

        aside = work / "aside"  # earlier rounds' copies, deleted after the last round
        aside.mkdir()
        moved = itertools.count()

        def clean() -> None:
            # Renamed aside, not deleted: on ext4 without a journal (this VM's
            # disk) every file created soon after many deletions walks past
            # the recently freed inodes, so deleting the previous round's
            # 10,000 files would slow the next round's creations (every way's;
            # docs/benchmarks.md, "Folders and many files").
            if dest.exists():
                dest.rename(aside / str(next(moved)))
            dest.mkdir()
            for entry in receiver.inbox.iterdir():
                entry.rename(aside / str(next(moved)))

        def peercrypt() -> None:
            result = run_cli(
                "send", str(src), "127.0.0.1", str(receiver.port), "--json",
                data_dir=sender.data_dir, timeout=600,
            )  # fmt: skip
            if result.returncode != 0:
                raise SystemExit(result.describe())

        ways: dict[str, Callable[[], object]] = {"peercrypt send DIR": peercrypt}
        if sshd is not None:
            ssh = " ".join(sshd.ssh)
            ways["tar c | ssh tar x"] = lambda: sh(
                f"tar c -C {work} tree | {ssh} 127.0.0.1 'tar x -C {dest}'"
            )
            ways["tar c | ssh 'tar x; sync -f'"] = lambda: sh(
                f"tar c -C {work} tree | {ssh} 127.0.0.1 'tar x -C {dest} && sync -f {dest}'"
            )
            scp = ["scp", "-rq", *sshd.scp_options]
            ways["scp -r"] = lambda: subprocess.run(
                [*scp, str(src), f"root@127.0.0.1:{dest}/"], check=True
            )
        else:
            ways["tar c | tar x; sync -f (local)"] = lambda: sh(
                f"tar c -C {work} tree | tar x -C {dest} && sync -f {dest}"
            )
        loads = [load()]
        print(f"{args.files} files of {args.size} bytes, loopback; load average {loads[0]}")
        try:
            for n in range(1, args.rounds + 1):
                for name, run in ways.items():
                    clean()
                    nodes = {"sender": sender.pid, "receiver": receiver.pid}
                    before = {x: cpu_seconds(pid) for x, pid in nodes.items()}
                    seconds = timed(run)
                    times.setdefault(name, []).append(seconds)
                    rate = args.files / seconds
                    line = f"  round {n}  {name:32} {seconds:6.2f} s  {rate:6.0f} files/s"
                    if run is peercrypt:  # what arrived is what was sent (untimed)
                        cpu = {x: cpu_seconds(pid) - before[x] for x, pid in nodes.items()}
                        line += f"  (CPU s: sender {cpu['sender']:.2f}, "
                        line += f"receiver {cpu['receiver']:.2f})"
                        stored = receiver.inbox / "tree"
                        assert sum(1 for _ in stored.rglob("*.bin")) == args.files
                        last = sorted(src.rglob("*.bin"))[-1].relative_to(src)
                        assert blake3_file(stored / last) == blake3_file(src / last)
                    print(line, flush=True)
            loads.append(load())
        finally:
            if sshd is not None:
                sshd.stop()
            sender.stop()
            receiver.stop()
    print(
        f"median of {args.rounds} rounds interleaved (wall time, files/s); "
        f"load average {loads[0]} before, {loads[-1]} after:"
    )
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {
            "seconds": round(median, 2),
            "files_per_s": round(args.files / median),
            "runs": [round(v, 2) for v in values],
        }
        print(f"  {name:32} {median:6.2f} s  {args.files / median:8.0f} files/s")
    print(json.dumps({"load": loads, "ways": rows}))


if __name__ == "__main__":
    main()
