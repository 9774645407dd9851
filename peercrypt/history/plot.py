"""Plots of recorded transfers (``peercrypt stats plot``).

Panels on one shared time axis (seconds since each transfer started):
throughput (MiB/s: over the last half second, the samples themselves as
faint steps), the flow limit (the AIMD window in KiB, or the rate in
MiB/s for paced transfers, or the receiver's credit in chunks when neither
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

INSTALL_HINT = "pip install 'peercrypt[plot]'"
FORMATS = (".png", ".svg")
MiB = 1024 * 1024


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


LIMITS = (
    # (label, sample column, scale, whether 0 means no limit at that point):
    # the first a transfer has non-zero values for. A rate of 0 is no cap (a
    # live `rate 0` lifts it); a credit of 0 is a receiver holding the send.
    ("AIMD window (KiB)", "window", 1 / 1024, False),
    ("rate limit (MiB/s)", "rate", 1 / MiB, True),
    ("receiver credit (chunks)", "credit", 1.0, False),
)
NO_LIMIT_NOTE = "gaps: no cap"


def limit_series(row: dict[str, Any]) -> tuple[str, list[float]] | None:
    """The flow-limit panel of one transfer: its label and values; None if
    it recorded no limit (every sample 0). A point without a limit (a rate
    of 0) is NaN: drawn as a gap, not as a limit of 0."""
    samples = row["samples"]
    for label, column, scale, zero_is_none in LIMITS:
        if any(s[column] for s in samples):
            return label, [
                math.nan if zero_is_none and not s[column] else s[column] * scale for s in samples
            ]
    return None


SMOOTH_SECONDS = 0.5  # the throughput line's window (the samples' steps stay, faint)


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
    name = os.path.basename(row["file"]) or row["file"]
    return f"#{row['id']} {row['mode']} {row['side']} {name}"[:60]


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

    limits = [limit_series(row) for row in rows]
    kinds = [label for label, _, _, _ in LIMITS if any(k and k[0] == label for k in limits)]
    fig, axes = plt.subplots(
        2 + len(kinds), 1, sharex=True, figsize=(10, 2.6 * (2 + len(kinds))), layout="constrained"
    )
    thr, rtt = axes[0], axes[-1]
    panel = dict(zip(kinds, axes[1:-1], strict=True))
    uncapped: set[str] = set()  # panels with times without a limit (gaps)
    for row, limit in zip(rows, limits, strict=True):
        samples = row["samples"]
        t = [s["t"] for s in samples]
        label = _label(row)
        marker = "." if len(t) < 40 else None
        rates = [s["throughput"] / MiB for s in samples]
        (line,) = thr.plot(t, smoothed(t, rates), label=label, linewidth=1.6)
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
        fig.suptitle(
            f"{_label(row)}: {row['size'] / MiB:.1f} MiB in {row['duration']:.2f} s, "
            f"{row['result']}",
            fontsize=11,
        )
    else:
        fig.suptitle(f"{len(rows)} transfers compared", fontsize=11)
        fig.legend(loc="outside lower center", fontsize=8, ncols=min(3, len(rows)))
    thr.set_ylabel("throughput (MiB/s)")
    for kind, ax in panel.items():
        ax.set_ylabel(kind)
        if kind in uncapped:
            ax.text(0.99, 0.95, NO_LIMIT_NOTE, ha="right", va="top", transform=ax.transAxes,
                    color="grey")  # fmt: skip
    rtt.set_ylabel("smoothed RTT (ms)")
    if not rtt.has_data():
        rtt.text(0.5, 0.5, "no RTT recorded (the receiving side measures none)", ha="center",
                 va="center", transform=rtt.transAxes, color="grey")  # fmt: skip
    rtt.set_xlabel("seconds since the transfer started")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
