"""A receiving actor's table of deliveries on disk (core/delivered.py): a
snapshot plus a journal of rows in the node's data directory, so a restart
keeps them. The unicast receiver keeps one (``delivered.msgpack``), the
multicast receiver another (``multicast-delivered.msgpack``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from peercrypt.core.delivered import (
    JOURNAL_BYTES,
    JOURNAL_ROWS,
    MAX_JOURNAL_BYTES,
    MAX_TABLE_BYTES,
    DeliveredTable,
    Delivery,
    FileStamp,
    TreeStamp,
    forget_row,
    journal_row,
)
from peercrypt.core.resume import ResumeKey


class Owner(Protocol):
    """What the store needs of its actor: counters and a rate-limited log."""

    def count(self, name: str, n: int = 1) -> None: ...

    def log_limited(self, fmt: str, *args: object) -> None: ...


class DeliveredStore:
    """``table`` and its files ``snapshot`` and ``journal`` in ``data_dir``."""

    def __init__(self, owner: Owner, data_dir: Path, snapshot: str, journal: str) -> None:
        self.owner = owner
        self.table = DeliveredTable()
        self.snapshot_path = data_dir / snapshot
        self.journal_path = data_dir / journal
        self._journal = (0, 0)  # rows and bytes in the journal of deliveries
        self._changes = 0  # of the table, and at which one a snapshot last failed
        self._snapshot_failed: int | None = None

    def _read(self, path: Path, limit: int) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            self.owner.log_limited("cannot read %s: %s", path, exc)
            return b""

    def load(self) -> None:
        snapshot = self._read(self.snapshot_path, MAX_TABLE_BYTES + 1)
        journal = self._read(self.journal_path, MAX_JOURNAL_BYTES)
        self.table = DeliveredTable.decode(snapshot, journal=journal)
        if journal:  # a fresh snapshot: rows are appended to a whole journal only
            self.save()

    def record(self, delivery: Delivery) -> None:
        """``delivery`` happened: in the table and on disk."""
        self.table.record(delivery)
        self.note(journal_row(delivery))

    def forget(self, key: ResumeKey) -> None:
        """The entry of ``key`` goes, on disk too (a restart must not bring it back)."""
        if self.table.forget(key):
            self.note(forget_row(key))

    def lookup(
        self,
        key: ResumeKey,
        stamp_of: Callable[[str], FileStamp | None],
        tree_stamp_of: Callable[[tuple[str, ...]], TreeStamp | None] = lambda tops: None,
    ) -> Delivery | None:
        """The delivery an offer of ``key`` repeats, if its file (or folder:
        ``tree_stamp_of``) is still the one stored; an entry whose file is
        gone or changed is forgotten, in the journal too (a restart must not
        bring it back)."""
        known = key in self.table
        prior = self.table.lookup(key, stamp_of, tree_stamp_of)
        if prior is None and known:
            self.note(forget_row(key))
        return prior

    def note(self, row: bytes) -> None:
        """Persist one change of the table: a row appended to the journal
        (no fsync: a killed process loses nothing, a power cut at worst the
        last rows, each costing a second copy of a file); a new snapshot once
        the journal is long, or if it cannot be appended to. A snapshot that
        cannot be written (a full disk) leaves the row to the journal, and
        the next is tried only ``JOURNAL_ROWS`` changes later: each try
        rewrites the whole table, which the journal is there to avoid."""
        self._changes += 1
        rows, size = self._journal
        if (rows >= JOURNAL_ROWS or size >= JOURNAL_BYTES) and self._snapshot():
            return
        if size + len(row) > MAX_JOURNAL_BYTES or not self._append(row):
            self._snapshot()
            return
        self._journal = (rows + 1, size + len(row))

    def _snapshot(self) -> bool:
        """A new snapshot, unless one failed fewer than ``JOURNAL_ROWS`` changes ago."""
        failed = self._snapshot_failed
        if failed is not None and self._changes - failed < JOURNAL_ROWS:
            return False
        if self.save():
            self._snapshot_failed = None
            return True
        self._snapshot_failed = self._changes
        self.owner.count("delivered-snapshot-failed")
        return False

    def _append(self, row: bytes) -> bool:
        """Append ``row`` to the journal, whole (a row cut short is where a
        replay stops: it is not counted as appended)."""
        path = self.journal_path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                written = os.write(fd, row)
            finally:
                os.close(fd)
        except OSError as exc:
            self.owner.log_limited("cannot append to %s: %s", path, exc)
            return False
        return written == len(row)

    def save(self) -> bool:
        """A new snapshot of the whole table, atomically (a crash leaves the
        old one or the new one), then an empty journal; False if it failed."""
        path = self.snapshot_path
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                data = memoryview(self.table.encode())
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_path)
        except OSError as exc:
            self.owner.log_limited("cannot save %s: %s", path, exc)
            return False
        self._journal = (0, 0)
        return True
