"""A send whose receiver held the file (or part of it) when it accepted,
and then found the whole file's hash different, goes again whole, at once
and once, with real node processes.

The honest cases: a file is changed by its sender where the offer's source
tag does not look (not a sampled block; size, inode and mtime as they
were), after it was delivered (offered again, the receiver takes it for the
copy it delivered, nothing is sent, and the Done shows another hash) or
while a part of it is kept (the rest is sent, and the whole hash differs):
the receiver forgets the copy or deletes the part and answers a mismatch,
and the sender offers the file again: it goes whole. The hostile case: a
member that claims to hold every file and answers every Done with a mismatch
costs the sender one offer more, not a loop. Not sent again: a mismatch of a
file the receiver held nothing of, and a folder it had delivered (there the
receiver's copy is what differs: a second copy is the user's call)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile import CheckingReceiver, MismatchingReceiver
from peercrypt.testing.nodes import CliResult, NodeProcess, blake3_file, cli_running, wait_until

pytestmark = pytest.mark.timeout(180)

SIZE = 1024 * 1024 + 7
CHUNK = 64 * 1024
CHANGED_AT = 100_000  # not one of the tag's samples (the start, the middle, the end)


def _change_behind_the_tag(path: Path) -> str:
    """Write other bytes where the source tag does not look, keep the inode
    and put the mtime back; the file's new BLAKE3."""
    st = os.stat(path)
    old = blake3_file(path)
    with open(path, "r+b") as f:
        f.seek(CHANGED_AT)
        f.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and blake3_file(path) != old
    return blake3_file(path)


def test_a_file_changed_behind_its_tag_goes_whole_when_the_receiver_finds_it_differs(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    sender, receiver = node_factory(), node_factory()
    path = tmp_path / "report.bin"
    path.write_bytes(os.urandom(SIZE))
    old = blake3_file(path)
    code, first = sender.send(path, receiver.host, receiver.port, "--chunk-size", str(CHUNK))
    assert code == 0 and first["stored_as"] == "report.bin", first

    new = _change_behind_the_tag(path)

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


def _against_a_mismatching_receiver(
    sender: NodeProcess, network_key: str, tmp_path: Path
) -> tuple[CliResult, MismatchingReceiver]:
    """``sender`` sends a file to a member that claims to hold every file and
    answers every Done with a mismatch; the failed send's result, and that
    member (closed)."""
    hostile = MismatchingReceiver(network_key, load_or_create_identity(sender.data_dir).public)
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(SIZE))
    try:
        answer = sender.send_result(path, "127.0.0.1", hostile.port, timeout=60)
    finally:
        hostile.close()
    assert answer.returncode != 0, answer.describe()
    assert "failed the transfer: the copy held changed" in answer.json["error"], answer.describe()
    return answer, hostile


def test_a_receiver_answering_every_done_with_a_mismatch_costs_one_offer_more(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    sender = node_factory()
    answer, hostile = _against_a_mismatching_receiver(sender, network_key, tmp_path)
    assert (hostile.offers, hostile.dones) == (2, 2)
    # What the offer that was to send it whole found held: all of it, again.
    stats = answer.json["stats"]
    assert (stats["attempts"], stats["held_share"]) == (2.0, 1.0), stats
    assert sender.wait_for_counter("sender.sent-whole-after-mismatch", 1) == 1


def test_with_retries_off_a_mismatch_is_not_offered_again(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    """`--max-retries 0`: no offer more of any kind; the send fails with the
    mismatch and its advice, after one attempt."""
    sender = node_factory("--max-retries", "0")
    answer, hostile = _against_a_mismatching_receiver(sender, network_key, tmp_path)
    assert (hostile.offers, hostile.dones) == (1, 1)
    assert answer.json["stats"]["attempts"] == 1, answer.json["stats"]
    assert type(answer.json["stats"]["attempts"]) is int  # a count (it read 1.0)
    assert "sender.sent-whole-after-mismatch" not in sender.counters()


def _incoming_written(receiver: NodeProcess, name: str) -> str | None:
    """The id of ``name``'s incoming transfer once it has written 2 MiB."""
    rows: list[list[Any]] = json.loads(receiver.status().get("incoming", "[]"))
    for row in rows:
        if row[0] == name and int(row[2]) >= 2 * 1024 * 1024:
            return str(row[3])
    return None


def test_a_kept_part_of_a_file_changed_behind_its_tag_is_dropped_and_the_file_goes_whole(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    receiver = node_factory()
    sender = node_factory("--max-rate", str(2 * 1024 * 1024))  # ~8 s for the file
    path = tmp_path / "one.bin"
    path.write_bytes(os.urandom(16 * 1024 * 1024))
    send = ["send", str(path), receiver.host, str(receiver.port), "--json"]
    with cli_running(*send, "--chunk-size", str(CHUNK), data_dir=sender.data_dir) as proc:
        ident = wait_until(lambda: _incoming_written(receiver, "one.bin"), 60, "2 MiB written")
        cancel = receiver.cli("cancel", ident, "--keep")
        assert cancel.returncode == 0, cancel.describe()
        out, _ = proc.communicate(timeout=60)
    assert json.loads(out)["code"] == "cancelled", out
    assert sender.cli("max-rate", "0").returncode == 0
    new = _change_behind_the_tag(path)  # in a chunk the kept part holds

    code, again = sender.send(path, receiver.host, receiver.port, "--chunk-size", str(CHUNK))
    assert code == 0, again
    assert again["stored_as"] == "one.bin" and blake3_file(receiver.inbox / "one.bin") == new
    assert (again["stats"]["attempts"], again["stats"]["held_share"]) == (2.0, 0.0), again
    assert again["stats"]["sent_chunks"] == again["stats"]["chunks"], again
    assert receiver.wait_for_counter("receiver.hash-mismatch", 1) == 1
    assert sender.wait_for_counter("sender.sent-whole-after-mismatch", 1) == 1


@pytest.mark.parametrize("what", ["a file it held nothing of", "a folder it had delivered"])
def test_a_mismatch_that_is_not_about_what_the_receiver_held_is_not_sent_again(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str, what: str
) -> None:
    sender = node_factory()
    folder = what.startswith("a folder")
    hostile = MismatchingReceiver(
        network_key, load_or_create_identity(sender.data_dir).public, holds=folder
    )
    if folder:
        path = tmp_path / "album"
        path.mkdir()
        for name in ("a.txt", "b.txt"):
            (path / name).write_bytes(os.urandom(1000))
    else:
        path = tmp_path / "small.bin"
        path.write_bytes(os.urandom(1000))  # one chunk: its Done goes with it, unacked
    try:
        answer = sender.cli("send", path, "127.0.0.1", str(hostile.port), timeout=60)
    finally:
        hostile.close()
    assert answer.returncode != 0, answer.describe()
    assert "failed the transfer: the copy held changed" in answer.stderr, answer.describe()
    assert (hostile.offers, hostile.dones) == (1, 1)
    counters = sender.counters_when("sender.failed-hash-mismatch", 1)
    assert counters.get("sender.sent-whole-after-mismatch", 0) == 0


@pytest.mark.parametrize("code", ["ok", "\x1b]0;owned\x07"])
def test_a_receiver_failing_a_send_with_ok_or_escapes_fails_it_as_the_protocol_broken(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str, code: str
) -> None:
    """A member that claims to hold the file and answers the Done with a
    Failed whose code is "ok" (or escape sequences): the send ended as sent
    and verified with no hash checked (or showed its code raw in `stats
    list` and the counters). Now it fails as the protocol broken."""
    sender = node_factory()
    hostile = MismatchingReceiver(
        network_key, load_or_create_identity(sender.data_dir).public, code=code
    )
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(SIZE))
    try:
        answer = sender.send_result(path, "127.0.0.1", hostile.port, timeout=60)
    finally:
        hostile.close()
    assert answer.returncode != 0 and answer.json["code"] == "protocol", answer.describe()
    assert not answer.json["ok"] and not answer.json.get("digest"), answer.describe()
    listed = sender.cli("stats", "list")
    assert "\x1b" not in listed.stdout and " protocol" in listed.stdout, listed.stdout
    assert sender.wait_for_counter("sender.failed-protocol", 1) >= 1


def test_a_receiver_answering_every_done_with_expired_is_offered_again_within_the_retries(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    """A member that claims to hold the file and answers every Done with
    "expired" (as an honest receiver that gave up on a paused sender does):
    each is a timeout, offered again, and the send ends after --max-retries
    more offers, a timeout, not a loop."""
    sender = node_factory("--max-retries", "2")
    hostile = MismatchingReceiver(
        network_key, load_or_create_identity(sender.data_dir).public, code="expired"
    )
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(SIZE))
    try:
        answer = sender.send_result(path, "127.0.0.1", hostile.port, "--timeout", "10", timeout=120)
    finally:
        hostile.close()
    assert answer.returncode != 0 and answer.json["code"] == "timeout", answer.describe()
    assert "heard nothing of the send" in answer.json["error"], answer.describe()
    assert (hostile.offers, hostile.dones) == (3, 3)
    assert answer.json["stats"]["attempts"] == 3, answer.json["stats"]


def _against_a_checking_receiver(
    sender: NodeProcess, network_key: str, path: Path, refusals: int
) -> tuple[CliResult, CheckingReceiver]:
    """``sender`` sends ``path`` (--timeout 2) to a receiver whose first
    verdict is lost and which refuses the next ``refusals`` offers
    "verifying": the send's outcome, and the receiver (closed)."""
    receiver = CheckingReceiver(
        network_key, load_or_create_identity(sender.data_dir).public, refusals=refusals
    )
    try:
        answer = sender.send_result(path, "127.0.0.1", receiver.port, "--timeout", "2", timeout=120)
    finally:
        receiver.close()
    return answer, receiver


def test_a_retry_refused_while_its_earlier_attempt_is_checked_waits_for_the_verdict(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    """A send's Done goes unanswered for --timeout (the receiver's answers
    lost with the link), so it is offered again; the receiver is still in
    that file's final check and refuses the retry "verifying". The send
    waits and offers again, for as long as a check of the file could take
    (--timeout plus its size at 8 MiB/s, not --timeout alone: here it
    refuses for longer than that), and the receiver's verdict of the file
    ends it verified (it failed "refused", although the file was about to
    be stored)."""
    sender = node_factory("--max-retries", "3")
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(64 * 1024 * 1024))  # (a check's bound: 2 s + 8 s)
    answer, receiver = _against_a_checking_receiver(sender, network_key, path, refusals=4)
    assert answer.returncode == 0, answer.describe()
    assert answer.json["blake3"] == blake3.blake3(path.read_bytes()).hexdigest(), answer.describe()
    assert answer.json["stored_as"] == "checked.bin", answer.describe()
    assert (receiver.offers, receiver.refused, receiver.dones) == (2, 4, 2)
    assert sender.wait_for_counter("sender.busy-waits", 4) == 4


def test_a_retry_refused_verifying_for_ever_ends_within_a_check_s_bound(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    """A receiver that says "verifying" to every retry (a check that never
    ends, or a member's lie) holds the send no longer than a check of the
    file could take: --timeout plus its size at 8 MiB/s, as a multicast
    target's verifying (the wait had no deadline of its own)."""
    sender = node_factory("--max-retries", "3")
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(SIZE))
    answer, receiver = _against_a_checking_receiver(sender, network_key, path, refusals=10**6)
    assert answer.returncode == 5, answer.describe()
    assert answer.json["code"] == "refused", answer.describe()
    assert answer.json["error"].endswith("its final check of the file still ran after 2 s"), (
        answer.describe()
    )
    assert receiver.offers == 1 and receiver.refused >= 2, (receiver.offers, receiver.refused)
