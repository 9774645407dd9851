"""A receiver whose disk stalls mid-transfer, with real nodes: the chunks
that came wait for its writer, it acks anyway while they do
(core/incoming.py, STILL_WRITING_AFTER), and the sender's retransmission
timer restarts on those acks (core/send_window.py) instead of taking the
chunks for lost. Once the disk answers the file is stored, verified, and
no chunk crossed twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from peercrypt.testing.disk import StallingDisk
from peercrypt.testing.nodes import LOCALHOST, NodeProcess, wait_until

MiB = 1024 * 1024
WAIT = 30.0
# Acks the receiver sends while its disk stalls before the test lets it go:
# 2.4 s or more of stall at one per 0.1-0.15 s, past three expiries of the
# RTO of a loopback transfer (0.2 s at least, doubling: 0.2, 0.6, 1.4 s).
STALLED_ACKS = 24
# Resends allowed all the same: one timer expiry on a host so loaded that an
# ack came more than the RTO after the one before (the late ack then
# lengthens the RTO: core/rtt.py, spurious_timeout). Without those acks (or
# with the sender ignoring them) the stall costs three or more.
SPURIOUS = 1


def _written(receiver: NodeProcess, name: str) -> int:
    rows: list[list[Any]] = json.loads(receiver.status().get("incoming", "[]"))
    return next((int(r[2]) for r in rows if r[0] == name), -1)


def test_a_stalled_disk_costs_no_resend(
    stalling_disk: Callable[..., StallingDisk],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    disk = stalling_disk(96 * MiB, journal=False)  # a stall hangs the writes, not the metadata
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    sender = node_factory(name="sender")
    path = make_file(32 * MiB, name="stalled.bin")
    results: list[tuple[int, dict[str, Any]]] = []
    # A paced send (8 MiB/s: four seconds), so that the disk stalls mid-way.
    sending = threading.Thread(
        target=lambda: results.append(
            sender.send(path, LOCALHOST, receiver.port, "-r", "8M", "--timeout", "60")
        )
    )
    sending.start()
    try:
        wait_until(lambda: _written(receiver, path.name) >= 4 * MiB, WAIT, "4 MiB written")
        disk.stall()
        receiver.counters_when("receiver.acks-still-writing", STALLED_ACKS, timeout=WAIT)
        disk.resume()
        sending.join(WAIT * 2)
        assert not sending.is_alive(), "the send did not end"
    finally:
        disk.resume()  # before the nodes stop: a hung disk holds them
        sending.join(WAIT * 2)
    code, result = results[0]
    assert code == 0 and result["ok"], result
    assert result["retransmits"] <= SPURIOUS, result["stats"]  # (timeouts, fast retransmits)
    stored = disk.path / result["stored_as"]
    assert blake3.blake3(stored.read_bytes()).digest() == blake3.blake3(path.read_bytes()).digest()
