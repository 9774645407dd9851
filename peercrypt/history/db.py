"""The statistics history: one SQLite database in the data directory.

One schema for every mode and both sides (``DATA_DIR/stats.sqlite``):

- ``transfers``: one row per transfer and side, and per receiver of a
  multicast session. ``id`` is what ``peercrypt stats`` shows; ``session``
  (the transfer id, hex) joins the two ends of a transfer on one machine and
  the receivers of one multicast session. ``result`` is "running" while the
  node works on it, "interrupted" if the node stopped before it ended (found
  at the next start), "ok", or a failure code (see :mod:`peercrypt.errors`).
  ``params`` and ``stats`` are JSON objects (the mode's parameters; srtt,
  timeouts, window decreases...). ``started`` is Unix seconds.
- ``samples``: the bounded-rate time series of each transfer
  (:mod:`peercrypt.core.sampling`): ``t`` seconds since its start, bytes done,
  throughput (bytes/s), AIMD window (bytes), rate (bytes/s), smoothed RTT
  (s), credit (chunks); 0 where a mode has none.

The node's ``stats`` actor is the only writer (WAL, ``synchronous=NORMAL``:
a killed node loses nothing committed; commits are batched by the actor).
Anyone may read it while the node runs, or without a node, read-only
(:func:`open_reader`), with this module or their own SQLite tools.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peercrypt.core.address import dialled_target
from peercrypt.core.sampling import Point

DB_FILE = "stats.sqlite"
SCHEMA_VERSION = 1

TRANSFER_COLUMNS = (
    "id",
    "session",
    "side",
    "peer",
    "peer_fingerprint",
    "mode",
    "file",
    "size",
    "bytes",
    "chunk_size",
    "chunks",
    "started",
    "duration",
    "result",
    "reason",
    "retransmits",
    "params",
    "stats",
)
SAMPLE_COLUMNS = ("t", "bytes", "throughput", "window", "rate", "rtt", "credit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('send', 'receive')),
    peer TEXT NOT NULL,
    peer_fingerprint TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    chunk_size INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    duration REAL NOT NULL DEFAULT 0,
    result TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    retransmits INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    stats TEXT NOT NULL DEFAULT '{}',
    UNIQUE (session, side, peer)
);
CREATE INDEX IF NOT EXISTS transfers_started ON transfers (started);
CREATE TABLE IF NOT EXISTS samples (
    transfer INTEGER NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    t REAL NOT NULL,
    bytes INTEGER NOT NULL,
    throughput REAL NOT NULL,
    window INTEGER NOT NULL DEFAULT 0,
    rate REAL NOT NULL DEFAULT 0,
    rtt REAL NOT NULL DEFAULT 0,
    credit INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (transfer, t)
) WITHOUT ROWID;
"""


class HistoryError(Exception):
    """The history cannot be read (missing, not a database, unknown id...)."""


@dataclass(frozen=True)
class Retention:
    """What the history keeps: transfers younger than ``days`` (0: no age
    limit), the newest ``max_transfers`` of them (0: no count limit). Running
    transfers are neither counted nor removed."""

    days: float = 90.0
    max_transfers: int = 10_000


# A transfer's record, written four times per send (running and the end,
# on both sides): its statement made once, and one encoder for its two JSON
# columns (``json.dumps`` with an option makes an encoder per call: 11% of
# the stats actor's time with 64 sends at once). The same text as before.
_UPSERTED = tuple(c for c in TRANSFER_COLUMNS if c != "id")
_KEPT = ("session", "side", "peer", "started")
_UPSERT = (
    f"INSERT INTO transfers ({', '.join(_UPSERTED)}) "
    f"VALUES ({', '.join(f':{c}' for c in _UPSERTED)}) "
    "ON CONFLICT (session, side, peer) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPSERTED if c not in _KEPT)
    + " RETURNING id"
)
_JSON = json.JSONEncoder(sort_keys=True)


def held_bytes(row: dict[str, Any]) -> int:
    """Bytes of the file the receiver held when the transfer began (a
    resume, or a file delivered before): they did not cross in this
    transfer. A receiving side's row records them (``stats.held_bytes``), a
    sender's by its count of chunks the receiver said it held; a receiving
    row recorded before ``held_bytes`` was counts none. ``row``: ``size``,
    ``bytes`` (done) and ``stats``."""
    stats = row["stats"]
    if "held_bytes" in stats:
        held = int(stats["held_bytes"])
    else:
        chunks, resumed = stats.get("chunks", 0), stats.get("resumed_chunks", 0)
        held = int(row["size"] * resumed / chunks) if chunks > 0 and resumed > 0 else 0
    return max(0, min(int(row["bytes"]), held))


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_FILE


class HistoryWriter:
    """The writing side, used by the stats actor only (one thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.path = path
        self._in_tx = False
        # At least the number of ended transfers in the table (None: not
        # counted yet): the count limit needs no scan while it is under it.
        self._ended: int | None = None

    @property
    def in_transaction(self) -> bool:
        """Whether writes wait for :meth:`commit`."""
        return self._in_tx

    def begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self._in_tx = False
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                self.conn.rollback()
                self._ended = None  # what was deleted may be back: count again
                raise

    def close(self) -> None:
        self.commit()
        self.conn.close()

    def mark_interrupted(self) -> int:
        """Transfers still "running" from a previous run of the node; what
        they moved and for how long, as far as their samples tell (their
        records said only what was known at their start)."""
        self.begin()
        cur = self.conn.execute(
            "UPDATE transfers SET result = 'interrupted', "
            "reason = 'the node stopped before the transfer ended', "
            "bytes = MAX(bytes, COALESCE("
            "(SELECT MAX(s.bytes) FROM samples s WHERE s.transfer = transfers.id), 0)), "
            "duration = MAX(duration, COALESCE("
            "(SELECT MAX(s.t) FROM samples s WHERE s.transfer = transfers.id), 0)) "
            "WHERE result = 'running'"
        )
        self.commit()
        return cur.rowcount

    def upsert(self, row: dict[str, Any]) -> int:
        """Insert or update the transfer named by (session, side, peer);
        returns its id. ``started`` is kept from the first record."""
        self.begin()
        values = {c: row[c] for c in _UPSERTED}
        values["params"] = _JSON.encode(values["params"])
        values["stats"] = _JSON.encode(values["stats"])
        cur = self.conn.execute(_UPSERT, values)
        (ident,) = cur.fetchone()
        if values["result"] != "running" and self._ended is not None:
            self._ended += 1  # one more at most (it may have ended before)
        return int(ident)

    def add_points(self, transfer: int, points: Iterable[Point]) -> None:
        self.begin()
        self.conn.executemany(
            "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (transfer, p.t, p.bytes, p.throughput, p.window, p.rate, p.rtt, p.credit)
                for p in points
            ],
        )

    def prune(self, retention: Retention, now: float) -> int:
        """Apply the retention settings; returns the transfers removed.
        Running transfers are never removed.

        Both deletions walk the index on ``started`` (the oldest rows first):
        the count limit is checked against an upper bound of the ended
        transfers kept since the last count, and counted again only once
        that bound passes the limit. (Deleting all but the newest N by
        ``NOT IN`` sorted the whole table on every transfer's end: 2.4 ms with
        500 rows, 18-29 ms with 3,400, in the stats actor at every end.)"""
        self.begin()
        removed = 0
        if retention.days > 0:
            cur = self.conn.execute(
                "DELETE FROM transfers WHERE started < ? AND result != 'running'",
                (now - retention.days * 86400,),
            )
            removed += cur.rowcount
            if self._ended is not None:
                self._ended -= cur.rowcount
        if retention.max_transfers > 0:
            if self._ended is None or self._ended > retention.max_transfers:
                (self._ended,) = self.conn.execute(
                    "SELECT COUNT(*) FROM transfers WHERE result != 'running'"
                ).fetchone()
            excess = self._ended - retention.max_transfers
            if excess > 0:
                cur = self.conn.execute(
                    "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers "
                    "WHERE result != 'running' ORDER BY started ASC, id ASC LIMIT ?)",
                    (excess,),
                )
                removed += cur.rowcount
                self._ended -= cur.rowcount
        self.commit()
        return removed


# -- reading (the CLI, scripts, tests) ------------------------------------------------


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection; works without the node. Raises HistoryError."""
    if not path.is_file():
        raise HistoryError(f"no statistics recorded yet ({path} does not exist)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM transfers LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"cannot read {path}: {exc}") from None
    return conn


# A running transfer's row records what was known when it started (and at
# each attempt); what it has moved so far and for how long are its samples'
# (statistics.md: the duration "until now while running"), as an
# interrupted one's are once marked (:meth:`HistoryWriter.mark_interrupted`).
_SO_FAR = {
    column: (
        f"CASE WHEN result = 'running' THEN MAX({column}, COALESCE("
        f"(SELECT MAX(s.{sample}) FROM samples s WHERE s.transfer = transfers.id), 0)) "
        f"ELSE {column} END AS {column}"
    )
    for column, sample in (("bytes", "bytes"), ("duration", "t"))
}
_SELECT = "SELECT " + ", ".join(_SO_FAR.get(c, c) for c in TRANSFER_COLUMNS) + " FROM transfers"


def _row(r: sqlite3.Row) -> dict[str, Any]:
    row = {c: r[c] for c in TRANSFER_COLUMNS}
    row["params"] = json.loads(row["params"])
    row["stats"] = json.loads(row["stats"])
    return row


def list_transfers(
    conn: sqlite3.Connection,
    *,
    peer: str = "",
    mode: str = "",
    since: float = 0.0,
    failed: bool = False,
    limit: int = 0,
) -> list[dict[str, Any]]:
    """Transfers, oldest first; ``peer`` matches the address or a fingerprint
    prefix; ``failed`` keeps results other than "ok" and "running"."""
    where, args = ["started >= ?"], list[object]([since])
    if peer:
        # An address in any spelling of the same endpoint (localhost, 127.1).
        conn.create_function("receiver_key", 1, _receiver_key, deterministic=True)
        where.append(
            "(receiver_key(peer) = ?"
            " OR (peer_fingerprint != '' AND peer_fingerprint LIKE ? || '%'))"
        )
        args += [_receiver_key(peer), peer]
    if mode:
        where.append("mode = ?")
        args.append(mode)
    if failed:
        where.append("result NOT IN ('ok', 'running')")
    sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id"
    if limit > 0:
        sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY id"
    return [_row(r) for r in conn.execute(sql, args)]


def _receiver_key(text: str) -> str:
    """``HOST:PORT`` as one key per endpoint (core/address.py ``dialled_target``);
    other text as it is."""
    try:
        return dialled_target(text)
    except ValueError:
        return text


def get_transfer(conn: sqlite3.Connection, ident: int) -> dict[str, Any]:
    r = conn.execute(f"{_SELECT} WHERE id = ?", (ident,)).fetchone()
    if r is None:
        raise HistoryError(f"no transfer {ident} in the statistics history")
    return _row(r)


def newest_id(conn: sqlite3.Connection, back: int = 0) -> int:
    """The id of the transfer recorded last (``back``: so many before it)."""
    r = conn.execute(
        "SELECT id FROM transfers ORDER BY started DESC, id DESC LIMIT 1 OFFSET ?", (back,)
    ).fetchone()
    if r is None:
        count = conn.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        held = f"only {count} transfer(s)" if count else "no transfer"
        raise HistoryError(f"{held} in the statistics history")
    return int(r[0])


def get_samples(conn: sqlite3.Connection, ident: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE transfer = ? ORDER BY t", (ident,)
    )
    return [{c: r[c] for c in SAMPLE_COLUMNS} for r in cur]


def get_transfers(conn: sqlite3.Connection, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The transfers ``ids`` (every one if empty), each with its ``samples``."""
    rows = [get_transfer(conn, i) for i in ids] if ids else list_transfers(conn)
    for row in rows:
        row["samples"] = get_samples(conn, row["id"])
    return rows
