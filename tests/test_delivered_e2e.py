"""No second copy, with real node processes: the sender's link fails while
the receiver makes its final check, for longer than ``--timeout``; the send
fails, the receiver stores NAME anyway. Offered again by the same sender, the
file is not written again: the receiver answers with its earlier verdict (no
chunk moves, the result names NAME), also after a restart. Another identity
offering the very same file gets a transfer of its own (it learns nothing
of the first), and a stored file that changed makes a fresh transfer.

The outage is made by a fault proxy in front of the receiver's data port
(``--advertise-data-port``): from the sender's Done on, everything the
receiver says is dropped (its Verifying, its Verified), until the test
restores the link."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.testing.faults import DirectionFaults, FaultPlan, FaultProxy
from peercrypt.testing.nodes import NodeProcess, blake3_file, free_port, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import SealedHeader

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024
SIZE = 1024 * 1024 + 7
TOTAL = -(-SIZE // CHUNK)
SILENT_RECEIVER = FaultPlan(
    upstream=DirectionFaults(), downstream=DirectionFaults(drop=1.0), seed=1
)


def _stored(inbox: Path) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if not p.name.startswith("."))


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
        """The sender's Done (its one sealed message upstream): from now on
        the receiver's answers are lost."""
        if direction != "upstream" or done_seen.is_set() or len(frames) != 2:
            return
        try:
            codec.decode_as(frames[0], SealedHeader, 512)
        except codec.DecodeError:
            return  # a chunk
        proxy.set_plan(SILENT_RECEIVER)
        done_seen.set()

    data_port = free_port()
    with FaultProxy(f"tcp://127.0.0.1:{data_port}", observer=observer) as proxy:
        receiver = node_factory(
            "--data-port", str(data_port), "--advertise-data-port", str(proxy.port),
            name="receiver",
        )  # fmt: skip
        sender = node_factory(name="sender")
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

        # The table is kept in the data directory: a restarted node answers the same.
        receiver.stop()
        receiver.start()
        after = _send(sender, path, receiver.port)
        assert after["ok"] and after["stored_as"] == "report.bin", after
        assert after["stats"]["sent_chunks"] == 0, after["stats"]
        assert _stored(receiver.inbox) == ["report.bin"]

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
