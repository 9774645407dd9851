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

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt.history.db import db_path, list_transfers, open_reader
from peercrypt.testing.nodes import NodeProcess, free_port, start_cli, wait_until

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
ROUNDED = 0.05  # ``transfers --json`` gives seconds to 0.1
CHUNK = 16 * 1024
RATE = 2 * MiB  # 4 s for the file: the receiver is killed mid-way


def listed(node: NodeProcess, state: str) -> dict[str, Any] | None:
    """The node's first send in ``state`` in ``transfers --json``, if any."""
    shown = node.cli("transfers", "--json")
    assert shown.returncode == 0, shown.describe()
    rows = [r for r in json.loads(shown.stdout) if r["state"] == state]
    return rows[0] if rows else None


def _paced_send(path: Path, port: int) -> list[Any]:
    """A send's arguments, paced so that it runs for seconds."""
    return ["send", path, "127.0.0.1", str(port), "--json", "--force", "--chunk-size", str(CHUNK),
            "--timeout", "60", "-r", str(RATE), "-b", str(CHUNK)]  # fmt: skip


def _a_mib_moved(sender: NodeProcess) -> dict[str, Any]:
    """The sender's send in ``transfers`` once a MiB of it is acknowledged."""
    return wait_until(
        lambda: (r := listed(sender, "sending")) and int(r["bytes"]) >= MiB and r,
        30,
        "a MiB acknowledged",
    )


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


def test_a_send_retried_and_then_cancelled_is_one_row_with_its_end(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A receiver killed mid-send: the sender retries (its port refuses,
    every 0.25 s doubling to 2 s), the user cancels between two attempts.
    The history has one row for the send: cancelled, with the bytes moved
    and the time since the send began; ``transfers`` counted that time
    while it retried; the send's result names its size and mode."""
    port = free_port()
    receiver = node_factory("--port", str(port), name="receiver")
    sender = node_factory(name="sender")
    path = make_file(8 * MiB)
    began = time.monotonic()
    args = _paced_send(path, port)
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:
            moving = _a_mib_moved(sender)
            receiver.kill()
            killed = time.monotonic()
            # Several attempts failed since (each a row of its own before).
            sender.wait_for_counter("sender.retries", 4, timeout=30)
            pause = wait_until(lambda: listed(sender, "retrying"), 30, "the send between attempts")
            seen = time.monotonic()
            sender.cli("cancel", str(moving["id"]))
            out, _ = cli.communicate(timeout=30)
        finally:
            cli.kill()
    # transfers: the send's time, not the attempt's 0
    since = (killed - began - ROUNDED, seen - began + 0.2)
    assert since[0] <= pause["seconds"] <= since[1], (pause, since)
    assert pause["bytes"] >= moving["bytes"], (pause, moving)
    result = json.loads(out)
    assert (result["code"], result["error"]) == ("cancelled", "cancelled by the user"), result
    assert (result["size"], result["mode"]) == (8 * MiB, "token-bucket"), result
    assert result["seconds"] >= pause["seconds"] - ROUNDED, (result, pause)
    assert result["stats"]["attempts"] >= 4, result
    (row,) = send_rows(sender)
    assert (row["result"], row["reason"]) == ("cancelled", "cancelled by the user"), row
    assert (row["size"], row["mode"], row["file"]) == (8 * MiB, "token-bucket", str(path)), row
    assert pause["bytes"] <= row["bytes"] < 8 * MiB, (row, pause)
    assert pause["seconds"] - ROUNDED <= row["duration"] <= result["seconds"] + 0.2, (row, result)
    assert row["stats"]["attempts"] == result["stats"]["attempts"], (row, result)
    # The stats CLI shows it as one transfer that moved what it moved.
    shown = sender.cli("stats", "show", str(row["id"]))
    assert shown.returncode == 0 and "cancelled" in shown.stdout, shown.describe()
    receiver.start()  # for the fixture's clean stop


def test_a_node_stopped_while_a_send_waits_to_retry_records_its_end(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Between two attempts there is no transfer to end: the send's row,
    left running by its last attempt, is ended by the stop all the same."""
    port = free_port()
    receiver = node_factory("--port", str(port), name="receiver")
    sender = node_factory(name="sender")
    path = make_file(8 * MiB)
    args = _paced_send(path, port)
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:
            _a_mib_moved(sender)
            receiver.kill()
            # The pauses grow (0.25 s doubling to 2 s) and the attempts take
            # a moment each: after a few, the stop most likely falls between two.
            sender.wait_for_counter("sender.retries", 3, timeout=30)
            pause = wait_until(lambda: listed(sender, "retrying"), 30, "the send between attempts")
            assert sender.stop() == 0
            out, _ = cli.communicate(timeout=30)
        finally:
            cli.kill()
    result = json.loads(out)
    assert (result["code"], result["error"]) == ("cancelled", "the node is stopping"), result
    assert result["size"] == 8 * MiB, result
    (row,) = send_rows(sender)
    assert (row["result"], row["reason"]) == ("cancelled", "the node is stopping"), row
    assert pause["bytes"] <= row["bytes"] < 8 * MiB, (row, pause)
    assert row["duration"] >= pause["seconds"] - ROUNDED, (row, pause)
    assert "mailbox of" not in sender.log_path.read_text(errors="replace")
    receiver.start()  # for the fixture's clean stop


def test_a_retry_whose_file_is_gone_ends_the_sends_row_with_its_failure(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Between two attempts the file is deleted: the next attempt cannot
    start, the send fails (`local`, cannot read) and its one row says so
    (it stayed `running` for good, and the result had no size)."""
    port = free_port()
    receiver = node_factory("--port", str(port), name="receiver")
    sender = node_factory(name="sender")
    path = make_file(8 * MiB)
    args = _paced_send(path, port)
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:
            _a_mib_moved(sender)
            receiver.kill()
            wait_until(lambda: listed(sender, "retrying"), 30, "the send between attempts")
            path.unlink()
            out, _ = cli.communicate(timeout=30)
        finally:
            cli.kill()
    result = json.loads(out)
    assert result["code"] == "local" and "cannot read" in result["error"], result
    assert (result["size"], result["mode"]) == (8 * MiB, "token-bucket"), result
    row = wait_until(
        lambda: (rows := send_rows(sender)) and rows[0]["result"] != "running" and rows,
        15,
        "the row ended",
    )[0]
    assert len(send_rows(sender)) == 1
    assert row["result"] == "local" and "cannot read" in row["reason"], row
    assert MiB <= row["bytes"] < 8 * MiB, row
    receiver.start()  # for the fixture's clean stop


def test_a_retry_in_line_for_a_slot_is_listed_with_what_its_send_did(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A retry whose pause is over while this node's one slot is taken
    waits in line: `transfers` lists it with its send's bytes, size, mode
    and time (it said 0 bytes of ?, 0 s)."""
    port = free_port()
    receiver = node_factory("--port", str(port), name="receiver")
    other = node_factory(name="other")
    sender = node_factory("--max-outgoing", "1", name="sender")
    path, long = make_file(8 * MiB), make_file(64 * MiB, name="long.bin")
    args = _paced_send(path, port)
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as first:
        try:
            moving = _a_mib_moved(sender)
            receiver.kill()
            wait_until(lambda: listed(sender, "retrying"), 30, "the send between attempts")
            slot = start_cli(
                "send", long, other.host, str(other.port), "--json", "-r", str(RATE),
                data_dir=sender.data_dir, env=sender.env,
            )  # fmt: skip
            try:

                def in_line() -> dict[str, Any] | None:
                    rows = json.loads(sender.cli("transfers", "--json").stdout)
                    return next(
                        (r for r in rows if r["id"] == moving["id"] and r["state"] == "waiting"),
                        None,
                    )

                row = wait_until(in_line, 30, "the retry in line behind the other send")
                assert (row["size"], row["mode"]) == (8 * MiB, "token-bucket"), row
                assert row["bytes"] >= moving["bytes"] and row["seconds"] > 0.5, (row, moving)

            finally:
                slot.kill()
                slot.wait(timeout=30)
        finally:
            first.kill()
            first.wait(timeout=30)
    receiver.start()  # for the fixture's clean stop
