"""The receiver's table of delivered files on disk (``actors/receiver.py``):
a delivery appends one row to the journal instead of rewriting the whole
table, a killed receiver's successor loads every row, the journal is
folded into a new snapshot once it is long (a snapshot that cannot be
written is not tried again at every delivery, and loses no row), and an
entry forgotten because its file changed stays forgotten.

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


def test_a_snapshot_that_cannot_be_written_loses_no_row_and_is_not_retried_each_time(
    receivers: tuple[ActorEnv, NodeSettings],
) -> None:
    """The journal is long and the snapshot cannot be written (here its
    temporary name is taken by a directory; a full disk does the same):
    the rows go on to the journal, and the whole table is rewritten again
    only ``JOURNAL_ROWS`` changes later, not at every delivery."""
    env, settings = receivers
    journal = settings.data_dir / DELIVERED_JOURNAL
    blocked = settings.data_dir / (DELIVERED_FILE + ".tmp")
    blocked.mkdir()
    receiver = ReceiverActor(env, settings)
    receiver._load_delivered()
    rows = [_deliver(receiver, n) for n in range(JOURNAL_ROWS + 10)]
    assert receiver.counters.get("delivered-snapshot-failed") == 1  # tried once
    assert journal.read_bytes() == b"".join(rows)  # no row lost
    again = ReceiverActor(env, settings)
    again._load_delivered()  # the next start cannot fold it either: every row is read
    assert again.delivered.encode() == receiver.delivered.encode()
    blocked.rmdir()  # room again: the next try, JOURNAL_ROWS changes after the last
    more = [_deliver(receiver, n) for n in range(JOURNAL_ROWS + 10, 2 * JOURNAL_ROWS + 10)]
    assert receiver.counters.get("delivered-snapshot-failed") == 1
    assert (settings.data_dir / DELIVERED_FILE).exists()
    # It came at change 2 * JOURNAL_ROWS + 1, JOURNAL_ROWS after the failed
    # one: the journal holds the 9 rows after it.
    assert journal.read_bytes() == b"".join(more[-9:])
    again = ReceiverActor(env, settings)
    again._load_delivered()
    assert again.delivered.encode() == receiver.delivered.encode()


def test_an_entry_forgotten_for_a_changed_file_stays_forgotten_after_a_restart(
    receivers: tuple[ActorEnv, NodeSettings],
) -> None:
    """The file delivered was written to since: the offer that finds it so
    forgets the entry, and the journal says so (a restart does not bring
    the entry back, to be found stale again at every offer)."""
    env, settings = receivers
    stored = settings.inbox / "kept.bin"
    stored.write_bytes(b"v1")
    receiver = ReceiverActor(env, settings)
    receiver._load_delivered()
    stamp = receiver._stamp(stored.name)
    assert stamp is not None
    key = ResumeKey(b"p" * 32, stored.name, 2, 65536, b"s" * 32)
    delivery = Delivery(key, stored.name, b"h" * 32, stamp, 1.0)
    receiver.delivered.record(delivery)
    receiver._note_delivered(journal_row(delivery))
    assert receiver._delivered_before(key) == delivery
    with open(stored, "ab") as f:
        f.write(b"+")
    assert receiver._delivered_before(key) is None
    assert key not in receiver.delivered
    again = ReceiverActor(env, settings)
    again._load_delivered()
    assert key not in again.delivered
