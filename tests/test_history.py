"""The statistics history without sockets: the bounded-rate sampler (pure,
property-tested) and the SQLite store (writer, read-only reader, retention)."""

from __future__ import annotations

import itertools
import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.sampling import SLACK, Point, SeriesSampler, sample_due
from peercrypt.history.db import (
    HistoryError,
    HistoryWriter,
    Retention,
    db_path,
    get_samples,
    get_transfer,
    get_transfers,
    list_transfers,
    open_reader,
)
from peercrypt.history.export import ExportError, parse_csv, parse_json, to_csv, to_json
from peercrypt.history.plot import (
    NO_LIMIT_NOTE,
    SMOOTH_MAX,
    SMOOTH_SECONDS,
    limit_series,
    plot,
    smooth_span,
    smoothed,
)
from peercrypt.testing.nodes import run_cli

MiB = 1024 * 1024


def row(session: str, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "session": session,
        "side": "send",
        "peer": "127.0.0.1:7400",
        "peer_fingerprint": "",
        "mode": "normal",
        "file": "/tmp/f.bin",
        "size": 100,
        "bytes": 0,
        "chunk_size": 10,
        "chunks": 10,
        "started": 1000.0,
        "duration": 0.0,
        "result": "running",
        "reason": "",
        "retransmits": 0,
        "params": {},
        "stats": {},
    }
    base.update(over)
    return base


# -- the sampler -------------------------------------------------------------------


def run(reports: list[tuple[float, int]], sampler: SeriesSampler) -> list[Point]:
    kept = [p for t, done in reports if (p := sampler.offer(t, done)) is not None]
    t, done = reports[-1]
    final = sampler.offer(t + 0.01, done, final=True)
    return kept + ([final] if final else [])


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.001, 5.0), st.integers(0, 10**7)), min_size=1, max_size=400
    ),
    interval=st.floats(0.05, 2.0),
    per_level=st.integers(1, 50),
    held=st.sampled_from([0, 1, 10**8]),
)
def test_sampler_keeps_spaced_points_whose_throughput_integrates_to_the_bytes(
    steps: list[tuple[float, int]], interval: float, per_level: int, held: int
) -> None:
    """A resume's ``held`` bytes are done but did not move: not in the sum."""
    t, done, reports = 0.0, held, []
    for dt, more in steps:
        t, done = t + dt, done + more
        reports.append((t, done))
    sampler = SeriesSampler(interval, per_level)
    sampler.hold(held)
    points = run(reports, sampler)
    previous = 0.0
    for i, p in enumerate(points[:-1]):
        # Interval of the level this point was kept in (it doubles every per_level points).
        level_interval = interval * 2 ** (i // per_level)
        assert p.t - previous >= level_interval * (1 - SLACK) - 1e-9
        previous = p.t
    moved = sum(
        p.throughput * (p.t - prev)
        for p, prev in zip(points, [0.0] + [q.t for q in points[:-1]], strict=True)
    )
    assert math.isclose(moved, reports[-1][1] - held, rel_tol=1e-6, abs_tol=1e-3)
    assert points[-1].bytes == reports[-1][1]


def test_ten_hours_of_reports_every_tenth_second_keep_a_few_thousand_points() -> None:
    sampler = SeriesSampler()
    kept = sum(1 for i in range(1, 360_001) if sampler.offer(i * 0.1, i * 1000) is not None)
    assert 4000 < kept < 6000, kept


def test_sampler_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        SeriesSampler(0)
    with pytest.raises(ValueError):
        SeriesSampler(1, 0)


# -- the store ---------------------------------------------------------------------


def test_a_record_updates_its_row_and_keeps_its_start(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path / "h.sqlite")
    ident = w.upsert(row("aa"))
    same = w.upsert(
        row("aa", started=2000.0, result="ok", bytes=100, duration=1.5, stats={"srtt": 0.01})
    )
    other = w.upsert(row("aa", side="receive"))
    w.add_points(ident, [Point(0.5, 50, 100.0, rtt=0.01), Point(1.0, 100, 100.0)])
    w.commit()
    assert same == ident and other != ident
    conn = open_reader(tmp_path / "h.sqlite")
    got = get_transfer(conn, ident)
    assert (got["started"], got["result"], got["bytes"], got["stats"]) == (
        1000.0,
        "ok",
        100,
        {"srtt": 0.01},
    )
    assert [s["bytes"] for s in get_samples(conn, ident)] == [50, 100]


def test_the_reader_cannot_write_and_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with pytest.raises(HistoryError, match="no statistics recorded yet"):
        open_reader(path)
    HistoryWriter(path).close()
    conn = open_reader(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM transfers")
    with pytest.raises(HistoryError, match="no transfer 7"):
        get_transfer(conn, 7)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistoryError, match="cannot read"):
        open_reader(tmp_path / "junk.sqlite")


def running_and_ended(path: Path, last: float) -> tuple[HistoryWriter, int, int]:
    """A history with a running row ("aa": 7000 bytes at ``last`` s in its
    samples, 0 in its record) and an ended one ("bb": 100 bytes in 1.5 s,
    whose later sample says more: an ended row keeps its own record)."""
    w = HistoryWriter(path)
    running = w.upsert(row("aa"))
    w.add_points(running, [Point(0.5, 1000, 2000.0), Point(last, 7000, 2300.0)])
    ended = w.upsert(row("bb", result="cancelled", bytes=100, duration=1.5))
    w.add_points(ended, [Point(2.0, 5000, 1.0)])
    return w, running, ended


def test_running_rows_of_a_previous_run_become_interrupted(tmp_path: Path) -> None:
    w, _, _ = running_and_ended(tmp_path / "h.sqlite", 3.02)
    w.commit()
    w.conn.close()  # as if killed: no clean close
    again = HistoryWriter(tmp_path / "h.sqlite")
    assert again.mark_interrupted() == 1
    rows = {r["session"]: r for r in list_transfers(open_reader(again.path))}
    assert {k: r["result"] for k, r in rows.items()} == {"aa": "interrupted", "bb": "cancelled"}
    # What it moved and for how long, from its samples (its record was its start's).
    assert (rows["aa"]["bytes"], rows["aa"]["duration"]) == (7000, 3.02)
    assert (rows["bb"]["bytes"], rows["bb"]["duration"]) == (100, 1.5)


def test_a_running_row_reads_what_its_samples_moved_so_far(tmp_path: Path) -> None:
    # Its record is its start's (0 bytes, 0 s); `stats list`, `show` and
    # `plot` read what it has moved so far and for how long from its samples.
    w, running, ended = running_and_ended(tmp_path / "h.sqlite", 35.79)
    quiet = w.upsert(row("cc"))  # running, no sample yet
    w.commit()
    conn = open_reader(w.path)
    rows = {r["session"]: r for r in list_transfers(conn)}
    assert (rows["aa"]["bytes"], rows["aa"]["duration"]) == (7000, 35.79)
    assert (rows["bb"]["bytes"], rows["bb"]["duration"]) == (100, 1.5)
    assert (rows["cc"]["bytes"], rows["cc"]["duration"]) == (0, 0.0)
    assert rows["aa"]["result"] == "running"
    shown = get_transfer(conn, running)
    assert (shown["bytes"], shown["duration"]) == (7000, 35.79)
    assert list_transfers(conn, limit=1)[0]["id"] == quiet
    assert [r["bytes"] for r in get_transfers(conn, [running, ended])] == [7000, 100]


def test_retention_by_age_and_count_never_removes_running(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path / "h.sqlite")
    day = 86400.0
    now = 100 * day
    w.upsert(row("old", started=now - 10 * day, result="ok"))
    w.upsert(row("old-running", started=now - 10 * day))
    for i in range(5):
        ident = w.upsert(row(f"new{i}", started=now - i, result="failed"))
        w.add_points(ident, [Point(1.0, 1, 1.0)])
    w.commit()
    assert w.prune(Retention(days=5, max_transfers=0), now) == 1
    assert w.prune(Retention(days=0, max_transfers=3), now) == 2
    left = {r["session"] for r in list_transfers(open_reader(w.path))}
    assert left == {"old-running", "new0", "new1", "new2"}
    # Samples go with their transfer.
    assert w.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 3


def test_list_filters(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path / "h.sqlite")
    w.upsert(row("a", mode="aimd", result="ok", started=10.0))
    w.upsert(row("b", peer="10.0.0.2:7400", result="timeout", started=20.0))
    w.upsert(row("c", side="receive", peer="abcd-efgh", peer_fingerprint="abcd-efgh", started=30.0))
    w.commit()
    conn = open_reader(w.path)

    def sessions(**kw: object) -> list[str]:
        return [r["session"] for r in list_transfers(conn, **kw)]  # type: ignore[arg-type]

    assert sessions() == ["a", "b", "c"]
    assert sessions(mode="aimd") == ["a"]
    assert sessions(failed=True) == ["b"]
    assert sessions(peer="10.0.0.2:7400") == ["b"]
    assert sessions(peer="127.0.0.1:7400") == ["a"]  # row(): its peer
    assert sessions(peer="localhost:7400") == ["a"]  # another spelling of it
    assert sessions(peer="[::1]:7400") == ["a"]
    assert sessions(peer="localhost:7401") == []
    assert sessions(peer="abcd") == ["c"]
    assert sessions(peer="abcd-efgh") == ["c"]  # no address: as it is
    assert sessions(since=15.0) == ["b", "c"]
    assert sessions(limit=2) == ["b", "c"]


# -- export and plot ---------------------------------------------------------------


def recorded(tmp_path: Path) -> list[dict[str, object]]:
    """Two transfers with awkward text (commas, quotes, newlines, unicode)."""
    w = HistoryWriter(tmp_path / "h.sqlite")
    a = w.upsert(row("aa", mode="aimd", file='/tmp/a, "b"\nc ü.bin', params={"window_kb": "4096"}))
    w.add_points(
        a,
        [Point(0.1, 10, 100.0, window=4096, rtt=0.0123), Point(0.3, 100, 450.0, window=8192)],
    )
    b = w.upsert(row("bb", side="receive", result="hash-mismatch", reason="x,y", duration=1 / 3))
    w.add_points(b, [Point(1 / 3, 7, 21.000000000000004, credit=16)])
    w.commit()
    return get_transfers(open_reader(w.path), [])


def test_json_export_parses_back_to_the_same_rows(tmp_path: Path) -> None:
    rows = recorded(tmp_path)
    assert parse_json(to_json(rows)) == rows
    with pytest.raises(ExportError, match="not JSON"):
        parse_json("{")
    with pytest.raises(ExportError, match="not a list"):
        parse_json('{"id": 1}')


def test_csv_exports_parse_back_to_the_same_rows(tmp_path: Path) -> None:
    rows = recorded(tmp_path)
    transfers = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
    assert parse_csv(to_csv(rows)) == transfers
    samples = [{"transfer": r["id"], **s} for r in rows for s in r["samples"]]  # type: ignore[attr-defined]
    assert parse_csv(to_csv(rows, "samples"), "samples") == samples
    with pytest.raises(ExportError, match="header"):
        parse_csv(to_csv(rows), "samples")
    with pytest.raises(ExportError, match="line 2 has 2 fields"):
        parse_csv(to_csv(rows).split("\n")[0] + "\n1,2\n")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_are_valid_png_and_svg(tmp_path: Path) -> None:
    rows = recorded(tmp_path)
    width, height = png_size(plot(rows[:1], tmp_path / "one.png"))
    assert width > 800 and height > 600
    assert png_size(plot(rows, tmp_path / "two.png"))[1] > height  # one more limit panel
    svg = plot(rows, tmp_path / "two.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    with pytest.raises(ValueError, match=r"must end in \.png or \.svg"):
        plot(rows, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no samples"):
        plot([{**rows[0], "samples": []}], tmp_path / "empty.png")


def test_a_rate_cap_lifted_live_is_a_gap_not_a_limit_of_zero(tmp_path: Path) -> None:
    """A paced send whose cap a live ``rate 0`` lifted (0: no limit) records
    rate 0 from then on: the rate panel leaves those times out, and says
    so, instead of drawing a cap of 0 MiB/s under ~90 MiB/s."""
    import matplotlib

    MiB = 1024 * 1024
    rates = [8.0 * MiB, 8.0 * MiB, 0.0, 0.0, 16.0 * MiB]
    samples = [
        {"t": 0.1 * (i + 1), "bytes": (i + 1) * MiB, "throughput": 90.0 * MiB, "window": 0,
         "rate": rate, "rtt": 0.001, "credit": 16}
        for i, rate in enumerate(rates)
    ]  # fmt: skip
    lifted = {"id": 1, "mode": "token-bucket", "side": "send", "file": "/x/a.bin",
              "size": 5 * MiB, "duration": 0.5, "result": "ok", "samples": samples}  # fmt: skip
    label, values = limit_series(lifted) or ("", [])
    assert label == "rate limit (MiB/s)"
    assert values[:2] == [8.0, 8.0] and values[4] == 16.0
    assert all(math.isnan(v) for v in values[2:4]), values
    capped = {**lifted, "id": 2, "samples": [{**s, "rate": 8.0 * MiB} for s in samples]}
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text
        drawn = plot([lifted], tmp_path / "lifted.svg").read_text()
        kept = plot([capped], tmp_path / "capped.svg").read_text()
    assert NO_LIMIT_NOTE in drawn and NO_LIMIT_NOTE not in kept


def test_a_slow_send_in_large_chunks_is_drawn_in_kib_s_as_its_rate_not_as_spikes(
    tmp_path: Path,
) -> None:
    """1 MiB chunks under a 100 KiB/s cap: a sample every 0.1 s, one chunk
    acked every ~10 s (10 MiB/s in that sample, 0 in the others). The line
    is averaged over four chunks' time (not half a second: spikes of 2 MiB/s
    over zero), rates are in KiB/s (not 0.0977 MiB/s), and the title of a
    send cancelled at 5 of 6 MiB says so (not "6.0 MiB in ...")."""
    import matplotlib

    cap = 100 * 1024
    samples = []
    for i in range(1, 601):
        t = round(0.1 * i, 1)
        chunks = int(t * cap // MiB)
        acked = chunks > int((t - 0.1) * cap // MiB)
        samples.append(
            {"t": t, "bytes": chunks * MiB, "throughput": 10.0 * MiB if acked else 0.0,
             "window": 0, "rate": float(cap), "rtt": 0.002, "credit": 4}
        )  # fmt: skip
    row = {"id": 3, "mode": "token-bucket", "side": "send", "file": "/x/ga.bin",
           "size": 6 * MiB, "bytes": 5 * MiB, "chunk_size": MiB, "duration": 60.0,
           "result": "cancelled", "samples": samples}  # fmt: skip
    span = smooth_span(row)
    assert span == SMOOTH_MAX, span  # four chunks at 5 MiB in 60 s: 48 s, at most 30
    # A resume: what the receiver held did not cross in this time (10 of 100
    # MiB crossed in 30 s: four chunks are 12 s, not the 1.2 s of all 100).
    resumed = {"size": 100 * MiB, "bytes": 100 * MiB, "chunk_size": MiB, "duration": 30.0,
               "stats": {"held_bytes": 90 * MiB}}  # fmt: skip
    assert smooth_span(resumed) == pytest.approx(12.0)
    t = [s["t"] for s in samples]
    rates = [s["throughput"] / 1024 for s in samples]
    late = [v for x, v in zip(t, smoothed(t, rates, span), strict=True) if x > span]
    assert late and 0.6 * cap / 1024 < min(late) <= max(late) < 1.4 * cap / 1024, late  # KiB/s
    assert max(smoothed(t, rates, SMOOTH_SECONDS)) > 1000  # what half a second drew
    label, values = limit_series(row, ("KiB/s", 1024)) or ("", [])
    assert label == "rate limit (KiB/s)" and values[0] == 100.0
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text
        drawn = plot([row], tmp_path / "slow.svg").read_text()
    assert "5.0 of 6.0 MiB in 60.00 s, cancelled" in drawn
    assert "throughput (KiB/s)" in drawn and "rate limit (KiB/s)" in drawn
    assert "MiB/s" not in drawn
    done = {**row, "bytes": 6 * MiB, "result": "ok"}
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        assert "ga.bin: 6.0 MiB in 60.00 s, ok" in plot([done], tmp_path / "ok.svg").read_text()


def test_the_plot_of_a_send_the_receiver_had_says_so(tmp_path: Path) -> None:
    """A file delivered before: nothing crossed, so no "50.0 MiB in 0.03 s"
    (a send of 1.6 GiB/s) and no RTT said to be the receiving side's; a
    resume's title says what was held already."""
    import matplotlib

    sample = {"t": 0.03, "bytes": 50 * MiB, "throughput": 0.0, "window": 0, "rate": 0.0,
              "rtt": 0.0, "credit": 1}  # fmt: skip
    had = {"id": 3, "mode": "normal", "side": "send", "file": "/x/big.bin", "size": 50 * MiB,
           "bytes": 50 * MiB, "chunk_size": MiB, "duration": 0.03, "result": "ok",
           "stats": {"chunks": 50.0, "resumed_chunks": 50.0}, "samples": [sample]}  # fmt: skip
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        drawn = plot([had], tmp_path / "had.svg").read_text()
    assert "big.bin: had it (50.0 MiB held already), ok" in drawn
    assert "no RTT recorded (no chunk crossed: the receiver had it)" in drawn
    assert "in 0.03 s" not in drawn and "receiving side" not in drawn
    resumed = {**had, "duration": 2.0, "stats": {"chunks": 50.0, "resumed_chunks": 40.0}}
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        drawn = plot([resumed], tmp_path / "resumed.svg").read_text()
    assert "big.bin: 50.0 MiB in 2.00 s, ok (40.0 MiB held already)" in drawn
    assert "no RTT recorded (none measured)" in drawn


@given(
    running=st.integers(1, 200),
    per_tick=st.integers(1, 16),
    offset=st.integers(0, 255),
    start=st.integers(0, 10_000),
)
def test_with_many_running_each_transfer_is_sampled_every_few_ticks(
    running: int, per_tick: int, offset: int, start: int
) -> None:
    every = -(-running // per_tick)
    due = [sample_due(offset, tick, running, per_tick) for tick in range(start, start + 4 * every)]
    if running <= per_tick:
        assert all(due)  # as few as that: every transfer every tick
    # Exactly once in any `every` ticks in a row: never starved, never more.
    assert all(sum(due[i : i + every]) == 1 for i in range(len(due) - every + 1))
    # Offsets spread over the transfers: at most per_tick samples per tick.
    per = [
        sum(sample_due(o, tick, running, per_tick) for o in range(running)) for tick in range(every)
    ]
    assert max(per) <= per_tick and sum(per) == running


def test_the_count_limit_stays_exact_as_transfers_end(tmp_path: Path) -> None:
    """Pruned at every end (as the stats actor does), the history keeps
    exactly the newest N ended transfers: also when an ended transfer is
    written again (its end counted twice) and after rows went from outside
    (another connection) without this writer knowing."""
    w = HistoryWriter(tmp_path / "h.sqlite")
    keep = Retention(days=0, max_transfers=4)

    def end(i: int) -> set[str]:
        w.upsert(row(f"t{i}", started=float(i)))
        w.upsert(row(f"t{i}", started=float(i), result="ok"))
        w.upsert(row(f"t{i}", started=float(i), result="ok"))  # the same end again
        w.prune(keep, 100.0)
        return {r["session"] for r in list_transfers(open_reader(w.path))}

    w.upsert(row("running", started=0.0))
    for i in range(12):
        assert end(i) == {f"t{j}" for j in range(max(0, i - 3), i + 1)} | {"running"}, i
    other = sqlite3.connect(w.path)
    other.execute("DELETE FROM transfers WHERE session IN ('t9', 't10')")
    other.commit()
    other.close()
    assert end(12) == {"t8", "t11", "t12", "running"}
    assert end(13) == {"t8", "t11", "t12", "t13", "running"}
    assert end(14) == {"t11", "t12", "t13", "t14", "running"}


@given(
    steps=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=60),
    rate=st.floats(0.0, 1e4),
    span=st.floats(0.05, 5.0),
)
def test_the_smoothed_throughput_of_a_steady_rate_is_that_rate(
    steps: list[float], rate: float, span: float
) -> None:
    t = list(itertools.accumulate(steps))
    assert smoothed(t, [rate] * len(t), span) == pytest.approx([rate] * len(t))
    # A window longer than the transfer: the bytes so far over the time so far.
    varied = [rate * (i % 3) for i in range(len(t))]
    assert smoothed(t, varied, t[-1] + 1)[-1] == pytest.approx(
        sum(r * d for r, d in zip(varied, steps, strict=True)) / t[-1]
    )


def test_the_smoothed_throughput_hides_whole_chunk_steps() -> None:
    """1 MiB chunks sampled every 0.1 s at 20 MiB/s: 1, 2 or 3 chunks a
    sample (10, 20, 30 MiB/s); over half a second, 20 within a chunk's share."""
    rates = [20.0, 30.0, 10.0, 20.0, 20.0, 30.0, 10.0, 20.0, 30.0, 10.0] * 3
    t = [round(0.1 * (i + 1), 6) for i in range(len(rates))]
    assert all(abs(v - 20.0) <= 4.0 for v in smoothed(t, rates)[5:])
    assert max(rates) - min(rates) == 20.0  # what the steps show
    # It follows a change within its half second: 10 for 2 s, then 30.
    t = [round(0.1 * (i + 1), 6) for i in range(40)]
    after = smoothed(t, [10.0] * 20 + [30.0] * 20)
    assert after[19] == pytest.approx(10.0) and after[-1] == pytest.approx(30.0)


def test_a_receiving_row_is_rated_by_what_crossed_and_an_old_one_still_reads(
    tmp_path: Path,
) -> None:
    """A receiving side's row records the bytes it held when it began
    (``stats.held_bytes``); a row recorded before it did counts none."""
    mib = 1024 * 1024
    w = HistoryWriter(db_path(tmp_path))
    done = {"side": "receive", "result": "ok", "size": 8 * mib, "bytes": 8 * mib, "duration": 2.0}
    old = w.upsert(row("aa", **done))
    resumed = w.upsert(row("bb", **done, stats={"held_bytes": 6 * mib}))
    had = w.upsert(row("cc", **done, stats={"held_bytes": 8 * mib}))
    w.commit()
    moved = {}
    for ident in (old, resumed, had):
        shown = run_cli("stats", "show", str(ident), data_dir=tmp_path)
        assert shown.returncode == 0, shown.describe()
        line = next(x for x in shown.stdout.splitlines() if x.startswith("moved "))
        moved[ident] = " ".join(line.split())
    assert moved == {
        old: "moved 8.0 MiB in 2.000 s, 4.0 MiB/s",
        resumed: "moved 2.0 MiB in 2.000 s, 1.0 MiB/s (6.0 MiB held already)",
        had: "moved 0 B in 2.000 s, had it (8.0 MiB held already)",
    }
    rates = [
        line.split()[-3:-1]
        for line in run_cli("stats", "list", data_dir=tmp_path).stdout.splitlines()[1:]
    ]
    assert rates == [["4.0", "MiB/s"], ["1.0", "MiB/s"], ["had", "it"]], rates
