"""The table of delivered files (peercrypt/core/delivered.py): bounded, keyed
by the proven sender, valid only while the stored file is unchanged, and it
survives a restart (a snapshot and its journal) whatever is on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.delivered import (
    MAX_TOPS_BYTES,
    MAX_TREE_ENTRIES,
    TREE_DIGEST_BYTES,
    DeliveredTable,
    Delivery,
    FileStamp,
    StampRow,
    TreeStamp,
    WalkBudget,
    forget_row,
    journal_row,
    tree_stamp,
)
from peercrypt.core.resume import ResumeKey

A, B = b"a" * 32, b"b" * 32
SOURCE = b"s" * 32


def _delivery(
    peer: bytes = A, name: str = "f.bin", stored: str = "f.bin", n: int = 0, tree: bool = False
) -> Delivery:
    key = ResumeKey(peer, name, 1000 + n, 64, SOURCE)
    stamp: FileStamp | TreeStamp = FileStamp(1, 100 + n, 1000 + n, 5)
    if tree:  # a folder stored as ``stored``
        stamp = TreeStamp((stored,), 1 + n, bytes([n % 256]) * TREE_DIGEST_BYTES)
    return Delivery(key, stored, bytes([n % 256]) * 32, stamp, 1.0)


def test_a_repeat_is_found_while_the_stored_file_is_unchanged() -> None:
    table = DeliveredTable()
    d = _delivery()
    table.record(d)
    assert table.lookup(d.key, _files_of(d)) == d
    # Another identity offering the very same file learns nothing: no match.
    other = ResumeKey(B, d.key.name, d.key.size, d.key.chunk_size, d.key.source)
    assert table.lookup(other, _files_of(d)) is None
    assert table.lookup(d.key, _files_of(d)) == d


def test_a_repeat_with_another_chunk_size_is_the_same_file() -> None:
    """A re-send capped by ``-r`` (or a node's share) cuts other chunks: the
    same file, found; only the file's identity keys the table."""
    table = DeliveredTable()
    d = _delivery()
    table.record(d)
    other = ResumeKey(A, d.key.name, d.key.size, d.key.chunk_size * 4, d.key.source)
    assert other in table
    assert table.lookup(other, _files_of(d)) == d
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
        assert table.lookup(d.key, _files_of(d)) == d


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
        assert table.lookup(d.key, _files_of(d)) == d
    # The flooder keeps its latest deliveries in the room left.
    newest = _delivery(peer=B, name=f"b{flood - 1}", stored=f"b{flood - 1}", n=flood - 1)
    assert table.lookup(newest.key, _files_of(newest)) == newest


@settings(deadline=None)
@given(st.lists(st.integers(0, 40), max_size=20))
def test_a_restart_keeps_the_table(ns: list[int]) -> None:
    table = DeliveredTable(8)
    for n in ns:
        table.record(_delivery(name=f"f{n}", stored=f"g{n}", n=n, tree=n % 2 == 0))
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
    d = _delivery(peer=peer, name=f"f{n}", stored=f"g{n}", n=n, tree=n % 3 == 0)
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


@settings(deadline=None, max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["record", "forget", "gone"]),
            st.integers(0, 12),
            st.sampled_from([A, B, b"c" * 32]),
        )
    ),
    st.integers(1, 8),
)
def test_eviction_is_the_oldest_entry_of_the_identity_holding_most(
    steps: list[tuple[str, int, bytes]], capacity: int
) -> None:
    """Against a model that counts the whole table at each eviction (what
    the table kept counts as entries come and go): the same entries, in the
    same order, after any records, forgets and lookups of a stored copy that
    is gone (which forget its entry)."""
    table = DeliveredTable(capacity)
    model: list[tuple[bytes, str]] = []  # (identity, file), oldest first
    for kind, n, peer in steps:
        if kind == "gone":
            d = _delivery(peer=peer, name=f"f{n}", stored=f"g{n}", n=n, tree=n % 3 == 0)
            assert table.lookup(d.key, lambda name: None) is None
        else:
            _apply(table, (kind == "record", n, peer))
        entry = (peer, f"f{n}")
        if entry in model:
            model.remove(entry)
        if kind != "record":
            continue
        model.append(entry)
        while len(model) > capacity:
            counts = {p: sum(1 for q, _ in model if q == p) for p, _ in model}
            most = max(counts.values())
            model.remove(next(e for e in model if counts[e[0]] == most))
    kept = [(d.key.peer, d.key.name) for d in table.entries()]
    assert kept == model


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


# -- folders -------------------------------------------------------------------------


def _rows(n: int, top: str = "album") -> list[StampRow]:
    """A stored folder ``top`` of ``n - 1`` files, as its walk gives it."""
    return [((top,), 0o40755, 1, 10, 4096, 7, 8)] + [
        ((top, f"f{i}"), 0o100644, 1, 11 + i, i, 100 + i, 200 + i) for i in range(n - 1)
    ]


def test_a_folder_is_found_while_every_entry_in_it_is_unchanged() -> None:
    stamp = tree_stamp(["album"], _rows(5))
    assert stamp is not None and stamp.stored_as == "album" and stamp.entries == 5
    key = ResumeKey(A, "album", 5000, 64, SOURCE)
    d = Delivery(key, stamp.stored_as, b"h" * 32, stamp, 1.0)
    table = DeliveredTable()
    table.record(d)
    no_file = _no_file  # a folder's entry never asks for a file's stamp
    assert table.lookup(key, no_file, lambda tops: stamp) == d
    # Another identity, the very same folder: nothing.
    other = ResumeKey(B, "album", 5000, 64, SOURCE)
    assert table.lookup(other, no_file, lambda tops: stamp) is None
    # A file of it written to (its mtime): a fresh transfer, the entry forgotten.
    rows = _rows(5)
    rows[3] = (*rows[3][:5], rows[3][5] + 1, rows[3][6])
    edited = tree_stamp(["album"], rows)
    assert edited is not None and edited != stamp
    assert table.lookup(key, no_file, lambda tops: edited) is None
    assert len(table) == 0
    # Gone (or no longer one the table remembers).
    table.record(d)
    assert table.lookup(key, no_file, lambda tops: None) is None
    assert len(table) == 0
    # A lookup that knows no folders (the default) never answers one.
    table.record(d)
    assert table.lookup(key, no_file) is None


@settings(deadline=None)
@given(st.integers(2, 30), st.data())
def test_any_change_to_a_stored_folder_changes_its_stamp(n: int, data: st.DataObject) -> None:
    """One field of one entry changed, an entry added, removed or moved: not
    the stamp it had."""
    rows = _rows(n)
    before = tree_stamp(["album"], rows)
    assert before is not None and before == tree_stamp(["album"], list(rows))
    changed = list(rows)
    i = data.draw(st.integers(0, n - 1))
    how = data.draw(st.sampled_from(["field", "add", "remove", "swap", "rename"]))
    if how == "field":
        f = data.draw(st.integers(1, 6))
        row = list(changed[i])
        row[f] = int(row[f]) + data.draw(st.integers(1, 2**40))  # type: ignore[call-overload]
        changed[i] = tuple(row)  # type: ignore[assignment]
    elif how == "add":
        changed.insert(i + 1, (("album", "zz"), 0o100644, 1, 99, 0, 0, 0))
    elif how == "remove":
        del changed[max(1, i)]
    elif how == "swap" and n > 2:
        j = 1 + (i % (n - 2))
        changed[j], changed[j + 1] = changed[j + 1], changed[j]
    else:
        changed[i] = ((*changed[i][0][:-1], changed[i][0][-1] + "x"), *changed[i][1:])
    if changed != rows:
        assert tree_stamp(["album"], changed) != before


def test_a_folder_past_the_bound_is_not_remembered_and_not_walked_further() -> None:
    assert tree_stamp(["album"], _rows(MAX_TREE_ENTRIES)) is not None
    assert tree_stamp(["album"], _rows(MAX_TREE_ENTRIES + 1)) is None
    taken = 0

    def endless() -> Iterator[StampRow]:
        nonlocal taken
        while True:
            taken += 1
            yield (("album", str(taken)), 0o100644, 1, taken, 0, 0, 0)

    assert tree_stamp(["album"], endless()) is None
    assert taken == MAX_TREE_ENTRIES + 1
    # Nothing under it, or names no inbox entry can have, or too long together.
    assert tree_stamp(["album"], []) is None
    for tops in ([], ["a/b"], [".."], ["x" * 600, "y" * 600]):
        assert tree_stamp(tops, _rows(3)) is None
    assert tree_stamp(["x" * (MAX_TOPS_BYTES - 3), "y"], _rows(3)) is not None
    assert tree_stamp(["é" * (MAX_TOPS_BYTES // 2 + 1)], _rows(3)) is None  # bytes, not characters


def test_a_folders_row_that_does_not_hold_together_is_skipped() -> None:
    good = _delivery(name="album", stored="album", tree=True)
    table = DeliveredTable()
    table.record(good)
    for stored, stamp in (
        ("album", TreeStamp(("other",), 1, b"d" * TREE_DIGEST_BYTES)),  # not the names stored
        ("album", TreeStamp(("album",), MAX_TREE_ENTRIES + 1, b"d" * TREE_DIGEST_BYTES)),
        ("album", TreeStamp(("album",), 1, b"d" * (TREE_DIGEST_BYTES - 1))),
        ("album, ..", TreeStamp(("album", ".."), 1, b"d" * TREE_DIGEST_BYTES)),
    ):
        bad = Delivery(ResumeKey(B, "album", 1, 64, SOURCE), stored, b"h" * 32, stamp, 1.0)
        table.record(bad)
        assert len(DeliveredTable.decode(table.encode())) == 1, stamp
        table.forget(bad.key)
    found = DeliveredTable.decode(table.encode()).lookup(good.key, _no_file, _tree_of(good))
    assert found == good


def _no_file(name: str) -> FileStamp | None:
    raise AssertionError(f"a folder's entry asked for a file's stamp ({name})")


def _files_of(*ds: Delivery) -> Callable[[str], FileStamp | None]:
    """What the inbox holds: the files of ``ds``, unchanged."""
    held = {d.stored_as: d.stamp for d in ds if isinstance(d.stamp, FileStamp)}
    return held.get


def _tree_of(*ds: Delivery) -> Callable[[tuple[str, ...]], TreeStamp | None]:
    """What the inbox holds: the folders of ``ds``, unchanged."""
    held = {d.stamp.tops: d.stamp for d in ds if isinstance(d.stamp, TreeStamp)}
    return held.get


def test_walks_of_stored_folders_take_at_most_their_share_of_the_loop() -> None:
    """Every walk is charged in full; once the saved-up time is spent, walks
    are let through only as the share of each second refills it (a member
    re-offering its folder in a loop gets fresh transfers, not the receiver's
    loop)."""
    budget = WalkBudget(0.0, share=0.1, burst=1.0)
    assert budget.allows(0.0)
    budget.charge(0.6, 0.0)
    assert budget.allows(0.0)
    budget.charge(0.6, 0.0)  # more than is left: a debt of 0.2 s
    assert not budget.allows(0.0)
    assert not budget.allows(1.99)  # 0.199 s of it refilled
    assert budget.allows(2.01)
    # Walks of 4 ms, each as soon as it is let through: the share, long run.
    now, spent = 2.01, 0.0
    while now < 100.0:
        if budget.allows(now):
            budget.charge(0.004, now)
            spent += 0.004
        now += 0.001
    assert spent <= 0.1 * (now - 2.01) + 0.004 + 1e-9, (spent, now)
    assert spent >= 0.1 * (now - 2.01) - 0.01, (spent, now)
    # Idle, it saves up no more than its burst.
    now += 1000.0
    budget.charge(1.0, now)
    assert not budget.allows(now)
