"""A long path: ``peercrypt send`` (normal and ``-t N``) against scp and rsync
over ssh, each through the same emulated WAN link, as the user times them.

This kernel has no ``netem``, so the path is the project's own
:class:`~peercrypt.testing.faults.DelayProxy`: every byte stream is delayed
by half the round trip each way (``--rtt``, milliseconds: 10, 50, 100 by
default), through a bounded buffer (``--buffer`` per direction of each
connection), optionally at a capped rate (``--rate``, e.g. ``100M``: bytes/s
shared by every connection of the path, each direction on its own, as on
one link); a new TCP connection reaches its server 1.5 round trips after
the client connected (a handshake's cost). One :class:`WanLink` carries
everything: the receiving node's public (control) port and its data port
(the node advertises the proxy's port, ``--advertise-data-port``) and the
port of an sshd of our own on loopback (``scripts/loopback_sshd.py``), so
ssh, scp and rsync cross the same path as the nodes. Only loopback.

Two node processes (plus two more from ``--tree DIR``, an export of older
code, on the same path: a before/after); the receiving node keeps running,
so its links to the sending node stay up between sends, as in use (the
first send of each pair, untimed, opens them: its time is printed). Each
run times, for each round trip, in an order shuffled anew (seeded,
printed): ``peercrypt send FILE`` (its wall time to exit 0 with the
receiver's verified hash: the file is durable, fsynced), the same with
``-t N`` (``--lanes``), ``scp -c aes256-gcm@openssh.com`` (OpenSSH's
default protocol: SFTP) and ``rsync -e 'ssh -c aes256-gcm@openssh.com'``;
for scp and rsync also the fsync of the copy afterwards (timed apart,
printed as ``+ fsync``: what ours includes). The file is ``--size`` (256
MiB) and, with ``--small`` (1 MiB by default; 0: none), a small one whose
time is mostly round trips. Every copy's BLAKE3 is checked against the
source, then it is removed. Printed: every run (wall time, MiB/s, when the
first and the last data byte passed the path, the load average), then
medians per round trip and the ratio of each of ours to the best peer tool.

    .venv/bin/python scripts/bench_wan.py [--rtt 10,50,100] [--rate 0|100M]
        [--size 256M] [--small 1M] [--runs 3] [--lanes 4] [--buffer 64M]
        [--tree DIR] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.faults import DelayProxy, WanLink
from peercrypt.testing.nodes import (
    LOCALHOST,
    NodeProcess,
    blake3_file,
    free_port,
    parse_size,
    random_file,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_parallel import ByteClock  # the sibling scripts
from loopback_sshd import LoopbackSshd

MiB = 2**20
CIPHER = "aes256-gcm@openssh.com"


@dataclass
class Pair:
    """A sending node and a receiving node reached through the path."""

    name: str  # "peercrypt" or "before"
    sender: NodeProcess
    receiver: NodeProcess
    data: DelayProxy  # in front of the receiver's data port (advertised)
    control: DelayProxy | None = None  # in front of its public port (once it runs)


@dataclass
class Case:
    name: str
    run: Callable[[Path], tuple[float, float]]  # file -> (wall s, fsync s after it)
    proxy: Callable[[], DelayProxy]  # whose bytes show the data's first and last
    times: dict[tuple[float, str], list[float]] = field(default_factory=dict)


def fsync_file(path: Path) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def checked(copy: Path, digest: str) -> None:
    if blake3_file(copy) != digest:
        raise SystemExit(f"the copy {copy} differs from the source")
    copy.unlink()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", default="10,50,100", help="round trips, ms")
    parser.add_argument("--rate", default="0", help="bytes/s of the path (0: no cap)")
    parser.add_argument("--size", default="256M")
    parser.add_argument("--small", default="1M", help="a small file too (0: none)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--buffer", default="64M", help="bytes each way per connection")
    parser.add_argument("--tree", type=os.path.abspath, default=None)
    parser.add_argument("--no-ssh", action="store_true", help="only the nodes")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rtts = [float(x) for x in args.rtt.split(",")]
    rate = parse_size(args.rate) if args.rate != "0" else 0
    size, small = parse_size(args.size), parse_size(args.small) if args.small != "0" else 0
    buffer = parse_size(args.buffer)
    if args.runs < 3:
        parser.error("--runs must be >= 3 (a median of at least three)")
    link = WanLink(rtts[0] / 2000, rate)
    key = new_network_key()
    proxies: list[DelayProxy] = []

    def proxy(port: int) -> DelayProxy:
        p = DelayProxy((LOCALHOST, port), link, buffer=buffer).start()
        proxies.append(p)
        return p

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-wan-") as tmp:
        root = Path(tmp)
        files = {size: random_file(root / "big.bin", size)}
        if small:
            files[small] = random_file(root / "small.bin", small)
        digests = {n: blake3_file(path) for n, path in files.items()}
        os.chdir(root)  # `python -m` puts the working directory first on sys.path
        trees = {"peercrypt": str(Path(__file__).resolve().parent.parent)}
        if args.tree:
            trees["before"] = args.tree
        for tree in trees.values():
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", f"{tree}/peercrypt", f"{tree}/actors"],
                check=True,
            )
        pairs: list[Pair] = []
        nodes: list[NodeProcess] = []
        sshd: LoopbackSshd | None = None
        try:
            for name, tree in trees.items():
                env = {"PYTHONPATH": tree, "PEERCRYPT_NO_LOCAL_IPC": "true"}
                data_port = free_port()
                data = proxy(data_port)
                receiver = NodeProcess(
                    root / name / "receiver",
                    key,
                    env=env,
                    extra_args=(
                        "--data-port",
                        str(data_port),
                        "--advertise-data-port",
                        str(data.port),
                    ),
                )
                sender = NodeProcess(root / name / "sender", key, env=env)
                nodes += [receiver, sender]
                receiver.start()
                sender.start()
                pair = Pair(name, sender, receiver, data)
                pair.control = proxy(receiver.port)
                pairs.append(pair)
            cases: list[Case] = []
            for pair in pairs:
                for extra in ([], ["-t", str(args.lanes)]):
                    cases.append(
                        Case(
                            " ".join([pair.name, *extra]),
                            lambda path, p=pair, e=extra: send(p, path, e, digests),
                            lambda p=pair: p.data,
                        )
                    )
            if not args.no_ssh:
                try:
                    sshd = LoopbackSshd(root)
                except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                    print(f"scp, rsync: skipped ({exc})", flush=True)
            if sshd is not None:
                ssh_proxy = proxy(sshd.port)
                common = sshd.scp_options[2:]  # after "-P PORT"
                dest = root / "copy.bin"
                scp = ["scp", "-q", "-c", CIPHER, "-P", str(ssh_proxy.port), *common]
                ssh = ["ssh", "-p", str(ssh_proxy.port), "-c", CIPHER, *common]
                ways = {"scp": scp}
                if shutil.which("rsync"):
                    ways["rsync"] = ["rsync", "-q", "-e", shlex.join(ssh)]
                else:
                    print("rsync: skipped (not installed)", flush=True)
                for name, argv in ways.items():
                    cases.append(
                        Case(
                            name,
                            lambda path, a=argv: copy(a, path, dest, digests),
                            lambda: ssh_proxy,
                        )
                    )
            print(
                f"round trips {', '.join(f'{r:g}' for r in rtts)} ms, "
                f"rate {'not capped' if not rate else f'{rate / MiB:g} MiB/s'}, "
                f"{size / MiB:g} MiB"
                + (f" and {small / MiB:g} MiB" if small else "")
                + f", {args.runs} runs, buffer {buffer / MiB:g} MiB each way per connection; "
                f"load average {load()}" + (f"; before = {args.tree}" if args.tree else ""),
                flush=True,
            )
            first = min(files)
            for case in cases:  # opens every connection (untimed)
                wall, _ = case.run(files[first])
                print(f"first {case.name} ({first / MiB:g} MiB, at {rtts[0]:g} ms): {wall:.2f} s")
            for run in range(args.runs):
                for rtt in rtts:
                    link.delay = rtt / 2000
                    order = [(c, n) for c in cases for n in files]
                    random.Random(run * 1000 + int(rtt)).shuffle(order)
                    for case, n in order:
                        with ByteClock(case.proxy()) as clock:
                            started = time.perf_counter()
                            wall, synced = case.run(files[n])
                        first_byte, last_byte = clock.edges(started)
                        case.times.setdefault((rtt, f"{n}"), []).append(wall)
                        case.times.setdefault((rtt, f"{n}+fsync"), []).append(wall + synced)
                        edges = ""
                        if first_byte is not None and last_byte is not None:
                            edges = (
                                f"; first data byte {first_byte:5.2f} s, last {last_byte:6.2f} s"
                            )
                        sync = f" (+ fsync {synced:.2f} s)" if synced else ""
                        print(
                            f"run {run + 1} rtt {rtt:4g} ms {case.name:16s} "
                            f"{n / MiB:5g} MiB {wall:7.2f} s{sync} {n / MiB / wall:7.1f} MiB/s"
                            f"{edges}; load {load()}",
                            flush=True,
                        )
        finally:
            if sshd is not None:
                sshd.stop()
            for node in nodes:
                if node.running:
                    node.stop()
            for p in proxies:
                p.stop()
    print(f"\nmedians of {args.runs} runs (wall time, MiB/s); load average {load()}")
    report: dict[str, object] = {"rtt_ms": rtts, "rate": rate, "size": size, "small": small}
    for rtt in rtts:
        for n in files:
            print(f"rtt {rtt:g} ms, {n / MiB:g} MiB:")
            medians: dict[str, float] = {}
            for case in cases:
                for suffix in ("", "+fsync"):
                    if suffix and case.name.split()[0] not in ("scp", "rsync"):
                        continue
                    values = case.times[(rtt, f"{n}{suffix}")]
                    medians[case.name + suffix] = m = statistics.median(values)
                    runs = " ".join(f"{v:.2f}" for v in values)
                    rate_now = n / MiB / m
                    print(f"  {case.name + suffix:16s} {m:7.2f} s {rate_now:7.1f} MiB/s  ({runs})")
            peers = [v for k, v in medians.items() if k.split("+")[0] in ("scp", "rsync")]
            if peers:
                best = min(peers)
                for name, m in medians.items():
                    if name.split()[0] in ("peercrypt", "before"):
                        print(f"  {name:16s} {best / m:5.2f}x the best peer tool's speed")
            report[f"{rtt:g} ms {n}"] = medians
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def send(pair: Pair, path: Path, extra: list[str], digests: dict[int, str]) -> tuple[float, float]:
    """One ``peercrypt send`` through the path; its copy checked and removed."""
    assert pair.control is not None
    started = time.perf_counter()
    result = pair.sender.send_result(path, LOCALHOST, pair.control.port, *extra, timeout=1800)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{pair.name} send {' '.join(extra)} failed: {result.describe()}")
    checked(pair.receiver.inbox / result.json["stored_as"], digests[path.stat().st_size])
    return wall, 0.0


def copy(argv: list[str], path: Path, dest: Path, digests: dict[int, str]) -> tuple[float, float]:
    """One scp or rsync to root@127.0.0.1 through the path, then the copy's fsync."""
    started = time.perf_counter()
    proc = subprocess.run(
        [*argv, str(path), f"root@127.0.0.1:{dest}"], capture_output=True, timeout=1800
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    synced = fsync_file(dest)
    checked(dest, digests[path.stat().st_size])
    return wall, synced


if __name__ == "__main__":
    sys.exit(main())
