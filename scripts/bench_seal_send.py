"""The sender's seal-and-send cost per GiB, three ways.

Seals 1 GiB in 1 MiB chunks (AES-256-GCM, the sender's own
``TransferKeys``) and sends each over ZeroMQ tcp on loopback to a draining
process, a window of 16 chunks at a time (then a round trip, as acks pace
the sender). Prints this process's CPU seconds (every thread: the sealing
one, ZeroMQ's I/O thread, pyzmq's garbage collector) per way, every round,
ways interleaved (order reversed every other round), then medians:

- ``fresh``: ``encrypt`` into a new object per chunk, sent without a copy
  (the sender before actors/sealed_buffers.py);
- ``pooled``: ``encrypt_into`` a :class:`~actors.sealed_buffers.SealedBuffers`
  buffer, sent without a copy and tracked (the sender now);
- ``copied``: ``encrypt_into`` one reused buffer, sent as a copy.

    .venv/bin/python scripts/bench_seal_send.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.sealed_buffers import SealedBuffers
from peercrypt.crypto.transfer import TAG_BYTES, TransferKeys

CHUNK = 1 << 20
CHUNKS = 1024
WINDOW = 16
WAYS = ("fresh", "pooled", "copied")
DRAIN = """
import zmq
sock = zmq.Context().socket(zmq.ROUTER)
print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    frames = sock.recv_multipart(copy=False)
    if len(frames) == 2:
        sock.send_multipart([frames[0], b"ok"])
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def seal_and_send(way: str, sock: zmq.Socket[bytes], keys: TransferKeys, plain: bytes) -> float:
    """CPU seconds of this process to seal and send CHUNKS chunks ``way``."""
    pool = SealedBuffers(CHUNK + TAG_BYTES)
    one = bytearray(CHUNK + TAG_BYTES)
    header = b"h" * 40
    started = cpu_seconds()
    for index in range(CHUNKS):
        buffer = pool.take() if way == "pooled" else None
        if way == "fresh" or (way == "pooled" and buffer is None):
            sealed = keys.seal_chunk(index, False, plain)[1]
            sock.send_multipart([header, sealed], copy=False)
        elif buffer is not None:
            keys.seal_chunk_into(index, False, plain, buffer)
            pool.sent(buffer, sock.send_multipart([header, buffer], copy=False, track=True))
        else:
            keys.seal_chunk_into(index, False, plain, one)
            sock.send_multipart([header, one], copy=True)
        if index % WINDOW == WINDOW - 1:
            sock.send(b"sync")
            sock.recv()
    return cpu_seconds() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    drain = subprocess.Popen([sys.executable, "-c", DRAIN], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        assert drain.stdout is not None
        sock.connect(f"tcp://127.0.0.1:{int(drain.stdout.readline())}")
        keys = TransferKeys(os.urandom(16), os.urandom(32), os.urandom(32))
        plain = os.urandom(CHUNK)
        seal_and_send("fresh", sock, keys, plain)  # warm-up
        spent: dict[str, list[float]] = {way: [] for way in WAYS}
        for n in range(args.rounds):
            for way in WAYS if n % 2 == 0 else WAYS[::-1]:
                spent[way].append(seal_and_send(way, sock, keys, plain))
            shown = ", ".join(f"{w} {spent[w][-1]:.3f}" for w in WAYS)
            print(f"round {n + 1}: {shown}", flush=True)
    finally:
        sock.close()
        ctx.term()
        drain.kill()
        drain.wait()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nCPU s per GiB sealed and sent, median of {args.rounds} (load average {load}):")
    for way in WAYS:
        print(f"  {way:7} {statistics.median(spent[way]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
