"""``peercrypt top``: a full-terminal live view of the local node.

Every ``--interval`` seconds (default 1) it asks the node's control socket
for its status (facts: the scheduler's default mode, node rate cap and
flows), its running sends and its peers, and redraws one screen with
``rich`` (the alternate screen, redrawn in place: no flicker, no scrollback
spam). Rates and ETAs are measured here, from the bytes acknowledged between
two refreshes (smoothed), so the node does no extra work for them: three
small requests per refresh are all ``top`` costs it.

Incoming transfers are listed under "Receiving" with their ids (``in3``),
from the receiver's status facts. Keys: up/down (or k/j) select a transfer
(a send or an incoming one); ``+``/``-`` double/halve a send's rate (a paced
transfer's cap, else the rate measured now); ``c`` then ``y`` cancels the
selected one (an incoming one's part is deleted, as ``peercrypt cancel
inN``); ``q`` (or Ctrl-C) quits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.cells import cell_len
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from peercrypt import errors
from peercrypt.cli.common import FiniteRange, UserError, count_in, fit_columns
from peercrypt.cli.follow import refusal
from peercrypt.cli.status_view import rate_cap
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.cancels import CancelVerdict, said
from peercrypt.core.member_state import MemberState
from peercrypt.core.names import INCOMING_NAME, shortened
from peercrypt.sizes import readable
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelAnswer,
    CancelIncoming,
    CancelTransfer,
    ErrorReply,
    SettingReply,
    SettingRequest,
    StatusReply,
    StatusRequest,
    TransfersReply,
    TransfersRequest,
)
from peercrypt.wire.network_messages import PeersReply, PeersRequest

# A transfer's rate is what it moved over the last RATE_SPAN seconds, or,
# where its bytes move in steps further apart than the readings (a chunk of
# 1 MiB every 3.4 s under a 300 KiB/s cap), over RATE_STEPS of those steps'
# time (at most RATE_SPAN_MAX): each reading's own rate read 514 KiB/s,
# 16 and 0 by turns for a send held to 300 KiB/s.
RATE_SPAN = 2.0
RATE_STEPS = 4
RATE_SPAN_MAX = 30.0
MESSAGE_SECONDS = 10.0  # how long the node's answer to a key stays under the keys
PRIORITY_NAMES = {1: "normal", 2: "high", 3: "highest"}


# -- what is shown (pure: snapshots and time in, rows out) -----------------------------


@dataclass
class RateMeter:
    """A transfer's rate from successive (time, bytes) readings: what it
    moved over a window of them (:data:`RATE_SPAN`, longer for a transfer
    whose bytes move in steps further apart than the readings)."""

    at: InitVar[float]  # the first reading's time and bytes
    done: InitVar[int]
    rate: float | None = None
    readings: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self, at: float, done: int) -> None:
        self.readings.append((at, done))

    def update(self, now: float, done: int) -> None:
        if now <= self.readings[-1][0]:
            return
        self.readings.append((now, done))
        while len(self.readings) > 2 and now - self.readings[1][0] >= RATE_SPAN_MAX:
            self.readings.popleft()
        span = min(RATE_SPAN_MAX, max(RATE_SPAN, RATE_STEPS * self._step_gap()))
        start = next((r for r in reversed(self.readings) if now - r[0] >= span), self.readings[0])
        self.rate = max(0, done - start[1]) / (now - start[0])

    def _step_gap(self) -> float:
        """The mean time between the readings that saw bytes move, where
        that is longer than between readings (bytes moving in steps); 0
        where they move at every reading or nearly; the whole history's span
        while fewer than two moved (a trickle not yet seen to step)."""
        points = list(self.readings)
        pairs = zip(points[1:], points[:-1], strict=True)
        moved = [t for (t, done), (_, before) in pairs if done > before]
        if len(moved) < 2:
            return 0.0 if len(points) < 3 else points[-1][0] - points[0][0]
        every = (points[-1][0] - points[0][0]) / (len(points) - 1)
        gap = (moved[-1] - moved[0]) / (len(moved) - 1)
        return gap if gap > 1.5 * every else 0.0

    def eta(self, left: int) -> float | None:
        if left <= 0:
            return 0.0
        return left / self.rate if self.rate else None


@dataclass
class View:
    """The state of the screen between refreshes."""

    meters: dict[str, RateMeter] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    transfers: list[dict[str, str]] = field(default_factory=list)
    incoming: list[tuple[str, str, int, int]] = field(default_factory=list)  # id, name, size, done
    # Multicast sessions coming in: sender, name, size, done (not cancelled here).
    sessions: list[tuple[str, str, int, int]] = field(default_factory=list)
    peers: list[dict[str, str]] = field(default_factory=list)
    selected: int = 0
    message: str = ""  # the node's answer to a key (:meth:`say`), shown for MESSAGE_SECONDS
    message_since: float | None = None  # when it was first shown (None: not yet)
    confirm_cancel: str | None = None  # the id `c` asked about, till y/n
    # Each table's columns as wide as they have been (:class:`SteadyWidths`).
    widths: dict[str, SteadyWidths] = field(default_factory=dict)

    def update(
        self,
        now: float,
        facts: dict[str, str],
        transfers: list[dict[str, str]],
        peers: list[dict[str, str]],
    ) -> None:
        if self.message and self.message_since is None:
            self.message_since = now
        elif self.message_since is not None and now - self.message_since >= MESSAGE_SECONDS:
            self.message = ""  # (it stayed for minutes: "cancelling transfer 3")
            self.message_since = None
        kept = self.selected_id()  # the selection follows its transfer, not its row
        self.facts, self.transfers, self.peers = facts, transfers, peers
        seen = set()
        for row in transfers:
            key = row.get("id", "")
            seen.add(key)
            done = count_in(row.get("bytes"))
            meter = self.meters.get(key)
            if meter is None:
                self.meters[key] = RateMeter(now, done)
            else:
                meter.update(now, done)
        for key in set(self.meters) - seen:
            del self.meters[key]
        self.incoming = _incoming(facts.get("incoming", "[]"))
        self.sessions = _incoming(facts.get("incoming_multicast", "[]"))
        ids = self.selectable()
        if kept in ids:
            self.selected = ids.index(kept)
        else:
            self.selected = max(0, min(self.selected, len(ids) - 1))
        if self.confirm_cancel is not None and self.confirm_cancel not in ids:
            # It ended while asked about: a `y` now would cancel nothing
            # (found by use: the question stayed under "no sends running").
            self.say(f"transfer {self.confirm_cancel} ended; nothing to cancel")
            self.confirm_cancel = None

    def selectable(self) -> list[str]:
        """The ids up/down moves through: the sends, then the incoming."""
        return [row.get("id", "") for row in self.transfers] + [i for i, _, _, _ in self.incoming]

    def flows(self) -> dict[str, dict[str, Any]]:
        try:
            listed = json.loads(self.facts.get("flows", "[]"))
        except ValueError:
            return {}
        return {str(f.get("id")): f for f in listed if isinstance(f, dict)}

    def shares(self) -> dict[str, float]:
        """Each flow's weight over all weights: its share of the node's cap
        while every flow wants more than it gets (the scheduler shares a cap
        1:2:3 by priority; a flow's own rate cap can leave it less)."""
        flows = self.flows()
        total = sum(float(f.get("priority", 1)) for f in flows.values())
        return {k: float(f.get("priority", 1)) / total for k, f in flows.items()} if total else {}

    def rate_of(self, ident: str) -> float | None:
        meter = self.meters.get(ident)
        return meter.rate if meter else None

    def say(self, text: str) -> None:
        """Show ``text`` under the keys from the next refresh on, for
        :data:`MESSAGE_SECONDS` (the same text again shows anew)."""
        self.message, self.message_since = text, None

    def selected_id(self) -> str | None:
        ids = self.selectable()
        return ids[self.selected] if ids else None


@dataclass
class SteadyWidths:
    """A table's column widths over a view's life: each as wide as its
    widest cell so far, while the terminal keeps its width and the table
    has rows. Fitted to each refresh's cells alone, a column grew and
    shrank as a rate or a percentage gained or lost a digit, and the
    columns beside it (the table fills the terminal: all of them) moved
    sideways with it at every refresh."""

    terminal: int = 0  # the width they were seen at
    widest: dict[str, int] = field(default_factory=dict)

    def natural(self, terminal: int, cells: dict[str, int]) -> dict[str, int]:
        """``cells`` (each column's widest cell now, in order), each at
        least as wide as its column has been at this terminal width."""
        if terminal != self.terminal:  # (a resize fits the columns anew)
            self.terminal, self.widest = terminal, {}
        return {name: max(width, self.widest.get(name, 0)) for name, width in cells.items()}

    def keep(self, widths: dict[str, int]) -> None:
        """Remember ``widths`` as shown (from :meth:`natural`)."""
        self.widest.update(widths)

    def forget(self) -> None:
        """The table has no rows: the next ones are fitted anew (a long
        name that ended keeps no column from a narrow terminal)."""
        self.widest = {}


_STATE_COLOUR: dict[str, str] = {
    MemberState.ALIVE: "green",
    MemberState.SUSPECT: "yellow",
    MemberState.DEAD: "red",
}


def _incoming(text: str) -> list[tuple[str, str, int, int]]:
    """The receiver's ``incoming`` fact: (id, name, size, bytes written) each;
    the mreceiver's ``incoming_multicast``: (sender, name, size, written)."""
    try:
        return [(str(r[3]), str(r[0]), int(r[1]), int(r[2])) for r in json.loads(text)]
    except (ValueError, TypeError, IndexError, KeyError):
        return []


RATE_CELLS = 12  # the widest rate: "1023.9 KiB/s"


def _rate(rate: float | None) -> str:
    """A rate as every command shows one (``1.5 GiB/s``: at most
    :data:`RATE_CELLS` cells)."""
    return "-" if rate is None else readable(rate, rate=True)


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


# Columns left out, in this order, while a table is wider than the terminal:
# what to act on (file, progress, rate, ETA) stays longest.
SEND_COLUMNS = (
    "ID", "FILE", "PEER", "MODE", "PRIO", "CAP", "SHARE", "PROGRESS", "DONE", "RATE", "ETA",
    "STATE",
)  # fmt: skip
SEND_DROP = ("PRIO", "SHARE", "CAP", "MODE", "STATE", "PROGRESS", "PEER")
RIGHT = frozenset({"ID", "CAP", "SHARE", "DONE", "RATE", "ETA"})  # numbers: their digits align
PEER_COLUMNS = ("ID", "ADDRESS", "STATE", "RTT", "RELIABILITY", "FAILURES", "LAST SEEN")
PEER_DROP = ("FAILURES", "RELIABILITY", "LAST SEEN", "RTT")
PEER_RIGHT = frozenset({"RTT", "RELIABILITY", "FAILURES", "LAST SEEN"})
NO_SENDS = "no sends running"
NO_PEERS = "no peers known"
BAR = 20  # the progress bar's width (cells), down to BAR // 2 before it is left out


def natural_widths(
    names: tuple[str, ...], rows: list[dict[str, str]], least: dict[str, int] | None = None
) -> dict[str, int]:
    """Each column's widest cell of ``rows`` (a map of column to text), its
    header's at least, and ``least``'s where that is wider (PROGRESS: a
    bar of :data:`BAR`)."""
    least = least or {}
    return {
        n: max(
            [cell_len(n), least.get(n, 0)]
            + [BAR if n == "PROGRESS" else cell_len(r[n]) for r in rows]
        )
        for n in names
    }


def shown_columns(natural: dict[str, int], drop: tuple[str, ...], width: int) -> dict[str, int]:
    """The columns that fit ``width`` and their widths
    (:func:`~peercrypt.cli.common.fit_columns`: the bar halved first, then
    ``drop`` left out in order; no cell is cut)."""
    shrink = {"PROGRESS": BAR // 2} if "PROGRESS" in natural else {}
    return fit_columns(natural, width, shrink, drop)


def _send_table(
    view: View, keys: bool, room: int, width: int
) -> tuple[list[tuple[dict[str, str], int, int]], dict[str, int], dict[str, int]]:
    """The sends' rows with names within ``room``, the columns of them that
    fit ``width`` with their widths (PROGRESS: the bar's), and every
    column's natural width (as wide as it has been: :class:`SteadyWidths`)."""
    rows = send_rows(view, keys, room)
    # With no send the placeholder line is the FILE cell: the columns are
    # fitted to it too, or the headers beside it are cut to "…".
    fitted = [c for c, _, _ in rows] or [dict.fromkeys(SEND_COLUMNS, "") | {"FILE": NO_SENDS}]
    # As wide as they will be: a send's DONE at "100% of", its measured
    # rate (one near 1 MiB/s read "1023.9 KiB/s" and "1.0 MiB/s" by turns).
    done = max((cell_len(done_text(size, size)) for _, size, _ in rows), default=0)
    least = {"DONE": done, "RATE": RATE_CELLS} if rows else {}
    natural = natural_widths(SEND_COLUMNS, fitted, least)
    if rows:
        natural = view.widths.setdefault("Sends", SteadyWidths()).natural(width, natural)
    return rows, shown_columns(natural, SEND_DROP, width), natural


def done_text(size: int, done: int) -> str:
    """What of ``size`` is done: ``45% of 200.0 MiB`` (``-``: no size)."""
    return f"{100 * done / size:.0f}% of {readable(size)}" if size else "-"


def _cut(text: str, limit: int, keys: bool) -> str:
    """``text`` within ``limit`` characters on a terminal; whole into a pipe."""
    return text[:limit] if keys else text


def _name(path: str, limit: int, keys: bool) -> str:
    """A file's name within ``limit`` characters on a terminal, cut in its
    middle (core/names.py); whole into a pipe. (Ids and fingerprints are cut
    at their end: their start is what commands take.)"""
    name = os.path.basename(path)
    return shortened(name, limit) if keys else name


def name_room(width: int, least: int) -> int:
    """Characters of a file name in a column: ``least`` up to 120 columns,
    and what a wider terminal has beyond them, up to 32 more (names are cut
    in their middle, "…": what tells them apart is often at their end)."""
    return least + max(0, min(32, width - 120))


def send_rows(
    view: View, keys: bool = True, file_room: int = 28
) -> list[tuple[dict[str, str], int, int]]:
    """Each running send's cells (PROGRESS: drawn as a bar), size and bytes
    done; names (within ``file_room``) and peers cut on a terminal
    (``keys``), whole into a pipe."""
    flows, shares = view.flows(), view.shares()
    cap = count_in(view.facts.get("max_rate"))
    rows = []
    for row in view.transfers:
        ident = row.get("id", "")
        size, done = count_in(row.get("size")), count_in(row.get("bytes"))
        flow = flows.get(ident, {})
        meter = view.meters.get(ident)
        share = shares.get(ident)
        rows.append(
            (
                {
                    "ID": ident,
                    "FILE": _name(row.get("file", ""), file_room, keys),
                    "PEER": _cut(row.get("peer", ""), 24, keys),
                    "MODE": row.get("mode", ""),
                    "PRIO": PRIORITY_NAMES.get(int(flow.get("priority", 0) or 0), "-"),
                    "CAP": _rate(flow["rate"]) if flow.get("rate") else "-",
                    "SHARE": f"{share:.0%}" if share is not None and cap else "-",
                    "PROGRESS": "",
                    "DONE": done_text(size, done),
                    "RATE": _rate(meter.rate if meter else None),
                    "ETA": human_eta(meter.eta(size - done) if meter and size else None),
                    "STATE": row.get("state", ""),
                },
                size,
                done if size else 0,
            )
        )
    return rows


def peer_rows(view: View, keys: bool = True) -> list[dict[str, str]]:
    rows = []
    for p in view.peers[:50]:
        rtt = p.get("rtt_ms", "")
        rows.append(
            {
                "ID": _cut(p.get("id", ""), 19, keys),
                "ADDRESS": p.get("address", ""),
                "STATE": p.get("state", ""),
                "RTT": f"{rtt} ms" if rtt else "-",
                "RELIABILITY": p.get("reliability", "") or "-",
                "FAILURES": p.get("failures", "") or "0",
                "LAST SEEN": f"{p['last_seen']}s ago" if p.get("last_seen") else "-",
            }
        )
    return rows


def _receiving_table(view: View, keys: bool, width: int) -> Table:
    """The incoming transfers (selectable: after the sends) and the
    multicast sessions coming in, each column as wide as it has been."""
    # A multicast session's sender where it fits (at 80 columns nothing is cut).
    wide = bool(view.sessions) and width >= WIDE_RECEIVING
    columns = ("ID", "FILE", "DONE", "FROM") if wide else ("ID", "FILE", "DONE")
    first = len(view.transfers)
    rows: list[tuple[dict[str, str], str | None]] = []
    for i, (ident, name, size, done) in enumerate(view.incoming):
        picked = "reverse" if first + i == view.selected else None
        cells = {"ID": ident, "FILE": _name(name, INCOMING_NAME, keys)}
        rows.append((cells | {"DONE": done_text(size, done), "FROM": ""}, picked))
    for sender, name, size, done in view.sessions:  # multicast: not selectable
        cells = {"ID": "multicast", "FILE": _name(name, INCOMING_NAME, keys)}
        rows.append((cells | {"DONE": done_text(size, done), "FROM": _cut(sender, 19, keys)}, None))
    every = view.incoming + view.sessions
    done = max((cell_len(done_text(size, size)) for _, _, size, _ in every), default=0)
    steady = view.widths.setdefault("Receiving", SteadyWidths())
    natural = steady.natural(width, natural_widths(columns, [c for c, _ in rows], {"DONE": done}))
    if rows:
        steady.keep(natural)
    else:
        steady.forget()
    table = Table(title="Receiving", title_justify="left", expand=keys, box=None, pad_edge=False)
    for name in columns:
        justify = "right" if name == "DONE" else "left"
        table.add_column(name, justify=justify, no_wrap=True, width=natural[name])  # type: ignore[arg-type]
    for cells, picked in rows:
        table.add_row(*(Text(cells[name]) for name in columns), style=picked)
    return table


def render(view: View, width: int, keys: bool = True) -> Group:
    facts = view.facts
    who = Text.assemble(
        ("PeerCrypt top", "bold"),
        f"  node {_cut(facts.get('fingerprint', '?'), 19, keys)}  pid {facts.get('pid', '?')}",
    )
    what = Text.assemble(
        ("mode ", "dim"),
        facts.get("mode", "?"),
        ("  node cap ", "dim"),
        rate_cap(str(facts.get("max_rate", ""))),  # as `status` and `max-rate` say it
        ("  receiving ", "dim"),
        str(count_in(facts.get("active")) + len(view.sessions)),  # multicast sessions too
        "  ",
        (time.strftime("%H:%M:%S"), "dim"),
    )
    # one line if it fits, else two (never a value broken across lines)
    one_line = who.cell_len + 2 + what.cell_len <= width
    head = Text.assemble(who, "  " if one_line else "\n", what)
    rows, shown, natural = _send_table(view, keys, 28, width)
    if name_room(width, 28) > 28:
        # More of a long name only where every column shown at 28 still fits
        # (up to 32 more characters took columns to act on: MODE, CAP, SHARE).
        wider = _send_table(view, keys, name_room(width, 28), width)
        if len(wider[1]) >= len(shown):
            rows, shown, natural = wider
    sends = view.widths.setdefault("Sends", SteadyWidths())
    if rows:
        sends.keep(natural)
    else:
        sends.forget()
    transfers = Table(title="Sends", title_justify="left", expand=keys, box=None, pad_edge=False)
    for name, cells in shown.items():
        justify = "right" if name in RIGHT else "left"
        # (a width of its own: rich would fit it to this refresh's cells)
        transfers.add_column(name, justify=justify, no_wrap=True, width=cells)  # type: ignore[arg-type]
    for i, (texts, size, done) in enumerate(rows):
        bar = ProgressBar(total=max(size, 1), completed=done, width=shown.get("PROGRESS", BAR))
        transfers.add_row(
            *(bar if name == "PROGRESS" else Text(texts[name]) for name in shown),
            style="reverse" if i == view.selected else None,
        )
    if not rows:
        transfers.add_row("", Text(NO_SENDS, style="dim"))
    receiving = _receiving_table(view, keys, width)
    listed = peer_rows(view, keys)
    # With no peer its placeholder is the ID cell: fitted to it too, as the
    # sends' (at 50 columns the headers were cut to "ADDRE…", "ST…").
    fitted = listed or [dict.fromkeys(PEER_COLUMNS, "") | {"ID": NO_PEERS}]
    known = view.widths.setdefault("Peers", SteadyWidths())
    natural = known.natural(width, natural_widths(PEER_COLUMNS, fitted))
    if listed:
        known.keep(natural)
    else:
        known.forget()
    peers = Table(title="Peers", title_justify="left", expand=keys, box=None, pad_edge=False)
    shown = shown_columns(natural, PEER_DROP, width)
    for name, cells in shown.items():
        justify = "right" if name in PEER_RIGHT else "left"
        peers.add_column(name, justify=justify, no_wrap=True, width=cells)  # type: ignore[arg-type]
    for row in listed:
        colour = _STATE_COLOUR.get(row["STATE"], "")
        # Text, not markup: a peer's text ("[link=...]" in a name) shows as it is.
        peers.add_row(*(Text(row[n], style=colour if n == "STATE" else "") for n in shown))
    if not listed:
        peers.add_row(Text(NO_PEERS, style="dim"))
    line = "up/down select   +/- double/halve rate   c cancel   q quit"
    if view.confirm_cancel is not None:
        line = f"cancel transfer {view.confirm_cancel}? y/n"
    coming = view.incoming or view.sessions
    shown_in: list[Table | Text] = [receiving, Text("")] if coming else []
    if not keys:  # printed once, not live: no keys to tell
        return Group(head, Text(""), transfers, Text(""), *shown_in, peers)
    # The node's answer on a line of its own (beside the keys, a narrow
    # terminal cut it to nothing, or before the id it named).
    footer = [Text(line, style="bold")] + ([Text(view.message)] if view.message else [])
    return Group(head, Text(""), transfers, Text(""), *shown_in, peers, Text(""), *footer)


# -- the terminal and the node ------------------------------------------------------------


class NodeLink:
    """One control connection; every call raises NodeUnavailable or returns."""

    def __init__(self, data_dir: Path, timeout: float = 3.0) -> None:
        self.client = ControlClient.for_data_dir(data_dir)
        self.timeout = timeout
        # Cancels sent and not answered yet (request -> transfer): the node
        # answers once the send ended, within CANCEL_WAIT s; the view does
        # not wait (it froze up to 7 s), their answers come among the others'.
        self.cancels: dict[int, int] = {}
        self.answers: list[str] = []

    def ask(self, msg: codec.Message) -> codec.Message:
        if not self.client.node_alive():  # (it stopped since the last refresh)
            raise NodeUnavailable("the node stopped")
        self.client.send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self.client.receive(max(0.0, deadline - time.monotonic()))
            except NodeUnavailable:
                if not self.client.node_alive():
                    raise NodeUnavailable("the node stopped") from None
                raise
            if not self._answered(reply):
                break
        if isinstance(reply, ErrorReply):
            raise NodeUnavailable(refusal(reply))
        return reply

    def _answered(self, reply: codec.Message) -> bool:
        """Whether ``reply`` is the answer to a cancel sent (kept for :meth:`said`)."""
        transfer = self.cancels.pop(int(getattr(reply, "request", 0)), None)
        if transfer is None:
            return False
        if isinstance(reply, CancelAnswer):
            verdict = CancelVerdict.told(reply.outcome, reply.code, reply.reason)
            self.answers.append(said(transfer, verdict)[0])
        elif isinstance(reply, SettingReply):  # a node of the release before: its words
            self.answers.append(reply.text)
        else:  # (control's refusal names no request: it stops the view, as any)
            self.answers.append(f"cancel of transfer {transfer}: unexpected {reply.TYPE}")
        return True

    def said(self) -> list[str]:
        """The cancels' answers that came since the last call."""
        told, self.answers = self.answers, []
        return told

    def snapshot(self) -> tuple[dict[str, str], list[dict[str, str]], list[dict[str, str]]]:
        status = self.ask(StatusRequest(request=self.client.next_id()))
        sends = self.ask(TransfersRequest(request=self.client.next_id()))
        peers = self.ask(PeersRequest(request=self.client.next_id()))
        if not (
            isinstance(status, StatusReply)
            and isinstance(sends, TransfersReply)
            and isinstance(peers, PeersReply)
        ):
            raise NodeUnavailable("the node answered something unexpected")
        return dict(status.node), list(sends.transfers), list(peers.peers)

    def setting(self, msg: codec.Message) -> str:
        reply = self.ask(msg)
        if not isinstance(reply, SettingReply):
            raise NodeUnavailable("the node answered something unexpected")
        return reply.text

    def cancel(self, transfer: int) -> str:
        """Cancel send ``transfer``; how it ended, in the words of
        ``peercrypt cancel``, comes later (:meth:`said`)."""
        request = self.client.next_id()
        self.client.send(CancelTransfer(request=request, transfer=transfer))
        self.cancels[request] = transfer
        return f"cancelling transfer {transfer} ..."

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def _keys_unbuffered() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one by one, not echoed), restored on exit."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    try:
        if fd is not None:
            tty.setcbreak(fd)
        yield fd
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_keys(fd: int | None, timeout: float) -> list[str]:
    if fd is None:
        time.sleep(timeout)
        return []
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    data = os.read(fd, 64).decode(errors="replace")
    keys, i = [], 0
    while i < len(data):
        if data.startswith("\x1b[A", i) or data.startswith("\x1b[B", i):
            keys.append("up" if data[i + 2] == "A" else "down")
            i += 3
        else:
            keys.append(data[i])
            i += 1
    return keys


def _act(view: View, link: NodeLink, key: str) -> bool:
    """Handle one key; False to quit."""
    ident = view.selected_id()
    if view.confirm_cancel is not None:
        ident, view.confirm_cancel = view.confirm_cancel, None  # the one asked about
        if key in ("y", "Y") and ident.isdigit():
            view.say(link.cancel(int(ident)))
        elif key in ("y", "Y"):
            incoming = CancelIncoming(request=link.client.next_id(), transfer=ident)
            view.say(link.setting(incoming))
        else:
            view.say("not cancelled")
        return True
    if key in ("q", "Q", "\x03"):
        return False
    if key in ("up", "k"):
        view.selected = max(0, view.selected - 1)
    elif key in ("down", "j"):
        view.selected = min(max(0, len(view.selectable()) - 1), view.selected + 1)
    elif key in ("c", "C") and ident is not None:
        view.confirm_cancel = ident
    elif key in ("+", "-") and ident is not None and ident.isdigit():
        base = float(view.flows().get(ident, {}).get("rate") or view.rate_of(ident) or 0)
        if base <= 0:
            view.say(f"transfer {ident} has no rate yet; wait a refresh")
            return True
        rate = int(base * 2 if key == "+" else base / 2)
        change = SettingRequest(
            request=link.client.next_id(), name="rate", value=str(rate), transfer=int(ident)
        )
        view.say(link.setting(change))
    return True


PIPE_WIDTH = 10_000  # columns a view printed into a pipe may take
WIDE_RECEIVING = 100  # columns from which Receiving shows a multicast's sender


@click.command("top")
@click.option(
    "--interval",
    type=FiniteRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.pass_obj
def top(obj: dict[str, Any], interval: float) -> None:
    """A live view of the node: sends, peers, the scheduler's shares and caps.

    `q` or Ctrl-C ends it (exit 0: a view left, nothing interrupted). Into
    a pipe or a file (not a terminal) it prints one view, its rates over
    one interval, and exits."""
    data_dir: Path = obj["data_dir"]
    try:
        link = NodeLink(data_dir)
        first = link.snapshot()
    except NodeUnavailable as exc:
        raise UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED) from None
    view = View()
    view.update(time.monotonic(), *first)
    console = Console()
    if not console.is_terminal:
        try:
            time.sleep(interval)  # the rates: what changed over one interval
            view.update(time.monotonic(), *link.snapshot())
        except NodeUnavailable as exc:
            raise UserError(f"{exc}; top stopped", errors.FAILED) from None
        finally:
            link.close()
        # Every column whole, no line padded (a pipe has no width to fit).
        wide = Console(width=PIPE_WIDTH, file=io.StringIO())
        wide.print(render(view, PIPE_WIDTH, keys=False))
        text = wide.file.getvalue()  # type: ignore[attr-defined]
        click.echo("\n".join(line.rstrip() for line in text.splitlines()))
        return
    try:
        with (
            _keys_unbuffered() as fd,
            # Not redirecting stdout: what another thread writes (the shell's
            # background send ending) went through rich's proxy onto the normal
            # screen, and rich drew its last frame there after it on leaving;
            # the shell holds such lines until `top` ends.
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            live.update(render(view, console.width), refresh=True)
            due = time.monotonic() + interval
            while True:
                for key in _read_keys(fd, max(0.0, due - time.monotonic())):
                    if not _act(view, link, key):
                        return
                    live.update(render(view, console.width), refresh=True)
                if time.monotonic() >= due:
                    view.update(time.monotonic(), *link.snapshot())
                    said = link.said()
                    if said:  # (two answered within a refresh: both told)
                        view.say("; ".join(said))
                    live.update(render(view, console.width), refresh=True)
                    due = time.monotonic() + interval
    except NodeUnavailable as exc:
        raise UserError(f"{exc}; top stopped", errors.FAILED) from None
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
