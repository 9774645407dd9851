"""Listings longer than one message holds, with real node processes on
loopback: `transfers` with hundreds of sends waiting in line for the node's
slot. Their rows (a count of 1,000 bounded them, their bytes nothing) made
the sender's reply fail to encode: `transfers` said no transfer ran and
that the sender did not answer, and `top` showed none. The rows are cut to
what one message holds, the running send first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt.client import ControlClient
from peercrypt.testing.nodes import NodeProcess, start_cli, wait_until
from peercrypt.wire.local_messages import SendRequest

pytestmark = pytest.mark.timeout(180)

QUEUED = 300  # sends in line, each row ~300 bytes: ~90 KB of rows


def test_hundreds_of_sends_in_line_are_listed_as_many_as_fit(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory("--max-outgoing", "1", name="sender")
    slow = make_file(64 << 20, name="slow.bin")
    queued = tmp_path / ("q" * 180 + ".bin")
    queued.write_bytes(b"x")
    args = ("send", slow, receiver.host, str(receiver.port), "--mode", "token-bucket")
    with start_cli(*args, "-r", "1MB/s", "--json", data_dir=sender.data_dir, env=sender.env):

        def rows() -> list[dict[str, Any]]:
            shown = sender.cli("transfers", "--json")
            assert shown.returncode == 0 and not shown.stderr, shown.describe()
            listed: list[dict[str, Any]] = json.loads(shown.stdout)
            return listed

        wait_until(lambda: [r for r in rows() if r["state"] == "sending"], 30, "the slow send")
        with ControlClient.for_data_dir(sender.data_dir) as client:  # as `send` asks, 300 times
            for k in range(QUEUED):
                client.send(
                    SendRequest(
                        request=10_000 + k,
                        path=str(queued),
                        host=receiver.host,
                        port=receiver.port,
                        chunk_size=65536,
                    )
                )

        def all_in_line() -> list[dict[str, Any]] | None:
            # (a send the node has just taken is "checking" until health
            # says which members' records name its address: none left so)
            listed = rows()
            waiting = [r for r in listed if r["state"] == "waiting"]
            return listed if len(waiting) > 100 and len(waiting) == len(listed) - 1 else None

        listed = wait_until(all_in_line, 30, "the sends in line listed")
        assert listed[0]["state"] == "sending" and listed[0]["file"].endswith("slow.bin")
        waiting = listed[1:]
        assert {r["state"] for r in waiting} == {"waiting"}
        assert all(r["file"].endswith("q" * 20 + ".bin") for r in waiting)
        assert len(waiting) < QUEUED  # (as many as fit one message: the rest are not listed)
        sender.cli("cancel", str(listed[0]["id"]))
