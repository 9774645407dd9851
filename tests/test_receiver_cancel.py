"""The receiving node's user cancels an incoming transfer, with real node
processes (docs/commands.md, `cancel`; docs/resume.md, "Cancelled"): the
sender's command fails with the reason, the slot, the space and (unless
--keep) the part are freed at once, also while the writer is stuck in the
disk; an unknown id is one error line; only the node's own user can cancel
(the control socket's token), never a peer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import zmq

from actors.inbox import scan
from peercrypt.control_file import CONTROL_FILE
from peercrypt.testing.disk import StallingDisk
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import NodeProcess, cli_running, held_open, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelIncoming,
    CancelTransfer,
    ErrorReply,
    Failed,
    Verified,
    Verifying,
)

MiB = 1024 * 1024
LOCAL = codec.LOCAL_VERSION  # the control socket's envelope
CHUNK = 64 * 1024
SIZE = 16 * MiB  # two of them do not fit the 24 MiB inbox
WAIT = 30.0


def _incoming(receiver: NodeProcess) -> list[list[Any]]:
    rows: list[list[Any]] = json.loads(receiver.status().get("incoming", "[]"))
    return rows


def _listed(receiver: NodeProcess, name: str) -> str | None:
    """The id of ``name``'s incoming transfer once it has written a byte."""
    for row in _incoming(receiver):
        if row[0] == name and int(row[2]) > 0:
            return str(row[3])
    return None


def _send(path: Path, receiver: NodeProcess) -> list[str]:
    return [
        "send", str(path), receiver.host, str(receiver.port), "--json",
        "--chunk-size", str(CHUNK), "--timeout", "30",
    ]  # fmt: skip


def _ended(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, json.loads(out) if out.strip() else {"stderr": err}


def _dot_files(inbox: Path) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("keep", [False, True])
def test_the_receiving_user_cancels_an_incoming_transfer_and_its_space_is_free_again(
    small_inbox: Path,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Callable[[Path], str],
    keep: bool,
) -> None:
    receiver = node_factory("--inbox", str(small_inbox), name="receiver")
    sender = node_factory("--max-rate", str(2 * MiB))  # the first would take ~8 s
    one = make_file(SIZE, name="one.bin")
    two = make_file(SIZE, name="two.bin")
    with cli_running(*_send(one, receiver), data_dir=sender.data_dir) as proc:
        ident = wait_until(lambda: _listed(receiver, "one.bin"), WAIT, "one.bin listed")
        assert ident.startswith("in"), ident
        words = receiver.cli("status").stdout  # the id is shown in words too
        assert f"{ident} one.bin (" in words, words
        cancel = receiver.cli("cancel", ident, *(["--keep"] if keep else []))
        assert cancel.returncode == 0, cancel.describe()
        assert f"cancelled incoming transfer {ident} (one.bin" in cancel.stdout
        code, result = _ended(proc)
    assert code == 1, result  # docs/commands.md: "the transfer failed"
    assert result["code"] == "cancelled", result
    assert "the receiving node's user cancelled the transfer" in result["error"], result
    wait_until(lambda: not _incoming(receiver) or None, WAIT, "the transfer unlisted")
    assert receiver.wait_for_counter("receiver.cancelled", 1) == 1
    # The chunks still on their way are expected after the user's cancel:
    # counted, answered now and then, never a warning on the user's terminal.
    assert "dropped cancelled frame" not in receiver.log_text(), receiver.log_tail()
    kept = scan(small_inbox).manifests
    if keep:  # its part and manifest stay for a resume
        assert [m.key.name for m in kept] == ["one.bin"], kept
    else:
        assert kept == [] and _dot_files(small_inbox) == [], _dot_files(small_inbox)
    # The space the cancelled transfer had reserved is free: a second file
    # that does not fit beside a whole first one is accepted and stored.
    # (A kept part gives way to it: kept parts never hold space against new ones.)
    assert sender.cli("max-rate", "0").returncode == 0
    code, result = sender.send_to(two, receiver, "--chunk-size", str(CHUNK), "--timeout", "30")
    assert code == 0, (result, receiver.log_tail())
    assert blake3_file(small_inbox / result["stored_as"]) == blake3_file(two)
    assert not (small_inbox / "one.bin").exists()


def test_cancel_of_an_unknown_or_malformed_id_is_one_error_line(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory()
    unknown = node.cli("cancel", "in99")
    assert unknown.returncode == 2, unknown.describe()
    assert unknown.stderr_lines == [
        "peercrypt: error: no incoming transfer in99 (see `peercrypt status`)"
    ], unknown.describe()
    for bad in ("x7", "in0", "in-1", "0"):
        malformed = node.cli("cancel", bad)
        assert malformed.returncode == 2, malformed.describe()
        (line,) = malformed.stderr_lines
        assert line.startswith("peercrypt: error: ") and "is not a transfer id" in line, line
    keep_on_a_send = node.cli("cancel", "4", "--keep")
    assert keep_on_a_send.returncode == 2, keep_on_a_send.describe()
    assert keep_on_a_send.stderr_lines == [
        "peercrypt: error: --keep applies to incoming transfers (inN) only"
    ]
    assert node.status()  # the node runs on


def test_no_peer_can_cancel_an_incoming_transfer(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """Only the node's own user can: the cancel is a control-socket request
    (loopback, the token of DATA_DIR/control.json); a member that sends it
    to the node's public port, or to the control port without the token, is
    refused, and the transfer goes on to its end."""
    receiver = node_factory(name="receiver")
    data = bytes(range(256)) * 1024  # 256 KiB, four chunks
    with HostileSender(network_key, receiver.host, receiver.port) as member:
        t = member.offer("victim.bin", len(data), CHUNK)
        assert isinstance(t, HostileTransfer), t
        ident = wait_until(
            lambda: next((str(r[3]) for r in _incoming(receiver)), None), WAIT, "listed"
        )
        for request in (
            CancelIncoming(request=1, transfer=ident),
            CancelTransfer(request=2, transfer=1),
        ):
            answer = member._ask(request, WAIT)  # over CURVE, as a member
            assert isinstance(answer, ErrorReply) and answer.code == "unexpected", answer
        endpoint = json.loads((receiver.data_dir / CONTROL_FILE).read_text())["endpoint"]
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(endpoint)
            sock.send_multipart(
                [b"0" * 64, codec.encode(CancelIncoming(request=3, transfer=ident), LOCAL)]
            )
            assert sock.poll(int(WAIT * 1000)), "no answer from the control socket"
            answer = codec.decode(sock.recv(), version=LOCAL)
            assert isinstance(answer, ErrorReply) and answer.code == "unauthorised", answer
            sock.close()
        finally:
            ctx.term()
        assert [str(r[3]) for r in _incoming(receiver)] == [ident]
        t.send_stream(data)  # every chunk, its Done, and the verdict
    stored = receiver.inbox / "victim.bin"
    assert stored.read_bytes() == data
    assert receiver.counters_when("receiver.received", 1).get("receiver.cancelled", 0) == 0
    assert receiver.wait_for_counter("gateway.rejected-unexpected", 2) == 2


def test_a_transfer_whose_final_check_is_stuck_in_the_disk_is_cancelled_at_once(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    """Every chunk is written (the page cache), then the disk stops
    answering and the sender's Done starts the final check, whose fsync
    does not return. The user's cancel still ends the transfer at once (the
    sender told, unlisted, a second cancel finds nothing); once the disk
    answers again the part is removed, and the check that finally returns
    stores nothing."""
    stalling_inbox = stalling_disk(24 * MiB)
    inbox = stalling_inbox.path
    receiver = node_factory("--inbox", str(inbox), name="receiver")
    data = os.urandom(4 * CHUNK)
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as member:
            t = member.offer("one.bin", len(data), CHUNK)
            assert isinstance(t, HostileTransfer), t
            for index in range(t.total):
                t.send_chunk(index, data[index * CHUNK : (index + 1) * CHUNK])
            ident = wait_until(
                lambda: next((str(r[3]) for r in _incoming(receiver) if r[2] == r[1]), None),
                WAIT,
                "every chunk written",
            )
            stalling_inbox.stall()
            t.send_done(blake3.blake3(data).digest())
            assert t.wait_for(Verifying).chunks == t.total  # the check runs
            cancel = receiver.cli("cancel", ident)
            assert cancel.returncode == 0, cancel.describe()
            failed = t.wait_for(Failed)
            assert failed.code == "cancelled", failed
            assert failed.reason == "the receiving node's user cancelled the transfer"
            wait_until(lambda: not _incoming(receiver) or None, WAIT, "the transfer unlisted")
            again = receiver.cli("cancel", ident)
            assert again.returncode == 2 and "no incoming transfer" in again.stderr, again
            # Its id stays taken while its check may still return: an offer
            # under it (the same member's) is refused, never given that verdict.
            reused = member.offer("one.bin", len(data), CHUNK, tid=t.tid)
            assert isinstance(reused, Refused) and reused.answer.code == "duplicate", reused
            # Dones still coming (a sender probes about once a second) are
            # answered so too, at most every 0.5 s.
            again_failed = t.done_until(blake3.blake3(data).digest(), (Failed,), WAIT)
            assert isinstance(again_failed, Failed) and again_failed.code == "cancelled"
            stalling_inbox.resume()
            assert receiver.wait_for_counter("receiver.late-checks-dropped", 1, WAIT) == 1
            assert not [m for m in t.replies(0.5) if isinstance(m, Verified)]
    finally:
        stalling_inbox.resume()  # before the nodes stop: a hung disk holds them
    wait_until(lambda: not list(inbox.iterdir()), WAIT, "the part removed")
    assert receiver.counters().get("receiver.received", 0) == 0


def _threads(pid: int, name: str) -> int:
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += (task / "comm").read_text().strip() == name
    return count


def test_a_transfer_cancelled_while_it_is_read_back_leaves_no_descriptor_or_thread(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Cancelled once its new part was partly hashed as written (a chunk's
    last block read back: its descriptors and the watch are in use): the
    node holds nothing of the part afterwards, no inotify instance and no
    pc-check thread. (The follower's thread, where a part is read back as
    written instead: test_file_writer_direct.py.)"""
    receiver = node_factory(name="receiver")
    sender = node_factory("--max-rate", str(2 * MiB))  # ~8 s
    assert receiver.pid is not None
    one = make_file(SIZE, name="one.bin")
    with cli_running(*_send(one, receiver), data_dir=sender.data_dir) as proc:
        ident = wait_until(lambda: _listed(receiver, "one.bin"), WAIT, "one.bin listed")
        receiver.wait_for_counter("receiver.read-back-early-bytes", 4096, WAIT)
        assert held_open(receiver.pid, receiver.inbox, inotify=True), "the part is not held open"
        held = held_open(receiver.pid, receiver.inbox, inotify=True)
        assert sum("inotify" in what for what in held) == 1, f"the part is not watched: {held}"
        # (the part itself: its own descriptor, the direct one, and the hash's)
        assert sum(what.endswith(".part") for what in held) >= 2, held
        cancel = receiver.cli("cancel", ident)
        assert cancel.returncode == 0, cancel.describe()
        code, result = _ended(proc)
    assert code == 1 and result["code"] == "cancelled", result
    pid = receiver.pid
    wait_until(
        lambda: not held_open(pid, receiver.inbox, inotify=True) or None, WAIT, "the part let go"
    )
    wait_until(lambda: _threads(pid, "pc-check") == 0 or None, WAIT, "the read-back thread gone")
    assert _dot_files(receiver.inbox) == []


def _verified_and_naming(
    disk: StallingDisk, receiver: NodeProcess, member: HostileSender, source: bytes | None = None
) -> tuple[HostileTransfer, bytes, str]:
    """``member`` sends a file, every chunk is written and on the disk, then
    the disk stalls and the sender's Done starts the final check: it passes
    (nothing is left to sync), and giving the file its name (a link, then
    the inbox folder's fsync) hangs. The transfer, its data and its id."""
    data = os.urandom(4 * CHUNK)
    t = member.offer("named.bin", len(data), CHUNK, source=source)
    assert isinstance(t, HostileTransfer), t
    for index in range(t.total):
        t.send_chunk(index, data[index * CHUNK : (index + 1) * CHUNK])
    ident = wait_until(
        lambda: next((str(r[3]) for r in _incoming(receiver) if r[2] == r[1]), None),
        WAIT,
        "every chunk written",
    )
    disk.settle()  # (the check's fsync finds nothing to do)
    disk.stall()
    t.send_done(blake3.blake3(data).digest())
    receiver.wait_for_counter("receiver.files-verified", 1, WAIT)
    return t, data, ident


def test_a_verified_file_whose_naming_hangs_in_the_disk_holds_up_no_answer(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    """The disk stops answering as a verified file is given its name: the
    receiving node still answers its user at once (its cancel is too late:
    the file is verified and being stored), and once the disk answers the
    file is stored whole and its sender hears Verified."""
    disk = stalling_disk(24 * MiB)
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as member:
            t, data, ident = _verified_and_naming(disk, receiver, member)
            cancel = receiver.cli("cancel", ident)  # the receiver's own actor answers
            assert cancel.returncode == 2, cancel.describe()
            assert "is verified and being stored: too late to cancel" in cancel.stderr, cancel
            assert [r[0] for r in _incoming(receiver)] == ["named.bin"]
            disk.resume()
            verified = t.wait_for(Verified)
    finally:
        disk.resume()  # before the node stops: a hung disk holds it
    assert verified.digest == blake3.blake3(data).digest()
    assert (disk.path / verified.stored_as).read_bytes() == data
    wait_until(lambda: not _incoming(receiver) or None, WAIT, "the transfer unlisted")
    assert sorted(p.name for p in disk.path.iterdir()) == ["named.bin"]  # no part, no manifest


def test_a_node_stopped_while_a_verified_file_is_named_stores_it_first(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    """The node is stopped while a verified file waits for its name in a
    disk that hangs, and the disk answers again within the stop's wait: the
    file is stored, its sender hears Verified, and nothing of its part stays
    (not kept to be resumed, and so stored twice)."""
    disk = stalling_disk(24 * MiB)
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as member:
            t, data, _ = _verified_and_naming(disk, receiver, member)
            receiver.send_signal(signal.SIGTERM)
            wait_until(
                lambda: "verified file(s) to be stored" in receiver.log_text() or None,
                WAIT,
                "the stop waiting for the file's name",
            )
            disk.resume()
            verified = t.wait_for(Verified)
            assert receiver.stop() == 0
            assert "did not stop within" not in receiver.log_text()  # (a clean stop)
    finally:
        disk.resume()
    assert verified.digest == blake3.blake3(data).digest()
    assert sorted(p.name for p in disk.path.iterdir()) == ["named.bin"]
    assert (disk.path / "named.bin").read_bytes() == data


def test_a_node_whose_stop_outwaits_a_hung_name_keeps_no_part_and_knows_the_file(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    """As above, but the disk answers only after the stop's wait: the file
    was linked under its name (its folder's fsync hung), so its part goes
    rather than being kept for a resume, and it is recorded as delivered:
    its sender's re-offer to the node started again is answered from that
    record (every chunk held), not stored a second time."""
    disk = stalling_disk(24 * MiB)
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    tag = os.urandom(32)
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as member:
            t, data, _ = _verified_and_naming(disk, receiver, member, source=tag)
            receiver.send_signal(signal.SIGTERM)
            wait_until(
                lambda: "named.bin was stored as the node stopped" in receiver.log_text() or None,
                WAIT,
                "the stop to record the file",
            )
            disk.resume()
            assert receiver.stop() == 0
            assert "did not stop within" not in receiver.log_text()  # (a clean stop)
    finally:
        disk.resume()
    assert sorted(p.name for p in disk.path.iterdir()) == ["named.bin"]
    assert (disk.path / "named.bin").read_bytes() == data
    receiver.start()
    with HostileSender(network_key, receiver.host, receiver.port, identity=member.identity) as same:
        again = same.offer("named.bin", len(data), CHUNK, source=tag)
        assert isinstance(again, HostileTransfer), again
        assert again.accept is not None and again.accept.have == [0, t.total], again.accept
    assert receiver.wait_for_counter("receiver.delivered-before", 1, WAIT) == 1
