"""Go/no-go for a shared-memory ring between two nodes of one host.

Two real processes on this host move 1 GiB in 1 MiB chunks (AES-256-GCM,
the nodes' own ``TransferKeys``), a window of 16 chunks, one ack per 4
chunks (as the nodes pace and ack), every way in the same run, interleaved
(order reversed every other round):

- ``ipc``: today's path between co-located nodes: ``seal_chunk_into`` a
  pooled buffer (actors/sealed_buffers.py; a new one when all are still
  queued, as the sender does), a header frame and the sealed
  chunk sent without a copy over ZeroMQ ``ipc://``; the receiver decrypts
  from the received frame into a reused buffer;
- ``tcp``: the same over ZeroMQ ``tcp://`` on loopback;
- ``ring``: the receiver creates a ring of 16 chunk slots in a file under
  /dev/shm (0600) and both map it; the sender seals each chunk straight into
  a free slot and sends only a descriptor (header + slot, offset, length)
  over ZeroMQ ``ipc://``; the receiver bounds-checks it, COPIES the slot
  into its own buffer (the sender could rewrite shared memory while it is
  read), decrypts from that copy, and the ack frees the slots.

Prints each process's CPU seconds (every thread, from ``getrusage``) per GiB
for every way and round, then the medians and the ring's saving.

    .venv/bin/python scripts/bench_shm_ring.py [--rounds 5] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.sealed_buffers import SealedBuffers
from peercrypt.crypto.transfer import TAG_BYTES, TransferKeys

CHUNK = 1 << 20
SEALED = CHUNK + TAG_BYTES
WINDOW = 16
ACK_EVERY = 4
WAYS = ("ipc", "tcp", "ring")
HEADER = struct.Struct(">16sQ?12s")  # tid, index, last, nonce (40 bytes, as a chunk header)
SLOT = struct.Struct(">IQI")  # slot, offset, length
ACK = struct.Struct(">Q")  # chunks received so far


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receiver(keys_hex: str, folder: str) -> None:
    """The receiving process: binds, then serves one way per command."""
    tid, send_key, recv_key = (bytes.fromhex(x) for x in keys_hex.split(":"))
    keys = TransferKeys(tid, recv_key, send_key)  # the reverse direction's keys
    ctx = zmq.Context()
    ipc = ctx.socket(zmq.ROUTER)
    ipc.bind(f"ipc://{folder}/data.sock")
    tcp = ctx.socket(zmq.ROUTER)
    port = tcp.bind_to_random_port("tcp://127.0.0.1")
    ring_path = os.path.join("/dev/shm", f"bench-ring-{os.getpid()}")
    fd = os.open(ring_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, WINDOW * SEALED)
    ring = mmap.mmap(fd, WINDOW * SEALED)
    os.close(fd)
    view = memoryview(ring)
    print(port, ring_path, flush=True)
    plain = bytearray(CHUNK)
    private = bytearray(SEALED)
    private_view = memoryview(private)
    try:
        for line in sys.stdin:
            way, chunks = line.split()
            sock = tcp if way == "tcp" else ipc
            started = cpu_seconds()
            got = 0
            while got < int(chunks):
                frames = sock.recv_multipart(copy=False)
                route, head = frames[0].bytes, frames[1].buffer
                _tid, index, last, nonce = HEADER.unpack_from(head)
                if way == "ring":
                    slot, offset, length = SLOT.unpack_from(head, HEADER.size)
                    if (
                        slot >= WINDOW
                        or offset != slot * SEALED
                        or length != SEALED
                        or offset + length > len(view)
                    ):
                        continue  # dropped like a forged chunk
                    private_view[:length] = view[offset : offset + length]
                    keys.open_chunk_into(index, last, nonce, private_view[:length], plain)
                else:
                    keys.open_chunk_into(index, last, nonce, frames[2].buffer, plain)
                got += 1
                if got % ACK_EVERY == 0:
                    sock.send_multipart([route, ACK.pack(got)])
            spent = cpu_seconds() - started
            print(f"{spent:.6f}", flush=True)
    finally:
        view.release()
        private_view.release()
        ring.close()
        os.unlink(ring_path)


def send_way(
    way: str,
    sock: zmq.Socket[bytes],
    keys: TransferKeys,
    source: bytes,
    chunks: int,
    ring: memoryview | None,
) -> float:
    """CPU seconds of this process to seal and send ``chunks`` chunks."""
    pool = SealedBuffers(SEALED)
    acked = 0
    started = cpu_seconds()
    for index in range(chunks):
        while index - acked >= WINDOW:
            acked = ACK.unpack(sock.recv())[0]
        last = index == chunks - 1
        if way == "ring":
            assert ring is not None
            slot = index % WINDOW  # freed in order by the acks
            offset = slot * SEALED
            nonce = keys.seal_chunk_into(index, last, source, ring[offset : offset + SEALED])
            head = HEADER.pack(keys.tid, index, last, nonce) + SLOT.pack(slot, offset, SEALED)
            sock.send(head)
        else:
            buffer = pool.take()
            if buffer is None:  # every pooled buffer still queued: a new one (as the sender)
                nonce, sealed = keys.seal_chunk(index, last, source)
                sock.send_multipart([HEADER.pack(keys.tid, index, last, nonce), sealed], copy=False)
                continue
            nonce = keys.seal_chunk_into(index, last, source, buffer)
            tracker = sock.send_multipart(
                [HEADER.pack(keys.tid, index, last, nonce), buffer], copy=False, track=True
            )
            pool.sent(buffer, tracker)
    while acked < chunks - chunks % ACK_EVERY:
        acked = ACK.unpack(sock.recv())[0]
    return cpu_seconds() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        receiver(args.serve, args.folder)
        return 0
    chunks = args.size_mib
    gib = chunks / 1024
    tid, send_key, recv_key = os.urandom(16), os.urandom(32), os.urandom(32)
    keys = TransferKeys(tid, send_key, recv_key)
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o700)
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                f"{tid.hex()}:{send_key.hex()}:{recv_key.hex()}",
                "--folder",
                folder,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        port_text, ring_path = child.stdout.readline().split()
        ctx = zmq.Context()
        socks: dict[str, zmq.Socket[bytes]] = {}
        for way, address in (
            ("ipc", f"ipc://{folder}/data.sock"),
            ("tcp", f"tcp://127.0.0.1:{port_text}"),
        ):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(address)
            socks[way] = sock
        socks["ring"] = socks["ipc"]
        fd = os.open(ring_path, os.O_RDWR)
        mapped = mmap.mmap(fd, WINDOW * SEALED)
        os.close(fd)
        ring = memoryview(mapped)
        source = os.urandom(CHUNK)
        spent: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}

        def one(way: str, n: int) -> tuple[float, float]:
            child.stdin.write(f"{way} {n}\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            sender = send_way(way, socks[way], keys, source, n, ring)
            return sender, float(child.stdout.readline())  # type: ignore[union-attr]

        try:
            for way in WAYS:  # warm-up: connections, pages, the ring's first touch
                one(way, 64)
            for r in range(args.rounds):
                for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                    s, c = one(way, chunks)
                    spent[way].append((s / gib, c / gib))
                shown = ", ".join(
                    f"{w} {spent[w][-1][0]:.3f} + {spent[w][-1][1]:.3f} = {sum(spent[w][-1]):.3f}"
                    for w in WAYS
                )
                print(f"round {r + 1} (sender + receiver CPU s per GiB): {shown}", flush=True)
        finally:
            ring.release()
            mapped.close()
            for sock in set(socks.values()):
                sock.close()
            ctx.term()
            child.stdin.close()
            child.wait(timeout=30)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nCPU s per GiB, median of {args.rounds} (load average {load}):")
    med: dict[str, tuple[float, float, float]] = {}
    for way in WAYS:
        s = statistics.median(x[0] for x in spent[way])
        c = statistics.median(x[1] for x in spent[way])
        t = statistics.median(sum(x) for x in spent[way])
        med[way] = (s, c, t)
        print(f"  {way:5} sender {s:.3f}  receiver {c:.3f}  both {t:.3f}")
    print(
        f"  ring saves {med['ipc'][2] - med['ring'][2]:.3f} against ipc, "
        f"{med['tcp'][2] - med['ring'][2]:.3f} against tcp (both processes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
