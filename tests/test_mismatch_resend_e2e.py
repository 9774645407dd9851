"""A send whose receiver held the file (or part of it) when it accepted,
and then found the whole file's hash different, goes again whole, at once
and once, with real node processes.

The honest case: a file delivered before is changed by its sender where the
offer's source tag does not look (not a sampled block; size, inode and
mtime as they were): offered again, the receiver takes it for the copy it
delivered (nothing sent), the sender's Done shows another hash, the receiver
forgets that copy and answers a mismatch, and the sender offers the file
again: it goes whole and is stored beside the old copy. The hostile case: a
member that claims to hold every file and answers every Done with a mismatch
costs the sender one offer more, not a loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile import MismatchingReceiver
from peercrypt.testing.nodes import NodeProcess, blake3_file

pytestmark = pytest.mark.timeout(180)

SIZE = 1024 * 1024 + 7
CHUNK = 64 * 1024
CHANGED_AT = 100_000  # not one of the tag's samples (the start, the middle, the end)


def test_a_file_changed_behind_its_tag_goes_whole_when_the_receiver_finds_it_differs(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    sender, receiver = node_factory(), node_factory()
    path = tmp_path / "report.bin"
    path.write_bytes(os.urandom(SIZE))
    old = blake3_file(path)
    code, first = sender.send(path, receiver.host, receiver.port, "--chunk-size", str(CHUNK))
    assert code == 0 and first["stored_as"] == "report.bin", first

    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(CHANGED_AT)
        f.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and blake3_file(path) != old
    new = blake3_file(path)

    code, again = sender.send(path, receiver.host, receiver.port, "--chunk-size", str(CHUNK))
    assert code == 0, again
    assert again["stored_as"] not in ("", "report.bin"), again
    assert blake3_file(receiver.inbox / again["stored_as"]) == new
    assert blake3_file(receiver.inbox / "report.bin") == old  # the old copy stays
    assert again["blake3"] == blake3.blake3(path.read_bytes()).hexdigest()
    # Two attempts, the second whole: not "the receiver had it all".
    assert (again["stats"]["attempts"], again["stats"]["held_share"]) == (2.0, 0.0), again
    assert again["stats"]["sent_chunks"] == -(-SIZE // CHUNK), again
    assert receiver.wait_for_counter("receiver.delivered-before-mismatch", 1) == 1
    assert sender.wait_for_counter("sender.sent-whole-after-mismatch", 1) == 1


def test_a_receiver_answering_every_done_with_a_mismatch_costs_one_offer_more(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    sender = node_factory()
    hostile = MismatchingReceiver(network_key, load_or_create_identity(sender.data_dir).public)
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(SIZE))
    try:
        answer = sender.cli("send", path, "127.0.0.1", str(hostile.port), timeout=60)
    finally:
        hostile.close()
    assert answer.returncode != 0, answer.describe()
    assert "failed the transfer: the copy held changed" in answer.stderr, answer.describe()
    assert (hostile.offers, hostile.dones) == (2, 2)
    assert sender.wait_for_counter("sender.sent-whole-after-mismatch", 1) == 1
