"""The ``peercrypt`` command group: global options, every command group's
commands attached, and the entry point that keeps tracebacks behind
``--debug``.

Command modules define their commands without knowing this group; only this
module imports them all, so the package has no import cycle.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

import peercrypt
from peercrypt import errors
from peercrypt.cli import actor, modes, multicast, network, node, send, stats, top
from peercrypt.cli.common import default_data_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(peercrypt.__version__, prog_name="peercrypt")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PEERCRYPT_DATA_DIR",
    default=default_data_dir,
    show_default="~/.local/share/peercrypt",
    help="Node identity, control socket, default inbox.",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, debug: bool) -> None:
    """PeerCrypt: encrypted peer-to-peer file transfer."""
    ctx.obj = {"data_dir": data_dir.expanduser(), "debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


for _command in (
    node.node,
    node.status,
    node.keygen,
    send.send,
    modes.set_mode,
    modes.rate,
    modes.max_rate,
    modes.congestion,
    modes.transfers,
    multicast.multicast_receive,
    multicast.mreceive,
    network.peers,
    network.list_peers,
    network.join,
    network.health_check,
    network.reconnect,
    network.gossip,
    actor.actor,
    stats.stats,
    top.top,
):
    main.add_command(_command)


def run() -> None:
    """Entry point that hides tracebacks unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        main.main(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("peercrypt: error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"peercrypt: error: {exc} (run with --debug for details)", err=True)
        sys.exit(errors.FAILED)
