"""A receiver whose limits of transfers at once are taken refuses an offer
"busy": the send waits and offers again instead of failing (real node
processes on loopback; peercrypt/core/busy_wait.py has the rules):

- sends beyond the receiver's per-sender limit wait, listed as ``waiting``
  with the receiver's words, and every file arrives, verified by its hash;
- a receiver kept busy by another sender's transfer is waited out for the
  send's ``--timeout`` only, with a few offers, then the send fails with
  the refusal (exit 5) while that other transfer goes on;
- a send waiting for a busy receiver is cancelled at once by ``cancel ID``,
  by Ctrl-C and by the node's stop;
- a busy wait is part of its send: the send keeps one history row, left
  running with the receiver's words while it waits, ending with its result;
- a final refusal (over the sender's quota of parts) still fails at once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    cli_running,
    json_success,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

KiB = 1024
RATE = "256K"  # a file of SMALL takes about a second: the sends overlap
SMALL = 256 * KiB
# A file that takes about a minute at RATE: a send of it is still running
# after any number of slow steps of a test that stops its node first.
LONG = 64 * SMALL


def send_cli(
    sender: NodeProcess, path: Path, receiver: NodeProcess, *extra: str
) -> AbstractContextManager[subprocess.Popen[str]]:
    return cli_running(
        "send", str(path), receiver.host, str(receiver.port), "--json", *extra,
        data_dir=sender.data_dir,
    )  # fmt: skip


def rows(node: NodeProcess) -> list[dict[str, Any]]:
    listed = node.cli("transfers", "--json")
    assert listed.returncode == 0, listed.describe()
    found: list[dict[str, Any]] = json.loads(listed.stdout)
    return found


def waiting_for_busy(node: NodeProcess, words: str) -> dict[str, Any] | None:
    """A send the node lists as waiting for a busy receiver saying ``words``."""
    for row in rows(node):
        if row["state"] == "waiting" and words in (row.get("error") or ""):
            return row
    return None


def history_row(node: NodeProcess, path: Path, result: str) -> dict[str, Any] | None:
    """The node's one history row of its send of ``path``, once its result
    is ``result`` (a send has one row, however many offers it made)."""
    listed = node.cli("stats", "list", "--json")
    assert listed.returncode == 0, listed.describe()
    found = [r for r in json.loads(listed.stdout) if r["side"] == "send" and r["file"] == str(path)]
    assert len(found) <= 1, found
    return found[0] if found and found[0]["result"] == result else None


def test_sends_beyond_the_receivers_limit_wait_their_turn_and_all_arrive(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory("--max-transfers-per-peer", "1")
    sender = node_factory()
    files = [make_file(2 * SMALL + i) for i in range(3)]  # 2 s each: a while in line
    with ExitStack() as stack:
        procs = [
            stack.enter_context(send_cli(sender, f, receiver, "-r", RATE, "--timeout", "5"))
            for f in files
        ]
        row = wait_until(
            lambda: waiting_for_busy(sender, "too many transfers from you (max 1)"),
            30,
            "a send waiting for the receiver's slot",
        )
        assert row["next_in"] is not None and 0 <= row["next_in"] <= 5, row
        ended = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], (ended, sender.log_tail())
    results = [json.loads(out) for out, _ in ended]
    notes = [err for _, err in ended]
    stored = [r["stored_as"] for r in results]
    assert len(set(stored)) == 3, stored
    for path, result in zip(files, results, strict=True):
        assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(path)
    assert any("is busy (too many transfers from you (max 1)); the send waits" in n for n in notes)
    counters = sender.counters_when("sender.sent", 3)  # (the sender's counts up to then)
    assert counters.get("sender.busy-waits", 0) >= 2, counters  # the second and the third
    assert counters.get("sender.busy-woken", 0) >= 1, counters  # an end woke one
    assert counters.get("sender.busy-gave-up", 0) == 0, counters
    assert counters["sender.failed-refused"] == counters["sender.busy-waits"], counters
    receiver.wait_for_counter("receiver.refused-busy", counters["sender.busy-waits"])

    # A busy wait is part of its send: one history row per send, which its
    # refused offers updated (none has a row of its own), each ending "ok".
    def ended_rows() -> list[dict[str, Any]] | None:
        listed = sender.cli("stats", "list", "--json")
        assert listed.returncode == 0, listed.describe()
        sends = [r for r in json.loads(listed.stdout) if r["side"] == "send"]
        done = [r for r in sends if r["result"] == "ok"]
        return sends if len(done) == len(files) else None

    sends = wait_until(ended_rows, 30, "the three sends' rows ended")
    assert sorted(r["file"] for r in sends) == sorted(map(str, files)), sends
    assert [(r["result"], r["reason"]) for r in sends] == [("ok", "")] * 3, sends


def test_a_receiver_busy_with_another_senders_transfer_is_waited_out_for_the_timeout_only(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory("--max-transfers", "1")
    other, sender = node_factory(), node_factory()
    long_file = make_file(16 * SMALL)  # 16 s at RATE: longer than the wait below
    with send_cli(other, long_file, receiver, "-r", RATE, "--timeout", "30") as long_send:
        wait_until(
            lambda: any(r["state"] == "sending" for r in rows(other)) or None,
            30,
            "the other sender's transfer to run",
        )
        small = make_file(SMALL)
        started = time.monotonic()
        refused = sender.cli("send", str(small), receiver.host, str(receiver.port),
                             "--timeout", "3", timeout=60)  # fmt: skip
        took = time.monotonic() - started
        assert refused.returncode == errors.REFUSED, refused.describe()
        line = refused.stderr.strip().splitlines()[-1]
        assert "receiver busy (1 transfers running)" in line, line
        assert "still busy after --timeout 3 s" in line, line
        assert 3.0 <= took < 10.0, took  # waited out its --timeout, not more
        assert long_send.poll() is None  # the other transfer goes on meanwhile
        counters = sender.counters_when("sender.busy-gave-up", 1)
        assert counters["sender.busy-gave-up"] == 1, counters
        busy = counters["sender.failed-refused"]  # every offer, the last included
        # A handful of offers, never a spin (core/busy_wait.py: pauses of
        # 1 s doubling to the 3 s timeout, each at least half its ceiling).
        assert 2 <= busy <= 6, busy
        assert busy == counters["sender.busy-waits"] + 1, counters
        assert receiver.wait_for_counter("receiver.refused-busy", busy) == busy
        done = json_success(long_send, other, timeout=60)
    assert blake3_file(receiver.inbox / done["stored_as"]) == blake3_file(long_file)
    assert not (receiver.inbox / small.name).exists()


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_a_send_waiting_for_a_busy_receiver_is_cancelled_at_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], how: str
) -> None:
    receiver = node_factory("--max-transfers-per-peer", "1")
    sender = node_factory()
    first, second = make_file(LONG), make_file(SMALL)
    with send_cli(sender, first, receiver, "-r", RATE) as running:
        wait_until(
            lambda: any(r["state"] == "sending" for r in rows(sender)) or None,
            30,
            "the first send to run",
        )
        with send_cli(sender, second, receiver, "-r", RATE) as waiting:
            row = wait_until(
                lambda: waiting_for_busy(sender, "too many transfers from you"),
                30,
                "a send waiting for the receiver's slot",
            )
            assert row["file"].endswith(second.name), row
            # Its one history row stays running with the receiver's words.
            waited = wait_until(
                lambda: (
                    (r := history_row(sender, second, "running"))
                    and r["reason"].endswith("; waiting")
                    and r
                ),
                10,
                "the waiting send's history row",
            )
            assert "too many transfers from you" in waited["reason"], waited
            if how == "cancel":
                cancelled = sender.cli("cancel", str(row["id"]))
                assert cancelled.returncode == 0, cancelled.describe()
            else:
                waiting.send_signal(signal.SIGINT)
            out, err = waiting.communicate(timeout=10)
        if how == "cancel":
            assert waiting.returncode == errors.FAILED, (out, err)
            assert json.loads(out)["error"] == "cancelled by the user", (out, err)
        else:
            assert waiting.returncode == 130, (out, err)
        wait_until(
            lambda: all(r["id"] != row["id"] for r in rows(sender)),
            10,
            "the waiting send to be gone from the node's list",
        )
        ended = wait_until(
            lambda: history_row(sender, second, "cancelled"),
            10,
            "the waiting send's history row to end",
        )
        assert ended["session"] == waited["session"], (ended, waited)
        assert running.poll() is None  # the other send was not touched
        lifted = sender.cli("rate", "0")  # the rest of the long file at once
        assert lifted.returncode == 0, lifted.describe()
        done = json_success(running, sender)
    assert blake3_file(receiver.inbox / done["stored_as"]) == blake3_file(first)
    assert not (receiver.inbox / second.name).exists()


def test_a_final_refusal_still_fails_at_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory("--peer-quota", "1000000")
    sender = node_factory()
    refused = sender.cli("send", str(make_file(2_000_000)), receiver.host, str(receiver.port),
                         "--timeout", "30")  # fmt: skip
    assert refused.returncode == errors.REFUSED, refused.describe()
    assert "refused" in refused.stderr, refused.stderr
    assert refused.seconds < 15, refused.seconds  # no wait for its --timeout
    counters = sender.counters_when("sender.failed-refused", 1)
    assert counters.get("sender.busy-waits", 0) == 0, counters


def test_a_node_stopped_while_a_send_waits_for_a_busy_receiver_ends_its_row(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A waiting send has no transfer running: the node's stop ends it and
    its one history row (left running with the receiver's words). While it
    waits, the same file is not sent to that receiver a second time."""
    receiver = node_factory("--max-transfers-per-peer", "1")
    sender = node_factory()
    first, second = make_file(LONG), make_file(SMALL)
    with send_cli(sender, first, receiver, "-r", RATE) as running:
        wait_until(
            lambda: any(r["state"] == "sending" for r in rows(sender)) or None,
            30,
            "the first send to run",
        )
        with send_cli(sender, second, receiver, "-r", RATE) as waiting:
            # (its row, whose state goes back to offering at each offer again)
            row = wait_until(
                lambda: waiting_for_busy(sender, "too many transfers from you"),
                30,
                "a send waiting for the receiver's slot",
            )
            wait_until(
                lambda: (
                    (r := history_row(sender, second, "running"))
                    and r["reason"].endswith("; waiting")
                ),
                10,
                "the waiting send's history row",
            )
            # The same file again to that receiver: refused, naming the
            # waiting send (the receiver would take it for that one).
            again = sender.cli("send", str(second), receiver.host, str(receiver.port))
            assert again.returncode == errors.USAGE, again.describe()
            assert again.stderr_lines == [
                f"peercrypt: error: already sending {second} to {receiver.host}:{receiver.port} "
                f"(transfer {row['id']}): wait for it, or cancel transfer {row['id']} first"
            ], again.describe()
            assert sender.stop() == 0
            out, err = waiting.communicate(timeout=30)
        running.communicate(timeout=30)
    result = json.loads(out)
    assert (result["code"], result["error"]) == ("cancelled", "the node is stopping"), (out, err)
    assert result["size"] == SMALL, result
    row = history_row(sender, second, "cancelled")
    assert row is not None and row["reason"] == "the node is stopping", row
    assert row["duration"] <= result["seconds"] + 0.2, (row, result)


def test_a_folder_waiting_for_a_busy_receiver_is_walked_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """Its next offers take the tree walked for the first while no file of
    it changed: each offer read and hashed the whole folder again (and held
    one of this node's slots meanwhile)."""
    receiver = node_factory("--max-transfers-per-peer", "1")
    sender = node_factory()
    first = make_file(4 * SMALL)  # 4 s at RATE: the folder waits meanwhile
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(3):
        (folder / f"photo{i}.jpg").write_bytes(bytes([i]) * (SMALL + i))
    with send_cli(sender, first, receiver, "-r", RATE, "--timeout", "10") as slow:
        wait_until(lambda: rows(sender) and rows(sender)[0]["state"] == "sending", 30, "sending")
        with send_cli(sender, folder, receiver, "--timeout", "10") as album:
            wait_until(
                lambda: sender.counters().get("sender.busy-waits", 0) >= 2,
                30,
                "the folder refused busy twice",
            )
            out, err = album.communicate(timeout=60)
        assert album.returncode == 0, (out, err)
        assert slow.wait(timeout=60) == 0
    result = json.loads(out)
    for i in range(3):
        stored = receiver.inbox / result["stored_as"] / f"photo{i}.jpg"
        assert blake3_file(stored) == blake3_file(folder / f"photo{i}.jpg")
    counters = sender.counters()
    assert counters["sender.walks"] == 1, counters
    assert counters.get("sender.busy-tree-reused", 0) >= 2, counters
