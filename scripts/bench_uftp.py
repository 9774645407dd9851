"""Multicast against UFTP, in network namespaces on one bridge (issue 14).

    sudo .venv/bin/python scripts/bench_uftp.py [--size-mib 256] [--mtu 1500,9000]
        [--runs 3] [--systems group,pub,uftp] [--json FILE] [--threads] [--tree DIR]

Needs root (namespaces) and ``uftp``/``uftpd`` on PATH (``apt-get install uftp``).
For each MTU the script builds its own network (``peercrypt.testing.netns``):
one bridge, a sender and three receivers, each host in its own namespace,
every veth and the bridge at that MTU; nothing is created in the root
namespace, and every multicast packet has TTL 1 on that bridge. Inboxes and
the source file are on tmpfs (/dev/shm), so the disk is not what is measured.
Then, interleaved run by run (so every system sees the same machine), the
same file goes from the sender to the three receivers by:

- ``group``: ``peercrypt send -m --group``: our datagrams to an IP multicast group;
- ``pub``: ``peercrypt send -m``: our ZeroMQ PUB/SUB over TCP (one copy per receiver);
- ``uftp``: UFTP's server (``uftp``, AES-256-GCM, SHA-256, no rate limit, closed
  group of the three ``uftpd`` clients) to ``uftpd`` daemons in the receivers'
  namespaces; block size = MTU - 100 (its manual: 100-200 below the path MTU;
  at most 8800, its limit).

Printed for every run, then the median run (by the slowest receiver's
goodput) per system: per-receiver goodput (file size / seconds from the
request to that receiver's verified file: ours report it per receiver;
UFTP's is its whole session, start of ``uftp`` to its exit, which ends when
every client has the file), the sender process's CPU seconds (user + system;
UFTP's from ``wait4``), and the bytes on the sender's link (its ``eth0`` tx
counter) as a multiple of the file size, and each receiving process's CPU
seconds (our node, UFTP's ``uftpd``) and all four processes' together
(they share the host's cores: a run's goodput follows that sum more than
any one thread; the goals' lines compare its medians), the datagrams the receivers' kernels
dropped for a full receive buffer during our runs (``RcvbufErrors``, printed
when not 0); with ``--threads``, ours also per
thread (CPU seconds, seconds waiting for a core and minor page faults, from
``/proc/PID/task/*/schedstat`` and ``stat``) of the sender and the first
receiver.
Every received file is compared
with the source by BLAKE3 after the run (ours also verify it themselves).

``--tree DIR`` (an export of an older commit: ``git archive main | tar -x
-C DIR``) also starts a sender and three receivers run from that source
tree, in the same namespaces, and each of our systems is run on them right
after ours (``group@tree``, ``pub@tree``; their group on another port), so
the two codes alternate run by run on the same machine.

Goals (issue 14): the group >= 1.5x UFTP's goodput at both MTUs with no more
sender CPU than UFTP, at least as fast as our PUB/SUB, and 1.0x bytes on the
sender's link.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import blake3

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing import netns
from peercrypt.testing.nodes import NodeProcess, random_file

MiB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUP = "239.255.81.1:7481"  # ours
TREE_GROUP = "239.255.81.2:7491"  # the --tree nodes'
UFTP_PUBLIC = "239.255.82.1"  # UFTP's announce group (its data group is 239.255.83.x)
UFTP_PORT = "7482"
UFTP_MAX_BLOCK = 8800  # the largest block size uftp accepts
RECEIVERS = 3
SYSTEMS = ("group", "pub", "uftp")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def thread_times(pid: int) -> dict[int, tuple[str, float, float, int]]:
    """Per thread of a process: (name, seconds on a CPU, seconds waiting for
    one, minor page faults) so far, from ``/proc/PID/task/*/schedstat`` and
    ``stat``."""
    out: dict[int, tuple[str, float, float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ran, waited = (task / "schedstat").read_text().split()[:2]
            faults = int((task / "stat").read_text().rsplit(")", 1)[1].split()[7])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        out[int(task.name)] = (name, int(ran) / 1e9, int(waited) / 1e9, faults)
    return out


class ThreadSampler:
    """:func:`thread_times` of a process every 20 ms while a run goes on,
    keeping each thread's last figures: a session's own threads (the
    sender's datagrams, a receiver's reads) end with it, before the run's
    end could see them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = thread_times(pid)
        self.seen = dict(self.before)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.02):
            self.seen.update(thread_times(self.pid))

    def stop(self) -> dict[str, tuple[float, float, int]]:
        self.done.set()
        self.thread.join()
        self.seen.update(thread_times(self.pid))
        return thread_delta(self.before, self.seen)


def thread_delta(
    before: dict[int, tuple[str, float, float, int]],
    after: dict[int, tuple[str, float, float, int]],
) -> dict[str, tuple[float, float, int]]:
    """CPU and run-queue seconds and minor faults per thread name between two
    snapshots (threads of one name summed; threads started meanwhile counted
    whole)."""
    out: dict[str, tuple[float, float, int]] = {}
    for tid, (name, ran, waited, faults) in after.items():
        _, ran0, waited0, faults0 = before.get(tid, (name, 0.0, 0.0, 0))
        cpu, wait, flt = out.get(name, (0.0, 0.0, 0))
        out[name] = (
            round(cpu + ran - ran0, 3),
            round(wait + waited - waited0, 3),
            flt + faults - faults0,
        )
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1][0]) if v[0] >= 0.005}


def tx_bytes(host: netns.Host) -> int:
    out = host.run(["ip", "-j", "-s", "link", "show", host.iface], timeout=10, check=True)
    return int(json.loads(out.stdout)[0]["stats64"]["tx"]["bytes"])


def rcvbuf_errors(host: netns.Host) -> int:
    """UDP datagrams the kernel dropped in ``host``'s namespace for a full
    receive buffer so far (``RcvbufErrors``, /proc/net/snmp)."""
    out = host.run(["cat", "/proc/net/snmp"], timeout=10, check=True).stdout
    names, values = [line.split() for line in out.splitlines() if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def refusals(nodes: list[NodeProcess]) -> dict[str, int]:
    """The receivers' counters of what they refused (datagrams, chunks), summed."""
    out: dict[str, int] = {}
    for node in nodes:
        for name, value in node.counters().items():
            if "dropped" in name:
                out[name] = out.get(name, 0) + value
    return out


def set_mtu(net: netns.TestNetwork, hosts: list[netns.Host], mtu: int) -> None:
    for h in hosts:
        for ns, dev in ((net.switch_ns, h.switch_port), (h.ns, h.iface)):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], check=True)


def uid(ip: str) -> str:
    return "0x" + "".join(f"{int(part):02X}" for part in ip.split("."))


def digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def only_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if len(files) != 1:
        raise RuntimeError(f"expected one received file in {directory}, found {files}")
    return files[0]


def clean(directory: Path) -> None:
    for p in directory.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


class Bench:
    def __init__(
        self, net: netns.TestNetwork, mtu: int, shm: Path, source: Path, tree: str | None = None
    ) -> None:
        self.net, self.mtu, self.shm, self.source = net, mtu, shm, source
        self.size = source.stat().st_size
        self.expected = digest(source)
        self.hosts = [net.add_host(f"h{i}", 0) for i in range(RECEIVERS + 1)]
        set_mtu(net, self.hosts, mtu)
        key = new_network_key()
        self.nodes, self.inboxes = self._nodes(key, f"mtu{mtu}-", None)
        # The nodes of --tree (an older source tree), in the same namespaces.
        self.tree_nodes: list[NodeProcess] = []
        self.tree_inboxes: list[Path] = []
        if tree is not None:
            env = {"PYTHONPATH": tree}
            self.tree_nodes, self.tree_inboxes = self._nodes(key, f"mtu{mtu}-tree-", env)
        self.uftp_dirs = []
        self.uftpd_pids: list[int] = []
        for i, host in enumerate(self.hosts[1:], 1):
            dest, temp = shm / f"mtu{mtu}-uftp{i}", shm / f"mtu{mtu}-uftp{i}.tmp"
            dest.mkdir()
            temp.mkdir()
            self.uftp_dirs.append(dest)
            daemon = host.popen(
                ["uftpd", "-d", "-q", "-x", "0", "-I", host.iface, "-M", UFTP_PUBLIC,
                 "-p", UFTP_PORT, "-U", uid(host.ip), "-D", str(dest), "-T", str(temp),
                 "-B", str(100 * MiB)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.uftpd_pids.append(daemon.pid)

    def _nodes(
        self, key: str, prefix: str, env: dict[str, str] | None
    ) -> tuple[list[NodeProcess], list[Path]]:
        nodes: list[NodeProcess] = []
        inboxes: list[Path] = []
        for i, host in enumerate(self.hosts):
            extra: tuple[str, ...] = ("--no-gossip",)
            if i > 0:
                inbox = self.shm / f"{prefix}inbox{i}"
                inboxes.append(inbox)
                extra += ("--inbox", str(inbox))
            # 60 s to start (not the tests' 15): 8 nodes start one after
            # the other on a machine that may be loaded by others.
            node = NodeProcess(
                self.shm / f"{prefix}node{i}", network_key=key, extra_args=extra,
                host=host.ip, netns=host.ns, env=env, start_timeout=60.0,
            )  # fmt: skip
            nodes.append(node.start())
        return nodes, inboxes

    def stop(self) -> None:
        for node in self.nodes + self.tree_nodes:
            node.stop()

    def verify(self, directories: list[Path]) -> None:
        for d in directories:
            got = only_file(d)
            if digest(got) != self.expected:
                raise RuntimeError(f"{got} differs from the source")
            clean(d)

    def ours(self, system: str) -> dict[str, Any]:
        old = system.endswith("@tree")
        nodes, inboxes = (self.tree_nodes, self.tree_inboxes) if old else (self.nodes, self.inboxes)
        sender, first, *rest = nodes
        to: list[str] = []
        for r in rest:
            to += ["--to", f"{r.host}:{r.port}"]
        if system.startswith("group"):
            to += ["--group", TREE_GROUP if old else GROUP]
        user, sys_ = cpu_times(sender.pid)
        tx = tx_bytes(self.hosts[0])
        receiving = [cpu_seconds(r.pid) for r in nodes[1:]]
        overflows = sum(rcvbuf_errors(h) for h in self.hosts[1:])
        refused = refusals(nodes[1:])
        samplers = [ThreadSampler(sender.pid), ThreadSampler(first.pid)]
        code, result = sender.send(
            self.source, first.host, first.port, "-m", *to, "--no-progress",
            "--timeout", "60", timeout=600,
        )  # fmt: skip
        user2, sys2 = cpu_times(sender.pid)
        tx = tx_bytes(self.hosts[0]) - tx
        receiving = [cpu_seconds(r.pid) - c for r, c in zip(nodes[1:], receiving, strict=True)]
        threads = [sampler.stop() for sampler in samplers]
        overflows = sum(rcvbuf_errors(h) for h in self.hosts[1:]) - overflows
        if code != 0:
            raise RuntimeError(f"{system} failed: {result}")
        self.verify(inboxes)
        stats = result["stats"]
        return {
            "goodput_mib_s": [self.size / MiB / float(r["seconds"]) for r in result["receivers"]],
            "sender_cpu_s": user2 - user + sys2 - sys_,
            "sender_sys_s": sys2 - sys_,
            "receiver_cpu_s": receiving,
            "link_x": tx / self.size,
            "repairs": int(stats["repairs_published"]) + int(stats["repairs_unicast"]),
            "rcvbuf_errors": overflows,  # datagrams the receivers' kernels dropped
            # what the receivers' nodes refused (counters reported every 0.5 s:
            # the last half second may be missing)
            "refused": {
                k: v - refused.get(k, 0)
                for k, v in refusals(nodes[1:]).items()
                if v != refused.get(k, 0)
            },
            "datagram_bytes": int(stats.get("datagram_bytes", 0)),
            "gso_batch": int(stats.get("gso_batch", 0)),
            # CPU s (and s waiting for a core) per thread: the sender, the first receiver
            "sender_threads": threads[0],
            "receiver_threads": threads[1],
        }

    def uftp(self) -> dict[str, Any]:
        sender = self.hosts[0]
        clients = ",".join(uid(h.ip) for h in self.hosts[1:])
        argv = [
            "uftp", "-x", "0", "-I", sender.iface, "-M", UFTP_PUBLIC, "-P", "239.255.83.x",
            "-p", UFTP_PORT, "-Y", "aes256-gcm", "-h", "sha256", "-R", "-1",
            "-b", str(min(self.mtu - 100, UFTP_MAX_BLOCK)), "-B", str(100 * MiB),
            "-H", clients, "-t", "1",
            str(self.source),
        ]  # fmt: skip
        tx = tx_bytes(sender)
        receiving = [cpu_seconds(pid) for pid in self.uftpd_pids]
        started = time.monotonic()
        proc = sender.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        tx = tx_bytes(sender) - tx
        receiving = [cpu_seconds(p) - c for p, c in zip(self.uftpd_pids, receiving, strict=True)]
        if proc.returncode != 0:
            raise RuntimeError(f"uftp exited {proc.returncode}: {out[-2000:]}")
        self.verify(self.uftp_dirs)
        return {
            "goodput_mib_s": [self.size / MiB / wall] * RECEIVERS,
            "sender_cpu_s": usage.ru_utime + usage.ru_stime,
            "sender_sys_s": usage.ru_stime,
            "receiver_cpu_s": receiving,
            "link_x": tx / self.size,
        }

    def run(self, system: str) -> dict[str, Any]:
        row = self.uftp() if system == "uftp" else self.ours(system)
        row["goodput_mib_s"] = [round(g, 1) for g in row["goodput_mib_s"]]
        row["min_goodput_mib_s"] = min(row["goodput_mib_s"])
        row["sender_cpu_s"] = round(row["sender_cpu_s"], 3)
        row["sender_sys_s"] = round(row["sender_sys_s"], 3)
        row["receiver_cpu_s"] = [round(c, 2) for c in row["receiver_cpu_s"]]
        row["link_x"] = round(row["link_x"], 3)
        return row


def describe(system: str, row: dict[str, Any], threads: bool = False) -> str:
    extra = ""
    if row.get("datagram_bytes"):
        extra = f", datagrams {row['datagram_bytes']} B x{row['gso_batch']} per send"
    if "repairs" in row:
        extra += f", repairs {row['repairs']}"
    if row.get("rcvbuf_errors"):
        extra += f" (receive buffers overflowed: {row['rcvbuf_errors']} datagrams)"
    if row.get("refused"):
        extra += f", receivers refused {row['refused']}"
    if threads and "sender_threads" in row:
        extra += f"\n    sender threads (CPU s, waiting s, minor faults): {row['sender_threads']}"
        extra += f"\n    a receiver's threads: {row['receiver_threads']}"
    return (
        f"{system:5}: per-receiver {row['goodput_mib_s']} MiB/s, sender CPU "
        f"{row['sender_cpu_s']} s (sys {row['sender_sys_s']}), receivers' CPU "
        f"{row['receiver_cpu_s']} s (all four {total_cpu(row):.2f}), "
        f"sender's link {row['link_x']}x the file{extra}"
    )


def total_cpu(row: dict[str, Any]) -> float:
    """CPU s of the sender and every receiver together: on one host they
    share the cores, so a run's goodput follows it more than any one thread."""
    return float(row["sender_cpu_s"] + sum(row["receiver_cpu_s"]))


def swapped(systems: list[str]) -> list[str]:
    """``systems`` with each of ours run after its ``@tree`` twin instead of before."""
    out = list(systems)
    for k, system in enumerate(out[:-1]):
        if out[k + 1] == f"{system}@tree":
            out[k], out[k + 1] = out[k + 1], system
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--mtu", default="1500,9000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--threads",
        action="store_true",
        help="print CPU, run-queue wait and minor faults per thread (sender, one receiver)",
    )
    ap.add_argument(
        "--tree",
        type=os.path.abspath,
        help="also run our systems from this source tree (an older export), alternated",
    )
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    if not set(systems) <= set(SYSTEMS):
        ap.error(f"--systems: some of {', '.join(SYSTEMS)}")
    if args.tree:
        if not (Path(args.tree) / "peercrypt").is_dir():
            ap.error(f"--tree: {args.tree} holds no peercrypt source tree")
        args.tree = str(Path(args.tree).resolve())
        systems = [t for s in systems for t in ((s, f"{s}@tree") if s != "uftp" else (s,))]
    if not netns.available():
        sys.exit(f"bench_uftp: network namespaces: {netns.unavailable_reason()}")
    if "uftp" in systems and not (shutil.which("uftp") and shutil.which("uftpd")):
        sys.exit("bench_uftp: uftp/uftpd not found (apt-get install uftp)")
    out: dict[str, Any] = {"size_mib": args.size_mib, "mtus": {}}
    shm = Path(tempfile.mkdtemp(prefix="pc-uftp-", dir="/dev/shm"))
    try:
        source = random_file(shm / "bench.bin", args.size_mib * MiB)
        for mtu in (int(m) for m in args.mtu.split(",")):
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            with netns.TestNetwork(groups=1, prefix="pcuftp") as net:
                bench = Bench(net, mtu, shm, source, args.tree)
                try:
                    for n in range(args.runs):
                        # With --tree, which code goes first alternates run by run.
                        order = systems if n % 2 == 0 else swapped(systems)
                        for system in order:
                            row = bench.run(system)
                            runs[system].append(row)
                            print(
                                f"MTU {mtu} run {n + 1} {describe(system, row, args.threads)}",
                                flush=True,
                            )
                finally:
                    bench.stop()
            medians: dict[str, Any] = {}
            for system in systems:
                ordered = sorted(runs[system], key=lambda r: r["min_goodput_mib_s"])
                median = dict(ordered[len(ordered) // 2])
                median["median_cpu_s"] = statistics.median(r["sender_cpu_s"] for r in ordered)
                median["median_total_cpu_s"] = statistics.median(total_cpu(r) for r in ordered)
                medians[system] = {**median, "runs": runs[system]}
                print(f"MTU {mtu} median {describe(system, median)}", flush=True)
            out["mtus"][str(mtu)] = medians
            if {"group", "uftp"} <= set(systems):
                g, u = medians["group"], medians["uftp"]
                print(
                    f"MTU {mtu} goals: group/uftp goodput "
                    f"{g['min_goodput_mib_s'] / u['min_goodput_mib_s']:.2f}x (>= 1.5), "
                    f"sender CPU {g['median_cpu_s']:.2f} vs uftp {u['median_cpu_s']:.2f} s "
                    f"(<=), link {g['link_x']}x (1.0); all four processes' CPU "
                    f"{g['median_total_cpu_s']:.2f} vs {u['median_total_cpu_s']:.2f} s",
                    flush=True,
                )
            if {"group", "pub"} <= set(systems):
                g, p = medians["group"], medians["pub"]
                ratio = g["min_goodput_mib_s"] / p["min_goodput_mib_s"]
                cpu = f"{g['median_total_cpu_s']:.2f} vs {p['median_total_cpu_s']:.2f} s"
                print(
                    f"MTU {mtu} goals: group/pub goodput {ratio:.2f}x (>= 1.0); "
                    f"all four processes' CPU {cpu}",
                    flush=True,
                )
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
