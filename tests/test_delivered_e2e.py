"""No second copy, with real node processes: the sender's link fails while
the receiver makes its final check, for longer than ``--timeout``; the send
fails, the receiver stores NAME anyway. Offered again by the same sender, the
file is not written again: the receiver answers with its earlier verdict (no
chunk moves, the result names NAME), also after the receiver was killed
(-9) and restarted. Another identity
offering the very same file gets a transfer of its own (it learns nothing
of the first), and a stored file that changed makes a fresh transfer.

The outage is made by a fault proxy in front of the receiver's data port
(``--advertise-data-port``): from the sender's Done on, everything the
receiver says is dropped (its Verifying, its Verified), until the test
restores the link."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from actors.data_pipes import new_route_id
from peercrypt import errors
from peercrypt.crypto.transfer import TAG_BYTES
from peercrypt.settings import NodeSettings
from peercrypt.testing.faults import DirectionFaults, FaultPlan, FaultProxy
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import NodeProcess, blake3_file, free_port, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import Attach, Refuse, SealedHeader, Verified

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024
SIZE = 1024 * 1024 + 7
TOTAL = -(-SIZE // CHUNK)
MAX_TRANSFERS_PER_PEER = NodeSettings.max_transfers_per_peer
ATTACH_SEALED = len(codec.encode(Attach(route=new_route_id(0)))) + TAG_BYTES
SILENT_RECEIVER = FaultPlan(
    upstream=DirectionFaults(), downstream=DirectionFaults(drop=1.0), seed=1
)


def _stored(inbox: Path) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if not p.name.startswith("."))


def _received_ok(node: NodeProcess, stored_as: str) -> list[dict[str, Any]]:
    """The node's history rows of files it received and stored as ``stored_as``."""
    listed = node.cli("stats", "list", "--json")
    assert listed.returncode == 0, listed.describe()
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return [r for r in rows if (r["side"], r["file"], r["result"]) == ("receive", stored_as, "ok")]


def _send(node: NodeProcess, path: Path, port: int, *extra: str) -> dict[str, Any]:
    result = node.send_result(
        path, "127.0.0.1", port, "--chunk-size", str(CHUNK), *extra, timeout=60
    )
    return {"exit": result.returncode, **result.json}


def test_a_file_delivered_during_an_outage_is_not_stored_twice(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    done_seen = threading.Event()

    def observer(direction: str, frames: list[bytes]) -> None:
        """The sender's Done (its one sealed message upstream but the Attach
        that comes first on the connection, told apart by its sealed length):
        from now on the receiver's answers are lost."""
        if direction != "upstream" or done_seen.is_set() or len(frames) != 2:
            return
        try:
            codec.decode_as(frames[0], SealedHeader, 512)
        except codec.DecodeError:
            return  # a chunk
        if len(frames[1]) == ATTACH_SEALED:
            return
        proxy.set_plan(SILENT_RECEIVER)
        done_seen.set()

    data_port = free_port()
    with FaultProxy(f"tcp://127.0.0.1:{data_port}", observer=observer) as proxy:
        receiver = node_factory(
            "--data-port", str(data_port), "--advertise-data-port", str(proxy.port),
            name="receiver",
        )  # fmt: skip
        # No retries: the send fails, and the user sends it again (a retry
        # of its own, offered while its answers are still lost, would be
        # answered from the table too and count here).
        sender = node_factory("--max-retries", "0", name="sender")
        path = make_file(SIZE, name="report.bin")
        digest = blake3_file(path)

        first = _send(sender, path, receiver.port, "--timeout", "2")
        assert done_seen.is_set()
        assert first["exit"] == errors.FAILED and first["code"] == "timeout", first
        # Meanwhile the receiver verified and stored the file.
        wait_until(lambda: _stored(receiver.inbox) == ["report.bin"], 20, "the stored file")
        assert blake3_file(receiver.inbox / "report.bin") == digest
        proxy.set_plan(FaultPlan.clean())

        # The same sender offers it again: nothing moves, the earlier verdict stands.
        again = _send(sender, path, receiver.port)
        assert again["exit"] == 0 and again["ok"], again
        assert again["stored_as"] == "report.bin" and again["blake3"] == digest
        assert again["stats"]["sent_chunks"] == 0, again["stats"]
        assert again["stats"]["resumed_chunks"] == TOTAL, again["stats"]
        assert _stored(receiver.inbox) == ["report.bin"]
        assert receiver.wait_for_counter("receiver.delivered-before-verified", 1) == 1
        # The receiver's history has that answer too, as a transfer of its own.
        wait_until(lambda: len(_received_ok(receiver, "report.bin")) >= 2, 20, "2 history rows")
        rows = _received_ok(receiver, "report.bin")
        echo = [r for r in rows if "delivered_before" in r["params"]]
        assert [(r["bytes"], r["params"]["delivered_before"]) for r in echo] == [
            (SIZE, "report.bin")
        ], rows
        shown = receiver.cli("stats", "show", str(echo[0]["id"])).stdout
        assert re.search(
            r"^moved +0 B in [0-9.]+ s, had it \(1.0 MiB held already\)$", shown, re.M
        ), shown
        # Sent again with other chunks (as a send capped by -r cuts them): the
        # same file, answered from the table too, all its chunks held.
        cut = _send(sender, path, receiver.port, "--chunk-size", str(CHUNK // 2))
        assert cut["ok"] and cut["stored_as"] == "report.bin", cut
        assert cut["stats"]["sent_chunks"] == 0, cut["stats"]
        assert cut["stats"]["resumed_chunks"] == -(-SIZE // (CHUNK // 2)), cut["stats"]
        assert _stored(receiver.inbox) == ["report.bin"]
        assert receiver.wait_for_counter("receiver.delivered-before-verified", 2) == 2

        # The table is kept in the data directory, a delivery's row written
        # before its Verified: a node killed (-9) and restarted answers the same.
        receiver.kill()
        receiver.start()
        after = _send(sender, path, receiver.port)
        assert after["ok"] and after["stored_as"] == "report.bin", after
        assert after["stats"]["sent_chunks"] == 0, after["stats"]
        assert _stored(receiver.inbox) == ["report.bin"]
        # Its history row too: nothing moved, the file held already.
        rows = json.loads(sender.cli("stats", "list", "--json").stdout)
        last = max(r["id"] for r in rows if r["side"] == "send" and r["result"] == "ok")
        shown = sender.cli("stats", "show", str(last)).stdout
        assert re.search(
            r"^moved +0 B in [0-9.]+ s, had it \(1.0 MiB held already\)$", shown, re.M
        ), shown
        listed = sender.cli("stats", "list").stdout.splitlines()
        assert re.search(r" had it +ok$", next(x for x in listed if x.startswith(f"{last} "))), (
            listed
        )
        # What the user reads: no rate of bytes that never crossed.
        plain = sender.cli("send", path, "127.0.0.1", str(receiver.port), timeout=60)
        assert plain.returncode == 0, plain.stderr
        assert re.fullmatch(
            rf"sent report\.bin \({SIZE} bytes\) to 127\.0\.0\.1:{receiver.port} as report\.bin"
            rf" in [0-9.]+ s \(the receiver had it all: nothing sent\), blake3 {digest} verified\n",
            plain.stdout,
        ), plain.stdout

        # Another identity offering the very same file learns nothing from the
        # table: its offer is a transfer of its own, every chunk moves.
        stranger = node_factory(name="stranger")
        theirs = _send(stranger, path, receiver.port)
        assert theirs["ok"] and theirs["stored_as"] == "report.1.bin", theirs
        assert theirs["stats"]["sent_chunks"] - theirs["stats"]["retransmits"] == TOTAL
        assert blake3_file(receiver.inbox / "report.1.bin") == digest

        # The stored file was written to since (same size): a fresh transfer.
        with open(receiver.inbox / "report.bin", "r+b") as f:
            f.write(b"changed")
        fresh = _send(sender, path, receiver.port)
        assert fresh["ok"] and fresh["stored_as"] not in ("report.bin", "report.1.bin"), fresh
        assert fresh["stats"]["sent_chunks"] - fresh["stats"]["retransmits"] == TOTAL
        assert blake3_file(receiver.inbox / fresh["stored_as"]) == digest


def test_re_offers_of_a_delivered_file_count_against_the_transfer_limits(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member that delivered one small file cannot pile up re-offers of it
    (each answered from the table, none writing a byte): they hold slots
    like transfers do, so past its per-identity limit it is refused 'busy'
    and the receiver's memory stays bounded by the limits, not by how fast
    it offers."""
    receiver = node_factory(name="receiver")
    chunk = 4096
    content = os.urandom(2 * chunk + 5)
    source = os.urandom(32)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        first = h.offer("mine.bin", len(content), chunk, source=source)
        assert isinstance(first, HostileTransfer), first
        verdict = first.send_stream(content)
        assert isinstance(verdict, Verified) and verdict.stored_as == "mine.bin", verdict
        assert blake3_file(receiver.inbox / "mine.bin") == blake3.blake3(content).hexdigest()

        answers = [
            h.offer("mine.bin", len(content), chunk, source=source)
            for _ in range(MAX_TRANSFERS_PER_PEER + 1)
        ]
        held = [a for a in answers if isinstance(a, HostileTransfer)]
        refused = [a.answer for a in answers if isinstance(a, Refused)]
        assert len(held) == MAX_TRANSFERS_PER_PEER, refused
        assert len(refused) == 1 and isinstance(refused[0], Refuse), refused
        assert refused[0].code == "busy", refused[0]
        assert receiver.wait_for_counter("receiver.delivered-before", MAX_TRANSFERS_PER_PEER)
        # Those it holds still end as they should: the earlier verdict.
        held[0].send_done(blake3.blake3(content).digest())
        assert held[0].wait_for(Verified).stored_as == "mine.bin"
    assert _stored(receiver.inbox) == ["mine.bin"]


def test_a_senders_failure_of_a_reoffer_answered_from_the_table_is_recorded_as_its_words(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member sends a file, offers it again (answered from the table of
    delivered files) and gives up with a Failed whose code says "ok" and
    whose reason holds escape sequences: the receiver's history row is no
    "ok" naming its stored copy, and nothing in it reaches a terminal raw."""
    from peercrypt.wire.messages import Failed

    receiver = node_factory()
    data = os.urandom(3 * 64 * 1024)
    source = os.urandom(32)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        first = h.offer("echoed.bin", len(data), 64 * 1024, source=source)
        assert isinstance(first, HostileTransfer), first
        assert isinstance(first.send_stream(data), Verified)
        again = h.offer("echoed.bin", len(data), 64 * 1024, source=source)
        assert isinstance(again, HostileTransfer), again
        receiver.wait_for_counter("receiver.delivered-before", 1)
        again.send_sealed(Failed(code="ok", reason="\x1b]0;owned\x07\x1b[2J gave up"))

        def echo_row() -> dict[str, Any] | None:
            rows = json.loads(receiver.cli("stats", "list", "--json").stdout)
            return rows[-1] if len(rows) == 2 else None

        row = wait_until(echo_row, 30, "the re-offer's row")
    assert row["result"] == "protocol" and row["bytes"] == 0, row
    shown = receiver.cli("stats", "show", str(row["id"]))
    assert shown.returncode == 0 and "\x1b" not in shown.stdout, shown.describe()
    assert "\\x1b]0;owned" in shown.stdout, shown.stdout
