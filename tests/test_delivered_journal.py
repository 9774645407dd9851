"""The receiver's table of delivered files on disk (``actors/receiver.py``):
a delivery appends one row to the journal instead of rewriting the whole
table, a killed receiver's successor loads every row, and the journal is
folded into a new snapshot once it is long.

The receiver actor's own persistence methods, on a real data directory; the
actor is not run (a restart is a second actor loading the same directory,
with no teardown of the first: a kill)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from actors.receiver import DELIVERED_FILE, DELIVERED_JOURNAL, ReceiverActor
from peercrypt.core.delivered import CAPACITY, JOURNAL_ROWS, Delivery, FileStamp, journal_row
from peercrypt.core.resume import ResumeKey
from peercrypt.runtime.actor import ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.testing.nodes import loopback_settings


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[ActorEnv, NodeSettings]]:
    settings = loopback_settings(tmp_path, None)
    settings.inbox.mkdir()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ActorEnv(ctx, "journal"), settings
    finally:
        ctx.term()


def _delivery(n: int) -> Delivery:
    name = f"file-{n:06d}.bin"
    key = ResumeKey(bytes([n % 7]) * 32, name, 1, 65536, n.to_bytes(32, "big"))
    return Delivery(key, name, n.to_bytes(32, "big"), FileStamp(1, 1000 + n, 1, n), 1.0 + n)


def _deliver(receiver: ReceiverActor, n: int) -> bytes:
    """What the receiver does when it stores file ``n``; the row it journals."""
    d = _delivery(n)
    receiver.delivered.record(d)
    row = journal_row(d)
    receiver._note_delivered(row)
    return row


def test_a_delivery_appends_one_row_and_a_killed_receiver_loses_none(
    receivers: tuple[ActorEnv, NodeSettings],
) -> None:
    env, settings = receivers
    snapshot = settings.data_dir / DELIVERED_FILE
    journal = settings.data_dir / DELIVERED_JOURNAL
    receiver = ReceiverActor(env, settings)
    for n in range(CAPACITY):  # a full table, as after many deliveries
        receiver.delivered.record(_delivery(n))
    receiver._save_delivered()
    before = snapshot.stat()
    rows = [_deliver(receiver, n) for n in range(CAPACITY, CAPACITY + 100)]
    # The snapshot was not rewritten: each delivery cost its own row, no more.
    after = snapshot.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert journal.read_bytes() == b"".join(rows)
    assert len(rows[0]) * 100 < before.st_size  # 100 rows: less than one snapshot

    # Killed now (no teardown, nothing buffered in the process): its
    # successor loads the very table, and folds the journal into a snapshot.
    again = ReceiverActor(env, settings)
    again._load_delivered()
    assert again.delivered.encode() == receiver.delivered.encode()
    assert not journal.exists()
    assert msgpack.unpackb(snapshot.read_bytes()) == msgpack.unpackb(receiver.delivered.encode())
    d = _delivery(CAPACITY + 99)
    assert again.delivered.lookup(d.key, {d.stored_as: d.stamp}.get) == d


def test_a_long_journal_is_folded_into_a_new_snapshot(
    receivers: tuple[ActorEnv, NodeSettings],
) -> None:
    env, settings = receivers
    journal = settings.data_dir / DELIVERED_JOURNAL
    receiver = ReceiverActor(env, settings)
    receiver._load_delivered()  # nothing on disk yet
    rows = [_deliver(receiver, n) for n in range(JOURNAL_ROWS + 5)]
    # Rows 0..JOURNAL_ROWS-1 were appended; the next one made a snapshot of
    # everything (itself included); the last 4 are appended to a new journal.
    assert journal.read_bytes() == b"".join(rows[JOURNAL_ROWS + 1 :])
    again = ReceiverActor(env, settings)
    again._load_delivered()
    assert again.delivered.encode() == receiver.delivered.encode()
    assert len(again.delivered) == CAPACITY
