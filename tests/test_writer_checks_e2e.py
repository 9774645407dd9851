"""A final check that hangs in the disk does not starve other transfers,
with a real receiving node (actors/file_writer.py, "Final checks"): while
one transfer's fsync does not return, another transfer's chunks are still
written and acknowledged (its credit flows, it does not expire), and once
the disk answers both files are stored, each with its sender's hash."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import blake3

from actors.inbox import scan
from peercrypt.core.receive_window import INITIAL_CREDIT
from peercrypt.testing.disk import StallingDisk
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import NodeProcess, wait_until
from peercrypt.wire.messages import Failed, Verified, Verifying

MiB = 1024 * 1024
CHUNK = 64 * 1024
WAIT = 30.0


def _written(receiver: NodeProcess, name: str) -> int:
    rows: list[list[Any]] = json.loads(receiver.status().get("incoming", "[]"))
    return next((int(r[2]) for r in rows if r[0] == name), -1)


def _verdict(t: HostileTransfer, data: bytes) -> Verified | Failed:
    verdict = t.done_until(blake3.blake3(data).digest(), (Verified, Failed), WAIT)
    assert isinstance(verdict, Verified | Failed)
    return verdict


def test_a_check_stuck_in_the_disk_does_not_hold_up_another_transfers_chunks(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    network_key: str,
) -> None:
    disk = stalling_disk(24 * MiB, journal=False)  # a stall hangs what must reach the disk
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    # Sent at once, so each within the credit its transfer starts with (the
    # second starts beside the first: INITIAL_CREDIT chunks).
    slow_data, other_data = os.urandom(4 * CHUNK), os.urandom(INITIAL_CREDIT * CHUNK)
    try:
        with (
            HostileSender(network_key, receiver.host, receiver.port) as first,
            HostileSender(network_key, receiver.host, receiver.port) as second,
        ):
            slow = first.offer("slow.bin", len(slow_data), CHUNK)
            other = second.offer("other.bin", len(other_data), CHUNK)
            assert isinstance(slow, HostileTransfer) and isinstance(other, HostileTransfer)
            for index in range(slow.total):
                slow.send_chunk(index, slow_data[index * CHUNK : (index + 1) * CHUNK])
            wait_until(
                lambda: _written(receiver, "slow.bin") == len(slow_data), WAIT, "slow.bin written"
            )
            # Both parts and their first manifests exist (made durable at the
            # open): from here on nothing of other.bin needs the disk itself.
            wait_until(lambda: len(scan(disk.path).manifests) == 2, WAIT, "both manifests")
            disk.stall()
            slow.send_done(blake3.blake3(slow_data).digest())
            assert slow.wait_for(Verifying).chunks == slow.total  # its check hangs in fsync
            for index in range(other.total):
                other.send_chunk(index, other_data[index * CHUNK : (index + 1) * CHUNK])
            wait_until(
                lambda: _written(receiver, "other.bin") == len(other_data),
                WAIT,
                "other.bin's chunks written while slow.bin's check hangs",
            )
            other.acked(other.total)  # its credit flows
            assert _written(receiver, "slow.bin") == len(slow_data)  # still checking
            assert not [m for m in slow.replies(0) if isinstance(m, Verified | Failed)]
            disk.resume()
            slow_verdict = _verdict(slow, slow_data)
            other_verdict = _verdict(other, other_data)
    finally:
        disk.resume()  # before the node stops: a hung disk holds it
    for verdict, data in ((slow_verdict, slow_data), (other_verdict, other_data)):
        assert isinstance(verdict, Verified), verdict
        assert verdict.digest == blake3.blake3(data).digest()
        assert (disk.path / verdict.stored_as).read_bytes() == data
