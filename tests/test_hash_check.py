"""The receiver's whole-file hash check, proven by transfers that must fail.

A file reaches its final name only when the BLAKE3 hash of the file *as the
disk holds it* equals the hash the sender read. Two ways to break that, each
with real node processes:

- a sender that sends the right chunks but lies in its final hash;
- the part file changed on disk between being written and being verified.

Each must fail the transfer and leave nothing under the final name (nor a
part file), while a good transfer at the same time still verifies. And a
new offer of the same file while its check runs must not store it twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    blake3_file,
    wait_until,
)
from peercrypt.wire.messages import Ack, Failed, Refuse, Verified

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
    assert receiver.wait_for_counter("receiver.hash-mismatch", 1) == 1


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


def _send_all(t: HostileTransfer, content: bytes, chunk: int) -> None:
    """Every chunk, within the receiver's credit, until all are acked."""
    sent = acked = 0
    window = 1
    deadline = time.monotonic() + WAIT
    while acked < t.total:
        assert time.monotonic() < deadline, f"only {acked} of {t.total} chunks acked"
        while sent < min(t.total, acked + window):
            t.send_chunk(sent, content[sent * chunk : (sent + 1) * chunk])
            sent += 1
        for m in t.replies(0.2):
            if isinstance(m, Ack):
                acked, window = max(acked, m.cumulative), max(1, m.window)


def test_an_offer_of_the_same_file_during_its_final_check_stores_no_second_copy(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """The sender offers the file again right after its Done (as one that
    restarted would): while the receiver checks the whole-file hash, the new
    offer is refused with the reason, and the file is stored once."""
    receiver = node_factory()
    chunk = 1 << 20
    with HostileSender(network_key, receiver.host, receiver.port) as sender:
        for attempt in range(5):  # the check must still run when the offer lands
            name = f"once{attempt}.bin"
            content = os.urandom(48 * chunk)
            source = os.urandom(32)
            t = sender.offer(name, len(content), chunk, source=source)
            assert isinstance(t, HostileTransfer), t
            _send_all(t, content, chunk)
            t.send_done(blake3.blake3(content).digest())
            again = sender.offer(name, len(content), chunk, source=source)
            if isinstance(again, Refused):
                verified = t.wait_for(Verified, WAIT)
                assert verified.stored_as == name
                break
            # Inconclusive: the offer was taken before the Done (a take-over,
            # as for a sender that restarted) or after the check was over.
            again.abandon()
        else:
            raise AssertionError("an offer during the final check was accepted every time")
    answer = again.answer
    assert isinstance(answer, Refuse) and answer.code == "verifying", answer
    assert "final hash check" in answer.reason
    assert blake3_file(receiver.inbox / name) == blake3.blake3(content).hexdigest()
    wait_until(lambda: leftovers(receiver, name) == [name] or None, WAIT, "no part left")
