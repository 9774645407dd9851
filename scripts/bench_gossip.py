#!/usr/bin/env python3
"""Benchmark of discovery and health monitoring with real node processes.

For each cluster size N (default 8 16 32) on 127.0.0.1:

- convergence: N nodes all bootstrapping from the first, gossip every
  ``--gossip-interval`` (0.2 s); the time from the last node's start until
  every node lists every other as alive, also in gossip intervals;
- detection: one node is killed with SIGKILL; the time until every other
  node lists it dead, also in health intervals;
- gossip traffic: bytes sent by discovery per node per second (counter
  ``discovery.gossip-bytes-out`` over a quiet period).

``--soak SECONDS`` additionally runs the false-death test: N nodes for that
long while another process saturates every core; any node declared dead is a
false death. Prints one JSON line per measurement.

Usage: scripts/bench_gossip.py [--sizes 8 16 32] [--soak 300]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, wait_until
from peercrypt.wire.network_messages import PeersReply, PeersRequest


def peers(node: NodeProcess) -> dict[str, str]:
    try:
        with ControlClient.for_data_dir(node.data_dir) as client:
            client.send(PeersRequest(request=1))
            reply = client.receive(5.0)
    except NodeUnavailable:
        return {}
    assert isinstance(reply, PeersReply)
    return {row["id"]: row["state"] for row in reply.peers}


def all_state(nodes: list[NodeProcess], subject: NodeProcess | None, state: str) -> bool:
    for node in nodes:
        table = peers(node)
        targets = [subject] if subject is not None else [n for n in nodes if n is not node]
        if not all(table.get(t.fingerprint) == state for t in targets):
            return False
    return True


def start_cluster(root: Path, n: int, args: list[str]) -> list[NodeProcess]:
    key = new_network_key()
    seed = NodeProcess(root / "n0", network_key=key, extra_args=args).start()
    boot = ["--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(seed.port)]
    rest = [
        NodeProcess(root / f"n{i}", network_key=key, extra_args=[*args, *boot], start_timeout=60)
        for i in range(1, n)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda node: node.start(), rest))
    return [seed, *rest]


def stop_all(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        if node.running:
            node.send_signal()
    for node in nodes:
        if node.proc is not None:
            try:
                node.stop()
            except Exception as exc:  # report, keep stopping the others
                print(f"stop: {exc}", file=sys.stderr)


def run_size(n: int, gossip: float, health: float) -> dict[str, object]:
    args = ["--gossip-interval", str(gossip), "--health-check-interval", str(health)]
    with tempfile.TemporaryDirectory(prefix="pc-bench-") as tmp:
        started = time.monotonic()
        nodes = start_cluster(Path(tmp), n, args)
        try:
            ready = time.monotonic()
            wait_until(lambda: all_state(nodes, None, "alive"), 120, "convergence", 0.02)
            converge = time.monotonic() - ready
            before = {id(x): x.counters().get("discovery.gossip-bytes-out", 0) for x in nodes}
            t0 = time.monotonic()
            time.sleep(5.0)
            after = {id(x): x.counters().get("discovery.gossip-bytes-out", 0) for x in nodes}
            span = time.monotonic() - t0
            rate = sum(after[k] - before[k] for k in after) / len(nodes) / span
            victim = nodes[-1]
            victim.kill()
            killed = time.monotonic()
            survivors = nodes[:-1]
            wait_until(lambda: all_state(survivors, victim, "dead"), 120, "detection", 0.02)
            detect = time.monotonic() - killed
        finally:
            stop_all(nodes)
    return {
        "nodes": n,
        "gossip_interval": gossip,
        "health_interval": health,
        "startup_s": round(ready - started, 2),
        "convergence_s": round(converge, 3),
        "convergence_intervals": round(converge / gossip, 1),
        "detection_s": round(detect, 3),
        "detection_intervals": round(detect / health, 2),
        "gossip_bytes_per_s_per_node": round(rate),
    }


def _burn() -> None:
    while True:
        pass


def soak(n: int, seconds: float, gossip: float, health: float) -> dict[str, object]:
    args = ["--gossip-interval", str(gossip), "--health-check-interval", str(health)]
    burners = [
        multiprocessing.Process(target=_burn, daemon=True) for _ in range(os.cpu_count() or 2)
    ]
    with tempfile.TemporaryDirectory(prefix="pc-soak-") as tmp:
        nodes = start_cluster(Path(tmp), n, args)
        try:
            wait_until(lambda: all_state(nodes, None, "alive"), 120, "convergence", 0.05)
            for b in burners:
                b.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(1.0)
            deaths = sum(x.counters().get("health.became-dead", 0) for x in nodes)
            suspects = sum(x.counters().get("health.became-suspect", 0) for x in nodes)
        finally:
            for b in burners:
                b.terminate()
            stop_all(nodes)
    return {
        "soak_nodes": n,
        "seconds": seconds,
        "health_interval": health,
        "cores_saturated": len(burners),
        "false_deaths": deaths,
        "suspicions": suspects,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--gossip-interval", type=float, default=0.2)
    parser.add_argument("--health-interval", type=float, default=1.0)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of the false-death test")
    parser.add_argument("--soak-nodes", type=int, default=8)
    opts = parser.parse_args()
    for n in opts.sizes:
        print(json.dumps(run_size(n, opts.gossip_interval, opts.health_interval)), flush=True)
    if opts.soak > 0:
        result = soak(opts.soak_nodes, opts.soak, opts.gossip_interval, opts.health_interval)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
