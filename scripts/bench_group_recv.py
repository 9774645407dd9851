"""What a receiver's reading thread costs per byte, sockets included (issue 14).

    .venv/bin/python scripts/bench_group_recv.py [--size-mib 256] [--mtu 1500,9000]
        [--rate-mib 150] [--runs 3] [--paths recvmmsg,recvmsg]

One process sends a session's chunks to a multicast group on loopback (TTL
0) as a node's sending thread does: datagrams of MTU - 28 bytes, UDP GSO
batches of up to 64 KiB, at ``--rate-mib`` MiB/s (so the reader keeps up,
as it does beside the other threads of a node). This process receives them
with the node's ``GroupReceiver`` (its reading thread ``pc-mrecv``, the
reassembly) and takes each complete chunk as the actor would. Per run and
read path (alternated): the reading thread's CPU seconds per 256 MiB (from
``/proc/self/task/TID/schedstat``), the chunks completed and the datagrams
read per system call. ``recvmsg`` is the path without ``recvmmsg`` (one
receive buffer per call, the first payloads read straight into the chunk).
No encryption: only the reading path is measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from actors import udp_multicast
from peercrypt.core import fragments

MiB = 2**20
BLOB = MiB + 16 + 64  # a sealed chunk (ciphertext, GCM tag) and its signature
GROUP = ("239.255.91.7", 7491)
SID, KEY = b"s" * 16, fragments.header_key(b"k" * 32)

SENDER = r"""
import os, socket, sys, time
from peercrypt.core import fragments
chunks, datagram, rate = (int(a) for a in sys.argv[1:4])
sid, key, blob_len = b"s" * 16, fragments.header_key(b"k" * 32), int(sys.argv[4])
frag = datagram - fragments.HEADER_BYTES
per = min(64, fragments.MAX_DATAGRAM // datagram)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
s.setsockopt(17, 103, datagram)  # UDP_SEGMENT
s.connect((sys.argv[5], int(sys.argv[6])))
blob = os.urandom(blob_len)
start = time.monotonic()
for i in range(chunks):
    fields, tag = fragments.chunk_header(sid, i, i == chunks - 1, b"n" * 12, blob_len, key=key)
    parts = [fields + fragments.OFFSET.pack(o) + tag + blob[o:e]
             for o, e in fragments.split(blob_len, frag)]
    for k in range(0, len(parts), per):
        s.send(b"".join(parts[k:k + per]))
    ahead = start + (i + 1) * blob_len / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"""


def thread_cpu(tid: int) -> float:
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9


def run(mtu: int, chunks: int, rate: int, path: str) -> tuple[float, int, float, float]:
    """(reading thread's CPU s, chunks completed, datagrams per system call)."""
    datagram = mtu - 28
    frag = datagram - fragments.HEADER_BYTES
    saved = udp_multicast.RECVMMSG
    if path == "recvmsg":
        udp_multicast.RECVMMSG = None
    try:
        rx = udp_multicast.GroupReceiver(GROUP[0], GROUP[1], "127.0.0.1", 64 * MiB, frag)
    finally:
        udp_multicast.RECVMMSG = saved
    asm = fragments.Reassembler(chunks, lambda i: BLOB, frag, 64)
    have: set[int] = set()
    calls = [0]
    if rx.batch is not None:
        read = rx.batch.read

        def counted(
            landing: fragments.Landing | None = None,
        ) -> list[fragments.Scattered | tuple[bytes, int] | fragments.FragmentError]:
            calls[0] += 1
            return read(landing)

        rx.batch.read = counted  # type: ignore[method-assign]
    else:
        single = rx.read

        def counted_one(*args: object) -> fragments.Scattered | tuple[bytes, int]:
            calls[0] += 1
            return single(*args)  # type: ignore[arg-type]

        rx.read = counted_one  # type: ignore[method-assign,assignment]
    rx.start(fragments.Intake(SID, KEY, asm), have)
    assert rx.thread is not None and rx.thread.native_id is not None
    tid = rx.thread.native_id
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(chunks), str(datagram), str(rate * MiB), str(BLOB),
         GROUP[0], str(GROUP[1])],
    )  # fmt: skip
    got = 0
    deadline = time.monotonic() + 30 + chunks * MiB / (rate * MiB) * 3
    try:
        while time.monotonic() < deadline:
            chunks_done, _ = rx.take()
            for c in chunks_done:
                got += 1
                have.add(c.index)
                rx.recycle(c.blob)
            if sender.poll() is not None and not chunks_done and not rx.backlog():
                time.sleep(0.05)
                if not rx.backlog() and not rx.take()[0]:
                    break
            time.sleep(0.002)
        cpu = thread_cpu(tid)
    finally:
        sender.wait(60)
        rx.close()
    total = sum(fragments.fragment_count(BLOB, frag) for _ in range(got))
    return cpu, got, total / max(calls[0], 1), asm.landed / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--mtu", default="1500,9000")
    ap.add_argument("--rate-mib", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--paths", default="recvmmsg,recvmsg")
    args = ap.parse_args()
    if udp_multicast.RECVMMSG is None:
        sys.exit("bench_group_recv: the C library has no recvmmsg")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    for mtu in (int(m) for m in args.mtu.split(",")):
        for n in range(args.runs):
            for path in args.paths.split(","):
                cpu, got, per_call, landed = run(mtu, args.size_mib, args.rate_mib, path)
                print(
                    f"MTU {mtu} run {n + 1} {path:8}: reading thread "
                    f"{cpu * 256 / max(got, 1):.3f} CPU s per 256 MiB, {got}/{args.size_mib} "
                    f"chunks, {per_call:.1f} datagrams per system call, {landed:.0%} placed "
                    f"where the kernel put them, load "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
