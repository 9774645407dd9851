"""The table of delivered files (peercrypt/core/delivered.py): bounded, keyed
by the proven sender, valid only while the stored file is unchanged, and it
survives a restart (a snapshot and its journal) whatever is on disk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.delivered import (
    DeliveredTable,
    Delivery,
    FileStamp,
    forget_row,
    journal_row,
)
from peercrypt.core.resume import ResumeKey

A, B = b"a" * 32, b"b" * 32
SOURCE = b"s" * 32


def _delivery(peer: bytes = A, name: str = "f.bin", stored: str = "f.bin", n: int = 0) -> Delivery:
    key = ResumeKey(peer, name, 1000 + n, 64, SOURCE)
    return Delivery(key, stored, bytes([n % 256]) * 32, FileStamp(1, 100 + n, 1000 + n, 5), 1.0)


def test_a_repeat_is_found_while_the_stored_file_is_unchanged() -> None:
    table = DeliveredTable()
    d = _delivery()
    table.record(d)
    assert table.lookup(d.key, {"f.bin": d.stamp}.get) == d
    # Another identity offering the very same file learns nothing: no match.
    other = ResumeKey(B, d.key.name, d.key.size, d.key.chunk_size, d.key.source)
    assert table.lookup(other, {"f.bin": d.stamp}.get) is None
    assert table.lookup(d.key, {"f.bin": d.stamp}.get) == d


def test_a_repeat_with_another_chunk_size_is_the_same_file() -> None:
    """A re-send capped by ``-r`` (or a node's share) cuts other chunks: the
    same file, found; only the file's identity keys the table."""
    table = DeliveredTable()
    d = _delivery()
    table.record(d)
    other = ResumeKey(A, d.key.name, d.key.size, d.key.chunk_size * 4, d.key.source)
    assert other in table
    assert table.lookup(other, {"f.bin": d.stamp}.get) == d
    assert table.forget(other) and len(table) == 0


def test_a_file_gone_or_changed_makes_a_fresh_transfer() -> None:
    for now in (
        None,
        FileStamp(1, 100, 1000, 6),
        FileStamp(1, 101, 1000, 5),
    ):  # gone; written; replaced
        table = DeliveredTable()
        d = _delivery()
        table.record(d)
        assert table.lookup(d.key, {"f.bin": now}.get) is None
        assert len(table) == 0  # forgotten


@settings(deadline=None)
@given(st.lists(st.integers(0, 40), max_size=80), st.integers(1, 10))
def test_the_table_is_bounded_and_keeps_the_latest(ns: list[int], capacity: int) -> None:
    table = DeliveredTable(capacity)
    for n in ns:
        table.record(_delivery(name=f"f{n}", stored=f"f{n}", n=n))
        assert len(table) <= capacity
    latest: list[int] = []
    for n in reversed(ns):
        if n not in latest:
            latest.append(n)
    for n in latest[:capacity]:
        d = _delivery(name=f"f{n}", stored=f"f{n}", n=n)
        assert table.lookup(d.key, {d.stored_as: d.stamp}.get) == d


@settings(deadline=None)
@given(st.integers(3, 12), st.data())
def test_a_member_delivering_many_files_pushes_out_only_its_own(
    capacity: int, data: st.DataObject
) -> None:
    """A flood of tiny deliveries by one identity never evicts the entries of
    an identity that holds fewer: the flooder's oldest go first."""
    table = DeliveredTable(capacity)
    kept = data.draw(st.integers(1, (capacity - 1) // 2))
    honest = [_delivery(peer=A, name=f"a{n}", stored=f"a{n}", n=n) for n in range(kept)]
    for d in honest:
        table.record(d)
    flood = data.draw(st.integers(capacity, 4 * capacity))
    for n in range(flood):
        table.record(_delivery(peer=B, name=f"b{n}", stored=f"b{n}", n=n))
        assert len(table) <= capacity
    for d in honest:
        assert table.lookup(d.key, {d.stored_as: d.stamp}.get) == d
    # The flooder keeps its latest deliveries in the room left.
    newest = _delivery(peer=B, name=f"b{flood - 1}", stored=f"b{flood - 1}", n=flood - 1)
    assert table.lookup(newest.key, {newest.stored_as: newest.stamp}.get) == newest


@settings(deadline=None)
@given(st.lists(st.integers(0, 40), max_size=20))
def test_a_restart_keeps_the_table(ns: list[int]) -> None:
    table = DeliveredTable(8)
    for n in ns:
        table.record(_delivery(name=f"f{n}", stored=f"g{n}", n=n))
    again = DeliveredTable.decode(table.encode(), 8)
    assert again.encode() == table.encode()


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_garbage_on_disk_is_an_empty_table(data: bytes) -> None:
    table = DeliveredTable.decode(data)
    assert len(table) <= 256


def test_rows_that_name_another_directory_are_skipped() -> None:
    table = DeliveredTable()
    table.record(_delivery(stored="../etc/passwd"))
    table.record(_delivery(name="ok", stored="ok"))
    assert len(DeliveredTable.decode(table.encode())) == 1


# Changes: (record or forget, which file, which sender).
changes = st.lists(
    st.tuples(st.booleans(), st.integers(0, 12), st.sampled_from([A, B])), max_size=40
)


def _apply(table: DeliveredTable, change: tuple[bool, int, bytes]) -> bytes:
    """Make ``change`` to ``table``; its journal row."""
    record, n, peer = change
    d = _delivery(peer=peer, name=f"f{n}", stored=f"g{n}", n=n)
    if record:
        table.record(d)
        return journal_row(d)
    table.forget(d.key)
    return forget_row(d.key)


@settings(deadline=None)
@given(changes, st.integers(0, 40), st.integers(1, 8))
def test_a_snapshot_and_its_journal_are_the_live_table(
    steps: list[tuple[bool, int, bytes]], snapshot_at: int, capacity: int
) -> None:
    """Whenever the snapshot was taken, it and the rows appended since make
    the very table the receiver had (same entries, same order)."""
    live = DeliveredTable(capacity)
    snapshot, journal = live.encode(), b""
    for i, change in enumerate(steps):
        if i == snapshot_at:
            snapshot, journal = live.encode(), b""
        journal += _apply(live, change)
    assert DeliveredTable.decode(snapshot, capacity, journal).encode() == live.encode()


@settings(deadline=None)
@given(changes, st.data())
def test_a_journal_cut_short_keeps_every_whole_row_before_the_cut(
    steps: list[tuple[bool, int, bytes]], data: st.DataObject
) -> None:
    """A crash in the middle of an append (or garbage after it): the table
    is the one of the rows whole before it, never a row misread."""
    live = DeliveredTable(8)
    states, rows = [live.encode()], []
    for change in steps:
        rows.append(_apply(live, change))
        states.append(live.encode())
    journal = b"".join(rows)
    cut = data.draw(st.integers(0, len(journal)))
    whole = max(k for k in range(len(rows) + 1) if len(b"".join(rows[:k])) <= cut)
    assert DeliveredTable.decode(b"", 8, journal[:cut]).encode() == states[whole]
    # Whatever follows whole rows and is not a row ends the replay there.
    k = data.draw(st.integers(0, len(rows)))
    garbage = data.draw(st.sampled_from([b"\xc1", b"\x92\x07\xc0", b"\x00" * 3, b"\x91\x01"]))
    tail = garbage + b"".join(rows[k:])
    assert DeliveredTable.decode(b"", 8, b"".join(rows[:k]) + tail).encode() == states[k]
