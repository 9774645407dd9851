"""CLI commands of discovery and health monitoring.

``peers`` (alias ``list-peers``), ``join``, ``health-check``, ``reconnect``
and ``gossip`` talk to the running node of the data directory;
``health-check`` falls back to a temporary send-only node like ``send``.
Exit codes follow :mod:`peercrypt.errors`: 0 ok, 1 no node running (or it
failed), 2 usage, 3 unreachable (the peer refused the connection, or took it
and never answered as a node), 4 not admitted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli.common import (
    UserError,
    check_resolvable,
    local_node,
    network_key_option,
    open_option,
    table,
    terminal_width,
    typed_row,
)
from peercrypt.cli.follow import refusal
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.address import join_host_port
from peercrypt.crypto.identity import normalise_fingerprint
from peercrypt.crypto.known_peers import (
    KnownPeersFile,
    UnreadablePins,
    changed_here,
    normalise_address,
)
from peercrypt.errors import ResultCode
from peercrypt.wire import codec
from peercrypt.wire.messages import ErrorReply
from peercrypt.wire.network_messages import (
    CheckRequest,
    CheckResult,
    GossipControl,
    GossipState,
    JoinRequest,
    JoinResult,
    PeersReply,
    PeersRequest,
)
from peercrypt.wire.text import printable

# Long enough for the node's own bounded retries (max-retries x timeout).
REPLY_TIMEOUT = 300.0
COLUMNS = ("id", "address", "state", "rtt_ms", "failures", "reliability", "last_seen")


def _call(client: ControlClient, msg: codec.Message, want: type[Any], timeout: float) -> Any:
    """Send one request and return its reply of type ``want``."""
    client.send(msg)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError("the local node did not answer in time", errors.FAILED)
        try:
            reply = client.receive(min(1.0, left))
        except NodeUnavailable:
            if not client.node_alive():
                raise UserError("the local node stopped", errors.FAILED) from None
            continue
        if isinstance(reply, ErrorReply):
            raise UserError(refusal(reply), errors.FAILED)
        if isinstance(reply, want):
            return reply


def _ask(obj: dict[str, Any], msg: codec.Message, want: type[Any], timeout: float) -> Any:
    data_dir: Path = obj["data_dir"]
    try:
        client = ControlClient.for_data_dir(data_dir)
    except NodeUnavailable as exc:
        raise UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED) from None
    with client:
        return _call(client, msg, want, timeout)


def _peers(obj: dict[str, Any], as_json: bool) -> None:
    reply: PeersReply = _ask(obj, PeersRequest(request=1), PeersReply, 10.0)
    if as_json:
        click.echo(json.dumps([peer_json(row) for row in reply.peers]))
        return
    if not reply.peers:
        # (a note, on stderr: the shell names the command there as typed at it)
        click.echo("no peers known (join one with `peercrypt join HOST PORT`)", err=True)
        return
    rows = []
    for row in reply.peers:
        cells = [row.get(name, "") or "-" for name in COLUMNS]
        if cells[-1] != "-":
            cells[-1] = f"{cells[-1]}s ago"
        rows.append(cells)
    width, drop = terminal_width(), ("failures", "last_seen")
    click.echo(table(list(COLUMNS), rows, width=width, shrink={"id": 19}, drop=drop))


_PEER_COUNTS = ("failures", "total_failures", "incarnation", "transfers_ok", "transfers_failed")
_PEER_NUMBERS = ("rtt_ms", "rttvar_ms", "reliability", "last_seen")


def peer_json(row: dict[str, str]) -> dict[str, object]:
    """A `peers` row for `--json`: counts as integers, measures as numbers,
    ``proven`` as a boolean (the node's rows carry text); one not known yet
    (no RTT before the first answer) or not a number (another build's) is
    null."""
    shown = typed_row(row, _PEER_COUNTS, _PEER_NUMBERS)
    if "proven" in row:
        shown["proven"] = {"yes": True, "no": False}.get(row["proven"])
    return shown


@click.command("peers")
@click.option("--json", "as_json", is_flag=True, help="Print the peers as a JSON list.")
@click.pass_obj
def peers(obj: dict[str, Any], as_json: bool) -> None:
    """List known peers: id, address, state, RTT, failures, reliability, last seen."""
    _peers(obj, as_json)


@click.command("list-peers", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the peers as a JSON list.")
@click.pass_obj
def list_peers(obj: dict[str, Any], as_json: bool) -> None:
    """Alias of `peers`."""
    _peers(obj, as_json)


@click.command("join")
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@click.pass_obj
def join(obj: dict[str, Any], host: str, port: int) -> None:
    """Join the network through the member at HOST PORT."""
    check_resolvable(host, port)
    result: JoinResult = _ask(
        obj, JoinRequest(request=1, host=host, port=port), JoinResult, REPLY_TIMEOUT
    )
    where = join_host_port(host, port)
    if result.code != ResultCode.OK:
        raise UserError(f"cannot join through {where}: {result.reason}", _peer_exit(result.code))
    click.echo(f"joined through {where}; {_peer_count(result.live, result.gone)} so far")


def _peer_count(live: int, gone: int) -> str:
    """The members `join` and `gossip` count, as `peers` lists them: the
    other members alive (or suspect), then those gone (dead or left: held
    until they expire, but `peers` lists none that left). Not the records
    held: those count this node and the gone as if they were members."""
    line = f"{live} live peer{'' if live == 1 else 's'}"
    return f"{line}, {gone} gone (left or dead)" if gone else line


def _exit(code: str) -> int:
    return errors.FAILED if code == ResultCode.LOCAL else errors.exit_code(code)


def _peer_exit(code: str) -> int:
    """The exit status of a command that asks a peer (``join``,
    ``health-check``, ``reconnect``): a peer that took the connection but
    never answered as a node (a silent listener, a node hung) is as
    unreachable as one that refused it (3), not a failed transfer (1)."""
    return errors.UNREACHABLE if code == ResultCode.TIMEOUT else _exit(code)


def _report_check(
    result: CheckResult, host: str, port: int, verb: str, data_dir: Path, as_json: bool = False
) -> None:
    """The check's outcome; a node that answered with another key than
    this node's known-peers file holds for the address is reachable, and
    said so, but a send there would be refused until `peercrypt trust`:
    exit 4 with that send's warning (it said only "alive")."""
    changed = unreadable = ""
    where = join_host_port(host, port)
    if result.code == ResultCode.OK:
        # (A check sends nothing: it says what a send there would meet.)
        try:
            changed = changed_here(
                data_dir, host, port, result.fingerprint, outcome="a send there is refused"
            )
        except UnreadablePins as exc:  # (a send there would fail on it too)
            unreadable = str(exc)
    if as_json:
        ok = result.code == ResultCode.OK
        click.echo(
            json.dumps(
                {
                    "ok": ok,
                    "code": result.code,
                    "error": None if ok else result.reason or f"{where} is not reachable",
                    "peer": where,
                    "fingerprint": result.fingerprint or None,
                    "version": result.version or None,
                    "rtt_ms": round(result.rtt * 1000, 3) if ok else None,
                    "attempts": result.attempts,
                    "key_changed": changed or None,
                    "known_peers_error": unreadable or None,
                }
            )
        )
        if not ok:
            sys.exit(_peer_exit(result.code))
        if changed:
            sys.exit(errors.NOT_ADMITTED)
        if unreadable and verb == "alive":
            sys.exit(errors.USAGE)
        return
    if result.code != ResultCode.OK:
        raise UserError(result.reason or f"{where} is not reachable", _peer_exit(result.code))
    tries = f" (after {result.attempts} attempts)" if result.attempts > 1 else ""
    # The version its proof signs (a peer's text: escaped).
    version = f" (peercrypt {printable(result.version)})" if result.version else ""
    click.echo(
        f"{verb} {where}: node {result.fingerprint}{version}, rtt {result.rtt * 1000:.2f} ms{tries}"
    )
    if changed:
        raise UserError(changed, errors.NOT_ADMITTED)
    if unreadable:  # a check says what a send there would meet; a reconnect did its work
        if verb == "alive":
            raise UserError(unreadable, errors.USAGE)
        click.echo(f"peercrypt: warning: {unreadable}", err=True)


_JSON_CHECK = click.option(
    "--json", "as_json", is_flag=True, help="Print the outcome as one JSON object."
)


@click.command("health-check")
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@network_key_option
@open_option
@_JSON_CHECK
@click.pass_obj
def health_check(
    obj: dict[str, Any],
    host: str,
    port: int,
    network_key: str | None,
    open_network: bool,
    as_json: bool,
) -> None:
    """Check the node at HOST PORT now: RTT, or why not (exit 3/4)."""
    check_resolvable(host, port)
    with local_node(obj, network_key, open_network) as client:
        result: CheckResult = _call(
            client, CheckRequest(request=1, host=host, port=port), CheckResult, REPLY_TIMEOUT
        )
    _report_check(result, host, port, "alive", obj["data_dir"], as_json)


@click.command("reconnect")
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@_JSON_CHECK
@click.pass_obj
def reconnect(obj: dict[str, Any], host: str, port: int, as_json: bool) -> None:
    """Drop the connection to HOST PORT and try again now (with retries)."""
    check_resolvable(host, port)
    result: CheckResult = _ask(
        obj,
        CheckRequest(request=1, host=host, port=port, reconnect=True),
        CheckResult,
        REPLY_TIMEOUT,
    )
    _report_check(result, host, port, "reconnected to", obj["data_dir"], as_json)


@click.command("gossip")
@click.argument("action", required=False, metavar="[on|off|interval N|N]")
@click.argument("value", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print gossip's state as one JSON object.")
@click.pass_obj
def gossip(obj: dict[str, Any], action: str | None, value: str | None, as_json: bool) -> None:
    """Turn gossip on or off, or set its interval in seconds, live."""
    mode, interval = _gossip_args(action, value)
    state: GossipState = _ask(
        obj, GossipControl(request=1, mode=mode, interval=interval), GossipState, 10.0
    )
    if mode == "interval" and abs(state.interval - interval) > 1e-9:
        raise UserError(f"the node refused the interval {interval:g}", errors.USAGE)
    if as_json:
        shown = {
            "enabled": state.enabled,
            "interval": state.interval,
            "members": state.members,
            "live_peers": state.live,
            "gone_peers": state.gone,
        }
        click.echo(json.dumps(shown))
        return
    click.echo(
        f"gossip {'on' if state.enabled else 'off'}, every {state.interval:g} s, "
        f"{_peer_count(state.live, state.gone)}"
    )


def _gossip_args(action: str | None, value: str | None) -> tuple[str, float]:
    if action is None:
        return "show", 0.0
    word = action.lower()
    if word in ("on", "off"):
        if value is not None:
            raise UserError(f"`gossip {word}` takes no value", errors.USAGE)
        return word, 0.0
    text = value if word == "interval" else action
    if word == "interval" and value is None:
        raise UserError("`gossip interval` needs seconds, e.g. `gossip interval 2`", errors.USAGE)
    if word != "interval" and value is not None:
        raise UserError(
            f"unknown gossip action {action!r}: use on, off, N or interval N (seconds)",
            errors.USAGE,
        )
    try:
        seconds = float(text or "")
    except ValueError:
        if word == "interval":  # (the action is known: its value is what is wrong)
            raise UserError(
                f"gossip interval '{printable(text or '', 40)}': not a number of seconds; "
                "expected a number in 0.01..3600, e.g. `gossip interval 2`",
                errors.USAGE,
            ) from None
        raise UserError(
            f"unknown gossip action {action!r}: use on, off, N or interval N (seconds)",
            errors.USAGE,
        ) from None
    if not 0.01 <= seconds <= 3600:
        raise UserError(
            f"gossip interval must be within 0.01..3600 s, got {seconds:g}", errors.USAGE
        )
    return "interval", seconds


@click.command()
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@click.argument("key", metavar="FINGERPRINT")
@click.pass_obj
def trust(obj: dict[str, Any], host: str, port: int, key: str) -> None:
    """Accept FINGERPRINT as the node at HOST PORT (after a key change)."""
    try:
        fp = normalise_fingerprint(key)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    store = KnownPeersFile(obj["data_dir"])
    address = normalise_address(host, port)
    try:
        before = store.load().get(address)
        store.set(address, fp, replace=True)
    except UnreadablePins as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {store.path}: {exc.strerror}") from None
    was = f" (was {before})" if before and before != fp else ""
    click.echo(f"{address} is now known as {fp}{was}")
