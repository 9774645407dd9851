"""Soak: fuzz every public socket of a real node with well-formed hostile
messages for as long as asked (hours, typically), not in CI.

One target node runs as a real process; a second node sends it a real file
every ``--check-every`` seconds, which must verify. Meanwhile, in rounds:

- the public (CURVE) port gets every message type at its extremes
  (:mod:`peercrypt.testing.extremes`), from a fresh identity per round;
- the data port gets hostile transfers (:mod:`peercrypt.testing.hostile_sender`):
  chunks beyond the credit, replayed frames, a lying final hash, sparse
  offers, abandoned slots, and well-formed headers with junk payloads;
- the multicast repair port gets well-formed multicast frames with junk.

It stops at the first broken promise (the node died, an actor raised or was
restarted, a good transfer failed, memory grew past ``--max-rss-mib``) with
exit status 1, or after ``--duration`` seconds with 0. A line per minute
says what was sent and what the node counted.

    .venv/bin/python scripts/soak.py --duration 3600
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import blake3
import zmq
from hypothesis.errors import NonInteractiveExampleWarning

from peercrypt.core.bitmap import MAX_TRANSFER_CHUNKS
from peercrypt.crypto.identity import KeyPair, network_server_keys, new_network_key
from peercrypt.testing.extremes import any_message
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import NodeProcess, random_file
from peercrypt.wire import codec

MiB = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.key = new_network_key()
        self.target = NodeProcess(data_dir=work / "target", network_key=self.key).start()
        self.good = NodeProcess(data_dir=work / "good", network_key=self.key).start()
        self.file = random_file(work / "good.bin", args.file_mib * MiB)
        self.digest = blake3.blake3(self.file.read_bytes()).hexdigest()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sent: dict[str, int] = {}

    def tally(self, what: str, n: int = 1) -> None:
        self.sent[what] = self.sent.get(what, 0) + n

    # -- attacks --------------------------------------------------------------------

    def control_round(self, count: int) -> None:
        """Extreme messages to the public port from a fresh identity."""
        me = KeyPair.from_seed(os.urandom(32))
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndtimeo = 5000
        sock.curve_serverkey = network_server_keys(self.key).z85_public
        sock.curve_publickey = me.z85_public
        sock.curve_secretkey = me.z85_secret
        sock.connect(f"tcp://{self.target.host}:{self.target.port}")
        data = self.ctx.socket(zmq.DEALER)
        data.linger = 0
        data.sndtimeo = 5000
        data.connect(f"tcp://{self.target.host}:{self.target.data_port}")
        try:
            for _ in range(count):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
                    msg = any_message.example()
                try:
                    frame = codec.encode(msg)
                except ValueError:
                    continue
                sock.send(frame)
                data.send_multipart([frame, self.rng.randbytes(self.rng.randrange(64))])
                self.tally("extreme-messages")
            while sock.poll(100):
                sock.recv()
        finally:
            sock.close(0)
            data.close(0)

    def transfer_round(self) -> None:
        """One hostile transfer of a kind chosen at random."""
        with HostileSender(self.key, self.target.host, self.target.port) as h:
            kind = self.rng.choice(["flood", "replay", "liar", "sparse", "squat", "junk"])
            chunk = self.rng.choice([4096, 65536, MiB])
            if kind == "sparse":
                size = self.rng.randrange(MAX_TRANSFER_CHUNKS // 2, MAX_TRANSFER_CHUNKS) * 4096
                chunk = 4096
            else:
                size = self.rng.randrange(1, 64 * MiB)
            t = h.offer(f"soak-{kind}-{self.rng.randrange(1 << 30)}.bin", size, chunk)
            self.tally(f"offers-{kind}")
            if not isinstance(t, HostileTransfer):
                return
            block = self.rng.randbytes(chunk)
            if kind == "flood":
                for i in range(min(t.total, 300)):
                    t.send_chunk(i, block[: t.chunk_length(i)])
            elif kind == "replay":
                frames = t.send_chunk(0, block[: t.chunk_length(0)])
                thief = t.connect(h.ctx)
                for _ in range(50):
                    thief.send_multipart(frames)
                thief.close(0)
            elif kind == "liar":
                for i in range(min(t.total, 8)):
                    t.send_chunk(i, block[: t.chunk_length(i)])
                t.send_done(os.urandom(32))
            elif kind == "sparse":
                for _ in range(200):
                    i = self.rng.randrange(t.total)
                    t.send_chunk(i, block[: t.chunk_length(i)])
            elif kind == "junk":
                for _ in range(100):
                    header = t.chunk_frames(self.rng.randrange(t.total), b"")[0]
                    t.send_frames([header, self.rng.randbytes(self.rng.randrange(1, 4096))])
            t.replies(0.2)
            if kind != "squat":  # a squatter keeps its slot until the idle timeout
                t.abandon()

    def repair_round(self) -> None:
        """Well-formed multicast frames with junk to the repair port."""
        port = self.target.status().get("multicast_repair_port")
        if not port:
            return
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.sndtimeo = 1000
        push.connect(f"tcp://{self.target.host}:{port}")
        try:
            for _ in range(50):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
                    msg = any_message.example()
                try:
                    frame = codec.encode(msg)
                    push.send_multipart([frame, self.rng.randbytes(64), self.rng.randbytes(64)])
                except (ValueError, zmq.Again):
                    continue
                self.tally("repair-frames")
        finally:
            push.close(0)

    # -- promises -------------------------------------------------------------------

    def check(self) -> str:
        """'' if every promise holds, else what broke."""
        if not self.target.running:
            return f"the target node exited ({self.target.returncode})"
        code, result = self.good.send_to(self.file, self.target)
        if code != 0 or result.get("blake3") != self.digest:
            return f"a good transfer failed: {result}"
        stored = self.target.inbox / result["stored_as"]
        if blake3.blake3(stored.read_bytes()).hexdigest() != self.digest:
            return "a good transfer stored other bytes"
        stored.unlink()
        counters = self.target.counters()
        raised = {k: v for k, v in counters.items() if k.endswith("handler-errors") and v}
        if raised:
            return f"handlers raised: {raised}"
        rss = rss_mib(self.target.pid)
        if rss > self.args.max_rss_mib:
            return f"target RSS {rss:.0f} MiB > {self.args.max_rss_mib} MiB"
        return ""

    def run(self) -> int:
        start = time.monotonic()
        next_check = next_line = start
        rounds = 0
        while (now := time.monotonic()) - start < self.args.duration:
            self.control_round(50)
            self.transfer_round()
            self.repair_round()
            rounds += 1
            if now >= next_check:
                broken = self.check()
                if broken:
                    print(f"soak: BROKEN after {now - start:.0f} s: {broken}", flush=True)
                    print(self.target.log_tail(), flush=True)
                    return 1
                next_check = now + self.args.check_every
            if now >= next_line:
                counters = self.target.counters()
                dropped = sum(v for k, v in counters.items() if "dropped" in k or "refused" in k)
                print(
                    f"soak: {now - start:6.0f} s, {rounds} rounds, sent {self.sent}, "
                    f"node dropped/refused {dropped}, RSS {rss_mib(self.target.pid):.0f} MiB",
                    flush=True,
                )
                next_line = now + 60
        return 0 if not self.check() else 1

    def close(self) -> None:
        for node in (self.good, self.target):
            if node.running:
                node.stop()
        self.ctx.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to run")
    parser.add_argument("--check-every", type=float, default=30.0, help="seconds between checks")
    parser.add_argument("--file-mib", type=int, default=8, help="size of the good transfer")
    parser.add_argument("--max-rss-mib", type=float, default=1024.0, help="target RSS limit")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peercrypt-soak-") as work:
        soak = Soak(Path(work), args)
        try:
            return soak.run()
        finally:
            soak.close()


if __name__ == "__main__":
    sys.exit(main())
