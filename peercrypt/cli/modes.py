"""CLI for transfer modes: ``send`` policy options, node defaults, and the
live commands ``set-mode``, ``rate``, ``max-rate``, ``congestion`` and
``transfers`` (they talk to the running node's scheduler and sender)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from peercrypt import errors
from peercrypt.cli.common import UserError, table
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.modes import (
    ACK_THRESHOLD,
    AIMD_MAX_WINDOW_KB,
    AIMD_MIN_WINDOW_KB,
    AIMD_WINDOW_KB,
    MODES,
    PARALLEL_LANES,
    Policy,
    PolicyError,
    parse_priority,
)
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelTransfer,
    ErrorReply,
    SettingReply,
    SettingRequest,
    TransfersReply,
    TransfersRequest,
)

F = TypeVar("F", bound=Callable[..., Any])
_MODE = click.Choice(MODES, case_sensitive=False)


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
            type=click.Choice((*MODES, "multicast"), case_sensitive=False),
            help="Transfer mode (default: the node's).",
        ),
        click.option(
            "-b",
            "--bucket",
            "burst",
            type=click.IntRange(4096),
            help="token-bucket: bucket size in bytes (default: one second at -r).",
        ),
        click.option(
            "-r",
            "--rate",
            "rate",
            type=click.IntRange(1),
            help="token-bucket: rate in bytes per second (implies --mode token-bucket).",
        ),
        click.option("-w", "window_kb", type=click.IntRange(1), help="aimd: initial window, KB."),
        click.option(
            "-min-w", "min_window_kb", type=click.IntRange(1), help="aimd: minimum window, KB."
        ),
        click.option(
            "-max-w", "max_window_kb", type=click.IntRange(1), help="aimd: maximum window, KB."
        ),
        click.option(
            "-ack-threshold",
            "ack_threshold",
            type=click.IntRange(1),
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
            help="qos: priority (shares 1:2:3).",
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


def send_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the policy options from a ``send`` call into SendRequest fields."""
    mode = kwargs.pop("mode")
    rate = kwargs.pop("rate")
    if rate is not None and mode is None:
        mode = "token-bucket"
    no_timeout, no_dupack = kwargs.pop("no_timeout"), kwargs.pop("no_dupack")
    return {
        "mode": mode,
        "rate": rate,
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


def node_policy_options(func: F) -> F:
    """``node`` options for the default policy and the node's rate cap."""
    options = [
        click.option(
            "--mode",
            "default_mode",
            type=_MODE,
            default="normal",
            show_default=True,
            envvar="DEFAULT_MODE",
            help="Default transfer mode (env DEFAULT_MODE).",
        ),
        click.option(
            "--max-rate",
            type=click.IntRange(0),
            default=0,
            help="Cap all outgoing transfers together, bytes/s (0: none).",
        ),
        click.option(
            "--aimd-window",
            type=click.IntRange(1),
            default=AIMD_WINDOW_KB,
            envvar="AIMD_WINDOW",
            show_default=True,
            help="KB (env AIMD_WINDOW).",
        ),
        click.option(
            "--aimd-min-window",
            type=click.IntRange(1),
            default=AIMD_MIN_WINDOW_KB,
            envvar="AIMD_MIN_WINDOW",
            show_default=True,
            help="KB (env AIMD_MIN_WINDOW).",
        ),
        click.option(
            "--aimd-max-window",
            type=click.IntRange(1),
            default=AIMD_MAX_WINDOW_KB,
            envvar="AIMD_MAX_WINDOW",
            show_default=True,
            help="KB (env AIMD_MAX_WINDOW).",
        ),
        click.option(
            "--parallel-threads",
            type=click.IntRange(1, 64),
            default=PARALLEL_LANES,
            envvar="PARALLEL_THREADS",
            show_default=True,
            help="Default lanes of parallel mode (env PARALLEL_THREADS).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def node_policy(kwargs: dict[str, Any]) -> tuple[Policy, int]:
    """Pop the node policy options; return (default policy, max rate)."""
    policy = Policy(
        mode=kwargs.pop("default_mode"),
        window_kb=kwargs.pop("aimd_window"),
        min_window_kb=kwargs.pop("aimd_min_window"),
        max_window_kb=kwargs.pop("aimd_max_window"),
        ack_threshold=ACK_THRESHOLD,
        lanes=kwargs.pop("parallel_threads"),
    )
    max_rate: int = kwargs.pop("max_rate")
    try:
        return policy.validated(), max_rate
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None


# -- live commands --------------------------------------------------------------


def _ask(obj: dict[str, Any], msg: codec.Message) -> codec.Message:
    data_dir: Path = obj["data_dir"]
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            client.send(msg)
            reply = client.receive(5.0)
    except NodeUnavailable as exc:
        raise UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED) from None
    if isinstance(reply, ErrorReply):
        raise UserError(f"the node refused: {reply.reason}", errors.FAILED)
    return reply


def _setting(obj: dict[str, Any], name: str, value: str, transfer: int = 0) -> None:
    reply = _ask(obj, SettingRequest(request=1, name=name, value=value, transfer=transfer))
    if not isinstance(reply, SettingReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    if not reply.ok:
        raise UserError(reply.text, errors.USAGE)
    click.echo(reply.text)


@click.command("set-mode")
@click.argument("mode", type=_MODE)
@click.pass_obj
def set_mode(obj: dict[str, Any], mode: str) -> None:
    """Change the running node's default transfer mode."""
    _setting(obj, "mode", mode.lower())


@click.command("rate")
@click.argument("bytes_per_sec", type=click.IntRange(0))
@click.option(
    "--transfer",
    type=click.IntRange(1),
    default=None,
    help="Only this transfer (see `peercrypt transfers`); default: all running.",
)
@click.pass_obj
def rate(obj: dict[str, Any], bytes_per_sec: int, transfer: int | None) -> None:
    """Change the rate of running transfers live (0: unlimited)."""
    _setting(obj, "rate", str(bytes_per_sec), transfer or 0)


@click.command("cancel")
@click.argument("transfer", type=click.IntRange(1))
@click.pass_obj
def cancel(obj: dict[str, Any], transfer: int) -> None:
    """Cancel a running or waiting send by its id (see `peercrypt transfers`)."""
    listing = _ask(obj, TransfersRequest(request=1))
    if not isinstance(listing, TransfersReply):
        raise UserError(f"unexpected reply {listing.TYPE}", errors.FAILED)
    if str(transfer) not in {row.get("id") for row in listing.transfers}:
        raise UserError(f"no running transfer {transfer} (see `peercrypt transfers`)")
    reply = _ask(obj, CancelTransfer(request=1, transfer=transfer))
    if not isinstance(reply, SettingReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    click.echo(reply.text)


@click.command("max-rate")
@click.argument("bytes_per_sec", type=click.IntRange(0))
@click.pass_obj
def max_rate(obj: dict[str, Any], bytes_per_sec: int) -> None:
    """Cap all outgoing transfers of the node together (0: no cap), live."""
    _setting(obj, "max-rate", str(bytes_per_sec))


@click.command("congestion")
@click.argument(
    "key",
    type=click.Choice(["window", "min-window", "max-window", "threshold", "timeout", "dupack"]),
)
@click.argument("value")
@click.pass_obj
def congestion(obj: dict[str, Any], key: str, value: str) -> None:
    """AIMD defaults: window|min-window|max-window KB, threshold N, timeout|dupack on|off."""
    _setting(obj, f"congestion.{key}", value)


@click.command("transfers")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def transfers(obj: dict[str, Any], as_json: bool) -> None:
    """List the node's running and waiting sends."""
    reply = _ask(obj, TransfersRequest(request=1))
    if not isinstance(reply, TransfersReply):
        raise UserError(f"unexpected reply {reply.TYPE}", errors.FAILED)
    if as_json:
        click.echo(json.dumps(reply.transfers))
        return
    if not reply.transfers:
        click.echo("no transfers running")
        return
    rows = []
    for row in reply.transfers:
        size, done = row.get("size", "?"), int(row.get("bytes", "0") or 0)
        percent = f"{100 * done // int(size)}%" if size.isdigit() and int(size) else "-"
        rows.append(
            [row["id"], row["state"], row["mode"] or "-", f"{done}/{size}", percent,
             f"{row.get('seconds', '0')}s", row["peer"], row["file"]]
        )  # fmt: skip
    headers = ["id", "state", "mode", "bytes", "done", "time", "peer", "file"]
    click.echo(table(headers, rows))
    sys.stdout.flush()
