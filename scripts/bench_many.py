"""Many transfers at once: 64 concurrent sends among 4 node processes.

Four ``peercrypt node`` processes on loopback. Each node sends
``--per-node`` (16) files of ``--size`` (16 MiB) at once, spread over the
other three nodes, so every node has 16 outgoing and about 16 incoming
transfers in flight. The sends are handed to each node's control socket
directly (as ``peercrypt send`` does, without 64 interpreter starts); every
stored file's BLAKE3 is checked against its source afterwards.

Measured per run (every run is printed):

- **aggregate** goodput: all bytes / the time from the first request to the
  last verified hash, against **one transfer's** goodput measured alone
  just before and just after (their mean: the machine's load drifts;
  ``--single-size``, 256 MiB, between two of the same nodes, the node's
  own span). Goal: >= 0.90. The one after runs once the load's files are
  checked and removed, as the one before ran after the previous run's
  were: on this host a write into pages the system freed a while ago (or
  never used) costs several times one into pages just freed (the VM hands
  free memory back to its host), and with the load's 2 GiB still held the
  one after ran at half the rate of the one before, which the mean hid.
  Printed beside it: the bytes written per 0.5 s into each node, the cores
  the nodes kept busy per 0.5 s, and their CPU by thread in the load's
  first 0.5 s, its middle and its last 1.5 s (where a ramp or tail goes:
  waiting, or work), and in 2 s of quiet once the load's files are checked.
- **fairness**: Jain's index over the equal-priority flows' rates (size /
  the node's time of each). Goal: >= 0.95.
- **retransmitted** fraction: chunks sent twice / chunks. Goal: <= 1%.
- **peak RSS** of each node during the load (VmHWM, reset before it
  through ``/proc/PID/clear_refs``). Goal: <= 150 MiB (16 transfers in
  flight each way). Beside it the peaks of RSS, PSS, USS and shared-memory
  PSS read from ``/proc/PID/smaps_rollup`` every 0.1 s: a shared-memory
  ring's pages count whole in the RSS of both nodes that map it.
- **control plane under load**: while the sends run, one thread times
  ``status`` round trips to a node's control socket, another health checks
  of one node from another (the CLI's ``health-check``: control socket,
  CURVE probe, answer); p50/p99 of each (goal p99 <= 50 ms), next to the
  same measured idle before the load; at the end, every run's samples
  pooled (p50/p90/p99, the share over 50 ms; the JSON keeps them all:
  ``check_samples_ms``, ``status_samples_ms``). A pair of probes every
  ``--probe-gap`` seconds (0.02 by default: ~40 a second, whose CPU on
  the nodes and in this script the transfers lose). The nodes form one network (nodes
  1..3 join node 0), so node 0 probes node 1 and its checks ride on that
  probe connection; ``--strangers``: they do not, and each check rides on
  the connection the previous one opened (kept for 30 s).
- **CPU per GiB** of the four nodes together (``/proc/PID/stat``), for the
  one transfer alone and for the many, and the load average; and the
  many's CPU per send (``--size 64K``: what a send costs beyond its bytes,
  the offer, handshakes, files, records and the load's probes).
- **context switches per GiB** by thread name (thousands, voluntary and
  involuntary together, ``/proc/PID/task/*/status``), one alone and all at
  once: each is a wake-up (a message handed between actors, an ack, a lock)
  or a preemption.

``--one-source-per-node``: each node's sends read one file under as many
names (hard links), so the sources hold 4 files' pages, not 64. On this
project's VM, memory beyond the ~2.5 GiB the guest used last costs about
8 times as much to write the first time (the host backs it again;
``scripts/host_memory.py`` shows it): with 64 sources of 32 MiB in tmpfs
and the load's 2 GiB written beside them, the load's last second writes
into such memory while the one alone (256 MiB, written where the files
removed just before were) does not. With one source per node, a tmpfs
load stays within what the host keeps backed.

``--tree DIR`` also starts four nodes run from that source tree (an export
of an older commit: ``git archive main | tar -x -C DIR``) and alternates
the runs between the two sets (this code's first in odd runs, the tree's in
even ones), so both are measured in the same minutes of a shared machine;
the medians and pooled samples are printed for each set. ``--warmup N``
(default 1) first runs the whole load N times on each set, printed as
``warm-up`` runs and left out of the medians: the first load after the
source files were made and the nodes started ran in a slow phase of this
host in every set measured (docs/benchmarks.md, "Acks while chunks wait
for the writer"), and with ``--tree`` it was always this code's. ``--node-args``
go to every node, unless ``--tree-node-args`` names the tree's (e.g.
``--node-args=--shm-ring --tree-node-args=``: the ring on this code's nodes
only).

    .venv/bin/python scripts/bench_many.py [--runs 3] [--warmup 1] [--size 16M] [--per-node 16]
        [--dir DIR] [--strangers] [--checks N] [--tree DIR] [--probe-gap S] [--json FILE]
        [--one-source-per-node]
        [--node-args=ARGS] [--tree-node-args=ARGS]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from peercrypt.chunking import DEFAULT_CHUNK, DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK
from peercrypt.client import ControlClient
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    child_pids,
    parse_size,
    random_file,
)
from peercrypt.wire import codec
from peercrypt.wire.local_messages import Progress
from peercrypt.wire.messages import SendRequest, SendResult
from peercrypt.wire.network_messages import CheckRequest, CheckResult

MiB = 2**20
SEND_TIMEOUT = 600.0
QUIET = 2.0  # seconds the nodes are watched doing nothing after each load


@dataclass
class Flow:
    sender: int
    receiver: int
    path: Path
    request: int = 0
    result: SendResult | None = None
    done_at: float = 0.0  # perf_counter when its result came
    # (perf_counter, bytes the receiver has written) from its Progress, 0.1 s apart
    progress: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Latencies:
    status: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)
    check_rtt: list[float] = field(default_factory=list)  # the node's own probe RTT


def jain(rates: list[float]) -> float:
    return sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates)) if rates else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # (a node's data-plane process that ended meanwhile)
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads;
    0 for one that ended meanwhile: a node's data-plane process restarted)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far per thread name (``pc-sender``, ``ZMQbg/IO/#``...),
    summed over the processes ``pids``: where the nodes' time goes."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):  # (none: the process ended)
            try:
                name = (task / "comm").read_text().strip().rstrip("0123456789")
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a thread that ended meanwhile
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_switches(pids: list[int]) -> dict[str, float]:
    """Context switches so far per thread name (voluntary and involuntary
    together), summed over the processes ``pids``: each is a wake-up (a
    message handed between actors, a lock waited for) or a preemption."""
    out: dict[str, float] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):  # (none: the process ended)
            try:
                name = (task / "comm").read_text().strip().rstrip("0123456789")
                lines = (task / "status").read_text().splitlines()
            except OSError:
                continue
            n = sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
            out[name] = out.get(name, 0.0) + n
    return out


def per_gib(before: dict[str, float], after: dict[str, float], gib: float) -> dict[str, float]:
    """Each thread's CPU seconds per GiB moved between two :func:`thread_cpu`
    readings, largest first (those under 0.01 s left out)."""
    spent = {name: (after[name] - before.get(name, 0.0)) / gib for name in after}
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS of process ``pid`` now (``/proc/PID/smaps_rollup``,
    KiB): shared pages (a shared-memory ring's) count whole in the RSS of
    every process that maps them, in its PSS divided among them, in no USS."""
    out = {"rss": 0, "pss": 0, "uss": 0, "shmem": 0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Pss_Shmem"):
            kib = int(rest.split()[0])
            name = {"Rss": "rss", "Pss": "pss", "Pss_Shmem": "shmem"}.get(key, "uss")
            out[name] += kib
    return out


def sample_memory(
    groups: list[list[int]],
    stop: threading.Event,
    peaks: list[dict[str, int]],
    cpu: list[tuple[float, float]],
    threads: list[tuple[float, dict[str, float]]],
) -> None:
    """Each process's peak RSS, PSS, USS and shared-memory PSS, read every
    0.1 s until ``stop`` (the kernel keeps a peak of the RSS only), and the
    processes' CPU seconds together at each reading (``cpu``: when, how many)."""
    pids = [pid for group in groups for pid in group]
    while True:
        for peak, group in zip(peaks, groups, strict=True):  # a node's processes together
            now: dict[str, int] = {}
            for pid in group:
                for key, kib in memory_kib(pid).items():
                    now[key] = now.get(key, 0) + kib
            for key, kib in now.items():
                peak[key] = max(peak.get(key, 0), kib)
        cpu.append((time.perf_counter(), sum(cpu_seconds(pid) for pid in pids)))
        threads.append((cpu[-1][0], thread_cpu(pids)))
        if stop.wait(0.1):
            return


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS


# Nodes of a --tree from before SendRequest.min_chunk (their codec refuses
# the field): sends to them name DEFAULT_CHUNK alone, their default then.
LEGACY: set[Path] = set()


def send_request(client: ControlClient, node: NodeProcess, **fields: Any) -> None:
    """A SendRequest as the CLI sends one naming no chunk size (the
    receiver chooses), in the form ``node``'s code takes."""
    if node.data_dir not in LEGACY:
        request = SendRequest(chunk_size=DEFAULT_MAX_CHUNK, min_chunk=DEFAULT_MIN_CHUNK, **fields)
        return client.send(request)
    version, kind, values = msgpack.unpackb(
        codec.encode(SendRequest(chunk_size=DEFAULT_CHUNK, **fields), codec.LOCAL_VERSION)
    )
    del values["min_chunk"]
    client.sock.send([client.token, msgpack.packb([version, kind, values])])


def run_sends(node: NodeProcess, nodes: list[NodeProcess], flows: list[Flow]) -> None:
    """Hand ``flows`` to ``node`` at once, then collect their results."""
    with ControlClient.for_data_dir(node.data_dir) as client:
        by_request: dict[int, Flow] = {}
        for flow in flows:
            flow.request = client.next_id()
            by_request[flow.request] = flow
            target = nodes[flow.receiver]
            send_request(
                client,
                node,
                request=flow.request,
                path=str(flow.path),
                host=target.host,
                port=target.port,
                timeout=60.0,
            )
        deadline = time.monotonic() + SEND_TIMEOUT
        while any(f.result is None for f in flows) and time.monotonic() < deadline:
            reply = client.receive(SEND_TIMEOUT)
            if isinstance(reply, SendResult) and reply.request in by_request:
                by_request[reply.request].result = reply
                by_request[reply.request].done_at = time.perf_counter()
            elif isinstance(reply, Progress) and reply.request in by_request:
                flow = by_request[reply.request]
                flow.progress.append((time.perf_counter(), reply.done_bytes))


def start_senders(nodes: list[NodeProcess], flows: list[Flow]) -> list[threading.Thread]:
    """One thread per node handing it its ``flows`` at once (:func:`run_sends`),
    started; the caller joins them."""
    senders = [
        threading.Thread(
            target=run_sends, args=(node, nodes, [f for f in flows if f.sender == i]), daemon=True
        )
        for i, node in enumerate(nodes)
    ]
    for thread in senders:
        thread.start()
    return senders


def busy_cores(
    samples: list[tuple[float, float]], started: float, elapsed: float, step: float = 0.5
) -> list[float]:
    """The cores the nodes kept busy in each ``step`` s from ``started``, from
    (when, CPU seconds so far) samples: a ramp or a tail that writes little
    while the cores idle is time lost to waiting, not to work."""
    out = []
    for k in range(int(elapsed / step) + 1):
        lo, hi = started + step * k, started + step * (k + 1)
        inside = [s for s in samples if lo <= s[0] <= hi]
        if len(inside) >= 2:
            out.append((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]))
    return out


def timeline(flows: list[Flow], started: float, elapsed: float, step: float = 0.5) -> list[float]:
    """The bytes written of all ``flows`` together every ``step`` s from
    ``started`` (a flow's last Progress before then, all of it once its
    result came), as MiB/s over each step: where the aggregate is lost, in
    the ramp, the tail or throughout."""

    def done(flow: Flow, at: float) -> int:
        if flow.result is not None and flow.done_at <= at:
            return flow.result.size
        return max((b for t, b in flow.progress if t <= at), default=0)

    marks = [started + step * k for k in range(1, int(elapsed / step) + 2)]
    totals = [0] + [sum(done(f, at) for f in flows) for at in marks]
    return [(b - a) / MiB / step for a, b in itertools.pairwise(totals)]


# Seconds between two pairs of control-plane probes under the load (a
# status and a health check, each waiting for its answer): ~40 pairs a
# second on this machine, the nodes' and this script's CPU for them
# taken from the transfers' (--probe-gap).
PROBE_GAP = 0.02


def probe(nodes: list[NodeProcess], stop: threading.Event, out: Latencies, gap: float) -> None:
    """Status round trips to node 0 and health checks of node 1 by node 0,
    alternating, ``gap`` seconds between two pairs, until ``stop``."""
    target = nodes[1]
    with ControlClient.for_data_dir(nodes[0].data_dir) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.status(timeout=30)
            out.status.append(time.perf_counter() - started)
            request = client.next_id()
            started = time.perf_counter()
            client.send(CheckRequest(request=request, host=target.host, port=target.port))
            while True:
                reply = client.receive(30)
                if isinstance(reply, CheckResult) and reply.request == request:
                    break
            out.check.append(time.perf_counter() - started)
            if reply.code == "ok":
                out.check_rtt.append(reply.rtt)
            stop.wait(gap)


def check_cost(nodes: list[NodeProcess], count: int) -> None:
    """``count`` health checks of node 1 by node 0, one after the other, no
    load of ours: wall time p50/p99 and the two nodes' CPU per check (a
    count of work the machine's load bends less than the wall time)."""
    pids = [*pids_of(nodes[0]), *pids_of(nodes[1])]
    cpu = sum(cpu_seconds(pid) for pid in pids)
    times: list[float] = []
    with ControlClient.for_data_dir(nodes[0].data_dir) as client:
        for _ in range(count):
            request = client.next_id()
            started = time.perf_counter()
            client.send(CheckRequest(request=request, host=nodes[1].host, port=nodes[1].port))
            while not isinstance(reply := client.receive(30), CheckResult):
                pass
            times.append(time.perf_counter() - started)
            if reply.code != "ok":
                raise SystemExit(f"a check failed: {reply.code} {reply.reason}")
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    time.sleep(1.5)  # counters reach the status every 0.5 s
    counters = nodes[0].counters()
    reused = counters.get("health.checks-reused", 0)
    fallbacks = counters.get("health.check-reuse-fallbacks", 0)
    print(
        f"{count} checks one after another: p50 {1000 * pct(times, 0.5):.1f} ms, "
        f"p99 {1000 * pct(times, 0.99):.1f} ms; the two nodes' CPU "
        f"{1000 * cpu / count:.2f} ms per check; reused {reused}, fell back {fallbacks} "
        f"(node 0 so far); load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def idle_latencies(nodes: list[NodeProcess], seconds: float) -> Latencies:
    out = Latencies()
    stop = threading.Event()
    thread = threading.Thread(target=probe, args=(nodes, stop, out, PROBE_GAP), daemon=True)
    thread.start()
    stop.wait(seconds)
    stop.set()
    thread.join(60)
    return out


def wait_for_reuse(nodes: list[NodeProcess], timeout: float = 120.0) -> None:
    """Until node 0's check of node 1 rides on its probe connection (node 0
    has probed node 1 since it joined)."""
    deadline = time.monotonic() + timeout
    with ControlClient.for_data_dir(nodes[0].data_dir) as client:
        while time.monotonic() < deadline:
            request = client.next_id()
            client.send(CheckRequest(request=request, host=nodes[1].host, port=nodes[1].port))
            while not isinstance(client.receive(30), CheckResult):
                pass
            if nodes[0].counters().get("health.checks-reused", 0):
                return
            time.sleep(0.5)
    raise SystemExit("node 0 never probed node 1")


@dataclass
class Single:
    """One transfer alone between nodes 0 and 1."""

    rate: float  # MiB/s over the node's own span
    wall_rate: float  # MiB/s from the request to the result
    cpu_per_gib: float  # the nodes' CPU seconds per GiB
    split: dict[str, float]  # the same by thread
    switches: dict[str, float]  # context switches per GiB (thousands) by thread


def send_alone(nodes: list[NodeProcess], single: Path) -> Single:
    cpu = sum(cpu_seconds(p) for node in nodes for p in pids_of(node))
    threads = thread_cpu([p for node in nodes for p in pids_of(node)])
    switches = thread_switches([p for node in nodes for p in pids_of(node)])
    started = time.perf_counter()
    with ControlClient.for_data_dir(nodes[0].data_dir) as client:
        request = client.next_id()
        send_request(
            client,
            nodes[0],
            request=request,
            path=str(single),
            host=nodes[1].host,
            port=nodes[1].port,
            timeout=60.0,
        )
        while True:
            reply = client.receive(SEND_TIMEOUT)
            if isinstance(reply, SendResult) and reply.request == request:
                break
    wall = time.perf_counter() - started
    cpu = sum(cpu_seconds(p) for node in nodes for p in pids_of(node)) - cpu
    if reply.code != "ok":
        raise SystemExit(f"the single send failed: {reply.code} {reply.reason}")
    (nodes[1].inbox / reply.stored_as).unlink()
    gib = reply.size / 2**30
    return Single(
        reply.size / MiB / reply.seconds,
        reply.size / MiB / wall,
        cpu / gib,
        per_gib(threads, thread_cpu([p for n in nodes for p in pids_of(n)]), gib),
        per_gib(switches, thread_switches([p for n in nodes for p in pids_of(n)]), gib * 1000),
    )


def one_run(
    run: int,
    nodes: list[NodeProcess],
    files: list[list[Path]],
    single: Path,
    label: str = "",
    probe_gap: float = PROBE_GAP,
) -> dict[str, Any]:
    # One transfer alone before and after the load: the reference goodput
    # (the node's own span), the mean of both (the machine's load drifts).
    before = send_alone(nodes, single)

    idle = idle_latencies(nodes, 2.0)
    flows: list[Flow] = []
    count = len(nodes)
    for s, paths in enumerate(files):
        for k, path in enumerate(paths):
            flows.append(Flow(s, (s + 1 + k % (count - 1)) % count, path))
    for node in nodes:
        for pid in pids_of(node):
            reset_peak_rss(pid)
    cpu_before = sum(cpu_seconds(p) for node in nodes for p in pids_of(node))
    threads_before = thread_cpu([p for node in nodes for p in pids_of(node)])
    switches_before = thread_switches([p for node in nodes for p in pids_of(node)])
    load_average = os.getloadavg()[0]
    load = Latencies()
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(nodes, stop, load, probe_gap), daemon=True)
    peaks: list[dict[str, int]] = [{} for _ in nodes]
    cpu_samples: list[tuple[float, float]] = []
    thread_samples: list[tuple[float, dict[str, float]]] = []
    sampler = threading.Thread(
        target=sample_memory,
        args=([pids_of(n) for n in nodes], stop, peaks, cpu_samples, thread_samples),
        daemon=True,
    )
    sampler.start()
    started = time.perf_counter()
    senders = start_senders(nodes, flows)
    prober.start()
    for thread in senders:
        thread.join(SEND_TIMEOUT + 30)
    elapsed = time.perf_counter() - started
    stop.set()
    prober.join(60)
    sampler.join(60)
    rss = [sum(peak_rss_mib(p) for p in pids_of(node)) for node in nodes]
    sampled = {k: [p.get(k, 0) / 1024 for p in peaks] for k in ("rss", "pss", "uss", "shmem")}
    cpu = sum(cpu_seconds(p) for node in nodes for p in pids_of(node)) - cpu_before
    threads_after = thread_cpu([p for node in nodes for p in pids_of(node)])
    switches_after = thread_switches([p for node in nodes for p in pids_of(node)])
    load_average = max(load_average, os.getloadavg()[0])
    counters: dict[str, int] = {}
    # The most each node's incoming transfers held of its receive buffer
    # (their credit; its writer's queue), since the node started.
    facts = [node.status() for node in nodes]
    credit_peaks = [int(f.get("credit_peak", 0)) >> 20 for f in facts]
    queue_peaks = [int(f.get("writer_queue_peak", 0)) >> 20 for f in facts]
    for node in nodes:
        for name, value in node.counters().items():
            words: tuple[str, ...] = ("disconnect", "reconnect", "dropped", "credit", "check-re")
            # Data connections opened and transfers attached to them (one per
            # receiver and lane, shared), samples the history took.
            words += ("data-connections", "data-attached", "stats.samples", "sealed-unpooled")
            words += ("direct-bytes",)  # (the writers' O_DIRECT share)
            words += ("heap-tr",)  # (the heap's trims while loaded and idle)
            words += ("hash-deferred", "decrypt-buffers-mapped")  # (the decrypt pool's misses)
            words += ("offers-waited", "offers-accepted-without")  # (offers that waited for room)
            words += ("in-actor-mail",)  # (--isolate-data-plane: the mail over its links)
            if any(word in name for word in words):
                counters[name] = counters.get(name, 0) + value

    failed = [f for f in flows if f.result is None or f.result.code != "ok"]
    if failed:
        first = failed[0].result
        why = "no result" if first is None else f"{first.code}: {first.reason}"
        raise SystemExit(f"{len(failed)} of {len(flows)} sends failed (first: {why})")
    total = 0
    chunks = resent = timeouts = sack = 0
    rates = []
    for f in flows:
        assert f.result is not None
        stored = nodes[f.receiver].inbox / f.result.stored_as
        if blake3_file(stored) != blake3_file(f.path):
            raise SystemExit(f"{stored} differs from {f.path}")
        stored.unlink()
        total += f.result.size
        chunks += int(f.result.stats.get("chunks", 0))
        resent += f.result.retransmits
        timeouts += int(f.result.stats.get("timeouts", 0))
        sack += int(f.result.stats.get("fast_retransmits", 0))
        rates.append(f.result.size / MiB / f.result.seconds)
    # What the nodes still do once the load is over and its files checked
    # (nothing was seen: the one alone after it has the cores to itself).
    quiet_before = thread_cpu([p for node in nodes for p in pids_of(node)])
    time.sleep(QUIET)
    quiet = per_gib(quiet_before, thread_cpu([p for node in nodes for p in pids_of(node)]), QUIET)
    # The one alone after the load runs once the load's files are checked
    # and removed, as the one before ran after the previous run's were: its
    # writes then draw pages this host hands out as cheaply as the one
    # before's. With the load's 2 GiB still held, its writer took 4.5-7 times
    # the CPU per GiB (the copy into fresh tmpfs pages), at half the rate.
    after = send_alone(nodes, single)
    single_rate = (before.rate + after.rate) / 2
    single_cores = sum(one.cpu_per_gib * one.wall_rate / 1024 for one in (before, after)) / 2
    aggregate = total / MiB / elapsed
    rates_by_step = timeline(flows, started, elapsed)
    by_receiver = [
        timeline([f for f in flows if f.receiver == r], started, elapsed) for r in range(count)
    ]
    cores_by_step = busy_cores(cpu_samples, started, elapsed)
    many_split = per_gib(threads_before, threads_after, total / 2**30)
    many_switches = per_gib(switches_before, switches_after, total / 2**30 * 1000)
    # When the flows started (their result less their own span) and ended,
    # from the first request: a late start or a long tail costs aggregate.
    ends = sorted(f.done_at - started for f in flows)
    starts = sorted(f.done_at - started - f.result.seconds for f in flows if f.result)
    row: dict[str, Any] = {
        "run": run,
        "code": label or "this",
        "flows": len(flows),
        "single_mib_s": single_rate,
        "aggregate_mib_s": aggregate,
        "aggregate_vs_single": aggregate / single_rate,
        "jain": jain(rates),
        "slowest_fastest": [min(rates), max(rates)],
        "retransmitted": resent / max(1, chunks),
        "resent_chunks": resent,
        "timeouts": timeouts,
        "sack_losses": sack,
        "counters": counters,
        "chunks": chunks,
        "peak_rss_mib": rss,
        "credit_peak_mib": credit_peaks,
        "writer_queue_peak_mib": queue_peaks,
        "peak_sampled_mib": sampled,
        "status_ms": [1000 * pct(load.status, 0.5), 1000 * pct(load.status, 0.99)],
        "check_ms": [1000 * pct(load.check, 0.5), 1000 * pct(load.check, 0.99)],
        "probe_rtt_ms": [1000 * pct(load.check_rtt, 0.5), 1000 * pct(load.check_rtt, 0.99)],
        "samples": [len(load.status), len(load.check)],
        "check_samples_ms": [round(1000 * v, 2) for v in load.check],
        "status_samples_ms": [round(1000 * v, 2) for v in load.status],
        "idle_status_ms": [1000 * pct(idle.status, 0.5), 1000 * pct(idle.status, 0.99)],
        "idle_check_ms": [1000 * pct(idle.check, 0.5), 1000 * pct(idle.check, 0.99)],
        "seconds": elapsed,
        "nodes_cpu_s_per_gib": cpu / (total / 2**30),
        "nodes_cpu_ms_per_send": 1000 * cpu / len(flows),
        "starts_s": [starts[0], starts[len(starts) // 2], starts[-1]],
        "ends_s": [ends[0], ends[len(ends) // 2], ends[-1]],
        "single_before_after_mib_s": [before.rate, after.rate],
        "single_cpu_s_per_gib": (before.cpu_per_gib + after.cpu_per_gib) / 2,
        "threads_cpu_s_per_gib": many_split,
        "single_threads_cpu_s_per_gib": before.split,
        "threads_kswitches_per_gib": many_switches,
        "single_threads_kswitches_per_gib": before.switches,
        "single_wall_mib_s": (before.wall_rate + after.wall_rate) / 2,
        "load_average": load_average,
        # The ratio's two factors: cores the nodes kept busy (CPU s / wall s)
        # and CPU per GiB, 64 at once against one alone (see the summary).
        "cores_busy": [cpu / elapsed, single_cores],
        "timeline_mib_s": [round(v, 1) for v in rates_by_step],
        "timeline_by_receiver_mib_s": [[round(v, 1) for v in steps] for steps in by_receiver],
        "cores_busy_by_step": [round(v, 2) for v in cores_by_step],
    }
    print(
        f"{label}run {run}: {len(flows)} sends, {total / MiB:.0f} MiB in {elapsed:.2f} s: "
        f"aggregate {aggregate:.1f} MiB/s = {aggregate / single_rate:.2f} of one alone "
        f"({single_rate:.1f}); Jain {jain(rates):.3f} (rates {min(rates):.1f}..{max(rates):.1f}); "
        f"resent {resent}/{chunks} = {100 * resent / max(1, chunks):.2f}% "
        f"({timeouts} timeouts, {sack} by SACK); "
        f"peak RSS {' / '.join(f'{r:.0f}' for r in rss)} MiB; "
        f"the nodes' CPU {cpu / (total / 2**30):.2f} s per GiB "
        f"({1000 * cpu / len(flows):.1f} ms per send); load average {load_average:.1f}",
        flush=True,
    )
    print(
        f"       flows started at {starts[0]:.2f} / {starts[len(starts) // 2]:.2f} / "
        f"{starts[-1]:.2f} s (first / median / last), ended at {ends[0]:.2f} / "
        f"{ends[len(ends) // 2]:.2f} / {ends[-1]:.2f} s",
        flush=True,
    )
    print(
        f"       one alone, before / after the load: {before.rate:.1f} / {after.rate:.1f} "
        f"MiB/s (node span), {before.wall_rate:.1f} / {after.wall_rate:.1f} MiB/s request "
        f"to result, the nodes' CPU {before.cpu_per_gib:.2f} / {after.cpu_per_gib:.2f} s per GiB",
        flush=True,
    )
    print(
        "       peaks sampled every 0.1 s (MiB, node 0 / 1 / 2 / 3): "
        + "; ".join(
            f"{k.upper() if k != 'shmem' else 'shared-memory PSS'} "
            + " / ".join(f"{v:.0f}" for v in sampled[k])
            for k in ("rss", "pss", "uss", "shmem")
        ),
        flush=True,
    )
    print(
        f"       cores busy (the nodes' CPU s / wall s): 64 at once {cpu / elapsed:.2f}, one alone "
        f"{single_cores:.2f}; CPU per GiB one alone / 64 at once "
        f"{row['single_cpu_s_per_gib'] / row['nodes_cpu_s_per_gib']:.2f}",
        flush=True,
    )
    peak = max(rates_by_step, default=0.0)
    print(
        f"       written by all, MiB/s per 0.5 s: {' '.join(f'{v:.0f}' for v in rates_by_step)}; "
        f"the run's aggregate {aggregate / max(peak, 1e-9):.2f} of its best 0.5 s ({peak:.0f})",
        flush=True,
    )
    for r, steps in enumerate(by_receiver):
        print(
            f"       written into node {r}, MiB/s per 0.5 s: {' '.join(f'{v:.0f}' for v in steps)}",
            flush=True,
        )
    print(f"       cores busy per 0.5 s: {' '.join(f'{v:.2f}' for v in cores_by_step)}", flush=True)
    print(f"       CPU s per GiB by thread, one alone: {before.split}", flush=True)
    for name, lo, hi in (
        ("the first 0.5 s", started, started + 0.5),
        ("the middle", started + 1.0, started + elapsed - 1.5),
        ("the last 1.5 s", started + elapsed - 1.5, started + elapsed),
    ):
        inside = [t for t in thread_samples if lo <= t[0] <= hi]
        if len(inside) >= 2:
            span = inside[-1][0] - inside[0][0]
            print(
                f"       cores by thread in {name}: {per_gib(inside[0][1], inside[-1][1], span)}",
                flush=True,
            )
    print(f"       CPU s per GiB by thread, one alone after: {after.split}", flush=True)
    print(f"       CPU s per GiB by thread, all at once: {many_split}", flush=True)
    print(f"       CPU s per s by thread, {QUIET:g} s quiet after the load: {quiet}", flush=True)
    print(f"       k switches per GiB by thread, one alone: {before.switches}", flush=True)
    print(f"       k switches per GiB by thread, all at once: {many_switches}", flush=True)

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * pct(values, q):.1f}"

    print(
        f"       control plane under load: status p50 {ms(load.status, 0.5)} "
        f"p99 {ms(load.status, 0.99)} ms (idle p99 {ms(idle.status, 0.99)}); "
        f"health check p50 {ms(load.check, 0.5)} p99 {ms(load.check, 0.99)} ms "
        f"(idle p99 {ms(idle.check, 0.99)}); probe RTT p99 {ms(load.check_rtt, 0.99)} ms; "
        f"{len(load.status)} + {len(load.check)} samples",
        flush=True,
    )
    accepts = sorted(f.result.stats.get("accept_seconds", 0.0) for f in flows if f.result)
    print(
        f"       offer to accept: {accepts[len(accepts) // 2]:.2f} s median, "
        f"{accepts[-1]:.2f} s at most",
        flush=True,
    )
    # The last to end hold the aggregate's tail: who they are and what slowed them.
    last = sorted((f for f in flows if f.result is not None), key=lambda f: f.done_at)[-3:]
    for f in last:
        assert f.result is not None
        st = f.result.stats
        keys = ("timeouts", "spurious_timeouts", "peak_credit", "srtt", "rto", "accept_seconds")
        print(
            f"       ended late: node {f.sender} -> {f.receiver} at {f.done_at - started:.2f} s "
            f"after {f.result.seconds:.2f} s of its own; "
            + ", ".join(f"{k} {st[k]:g}" for k in keys if k in st),
            flush=True,
        )
    print(
        "       the most each node's incoming transfers held (MiB, since it started): credit "
        + " / ".join(map(str, row["credit_peak_mib"]))
        + ", writer's queue "
        + " / ".join(map(str, row["writer_queue_peak_mib"])),
        flush=True,
    )
    if counters:
        print(f"       node counters (all runs so far): {counters}", flush=True)
    return row


def source_files(root: Path, node: int, count: int, size: int, one: bool) -> list[Path]:
    """``count`` files of random bytes for ``node`` to send; ``one``: one
    such file and ``count - 1`` hard links to it (each send its own name)."""
    if not one:
        return [random_file(root / f"src{node}-{k}.bin", size) for k in range(count)]
    first = random_file(root / f"src{node}-0.bin", size)
    for k in range(1, count):
        os.link(first, root / f"src{node}-{k}.bin")
    return [root / f"src{node}-{k}.bin" for k in range(count)]


def pids_of(node: NodeProcess) -> list[int]:
    """The node's process and its children (``--isolate-data-plane``: its
    sender and receiver processes), counted as the node."""
    return [node.pid, *child_pids(node.pid)]


def start_cluster(
    root: Path,
    key: str,
    count: int,
    extra: tuple[str, ...],
    strangers: bool,
    env: dict[str, str] | None = None,
) -> list[NodeProcess]:
    """``count`` nodes under ``root``; unless ``strangers``, nodes 1.. join
    node 0 (and node 0 has probed node 1 before this returns). Every node
    started is appended to the list as it starts (stopped by the caller)."""
    nodes = [NodeProcess(root / "node0", key, extra_args=extra, env=env)]
    nodes[0].start().wait_for_attached()  # (--isolate-data-plane: its own processes)
    if not strangers:
        extra += ("--bootstrap-host", nodes[0].host, "--bootstrap-port", str(nodes[0].port))
    for i in range(1, count):
        nodes.append(NodeProcess(root / f"node{i}", key, extra_args=extra, env=env).start())
        nodes[-1].wait_for_attached()
    if not strangers:
        wait_for_reuse(nodes)
    return nodes


def summary(rows: list[dict[str, Any]], title: str) -> None:
    def med(key: str, index: int | None = None) -> float:
        values = [r[key] if index is None else r[key][index] for r in rows]
        return float(statistics.median(values))

    print(f"\nmedians of {len(rows)} runs{title}:")
    print(f"  aggregate / one alone   {med('aggregate_vs_single'):.2f}   (goal >= 0.90)")
    print(f"  Jain's fairness         {med('jain'):.3f}  (goal >= 0.95)")
    print(f"  retransmitted           {100 * med('retransmitted'):.2f}%  (goal <= 1%)")
    worst = max(max(r["peak_rss_mib"]) for r in rows)
    print(f"  peak RSS, worst node    {worst:.0f} MiB  (goal <= 150)")
    each = ", ".join(f"{max(r['peak_rss_mib']):.0f}" for r in rows)
    print(f"  peak RSS, worst node per run: {each} MiB")
    for key in ("pss", "uss"):
        each = ", ".join(f"{max(r['peak_sampled_mib'][key]):.0f}" for r in rows)
        print(f"  peak {key.upper()}, worst node per run (sampled): {each} MiB")
    print(f"  status p99 under load   {med('status_ms', 1):.1f} ms  (goal <= 50)")
    print(f"  health check p99        {med('check_ms', 1):.1f} ms  (goal <= 50)")
    each = ", ".join(f"{r['check_ms'][1]:.1f}" for r in rows)
    print(f"  health check p99 per run: {each} ms")
    # One run's p99 is its second or third slowest of ~150 checks: pooled
    # over the runs the tail is read from more samples.
    for what in ("check", "status"):
        pooled = [v for r in rows for v in r[f"{what}_samples_ms"]]
        over = sum(v > 50 for v in pooled) / max(1, len(pooled))
        print(
            f"  {what} pooled ({len(pooled)} under load): p50 {pct(pooled, 0.5):.1f} "
            f"p90 {pct(pooled, 0.9):.1f} p99 {pct(pooled, 0.99):.1f} ms, "
            f"{100 * over:.1f}% over 50 ms"
        )
    print(
        f"  the nodes' CPU per GiB  {med('nodes_cpu_s_per_gib'):.2f} s (64 at once) against "
        f"{med('single_cpu_s_per_gib'):.2f} s (one alone)"
    )
    # aggregate / one alone = (cores busy, many / one) x (CPU per GiB, one / many),
    # up to the one alone's rate being its node span, not its wall time: on
    # a machine whose other users leave this session about the cores one
    # transfer alone keeps busy, the ratio is the CPU per GiB's.
    cores = [r["cores_busy"][0] / r["cores_busy"][1] for r in rows]
    cpu = [r["single_cpu_s_per_gib"] / r["nodes_cpu_s_per_gib"] for r in rows]
    print(
        f"  its two factors         cores busy 64 at once / one alone "
        f"{statistics.median(cores):.2f} (runs {', '.join(f'{c:.2f}' for c in cores)}); "
        f"CPU per GiB one alone / 64 at once {statistics.median(cpu):.2f} "
        f"(runs {', '.join(f'{c:.2f}' for c in cpu)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1, help="loads run first on each set, not counted"
    )
    parser.add_argument("--size", default="16M", help="size of each of the many files")
    parser.add_argument("--per-node", type=int, default=16, help="sends each node starts")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--single-size", default="256M")
    parser.add_argument("--dir", default=None, help="where nodes, files and inboxes live")
    parser.add_argument("--node-args", default="", help="extra options of every node")
    parser.add_argument(
        "--tree-node-args",
        default=None,
        help="extra options of the --tree nodes instead of --node-args (e.g. the ring on one side)",
    )
    parser.add_argument(
        "--strangers", action="store_true", help="the nodes do not join one network"
    )
    parser.add_argument(
        "--checks", type=int, default=0, help="time this many checks alone first (CPU per check)"
    )
    parser.add_argument(
        "--tree",
        type=os.path.abspath,
        default=None,
        help="also run nodes from this source tree, runs alternating",
    )
    parser.add_argument(
        "--one-source-per-node",
        action="store_true",
        help="a node's sends read one file under as many names (hard links): the sources "
        "hold one file's pages per node, not every send's (see the docstring)",
    )
    parser.add_argument(
        "--probe-gap",
        type=float,
        default=PROBE_GAP,
        help="seconds between two pairs of control-plane probes under the load",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    key = new_network_key()
    rows: list[dict[str, Any]] = []
    tree_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-many-") as tmp:
        root = Path(tmp)
        extra = tuple(args.node_args.split())
        files = [
            source_files(root, i, args.per_node, size, args.one_source_per_node)
            for i in range(args.nodes)
        ]
        single = random_file(root / "single.bin", parse_size(args.single_size))
        clusters: list[list[NodeProcess]] = []
        try:
            here = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            if args.tree:  # `python -m` puts the working directory first on sys.path
                os.chdir(root)
            clusters.append(start_cluster(root, key, args.nodes, extra, args.strangers, here))
            nodes = clusters[0]
            if args.tree:
                tree_env = {"PYTHONPATH": str(Path(args.tree).resolve())}
                (root / "tree").mkdir()
                tree_extra = extra
                if args.tree_node_args is not None:
                    tree_extra = tuple(args.tree_node_args.split())
                clusters.append(
                    start_cluster(
                        root / "tree", key, args.nodes, tree_extra, args.strangers, tree_env
                    )
                )
                sent = Path(args.tree, "peercrypt/wire/local_messages.py").read_text()
                if "min_chunk" not in sent:
                    LEGACY.update(node.data_dir for node in clusters[-1])
            if args.checks:
                check_cost(nodes, args.checks)
            print(
                f"{args.nodes} nodes, {args.nodes * args.per_node} sends of "
                f"{size / MiB:.0f} MiB at once, under {root}"
                + (f"; and as many from {args.tree}, runs alternating" if args.tree else ""),
                flush=True,
            )
            for warmup in range(1, args.warmup + 1):  # printed, not counted
                for cluster, label in zip(clusters, ("warm-up ", "tree warm-up "), strict=False):
                    one_run(warmup, cluster, files, single, label, args.probe_gap)
            for run in range(1, args.runs + 1):
                sides = [(nodes, rows, "")]
                if args.tree:
                    sides.append((clusters[1], tree_rows, "tree "))
                    if run % 2 == 0:
                        sides.reverse()
                for cluster, out, label in sides:
                    out.append(one_run(run, cluster, files, single, label, args.probe_gap))
        finally:
            for cluster in clusters:
                for node in cluster:
                    if node.running:
                        node.stop()

    if not rows:
        return 0
    summary(rows, " (this code)" if args.tree else "")
    if tree_rows:
        summary(tree_rows, f" ({args.tree})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows + tree_rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
