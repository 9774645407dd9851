"""Fixed costs as the user times them: ``peercrypt --help``, ``peercrypt
status`` against a running node, and a 1 KiB ``peercrypt send`` between two
running nodes (command start to exit 0 with the receiver's verified hash),
plain and with ``-t 4`` (a parallel send), and a 1 KiB send from a data dir
where no node runs (the command starts a temporary node: a one-off send).

    .venv/bin/python scripts/bench_fixed.py [--runs 7] [--tree OTHER_CHECKOUT ...]
        [--node-args=ARGS] [--tree-node-args=ARGS]

With ``--tree DIR`` the same commands also run from that source tree (e.g. an
export of an older commit: its own nodes, its own CLI), interleaved run by
run with this tree's: a before/after on a shared, loaded machine. Every run
is printed, then the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, blake3_file, compile_tree, random_file


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command. The CPU time (user +
    system, from the children's rusage) is the steadier measure on a loaded
    machine: it does not count the time spent waiting for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise RuntimeError(f"{argv[3:]} exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--tree", type=os.path.abspath, action="append", default=[], help="another source tree"
    )
    parser.add_argument("--node-args", default="", help="extra options of this tree's nodes")
    parser.add_argument(
        "--tree-node-args",
        default=None,
        help="extra options of the --tree nodes instead of --node-args (e.g. "
        "--node-args=--isolate-data-plane --tree /this/checkout --tree-node-args=)",
    )
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    trees = [here, *args.tree]

    def label(i: int, tree: str) -> str:
        """The tree, and its options where they tell two runs of one tree apart."""
        extra = args.node_args if i == 0 or args.tree_node_args is None else args.tree_node_args
        return f"{tree} {extra}".strip() if trees.count(tree) > 1 else tree

    key = new_network_key()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pc-fixed-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # `python -m` puts the working directory first on sys.path
        small = random_file(root / "small.bin", 1024)
        lone = random_file(root / "lone.bin", 1024)  # its own file: not "had it all"
        digests = {p.name: blake3_file(p) for p in (small, lone)}
        nodes: list[NodeProcess] = []
        setups: list[
            tuple[str, dict[str, tuple[list[str], tuple[int, ...]]], dict[str, str], NodeProcess]
        ] = []
        try:
            for i, tree in enumerate(trees):
                compile_tree(tree)  # bytecode as an installed package has it
                env = {"PYTHONPATH": tree}
                extra = (
                    args.node_args
                    if i == 0 or args.tree_node_args is None
                    else (args.tree_node_args)
                )
                options = tuple(extra.split())
                s = NodeProcess(root / f"s{i}", network_key=key, env=env, extra_args=options)
                nodes.append(s.start())
                s.wait_for_attached()  # (--isolate-data-plane: its own processes)
                r = NodeProcess(root / f"r{i}", network_key=key, env=env, extra_args=options)
                r.start()
                nodes.append(r)
                r.wait_for_attached()
                cli = [sys.executable, "-m", "peercrypt", "--data-dir", str(s.data_dir)]
                full_env = {**os.environ, "PYTHONPATH": tree}
                full_env.pop("PEERCRYPT_DATA_DIR", None)
                full_env["PEERCRYPT_NETWORK_KEY"] = key  # the temporary node's, never in argv
                commands: dict[str, tuple[list[str], tuple[int, ...]]] = {
                    "--help": ([*cli, "--help"], (0,)),
                    "status": ([*cli, "status"], (0,)),
                    "send 1 KiB": (
                        [*cli, "send", str(small), "127.0.0.1", str(r.port), "--json"],
                        (0,),
                    ),
                    "send -t 4": (
                        [*cli, "send", str(small), "127.0.0.1", str(r.port), "--json", "-t", "4"],
                        (0,),
                    ),
                    # No node runs for this data dir (its identity made by run 1).
                    "send, no node": (
                        [
                            *cli[:-1],
                            str(root / f"lone{i}"),
                            "send",
                            str(lone),
                            "127.0.0.1",
                            str(r.port),
                            "--json",
                        ],
                        (0,),
                    ),
                }
                for name in commands:
                    results[(label(i, tree), name)] = []
                setups.append((label(i, tree), commands, full_env, r))
            for run in range(args.runs):
                order = range(len(trees)) if run % 2 == 0 else reversed(range(len(trees)))
                for i in order:
                    tree, commands, env, r = setups[i]
                    line = []
                    for name, (argv, ok) in commands.items():
                        seconds, cpu = timed(argv, env, ok)
                        results[(tree, name)].append((seconds, cpu))
                        line.append(f"{name} {seconds:.3f} s ({cpu:.3f} CPU s)")
                    stored_names = sorted(p.name for p in r.inbox.iterdir())
                    if stored_names != sorted(digests):
                        raise RuntimeError(f"the receiver stored {stored_names}")
                    for stored in r.inbox.iterdir():
                        if blake3_file(stored) != digests[stored.name]:
                            raise RuntimeError(f"{stored} differs from the source")
                        stored.unlink()
                    print(f"run {run + 1} {tree}: " + ", ".join(line), flush=True)
        finally:
            for node in nodes:
                node.stop()
    print(f"\nmedian of {args.runs} runs (wall seconds, CPU seconds of the command)")
    for (tree, name), values in results.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"  {tree:48} {name:13} {wall:.3f} s  {cpu:.3f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
