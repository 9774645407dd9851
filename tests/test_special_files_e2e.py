"""Sending what is not a regular file (a FIFO, a character device) through
a running node: one clear error at once, unicast and multicast, and the
node's sender goes on with the next send (opening a FIFO used to wait for a
writer inside the sender actor, holding every later send)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from peercrypt.testing.nodes import NodeProcess, assert_sent, random_file


@pytest.mark.parametrize("multicast", [False, True])
def test_a_fifo_or_device_is_refused_at_once_and_the_next_send_goes(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, multicast: bool
) -> None:
    receiver, other, sender = node_factory(), node_factory(), node_factory()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    extra = ("-m", "--to", f"{other.host}:{other.port}") if multicast else ()
    for special in (fifo, Path("/dev/zero")):
        result = sender.send_result(special, receiver.host, receiver.port, *extra, timeout=30)
        assert result.returncode != 0, result.json
        assert "is not a regular file" in result.json.get("error", ""), result.json
    path = random_file(tmp_path / "after.bin", 256 * 1024)
    assert_sent(receiver, sender.send_to(path, receiver), path)
