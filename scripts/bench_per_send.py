"""The nodes' CPU per send, 64 sends at once among 4 nodes, nothing else.

What ``bench_many.py --size 64K`` measures without its probes (status and
health checks every ~20 ms), its sends alone and its pauses: rounds of the
same ``--per-node`` (16) sends of ``--size`` (64 KiB) from each of 4 node
processes at once, spread over the other three, handed to each node's
control socket as ``peercrypt send`` does. Per round: the four nodes' CPU
(``/proc/PID/stat``) from the first request to the last result, divided by
the sends, and the same by thread name. Every send must end ``ok``; the
inboxes are emptied between rounds.

``--tree DIR`` also starts four nodes run from that source tree (an export
of an older commit) and alternates the rounds between the two sets, this
code first in odd rounds: medians of each, and how many paired rounds this
code's was the lower.

    .venv/bin/python scripts/bench_per_send.py [--rounds 10] [--size 64K]
        [--per-node 16] [--dir /dev/shm] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_many import Flow, cpu_seconds, start_cluster, start_senders, thread_cpu

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, parse_size, random_file

NODES = 4


def one_round(nodes: list[NodeProcess], files: list[list[Path]]) -> tuple[float, dict[str, float]]:
    """ms of the nodes' CPU per send, and the same by thread name."""
    flows = [
        Flow(s, (s + 1 + k % (NODES - 1)) % NODES, path)
        for s, paths in enumerate(files)
        for k, path in enumerate(paths)
    ]
    pids = [node.pid for node in nodes]
    cpu = sum(cpu_seconds(pid) for pid in pids)
    threads = thread_cpu(pids)
    senders = start_senders(nodes, flows)
    for thread in senders:
        thread.join(700)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    after = thread_cpu(pids)
    failed = [f for f in flows if f.result is None or f.result.code != "ok"]
    if failed:
        result = failed[0].result
        raise SystemExit(f"{len(failed)} sends failed: {result.reason if result else 'no result'}")
    for node in nodes:
        for stored in node.inbox.iterdir():
            stored.unlink()
    per_thread = {k: 1000 * (v - threads.get(k, 0.0)) / len(flows) for k, v in after.items()}
    return 1000 * cpu / len(flows), per_thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", default="64K", help="size of each file")
    parser.add_argument("--per-node", type=int, default=16, help="sends each node starts")
    parser.add_argument("--dir", default=None, help="where nodes, files and inboxes live")
    parser.add_argument("--tree", default=None, help="also run nodes from this source tree")
    args = parser.parse_args()
    size = parse_size(args.size)
    key = new_network_key()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-per-send-") as tmp:
        root = Path(tmp)
        files = [
            [random_file(root / f"src{i}-{k}.bin", size) for k in range(args.per_node)]
            for i in range(NODES)
        ]
        sets: list[tuple[str, list[NodeProcess]]] = []
        try:
            here = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            if args.tree:  # `python -m` puts the working directory first on sys.path
                os.chdir(root)
            sets.append(("this code", start_cluster(root, key, NODES, (), False, here)))
            if args.tree:
                (root / "tree").mkdir()
                tree_env = {"PYTHONPATH": str(Path(args.tree).resolve())}
                sets.append(
                    (args.tree, start_cluster(root / "tree", key, NODES, (), False, tree_env))
                )
            runs: dict[str, list[float]] = {name: [] for name, _ in sets}
            split: dict[str, dict[str, list[float]]] = {name: {} for name, _ in sets}
            for n in range(1, args.rounds + 1):
                for name, nodes in sets if n % 2 else sets[::-1]:
                    ms, threads = one_round(nodes, files)
                    runs[name].append(ms)
                    for thread, value in threads.items():
                        split[name].setdefault(thread, []).append(value)
                    print(
                        f"round {n} {name}: {ms:.1f} ms per send; "
                        f"load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    time.sleep(1.0)  # the last results' reports and history
        finally:
            for _, nodes in sets:
                for node in nodes:
                    if node.running:
                        node.stop()
    for name, values in runs.items():
        medians = {k: statistics.median(v) for k, v in split[name].items()}
        shown = {
            k: round(v, 2) for k, v in sorted(medians.items(), key=lambda kv: -kv[1]) if v >= 0.1
        }
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name}: median {statistics.median(values):.1f} ms per send (runs {listed})")
        print(f"  by thread, ms per send (medians): {shown}")
    if len(sets) == 2:
        ours, theirs = runs[sets[0][0]], runs[sets[1][0]]
        lower = sum(a < b for a, b in zip(ours, theirs, strict=True))
        print(f"this code's round the lower in {lower} of {len(ours)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
