"""A send whose Verified was lost after the receiver forgot the transfer
(its memory of finished transfers is bounded: core/completed.py) still ends
in success with the file's hash: the sender's repeated Done goes unanswered,
so it offers the file again, and the receiver's table of delivered files
answers with the earlier verdict, sealed under the new transfer's keys. No
second copy is written.

Real processes: a receiver behind a :class:`FaultProxy` that drops every
reply to the sender's data connections until the test lets them through, a
sender node, and a member (:class:`HostileSender`, in process) whose
transfer, finished meanwhile, pushes the first one out of a one-entry memory.

A multicast receiver keeps its finished sessions the same way: the last
test speaks as the sending node (its identity key) and asks again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.history.db import db_path, list_transfers, open_reader
from peercrypt.testing.faults import Direction, FaultProxy
from peercrypt.testing.hostile import CoReceiver
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_stored,
    blake3_file,
    free_port,
    wait_until,
)
from peercrypt.wire.messages import Verified
from peercrypt.wire.multicast_messages import McDone, McRefuse, McStatus

KiB = 1024
CHUNK = 64 * KiB
WAIT = 60.0  # generous: a loaded machine; every wait ends on its event


class Gate:
    """Drops the replies to the clients it saw while ``collecting``, while
    ``blocking``; counts what it dropped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.victims: set[bytes] = set()
        self.collecting = True
        self.blocking = True
        self.dropped = 0

    def __call__(self, direction: Direction, client: bytes, frames: list[bytes]) -> bool:
        with self.lock:
            if direction == "upstream":
                if self.collecting:
                    self.victims.add(client)
                return False
            if self.blocking and client in self.victims:
                self.dropped += 1
                return True
            return False


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def proxy(gate: Gate) -> Iterator[tuple[FaultProxy, int]]:
    """The proxy, in front of the receiver's data port (the second)."""
    data_port = free_port()
    proxy = FaultProxy(f"tcp://127.0.0.1:{data_port}", drop_if=gate).start()
    yield proxy, data_port
    assert proxy.stop(), "the fault proxy thread did not stop"
    assert proxy.error is None, proxy.error


def _receiver_and_sender(
    node_factory: Callable[..., NodeProcess], proxy: tuple[FaultProxy, int]
) -> tuple[NodeProcess, NodeProcess]:
    """A receiver that remembers one finished transfer, its data port
    behind the proxy; a sender with retries for a loaded machine (its
    timeout, 2 s, may pass more than once while the replies are held back)."""
    front, data_port = proxy
    receiver = node_factory(
        "--completed-memory", "1",
        "--data-port", str(data_port), "--advertise-data-port", str(front.port),
        name="receiver",
    )  # fmt: skip
    return receiver, node_factory("--max-retries", "8", name="sender")


def _forget_then_answer(receiver: NodeProcess, gate: Gate, network_key: str) -> None:
    """Another transfer (a member's) finishes: the receiver's one-entry
    memory forgets the first; then its replies go through again."""
    with gate.lock:
        gate.collecting = False
    data = os.urandom(CHUNK)
    with HostileSender(network_key, receiver.host, receiver.port) as member:
        other = member.offer("other.bin", len(data), CHUNK)
        assert isinstance(other, HostileTransfer), other
        verdict = other.send_stream(data, WAIT)
        assert isinstance(verdict, Verified) and verdict.digest == blake3.blake3(data).digest()
    receiver.wait_for_counter("receiver.completed-forgotten-early", 1, WAIT)
    with gate.lock:
        gate.blocking = False


def test_a_lost_verified_after_the_receiver_forgot_the_transfer_still_ends_in_success(
    node_factory: Callable[..., NodeProcess],
    network_key: str,
    proxy: tuple[FaultProxy, int],
    gate: Gate,
    tmp_path: Path,
) -> None:
    receiver, sender = _receiver_and_sender(node_factory, proxy)
    path = tmp_path / "kept.bin"
    path.write_bytes(os.urandom(3 * CHUNK + 1000))
    digest = blake3_file(path)
    send = BackgroundSend(sender, path, receiver, "--chunk-size", str(CHUNK), "--timeout", "2")
    stored = receiver.inbox / "kept.bin"
    # The receiver stored it and verified it; its Verified went nowhere.
    wait_until(lambda: (stored.exists() and gate.dropped > 0) or None, WAIT, "the file stored")
    assert blake3_file(stored) == digest
    # Another transfer finishes: the receiver's one-entry memory forgets the first.
    _forget_then_answer(receiver, gate, network_key)
    code, result = send.join(WAIT * 2)
    assert code == 0, (result, receiver.log_tail(), sender.log_tail())
    assert result["blake3"] == digest and result["stored_as"] == "kept.bin", result
    # (a node's counters reach its status up to half a second after the fact)
    assert sender.wait_for_counter("sender.offers-after-done", 1) >= 1
    # Answered from the table of delivered files: not written a second time.
    files = sorted(p.name for p in receiver.inbox.iterdir() if not p.name.startswith("."))
    assert files == ["kept.bin", "other.bin"], files
    assert blake3_file(stored) == digest


def test_a_folder_whose_verified_was_lost_is_not_offered_again(
    node_factory: Callable[..., NodeProcess],
    network_key: str,
    proxy: tuple[FaultProxy, int],
    gate: Gate,
    tmp_path: Path,
) -> None:
    """The table of delivered files holds a folder only up to its bound (a
    sender cannot tell whether the receiver remembered this one): offered
    again, a folder it did not remember would be stored a second time
    (``DIR.1``). So a folder's send whose Done went unanswered fails saying
    where to look, and nothing is offered again."""
    receiver, sender = _receiver_and_sender(node_factory, proxy)
    album = tmp_path / "album"
    album.mkdir()
    contents = {name: os.urandom(CHUNK + 100 * i) for i, name in enumerate(["a.bin", "b.bin"])}
    for name, data in contents.items():
        (album / name).write_bytes(data)
    send = BackgroundSend(sender, album, receiver, "--chunk-size", str(CHUNK), "--timeout", "2")
    stored = receiver.inbox / "album"
    wait_until(lambda: (stored.is_dir() and gate.dropped > 0) or None, WAIT, "the folder stored")
    _forget_then_answer(receiver, gate, network_key)
    code, result = send.join(WAIT * 2)
    assert code != 0 and result["code"] == "timeout", result
    assert "it may have stored the folder: look in its inbox" in result["error"], result
    assert sender.counters().get("sender.offers-after-done", 0) == 0
    # Stored once, whole: no second copy.
    files = sorted(p.name for p in receiver.inbox.iterdir() if not p.name.startswith("."))
    assert files == ["album", "other.bin"], files
    for name, data in contents.items():
        assert blake3_file(stored / name) == blake3.blake3(data).hexdigest()


def _session_of(sender: NodeProcess) -> bytes:
    """The id of the sender's one finished multicast session (its history)."""

    def row() -> dict[str, object] | None:
        if not db_path(sender.data_dir).exists():
            return None
        with open_reader(db_path(sender.data_dir)) as conn:
            rows = [r for r in list_transfers(conn) if r["side"] == "send"]
        return rows[0] if rows and rows[0]["result"] != "running" else None

    return bytes.fromhex(str(wait_until(row, WAIT, "the sender's history row")["session"]))


def test_a_multicast_senders_repeated_status_gets_the_same_done_again(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A multicast receiver that stored a session answers the sender's next
    status or announce of it (its McDone was lost on the way) with the same
    verdict, from its memory of finished sessions: nothing joined or written
    again. Only the session's own sender gets it: the session is keyed by
    the sender's proven identity, so a member naming the id learns nothing."""
    receiver, sender = node_factory(), node_factory()
    path = make_file(256 * KiB)
    sent = sender.cli("send", str(path), receiver.host, str(receiver.port), "-m", "--json")
    assert sent.returncode == 0, sent.describe()
    assert_stored(receiver, sent.json, blake3_file(path))
    stored = next(r["stored_as"] for r in sent.json["receivers"])
    sid = _session_of(sender)
    inbox_before = sorted(p.name for p in receiver.inbox.iterdir())

    # The sending node's own identity (the test reads its key file), on a
    # link of its own: what the sender's repeated status looks like.
    as_sender = CoReceiver(network_key, identity=load_or_create_identity(sender.data_dir))
    member = CoReceiver(network_key)  # a fresh identity that names the same id
    try:
        again = McStatus(sid=sid, horizon=4, digest=blake3.blake3(path.read_bytes()).digest())
        answers = as_sender.ask(receiver.host, receiver.port, [again])
        to = load_or_create_identity(receiver.data_dir).public
        reannounce = as_sender.sealed_announce(to, sid, path.name, path.stat().st_size, CHUNK)
        answers += as_sender.ask(receiver.host, receiver.port, [reannounce])
        stranger = member.ask(receiver.host, receiver.port, [again])
    finally:
        as_sender.close()
        member.close()
    want = McDone(sid=sid, ok=True, digest=bytes.fromhex(blake3_file(path)), stored_as=stored)
    assert answers == [want, want], answers
    assert len(stranger) == 1 and isinstance(stranger[0], McRefuse), stranger
    assert stranger[0].code == "unknown-session", stranger
    assert sorted(p.name for p in receiver.inbox.iterdir()) == inbox_before
    assert blake3_file(receiver.inbox / stored) == blake3_file(path)
