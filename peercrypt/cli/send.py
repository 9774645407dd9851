"""``send FILE... HOST PORT``: unicast in any mode, or multicast with ``-m``,
``-dual``, ``--to`` or ``--mode multicast`` (handed to
:mod:`peercrypt.cli.multicast`). A folder, or several files and folders, go
as one transfer (peercrypt/core/tree.py)."""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from peercrypt.chunking import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_CHUNK,
    DEFAULT_MIN_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    MiB,
)
from peercrypt.cli import modes
from peercrypt.cli.common import (
    SIZE_HELP,
    ByteSize,
    FiniteRange,
    UserError,
    check_resolvable,
    local_node,
    network_key_option,
    open_option,
)
from peercrypt.cli.fast import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    not_utf8,
    source_paths,
)
from peercrypt.cli.follow import follow
from peercrypt.cli.progress import progress_view, wanted
from peercrypt.cli.send_report import report
from peercrypt.core.fragments import parse_group
from peercrypt.core.modes import PACED_CHUNK_SHARE, RECEIVER_IDLE
from peercrypt.crypto.identity import normalise_fingerprint
from peercrypt.wire.local_messages import SendRequest, SendResult
from peercrypt.wire.text import printable

SEND_USAGE = (
    "expected FILE... HOST PORT: what to send (files or folders), then the receiving "
    "node's host and port, e.g. `peercrypt send big.iso 10.0.0.5 7400`"
)


class SendCommand(click.Command):
    """``send``: a missing FILE, HOST or PORT is one line naming all three
    (click would name FILE... even when only HOST PORT are missing: its
    FILE... takes what is left after HOST PORT)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # (click's parser takes its words from the list)
        try:
            return super().parse_args(ctx, args)
        except click.MissingParameter as exc:
            if exc.param is not None and exc.param.name in ("files", "host", "port"):
                raise click.UsageError(SEND_USAGE, ctx) from None
            raise
        except click.BadParameter as exc:
            # `send F 127.0.0.1:7400`: the folder was taken for the host and
            # "HOST:PORT" for the port ("'127.0.0.1:7400' is not a valid integer").
            last = given[-1] if given else ""
            if exc.param is not None and exc.param.name == "port" and ":" in last:
                raise click.UsageError(f"{SEND_USAGE} (HOST and PORT are two words)", ctx) from None
            raise


@click.command(cls=SendCommand)
@click.argument(
    "files",
    nargs=-1,
    required=True,
    metavar="FILE...",
    type=click.Path(exists=True, readable=True, path_type=Path),
)
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--progress",
    "progress",
    is_flag=True,
    help="Show progress on stderr even when it is not a terminal.",
)
@click.option(
    "--chunk-size",
    type=ByteSize(MIN_CHUNK, MAX_CHUNK),
    default=None,
    help=(
        f"Bytes per chunk. Default: the receiver chooses {DEFAULT_MIN_CHUNK // MiB}-"
        f"{DEFAULT_MAX_CHUNK // MiB} MiB by its load ({DEFAULT_CHUNK // MiB} MiB for multicast). "
        + SIZE_HELP
    ),
)
@click.option(
    "--timeout",
    type=FiniteRange(MIN_TIMEOUT, MAX_TIMEOUT),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help=(
        "Seconds to wait for the peer before giving up; by default, with -r, long enough "
        "for a chunk at that rate (up to 30 s)."
    ),
)
@network_key_option
@open_option
@modes.send_policy_options
@click.option("--force", is_flag=True, help="Send even if the health check finds no peer.")
@click.option(
    "--expect",
    metavar="FINGERPRINT",
    multiple=True,
    help="Send only if the receiver proves this identity (else its known-peers entry); "
    "multicast: repeat, each receiver must prove one of them.",
)
@click.option(
    "-m",
    "--multicast",
    "multi",
    is_flag=True,
    help="Multicast: the file (or folder) goes once to many receivers (add them with --to).",
)
@click.option(
    "--to", "to", multiple=True, metavar="HOST:PORT", help="Multicast: another receiver (repeat)."
)
@click.option("-dual", "dual", is_flag=True, help="Multicast to exactly two receivers.")
@click.option(
    "--group",
    "group",
    default="",
    metavar="GROUP:PORT",
    help="Multicast: send the chunks as UDP datagrams to this IPv4 multicast group "
    "(default: the node's --multicast-group; none: PUB/SUB).",
)
@click.pass_obj
def send(
    obj: dict[str, Any],
    /,
    files: tuple[Path, ...],
    host: str,
    port: int,
    as_json: bool,
    no_progress: bool,
    progress: bool,
    chunk_size: int | None,
    timeout: float,
    network_key: str | None,
    open_network: bool,
    force: bool,
    expect: tuple[str, ...],
    multi: bool,
    to: tuple[str, ...],
    dual: bool,
    group: str,
    **policy_options: Any,
) -> None:
    """Send FILE to the node at HOST PORT; exit 0 once it verified the hash.

    A folder, or several files and folders, go as one transfer: each file
    verified by its own hash, the whole appearing in the peer's inbox only
    once complete (symbolic links inside a folder are not sent).

    Without --mode, the mode is that of the options given (-t parallel, -p
    qos, -w/-min-w/-max-w/-ack-threshold/-no-timeout/-no-dupack aimd, -b/-r
    token-bucket, -m/-dual/--to/--group multicast), else the node's default.
    """
    mode = modes.select_mode(
        policy_options.get("mode"),
        {**policy_options, "multi": multi, "dual": dual, "to": to, "group": group},
    )
    if mode == "multicast" and force:
        raise UserError("--force does not apply to multicast (unreachable targets never stall it)")
    try:
        pins = list(dict.fromkeys(normalise_fingerprint(fp) for fp in expect))
    except ValueError as exc:
        raise UserError(f"--expect: {exc}") from None
    if len(pins) > 1 and mode != "multicast":
        raise UserError("--expect names one receiver; repeat it only with multicast (-m)")
    if group:
        try:
            address, group_port = parse_group(group)
        except ValueError as exc:
            raise UserError(f"--group: {exc}") from None
        group = f"{address}:{group_port}"
    if group and mode not in (None, "multicast"):
        raise UserError("--group is for multicast (-m, -dual, --to or --mode multicast)")
    overrides = modes.send_overrides(policy_options, mode)
    if click.get_current_context().get_parameter_source("timeout") is ParameterSource.DEFAULT:
        timeout = paced_timeout(timeout, overrides.get("rate"), files)
    check_resolvable(host, port)
    paths = source_paths(files)
    path = paths[0]
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # (it said "two of the files to send have the same name", not which)
        raise UserError(
            f"two of the files to send have the same name, {printable(twice[0])!r}: "
            "the receiver stores each under its name; send them one by one"
        )
    odd = not_utf8(paths)
    if odd is not None:  # (the node was handed a '?' for the byte: "No such file")
        raise UserError(
            f"{os.fsencode(odd).decode('utf-8', 'backslashreplace')} is not UTF-8 (a byte "
            "of its path is not a character): rename it"
        )
    # Targets first: a wrong one is a usage error whatever the node.
    targets = _multicast().targets(host, port, to, multi, dual) if mode == "multicast" else []
    with local_node(obj, network_key, open_network) as client:
        # The node's default mode, from the status that found the node (no round trip more).
        status = client.last_status or client.status()
        if mode is None and status.node.get("mode") == "multicast":
            mode = "multicast"
            targets = _multicast().targets(host, port, to, multi, dual)
        if group and mode != "multicast":
            raise UserError("--group is for multicast (-m, -dual, --to or --mode multicast)")
        if mode == "multicast":
            _multicast().multicast_send(
                client,
                files=paths,
                targets=targets,
                as_json=as_json,
                show=wanted(as_json, no_progress, progress),
                chunk_size=chunk_size or DEFAULT_CHUNK,
                timeout=timeout,
                group=group,
                expect=pins,
            )
        request = client.next_id()
        show = wanted(as_json, no_progress, progress)
        ask = SendRequest(
            request=request,
            path=str(path),
            more=[str(p) for p in paths[1:]],
            host=host,
            port=port,
            chunk_size=chunk_size or DEFAULT_MAX_CHUNK,
            min_chunk=0 if chunk_size else DEFAULT_MIN_CHUNK,
            timeout=timeout,
            force=force,
            expect=pins[0] if pins else "",
            quiet=not show,
            **overrides,
        )
        view = functools.partial(progress_view, paths, show)
        result = follow(client, request, path, SendResult, timeout, view=view, ask=ask)
    _report(result, paths, host, port, as_json)


def paced_timeout(timeout: float, rate: int | None, files: tuple[Path, ...]) -> float:
    """The default ``--timeout``, longer where a rate of the send's own (``-r``)
    needs it: a paced chunk must move within half of it (core/modes.py,
    ``paced_chunk_seconds``), so the old tool's example ``-b 1024 -r 512``
    (a 4 KiB chunk in 8 s) was refused with the default 10 s. Up to the
    receiver's idle limit: a rate slower than that is refused as before,
    naming the rate to use, the lowest that this default takes (it named the
    lowest for 10 s, "use -r 820", where -r 274 went)."""
    if not rate or rate <= 0:
        return timeout
    try:  # (a folder: a chunk at least, its files' sizes are the walk's)
        size = sum(f.stat().st_size if f.is_file() else MIN_CHUNK for f in files)
    except OSError:
        return timeout
    smallest = min(MIN_CHUNK, max(1, size))
    moves = smallest / rate  # seconds for the smallest chunk at that rate
    if moves <= timeout * PACED_CHUNK_SHARE:
        return timeout
    if moves > RECEIVER_IDLE * PACED_CHUNK_SHARE:
        return max(timeout, RECEIVER_IDLE)  # (refused: the rate named is this one's)
    return min(RECEIVER_IDLE, max(timeout, float(math.ceil(moves / PACED_CHUNK_SHARE * 1.05))))


def _multicast() -> Any:
    """The multicast half of ``send`` (its messages load only for a multicast send)."""
    from peercrypt.cli import multicast

    return multicast


def _report(result: SendResult, paths: list[Path], host: str, port: int, as_json: bool) -> NoReturn:
    sys.exit(report(result, paths, host, port, as_json))
