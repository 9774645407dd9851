"""Unicast throughput benchmark: PeerCrypt vs. this machine's own limits.

Sends a file (1 GiB by default) between two node processes on loopback and,
in the same run and interleaved with the transfers, measures the ceilings it
competes with: raw pyzmq tcp throughput (1 MiB messages, two processes),
single-core AES-256-GCM, and the machine's file-write limit (write + fsync
of the same amount, as ``dd conv=fsync`` does). Prints each as MiB/s, our
ratio to each, CPU seconds and peak RSS of both nodes, and the median of
``--runs`` runs. ``--rss-sizes 256M,2G`` also checks that a node's peak RSS
does not grow with file size. ``--json FILE`` writes all numbers.

    .venv/bin/python scripts/bench.py [--size 1G] [--runs 3] [--rss-sizes 256M,2G]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, random_file

MiB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")




def write_limit(directory: Path, size: int) -> float:
    """MiB/s of writing ``size`` bytes in 1 MiB blocks and fsyncing (dd conv=fsync)."""
    path = directory / "write-limit.tmp"
    block = os.urandom(MiB)
    os.sync()  # start clean: no one else's dirty pages in the measurement
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, block[: min(left, MiB)])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return size / MiB / seconds


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


def transfer(sender: NodeProcess, receiver: NodeProcess, path: Path) -> dict[str, float]:
    os.sync()
    cpu_s, cpu_r = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
    code, result = sender.send_to(path, receiver, "--no-progress", timeout=600)
    if code != 0 or not result.get("ok"):
        raise RuntimeError(f"transfer failed: {result}")
    stored = receiver.inbox / result["stored_as"]
    stored.unlink()
    return {
        "mib_s": path.stat().st_size / MiB / result["seconds"],
        "seconds": result["seconds"],
        "sender_cpu_s": cpu_seconds(sender.pid) - cpu_s,
        "receiver_cpu_s": cpu_seconds(receiver.pid) - cpu_r,
    }


def node_pair(root: Path, key: str) -> tuple[NodeProcess, NodeProcess]:
    sender = NodeProcess(root / "sender", network_key=key).start()
    receiver = NodeProcess(root / "receiver", network_key=key).start()
    return sender, receiver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size (default 1G)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where files go (default: /tmp)")
    parser.add_argument("--rss-sizes", default="", help="e.g. 256M,2G: peak RSS per file size")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    size = parse_size(args.size)
    key = new_network_key()
    out: dict[str, Any] = {"size": size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="peercrypt-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        source = root / "source.bin"
        random_file(source, size)
        sender, receiver = node_pair(root, key)
        try:
            for run in range(args.runs):
                row = {
                    "write_limit_mib_s": write_limit(root, size),
                    **transfer(sender, receiver, source),
                    "raw_zmq_mib_s": raw_zmq(size),
                    "aes_gcm_mib_s": aes_gcm_single_core(size),
                }
                out["runs"].append(row)
                print(
                    f"run {run + 1}: peercrypt {row['mib_s']:.0f} MiB/s | write+fsync "
                    f"{row['write_limit_mib_s']:.0f} | raw zmq {row['raw_zmq_mib_s']:.0f} | "
                    f"AES-GCM 1 core {row['aes_gcm_mib_s']:.0f} | CPU s: sender "
                    f"{row['sender_cpu_s']:.2f}, receiver {row['receiver_cpu_s']:.2f}",
                    flush=True,
                )
            out["peak_rss_mib"] = {
                "sender": peak_rss_mib(sender.pid),
                "receiver": peak_rss_mib(receiver.pid),
            }
        finally:
            sender.stop()
            receiver.stop()
        source.unlink()
        rss_rows = []
        for text in filter(None, args.rss_sizes.split(",")):
            n = parse_size(text)
            sub = root / f"rss-{text}"
            sub.mkdir()
            random_file(sub / "f.bin", n)
            s, r = node_pair(sub, key)
            try:
                transfer(s, r, sub / "f.bin")
                rss_rows.append(
                    {"size": text, "sender": peak_rss_mib(s.pid), "receiver": peak_rss_mib(r.pid)}
                )
            finally:
                s.stop()
                r.stop()
            (sub / "f.bin").unlink()
        out["rss_by_size"] = rss_rows
    med = {k: statistics.median(r[k] for r in out["runs"]) for k in out["runs"][0]}
    ratios = {
        "vs_write_limit": [r["mib_s"] / r["write_limit_mib_s"] for r in out["runs"]],
        "vs_raw_zmq": [r["mib_s"] / r["raw_zmq_mib_s"] for r in out["runs"]],
        "vs_aes_gcm": [r["mib_s"] / r["aes_gcm_mib_s"] for r in out["runs"]],
    }
    out["median"] = med
    out["median_ratios"] = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"\nmedian of {args.runs} runs, {size / MiB:.0f} MiB file, 2 node processes on loopback")
    print(f"  peercrypt end-to-end   {med['mib_s']:8.0f} MiB/s")
    for label, key_, ratio in (
        ("write+fsync limit", "write_limit_mib_s", "vs_write_limit"),
        ("raw pyzmq tcp 1 MiB", "raw_zmq_mib_s", "vs_raw_zmq"),
        ("AES-256-GCM 1 core", "aes_gcm_mib_s", "vs_aes_gcm"),
    ):
        print(
            f"  {label:22} {med[key_]:8.0f} MiB/s   ours/this = {out['median_ratios'][ratio]:.2f}"
        )
    per_gib = size / 2**30
    print(
        f"  CPU s per GiB: sender {med['sender_cpu_s'] / per_gib:.2f}, "
        f"receiver {med['receiver_cpu_s'] / per_gib:.2f}"
    )
    rss = out["peak_rss_mib"]
    print(f"  peak RSS: sender {rss['sender']:.0f} MiB, receiver {rss['receiver']:.0f} MiB")
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
