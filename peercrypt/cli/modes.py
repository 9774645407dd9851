"""CLI for transfer modes: ``send`` policy options, node defaults, and the
live commands ``set-mode``, ``rate``, ``max-rate``, ``congestion`` and
``transfers`` (they talk to the running node's scheduler and sender)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from peercrypt import errors
from peercrypt.cli.common import (
    RATE_HELP,
    SIZE_HELP,
    ByteSize,
    OptionalArgument,
    UserError,
    count_in,
    table,
    terminal_width,
    typed_row,
)
from peercrypt.cli.follow import refusal
from peercrypt.cli.status_view import rate_cap
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.cancels import CANCEL_WAIT, CancelVerdict, said
from peercrypt.core.modes import (
    ALL_MODES,
    CONGESTION_KEYS,
    MAX_ACK_THRESHOLD,
    MAX_RATE,
    MAX_WINDOW_KB,
    PolicyError,
    parse_priority,
)
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

F = TypeVar("F", bound=Callable[..., Any])
_MODE = click.Choice(ALL_MODES, case_sensitive=False)
_WINDOW_KB = click.IntRange(1, MAX_WINDOW_KB)


def _priority(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_priority(value)
    except PolicyError as exc:
        raise click.BadParameter(str(exc)) from None


def send_policy_options(func: F) -> F:
    """The seed's ``send`` options; each left out means the node's default."""
    options = [
        click.option(
            "--mode",
            type=click.Choice(ALL_MODES, case_sensitive=False),
            help="Transfer mode (default: the mode of the options given, else the node's).",
        ),
        click.option(
            "-b",
            "--bucket",
            "burst",
            type=ByteSize(1),
            help="token-bucket: bucket size in bytes (default: 50 ms at -r, at least 4096). "
            + SIZE_HELP,
        ),
        click.option(
            "-r",
            "--rate",
            "rate",
            type=ByteSize(1, MAX_RATE, rate=True),
            help="token-bucket: rate in bytes per second. " + RATE_HELP,
        ),
        click.option("-w", "window_kb", type=_WINDOW_KB, help="aimd: initial window, KB."),
        click.option("-min-w", "min_window_kb", type=_WINDOW_KB, help="aimd: minimum window, KB."),
        click.option("-max-w", "max_window_kb", type=_WINDOW_KB, help="aimd: maximum window, KB."),
        click.option(
            "-ack-threshold",
            "ack_threshold",
            type=click.IntRange(1, MAX_ACK_THRESHOLD),
            help="aimd: duplicate acks that signal a loss (default 3).",
        ),
        click.option(
            "-no-timeout",
            "no_timeout",
            is_flag=True,
            help="aimd: a timeout is not a congestion signal.",
        ),
        click.option(
            "-no-dupack",
            "no_dupack",
            is_flag=True,
            help="aimd: duplicate acks are not a congestion signal.",
        ),
        click.option(
            "-p",
            "--priority",
            "priority",
            callback=_priority,
            metavar="normal|high|highest|1-3",
            help="the flow's weight (1:2:3) in qos grants and in a peer's shared "
            "congestion window; alone, it selects qos.",
        ),
        click.option(
            "-t",
            "--threads",
            "lanes",
            type=click.IntRange(1, 64),
            help="parallel: lanes (connections and crypto workers).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# Each mode's own ``send`` options: parameter -> (flag, mode). Without --mode
# they select their mode; options of two modes at once are an error. The
# priority is every flow's weight (qos grants, a peer's shared aimd window):
# alone it selects qos, beside another mode's options it only weighs.
OPTION_MODES: dict[str, tuple[str, str]] = {
    "burst": ("-b", "token-bucket"),
    "rate": ("-r", "token-bucket"),
    "window_kb": ("-w", "aimd"),
    "min_window_kb": ("-min-w", "aimd"),
    "max_window_kb": ("-max-w", "aimd"),
    "ack_threshold": ("-ack-threshold", "aimd"),
    "no_timeout": ("-no-timeout", "aimd"),
    "no_dupack": ("-no-dupack", "aimd"),
    "priority": ("-p", "qos"),
    "lanes": ("-t", "parallel"),
    "multi": ("-m", "multicast"),
    "dual": ("-dual", "multicast"),
    "to": ("--to", "multicast"),
}


def select_mode(mode: str | None, options: dict[str, Any]) -> str | None:
    """The send's mode: ``--mode``, else the mode whose options were given,
    else None (the node's default). UserError when options disagree."""
    given = [
        flag_mode
        for name, flag_mode in OPTION_MODES.items()
        if options.get(name) not in (None, False, (), "")
    ]
    weighs = [flag_mode for flag_mode in given if flag_mode[0] == "-p"]
    if len(given) > len(weighs) or mode is not None:
        given = [flag_mode for flag_mode in given if flag_mode not in weighs]
    if mode is not None:
        mode = mode.lower()
        wrong = [f"{flag} is an option of {owner}" for flag, owner in given if owner != mode]
        if wrong:
            raise UserError(f"{'; '.join(wrong)}, not for --mode {mode}")
        return mode
    owners = sorted({owner for _, owner in given})
    if len(owners) > 1:
        described = ", ".join(f"{flag} ({owner})" for flag, owner in given)
        raise UserError(f"options of more than one mode: {described}; use one mode's options")
    return owners[0] if owners else None


def send_overrides(kwargs: dict[str, Any], mode: str | None) -> dict[str, Any]:
    """Pop the policy options from a ``send`` call into SendRequest fields."""
    kwargs.pop("mode")
    no_timeout, no_dupack = kwargs.pop("no_timeout"), kwargs.pop("no_dupack")
    return {
        "mode": mode,
        "rate": kwargs.pop("rate"),
        "burst": kwargs.pop("burst"),
        "window_kb": kwargs.pop("window_kb"),
        "min_window_kb": kwargs.pop("min_window_kb"),
        "max_window_kb": kwargs.pop("max_window_kb"),
        "ack_threshold": kwargs.pop("ack_threshold"),
        "timeout_detect": False if no_timeout else None,
        "dupack_detect": False if no_dupack else None,
        "priority": kwargs.pop("priority"),
        "lanes": kwargs.pop("lanes"),
    }


# -- live commands --------------------------------------------------------------


def _ask(obj: dict[str, Any], msg: codec.Message, wait: float = 5.0) -> codec.Message:
    data_dir: Path = obj["data_dir"]
    try:
        client = ControlClient.for_data_dir(data_dir)
    except NodeUnavailable as exc:  # none runs for it (or it died): the hint helps
        raise UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED) from None
    try:
        with client:
            client.send(msg)
            reply = client.receive(wait)
    except NodeUnavailable as exc:  # it ran: no hint to start one, unless it ended
        if not client.node_alive():
            raise UserError(
                "the node stopped (start one with `peercrypt node`)", errors.FAILED
            ) from None
        raise UserError(str(exc), errors.FAILED) from None
    if isinstance(reply, ErrorReply):
        raise UserError(refusal(reply), errors.FAILED)
    return reply


def _setting(
    obj: dict[str, Any], name: str, value: str, transfer: int = 0, quiet: bool = False
) -> None:
    reply = _ask(obj, SettingRequest(request=1, name=name, value=value, transfer=transfer))
    if not isinstance(reply, SettingReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    if not reply.ok:
        raise UserError(reply.text, errors.USAGE)
    if not quiet:
        click.echo(reply.text)


# The scheduler's "aimd" fact (w=4096 min=256 ...) as JSON keys.
_AIMD_KEYS = {"w": "window_kb", "min": "min_window_kb", "max": "max_window_kb"}


def _aimd_json(fact: str) -> dict[str, Any]:
    pairs = (word.split("=", 1) for word in fact.split() if "=" in word)
    out: dict[str, Any] = {}
    for key, value in pairs:
        out[_AIMD_KEYS.get(key, key)] = int(value) if value.isdigit() else value
    return out


# Each key `congestion` takes, with the name of its value in _aimd_json's.
_CONGESTION_SHOWN = (
    ("window", "window_kb"),
    ("min-window", "min_window_kb"),
    ("max-window", "max_window_kb"),
    ("threshold", "threshold"),
    ("timeout", "timeout"),
    ("dupack", "dupack"),
)


def congestion_line(fact: str) -> str:
    """The scheduler's "aimd" fact as the `congestion` line that sets it
    (windows in KB, as the command takes them): shown, it can be run back."""
    shown = _aimd_json(fact)
    words = [f"{key} {shown[name]}" for key, name in _CONGESTION_SHOWN if name in shown]
    if not words:  # not a fact this build reads (a node of another release)
        return f"congestion: {fact}"
    return " ".join(["congestion", *words])


@click.command("set-mode")
@click.argument("mode", type=_MODE, metavar="MODE")
@click.pass_obj
def set_mode(obj: dict[str, Any], mode: str) -> None:
    """Change the running node's default transfer mode."""
    _setting(obj, "mode", mode.lower())


@click.command("rate")
@click.argument("ident", nargs=-1, metavar="[ID]", type=click.IntRange(1))
@click.argument("bytes_per_sec", metavar="BYTES_PER_SEC", type=ByteSize(0, MAX_RATE, rate=True))
@click.option(
    "--transfer",
    type=click.IntRange(1),
    default=None,
    help="Only this transfer (see `peercrypt transfers`); default: all running.",
)
@click.pass_obj
def rate(
    obj: dict[str, Any], ident: tuple[int, ...], bytes_per_sec: int, transfer: int | None
) -> None:
    """Change the rate of running transfers live (0: unlimited).

    ID names one transfer, as --transfer does (`rate 3 10M`). BYTES_PER_SEC
    takes suffixes: 512, 64K, 1.5M, 2GiB (1024); 10MB (1000); /s optional.
    """
    if len(ident) > 1 or (ident and transfer is not None):
        raise click.UsageError("name one transfer: `rate ID BYTES_PER_SEC` or `--transfer ID`")
    _setting(obj, "rate", str(bytes_per_sec), (ident[0] if ident else transfer) or 0)


INCOMING_ID = re.compile(r"in[1-9][0-9]{0,15}")


@click.command("cancel")
@click.argument("transfer", metavar="ID")
@click.option(
    "--keep",
    is_flag=True,
    help="An incoming transfer: keep its part for a resume (default: delete it).",
)
@click.pass_obj
def cancel(obj: dict[str, Any], transfer: str, keep: bool) -> None:
    """Cancel a send (`peercrypt transfers`) or an incoming transfer (inN: `status`, `top`).

    The other side's command then fails: a cancelled incoming transfer's
    sender exits 1 with "cancelled". An incoming transfer's part is deleted
    unless --keep; its slot and its space are freed at once, even while its
    final check is stuck in the disk.
    """
    ident = transfer.strip().lower()
    if INCOMING_ID.fullmatch(ident):
        reply = _ask(obj, CancelIncoming(request=1, transfer=ident, keep=keep))
        if not isinstance(reply, SettingReply):
            raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
        if not reply.ok:  # no such id, or too late (being stored): as for a send's (exit 2)
            raise UserError(reply.text)
        click.echo(reply.text)
        return
    if not ident.isdigit() or int(ident) < 1:
        raise UserError(
            f"{transfer[:40]!r} is not a transfer id: a send's number (`peercrypt transfers`) "
            "or an incoming transfer's inN (`peercrypt status`)",
            errors.USAGE,
        )
    if keep:
        raise UserError("--keep applies to incoming transfers (inN) only", errors.USAGE)
    _cancel_send(obj, int(ident))


def _cancel_send(obj: dict[str, Any], transfer: int) -> None:
    """Cancel send ``transfer`` and say how it ended: the node answers once
    it knows (peercrypt.core.cancels), within CANCEL_WAIT s."""
    reply = _ask(obj, CancelTransfer(request=1, transfer=transfer), CANCEL_WAIT + 2.0)
    if isinstance(reply, SettingReply):  # a node of the release before (updated under it)
        if not reply.ok:
            raise UserError(reply.text, errors.USAGE)
        click.echo(reply.text)
        return
    if not isinstance(reply, CancelAnswer):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    line, code = said(transfer, CancelVerdict.told(reply.outcome, reply.code, reply.reason))
    if code != errors.OK:
        raise UserError(line, code)
    click.echo(line)


@click.command("max-rate")
@click.argument(
    "bytes_per_sec",
    cls=OptionalArgument,
    metavar="[BYTES_PER_SEC]",
    required=False,
    type=ByteSize(0, MAX_RATE, rate=True),
)
@click.pass_obj
def max_rate(obj: dict[str, Any], bytes_per_sec: int | None) -> None:
    """Show or set the cap of all outgoing transfers of the node together (0: no cap), live.

    BYTES_PER_SEC takes suffixes: 512, 64K, 1.5M, 2GiB (1024); 10MB (1000); /s optional.
    """
    if bytes_per_sec is not None:
        _setting(obj, "max-rate", str(bytes_per_sec))
        return
    click.echo(f"node rate cap: {rate_cap(_node_fact(obj, 'max_rate', ''))}")


def _node_fact(obj: dict[str, Any], key: str, default: str) -> str:
    """One fact of the node's status (a live setting's current value)."""
    reply = _ask(obj, StatusRequest(request=1))
    if not isinstance(reply, StatusReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    return str(reply.node.get(key, default))


@click.command("congestion")
@click.argument("pairs", nargs=-1, metavar="[KEY VALUE]...")
@click.option("--json", "as_json", is_flag=True, help="Print the AIMD defaults as one JSON object.")
@click.pass_obj
def congestion(obj: dict[str, Any], pairs: tuple[str, ...], as_json: bool) -> None:
    """Show or set the AIMD defaults live (several keys, in any order).

    Keys: window, min-window, max-window (KB), threshold (duplicate acks),
    timeout and dupack (on|off); window bounds not given follow the others.
    Shown as the line that sets them, e.g. `congestion window 4096 min-window
    256 max-window 16384 threshold 3 timeout on dupack on`.
    """
    if pairs:
        if len(pairs) % 2:
            raise UserError(
                f"congestion takes KEY VALUE pairs; {pairs[-1]!r} has no value "
                f"(keys: {', '.join(CONGESTION_KEYS)})"
            )
        words = zip(pairs[::2], pairs[1::2], strict=True)
        _setting(obj, "congestion", " ".join(f"{k}={v}" for k, v in words), quiet=as_json)
        if not as_json:
            return
    fact = _node_fact(obj, "aimd", "unknown")
    click.echo(json.dumps(_aimd_json(fact)) if as_json else congestion_line(fact))


def _retry_note(row: dict[str, str]) -> str:
    """A send between retries: the attempt to come, when, and why the last
    failed; a send waiting for a busy receiver's slot: when it offers again
    at the latest, and the receiver's words."""
    if row.get("state") == "waiting" and row.get("error"):
        return f"offer in {row.get('next_in', '?')}s: {row['error']}"
    if row.get("state") != "retrying":
        return ""
    note = f"attempt {row.get('attempt', '?')} in {row.get('next_in', '?')}s"
    error = row.get("error", "")
    return f"{note}: {error}" if error else note


@click.command("transfers")
@click.option("--json", "as_json", is_flag=True, help="Print the transfers as a JSON list.")
@click.pass_obj
def transfers(obj: dict[str, Any], as_json: bool) -> None:
    """List the node's running and waiting sends."""
    reply = _ask(obj, TransfersRequest(request=1))
    if not isinstance(reply, TransfersReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    for actor in reply.unanswered:  # an attached actor away: the rest is listed
        click.echo(
            f"peercrypt: warning: the node's {actor} actor did not answer (attached from "
            "elsewhere and away?): its sends are not listed",
            err=True,
        )
    if as_json:
        click.echo(json.dumps([json_row(row) for row in reply.transfers]))
        return
    if not reply.transfers:
        click.echo("no transfers running")
        return
    click.echo(transfers_table(reply.transfers, terminal_width()))
    sys.stdout.flush()


_COUNTS = ("id", "bytes", "size", "attempt")
_SECONDS = ("seconds", "next_in")


def json_row(row: dict[str, str]) -> dict[str, object]:
    """A `transfers` row for `--json`: counts as integers and seconds as
    numbers (the node's rows carry text); one that is not known yet (a
    walk's size ``?``) or not a number (another build's row) is null."""
    return typed_row(row, _COUNTS, _SECONDS)


def transfers_table(transfers: list[dict[str, str]], width: int | None = None) -> str:
    """`transfers` as a table; a field a row lacks is ``-``, a count that
    is not one (a walk's size ``?``) no percentage."""
    rows = []
    for row in transfers:
        field = {k: row.get(k) or "-" for k in ("id", "state", "mode", "peer", "file")}
        size, done = row.get("size", "?"), count_in(row.get("bytes"))
        percent = f"{100 * done // count_in(size)}%" if count_in(size) else "-"
        total = readable(count_in(size)) if count_in(size) or size == "0" else size
        rows.append(
            [field["id"], field["state"], field["mode"], f"{readable(done)}/{total}", percent,
             f"{row.get('seconds', '0')}s", field["peer"], field["file"], _retry_note(row)]
        )  # fmt: skip
    headers = ["id", "state", "mode", "bytes", "done", "time", "peer", "file", "retry"]
    if not any(r[-1] for r in rows):  # no send between retries: no such column
        headers, rows = headers[:-1], [r[:-1] for r in rows]
    shrink = {"file": 20, "peer": 14, "retry": 24}
    return table(headers, rows, width=width, shrink=shrink, drop=("time", "mode"))
