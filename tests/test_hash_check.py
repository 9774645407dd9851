"""The receiver's whole-file hash check, proven by transfers that must fail.

A file reaches its final name only when the BLAKE3 hash of the file *as the
disk holds it* equals the hash the sender read. Two ways to break that, each
with real node processes:

- a sender that sends the right chunks but lies in its final hash;
- the part file changed on disk between being written and being verified:
  after the range was read back as written (opened and changed, or
  truncated by its name), which must not let the early read stand.

Each must fail the transfer and leave nothing under the final name (nor a
part file), while a good transfer at the same time still verifies. And a
new offer of the same file while its check runs must not store it twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

import actors.file_writer as file_writer
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


def _parts_of(receiver: NodeProcess, name: str) -> list[Path]:
    """``name``'s part files, found by name (never opened: an open of a
    part is what the receiver watches for)."""
    prefix = f".{name}."
    return [
        p for p in receiver.inbox.iterdir() if p.name.startswith(prefix) and p.suffix == ".part"
    ]


WRITTEN = ["through-the-page-cache", "directly"]


def _changed_after_read_back(
    node_factory: Callable[..., NodeProcess],
    written: str,
    network_key: str,
    change: Callable[[Path, int, int], None],
    verdict: str = "full",
) -> None:
    """A part changed by ``change(part, size, written)`` on disk mid-transfer
    (``written``: its bytes written so far), once it was hashed as written
    (chunk 0's last page read back once chunk 1 was written above it): the
    transfer fails its hash check and leaves nothing. The failing verdict
    comes from the whole read-back after the fsync (``verdict`` "full"), or
    from the read-back as written ("early") where that read what the change
    left. (Where what a cut leaves allocated cannot be told, the follower
    reads a part written through the page cache back instead:
    test_file_writer_direct.py.)"""
    extra = ("--no-direct-writes",) if written == "through-the-page-cache" else ()
    receiver = node_factory(*extra)
    window = file_writer.HASH_WINDOW
    chunk = 1 << 20
    content = os.urandom(4 * window)
    with HostileSender(network_key, receiver.host, receiver.port) as sender:
        t = sender.offer("tampered.bin", len(content), chunk)
        assert isinstance(t, HostileTransfer), t
        _send_all(t, content, chunk, stop=3 * window // chunk)  # acked: written
        receiver.wait_for_counter("receiver.read-back-early-bytes", 4096, WAIT)
        (part,) = _parts_of(receiver, "tampered.bin")
        change(part, len(content), 3 * window)
        _send_all(t, content, chunk, start=3 * window // chunk)
        t.send_done(blake3.blake3(content).digest())  # the truth
        failed = t.wait_for(Failed, WAIT)
        assert failed.code == "hash-mismatch"
    gone = lambda: leftovers(receiver, "tampered.bin") == [] or None  # noqa: E731
    wait_until(gone, WAIT, "the part and its manifest removed")
    # (the report that counts the mismatch has the check that gave it: counted before)
    counters = receiver.counters_when("receiver.hash-mismatch", 1)
    checks = {kind: counters.get(f"receiver.checks-{kind}", 0) for kind in ("early", "full")}
    assert checks == {"early": int(verdict == "early"), "full": int(verdict == "full")}, counters


@pytest.mark.parametrize("written", WRITTEN)
def test_a_part_changed_on_disk_after_it_was_read_back_stores_nothing(
    node_factory: Callable[..., NodeProcess], network_key: str, written: str
) -> None:
    """Opened (as any other process would) and its first byte changed."""

    def flip(part: Path, size: int, _: int) -> None:
        with open(part, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))

    _changed_after_read_back(node_factory, written, network_key, flip)


@pytest.mark.parametrize("written", WRITTEN)
def test_a_part_truncated_by_name_after_it_was_read_back_stores_nothing(
    node_factory: Callable[..., NodeProcess], network_key: str, written: str
) -> None:
    """Cut short by its name (no open) and grown back to its size."""

    def cut(part: Path, size: int, _: int) -> None:
        os.truncate(part, 4096)
        os.truncate(part, size)

    _changed_after_read_back(node_factory, written, network_key, cut)


@pytest.mark.parametrize("written", WRITTEN)
def test_a_part_cut_inside_its_last_written_block_stores_nothing(
    node_factory: Callable[..., NodeProcess], network_key: str, written: str
) -> None:
    """Cut by its name to inside the last block written so far, and grown
    back: that block's rest is zeroes, no block is freed (no hole). The
    last block of a chunk is read back as written once a chunk above it is
    written, here after the cut: that read-back reads the zeroes, and its
    verdict is the mismatch."""

    def cut(part: Path, size: int, written: int) -> None:
        os.truncate(part, written - 100)
        os.truncate(part, size)

    _changed_after_read_back(node_factory, written, network_key, cut, verdict="early")


@pytest.mark.parametrize("where", ["disk", "disk-buffered", "tmpfs"])
@pytest.mark.parametrize("lanes", ["1", "4"])
def test_a_fresh_part_is_verified_by_its_read_back_as_written(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    tmp_path: Path,
    where: str,
    lanes: str,
) -> None:
    """Sent in order or by four lanes (chunks out of order), into tmpfs, a
    disk inbox written through the page cache (``--no-direct-writes``),
    or one written with O_DIRECT (the default where the filesystem takes
    it: hashed as written): stored with the content's hash, the verdict
    from the read-back (or hash) as written."""
    inbox = tmp_path / "inbox"
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        inbox = Path(tempfile.mkdtemp(dir="/dev/shm"))
    extra = ("--no-direct-writes",) if where == "disk-buffered" else ()
    try:
        receiver, sender = node_factory("--inbox", str(inbox), *extra), node_factory()
        src = make_file((24 << 20) + 12345)
        assert_sent(receiver, sender.send(src, receiver.host, receiver.port, "-t", lanes), src)
        assert receiver.wait_for_counter("receiver.checks-early", 1) == 1
        counters = receiver.counters()
        assert counters.get("receiver.checks-full", 0) == 0
        if where == "disk":
            assert counters.get("receiver.direct-bytes", 0) > 0  # (written directly indeed)
    finally:
        if where == "tmpfs":
            shutil.rmtree(inbox, ignore_errors=True)


def test_with_the_check_as_written_off_a_fresh_part_is_read_back_after_its_fsync(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """``--no-check-as-written``: the whole part read back after the last
    chunk, as before."""
    receiver, sender = node_factory("--no-check-as-written"), node_factory()
    src = make_file((8 << 20) + 5)
    assert_sent(receiver, sender.send(src, receiver.host, receiver.port), src)
    assert receiver.wait_for_counter("receiver.checks-full", 1) == 1
    assert receiver.counters().get("receiver.checks-early", 0) == 0


def _send_all(
    t: HostileTransfer, content: bytes, chunk: int, start: int = 0, stop: int | None = None
) -> None:
    """Every chunk from ``start`` (those before it acked) to ``stop`` (the
    last by default), within the receiver's credit, until all are acked."""
    stop = t.total if stop is None else stop
    sent = acked = start
    window = 1
    deadline = time.monotonic() + WAIT
    while acked < stop:
        assert time.monotonic() < deadline, f"only {acked} of {stop} chunks acked"
        while sent < min(stop, acked + window):
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
