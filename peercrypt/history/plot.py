"""Plots of recorded transfers (``peercrypt stats plot``).

Panels on one shared time axis (seconds since each transfer started):
throughput (MiB/s, or KiB/s where no transfer drawn reached 1 MiB/s: over
the last half second, or over four chunks' time at the transfer's average
rate if longer, so a slow send in large chunks is not drawn as spikes over
zero; the samples themselves as faint steps), the flow limit (the AIMD
window in KiB, or the rate in the throughput's unit for paced transfers,
or the receiver's credit in chunks when neither
applies; no panel when a transfer recorded none of them: a line at 0 would
read as a limit of 0; a gap, and the panel saying so, where a paced
transfer had no cap for a while: a live ``rate 0``), and the smoothed RTT
(ms). With several transfers (``--compare``) every panel overlays them, one
colour each, labelled by id, mode and side;
limits in different units get a panel each, never one axis.

matplotlib is an optional extra (``pip install 'peercrypt[plot]'``); without
it :func:`plot` raises :class:`PlotUnavailable` with that advice. The file
format follows the output name's suffix (.png or .svg).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from peercrypt.core.names import shortened
from peercrypt.history.db import held_bytes

INSTALL_HINT = "pip install 'peercrypt[plot]'"
FORMATS = (".png", ".svg")
MiB = 1024 * 1024


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


KiB = 1024
RATE = "rate limit"
LIMITS = (
    # (label, sample column, scale, whether 0 means no limit at that point):
    # the first a transfer has non-zero values for. A rate of 0 is no cap (a
    # live `rate 0` lifts it); a credit of 0 is a receiver holding the send.
    # The rate's unit and scale are the throughput's (:func:`rate_unit`).
    ("AIMD window (KiB)", "window", 1 / KiB, False),
    (RATE, "rate", 0.0, True),
    ("receiver credit (chunks)", "credit", 1.0, False),
)
NO_LIMIT_NOTE = "gaps: no cap"


def rate_unit(peak: float) -> tuple[str, int]:
    """The unit rates are drawn in: MiB/s, or KiB/s where the highest of
    them (bytes/s: the throughput lines' and the rate caps') is under 1
    MiB/s (a 100 KiB/s cap read 0.0977 MiB/s)."""
    return ("MiB/s", MiB) if peak >= MiB else ("KiB/s", KiB)


# The throughput axis ends this much above its lines (and caps) when the
# samples' own steps rise higher: a slow send's chunk in one 0.1 s sample
# (10 MiB/s under a 300 KiB/s cap) flattened every line to the floor.
HEADROOM = 1.25
CLIPPED_NOTE = "faint steps cut at the top"


def limit_series(
    row: dict[str, Any], unit: tuple[str, int] = ("MiB/s", MiB)
) -> tuple[str, list[float]] | None:
    """The flow-limit panel of one transfer: its label and values (a rate in
    ``unit``); None if it recorded no limit (every sample 0). A point without
    a limit (a rate of 0) is NaN: drawn as a gap, not as a limit of 0."""
    samples = row["samples"]
    for label, column, scale, zero_is_none in LIMITS:
        if label == RATE:
            label, scale = f"{RATE} ({unit[0]})", 1 / unit[1]
        if any(s[column] for s in samples):
            return label, [
                math.nan if zero_is_none and not s[column] else s[column] * scale for s in samples
            ]
    return None


SMOOTH_SECONDS = 0.5  # the throughput line's window (the samples' steps stay, faint)
SMOOTH_MAX = 30.0  # seconds: the longest window (a trickle in large chunks)
SMOOTH_CHUNKS = 4  # a slow transfer's window: its chunks' time at its average rate


def smooth_span(row: dict[str, Any]) -> float:
    """The throughput line's window for ``row``: :data:`SMOOTH_SECONDS`, or
    the time :data:`SMOOTH_CHUNKS` of its chunks take at its average rate if
    longer (at most :data:`SMOOTH_MAX`). A sample counts the chunks acked in
    its interval: 1 MiB chunks under a 300 KiB/s cap are a chunk every 3.4
    s, which half a second's average drew as spikes of 10 MiB/s over zero
    (over two chunks' time the line still swung by half as a third chunk
    came into the window and went)."""
    moved = float(row.get("bytes", 0) - _held(row))
    seconds, chunk = float(row.get("duration", 0.0)), float(row.get("chunk_size", 0))
    if moved <= 0 or seconds <= 0 or chunk <= 0:
        return SMOOTH_SECONDS
    return max(SMOOTH_SECONDS, min(SMOOTH_MAX, SMOOTH_CHUNKS * chunk / (moved / seconds)))


def smoothed(t: list[float], rates: list[float], span: float = SMOOTH_SECONDS) -> list[float]:
    """The throughput at each sample time ``t[i]`` averaged over the ``span``
    seconds before it (or since the start, if less): the bytes of the
    samples in that window over its length. Each rate covers the time since
    the previous sample (the first, since 0). A sample counts whole chunks
    of its interval, so at 0.1 s intervals 1 MiB chunks make steps of 10
    MiB/s around a steady 20 that this line does not have."""
    out: list[float] = []
    edges = [0.0, *t]
    amounts = [r * max(0.0, b - a) for r, a, b in zip(rates, edges[:-1], t, strict=True)]
    first, total = 0, 0.0
    for i, now in enumerate(t):
        total += amounts[i]
        while first < i and edges[first + 1] <= now - span:  # whole samples out of the window
            total -= amounts[first]
            first += 1
        covered = now - edges[first]
        out.append(total / covered if covered > 0 else rates[i])
    return out


def _label(row: dict[str, Any]) -> str:
    head = f"#{row['id']} {row['mode']} {row['side']} "
    return head + shortened(os.path.basename(row["file"]) or row["file"], max(16, 60 - len(head)))


def _held(row: dict[str, Any]) -> int:
    """What the receiver held already (:func:`held_bytes`; 0 of a row without statistics)."""
    return held_bytes(row) if "stats" in row else 0


def _had_it(row: dict[str, Any]) -> bool:
    """Nothing crossed: the receiver had the whole file (a file delivered before)."""
    held = _held(row)
    return held > 0 and row.get("bytes", row["size"]) - held <= 0


def _title(row: dict[str, Any]) -> str:
    """One transfer's title: what it moved of its size (the whole size only
    when it moved it all), in how long, and how it ended; what the receiver
    held already beside it, and "had it" where nothing crossed (as `stats
    show` says it: "50.0 MiB in 0.03 s" of a file it had read as a send)."""
    size, moved = row["size"] / MiB, row.get("bytes", row["size"]) / MiB
    held = _held(row) / MiB
    if _had_it(row):
        return f"{_label(row)}: had it ({held:.1f} MiB held already), {row['result']}"
    amount = f"{size:.1f} MiB" if moved >= size else f"{moved:.1f} of {size:.1f} MiB"
    note = f" ({held:.1f} MiB held already)" if held else ""
    return f"{_label(row)}: {amount} in {row['duration']:.2f} s, {row['result']}{note}"


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """Draw ``rows`` (transfers with ``samples``) into ``out``. Raises
    PlotUnavailable, ValueError (an unknown suffix, nothing to draw)."""
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write {out.name}: the name must end in .png or .svg")
    if not any(r["samples"] for r in rows):
        raise ValueError("the transfer(s) recorded no samples to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(f"plotting needs matplotlib: {INSTALL_HINT}") from None

    lines: list[tuple[list[float], list[float], float]] = []  # t, bytes/s, span
    for row in rows:
        t = [s["t"] for s in row["samples"]]
        span = smooth_span(row)
        lines.append((t, smoothed(t, [s["throughput"] for s in row["samples"]], span), span))
    drawn = max((max(v, default=0.0) for _, v, _ in lines), default=0.0)
    caps = max((s["rate"] for row in rows for s in row["samples"]), default=0.0)
    steps = max((s["throughput"] for row in rows for s in row["samples"]), default=0.0)
    unit, per = rate_unit(max(drawn, caps))
    limits = [limit_series(row, (unit, per)) for row in rows]
    labels = [f"{RATE} ({unit})" if label == RATE else label for label, _, _, _ in LIMITS]
    kinds = [label for label in labels if any(k and k[0] == label for k in limits)]
    fig, axes = plt.subplots(
        2 + len(kinds), 1, sharex=True, figsize=(10, 2.6 * (2 + len(kinds))), layout="constrained"
    )
    thr, rtt = axes[0], axes[-1]
    panel = dict(zip(kinds, axes[1:-1], strict=True))
    uncapped: set[str] = set()  # panels with times without a limit (gaps)
    for row, limit, (t, averaged, _) in zip(rows, limits, lines, strict=True):
        samples = row["samples"]
        label = _label(row)
        marker = "." if len(t) < 40 else None
        rates = [s["throughput"] / per for s in samples]
        (line,) = thr.plot(t, [v / per for v in averaged], label=label, linewidth=1.6)
        colour = line.get_color()
        # Each sample covers the time since the previous one: faint steps.
        thr.step([0.0, *t], rates[:1] + rates, where="pre", color=colour, linewidth=0.8, alpha=0.3)
        if limit is not None:
            kind, values = limit
            panel[kind].plot(t, values, color=colour, linewidth=1.4, marker=marker)
            if any(math.isnan(v) for v in values):
                uncapped.add(kind)
        with_rtt = [(x, s["rtt"] * 1000) for x, s in zip(t, samples, strict=True) if s["rtt"] > 0]
        if with_rtt:
            xs, ys = zip(*with_rtt, strict=True)
            rtt.plot(xs, ys, color=colour, linewidth=1.4, marker=marker)
    if len(rows) == 1:
        row = rows[0]
        fig.suptitle(_title(row), fontsize=11)
    else:
        fig.suptitle(f"{len(rows)} transfers compared", fontsize=11)
        fig.legend(loc="outside lower center", fontsize=8, ncols=min(3, len(rows)))
    thr.set_ylabel(f"throughput ({unit})")
    low, high = min(span for _, _, span in lines), max(span for _, _, span in lines)
    window = f"{low:.1f} s" if high - low < 0.05 else f"{low:.1f}-{high:.1f} s (per transfer)"
    thr.set_title(f"lines: over the last {window}; faint steps: each sample", fontsize=8,
                  loc="left", color="grey")  # fmt: skip
    for kind, ax in panel.items():
        ax.set_ylabel(kind)
        if kind in uncapped:
            ax.text(0.99, 0.95, NO_LIMIT_NOTE, ha="right", va="top", transform=ax.transAxes,
                    color="grey")  # fmt: skip
    rtt.set_ylabel("smoothed RTT (ms)")
    if not rtt.has_data():
        if all(r["side"] == "receive" for r in rows):
            why = "the receiving side measures none"
        elif all(_had_it(r) for r in rows):
            why = "no chunk crossed: the receiver had it"
        else:
            why = "none measured"
        rtt.text(0.5, 0.5, f"no RTT recorded ({why})", ha="center", va="center",
                 transform=rtt.transAxes, color="grey")  # fmt: skip
    rtt.set_xlabel("seconds since the transfer started")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        # From 0, with room above the highest point (a window held at its
        # most ran along the frame).
        ax.set_ylim(0, max(ax.get_ylim()[1], 1e-9) * 1.1)
        ax.set_xlim(left=0)
    top = HEADROOM * max(drawn, caps) / per
    if top > 0 and steps / per > top:
        thr.set_ylim(0, top)
        thr.text(0.99, 0.95, CLIPPED_NOTE, ha="right", va="top", transform=thr.transAxes,
                 color="grey")  # fmt: skip
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
