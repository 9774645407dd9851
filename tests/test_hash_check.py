"""The receiver's whole-file hash check, proven by transfers that must fail.

A file reaches its final name only when the BLAKE3 hash of the file *as the
disk holds it* equals the hash the sender read. Two ways to break that, each
with real node processes:

- a sender that sends the right chunks but lies in its final hash;
- the part file changed on disk between being written and being verified.

Each must fail the transfer and leave nothing under the final name (nor a
part file), while a good transfer at the same time still verifies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import blake3

from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    wait_until,
)
from peercrypt.wire.messages import Ack, Failed

CHUNK = 64 * 1024
WAIT = 30.0


def leftovers(receiver: NodeProcess, name: str) -> list[str]:
    """Everything in the inbox that came of ``name`` (final or part)."""
    return sorted(p.name for p in receiver.inbox.iterdir() if name in p.name)


def test_a_sender_lying_in_its_final_hash_stores_nothing(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    receiver, sender = node_factory(), node_factory()
    good = make_file(8 << 20)
    content = os.urandom(5 * CHUNK + 123)
    with HostileSender(network_key, receiver.host, receiver.port) as liar:
        t = liar.offer("lie.bin", len(content), CHUNK)
        assert isinstance(t, HostileTransfer), t
        running = BackgroundSend(sender, good, receiver, "-r", str(4 << 20))  # ~2 s alongside
        for i in range(t.total):
            t.send_chunk(i, content[i * CHUNK : (i + 1) * CHUNK])
        wait_until(
            lambda: (
                any(isinstance(m, Ack) and m.cumulative == t.total for m in t.replies(0.2)) or None
            ),
            WAIT,
            "every chunk to be acked",
        )
        t.send_done(blake3.blake3(content + b"!").digest())  # the lie
        failed = t.wait_for(Failed, WAIT)
        assert failed.code == "hash-mismatch"
        assert_sent(receiver, running.join(), good)
    assert leftovers(receiver, "lie.bin") == []
    assert receiver.counters()["receiver.hash-mismatch"] == 1


def test_a_part_changed_on_disk_before_verification_stores_nothing(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver, sender, other = node_factory(), node_factory(), node_factory()
    src = make_file(6 << 20, name="tampered.bin")
    good = make_file(4 << 20)
    first = src.read_bytes()[:4096]
    # 1 MiB/s: the transfer takes about five seconds, time to change its part.
    victim = BackgroundSend(sender, src, receiver, "-r", str(1 << 20))
    running = BackgroundSend(other, good, receiver, "-r", str(2 << 20))

    def written_part() -> Path | None:
        for p in receiver.inbox.iterdir():
            if p.name.startswith(".tampered.bin.") and p.name.endswith(".part"):
                with open(p, "rb") as f:
                    if f.read(4096) == first:  # chunk 0 is on disk
                        return p
        return None

    part = wait_until(written_part, WAIT, "the first chunk in the part file")
    with open(part, "r+b") as f:
        f.write(bytes([first[0] ^ 0xFF]))
    code, result = victim.join()
    assert code != 0 and result["code"] == "hash-mismatch", result
    assert leftovers(receiver, "tampered.bin") == []
    assert_sent(receiver, running.join(), good)
