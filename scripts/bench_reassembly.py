"""The receiving thread's Python per byte, without sockets (issue 14).

    .venv/bin/python scripts/bench_reassembly.py [--size-mib 128] [--mtu 1500,9000] [--runs 3]

A sender's GSO batches (datagrams sized to the MTU, as many as fit in 64 KiB
per batch, 1 MiB chunks with tag and signature) are made beforehand; then
each batch is put into the iovec of a read as the kernel would (that copy is
measured alone and not counted) and fed to the reassembly the way ``pc-mrecv`` does
(``fragments.ReadBuffers``, the landing in the chunk's buffer,
``Intake.feed_scattered``). Printed: CPU seconds (``time.process_time``) of
the reassembly per run, and the chunks completed (all of them, checked).
"""

from __future__ import annotations

import argparse
import os
import time

from peercrypt.core import fragments

MiB = 2**20
BLOB = MiB + 16 + 64  # a sealed chunk (ciphertext, GCM tag) and its signature
IP_UDP = 28


def batches(sid: bytes, key: bytes, index: int, total: int, frag: int, per: int) -> list[bytes]:
    """The GSO batches of chunk ``index`` (each: the bytes one read gets)."""
    blob = os.urandom(BLOB)
    fields, tag = fragments.chunk_header(sid, index, index == total - 1, b"n" * 12, BLOB, key=key)
    datagrams = [
        fields + fragments.OFFSET.pack(o) + tag + blob[o:e] for o, e in fragments.split(BLOB, frag)
    ]
    return [b"".join(datagrams[k : k + per]) for k in range(0, len(datagrams), per)]


def fill(iov: list[memoryview], buf: bytes) -> None:
    """What the kernel does in a read: ``buf`` into the iovec, in order."""
    pos = 0
    for piece in iov:
        if pos >= len(buf):
            break
        part = buf[pos : pos + len(piece)]
        piece[: len(part)] = part
        pos += len(part)


def run(mtu: int, chunks: int) -> float:
    wire = mtu - IP_UDP
    frag = wire - fragments.HEADER_BYTES
    per = min(64, fragments.MAX_DATAGRAM // wire)
    sid, key = os.urandom(16), os.urandom(32)
    reads = [b for i in range(chunks) for b in batches(sid, key, i, chunks, frag, per)]
    asm = fragments.Reassembler(chunks, lambda i: BLOB, frag, 8)
    intake = fragments.Intake(sid, key, asm)
    buffers = fragments.ReadBuffers(frag, 65536)
    done = 0
    start = time.process_time()
    for buf in reads:
        landing = asm.landing(buffers.slots)
        got = buffers.iov_for(landing)
        fill(got, buf)  # the kernel's copy: measured below, and not counted
        for chunk in intake.feed_scattered(buffers.scattered(len(buf), landing), ()):
            if isinstance(chunk, fragments.FragmentError):
                raise SystemExit(f"refused: {chunk.kind}")
            done += 1
            asm.recycle(chunk.blob)
    spent = time.process_time() - start
    start = time.process_time()
    for buf in reads:  # the same copies into the same pieces, alone
        fill(buffers.iov, buf)
    spent -= time.process_time() - start
    if done != chunks:
        raise SystemExit(f"{done} of {chunks} chunks completed")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--mtu", default="1500,9000")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for mtu in (int(m) for m in args.mtu.split(",")):
        times = [run(mtu, args.size_mib) for _ in range(args.runs)]
        per256 = [round(t * 256 / args.size_mib, 3) for t in times]
        print(f"MTU {mtu}: reassembly CPU s per 256 MiB, runs {per256}", flush=True)


if __name__ == "__main__":
    main()
