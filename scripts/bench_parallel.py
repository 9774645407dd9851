"""Parallel lanes where each connection is capped: ``-t N`` against normal.

Two node processes on loopback, the sending node sends a random file (256
MiB by default) to the receiving node. The time is the wall time of the
``peercrypt send`` command (its start to its exit 0 with the receiver's
verified hash; the stored file's BLAKE3 is checked against the source
after every run). Two paths, interleaved run by run (the order rotates):

- **capped**: the receiving node advertises the port of a
  :class:`~peercrypt.testing.faults.CappingProxy` in front of its data port,
  which caps every TCP connection on its own (``--cap``, 16 MiB/s): a path
  where one flow is limited but several are not (a per-flow shaper, a
  per-connection policer, a long fat pipe with a fixed window). Goals:
  ``-t 4`` >= 3.3x normal, ``-t 8`` >= 6x.
- **uncapped**: straight loopback to a second receiving node. Goal: ``-t N``
  costs no more than 10% against normal (time ratio <= 1.10).

Prints every run (capped ones split into phases: before the first byte
passed the proxy, the data, after the last byte), then medians (of >= 3
runs) and the ratios.

    .venv/bin/python scripts/bench_parallel.py [--size 256M] [--runs 3] [--cap 16M]
        [--lanes 4,8] [--dir DIR] [--no-uncapped] [--node-args "--window 64"] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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
    free_port,
    parse_size,
    random_file,
    run_cli,
)

MiB = 2**20
SETUP_BYTES = 64 * 1024  # less than a chunk, more than handshakes and heartbeats


@dataclass
class Timed:
    """One send: the CLI's wall time, the node's own span (request to
    verified) and, through the proxy, when its first and last byte passed
    (seconds from the CLI's start; None when the path has no proxy)."""

    wall: float
    node: float
    first_byte: float | None = None
    last_byte: float | None = None

    def phases(self) -> str:
        if self.first_byte is None or self.last_byte is None:
            return f"node {self.node:5.2f} s"
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
        started = time.perf_counter()
        result = run_cli(
            "send",
            str(path),
            receiver.host,
            str(receiver.port),
            "--json",
            *extra,
            data_dir=sender.data_dir,
            timeout=1800,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"send {' '.join(extra)} failed: {result.describe()}")
    stored = receiver.inbox / result.json["stored_as"]
    if blake3_file(stored) != blake3_file(path):
        raise SystemExit(f"the stored file {stored} differs from the source")
    stored.unlink()
    first, last = clock.edges(started)
    return Timed(seconds, float(result.json["seconds"]), first, last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", default="16M", help="bytes/s per TCP connection")
    parser.add_argument("--lanes", default="4,8")
    parser.add_argument("--dir", default=None, help="where the nodes and inboxes live")
    parser.add_argument("--no-uncapped", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--node-args", default="", help="extra options of the receiving nodes")
    args = parser.parse_args()
    size = parse_size(args.size)
    cap = parse_size(args.cap)
    lanes = [int(n) for n in args.lanes.split(",")]
    if args.runs < 3:
        parser.error("--runs must be >= 3 (a median of at least three)")

    key = new_network_key()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        source = random_file(root / "source.bin", size)
        data_port = free_port()
        proxy = CappingProxy((LOCALHOST, data_port), cap).start()
        sender = NodeProcess(root / "sender", key)
        capped = NodeProcess(
            root / "capped",
            key,
            extra_args=(
                "--data-port",
                str(data_port),
                "--advertise-data-port",
                str(proxy.port),
                *args.node_args.split(),
            ),
        )
        plain = NodeProcess(root / "plain", key, extra_args=tuple(args.node_args.split()))
        nodes = [sender, capped] + ([] if args.no_uncapped else [plain])
        try:
            for node in nodes:
                node.start()
            variants: list[tuple[str, NodeProcess, list[str]]] = [("capped normal", capped, [])]
            proxied = {"capped": proxy, "uncapped": None}
            variants += [(f"capped -t {n}", capped, ["-t", str(n)]) for n in lanes]
            if not args.no_uncapped:
                variants += [("uncapped normal", plain, [])]
                variants += [(f"uncapped -t {n}", plain, ["-t", str(n)]) for n in lanes]
            print(
                f"{size / MiB:.0f} MiB, cap {cap / MiB:.1f} MiB/s per connection, "
                f"{args.runs} runs, inboxes under {root}",
                flush=True,
            )
            times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            for run in range(args.runs):
                shift = run % len(variants)
                for name, receiver, extra in variants[shift:] + variants[:shift]:
                    timed = timed_send(sender, source, receiver, extra, proxied[name.split()[0]])
                    seconds = timed.wall
                    times[name].append(seconds)
                    print(
                        f"run {run + 1}: {name:18s} {seconds:7.2f} s "
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
    for path in ("capped", "uncapped"):
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
            elif path == "uncapped" and name != f"{path} normal":
                cost = medians[name] / base
                verdict = "met" if cost <= 1.10 else "NOT met"
                note = f"  (time {cost:.2f}x normal; goal <= 1.10: {verdict})"
            print(
                f"  {name:18s} {medians[name]:7.2f} s {size / MiB / medians[name]:8.1f} MiB/s"
                f"  {ratio:5.2f}x{note}"
            )
            report[f"speedup {name}"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
