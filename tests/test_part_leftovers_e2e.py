"""A transfer that ends while its writer still has chunks queued leaves
nothing in the inbox, with real nodes and a disk that stops answering
(docs/resume.md, "Part files"): the part and its manifest are removed by
the writer after its queued work, so a checkpoint of a chunk still queued
cannot write the manifest again for a part already gone (it stayed until
``--part-expiry``, 24 h, charged to no quota)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from peercrypt.testing.disk import StallingDisk
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    cli_running,
    held_open,
    wait_until,
)
from peercrypt.wire.messages import Ack, Failed, Verified

MiB = 1024 * 1024
WAIT = 30.0
# Chunks of 1 MiB: a checkpoint every 16 written (core/resume.py), so a
# queue of 24 or more holds one.
CHUNK = MiB
QUEUED = 24


def _count(node: NodeProcess, name: str) -> int:
    return node.counters().get(name, 0)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["mid-session", "at-its-start"])
def test_a_multicast_session_ended_while_the_receivers_disk_hangs_leaves_nothing(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    when: str,
) -> None:
    """The disk stops answering mid-session (authenticated chunks pile up
    in the writer's queue), or before the session starts (the writer's
    open, with its first checkpoint, waits), and the sender's user ends the
    session. Once the disk answers again and the writer has closed the
    part, the inbox holds nothing: no part, no manifest."""
    disk = stalling_disk(96 * MiB, journal=False)  # a stall hangs the writes, not the metadata
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    rate = 16 * MiB if when == "mid-session" else MiB  # (a chunk a second at the start)
    sender = node_factory("--max-rate", str(rate), name="sender")
    path = make_file(64 * MiB, name="ended.bin")
    if when == "at-its-start":
        disk.settle()  # (its part is created while the disk hangs: see StallingDisk)
        disk.stall()
    try:
        with cli_running(
            "send", path, receiver.host, str(receiver.port), "-m", "--chunk-size", str(CHUNK),
            "--json", data_dir=sender.data_dir,
        ) as proc:  # fmt: skip
            if when == "mid-session":
                receiver.wait_for_counter("mreceiver.chunks-written", 2, timeout=WAIT)
                disk.stall()
                written = _count(receiver, "mreceiver.chunks-written")
                wait_until(
                    lambda: _count(sender, "msender.seals-first") >= written + QUEUED or None,
                    WAIT,
                    f"{QUEUED} chunks published past what the receiver wrote",
                )
            else:
                receiver.wait_for_counter("mreceiver.joined", 1, timeout=WAIT)
            proc.send_signal(signal.SIGINT)  # the sender's user ends the send
            proc.communicate(timeout=WAIT)
            receiver.wait_for_counter("mreceiver.dropped-by-sender", 1, timeout=WAIT)
            disk.resume()
            assert receiver.pid is not None
            wait_until(
                lambda: not held_open(receiver.pid, disk.path) or None,
                WAIT,
                "the writer to close the part",
            )
    finally:
        disk.resume()  # before the nodes stop: a hung disk holds them
    assert sorted(p.name for p in disk.path.iterdir() if p.name != "lost+found") == []


# The longest names a receiver keeps (core/names.py, MAX_NAME_BYTES): 200
# bytes of one-byte and of four-byte characters.
LONGEST = ["n" * 196 + ".bin", "\U0001d11e" * 49 + ".bin"]


@pytest.mark.parametrize("how", ["unicast", "multicast"])
@pytest.mark.parametrize("name", LONGEST, ids=["ascii", "four-byte"])
def test_a_file_of_the_longest_name_is_received_with_its_part_and_manifest(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Callable[[Path], str],
    how: str,
    name: str,
) -> None:
    """Its part's and manifest's names (``.NAME.ID[-RANDOM][.mc].part``,
    ``.manifest``, ``.tmp``) fit a filesystem's 255 bytes: a multicast
    part's name took 59 bytes beside the file's, so names of 197-200 bytes
    were refused ("File name too long") and of 184-196 failed their
    session at the first checkpoint. 128 chunks: checkpoints are written."""
    assert len(name.encode()) == 200
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    path = make_file(8 * MiB, name=name)
    extra = ["-m"] if how == "multicast" else []
    code, result = sender.send(
        path, receiver.host, receiver.port, "--chunk-size", str(64 * 1024), *extra
    )
    assert code == 0 and result["ok"], result
    stored = result["stored_as"] if how == "unicast" else result["receivers"][0]["stored_as"]
    assert stored == name, result
    assert blake3_file(receiver.inbox / name) == blake3_file(path)
    assert [p.name for p in receiver.inbox.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("end", ["abandoned", "the node stops"])
@pytest.mark.parametrize("chunks", [0, 1])
def test_a_part_is_kept_for_a_resume_only_when_it_holds_a_chunk(
    node_factory: Callable[..., NodeProcess], network_key: str, chunks: int, end: str
) -> None:
    """A member offers a file (256 MiB in the smallest chunks), is
    accepted, sends ``chunks`` chunks and abandons it, or the receiving
    node stops. With a chunk written its part and manifest stay for a
    resume; with none there is nothing to resume, and nothing stays (each
    such offer left a part and its manifest until --part-expiry, 24 h,
    charged to no one's space: after a restart, at its whole size)."""
    receiver = node_factory(name="receiver")
    chunk = 4096
    with HostileSender(network_key, receiver.host, receiver.port) as member:
        t = member.offer("empty.bin", (1 << 16) * chunk, chunk)
        assert isinstance(t, HostileTransfer), t
        for index in range(chunks):
            t.send_chunk(index, bytes(chunk))
        if chunks:
            wait_until(
                lambda: any(isinstance(m, Ack) and m.cumulative for m in t.replies(0.2)) or None,
                WAIT,
                "the chunk written",
            )
        if end == "the node stops":
            receiver.stop()
        else:
            t.abandon()
            counters = receiver.counters_when("receiver.aborted-by-sender", 1, timeout=WAIT)
            assert counters.get("receiver.parts-empty-not-kept", 0) == (0 if chunks else 1)
            assert receiver.pid is not None
            wait_until(
                lambda: not held_open(receiver.pid, receiver.inbox) or None, WAIT, "the part closed"
            )
    left = sorted(p.name for p in receiver.inbox.iterdir())
    if chunks:
        assert len(left) == 2 and left[0].endswith(".part"), left
        assert left[1] == left[0] + ".manifest", left
    else:
        assert left == [], left


@pytest.mark.timeout(180)
def test_an_inbox_made_read_only_mid_transfer_costs_no_descriptor_no_space_no_error(
    tmp_path: Path, network_key: str, make_file: Callable[..., Path]
) -> None:
    """The user takes write permission off the inbox while a file comes in
    (the node runs as a user would: root's override of file permissions
    dropped). The send fails with the link's error, and then: no handler
    error in the receiver, no descriptor left on the part (the close raised
    at its removal and never closed it: 64 MiB held until a restart), no
    space left promised; the inbox made writable, a resend stores the file."""
    receiver = NodeProcess(
        data_dir=tmp_path / "receiver",
        network_key=network_key,
        prefix=("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"),
    ).start()
    sender = NodeProcess(data_dir=tmp_path / "sender", network_key=network_key).start()
    try:
        path = make_file(16 * MiB, name="read-only.bin")
        args = ("send", path, receiver.host, str(receiver.port), "--json", "-r", "4M")
        with cli_running(*args, data_dir=sender.data_dir) as proc:

            def moved() -> bool:  # (a few MiB acknowledged: written in the part)
                rows = json.loads(sender.cli("transfers", "--json").stdout)
                return bool(rows) and int(rows[0]["bytes"]) >= 2 * MiB

            wait_until(moved, WAIT, "a few MiB written")
            receiver.inbox.chmod(0o555)
            out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
        assert "Permission denied" in out, out
        wait_until(
            lambda: not held_open(receiver.pid, receiver.inbox),
            WAIT,
            "the part's descriptors closed",
        )
        wait_until(
            lambda: receiver.status().get("promised") == "0", WAIT, "the transfer's space released"
        )
        assert receiver.counters().get("receiver.handler-errors", 0) == 0
        receiver.inbox.chmod(0o755)
        again = sender.cli("send", path, receiver.host, str(receiver.port), timeout=120)
        assert again.returncode == 0, again.describe()
        assert blake3_file(receiver.inbox / path.name) == blake3_file(path)
    finally:
        receiver.inbox.chmod(0o755)
        sender.stop()
        receiver.stop()


@pytest.mark.timeout(180)
def test_an_offer_again_after_one_abandoned_before_its_first_chunk_is_stored(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    """A member abandons an offer before its first chunk and offers the same
    file again. The first part held nothing, and the writer removes it after
    its queued work (here another file's writes, on a disk that stops
    answering): the second offer took that part to continue, and the
    writer's removal took it from under it (refused "cannot open the kept
    part", or, as here, its verified file never published). The second
    starts afresh and its file is stored."""
    disk = stalling_disk(96 * MiB, journal=False)  # a stall hangs the writes, not the metadata
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    chunk, data, tag = 4096, os.urandom(16 * 4096), os.urandom(32)  # (one file: one tag)
    with HostileSender(network_key, receiver.host, receiver.port) as member:
        first = member.offer("again.bin", len(data), chunk, source=tag)
        assert isinstance(first, HostileTransfer), first
        wait_until(
            lambda: [p for p in disk.path.iterdir() if p.name.endswith(".part.manifest")] or None,
            WAIT,
            "the first part's manifest",
        )
        blocker = member.offer("blocker.bin", 64 * MiB, MiB)
        assert isinstance(blocker, HostileTransfer), blocker
        # The second offer creates its part while the disk hangs: the inbox's
        # folder must not be in a writeback the stall holds (settled once the
        # blocker's first manifest, written at its open, is in it too).
        wait_until(
            lambda: (
                len([p for p in disk.path.iterdir() if p.name.endswith(".part.manifest")]) == 2
                or None
            ),
            WAIT,
            "the blocker's manifest",
        )
        disk.settle()
        disk.stall()
        try:
            for index in range(4):  # the writer hangs in the first, the rest wait behind it
                blocker.send_chunk(index, bytes(MiB))
            wait_until(
                lambda: int(receiver.status().get("writer_queue_peak", 0)) >= 2 * MiB or None,
                WAIT,
                "chunks queued behind a hung write",
            )
            first.abandon()  # its part's removal waits behind them
            receiver.wait_for_counter("receiver.aborted-by-sender", 1, timeout=WAIT)
            second = member.offer("again.bin", len(data), chunk, source=tag)
            assert isinstance(second, HostileTransfer), second
            assert second.accept is not None and second.accept.have == [], second.accept
        finally:
            disk.resume()
        blocker.abandon()
        for index in range(second.total):  # one at a time: its credit was given as the disk hung
            second.send_chunk(index, data[index * chunk : (index + 1) * chunk])
            second.acked(index + 1)
        answer = second.done_until(blake3.blake3(data).digest(), (Verified, Failed))
        assert isinstance(answer, Verified) and answer.stored_as == "again.bin", answer
    assert blake3_file(receiver.inbox / "again.bin") == blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("how", ["unicast", "multicast"])
def test_an_inbox_removed_while_the_node_runs_is_made_again(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], how: str
) -> None:
    """The user removes the inbox folder (a clean-up) while the node runs:
    the next send is stored in an inbox made again as at the node's start,
    not refused "cannot read the inbox" until the user makes it."""
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    first = make_file(MiB + 3, name="first.bin")
    extra = ["-m"] if how == "multicast" else []
    code, result = sender.send(first, receiver.host, receiver.port, *extra)
    assert code == 0, result
    for entry in receiver.inbox.iterdir():
        entry.unlink()
    receiver.inbox.rmdir()
    second = make_file(2 * MiB + 5, name="second.bin")
    code, result = sender.send(second, receiver.host, receiver.port, *extra)
    assert code == 0, result
    assert blake3_file(receiver.inbox / "second.bin") == blake3_file(second)
    assert sorted(p.name for p in receiver.inbox.iterdir()) == ["second.bin"]
    made = ("receiver" if how == "unicast" else "mreceiver") + ".inbox-made-again"
    receiver.wait_for_counter(made, 1)
    assert _count(receiver, made) == 1
    assert "was removed while the node ran: made again" in receiver.log_text()
