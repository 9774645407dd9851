"""Benchmark: how soon a transfer moves again after a link outage.

Two nodes in network namespaces this script builds (root). A rate-limited
send runs; one side's link is unplugged at the switch for ``--outage``
seconds (shorter than the send's ``--timeout``) and plugged back in. The
time from the restore to the next chunk the sender sees acknowledged is
measured by a poller inside the sender's namespace that asks the node for
its running sends every 10 ms. Every run is printed; then the median and
the worst per side. Goal (docs/resume.md): under 2 s.

    sudo .venv/bin/python scripts/bench_outage.py [--runs 3] [--outage 4] [--side both]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.netns import Host, TestNetwork
from peercrypt.testing.nodes import NodeProcess, blake3_file, random_file, wait_until

MiB = 2**20
SIZE = 96 * MiB
RATE = 6 * MiB  # bytes/s: 16 s for the file, the outage lands mid-way
TIMEOUT = 10.0

# Runs inside the sender's namespace: prints "wall-clock acked-bytes" each
# time a running send's acknowledged bytes change.
POLLER = """
import sys, time
from pathlib import Path
from peercrypt.client import ControlClient
from peercrypt.wire.messages import TransfersReply, TransfersRequest
client = ControlClient.for_data_dir(Path(sys.argv[1]))
last = None
while True:
    client.send(TransfersRequest(request=client.next_id()))
    reply = client.receive(5.0)
    if isinstance(reply, TransfersReply):
        done = sum(int(t["bytes"]) for t in reply.transfers if t["state"] == "sending")
        if done != last:
            print(f"{time.time():.4f} {done}", flush=True)
            last = done
    time.sleep(0.01)
"""


class AckWatch:
    """The poller's lines, kept as (wall time, acked bytes)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.points: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            wall, done = line.split()
            with self.lock:
                self.points.append((float(wall), int(done)))

    def acked(self) -> int:
        with self.lock:
            return self.points[-1][1] if self.points else 0

    def first_progress_after(self, t: float, level: int) -> float | None:
        with self.lock:
            for wall, done in self.points:
                if wall > t and done > level:
                    return wall
        return None


def one_run(
    net: TestNetwork, hosts: dict[str, Host], sender: NodeProcess, receiver: NodeProcess,
    side: str, outage: float, work: Path, n: int,
) -> float:  # fmt: skip
    path = random_file(work / f"f{side}{n}.bin", SIZE)
    send = subprocess.Popen(
        [*sender.argv[: sender.argv.index("--data-dir")], "--data-dir", str(sender.data_dir),
         "send", str(path), receiver.host, str(receiver.port), "--json", "--force",
         "-r", str(RATE), "--timeout", str(TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    host = hosts[side]
    poller = subprocess.Popen(
        ["ip", "netns", "exec", hosts["sender"].ns,
         sys.executable, "-c", POLLER, str(sender.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    watch = AckWatch(poller)
    try:
        wait_until(lambda: watch.acked() >= 16 * MiB, 60, "16 MiB acknowledged")
        net.isolate(host)
        time.sleep(outage)
        level = watch.acked()
        net.rejoin(host)
        restored = time.time()
        moved = wait_until(lambda: watch.first_progress_after(restored, level), 30, "progress")
        out, err = send.communicate(timeout=120)
        if send.returncode != 0:
            sys.exit(f"{side} run {n}: the send failed: {err.strip() or out.strip()}")
        if blake3_file(receiver.inbox / path.name) != blake3_file(path):
            sys.exit(f"{side} run {n}: the stored file differs")
        (receiver.inbox / path.name).unlink()
        path.unlink()
        return moved - restored
    finally:
        poller.kill()
        poller.wait()
        if send.poll() is None:
            send.kill()
            send.communicate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per side")
    ap.add_argument("--outage", type=float, default=4.0, help="seconds the link is down")
    ap.add_argument("--side", choices=("sender", "receiver", "both"), default="both")
    args = ap.parse_args()
    sides = ["sender", "receiver"] if args.side == "both" else [args.side]
    results: dict[str, list[float]] = {s: [] for s in sides}
    with (
        tempfile.TemporaryDirectory(prefix="pc-outage-") as tmp,
        TestNetwork(groups=1, prefix="pcbo") as net,
    ):
        work = Path(tmp)
        key = new_network_key()
        hosts = {"sender": net.add_host("s"), "receiver": net.add_host("r")}
        nodes = {
            name: NodeProcess(
                data_dir=work / name, network_key=key, host=h.ip, netns=h.ns, start_timeout=60.0
            ).start()
            for name, h in hosts.items()
        }
        try:
            for n in range(args.runs):
                for side in sides:
                    took = one_run(
                        net, hosts, nodes["sender"], nodes["receiver"], side, args.outage, work, n
                    )
                    results[side].append(took)
                    print(f"cut on the {side}'s side for {args.outage:g} s, run {n + 1}: "
                          f"moving again {took:.3f} s after the restore", flush=True)  # fmt: skip
        finally:
            for node in nodes.values():
                node.stop()
    for side, times in results.items():
        print(f"{side}: median {statistics.median(times):.3f} s, worst {max(times):.3f} s "
              f"over {len(times)} runs (goal < 2 s)")  # fmt: skip


if __name__ == "__main__":
    main()
