"""The ``peercrypt`` command group: global options, every command group's
commands attached, and the entry point that keeps tracebacks behind
``--debug``.

Command modules define their commands without knowing this group; only this
module names them all, so the package has no import cycle. A command's module
is imported only when that command runs (its ``--help`` included): a node
command does not pay for the live view's terminal library, and ``peercrypt
--help`` lists every command from :data:`COMMANDS` without importing any
(``tests/test_cli_imports.py`` checks that table against the commands).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

import peercrypt
from peercrypt import errors

# name: (module in peercrypt.cli, attribute, the one line `peercrypt --help` shows).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "node": ("node", "node", "Run a node in the foreground until SIGINT/SIGTERM."),
    "status": (
        "node",
        "status",
        "Show this node's identity, endpoints and counters (exit 1: not running).",
    ),
    "keygen": ("node", "keygen", "Print a new random network key."),
    "send": (
        "send",
        "send",
        "Send FILE to the node at HOST PORT; exit 0 once it verified the hash.",
    ),
    "set-mode": ("modes", "set_mode", "Change the running node's default transfer mode."),
    "rate": ("modes", "rate", "Change the rate of running transfers live (0: unlimited)."),
    "max-rate": (
        "modes",
        "max_rate",
        "Cap all outgoing transfers of the node together (0: no cap), live.",
    ),
    "congestion": (
        "modes",
        "congestion",
        "AIMD defaults: window|min-window|max-window KB, threshold N, timeout|dupack on|off.",
    ),
    "transfers": ("modes", "transfers", "List the node's running and waiting sends."),
    "cancel": (
        "modes",
        "cancel",
        "Cancel a running or waiting send by its id (see `peercrypt transfers`).",
    ),
    "multicast-receive": (
        "multicast",
        "multicast_receive",
        "Join multicast sessions and report them.",
    ),
    "mreceive": ("multicast", "mreceive", "Join multicast sessions and report them."),
    "peers": (
        "network",
        "peers",
        "List known peers: id, address, state, RTT, failures, reliability, last seen.",
    ),
    "list-peers": ("network", "list_peers", "Alias of `peers`."),
    "join": ("network", "join", "Join the network through the member at HOST PORT."),
    "health-check": (
        "network",
        "health_check",
        "Check the node at HOST PORT now: RTT, or why not (exit 3/4).",
    ),
    "reconnect": (
        "network",
        "reconnect",
        "Drop the connection to HOST PORT and try again now (with retries).",
    ),
    "gossip": (
        "network",
        "gossip",
        "Turn gossip on or off, or set its interval in seconds, live.",
    ),
    "actor": (
        "actor",
        "actor",
        "Run the node's actor KIND here, attached to the node at --attach.",
    ),
    "stats": (
        "stats",
        "stats",
        "The statistics history of every transfer (DATA_DIR/stats.sqlite).",
    ),
    "top": (
        "top",
        "top",
        "A live view of the node: sends, peers, the scheduler's shares and caps.",
    ),
}


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return the command."""
    module, attr, _ = COMMANDS[name]
    command = getattr(importlib.import_module(f"peercrypt.cli.{module}"), attr)
    assert isinstance(command, click.Command)
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported when one is resolved, not before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # click shortens a command's help to the width the same way
        rows = [(n, click.Command(n, help=COMMANDS[n][2]).get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def default_data_dir() -> Path:
    from peercrypt.cli import common  # the control client: not for --help

    return common.default_data_dir()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
