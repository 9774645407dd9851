#!/usr/bin/env python3
"""Benchmark of docker-compose.yml's cluster run in network namespaces (root).

``cluster`` (default), for each size N in ``--sizes`` (16 32): the compose
file's bootstrap node and N-1 peer replicas (scripts/netns_cluster.py's
NetnsCluster), spread over ``--groups`` bridges joined by trunks, with the
compose file's settings (gossip every 5 s unless ``--gossip-interval``):

- convergence: from the moment the last node's process starts until every
  node's status counts all N members alive (a poller inside each namespace
  reads its node's control socket every 0.25 s; so it includes the nodes'
  own start-up, ~1-3 s of Python on this loaded 2-core machine);
- transfer: 256 MiB (``--size``) from the first peer to the last (on the
  first and the last bridge: the farthest hosts) while gossip runs;
- memory: each node process's RSS (VmRSS) after the transfer, and its peak
  (VmHWM).

``grant-rtt``: the scheduler's round trip, local and attached across hosts:
a node on one host, its scheduler a ``peercrypt actor scheduler`` process
on another; ``--rounds`` SettingRequests (what a FlowDemand/FlowGrant pair
also travels: control/sender -> proxy -> attach -> gateway -> CURVE/TCP ->
link -> scheduler and back), timed from inside the node's namespace;
compared with the same node running its own scheduler.

Prints one JSON line per measurement. Usage:
    sudo .venv/bin/python scripts/bench_cluster.py [cluster] [--sizes 16 32]
    sudo .venv/bin/python scripts/bench_cluster.py grant-rtt [--rounds 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peercrypt.crypto.identity import new_network_key  # noqa: E402
from peercrypt.testing import netns  # noqa: E402
from peercrypt.testing.cluster import NetnsCluster, Node  # noqa: E402
from peercrypt.testing.nodes import (  # noqa: E402
    ActorProcess,
    NodeProcess,
    blake3_file,
    random_file,
    wait_until,
)

MiB = 1 << 20
PORT = 7400

# Runs inside a node's namespace: prints "monotonic members_alive" lines.
POLLER = """
import sys, time
from pathlib import Path
from peercrypt.client import ControlClient, NodeUnavailable
data_dir = Path(sys.argv[1])
while True:
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            alive = client.status(timeout=2.0).node.get("members_alive", "0")
    except NodeUnavailable:
        alive = "0"
    print(f"{time.monotonic():.3f} {alive}", flush=True)
    time.sleep(0.25)
"""

# Runs inside a node's namespace: times SettingRequest round trips.
RTT_PROBE = """
import json, sys, time
from pathlib import Path
from peercrypt.client import ControlClient
from peercrypt.wire.messages import SettingReply, SettingRequest
rounds = int(sys.argv[2])
times = []
with ControlClient.for_data_dir(Path(sys.argv[1])) as client:
    for i in range(rounds + 20):
        started = time.perf_counter()
        client.send(SettingRequest(request=i + 1, name="max-rate", value="0"))
        reply = client.receive(5.0)
        assert isinstance(reply, SettingReply) and reply.ok, reply
        if i >= 20:  # warm-up: connections made, code paths hot
            times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def bench_cluster(size: int, groups: int, transfer: int, gossip: str, workdir: Path) -> None:
    environ = {"PEERCRYPT_NETWORK_KEY": new_network_key()}
    if gossip:
        environ["GOSSIP_INTERVAL"] = gossip
    started = time.monotonic()
    with NetnsCluster(
        ROOT / "docker-compose.yml",
        workdir / f"n{size}",
        scale={"peer": size - 1},
        environ=environ,
        groups=groups,
        prefix="pcbench",
    ) as cluster:
        pollers = {
            node.name: node.host.popen(
                [sys.executable, "-c", POLLER, str(node.data_dir)],
                stdout=subprocess.PIPE,
                text=True,
                env=node.env,
            )
            for node in cluster.nodes
        }
        last_start = max(node.started_at for node in cluster.nodes)
        converged_at: dict[str, float] = {}
        deadline = last_start + 600
        while len(converged_at) < size and time.monotonic() < deadline:
            for name, proc in pollers.items():
                if name in converged_at or proc.stdout is None:
                    continue
                stamp, alive = proc.stdout.readline().split()
                if int(alive) >= size:
                    converged_at[name] = float(stamp)
        for proc in pollers.values():
            proc.kill()
            proc.wait(10)
        convergence = max(converged_at.values()) - last_start if len(converged_at) == size else None
        cluster.wait_all_healthy(timeout=600)
        ready = time.monotonic()
        print(
            json.dumps(
                {
                    "bench": "convergence",
                    "nodes": size,
                    "groups": groups,
                    "gossip_interval": gossip or "5 (default)",
                    "start_to_all_healthy_s": round(ready - started, 2),
                    "converged_after_last_start_s": None
                    if convergence is None
                    else round(convergence, 2),
                    "converged_nodes": len(converged_at),
                }
            ),
            flush=True,
        )
        peers = cluster.service("peer")
        sender, receiver = peers[0], peers[-1]
        path = random_file(workdir / f"big-{size}.bin", transfer)
        result = _send(sender, path, receiver)
        print(
            json.dumps(
                {
                    "bench": "transfer",
                    "nodes": size,
                    "from": f"{sender.name} ({sender.ip})",
                    "to": f"{receiver.name} ({receiver.ip})",
                    "bytes": transfer,
                    "ok": result.get("ok"),
                    "verified": result.get("blake3") == blake3_file(path),
                    "seconds": result.get("seconds"),
                    "mib_per_s": result.get("mib_per_s"),
                }
            ),
            flush=True,
        )
        path.unlink()
        memory = [rss_kib(node.proc.pid) for node in cluster.nodes if node.proc is not None]
        rss = [r for r, _ in memory]
        print(
            json.dumps(
                {
                    "bench": "memory",
                    "nodes": size,
                    "rss_mib_median": round(statistics.median(rss) / 1024, 1),
                    "rss_mib_max": round(max(rss) / 1024, 1),
                    "peak_mib_max": round(max(h for _, h in memory) / 1024, 1),
                    "rss_mib_sender": round(rss_kib(sender.proc.pid)[0] / 1024, 1)  # type: ignore[union-attr]
                    if sender.proc
                    else None,
                    "rss_mib_receiver": round(rss_kib(receiver.proc.pid)[0] / 1024, 1)  # type: ignore[union-attr]
                    if receiver.proc
                    else None,
                }
            ),
            flush=True,
        )
    codes = cluster.close()
    bad = {k: v for k, v in codes.items() if v != 0}
    if bad:
        print(json.dumps({"bench": "stop", "nodes": size, "nonzero_exits": bad}), flush=True)


def _send(sender: Node, path: Path, receiver: Node) -> dict[str, object]:
    result = sender.cli(
        "send", path, receiver.container.hostname, str(PORT), "--json", "--timeout", "60",
        timeout=600,
    )  # fmt: skip
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"ok": False, "error": result.stderr.strip()}


def bench_grant_rtt(rounds: int, workdir: Path) -> None:
    key = new_network_key()
    with netns.TestNetwork(groups=1, prefix="pcrtt") as net:
        a, c = net.add_host("node"), net.add_host("sched")
        sched = ActorProcess(workdir / "sched", "scheduler", [f"{a.ip}:{PORT}"], key, netns=c.ns)
        fp = sched.fingerprint()
        cases = {
            "local": NodeProcess(
                workdir / "local", key, extra_args=("--no-gossip",), host=a.ip, netns=a.ns
            ),
            "attached": NodeProcess(
                workdir / "remote",
                key,
                extra_args=(
                    "--no-gossip",
                    "--port",
                    str(PORT),
                    "--remote-actor",
                    "scheduler",
                    "--attach-allow",
                    fp,
                ),
                host=a.ip,
                netns=a.ns,
            ),
        }
        for case, node in cases.items():
            node.start()
            try:
                if case == "attached":
                    sched.start()
                    wait_until(
                        lambda n=node: n.status().get("remote_scheduler") == f"attached {fp}",
                        30,
                        "the scheduler to attach",
                    )
                probe = a.run(
                    [sys.executable, "-c", RTT_PROBE, str(node.data_dir), str(rounds)],
                    timeout=600,
                    check=True,
                )
                times = sorted(json.loads(probe.stdout))
                link = node.status().get("link_rtt_ms") if case == "attached" else None
                print(
                    json.dumps(
                        {
                            "bench": "scheduler-round-trip",
                            "scheduler": case,
                            "rounds": rounds,
                            "median_ms": round(statistics.median(times) * 1000, 3),
                            "p90_ms": round(times[int(len(times) * 0.9)] * 1000, 3),
                            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
                            "link_beat_rtt_ms": link,
                        }
                    ),
                    flush=True,
                )
            finally:
                if case == "attached":
                    sched.stop()
                node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="cluster", choices=["cluster", "grant-rtt"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--size", type=int, default=256 * MiB, help="bytes of the transfer")
    parser.add_argument("--gossip-interval", default="", help="seconds (default: the node's)")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    reason = netns.unavailable_reason()
    if reason is not None:
        print(f"peercrypt: error: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="peercrypt-bench-") as tmp:
        if args.what == "grant-rtt":
            bench_grant_rtt(args.rounds, Path(tmp))
        else:
            for size in args.sizes:
                bench_cluster(size, args.groups, args.size, args.gossip_interval, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
