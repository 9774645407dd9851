"""What libzmq holds per queued message: RSS growth of a process whose
ROUTER (receive queue uncapped, as a node's peer-facing sockets,
``PEER_RCVHWM``) reads messages it never takes, divided by their number.

One child process per run binds the ROUTER (plain, as the data port, or a
CURVE server, as the gateway) and never receives; this process connects by
hand (``peercrypt.testing.zmtp_flood``), sends ``--count`` messages of each
size, waits until the child's RSS settles and prints the bytes per message
next to what the port guard charges (``held_memory``). Loopback only.

    .venv/bin/python scripts/bench_queue_memory.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.rcvhwm = 0
s.maxmsgsize = -1
if sys.argv[1] == "curve":
    s.curve_server = True
    s.curve_secretkey = sys.argv[2].encode()
print(s.bind_to_random_port("tcp://127.0.0.1"), flush=True)
sys.stdin.read()
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def settle(pid: int, seconds: float = 30.0) -> int:
    """The child's RSS once it stopped growing for 0.5 s."""
    deadline = time.monotonic() + seconds
    last, since = rss_kib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 0.5:
            break
    return last


def plain_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x00, n]) if n < 256 else b"\x02" + struct.pack(">Q", n)
    return head + payload


def run(mode: str, size: int, count: int) -> float:
    from nacl.public import PrivateKey

    from peercrypt.testing.zmtp_flood import GREETING, RawDataPeer, _CurveClient

    server = PrivateKey.generate()
    import zmq.utils.z85 as z85

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, z85.encode(bytes(server)).decode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        payload = b"x" * size
        if mode == "curve":
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            client = _CurveClient(sock, bytes(server.public_key), PrivateKey.generate())
            time.sleep(0.3)
            before = settle(child.pid)
            sent = 0
            while sent < count:
                n = min(20_000, count - sent)
                parts = []
                for _ in range(n):
                    nonce = client._nonce(b"CurveZMQMESSAGEC")
                    sealed = client.box.encrypt(b"\x00" + payload, nonce).ciphertext
                    parts.append(plain_frame(b"\x07MESSAGE" + nonce[16:] + sealed))
                sock.sendall(b"".join(parts))
                sent += n
        else:
            peer = RawDataPeer("127.0.0.1", port)
            peer.handshake()
            sock = peer.sock
            assert GREETING
            time.sleep(0.3)
            before = settle(child.pid)
            one = plain_frame(payload)
            sent = 0
            while sent < count:
                n = min(100_000, count - sent)
                sock.sendall(one * n)
                sent += n
        after = settle(child.pid)
        sock.close()
        return (after - before) * 1024 / count
    finally:
        child.kill()
        child.wait()


def main() -> None:
    from peercrypt.core.port_guard import curve_framed_size, held_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="1,100,1024")
    ap.add_argument("--count", type=int, default=400_000)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    for mode in ("plain", "curve"):
        for size in (int(s) for s in args.sizes.split(",")):
            count = min(args.count, (256 << 20) // (size + 256))
            per = [run(mode, size, count) for _ in range(args.runs)]
            runs = " ".join(f"{p:.0f}" for p in per)
            wire = curve_framed_size(size) if mode == "curve" else None
            print(
                f"{mode:5} {size:5} B x {count}: {statistics.median(per):6.0f} B/message "
                f"(runs {runs}); charged {held_memory(size, wire)}"
            )


if __name__ == "__main__":
    main()
