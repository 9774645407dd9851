"""Unicast throughput benchmark: PeerCrypt as the user times it, vs. scp and
this machine's own limits.

Sends a file (1 GiB by default) between two running node processes on
loopback. "ours" is the wall time of the ``peercrypt send`` command, from its
start to its exit 0 with the receiver's verified hash (the node's own span is
printed next to it). In the same run, interleaved with every transfer, into
the same directory: the write+fsync limit (as ``dd conv=fsync``), the bare
pipeline ceiling (``scripts/bench_ceiling.py``'s 1x1 pwrite: read, hash,
seal, zmq, open, write, hash, fsync and nothing else), scp to
root@127.0.0.1 (aes256-gcm) and scp followed by an fsync of the copy (ours
fsyncs) when an sshd and ssh-keygen are here (else one line says why not),
raw pyzmq tcp throughput and single-core AES-256-GCM. The node trees are
byte-compiled first, as an installed package is (``compile_tree``). Prints every run, then
medians of ``--runs`` (>= 5) runs, CPU seconds per GiB of both nodes (and of
each node's threads, by the names the node gives them: ``pc-receiver``,
``pc-writer``, ZeroMQ's ``ZMQbg/IO/1``...; ``NAME+`` is the threads NAME
started, such as BLAKE3's workers; ``ended:NAMES`` the threads that ended
before the sample, such as the final check's ``pc-check``) and peak RSS. ``--rss-sizes 256M,2G``
also checks that a node's peak RSS does not grow with file size. ``--json
FILE`` writes all numbers. ``--tree DIR`` also sends between two nodes run
from that source tree (an export of an older commit), interleaved: a
before/after of throughput and CPU per GiB; with ``--nodes-only``, nothing
else runs (more runs of a smaller file in the same minutes).

Two nodes of one host send chunks over the receiver's Unix socket
(peercrypt/local_ipc.py); ``--transport tcp`` runs the nodes with it turned
off (``PEERCRYPT_NO_LOCAL_IPC``), ``--transport both`` runs a second pair so
(over TCP) interleaved with the first. The shared-memory ring
(peercrypt/shm_ring.py) is off by default; ``--ring`` runs the first pair
(and ``--tree``'s) with it off (``PEERCRYPT_SHM_RING=false``) and one more
pair with it on (``PEERCRYPT_SHM_RING=true``),
and with ``--tree`` too one more of that tree's with it on (a before/after
of the ring's path). Every pair's sends are counted by the path
they took and the counts printed, so
each number says what it measured. ``--node-args`` go to every node,
unless ``--tree-node-args`` names the ``--tree`` nodes' (e.g. the writer's
``O_DIRECT`` on and off in one run, this code as both trees:
``--tree "$PWD" --nodes-only --tree-node-args=--no-direct-writes``).

Every leg (each pair's send, write+fsync, the ceiling, scp, scp+fsync, raw
zmq, AES) starts after the same step, ``--prepare`` (scripts/leg_conditions.py;
default ``settle``: earlier writeback done and the memory earlier legs freed
given back to the host), so that no leg's cost depends on its place in the
order. Each leg that writes the file records its writing side's CPU per
GiB (the receiving node's ``pc-writer``, dd's writes, the ceiling
receiver's ``pwrite``s, the receiving sshd and ``scp -t``) and the memory
counters around it; each run prints them with the load average, and the
summary gives medians per class (cheap, or 0.6 CPU s per GiB over the
cheapest leg of its kind: pages the host took back) besides the overall
ones.

    .venv/bin/python scripts/bench.py [--size 1G] [--runs 5] [--dir DIR] [--tree DIR]
        [--nodes-only] [--transport ipc|tcp|both] [--ring] [--prepare settle|warm|none]
        [--node-args=ARGS] [--tree-node-args=ARGS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercrypt.crypto.identity import new_network_key
from peercrypt.sizes import parse_size
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    child_pids,
    compile_tree,
    random_file,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ceiling  # the sibling script
import leg_conditions
from loopback_sshd import LoopbackSshd

MiB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children that run (a node's
    ``--isolate-data-plane`` sender and receiver), counted as the node's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a child that ended meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of ``pid`` and of its children (a node's
    ``--isolate-data-plane`` processes): tid -> (its name, seconds)."""
    out = {}
    tasks = [t for p in (pid, *child_pids(pid)) for t in Path(f"/proc/{p}/task").glob("*")]
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def switches(pid: int) -> int:
    """Context switches (voluntary and not) of all threads of ``pid`` so far:
    each wake-up of a thread is one, a count the machine's load does not bend."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(x.split()[1]) for x in lines if "ctxt_switches:" in x)
    return total


def per_thread(
    before: dict[int, tuple[str, float]], pid: int, process_before: float, seen: dict[int, str]
) -> dict[str, float]:
    """CPU seconds per thread name since ``before``. The node names its
    threads (pc-receiver, pc-writer...); a thread that another started
    without a name of its own (BLAKE3's workers, pyzmq's garbage collector)
    carries its starter's name and is counted as "NAME+". Threads that
    ended meanwhile (the final check's ``pc-check``, gone before this
    sample) are counted together as "ended:NAMES": the process's CPU since
    ``process_before`` (which keeps its ended threads' time) less that of
    the threads alive now; NAMES are those ``seen`` (tid -> name, by a
    :class:`ThreadNames` watching meanwhile) of the threads now gone."""
    now = thread_cpu(pid)
    process = cpu_seconds(pid) - process_before
    owner: dict[str, int] = {}
    for tid, (comm, _) in sorted(now.items()):
        owner.setdefault(comm, tid)
    spent: dict[str, float] = {}
    for tid, (comm, seconds) in now.items():
        name = comm if owner[comm] == tid else f"{comm}+"
        spent[name] = spent.get(name, 0.0) + seconds - before.get(tid, (comm, 0.0))[1]
    gone = sorted({name for tid, name in seen.items() if tid not in now})
    spent[f"ended:{'/'.join(gone) or '?'}"] = process - sum(spent.values())
    return {k: v for k, v in spent.items() if v >= 0.005}


class ThreadNames:
    """The names of ``pid``'s threads, seen every ``every`` seconds on a
    thread of its own while in a ``with`` block (tid -> name): what a
    thread that ended before the end was called."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                for tid, (comm, _) in thread_cpu(self.pid).items():
                    self.seen[tid] = comm
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> ThreadNames:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_limit(directory: Path, size: int) -> dict[str, float]:
    """MiB/s of writing ``size`` bytes in 1 MiB blocks and fsyncing (dd
    conv=fsync), and the CPU its writes took."""
    path = directory / "write-limit.tmp"
    block = os.urandom(MiB)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        cpu = time.thread_time()
        while left:
            left -= os.write(fd, block[: min(left, MiB)])
        cpu = time.thread_time() - cpu
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return {"write_limit_mib_s": size / MiB / seconds, "write_cpu:write_limit_mib_s": cpu}


def aes_gcm_single_core(size: int) -> float:
    aead = AESGCM(os.urandom(32))
    block = os.urandom(MiB)
    nonce = bytes(12)
    count = max(1, size // MiB)
    started = time.perf_counter()
    for _ in range(count):
        aead.encrypt(nonce, block, b"aad")
    return count / (time.perf_counter() - started)


_ZMQ_SINK = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.PULL); port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True); n = int(sys.argv[1])
for _ in range(n): s.recv(copy=False)
s.send  # noqa
ctl = ctx.socket(zmq.PUSH); ctl.connect(f"tcp://127.0.0.1:{sys.argv[2]}"); ctl.send(b"done")
ctl.close(linger=1000); s.close(linger=0); ctx.term()
"""


def raw_zmq(size: int) -> float:
    """MiB/s of 1 MiB messages PUSH->PULL between two processes over tcp loopback."""
    count = max(1, size // MiB)
    ctx: zmq.Context[Any] = zmq.Context()
    done = ctx.socket(zmq.PULL)
    done_port = done.bind_to_random_port("tcp://127.0.0.1")
    sink = subprocess.Popen(
        [sys.executable, "-c", _ZMQ_SINK, str(count), str(done_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        push = ctx.socket(zmq.PUSH)
        push.sndhwm = 64
        push.connect(f"tcp://127.0.0.1:{port}")
        block = os.urandom(MiB)
        started = time.perf_counter()
        for _ in range(count):
            push.send(block, copy=False)
        if not done.poll(120_000):
            raise RuntimeError("raw zmq sink did not finish")
        seconds = time.perf_counter() - started
        push.close(linger=0)
    finally:
        sink.wait(30)
        done.close(linger=0)
        ctx.term()
    return count / seconds


def transfer(
    sender: NodeProcess, receiver: NodeProcess, path: Path, digest: str
) -> dict[str, float]:
    """One ``peercrypt send`` timed as the user times it (command start to exit 0)."""
    mapped = receiver.counters().get("receiver.decrypt-buffers-mapped", 0)
    cpu_s, cpu_r = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
    threads_s, threads_r = thread_cpu(sender.pid), thread_cpu(receiver.pid)
    switched_s, switched_r = switches(sender.pid), switches(receiver.pid)
    with ThreadNames(sender.pid) as names_s, ThreadNames(receiver.pid) as names_r:
        started = time.perf_counter()
        code, result = sender.send_to(path, receiver, "--no-progress", timeout=600)
        wall = time.perf_counter() - started
    if code != 0 or not result.get("ok") or result.get("blake3") not in (None, digest):
        raise RuntimeError(f"transfer failed: {result}")
    cpu = {
        "sender_cpu_s": cpu_seconds(sender.pid) - cpu_s,
        "receiver_cpu_s": cpu_seconds(receiver.pid) - cpu_r,
        "sender_switches": switches(sender.pid) - switched_s,
        "receiver_switches": switches(receiver.pid) - switched_r,
    }
    threads = {
        **{
            f"threads:sender {k}": v
            for k, v in per_thread(threads_s, sender.pid, cpu_s, names_s.seen).items()
        },
        **{
            f"threads:receiver {k}": v
            for k, v in per_thread(threads_r, receiver.pid, cpu_r, names_r.seen).items()
        },
    }
    time.sleep(0.6)  # the node's counters reach its status every 0.5 s
    cpu["decrypt_maps"] = receiver.counters().get("receiver.decrypt-buffers-mapped", 0) - mapped
    stored = receiver.inbox / result["stored_as"]
    if blake3_file(stored) != digest:
        raise RuntimeError(f"{stored} differs from the source")
    stored.unlink()
    size = path.stat().st_size
    return {
        "mib_s": size / MiB / wall,
        "seconds": wall,
        "node_mib_s": size / MiB / result["seconds"],
        **cpu,
        **threads,
    }


class Scp:
    """scp over loopback to root@127.0.0.1 (aes256-gcm) with a throwaway key
    and an sshd of our own, if this machine can run one; ``why_not`` says
    why not otherwise."""

    def __init__(self, root: Path) -> None:
        self.why_not = ""
        self.sshd: LoopbackSshd | None = None
        try:
            self.sshd = LoopbackSshd(root)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            self.why_not = str(exc)
            return
        self.args = ["scp", "-q", "-c", "aes256-gcm@openssh.com", *self.sshd.scp_options]

    def copy(self, src: Path, dest: Path, fsync: bool) -> tuple[float, float]:
        """Seconds of one copy (and the fsync of the copy), and the CPU seconds
        of the receiving side (sshd's session and ``scp -t``, which sshd
        counts as its children's once they end)."""
        assert self.sshd is not None
        server = self.sshd.proc.pid
        children = children_cpu(server)
        started = time.perf_counter()
        proc = subprocess.run(
            [*self.args, str(src), f"root@127.0.0.1:{dest}"], capture_output=True, timeout=600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"scp failed: {proc.stderr.decode(errors='replace').strip()}")
        if fsync:
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        seconds = time.perf_counter() - started
        deadline = time.monotonic() + 10  # until sshd has reaped the session
        while has_children(server) and time.monotonic() < deadline:
            time.sleep(0.01)
        dest.unlink()
        return seconds, children_cpu(server) - children

    def close(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None


def children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children that ended and were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime + cstime


def has_children(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return any((task / "children").read_text().strip() for task in tasks)


def ceiling(path: Path, directory: Path) -> dict[str, float]:
    """MiB/s of the bare pipeline (bench_ceiling 1x1 pwrite) into ``directory``,
    and the CPU its receiver took in writing."""
    rate, _, _, written = bench_ceiling.run_once(path, directory / "ceiling.out", 1, 1, "pwrite")
    return {
        "ceiling_mib_s": rate,
        "write_cpu:ceiling_mib_s": written * path.stat().st_size / 2**30,
    }


def node_pair(
    root: Path, key: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> tuple[NodeProcess, NodeProcess]:
    sender = NodeProcess(root / "sender", network_key=key, env=env, extra_args=extra).start()
    receiver = NodeProcess(root / "receiver", network_key=key, env=env, extra_args=extra).start()
    for node in (sender, receiver):  # (--isolate-data-plane: its own processes)
        node.wait_for_attached()
    return sender, receiver


def other_pair(
    prefix: str, sender: NodeProcess, receiver: NodeProcess, source: Path, digest: str
) -> dict[str, float]:
    """The same transfer between another pair of nodes (the ``--tree``
    source tree's, or a pair over TCP), its numbers named with ``prefix``."""
    row = transfer(sender, receiver, source, digest)
    return {
        (k.replace("threads:", f"threads:{prefix}") if k.startswith("threads:") else prefix + k): v
        for k, v in row.items()
    }


def paths_taken(sender: NodeProcess) -> str:
    """How the sender's transfers went: over the Unix socket or over TCP."""
    c = sender.counters()
    ipc, tcp = c.get("sender.data-ipc", 0), c.get("sender.data-tcp", 0)
    moved = c.get("sender.data-ipc-fallbacks", 0)
    ring = c.get("sender.data-ring", 0)
    return (
        f"{ipc} over the Unix socket ({moved} moved to TCP), {tcp} over TCP, "
        f"{ring} through a shared-memory ring"
    )


LABELS = {
    "mib_s": "peercrypt send (CLI wall)",
    "node_mib_s": "  its node's own span",
    "tree_mib_s": "--tree's send (CLI wall)",
    "tcp_mib_s": "the same over TCP (CLI wall)",
    "ring_mib_s": "the same through the ring",
    "tree_ring_mib_s": "--tree's through the ring",
    "write_limit_mib_s": "write+fsync limit",
    "ceiling_mib_s": "bare pipeline ceiling",
    "scp_mib_s": "scp aes256-gcm",
    "scp_fsync_mib_s": "scp + fsync of the copy",
    "raw_zmq_mib_s": "raw pyzmq tcp 1 MiB",
    "aes_gcm_mib_s": "AES-256-GCM 1 core",
}


def classify(runs: list[dict[str, float]]) -> None:
    """Marks each leg of each run ``class:KEY`` 1 (expensive) or 0 (cheap) by
    its writing side's CPU per GiB against the cheapest leg of its kind."""
    for key in LABELS:
        legs = [r for r in runs if f"write_cpu:{key}" in r]
        marks = leg_conditions.classify([r[f"write_cpu:{key}"] for r in legs])
        for r, mark in zip(legs, marks, strict=True):
            r[f"class:{key}"] = 1.0 if mark == "expensive" else 0.0


def by_class(runs: list[dict[str, float]], per_gib: float) -> None:
    """Medians of the legs in each class, and ours against each other leg in
    the runs where both fell in the same class."""
    print(
        "  by class (cheap: the writing side within "
        f"{leg_conditions.EXPENSIVE_MARGIN} CPU s per GiB of its kind's cheapest leg):"
    )
    for key, label in LABELS.items():
        if f"class:{key}" not in runs[0]:
            continue
        parts = []
        for mark, name in ((0.0, "cheap"), (1.0, "expensive")):
            legs = [r for r in runs if r[f"class:{key}"] == mark]
            if not legs:
                continue
            text = f"{name} {statistics.median(r[key] for r in legs):.0f} MiB/s"
            text += f" (n={len(legs)}, writing "
            text += f"{statistics.median(r[f'write_cpu:{key}'] for r in legs) / per_gib:.2f}"
            prefix = key.removesuffix("mib_s")
            if f"{prefix}sender_cpu_s" in legs[0]:
                both = [r[f"{prefix}sender_cpu_s"] + r[f"{prefix}receiver_cpu_s"] for r in legs]
                text += f", both nodes {statistics.median(both) / per_gib:.2f} CPU s/GiB"
            text += ")"
            if key != "mib_s" and "class:mib_s" in runs[0]:
                same = [r for r in legs if r["class:mib_s"] == mark]
                if same:
                    ratio = statistics.median(r["mib_s"] / r[key] for r in same)
                    text += f" ours/this {ratio:.2f} (n={len(same)})"
            parts.append(text)
        print(f"    {label.strip():27} " + "; ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size (default 1G)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where files go (default: /tmp)")
    parser.add_argument("--rss-sizes", default="", help="e.g. 256M,2G: peak RSS per file size")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument(
        "--tree",
        type=os.path.abspath,
        default=None,
        help="also send between nodes run from this source tree",
    )
    parser.add_argument(
        "--nodes-only",
        action="store_true",
        help="only the sends (ours, and --tree's): no scp, limits or ceilings, for A/B runs",
    )
    parser.add_argument(
        "--transport",
        choices=("ipc", "tcp", "both"),
        default="ipc",
        help="chunks between the nodes over the Unix socket (the default between two "
        "nodes of one host), over TCP, or both pairs interleaved",
    )
    parser.add_argument(
        "--ring",
        action="store_true",
        help="the first pairs with the shared-memory ring off, and one more "
        "with it on (and one of --tree's), interleaved",
    )
    parser.add_argument("--node-args", default="", help="extra options of every node")
    parser.add_argument(
        "--tree-node-args",
        default=None,
        help="extra options of the --tree nodes instead of --node-args (e.g. "
        "--no-direct-writes on one side)",
    )
    parser.add_argument(
        "--prepare",
        choices=leg_conditions.PREPARATIONS,
        default="settle",
        help="the step before every leg (scripts/leg_conditions.py)",
    )
    args = parser.parse_args()
    size = parse_size(args.size)
    mib = size / MiB
    key = new_network_key()
    out: dict[str, Any] = {"size": size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="peercrypt-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        source = root / "source.bin"
        random_file(source, size)
        digest = blake3_file(source)
        scp = Scp(root) if not args.nodes_only else None
        if scp is not None and scp.why_not:
            print(f"scp: skipped ({scp.why_not})", flush=True)
        if args.tree:  # `python -m` puts the working directory first on sys.path
            os.chdir(root)
        here = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        for tree in (here["PYTHONPATH"], *([args.tree] if args.tree else [])):
            compile_tree(tree)  # as installed: the CLI's start is part of what is timed
        no_ipc = {**here, "PEERCRYPT_NO_LOCAL_IPC": "true"}
        # With --ring, the first pairs over the Unix socket, the ring's pairs with it.
        no_ring = {"PEERCRYPT_SHM_RING": "false"} if args.ring else {}
        extra = tuple(args.node_args.split())
        tree_extra = extra if args.tree_node_args is None else tuple(args.tree_node_args.split())
        sender, receiver = node_pair(
            root, key, no_ipc if args.transport == "tcp" else {**here, **no_ring}, extra
        )
        others: tuple[NodeProcess, NodeProcess] | None = None
        if args.tree:
            (root / "tree").mkdir()
            others = node_pair(root / "tree", key, {"PYTHONPATH": args.tree, **no_ring}, tree_extra)
        over_tcp: tuple[NodeProcess, NodeProcess] | None = None
        if args.transport == "both":
            (root / "tcp").mkdir()
            over_tcp = node_pair(root / "tcp", key, no_ipc, extra)
        ring: tuple[NodeProcess, NodeProcess] | None = None
        if args.ring:
            (root / "ring").mkdir()
            ring = node_pair(root / "ring", key, {**here, "PEERCRYPT_SHM_RING": "true"}, extra)
        tree_ring: tuple[NodeProcess, NodeProcess] | None = None
        if args.ring and args.tree:
            (root / "tree_ring").mkdir()
            tree_ring = node_pair(
                root / "tree_ring",
                key,
                {"PYTHONPATH": args.tree, "PEERCRYPT_SHM_RING": "true"},
                tree_extra,
            )

        def scp_rate(fsync: bool) -> dict[str, float]:
            assert scp is not None
            seconds, server_cpu = scp.copy(source, root / "scp.out", fsync)
            key = "scp_fsync_mib_s" if fsync else "scp_mib_s"
            return {key: mib / seconds, f"write_cpu:{key}": server_cpu}

        def send(prefix: str, pair: tuple[NodeProcess, NodeProcess]) -> dict[str, float]:
            row = other_pair(prefix, *pair, source, digest)
            writer = row.get(f"threads:{prefix}receiver pc-writer")
            row[f"write_cpu:{prefix}mib_s"] = (
                writer if writer is not None else row[f"{prefix}receiver_cpu_s"]
            )
            return row

        def leg(key: str, step: Any) -> Any:
            """``step`` after the same preparation as every other leg, with
            the memory counters around it."""

            def run() -> dict[str, float]:
                prepared = time.perf_counter()
                leg_conditions.prepare(args.prepare, size)
                prepared = time.perf_counter() - prepared
                counters = leg_conditions.Counters()
                row: dict[str, float] = step()
                row.update({f"{k}:{key}": v for k, v in counters.since().items()})
                row[f"prepare_s:{key}"] = prepared
                return row

            return run

        pairs = {
            "": (sender, receiver),
            "tree_": others,
            "tcp_": over_tcp,
            "ring_": ring,
            "tree_ring_": tree_ring,
        }
        sends: list[Any] = [
            leg(f"{prefix}mib_s", lambda prefix=prefix, pair=pair: send(prefix, pair))
            for prefix, pair in pairs.items()
            if pair is not None
        ]
        steps: list[Any] = [
            leg("write_limit_mib_s", lambda: write_limit(root, size)),
            *sends,
            leg("ceiling_mib_s", lambda: ceiling(source, root)),
        ]
        if scp is not None and not scp.why_not:
            steps += [leg("scp_mib_s", lambda: scp_rate(False))]
            steps += [leg("scp_fsync_mib_s", lambda: scp_rate(True))]
        steps += [
            leg("raw_zmq_mib_s", lambda: {"raw_zmq_mib_s": raw_zmq(size)}),
            leg("aes_gcm_mib_s", lambda: {"aes_gcm_mib_s": aes_gcm_single_core(size)}),
        ]
        if args.nodes_only:
            steps = sends
        per_gib = size / 2**30
        try:
            for run in range(args.runs):
                row: dict[str, float] = {"load": os.getloadavg()[0]}
                for step in steps if run % 2 == 0 else steps[::-1]:  # ABC.., then ..CBA
                    row.update(step())
                out["runs"].append(row)
                shown = " | ".join(
                    f"{LABELS[k].strip()} {row[k]:.0f}"
                    + (
                        f" (writing {row[f'write_cpu:{k}'] / per_gib:.2f})"
                        if f"write_cpu:{k}" in row
                        else ""
                    )
                    for k in LABELS
                    if k in row
                )
                print(
                    f"run {run + 1}, load {row['load']:.1f} (MiB/s, and the writing side's "
                    f"CPU s per GiB): {shown} | CPU s: sender "
                    f"{row['sender_cpu_s']:.2f}, receiver {row['receiver_cpu_s']:.2f}, "
                    f"decrypt buffers mapped {row['decrypt_maps']:.0f}",
                    flush=True,
                )
                for prefix, name in (
                    ("tree_", "--tree"),
                    ("tcp_", "over TCP"),
                    ("ring_", "ring"),
                    ("tree_ring_", "--tree's ring"),
                ):
                    if f"{prefix}sender_cpu_s" in row:
                        print(
                            f"  {name} CPU s: sender {row[f'{prefix}sender_cpu_s']:.2f}, "
                            f"receiver {row[f'{prefix}receiver_cpu_s']:.2f}, "
                            f"decrypt buffers mapped {row[f'{prefix}decrypt_maps']:.0f}",
                            flush=True,
                        )
            classify(out["runs"])
            out["peak_rss_mib"] = {
                "sender": peak_rss_mib(sender.pid),
                "receiver": peak_rss_mib(receiver.pid),
                **(
                    {
                        "tree_sender": peak_rss_mib(others[0].pid),
                        "tree_receiver": peak_rss_mib(others[1].pid),
                    }
                    if others
                    else {}
                ),
            }
            out["paths"] = {"ours": paths_taken(sender)}
            if over_tcp:
                out["paths"]["tcp"] = paths_taken(over_tcp[0])
            if ring:
                out["paths"]["ring"] = paths_taken(ring[0])
            if tree_ring:
                out["paths"]["--tree's ring"] = paths_taken(tree_ring[0])
        finally:
            sender.stop()
            receiver.stop()
            for node in (*(others or ()), *(over_tcp or ()), *(ring or ()), *(tree_ring or ())):
                node.stop()
            if scp is not None:
                scp.close()
        source.unlink()
        rss_rows = []
        for text in filter(None, args.rss_sizes.split(",")):
            n = parse_size(text)
            sub = root / f"rss-{text}"
            sub.mkdir()
            random_file(sub / "f.bin", n)
            s, r = node_pair(sub, key)
            try:
                transfer(s, r, sub / "f.bin", blake3_file(sub / "f.bin"))
                rss_rows.append(
                    {"size": text, "sender": peak_rss_mib(s.pid), "receiver": peak_rss_mib(r.pid)}
                )
            finally:
                s.stop()
                r.stop()
            (sub / "f.bin").unlink()
        out["rss_by_size"] = rss_rows
    keys = {k for r in out["runs"] for k in r}
    med = {k: statistics.median(r.get(k, 0.0) for r in out["runs"]) for k in sorted(keys)}
    out["median"] = med
    out["median_ratios"] = {
        k: statistics.median(r["mib_s"] / r[k] for r in out["runs"])
        for k in LABELS
        if k in med and k != "mib_s"
    }
    loads = [r["load"] for r in out["runs"]]
    print(
        f"\nmedian of {args.runs} runs, {mib:.0f} MiB file, 2 node processes on loopback, "
        f"each leg after the same step (--prepare {args.prepare}); load average "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    for name, taken in out["paths"].items():
        print(f"  sends of the {name} pair: {taken}")
    for k, label in LABELS.items():
        if k in med:
            ratio = "" if k == "mib_s" else f"   ours/this = {out['median_ratios'][k]:.2f}"
            print(f"  {label:27} {med[k]:8.0f} MiB/s{ratio}")
    by_class(out["runs"], per_gib)
    if "tree_mib_s" in med:
        print(
            f"  --tree {args.tree}: {med['tree_mib_s']:.0f} MiB/s (CLI wall); CPU s per GiB: "
            f"sender {med['tree_sender_cpu_s'] / per_gib:.2f}, "
            f"receiver {med['tree_receiver_cpu_s'] / per_gib:.2f}"
        )
    for prefix, name in (
        ("", ""),
        ("tree_", " of --tree"),
        ("tcp_", " over TCP"),
        ("ring_", " through the ring"),
        ("tree_ring_", " of --tree through the ring"),
    ):
        if f"{prefix}sender_cpu_s" in med:
            print(
                f"  CPU s per GiB{name}: sender {med[f'{prefix}sender_cpu_s'] / per_gib:.2f}, "
                f"receiver {med[f'{prefix}receiver_cpu_s'] / per_gib:.2f}, both "
                f"{(med[f'{prefix}sender_cpu_s'] + med[f'{prefix}receiver_cpu_s']) / per_gib:.2f}; "
                f"decrypt buffers mapped per GiB {med[f'{prefix}decrypt_maps'] / per_gib:.0f}"
            )
    for prefix in ("", "tree_", "tcp_", "ring_", "tree_ring_"):
        if f"{prefix}sender_switches" in med:
            print(
                f"  {prefix.rstrip('_') + ' ' if prefix else ''}context switches per GiB: sender "
                f"{med[f'{prefix}sender_switches'] / per_gib:.0f}, "
                f"receiver {med[f'{prefix}receiver_switches'] / per_gib:.0f}"
            )
    for prefix in (
        "threads:sender ",
        "threads:tree_sender ",
        "threads:receiver ",
        "threads:tree_receiver ",
        "threads:tcp_sender ",
        "threads:tcp_receiver ",
        "threads:ring_sender ",
        "threads:ring_receiver ",
        "threads:tree_ring_sender ",
        "threads:tree_ring_receiver ",
    ):
        by_thread = sorted(
            ((k[len(prefix) :], v) for k, v in med.items() if k.startswith(prefix)),
            key=lambda x: -x[1],
        )
        if by_thread:
            side = prefix[len("threads:") :].strip()
            print(
                f"  CPU s per GiB by thread, {side}: "
                + ", ".join(f"{n} {v / per_gib:.2f}" for n, v in by_thread if v / per_gib >= 0.01)
            )
    rss = out["peak_rss_mib"]
    print(f"  peak RSS: sender {rss['sender']:.0f} MiB, receiver {rss['receiver']:.0f} MiB")
    if "tree_sender" in rss:
        print(
            f"  peak RSS of --tree: sender {rss['tree_sender']:.0f} MiB, "
            f"receiver {rss['tree_receiver']:.0f} MiB"
        )
    for row in rss_rows:
        print(
            f"  peak RSS with a {row['size']} file: sender {row['sender']:.0f} MiB, "
            f"receiver {row['receiver']:.0f} MiB"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
