"""``status``: the running node's identity, endpoints and counters.

Its own module so that it imports only what asking a running node needs
(the control client and the status messages): not the settings table, the
key libraries or the node's options. Loading this data dir's identity (and
with it the key libraries) happens only when no node answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli.status_view import show
from peercrypt.client import AnotherRelease, ControlClient, NodeUnavailable


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON.")
@click.pass_obj
def status(obj: dict[str, Any], as_json: bool) -> None:
    """Show this node's identity, endpoints and counters (exit 1: not running).

    Exit 1 too when its replies cannot be read (a node of another release).
    """
    data_dir: Path = obj["data_dir"]
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            reply = client.status()
    except NodeUnavailable as exc:
        fp = _fingerprint(data_dir)
        if as_json:
            click.echo(json.dumps({"running": False, "fingerprint": fp, "reason": str(exc)}))
        else:
            click.echo(f"fingerprint {fp}\nnode: not running ({exc})")
        sys.exit(errors.FAILED)
    except AnotherRelease as exc:
        if not as_json:
            raise  # its one error line
        # A script reading the JSON gets JSON: the node runs, its status is unknown.
        fp = _fingerprint(data_dir)
        click.echo(json.dumps({"running": True, "fingerprint": fp, "reason": str(exc)}))
        sys.exit(exc.exit_code)
    show(reply, as_json)


def _fingerprint(data_dir: Path) -> str:
    from peercrypt.cli.common import load_identity
    from peercrypt.crypto.identity import fingerprint

    return fingerprint(load_identity(data_dir).public)
