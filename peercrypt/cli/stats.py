"""``peercrypt stats``: the statistics history (``DATA_DIR/stats.sqlite``).

``list``, ``show``, ``export`` and ``plot`` read the database read-only and
need no running node (see :mod:`peercrypt.history.db` for the schema).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli.common import UserError, table, terminal_width
from peercrypt.cli.runner import NamedPath
from peercrypt.core.address import split_host_port, visible_ascii
from peercrypt.core.modes import ALL_MODES, BURST_SECONDS, MIN_BURST
from peercrypt.core.names import shortened
from peercrypt.history import export as history_export
from peercrypt.history.db import (
    HistoryError,
    db_path,
    get_samples,
    get_transfer,
    get_transfers,
    held_bytes,
    list_transfers,
    newest_id,
    open_reader,
)
from peercrypt.sizes import readable
from peercrypt.wire.text import printable

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _error(message: str, code: int = errors.USAGE) -> click.ClickException:
    return UserError(message, code)


def since_from(text: str, now: float) -> float:
    """``30m``, ``2h``, ``7d``... ago, or a local date/time (``2026-12-01``,
    ``2026-12-01T10:00``) -> Unix seconds. Raises ValueError."""
    text = text.strip()
    span = _SPAN.match(text.lower())
    if span:
        return now - float(span.group(1)) * _UNITS[span.group(2)]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a span (30m, 2h, 7d) or a date (2026-12-01T10:00)"
        ) from None


SECONDS = frozenset({"srtt", "rttvar", "rto"})  # the RTT estimator's, in seconds


def recorded_text(key: str, value: object) -> str:
    """A transfer's recorded parameter or statistic in the unit its name
    says: bytes (``*_bytes``, ``chunk_size``, ``burst``) as a size with the
    exact count, a ``rate`` per second (0: no limit), seconds (``*_seconds``,
    the RTT's) in ms below one, a ``*_share`` in percent, a whole count
    without a decimal point; anything else as recorded."""
    if isinstance(value, str):  # a parameter as the sender recorded it: text
        text = value
        try:
            value = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            return text
        if not math.isfinite(value) or str(value) != text:
            return text  # (a name that looks like a number: "007", "1e3")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key == "burst" and value == 0:  # none given: the bucket is the rate's own
        at_least = f"{MIN_BURST} bytes at least"
        return f"0 (the default: {BURST_SECONDS * 1000:.0f} ms of the rate, {at_least})"
    if key.endswith("_bytes") or key in ("chunk_size", "burst"):
        exact = f"{value:.0f} bytes"
        return exact if abs(value) < 1024 else f"{readable(value)} ({exact})"
    if key == "rate" or key.endswith("_rate"):
        return readable(value, rate=True) if value else "0 (no limit)"
    if key.endswith("_seconds") or key in SECONDS:
        return f"{value * 1000:.2f} ms" if abs(value) < 1 else f"{value:.3f} s"
    if key.endswith("_share"):
        return f"{value:.0%}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


# A number (ASCII digits, within SQLite's range), or last, last-N.
_ID = re.compile(r"[0-9]{1,18}|last(?:-([0-9]{1,9}))?")


class HistoryId(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """A transfer's id in the history, or ``last`` (the one recorded last),
    ``last-1`` (the one before it)...: kept as text until the history is
    open (:func:`_ids`)."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        if _ID.fullmatch(text):
            return text
        self.fail(f"{value!r} is no transfer id (a number, `last` or `last-N`)", param, ctx)


def _ids(conn: sqlite3.Connection, given: tuple[str, ...]) -> list[int]:
    """The ids ``given`` (numbers, ``last``, ``last-N``) in the history."""
    out = []
    for text in given:  # (each checked by HistoryId)
        if text.startswith("last"):
            back = _ID.fullmatch(text)
            out.append(newest_id(conn, int(back.group(1) or 0) if back else 0))
        else:
            out.append(int(text))
    return out


@contextmanager
def _history(obj: dict[str, Any]) -> Iterator[sqlite3.Connection]:
    try:
        conn = open_reader(db_path(obj["data_dir"]))
    except HistoryError as exc:
        raise _error(str(exc)) from None
    try:
        yield conn
    except HistoryError as exc:
        raise _error(str(exc)) from None
    except sqlite3.Error as exc:
        raise _error(f"cannot read the statistics history: {exc}", errors.FAILED) from None
    finally:
        conn.close()


_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")  # a fingerprint's letters


def peer_filter(text: str) -> str:
    """What ``--peer`` matches: ``HOST:PORT`` as given (the history folds
    its spellings), or a fingerprint prefix as fingerprints are recorded
    (lower case, a dash every four letters: ``4XI2TX`` is ``4xi2-tx``).
    Other text matched nothing, silently (``127.0.0.1`` without its port,
    a port past 65535): UserError."""
    if not text:
        return ""
    shown = printable(text, 60)
    if ":" in text:
        host = text.rpartition(":")[0]
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            # (split_host_port reads `::1` as host ":" and port 1)
            why = "an IPv6 address takes brackets and its port ([ADDRESS]:PORT)"
            raise _error(f"--peer '{shown}': {why}")
        try:
            split_host_port(text)
        except ValueError:
            port = text.rpartition(":")[2].strip()
            why = (
                f"port {port} is out of range; expected 1..65535"
                if port.isascii() and port.isdigit()
                else "neither HOST:PORT nor a fingerprint (prefix)"
            )
            raise _error(f"--peer '{shown}': {why}") from None
        return text
    raw = text.strip().lower().replace("-", "")
    if raw and len(raw) <= 32 and set(raw) <= _BASE32:
        return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))
    hint = f"; a host needs its port ({shown}:PORT)" if visible_ascii(text) else ""
    raise _error(f"--peer '{shown}': neither HOST:PORT nor a fingerprint (prefix){hint}")


def _filters(peer: str, mode: str, since: str | None, failed: bool) -> dict[str, Any]:
    try:
        start = since_from(since, time.time()) if since else 0.0
    except ValueError as exc:
        raise _error(str(exc)) from None
    if mode and mode.lower() not in ALL_MODES:  # (a typo listed nothing, as if none matched)
        raise _error(f"unknown mode {mode!r}: one of {', '.join(ALL_MODES)}")
    return {"peer": peer_filter(peer), "mode": mode.lower(), "since": start, "failed": failed}


def _when(started: float) -> str:
    return dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")


def _rate(row: dict[str, Any]) -> str:
    """The rate of the bytes that crossed: 'had it' when none did."""
    moved = row["bytes"] - held_bytes(row)
    if held_bytes(row) and moved <= 0:
        return "had it"
    if row["duration"] <= 0 or moved <= 0:
        return "-"
    return readable(moved / row["duration"], rate=True)


def _moved(row: dict[str, Any]) -> str:
    held = held_bytes(row)
    text = f"{readable(row['bytes'] - held)} in {row['duration']:.3f} s, {_rate(row)}"
    return text + (f" ({readable(held)} held already)" if held else "")


def _filter_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--peer",
                default="",
                help="HOST:PORT or a fingerprint (prefix; any case, dashes or none; "
                "other text is an error).",
            ),
            click.option(
                "--mode",
                default="",
                help=f"One of {', '.join(ALL_MODES)} (any case; another is an error).",
            ),
            click.option("--since", default=None, help="A span (30m, 2h, 7d) or a date."),
            click.option("--failed", is_flag=True, help="Only transfers that did not succeed."),
        ]
    ):
        func = option(func)
    return func


@click.group("stats")
def stats() -> None:
    """The statistics history of every transfer (DATA_DIR/stats.sqlite)."""


@stats.command("list")
@_filter_options
@click.option("--limit", type=click.IntRange(0, 2**63 - 1), default=0, help="The newest N only.")
@click.option("--json", "as_json", is_flag=True, help="Print the transfers as a JSON list.")
@click.pass_obj
def stats_list(
    obj: dict[str, Any],
    peer: str,
    mode: str,
    since: str | None,
    failed: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded transfers, oldest first."""
    filters = _filters(peer, mode, since, failed)
    with _history(obj) as conn:
        rows = list_transfers(conn, **filters, limit=limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(
            "no transfers recorded" + (" that match" if peer or mode or since or failed else "")
        )
        if peer and ":" not in peer:  # (`localhost` reads as a fingerprint prefix too)
            click.echo(f"(--peer {printable(peer, 60)} was read as a fingerprint prefix; "
                       "a host takes its port: HOST:PORT)")  # fmt: skip
        return
    headers = ["id", "started", "side", "mode", "peer", "file", "size", "time", "rate", "result"]
    click.echo(
        table(
            headers,
            [
                [
                    str(r["id"]),
                    _when(r["started"]),
                    r["side"],
                    r["mode"] or "-",
                    r["peer"][:39],
                    shortened(os.path.basename(r["file"]), 40),
                    readable(r["size"]),
                    f"{r['duration']:.2f}s",
                    _rate(r),
                    r["result"],
                ]
                for r in rows
            ],
            width=terminal_width(),
            shrink={"peer": 19, "file": 16},
            drop=("time", "side", "mode", "started"),
        )
    )


@stats.command("show")
@click.argument("given", metavar="ID", type=HistoryId())
@click.option("--json", "as_json", is_flag=True, help="Print the transfer and its samples.")
@click.pass_obj
def stats_show(obj: dict[str, Any], given: str, as_json: bool) -> None:
    """Everything recorded about transfer ID (`last`: the latest, `last-1`...)."""
    with _history(obj) as conn:
        (ident,) = _ids(conn, (given,))
        row = get_transfer(conn, ident)
        samples = get_samples(conn, ident)
    if as_json:
        click.echo(json.dumps({**row, "samples": samples}))
        return
    lines = [
        ("transfer", f"{row['id']} (session {row['session']}, {row['side']} side)"),
        ("peer", row["peer"]),
        ("fingerprint", row["peer_fingerprint"] or "- (not proven to this side)"),
        ("mode", row["mode"] or "-"),
        ("file", row["file"]),
        ("size", _size(row)),
        ("moved", _moved(row)),
        ("started", _when(row["started"])),
        ("result", row["result"] + (f": {row['reason']}" if row["reason"] else "")),
        ("retransmits", str(row["retransmits"])),
    ]
    lines += [(f"param {k}", recorded_text(k, v)) for k, v in sorted(row["params"].items())]
    lines += [(f"stat {k}", recorded_text(k, v)) for k, v in sorted(row["stats"].items())]
    if samples:
        peak = max(s["throughput"] for s in samples)
        rtts = [s["rtt"] for s in samples if s["rtt"] > 0]
        lines.append(
            (
                "samples",
                f"{len(samples)} over {samples[-1]['t']:.2f} s, peak {readable(peak, rate=True)}",
            )
        )
        if rtts:
            lines.append(("rtt", f"min {min(rtts) * 1000:.2f} ms, max {max(rtts) * 1000:.2f} ms"))
    else:
        lines.append(("samples", "none"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {value}")


def _size(row: dict[str, Any]) -> str:
    """A transfer's size; a folder's (or several files') is its stream's,
    the files and their list: what the send said of its files is told too
    (it said "3 files, 3000003 bytes" where the size is 3000281)."""
    text = f"{readable(row['size'])} ({row['size']} bytes, {row['chunks']} chunks of "
    text += readable(row["chunk_size"])
    files, data = row["params"].get("files"), row["params"].get("file_bytes")
    if files is not None and data is not None:
        text += f"; {files} file(s) of {data} bytes and their list"
    return text + ")"


@stats.command("export")
@click.argument("given", metavar="[ID]...", type=HistoryId(), nargs=-1)
@_filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option(
    "--samples", is_flag=True, help="CSV: the time series (one line per point), not the transfers."
)
@click.option(
    "-o",
    "--output",
    type=NamedPath(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE instead of stdout.",
)
@click.pass_obj
def stats_export(
    obj: dict[str, Any],
    given: tuple[str, ...],
    peer: str,
    mode: str,
    since: str | None,
    failed: bool,
    fmt: str,
    samples: bool,
    output: Path | None,
) -> None:
    """Export transfers (the given IDs, or all that match) with their samples.

    The old per-mode files are one export each, e.g.
    `stats export --mode aimd -o aimd_congestion_stats.json`,
    `stats export --mode normal --format csv -o normal_stats.csv`.
    """
    if samples and fmt != "csv":
        raise _error("--samples applies to --format csv (JSON always holds the samples)")
    filters = _filters(peer, mode, since, failed)
    with _history(obj) as conn:
        if given:
            rows = get_transfers(conn, _ids(conn, given))
        else:
            chosen = list_transfers(conn, **filters)
            rows = get_transfers(conn, [r["id"] for r in chosen]) if chosen else []
    if fmt == "json":
        text = history_export.to_json(rows)
    else:
        text = history_export.to_csv(rows, "samples" if samples else "transfers")
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise _error(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"{len(rows)} transfer(s) written to {output}", err=True)


@stats.command("plot")
@click.argument("given", metavar="ID...", type=HistoryId(), nargs=-1, required=True)
@click.option("--compare", is_flag=True, help="Overlay several transfers in one figure.")
@click.option(
    "-o",
    "--output",
    type=NamedPath(dir_okay=False, path_type=Path),
    default=None,
    help="FILE.png or FILE.svg (default: transfer-ID.png).",
)
@click.pass_obj
def stats_plot(
    obj: dict[str, Any], given: tuple[str, ...], compare: bool, output: Path | None
) -> None:
    """Throughput, window or rate, and RTT of transfer ID over time (`last`:
    the latest)."""
    from peercrypt.history.plot import PlotUnavailable, plot

    if len(given) > 1 and not compare:
        raise _error("several IDs need --compare (one figure overlaying them)")
    if compare and len(given) < 2:
        raise _error("--compare needs at least two IDs")
    with _history(obj) as conn:
        idents = _ids(conn, given)
        rows = get_transfers(conn, idents)
    out = output or Path(f"transfer-{'-'.join(map(str, idents))}.png")
    try:
        plot(rows, out)
    except PlotUnavailable as exc:
        raise _error(str(exc)) from None
    except ValueError as exc:
        raise _error(str(exc)) from None
    except OSError as exc:
        raise _error(f"cannot write {out}: {exc.strerror}") from None
    click.echo(str(out))
