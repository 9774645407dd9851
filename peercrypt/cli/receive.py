"""``receive``: wait for the next transfer into the running node, show its
progress and its verified result.

The node receives on its own whether anyone waits or not; this command only
watches its status (the receiver reports the transfers coming in and the
latest outcome, every half second) and exits 0 once the next file is
stored and verified, 1 if it was discarded.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli.common import FiniteRange, UserError
from peercrypt.cli.progress import bar_size
from peercrypt.cli.status_view import describe_outcome
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.sizes import readable

POLL = 0.25  # seconds between status requests


@dataclass(frozen=True)
class Inbound:
    """What the node's status says about transfers coming in."""

    incoming: list[tuple[str, int, int, str]]  # (name, size, bytes written, id)
    last: dict[str, Any]  # the latest outcome: seq, name, size, stored_as, ok, reason

    @property
    def seq(self) -> int:
        return int(self.last.get("seq", 0))


# How a line names a command in the hints: a shell sets "" (its prompt takes
# `cancel in4`; `peercrypt cancel in4` there is no command).
COMMAND = "peercrypt "


def _cancel_hint(ident: str) -> str:
    return f"`{COMMAND}cancel {ident}` stops it" if ident else "receiving"


def inbound(facts: dict[str, str]) -> Inbound:
    """Parse the receiver's status facts (tolerates their absence)."""
    try:
        rows = json.loads(facts.get("incoming", "[]"))
        incoming = [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]
    except (ValueError, TypeError, IndexError):
        incoming = []
    try:
        last = json.loads(facts.get("last_in", "{}"))
    except ValueError:
        last = {}
    return Inbound(incoming, last if isinstance(last, dict) else {})


def inbound_multicast(facts: dict[str, str]) -> tuple[list[tuple[str, int, str]], dict[str, Any]]:
    """The multicast sessions coming in (name, size, sender) and the latest
    one's outcome (seq, name, size, stored_as, ok, reason, held), from the
    mreceiver's facts (tolerates their absence, or another build's)."""
    try:
        rows = json.loads(facts.get("incoming_multicast", "[]"))
        sessions = [(str(r[0]), int(r[1]), str(r[3])) for r in rows]
    except (ValueError, TypeError, IndexError):
        sessions = []
    try:
        last = json.loads(facts.get("last_multicast_in", "{}"))
    except ValueError:
        last = {}
    return sessions, last if isinstance(last, dict) and isinstance(last.get("seq"), int) else {}


def wait_for_next(client: ControlClient, timeout: float, quiet: bool) -> dict[str, Any]:
    """Block until the node finishes its next incoming transfer; return the outcome.

    Raises UserError when ``timeout`` (0: none) passes first or the node stops.
    """
    from tqdm import tqdm

    start = inbound(client.status().node)
    deadline = time.monotonic() + timeout if timeout else None
    bar: Any = None
    shown = ""
    try:
        while True:
            try:
                now = inbound(client.status().node)
            except NodeUnavailable:
                raise UserError("the local node stopped", errors.FAILED) from None
            if now.seq > start.seq:
                return now.last
            if now.incoming and not quiet:
                name, size, done, ident = now.incoming[0]
                if bar is None or shown != name:
                    if bar is not None:
                        bar.close()
                    shown = name
                    hint = _cancel_hint(ident)
                    click.echo(f"incoming {name} ({readable(size)}; {hint})", err=True)
                    bar = tqdm(
                        total=size,
                        unit="iB",  # the rate in binary units (MiB/s), as the result line
                        unit_scale=True,
                        unit_divisor=1024,
                        file=sys.stderr,
                        disable=not sys.stderr.isatty(),
                        desc=name,
                        leave=False,
                        **bar_size(),
                    )
                bar.update(done - bar.n)
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(f"nothing received within {timeout:g} s", errors.FAILED)
            time.sleep(POLL)
    finally:
        if bar is not None:
            bar.close()


def _said(as_json: bool, exc: UserError) -> UserError:
    """``exc``, its outcome first printed as the JSON object ``--json``
    promises (``ok`` false and its ``reason``, the key a failed transfer's
    outcome has; the error line still goes to stderr)."""
    if as_json:
        click.echo(json.dumps({"ok": False, "reason": exc.message}))
    return exc


@click.command("receive")
@click.option(
    "--timeout",
    type=FiniteRange(0),
    default=0.0,
    show_default=True,
    help="Give up after this many seconds (0: wait for ever).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_obj
def receive(obj: dict[str, Any], timeout: float, as_json: bool, no_progress: bool) -> None:
    """Wait for the next incoming transfer; show its progress and result (exit 1: failed).

    Unicast transfers; `multicast-receive` waits for multicast sessions."""
    data_dir: Path = obj["data_dir"]
    # Imported before "waiting" is said: a Ctrl-C that lands inside an import
    # can be raised in the import system's cleanup, where Python prints it and
    # drops it (the command would go on waiting; seen in the shell's test).
    import tqdm  # noqa: F401

    try:
        with ControlClient.for_data_dir(data_dir) as client:
            client.status(timeout=2.0)
            if not as_json:
                click.echo(
                    "waiting for the next incoming transfer (Ctrl-C stops waiting)", err=True
                )
            last = wait_for_next(client, timeout, quiet=as_json or no_progress)
    except NodeUnavailable as exc:
        error = UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED)
        raise _said(as_json, error) from None
    except UserError as exc:  # nothing received in time, the node stopped
        raise _said(as_json, exc) from None
    if as_json:
        click.echo(json.dumps(last))
    elif last.get("ok"):
        click.echo(describe_outcome(last))
    else:
        click.echo(f"peercrypt: error: {describe_outcome(last)}", err=True)
    sys.exit(errors.OK if last.get("ok") else errors.FAILED)
