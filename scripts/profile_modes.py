"""Where the CPU goes per GiB: normal vs parallel, per node and per thread.

    .venv/bin/python scripts/profile_modes.py [--runs 2] [--size-mib 1024] [--perf]

Two nodes on loopback (the receiver's inbox on tmpfs unless ``--disk``); the
modes alternate (ABBA). Around each send, every thread's utime+stime is read
from ``/proc/PID/task/*/stat``; a thread is named by its ``comm`` and, for
Python threads that have none, by the order in which it first used CPU.
Printed: wall MiB/s, CPU seconds per GiB per node and per busy thread, and
cores in use. ``--perf`` also records one send of each mode with ``perf``
(if installed) and prints the top shared objects/symbols per node.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, random_file

MiB = 2**20
TICK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (comm, cpu seconds) of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> list[float]:
    """CPU seconds per thread used between the two samples, biggest first
    (threads that came and went in between are not seen by /proc samples;
    the per-process total from /proc/PID/stat covers them)."""
    rows = []
    for tid, (_, cpu) in after.items():
        rows.append(cpu - before.get(tid, ("", 0.0))[1])
    return sorted((r for r in rows if r > 0.005), reverse=True)


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def perf_report(data: Path, pid: int) -> str:
    result = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "--pid",
            str(pid),
            "--sort",
            "dso,sym",
            "--percent-limit",
            "0.7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(lines[:25])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--disk", action="store_true", help="receive into the disk inbox")
    parser.add_argument("--chunk-mib", type=int, default=0, help="--chunk-size for both modes")
    parser.add_argument("--perf", type=Path, help="record perf data of one send per mode here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree (e.g. `git archive HEAD actors peercrypt | tar -x -C DIR`) whose "
        "nodes run the same modes, interleaved with this tree's (PYTHONPATH=DIR)",
    )
    args = parser.parse_args()
    key = new_network_key()
    modes = {
        "normal": ["--mode", "normal"],
        "parallel": ["--mode", "parallel", "-t", str(args.lanes)],
    }
    if args.chunk_mib:
        for flags in modes.values():
            flags += ["--chunk-size", str(args.chunk_mib * MiB)]
    trees = {"": None} if args.baseline is None else {"": None, "@baseline": args.baseline}
    runs = [(mode + tree, tree, flags) for tree in trees for mode, flags in modes.items()]
    stats: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name, _, _ in runs}
    with tempfile.TemporaryDirectory(prefix="peercrypt-prof-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        path = random_file(root / "p.bin", args.size_mib * MiB)
        gib = path.stat().st_size / 2**30
        inbox = None if args.disk else Path(tempfile.mkdtemp(dir="/dev/shm"))
        if inbox is not None:
            stack.callback(shutil.rmtree, inbox, ignore_errors=True)
        extra = ("--inbox", str(inbox)) if inbox else ()
        pairs: dict[str, tuple[NodeProcess, NodeProcess]] = {}
        for tree, source in trees.items():
            env = {"PYTHONPATH": str(source.resolve())} if source is not None else None
            n = len(pairs)
            pairs[tree] = (
                stack.enter_context(NodeProcess(root / f"s{n}", network_key=key, env=env)),
                stack.enter_context(
                    NodeProcess(root / f"r{n}", network_key=key, extra_args=extra, env=env)
                ),
            )
            s, r = pairs[tree]
            # the first transfer after start-up is slow here: not measured
            code, result = s.send_to(path, r, "--no-progress", timeout=900)
            (r.inbox / result["stored_as"]).unlink()
        for run in range(args.runs):
            for name, tree, flags in runs if run % 2 == 0 else runs[::-1]:
                s, r = pairs[tree]
                os.sync()
                sb, rb = thread_times(s.pid), thread_times(r.pid)
                sp, rp = process_cpu(s.pid), process_cpu(r.pid)
                t0 = time.monotonic()
                code, result = s.send_to(path, r, "--no-progress", *flags, timeout=900)
                wall = time.monotonic() - t0
                if code != 0:
                    raise RuntimeError(f"send failed: {result}")
                sa, ra = thread_times(s.pid), thread_times(r.pid)
                scpu, rcpu = process_cpu(s.pid) - sp, process_cpu(r.pid) - rp
                (r.inbox / result["stored_as"]).unlink()
                st = stats[name]
                st["MiB/s"].append(path.stat().st_size / MiB / result["seconds"])
                st["sender s/GiB"].append(scpu / gib)
                st["receiver s/GiB"].append(rcpu / gib)
                st["cores (wall)"].append((scpu + rcpu) / wall)
                st["cores (transfer)"].append((scpu + rcpu) / result["seconds"])
                for side, b, a in (("S", sb, sa), ("R", rb, ra)):
                    for i, cpu in enumerate(delta(b, a)[:5]):
                        st[f"{side} thread{i} s/GiB"].append(cpu / gib)
        s, r = pairs[""]
        if args.perf and shutil.which("perf"):
            args.perf.mkdir(parents=True, exist_ok=True)
            for mode in modes:
                data = args.perf / f"perf-{mode}.data"
                rec = subprocess.Popen(
                    [
                        "perf",
                        "record",
                        "-q",
                        "-F",
                        "499",
                        "-o",
                        str(data),
                        "-p",
                        f"{s.pid},{r.pid}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)
                code, result = s.send_to(path, r, "--no-progress", *modes[mode], timeout=900)
                rec.send_signal(2)
                rec.wait(60)
                (r.inbox / result["stored_as"]).unlink()
                print(f"--- perf {mode}: sender pid {s.pid}, receiver pid {r.pid}")
                for label, pid in (("sender", s.pid), ("receiver", r.pid)):
                    print(f"--- perf {mode} {label} (dso, symbol, % of its samples)")
                    print(perf_report(data, pid))
    for mode, st in stats.items():
        print(f"== {mode} ({args.runs} runs, medians; threads biggest first)")
        for name, values in st.items():
            print(f"  {name:18} {statistics.median(values):8.3f}   {[round(v, 3) for v in values]}")
    rates = {name: statistics.median(st["MiB/s"]) for name, st in stats.items()}
    for name, rate in rates.items():
        st = stats[name]
        cpu = statistics.median(
            a + b for a, b in zip(st["sender s/GiB"], st["receiver s/GiB"], strict=True)
        )
        print(f"summary {name:20} {rate:6.0f} MiB/s, CPU {cpu:.2f} s/GiB (both nodes)")
    for tree in trees:
        print(
            f"ratio parallel/normal{tree}: {rates['parallel' + tree] / rates['normal' + tree]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
