"""A member posing as a receiver that tells a send to wait its turn (a
credit of 0) for ever holds it for the send's ``--timeout``, 10 s at least,
not until its user ends it; with a real sender node process.

An honest receiver gives a transfer that has waited 2 s a chunk and never
tells it 0 again (``WAIT_LIMIT``, core/incoming.py), so a wait longer than
that is not a turn being taken (core/outgoing.py, ``WAITING_LIMIT``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile import WaitingReceiver
from peercrypt.testing.nodes import NodeProcess

pytestmark = pytest.mark.timeout(120)

CHUNK = 1024 * 1024


def test_a_receiver_telling_a_send_to_wait_for_ever_holds_it_10_s_at_most(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    sender = node_factory()
    hostile = WaitingReceiver(network_key, load_or_create_identity(sender.data_dir).public)
    path = tmp_path / "held.bin"
    path.write_bytes(os.urandom(8 * CHUNK))
    try:
        answer = sender.send_result(
            path,
            "127.0.0.1",
            hostile.port,
            "--timeout",
            "2",
            "--chunk-size",
            str(CHUNK),
            timeout=60,
        )
    finally:
        hostile.close()
    assert answer.returncode != 0, answer.describe()
    error = answer.json["error"]
    assert "kept the send waiting its turn for 10 s" in error, answer.describe()
    # One chunk went (its credit), then none while told 0; the receiver said
    # 0 every second meanwhile: the send was not ended for a silence.
    assert hostile.chunks == 1, (hostile.chunks, error)
    assert hostile.waits >= 9, (hostile.waits, error)
    assert hostile.offers == 1  # not offered again: the receiver was there, saying 0
    # The node goes on: its status answers, nothing of the send is left.
    assert sender.status() is not None
