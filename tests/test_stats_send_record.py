"""A send's row in the statistics history, end to end with real node
processes on loopback:

- one row per send (per the user's command), however many attempts its
  retries take, updated across them: its final result, the bytes moved and
  the time since the send began; a cancel between two attempts is recorded
  as the send's end, and ``transfers`` counts the send's time meanwhile;
- a node stopped (SIGTERM) while it sends records those sends' end, with the
  bytes they moved, and says nothing about the history on its terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt.history.db import db_path, list_transfers, open_reader
from peercrypt.testing.nodes import NodeProcess, start_cli

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024


def send_rows(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's sending rows, oldest first (none before its history exists)."""
    if not db_path(node.data_dir).exists():
        return []
    with open_reader(db_path(node.data_dir)) as conn:
        rows = [r for r in list_transfers(conn) if r["side"] == "send"]
    return sorted(rows, key=lambda r: r["id"])


def test_a_node_stopped_mid_send_records_the_sends_end_with_what_moved(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    source = make_file(64 * MiB)
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(8 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:
            # A record with bytes moved and the stats actor's samples of them.
            sender.wait_for_counter("stats.samples", 10, timeout=30)
            assert sender.stop() == 0
            cli.communicate(timeout=30)
        finally:
            cli.kill()
    (row,) = send_rows(sender)
    # Its end, not "running" (which the next start would call interrupted,
    # with nothing moved).
    assert (row["result"], row["reason"]) == ("cancelled", "the node is stopping"), row
    assert MiB <= row["bytes"] < source.stat().st_size, row
    assert row["duration"] > 0.5, row
    log = sender.log_path.read_text(errors="replace")
    assert "mailbox of" not in log, log
