"""Parallel lanes where each connection is capped: ``-t N`` against normal.

Two node processes on loopback, the sending node sends a random file (256
MiB by default) to the receiving node. The time is the wall time of the
``peercrypt send`` command (its start to its exit 0 with the receiver's
verified hash; the stored file's BLAKE3 is checked against the source
after every run). Two paths:

- **capped**: the receiving node advertises the port of a
  :class:`~peercrypt.testing.faults.CappingProxy` in front of its data port,
  which caps every TCP connection on its own (``--cap``, 16 MiB/s): a path
  where one flow is limited but several are not (a per-flow shaper, a
  per-connection policer, a long fat pipe with a fixed window). Goals:
  ``-t 4`` >= 3.3x normal, ``-t 8`` >= 6x.
- **uncapped**: straight loopback to a second receiving node. Goal: ``-t N``
  costs no more than 10% against normal (time ratio <= 1.10).

Every case is timed alike: the same sending node, the same command line
but for ``-t N``, each path's own receiver. Before the runs, one untimed
send of each case warms each pair up (a node's first transfer pays for its
first connection and its first buffers); then every run sends each case
once, in an order shuffled anew each run (seeded, printed), so that no case
always follows the same one. ``--tree DIR`` adds a third pair of nodes run
from that source tree (an export of an older commit; its CLI runs from it
too) on the uncapped path, interleaved with the others: ``before normal``,
``before -t N``. ``--no-capped`` leaves out the capped path (more runs of
the uncapped one in the same minutes). Both trees are byte-compiled first,
as an installed package is: this may run with PYTHONDONTWRITEBYTECODE, and
then every command would compile what it imports (a command that imports
more would pay more).

Prints every run (capped ones split into phases: before the first byte
passed the proxy, the data, after the last byte), then medians (of >= 3
runs) and the ratios; uncapped, also the median of each run's own ratio
of ``-t N`` to normal (the two sends of a run were seconds apart, so the
load moved less between them).

    .venv/bin/python scripts/bench_parallel.py [--size 256M] [--runs 3] [--cap 16M]
        [--lanes 4,8] [--dir DIR] [--no-uncapped | --no-capped] [--tree DIR]
        [--node-args "--window 64"] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.faults import CappingProxy
from peercrypt.testing.nodes import (
    LOCALHOST,
    NodeProcess,
    blake3_file,
    compile_tree,
    free_port,
    parse_size,
    random_file,
)

MiB = 2**20
SETUP_BYTES = 64 * 1024  # less than a chunk, more than handshakes and heartbeats


@dataclass
class Timed:
    """One send: the CLI's wall time, the node's own span (request to
    verified), the command's CPU time (user + system: what waiting for a core
    does not inflate) and, through the proxy, when its first and last byte
    passed (seconds from the CLI's start; None when the path has no proxy)."""

    wall: float
    node: float
    cli_cpu: float
    first_byte: float | None = None
    last_byte: float | None = None

    def phases(self) -> str:
        if self.first_byte is None or self.last_byte is None:
            return (
                f"node {self.node:5.2f} s, outside it {self.wall - self.node:5.2f} s, "
                f"the command {self.cli_cpu:5.3f} CPU s"
            )
        return (
            f"before the first byte {self.first_byte:5.2f} s, data "
            f"{self.last_byte - self.first_byte:5.2f} s, after the last "
            f"{self.wall - self.last_byte:5.2f} s (node span {self.node:5.2f} s)"
        )


class ByteClock:
    """Samples a proxy's forwarded bytes every few ms while a send runs: when
    the first byte passed, and when the last one did."""

    def __init__(self, proxy: CappingProxy | None) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        assert self.proxy is not None
        with self.proxy._lock:
            return sum(self.proxy.forwarded)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self._total()))
            self.stop.wait(0.005)

    def __enter__(self) -> ByteClock:
        if self.proxy is not None:
            self.base = self._total()
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.proxy is not None:
            self.thread.join(5)

    def edges(self, started: float) -> tuple[float | None, float | None]:
        """When the first and the last chunk data passed: the first sample
        ``SETUP_BYTES`` beyond the start (connection set-up and heartbeats
        are less) and the first within ``SETUP_BYTES`` of the end."""
        if not self.samples:
            return None, None
        final = self.samples[-1][1]
        if final - self.base < 2 * SETUP_BYTES:
            return None, None
        first = next(t for t, n in self.samples if n - self.base >= SETUP_BYTES)
        last = next(t for t, n in self.samples if final - n <= SETUP_BYTES)
        return first - started, last - started


def timed_send(
    sender: NodeProcess,
    path: Path,
    receiver: NodeProcess,
    extra: list[str],
    proxy: CappingProxy | None,
) -> Timed:
    """One ``peercrypt send``: checks the stored file's hash and removes it
    (the inbox stays small)."""
    with ByteClock(proxy) as clock:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command is the one reaped
        started = time.perf_counter()
        result = sender.send_result(path, receiver.host, receiver.port, *extra, timeout=1800)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if result.returncode != 0:
        raise SystemExit(f"send {' '.join(extra)} failed: {result.describe()}")
    stored = receiver.inbox / result.json["stored_as"]
    if blake3_file(stored) != blake3_file(path):
        raise SystemExit(f"the stored file {stored} differs from the source")
    stored.unlink()
    first, last = clock.edges(started)
    return Timed(seconds, float(result.json["seconds"]), cpu, first, last)


@dataclass
class Case:
    """One way of sending, timed once per run."""

    name: str  # "PATH normal" or "PATH -t N"
    sender: NodeProcess
    receiver: NodeProcess
    extra: list[str]
    proxy: CappingProxy | None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", default="16M", help="bytes/s per TCP connection")
    parser.add_argument("--lanes", default="4,8")
    parser.add_argument("--dir", default=None, help="where the nodes and inboxes live")
    parser.add_argument("--no-uncapped", action="store_true")
    parser.add_argument("--no-capped", action="store_true")
    parser.add_argument(
        "--tree",
        type=os.path.abspath,
        default=None,
        help="also the uncapped path between nodes run from this tree",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--node-args", default="", help="extra options of the receiving nodes")
    args = parser.parse_args()
    size = parse_size(args.size)
    cap = parse_size(args.cap)
    lanes = [int(n) for n in args.lanes.split(",")]
    if args.runs < 3:
        parser.error("--runs must be >= 3 (a median of at least three)")
    if args.no_capped and args.no_uncapped:
        parser.error("--no-capped and --no-uncapped leave nothing to run")

    key = new_network_key()
    node_args = tuple(args.node_args.split())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        source = random_file(root / "source.bin", size)
        # Every node and command from this tree (`python -m` puts the working
        # directory first on sys.path: a neutral one), or from --tree's.
        os.chdir(root)
        here = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        trees = [here["PYTHONPATH"], *([str(Path(args.tree).resolve())] if args.tree else [])]
        for tree in trees:
            compile_tree(tree)
        data_port = free_port()
        proxy = CappingProxy((LOCALHOST, data_port), cap).start()
        sender = NodeProcess(root / "sender", key, env=here)
        capped = NodeProcess(
            root / "capped",
            key,
            env=here,
            extra_args=(
                "--data-port",
                str(data_port),
                "--advertise-data-port",
                str(proxy.port),
                *node_args,
            ),
        )
        plain = NodeProcess(root / "plain", key, env=here, extra_args=node_args)
        nodes = [sender]
        cases: list[Case] = []
        if not args.no_capped:
            nodes.append(capped)
            cases.append(Case("capped normal", sender, capped, [], proxy))
            cases += [Case(f"capped -t {n}", sender, capped, ["-t", str(n)], proxy) for n in lanes]
        if not args.no_uncapped:
            nodes.append(plain)
            cases.append(Case("uncapped normal", sender, plain, [], None))
            cases += [Case(f"uncapped -t {n}", sender, plain, ["-t", str(n)], None) for n in lanes]
        if args.tree and not args.no_uncapped:
            (root / "tree").mkdir()
            old = {"PYTHONPATH": str(Path(args.tree).resolve())}
            old_sender = NodeProcess(root / "tree" / "sender", key, env=old)
            old_plain = NodeProcess(root / "tree" / "plain", key, env=old, extra_args=node_args)
            nodes += [old_sender, old_plain]
            cases.append(Case("before normal", old_sender, old_plain, [], None))
            cases += [
                Case(f"before -t {n}", old_sender, old_plain, ["-t", str(n)], None) for n in lanes
            ]
        try:
            for node in nodes:
                node.start()
            print(
                f"{size / MiB:.0f} MiB, cap {cap / MiB:.1f} MiB/s per connection, "
                f"{args.runs} runs, inboxes under {root}"
                + (f", before = {args.tree}" if args.tree else ""),
                flush=True,
            )
            for case in cases:  # warm-up, untimed
                timed_send(case.sender, source, case.receiver, case.extra, case.proxy)
            times: dict[str, list[float]] = {case.name: [] for case in cases}
            outside: dict[str, list[float]] = {case.name: [] for case in cases}
            cli_cpu: dict[str, list[float]] = {case.name: [] for case in cases}
            for run in range(args.runs):
                order = list(cases)
                random.Random(run).shuffle(order)
                print(f"run {run + 1} order: {', '.join(c.name for c in order)}", flush=True)
                for case in order:
                    timed = timed_send(case.sender, source, case.receiver, case.extra, case.proxy)
                    seconds = timed.wall
                    times[case.name].append(seconds)
                    outside[case.name].append(seconds - timed.node)
                    cli_cpu[case.name].append(timed.cli_cpu)
                    print(
                        f"run {run + 1}: {case.name:18s} {seconds:7.2f} s "
                        f"{size / MiB / seconds:8.1f} MiB/s; {timed.phases()}; "
                        f"load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            print(f"connections through the proxy: {proxy.connections}")
        finally:
            proxy.stop()
            for node in nodes:
                if node.running:
                    node.stop()

    medians = {name: statistics.median(values) for name, values in times.items()}
    print("\nmedian wall time, MiB/s, speed-up against normal on the same path:")
    goals = {4: 3.3, 8: 6.0}
    report: dict[str, object] = {"size": size, "cap": cap, "runs": times, "medians": medians}
    for path in ("capped", "uncapped", "before"):
        base = medians.get(f"{path} normal")
        if base is None:
            continue
        for name in [n for n in medians if n.startswith(path + " ")]:
            ratio = base / medians[name]
            note = ""
            if path == "capped" and name != f"{path} normal":
                goal = goals.get(int(name.rsplit(" ", 1)[1]))
                if goal is not None:
                    note = f"  (goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})"
            elif name != f"{path} normal":
                cost = medians[name] / base
                verdict = "met" if cost <= 1.10 else "NOT met"
                # Each run's own ratio (the two sends minutes apart at most).
                paired = statistics.median(
                    t / n for t, n in zip(times[name], times[f"{path} normal"], strict=True)
                )
                note = (
                    f"  (time {cost:.2f}x normal; goal <= 1.10: {verdict}; "
                    f"median of the runs' ratios {paired:.2f}x)"
                )
                report[f"paired {name}"] = paired
            print(
                f"  {name:18s} {medians[name]:7.2f} s {size / MiB / medians[name]:8.1f} MiB/s"
                f"  {ratio:5.2f}x{note}"
            )
            if path != "capped":
                print(
                    f"  {'':18s} outside the node's span {statistics.median(outside[name]):.3f} s,"
                    f" the command {statistics.median(cli_cpu[name]):.3f} CPU s (medians)"
                )
            report[f"speedup {name}"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
