"""The statistics history as JSON or CSV, and back.

- JSON: a list of transfers, each a map of every ``transfers`` column
  (``params`` and ``stats`` as objects) plus ``samples``, a list of maps of
  the ``samples`` columns. What :func:`peercrypt.history.db.get_transfers`
  returns, unchanged.
- CSV (``kind="transfers"``): a header of the ``transfers`` columns and one
  line per transfer, ``params`` and ``stats`` as JSON text.
- CSV (``kind="samples"``): a header ``transfer`` plus the ``samples``
  columns, one line per kept point.

:func:`parse_json` and :func:`parse_csv` read them back to exactly the rows
that were written (numbers by column type; Python writes floats in their
shortest exact form), so an export is a faithful copy of the database.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from peercrypt.history.db import SAMPLE_COLUMNS, TRANSFER_COLUMNS

KINDS = ("transfers", "samples")
_INTS = {
    "id",
    "size",
    "bytes",
    "chunk_size",
    "chunks",
    "retransmits",
    "transfer",
    "window",
    "credit",
}
_FLOATS = {"started", "duration", "t", "throughput", "rate", "rtt"}
_JSON = {"params", "stats"}


class ExportError(ValueError):
    """Text that is not an export of the history (names what is wrong)."""


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1, sort_keys=False) + "\n"


def parse_json(text: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"not JSON: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ExportError("not a list of transfers")
    return rows


def _header(kind: str) -> tuple[str, ...]:
    if kind not in KINDS:
        raise ExportError(f"unknown CSV kind {kind!r}: use {' or '.join(KINDS)}")
    return TRANSFER_COLUMNS if kind == "transfers" else ("transfer", *SAMPLE_COLUMNS)


def to_csv(rows: list[dict[str, Any]], kind: str = "transfers") -> str:
    """``rows`` as from :func:`~peercrypt.history.db.get_transfers`."""
    header = _header(kind)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if kind == "transfers":
            writer.writerow(
                [json.dumps(row[c], sort_keys=True) if c in _JSON else row[c] for c in header]
            )
        else:
            for s in row.get("samples", []):
                writer.writerow([row["id"], *(s[c] for c in SAMPLE_COLUMNS)])
    return out.getvalue()


def parse_csv(text: str, kind: str = "transfers") -> list[dict[str, Any]]:
    header = _header(kind)
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or tuple(lines[0]) != header:
        raise ExportError(f"the first line is not the {kind} header ({','.join(header)})")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise ExportError(f"line {number} has {len(line)} fields, not {len(header)}")
        try:
            rows.append({c: _value(c, v) for c, v in zip(header, line, strict=True)})
        except ValueError as exc:
            raise ExportError(f"line {number}: {exc}") from None
    return rows


def _value(column: str, text: str) -> Any:
    if column in _INTS:
        return int(text)
    if column in _FLOATS:
        return float(text)
    if column in _JSON:
        return json.loads(text)
    return text
