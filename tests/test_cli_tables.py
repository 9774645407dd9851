"""The CLI's tables on a terminal fit its width: long cells are cut (``…``)
down to a minimum, then the least needed columns are left out; in a pipe
(no width) every column and character stays."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.cli.app import main
from peercrypt.cli.common import table
from peercrypt.cli.modes import json_row, transfers_table
from peercrypt.cli.shell import Shell

HEADERS = ["id", "started", "mode", "peer", "file", "rate"]
ROWS = [
    ["1", "2026-12-02 01:38:45", "token-bucket", "127.0.0.1:7400", "a-long-file-name.iso", "9 MB"],
    ["12", "2026-12-02 01:40:26", "normal", "n47j-hxbx-u2u5-g37e-v3th-mneo", "b.bin", "1 MiB/s"],
]  # fmt: skip
FIT = {"shrink": {"peer": 14, "file": 10}, "drop": ("started", "mode")}


def test_without_a_width_nothing_is_cut_or_left_out() -> None:
    lines = table(HEADERS, ROWS, **FIT).splitlines()
    assert lines[0].split() == [h.upper() for h in HEADERS]
    for line, row in zip(lines[1:], ROWS, strict=True):
        assert [c.strip() for c in line.split("  ") if c.strip()] == row, line


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("  ") if c.strip()]


def test_cells_are_cut_before_columns_are_left_out() -> None:
    natural = max(len(line) for line in table(HEADERS, ROWS).splitlines())
    lines = table(HEADERS, ROWS, width=natural - 6, **FIT).splitlines()
    assert cells(lines[0]) == ["ID", "STARTED", "MODE", "PEER", "FILE", "RATE"]
    assert all(len(line) <= natural - 6 for line in lines), lines
    # The room left after cutting to the minimum goes back, first column first.
    assert cells(lines[2])[3] == "n47j-hxbx-u2u5-g37e-v3th-mneo"
    assert cells(lines[1])[4] == "a-long-file-n…"  # 20 characters, 6 fewer


def test_then_columns_go_in_order() -> None:
    lines = table(HEADERS, ROWS, width=64, **FIT).splitlines()
    assert cells(lines[0]) == ["ID", "MODE", "PEER", "FILE", "RATE"]  # started left out
    assert all(len(line) <= 64 for line in lines), lines
    lines = table(HEADERS, ROWS, width=45, **FIT).splitlines()
    assert cells(lines[0]) == ["ID", "PEER", "FILE", "RATE"]
    assert all(len(line) <= 45 for line in lines), lines
    assert cells(lines[1]) == ["1", "127.0.0.1:7400", "a-long-fi…", "9 MB"]
    assert cells(lines[2]) == ["12", "n47j-hxbx-u2u5-g37e…", "b.bin", "1 MiB/s"]


@given(st.integers(min_value=46, max_value=200))
def test_any_width_that_can_fit_is_kept(width: int) -> None:
    """Whatever the width (down to what the kept columns need at their
    minimum), no line is wider, and a kept cell is cut only with a '…'."""
    lines = table(HEADERS, ROWS, width=width, **FIT).splitlines()
    assert all(len(line) <= width for line in lines), (width, lines)
    for line, row in zip(lines[1:], ROWS, strict=True):
        assert line.startswith(row[0] + " ")
        assert row[-1] in line  # the rate is never cut


def test_transfers_rows_of_any_text_are_shown_never_raised() -> None:
    """`transfers` and the shell's line under its prompt show whatever rows
    the node's sender and msender give (one may be attached from elsewhere,
    of another build): a count that is not one (a walk's size ``?``, a
    superscript digit, text, a negative) shows as not known, a field
    left out as ``-``; nothing raises."""
    odd = [
        {"id": "1", "state": "walking", "mode": "normal", "bytes": "2048", "size": "?",
         "seconds": "1.0", "peer": "h:1", "file": "/a/walked"},
        {"id": "2", "state": "sending", "bytes": "²", "size": "²", "file": "/b/odd"},
        {"id": "3", "state": "sending", "bytes": "x", "size": "-5"},
        {"bytes": "50", "size": "100"},
    ]  # fmt: skip
    lines = transfers_table(odd).splitlines()
    assert [cells(line)[0] for line in lines] == ["ID", "1", "2", "3", "-"], lines
    assert cells(lines[1])[3:5] == ["2.0 KiB/?", "-"]
    assert cells(lines[3])[3:5] == ["0 B/-5", "-"]
    assert cells(lines[4])[3:5] == ["50 B/100 B", "50%"]
    shell = Shell(main, {"data_dir": Path("/nonexistent")}, owns_node=False)
    shell.view.transfers = odd[:3]
    parts = ["send walked 2.0 KiB (walking)", "send odd - (sending)", "send - - (sending)"]
    assert shell.toolbar(200) == "  |  ".join(parts)
    # More than three sends, or incoming transfers: how many more, not shown.
    shell.view.transfers = odd[:3] * 2
    assert shell.toolbar(200) == "  |  ".join([*parts, "+3 more (`top`)"])
    shell.view.transfers = odd[:1]
    shell.view.incoming = [("in.bin", 100, 50, f"in{i}") for i in range(3)]
    shell.view.incoming_count = 11  # the node lists the first few
    assert shell.toolbar(200).endswith("  |  recv in2 in.bin 50%  |  +8 more (`top`)")
    # At 80 columns what does not fit is counted too (the count came last
    # and was the first thing cut), a long name shortened in its middle.
    long = {"id": "9", "state": "sending", "bytes": "1", "size": "3"}
    shell.view.transfers = [{**long, "file": f"/d/{'m' * 30}{i}.bin"} for i in range(5)]
    shell.view.incoming, shell.view.incoming_count = [], 0
    line = shell.toolbar(80)
    assert len(line) <= 80 and line.endswith("  |  +4 more (`top`)"), line
    assert line.startswith(f"send {'m' * 11}…{'m' * 7}0.bin 33% (sending)"), line
    for width in range(20, 200, 7):  # never wider than the terminal, unless one part is
        line = shell.toolbar(width)
        first = line.split("  |  ")[0]
        assert len(line) <= max(width, len(first) + len("  |  +4 more (`top`)")), (width, line)
        assert line.endswith("more (`top`)"), line


@given(st.integers(20, 200), st.booleans())
def test_transfers_fit_any_width_with_or_without_the_retry_column(width: int, retry: bool) -> None:
    """A running send without a retry (no RETRY column: the table left it
    out) on a narrow terminal: fitted, never a KeyError ('retry' was in the
    columns to narrow whether or not the table had it)."""
    row = {"id": "7", "state": "sending", "mode": "token-bucket", "bytes": "86769664",
           "size": "314572800", "seconds": "16.6", "peer": "127.0.0.1:48200",
           "file": "/tmp/explore/data/files/u300.bin"}  # fmt: skip
    if retry:
        row.update({"state": "retrying", "retry": "3", "retry_in": "2.0"})
    lines = transfers_table([row], width).splitlines()
    assert cells(lines[0])[0] == "ID" and cells(lines[1])[0] == "7"
    if not retry:
        assert "RETRY" not in lines[0]
    assert "FILE" in lines[0] and "BYTES" in lines[0]


def test_transfers_json_gives_numbers_and_null_for_what_is_not_one() -> None:
    """`transfers --json`: counts as integers and seconds as numbers (the
    node's rows carry text); a count not known (a walk's ``?``) or not one
    (a superscript digit, a negative, another build's text) and seconds that
    are not finite are null; text fields stay as given."""
    rows = [
        {"id": "1", "state": "walking", "bytes": "2048", "size": "?", "seconds": "1.5",
         "file": "/a/walked"},
        {"id": "2", "state": "retrying", "bytes": "²", "size": "-5", "attempt": "3",
         "next_in": "0.7", "error": "connection refused"},
        {"id": "x", "seconds": "nan", "next_in": "-1", "bytes": "12"},
    ]  # fmt: skip
    assert [json_row(r) for r in rows] == [
        {"id": 1, "state": "walking", "bytes": 2048, "size": None, "seconds": 1.5,
         "file": "/a/walked"},
        {"id": 2, "state": "retrying", "bytes": None, "size": None, "attempt": 3,
         "next_in": 0.7, "error": "connection refused"},
        {"id": None, "seconds": None, "next_in": None, "bytes": 12},
    ]  # fmt: skip
    assert json.loads(json.dumps([json_row(r) for r in rows]))[1]["attempt"] == 3


def test_a_send_waiting_for_a_busy_receiver_shows_when_it_offers_and_why() -> None:
    """`transfers`: a send waiting for a busy receiver's slot says in the
    RETRY column when it offers again at the latest and the receiver's
    words; one waiting for this node's own slot (no error) says nothing
    there, and with no such row the column is left out."""
    busy = {
        "id": "9",
        "state": "waiting",
        "mode": "normal",
        "bytes": "0",
        "size": "1024",
        "seconds": "0",
        "peer": "10.0.0.5:7400",
        "file": "/f9.bin",
        "attempt": "1",
        "next_in": "1.6",
        "error": "10.0.0.5:7400 is busy: too many transfers from you (max 8)",
    }
    queued = {"id": "10", "state": "waiting", "mode": "normal", "bytes": "0", "size": "?",
              "seconds": "0", "peer": "10.0.0.5:7400", "file": "/f10.bin"}  # fmt: skip
    lines = transfers_table([busy, queued], 400).splitlines()
    assert "RETRY" in lines[0]
    note = "offer in 1.6s: 10.0.0.5:7400 is busy: too many transfers from you (max 8)"
    assert lines[1].rstrip().endswith(note), lines
    assert lines[2].rstrip().endswith("/f10.bin"), lines
    assert "RETRY" not in transfers_table([queued], 400).splitlines()[0]
