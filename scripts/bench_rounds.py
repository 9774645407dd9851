"""Memory across rounds of many transfers at once: does a node's memory
come back after a load, or creep up with every load it served?

Four nodes (node 1.. join node 0), each sending ``--per-node`` files of
``--size`` to the others at once, ``--rounds`` times over the same nodes
(the inboxes emptied between rounds, as a user moving files away). After
each round, once the nodes have been idle ``--settle`` s: every node's
resident memory (``VmRSS``, and ``RssAnon``: the heap's part) and the peak
of the round (``VmHWM``, reset before it). Every send checked ``ok``.

``--tree DIR`` runs the same rounds afterwards on nodes run from that source
tree (an export of another commit: ``git archive main | tar -x -C DIR``).

    .venv/bin/python scripts/bench_rounds.py [--rounds 10] [--size 32M]
        [--per-node 16] [--dir /dev/shm] [--settle 2] [--tree DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_many

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, parse_size, random_file


def memory_mib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0]) // 1024
    return out


def rounds(
    label: str, root: Path, files: list[list[Path]], count: int, settle: float, tree: str | None
) -> list[dict[str, list[int]]]:
    env = {"PYTHONPATH": str(Path(tree).resolve())} if tree else None
    nodes: list[NodeProcess] = []
    rows: list[dict[str, list[int]]] = []
    try:
        nodes = bench_many.start_cluster(root, new_network_key(), 4, (), False, env)
        print(
            f"{label}: started, RSS {[memory_mib(n.pid)['VmRSS'] for n in nodes]} MiB", flush=True
        )
        for r in range(1, count + 1):
            flows = [
                bench_many.Flow(s, (s + 1 + k % 3) % 4, p)
                for s, paths in enumerate(files)
                for k, p in enumerate(paths)
            ]
            for node in nodes:
                bench_many.reset_peak_rss(node.pid)
            started = time.perf_counter()
            for thread in bench_many.start_senders(nodes, flows):
                thread.join(bench_many.SEND_TIMEOUT + 30)
            elapsed = time.perf_counter() - started
            bad = [f.path.name for f in flows if f.result is None or f.result.code != "ok"]
            if bad:
                raise SystemExit(f"{label} round {r}: not sent: {bad}")
            time.sleep(settle)
            seen = [memory_mib(n.pid) for n in nodes]
            row = {k: [m[k] for m in seen] for k in ("VmRSS", "RssAnon", "VmHWM")}
            rows.append(row)
            print(
                f"{label} round {r}: {len(flows)} sends in {elapsed:.1f} s; idle RSS "
                f"{row['VmRSS']} (heap {row['RssAnon']}), peak {row['VmHWM']} MiB",
                flush=True,
            )
            for node in nodes:
                for stored in node.inbox.iterdir():
                    if stored.is_file():
                        stored.unlink()
    finally:
        for node in nodes:
            node.stop()
    return rows


def summary(label: str, rows: list[dict[str, list[int]]]) -> None:
    first, last = rows[0], rows[-1]
    late = rows[len(rows) // 2 :]
    print(
        f"{label}: idle RSS, worst node, round 1 -> last: {max(first['VmRSS'])} -> "
        f"{max(last['VmRSS'])} MiB (heap {max(first['RssAnon'])} -> {max(last['RssAnon'])}); "
        f"peak, worst node, median of the later half: "
        f"{statistics.median(max(r['VmHWM']) for r in late):.0f} MiB, most "
        f"{max(max(r['VmHWM']) for r in rows)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", default="32M")
    parser.add_argument("--per-node", type=int, default=16)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before reading")
    parser.add_argument("--tree", default=None, help="then the same rounds from this tree")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-rounds-") as tmp:
        root = Path(tmp)
        files = []
        for s in range(4):
            folder = root / f"files{s}"
            folder.mkdir()
            files.append(
                [random_file(folder / f"f{s}-{k}.bin", size) for k in range(args.per_node)]
            )
        print(f"4 nodes, {4 * args.per_node} sends of {args.size} at once, {args.rounds} rounds")
        sets = [("this code", root / "this", None)]
        if args.tree:
            sets.append((args.tree, root / "tree", args.tree))
        results = [(label, rounds(label, where, files, args.rounds, args.settle, tree))
                   for label, where, tree in sets]  # fmt: skip
        for label, rows in results:
            summary(label, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
