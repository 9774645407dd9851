"""Stats actor: owns the statistics history (``DATA_DIR/stats.sqlite``).

Mail in: ``StatsRecord`` (a transfer started or ended) and ``StatsSamples``
(the state of each running transfer, every progress report: one message per
sending actor and tick, not one per transfer; a lone ``StatsSample`` is
taken too) from the sender, receiver, msender (one
per receiver) and mreceiver; nothing goes out. The actor keeps a
:class:`~peercrypt.core.sampling.SeriesSampler` per running transfer and
appends only the points it keeps, so a long transfer stores ``O(log d)``
rows.

Writes never hold up a transfer: the movers only ``tell`` (a non-blocking
push), and this actor batches everything it receives into one SQLite
transaction committed every ``FLUSH_INTERVAL`` (WAL, ``synchronous=NORMAL``):
a killed node loses at most that last second. At start, rows a previous run
left "running" become "interrupted". The retention settings are applied at
start, whenever a transfer ends, and every hour.

A history that cannot be opened or written (read-only disk, full disk) is
logged once and counted; the node keeps moving files without it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from peercrypt.core.sampling import Point, SeriesSampler
from peercrypt.history.db import HistoryWriter, Retention, db_path, held_bytes
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.stats_messages import StatsRecord, StatsSample, StatsSamples, unpack

log = logging.getLogger("peercrypt.stats")

FLUSH_INTERVAL = 1.0
FLUSH_POINTS = 2000  # commit sooner when this many points wait
PRUNE_INTERVAL = 3600.0
MAX_OPEN = 4096  # running transfers followed at once (more: recorded without samples)

Key = tuple[str, str, str]  # session, side, peer


class StatsActor(Actor):
    name = "stats"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.writer: HistoryWriter | None = None
        self.open: dict[Key, tuple[int, SeriesSampler]] = {}
        self.last: dict[Key, StatsSample] = {}  # the latest report of each open transfer
        self.pending: list[tuple[int, Point]] = []

    def setup(self) -> None:
        s = self.settings
        if not s.stats_enabled:
            self.facts["history"] = "off"
            return
        path = db_path(s.data_dir)
        try:
            self.writer = HistoryWriter(path)
            interrupted = self.writer.mark_interrupted()
        except sqlite3.Error as exc:
            log.error("statistics history disabled: cannot open %s: %s", path, exc)
            self.facts["history"] = f"unavailable: {exc}"[:200]
            self.writer = None
            return
        if interrupted:
            log.info(
                "%d transfer%s interrupted by the last stop",
                interrupted,
                " was" if interrupted == 1 else "s were",
            )
        self.facts["history"] = str(path)
        self._prune()
        writer = self.writer
        # only while there is something to flush: an idle node does not wake for it
        self.call_every_while(
            FLUSH_INTERVAL, self._flush, lambda: bool(self.pending) or writer.in_transaction
        )
        self.call_every(PRUNE_INTERVAL, self._prune)

    def teardown(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, StatsRecord):
            self._guard(self._on_record, msg)
        elif isinstance(msg, StatsSamples):
            self._guard(self._on_samples, msg)
        elif isinstance(msg, StatsSample):
            self._guard(self._on_sample, msg)
        else:
            super().on_mail(msg)

    def _guard(self, handler: Callable[[Any], None], msg: codec.Message) -> None:
        if self.writer is None:
            return
        try:
            handler(msg)
        except sqlite3.Error as exc:
            self.count("write-errors")
            self.log_limited("statistics history: %s", exc)

    def _on_record(self, r: StatsRecord) -> None:
        assert self.writer is not None
        key = (r.session, r.side, r.peer)
        ident = self.writer.upsert(
            {
                "session": r.session,
                "side": r.side,
                "peer": r.peer,
                "peer_fingerprint": r.peer_fingerprint,
                "mode": r.mode,
                "file": r.file,
                "size": r.size,
                "bytes": r.done_bytes,
                "chunk_size": r.chunk_size,
                "chunks": r.chunks,
                "started": r.started,
                "duration": r.duration,
                "result": r.result,
                "reason": r.reason,
                "retransmits": r.retransmits,
                "params": r.params,
                "stats": r.stats,
            }
        )
        self.count("records")
        entry = self.open.get(key)
        if r.result == "running":
            if entry is None and len(self.open) < MAX_OPEN:
                entry = self.open[key] = (ident, SeriesSampler())
            if entry is not None:  # a resume: what the receiver held did not cross
                entry[1].hold(held_bytes({"size": r.size, "bytes": r.done_bytes, "stats": r.stats}))
            return
        self.open.pop(key, None)
        last = self.last.pop(key, None)
        if entry is not None:
            # The end is always a point: the series reaches the final byte
            # count, with the record's final window/RTT/rate where it has them
            # (a transfer shorter than one sample interval has only this point).
            point = entry[1].offer(
                r.duration,
                r.done_bytes,
                window=int(r.stats.get("window_bytes", last.window if last else 0)),
                rate=float(r.stats.get("rate", last.rate if last else 0.0)),
                rtt=float(r.stats.get("srtt", last.rtt if last else 0.0)),
                credit=last.credit if last else 0,
                final=True,
            )
            if point is not None:
                self.pending.append((ident, point))
        self._prune()  # flushes; keeps the count limit exact as transfers end

    def _on_samples(self, batch: StatsSamples) -> None:
        samples, dropped = unpack(batch)
        self.count("sample-batches")
        self.count("samples", len(samples))
        if dropped:
            self.count("samples-malformed", dropped)
        for s in samples:
            self._on_sample(s)

    def _on_sample(self, s: StatsSample) -> None:
        entry = self.open.get((s.session, s.side, s.peer))
        if entry is None:
            self.count("samples-unknown")
            return
        ident, sampler = entry
        self.last[(s.session, s.side, s.peer)] = s
        point = sampler.offer(
            s.t, s.done_bytes, window=s.window, rate=s.rate, rtt=s.rtt, credit=s.credit
        )
        if point is not None:
            self.pending.append((ident, point))
            if len(self.pending) >= FLUSH_POINTS:
                self._flush()

    def _flush(self) -> None:
        writer = self.writer
        if writer is None:
            return
        try:
            if self.pending:
                by_transfer: dict[int, list[Point]] = {}
                for ident, point in self.pending:
                    by_transfer.setdefault(ident, []).append(point)
                self.pending.clear()
                for ident, points in by_transfer.items():
                    writer.add_points(ident, points)
                    self.count("points", len(points))
            writer.commit()
        except sqlite3.Error as exc:
            self.pending.clear()
            self.count("write-errors")
            self.log_limited("statistics history: %s", exc)

    def _prune(self) -> None:
        if self.writer is None:
            return
        s = self.settings
        self._flush()
        try:
            removed = self.writer.prune(
                Retention(s.stats_keep_days, s.stats_max_transfers), time.time()
            )
        except sqlite3.Error as exc:
            self.log_limited("statistics history: %s", exc)
            return
        if removed:
            self.count("pruned", removed)
