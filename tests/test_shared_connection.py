"""A sender's transfers to one receiver share one data connection
(actors/data_pipes.py), with real node processes: each transfer attaches
to it with its own sealed Attach, a cancel of one ends only that one, and
the connection is closed with its last transfer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024


def test_transfers_to_one_peer_share_a_connection_and_a_cancel_spares_the_others(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    slow = make_file(32 * MiB)  # 16 s at -r 2 MiB: cancelled while the others run
    args = ["send", slow, receiver.host, str(receiver.port), "-r", str(2 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:

            def sending() -> str | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout)
                return next((r["id"] for r in rows if r["state"] == "sending"), None)

            ident = wait_until(sending, 15.0, "the first send to start")
            files = [make_file(4 * MiB + 5), make_file(3 * MiB + 1)]
            others = [BackgroundSend(sender, f, receiver, "-r", str(2 * MiB)) for f in files]
            # All three attached to one connection: the receiver took each one's Attach.
            receiver.wait_for_counter("receiver.data-attached", 3, timeout=20.0)
            done = sender.cli("cancel", ident)
            assert done.returncode == 0, done.describe()
            out, _ = cli.communicate(timeout=15)
            assert json.loads(out.strip().splitlines()[-1])["code"] == "cancelled"
            for path, send in zip(files, others, strict=True):
                assert_sent(receiver, send.join(), path)  # stored, the source's BLAKE3
        finally:
            cli.kill()
    assert not (receiver.inbox / slow.name).exists()
    # The connection went with its last transfer: the next send makes a new one.
    last = make_file(MiB + 3)
    assert_sent(receiver, sender.send_to(last, receiver), last)
    assert sender.wait_for_counter("sender.data-connections", 2) == 2
    assert receiver.wait_for_counter("receiver.data-attached", 4) == 4
