"""Only the transfers with chunks left to write share a node's receive
buffer, with real node processes (docs/architecture.md, "Bounds"; the
receiver's ``_credit``, ``receiving()`` in core/receive_window.py).

Seven transfers of a member have every chunk written and wait for their
final checks (their sender holds back its Done). An eighth, still
receiving, gets the credit the 32 MiB buffer has room for: the whole
window (16 chunks of 1 MiB), in its Accept and its acks, as if it were
alone; counted among all eight it would get their share, 4 chunks. Every
file then verifies by hash.

The buffer is what the user sets, with or without a suffix (flag,
variable, config key), on a node and on an attached receiver actor
(``peercrypt actor receiver --attach``): the credit of a transfer alone.
An attached receiver takes the node's other receiving settings the same
way (``--window``, ``max_transfers_per_peer``...).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import ActorProcess, NodeProcess, wait_until
from peercrypt.wire.messages import Ack, Verified

pytestmark = pytest.mark.timeout(180)

KiB, MiB = 1 << 10, 1 << 20
WINDOW = 16  # the receiver's --window (its default)
CHUNK = 1 * MiB  # the receiving transfer's: 32 MiB of buffer is 32 of them
WAITING = 7  # within max_transfers_per_peer (8) for one member
SHARE_OF_ALL = 32 * MiB // (WAITING + 1) // CHUNK  # 4 chunks
WAIT = 60.0  # loose: a loaded machine (2 cores shared)


def _written(receiver: NodeProcess) -> int:
    """How many of the node's incoming transfers have every byte written."""
    rows: list[list[Any]] = json.loads(receiver.status().get("incoming", "[]"))
    return sum(1 for row in rows if int(row[2]) == int(row[1]))


def _send_within_credit(t: HostileTransfer, data: bytes) -> list[int]:
    """Send every chunk of ``data``, never more than the credit ahead of
    what the receiver acked written; the credits it granted (the Accept's,
    then each ack's)."""
    assert t.accept is not None
    credits, cumulative, sent = [t.accept.window], 0, 0
    deadline = time.monotonic() + WAIT
    while cumulative < t.total:
        while sent < min(t.total, cumulative + credits[-1]):
            t.send_chunk(sent, data[sent * CHUNK : (sent + 1) * CHUNK])
            sent += 1
        assert time.monotonic() < deadline, f"acked {cumulative} of {t.total} chunks"
        for msg in t.replies(0.5):
            if isinstance(msg, Ack):
                credits.append(msg.window)
                cumulative = max(cumulative, msg.cumulative)
    return credits


def test_a_receiving_transfer_gets_the_buffer_those_waiting_for_their_checks_do_not_need(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    receiver = node_factory(name="receiver")
    small = [os.urandom(64 * KiB) for _ in range(WAITING)]  # one chunk each
    data = os.urandom(3 * WINDOW * CHUNK)
    with (
        HostileSender(network_key, receiver.host, receiver.port) as waiting,
        HostileSender(network_key, receiver.host, receiver.port) as member,
    ):
        held: list[HostileTransfer] = []
        for n, body in enumerate(small):
            t = waiting.offer(f"waiting{n}.bin", len(body), 64 * KiB)
            assert isinstance(t, HostileTransfer), t
            t.send_chunk(0, body)  # and no Done yet: its final check waits
            held.append(t)
        wait_until(
            lambda: _written(receiver) == WAITING or None, WAIT, "every waiting chunk written"
        )
        t = member.offer("receiving.bin", len(data), CHUNK)
        assert isinstance(t, HostileTransfer), t
        credits = _send_within_credit(t, data)
        verdict = t.done_until(blake3.blake3(data).digest(), (Verified,), WAIT)
        assert isinstance(verdict, Verified), verdict
        # The seven waiting hold none of the buffer: the whole window at
        # once (alone, a transfer starts with it), never cut to their share.
        assert credits[0] == WINDOW and min(credits) == WINDOW > SHARE_OF_ALL, credits
        for h, body in zip(held, small, strict=True):
            answer = h.done_until(blake3.blake3(body).digest(), (Verified,), WAIT)
            assert isinstance(answer, Verified), answer
    assert (receiver.inbox / "receiving.bin").read_bytes() == data
    for n, body in enumerate(small):
        assert (receiver.inbox / f"waiting{n}.bin").read_bytes() == body


def _credits_of_one_transfer(network_key: str, host: str, port: int, inbox: Path) -> list[int]:
    """The credits a receiver grants one transfer alone of 1 MiB chunks (its
    Accept's, then each ack's); the file stored, by content."""
    data = os.urandom(2 * WINDOW * CHUNK)
    with HostileSender(network_key, host, port) as member:
        t = member.offer("set.bin", len(data), CHUNK)
        assert isinstance(t, HostileTransfer), t
        credits = _send_within_credit(t, data)
        verdict = t.done_until(blake3.blake3(data).digest(), (Verified,), WAIT)
        assert isinstance(verdict, Verified), verdict
    assert (inbox / "set.bin").read_bytes() == data
    return credits


# (how, the value given, the bytes it means): suffixes as a user writes them.
GIVEN = [("flag", "12", 12 * MiB), ("flag", "12M", 12 * MiB), ("env", "12MiB", 12 * MiB),
         ("config", "12MB", 12_000_000)]  # fmt: skip


@pytest.mark.parametrize(("how", "text", "buffer"), GIVEN, ids=[f"{g[0]}-{g[1]}" for g in GIVEN])
def test_the_receive_buffer_is_what_the_user_sets(
    node_factory: Callable[..., NodeProcess], network_key: str, how: str, text: str, buffer: int
) -> None:
    """``--receive-buffer`` (or ``PEERCRYPT_RECEIVE_BUFFER``, or the config
    file's ``receive_buffer``) is the credit of a transfer alone (below the
    window): 12 MiB is 12 chunks of 1 MiB (12 MB 11) where the default
    32 MiB gives the whole window (16), in the Accept and every ack; the
    file verifies by hash. A plain number is bytes (``12`` is 12 MiB here:
    the flag's value is 12 * MiB written out)."""
    if text == "12":
        text = str(buffer)
    if how == "flag":
        receiver = node_factory("--receive-buffer", text, name="receiver")
    elif how == "env":
        receiver = node_factory(name="receiver", env={"PEERCRYPT_RECEIVE_BUFFER": text})
    else:
        receiver = node_factory(name="receiver", start=False)
        receiver.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (receiver.data_dir / "config.toml").write_text(f'receive_buffer = "{text}"\n')
        receiver.start()
    credits = _credits_of_one_transfer(network_key, receiver.host, receiver.port, receiver.inbox)
    assert credits[0] == buffer // CHUNK == max(credits) < WINDOW, credits


@contextlib.contextmanager
def _attached_receiver(
    tmp_path: Path, network_key: str, args: tuple[str, ...], env: dict[str, str] | None = None
) -> Iterator[tuple[int, Path]]:
    """A gateway whose receiver is ``peercrypt actor receiver --attach ...
    ARGS`` (``env`` in its environment; a config file may wait in its data
    dir, tmp_path/storage): the gateway's port and the actor's inbox, once
    attached. Both exit 0 at the end."""
    storage = ActorProcess(tmp_path / "storage", "receiver", [], network_key, env=env or {})
    fingerprint = storage.fingerprint()
    gateway = NodeProcess(
        data_dir=tmp_path / "gateway",
        network_key=network_key,
        extra_args=("--remote-actor", "receiver", "--attach-allow", fingerprint, "--no-gossip"),
        ready_facts=("port",),
    )  # fmt: skip
    disk = tmp_path / "disk"
    try:
        gateway.start()
        storage.attach = [f"127.0.0.1:{gateway.port}"]
        storage.extra_args = ("--host", "127.0.0.1", "--inbox", str(disk), *args)
        storage.start()
        wait_until(
            lambda: gateway.status().get("remote_receiver") == f"attached {fingerprint}",
            WAIT,
            "the receiver actor to attach",
            interval=0.2,
        )
        yield gateway.port, disk
    finally:
        codes = (storage.stop(), gateway.stop())
    assert codes == (0, 0), storage.log_text()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_attached_receiver_takes_the_receive_buffer_it_is_given(
    tmp_path: Path, network_key: str, how: str
) -> None:
    """``peercrypt actor receiver --attach ... --receive-buffer 12M`` (or
    ``PEERCRYPT_RECEIVE_BUFFER=12MiB`` in its environment): the attached
    receiver grants a transfer alone 12 chunks of 1 MiB, not the default
    buffer's whole window (16); the file lands in its inbox, by content."""
    flag = ("--receive-buffer", "12M") if how == "flag" else ()
    env = {"PEERCRYPT_RECEIVE_BUFFER": "12MiB"} if how == "env" else {}
    with _attached_receiver(tmp_path, network_key, flag, env) as (port, disk):
        credits = _credits_of_one_transfer(network_key, "127.0.0.1", port, disk)
    assert credits[0] == 12 * MiB // CHUNK == max(credits) < WINDOW, credits


def test_an_attached_receiver_takes_the_nodes_receiving_settings(
    tmp_path: Path, network_key: str
) -> None:
    """An attached receiver takes the node's receiving settings, from every
    layer: ``--window 5`` on its command line grants a transfer alone 5
    chunks (not 16), in its Accept and every ack; ``max_transfers_per_peer
    = 1`` in its config file refuses a member's second transfer while its
    first runs (busy), as a node would. The first lands by content."""
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o700)
    (storage / "config.toml").write_text("max_transfers_per_peer = 1\n")
    data = os.urandom(3 * 5 * CHUNK)
    with (
        _attached_receiver(tmp_path, network_key, ("--window", "5")) as (port, disk),
        HostileSender(network_key, "127.0.0.1", port) as member,
    ):
        first = member.offer("first.bin", len(data), CHUNK)
        assert isinstance(first, HostileTransfer), first
        second = member.offer("second.bin", len(data), CHUNK)
        assert isinstance(second, Refused), second
        assert "too many transfers from you (max 1)" in str(second.answer), second
        credits = _send_within_credit(first, data)
        verdict = first.done_until(blake3.blake3(data).digest(), (Verified,), WAIT)
        assert isinstance(verdict, Verified), verdict
    assert credits[0] == 5 == max(credits), credits
    assert (disk / "first.bin").read_bytes() == data
    assert not (disk / "second.bin").exists()


def test_an_attached_receivers_space_and_quotas_are_its_hosts(
    tmp_path: Path, network_key: str
) -> None:
    """An attached receiver takes its space ledger along: ``--part-quota
    2M`` given to it (``PEERCRYPT_PART_QUOTA`` in its environment) refuses
    an offer of 3 MiB as over the quota, while one of 1 MiB lands in its
    inbox by content. Before, the node's ledger judged its offers: the node's quotas and the
    free space of the node's inbox, on another host."""
    data = os.urandom(1 * MiB)
    env = {"PEERCRYPT_PART_QUOTA": "2M"}
    with (
        _attached_receiver(tmp_path, network_key, (), env) as (port, disk),
        HostileSender(network_key, "127.0.0.1", port) as member,
    ):
        big = member.offer("big.bin", 3 * MiB, CHUNK)
        assert isinstance(big, Refused), big
        assert "over the node's quota of parts (2097152 bytes)" in str(big.answer), big
        small = member.offer("small.bin", len(data), CHUNK)
        assert isinstance(small, HostileTransfer), small
        _send_within_credit(small, data)
        verdict = small.done_until(blake3.blake3(data).digest(), (Verified,), WAIT)
        assert isinstance(verdict, Verified), verdict
    assert (disk / "small.bin").read_bytes() == data
    assert not (disk / "big.bin").exists()
