"""The ``peercrypt`` command group: global options, every command group's
commands attached, and the entry point (:mod:`peercrypt.cli.runner`) that
keeps every error on one line and tracebacks behind ``--debug``.

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
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import peercrypt
from peercrypt.cli.runner import GLOBAL_OPTIONS, NamedPath, execute, unknown_command

if TYPE_CHECKING:
    from peercrypt.config import Effective

# name: (module in peercrypt.cli, attribute, the one line `peercrypt --help` shows).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "node": ("node", "node", "Run a node in the foreground until SIGINT/SIGTERM."),
    "status": (
        "status",
        "status",
        "Show this node's identity, endpoints and counters (exit 1: not running).",
    ),
    "keygen": (
        "node",
        "keygen",
        "Print a new random network key (it carries its network's own salt).",
    ),
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
        "Show or set the cap of all outgoing transfers of the node together (0: no cap), live.",
    ),
    "congestion": (
        "modes",
        "congestion",
        "Show or set the AIMD defaults live (several keys, in any order).",
    ),
    "transfers": ("modes", "transfers", "List the node's running and waiting sends."),
    "cancel": (
        "modes",
        "cancel",
        "Cancel a send (`peercrypt transfers`) or an incoming transfer (inN: `status`, `top`).",
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
    "trust": (
        "network",
        "trust",
        "Accept FINGERPRINT as the node at HOST PORT (after a key change).",
    ),
    "actor": (
        "actor",
        "actor",
        "Run one of the node's actors here, attached to the node at --attach.",
    ),
    "stats": (
        "stats",
        "stats",
        "The statistics history of every transfer (DATA_DIR/stats.sqlite).",
    ),
    "config": (
        "configure",
        "config_group",
        "Show the effective settings, or write a commented config file.",
    ),
    "receive": (
        "receive",
        "receive",
        "Wait for the next incoming transfer; show its progress and result (exit 1: failed).",
    ),
    "start": (
        "shell",
        "start_command",
        "Run a node and a prompt on it in one process (the node stops when you leave).",
    ),
    "shell": (
        "shell",
        "shell_command",
        "A prompt for the node running for the data dir (see `peercrypt start`).",
    ),
    "top": (
        "top",
        "top",
        "A live view of the node: sends, peers, the scheduler's shares and caps.",
    ),
}


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return the command, with
    the global ``--data-dir`` and ``--config`` options (:func:`with_global_options`)."""
    module, attr, _ = COMMANDS[name]
    command = getattr(importlib.import_module(f"peercrypt.cli.{module}"), attr)
    assert isinstance(command, click.Command)
    return with_global_options(command)


class DataDirPath(NamedPath):
    """``--data-dir``'s type: an empty value is refused (``--data-dir
    "$UNSET"`` made the working directory the data dir, and left an identity
    there), and so is what is there and no directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        from peercrypt.config_sources import not_a_directory

        if why := not_a_directory(Path(path)):
            self.fail(f"'{path}' {why}", param, ctx)
        return path


DEBUG_HELP = "Debug logs from every actor, and tracebacks."
DATA_DIR_HELP = (
    "Node identity, control socket, default inbox, config.toml [env PEERCRYPT_DATA_DIR]."
)
CONFIG_HELP = "TOML config file (default: DATA_DIR/config.toml) [env PEERCRYPT_CONFIG]."


def _global_params() -> list[click.Option]:
    """``--data-dir`` and ``--config`` as options of one command: the same
    types as the group's, so the same values are refused with the same words;
    and ``--debug``, named in its help."""
    kinds = {
        "data_dir": (DataDirPath(file_okay=False, path_type=Path), DATA_DIR_HELP),
        "config_file": (NamedPath(dir_okay=False, path_type=Path), CONFIG_HELP),
    }
    return [
        *(
            click.Option(
                [GLOBAL_OPTIONS[name], name],
                type=kind,
                help=help_text,
                is_eager=True,
                expose_value=False,
                callback=_rebase_invocation,
            )
            for name, (kind, help_text) in kinds.items()
        ),
        # In the command's help only: the runner moves it in front of the
        # command wherever it is given (runner.hoist_debug).
        click.Option(["--debug"], is_flag=True, expose_value=False, help=DEBUG_HELP),
    ]


def _rebase_invocation(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """A global option given after the command: this command (and, for a
    group, its subcommands) runs with the group's invocation redone with it.
    Eager, so it is in place before any other option's callback. A new
    object, not the parent's changed: a shell line's options stay its own."""
    obj = ctx.obj
    if value is None or not isinstance(obj, dict) or "given" not in obj:
        return  # not given, or parsed without running (no invocation to redo)
    assert param.name is not None
    given = {**obj["given"], param.name: value}
    cwd = obj["dotenv_path"].parent
    ctx.obj = invocation(given["data_dir"], given["config_file"], obj["debug"], obj["environ"], cwd)


# Commands that run with a config file named and missing: `config init`
# writes it, `config show` says so itself, `help` is `--help`.
_NO_CONFIG_NEEDED = frozenset({"config", "help"})


def _config_named_exists(ctx: click.Context) -> None:
    """A config file named by ``--config`` or ``PEERCRYPT_CONFIG`` must
    exist, for every command: one that takes no setting (``status``,
    ``send`` through a running node) ran as if it did. Checked when the
    command runs: its ``--help`` and a ``--config`` after it come first."""
    obj = ctx.obj
    if not isinstance(obj, dict) or not obj.get("config_required"):
        return
    top = ctx  # the command right under `peercrypt` (`config` for `config init`)
    while top.parent is not None and top.parent.parent is not None:
        top = top.parent
    if top.info_name in _NO_CONFIG_NEEDED or obj["config_path"].exists():
        return
    # (no context: it reads the same whether it was named before the command or after)
    raise click.UsageError(f"config file {obj['config_path']} does not exist")


def _checking_config(command: click.Command) -> None:
    """``command`` (not a group) checks :func:`_config_named_exists` before it runs."""
    if getattr(command, "_checks_config", False):
        return
    run = command.invoke

    def invoke(ctx: click.Context) -> Any:
        _config_named_exists(ctx)
        return run(ctx)

    command.invoke = invoke  # type: ignore[method-assign]
    command._checks_config = True  # type: ignore[attr-defined]


def with_global_options(command: click.Command) -> click.Command:
    """Give ``command`` (a group: and each of its commands) the group's
    ``--data-dir`` and ``--config``, so they work after the command's name
    too (``peercrypt send F H P --data-dir D``). Given in both places, the
    one after the command wins. Idempotent."""
    if not any(p.name in GLOBAL_OPTIONS for p in command.params):
        command.params.extend(_global_params())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_global_options(sub)
    else:
        _checking_config(command)
    return command


def command_tree() -> dict[str, click.Command]:
    """Every command by its full name (``send``, ``stats``, ``stats list``):
    groups and their commands, imported."""
    out: dict[str, click.Command] = {}
    for name in COMMANDS:
        command = load_command(name)
        out[name] = command
        if isinstance(command, click.Group):
            out.update({f"{name} {sub}": c for sub, c in command.commands.items()})
    return dict(sorted(out.items()))


def _help_command() -> click.Command:
    """``peercrypt help [COMMAND...]``: ``peercrypt [COMMAND...] --help``, as
    the shell's ``help`` and other tools' ``help`` read (it was "no such
    command 'help' (did you mean 'shell'?)")."""

    @click.command(
        "help",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True},  # `help send -h`: -h a word
    )
    @click.argument("words", nargs=-1)
    @click.pass_context
    def help_(ctx: click.Context, words: tuple[str, ...]) -> None:
        """The help of peercrypt, or of COMMAND (as `peercrypt COMMAND --help`)."""
        parent = ctx.parent
        assert parent is not None
        command, at = parent.command, parent
        for word in (w for w in words if w not in ("-h", "--help")):
            if word == "--version" and command is parent.command:  # `peercrypt --version`
                click.echo(f"peercrypt, version {peercrypt.__version__}")
                return
            if word.startswith("-"):  # as `peercrypt [COMMAND] WORD` says it
                raise click.NoSuchOption(word, ctx=at)
            if word == "help" and command is parent.command:
                command, at = ctx.command, ctx
                continue
            sub = command.get_command(at, word) if isinstance(command, click.Group) else None
            if sub is None:
                names = command.list_commands(at) if isinstance(command, click.Group) else []
                if not names:
                    raise click.UsageError(f"`{at.command_path}` has no commands", ctx)
                raise click.UsageError(unknown_command(word, names), ctx)
            command, at = sub, click.Context(sub, info_name=word, parent=at)
        click.echo(command.get_help(at))

    return with_global_options(help_)


class LazyGroup(click.Group):
    """A group whose commands are imported when one is resolved, not before."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        ctx.meta["peercrypt.rest"] = list(rest)  # (the callback runs once they are taken)
        return rest

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "help":  # (not listed: the shell's own `help` is the one documented)
            return _help_command()
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(peercrypt.__version__, prog_name="peercrypt")
@click.option(
    "--data-dir",
    type=DataDirPath(file_okay=False, path_type=Path),
    default=None,
    show_default="~/.local/share/peercrypt",
    help=DATA_DIR_HELP,
)
@click.option(
    "--config",
    "config_file",
    type=NamedPath(dir_okay=False, path_type=Path),
    default=None,
    help=CONFIG_HELP,
)
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, config_file: Path | None, debug: bool) -> None:
    """PeerCrypt: encrypted peer-to-peer file transfer."""
    rest = ctx.meta.get("peercrypt.rest", [])
    # Help and keygen never touch the data dir: a bad one is no reason to
    # refuse them (`PEERCRYPT_DATA_DIR=/dev/null peercrypt help`).
    needs_dir = ctx.invoked_subcommand not in NO_DATA_DIR and not {"-h", "--help"} & set(rest)
    ctx.obj = invocation(data_dir, config_file, debug, os.environ, Path.cwd(), needs_dir)
    warn_of_layers(ctx.obj)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


# Commands that never use the data dir (a bad one does not refuse them).
NO_DATA_DIR = frozenset({"help", "keygen"})


def invocation(
    data_dir: Path | None,
    config_file: Path | None,
    debug: bool,
    environ: Mapping[str, str],
    cwd: Path,
    needs_dir: bool = True,
) -> dict[str, Any]:
    """What every command gets as ``ctx.obj``: the data dir, the config file,
    the working directory's ``.env`` and the environment to layer.
    ``needs_dir``: refuse a data dir (from the environment or .env) that is
    no directory."""
    from peercrypt import config_sources as sources  # not the settings table

    dotenv_path = cwd / sources.ENV_FILE
    try:
        dotenv, dotenv_lines = sources.parse_env_file(dotenv_path)
    except sources.ConfigError as exc:  # a usage error, as a bad value in any layer (exit 2)
        raise click.UsageError(f"{exc} (the .env of the working directory)") from None
    resolved_dir = sources.data_dir_from(data_dir, environ, dotenv, sources.default_data_dir())
    # (The flag's own type refuses a data dir that is no directory.)
    if needs_dir and data_dir is None and (why := sources.not_a_directory(resolved_dir)):
        named = "" if resolved_dir == sources.default_data_dir() else f" ({sources.DATA_DIR_ENV})"
        raise click.UsageError(f"the data dir {resolved_dir}{named} {why}")
    config_path, required = sources.config_path_from(config_file, environ, dotenv, resolved_dir)
    return {
        "given": {"data_dir": data_dir, "config_file": config_file},
        "data_dir": resolved_dir,
        "debug": debug,
        "config_path": config_path,
        "config_required": required,
        "dotenv": dotenv,
        "dotenv_lines": dotenv_lines,
        "dotenv_path": dotenv_path,
        "environ": dict(environ),
    }


def warn_of_layers(obj: dict[str, Any]) -> None:
    """One line on stderr for each variable of the .env and the environment
    that looks like a mistake, and for a .env that others may read holding
    the network key (:func:`peercrypt.config.layer_warnings`); each once per
    process. Stdout is left alone (``--json``)."""
    from peercrypt import config_sources as sources

    environ: dict[str, str] = obj["environ"]
    if not obj["dotenv"] and not any(k.startswith(sources.PREFIX) for k in environ):
        return  # nothing to look at: the settings table is not imported
    from peercrypt import config
    from peercrypt.cli.echo import warn_once

    lines = config.layer_warnings(obj["dotenv"], obj["dotenv_lines"], obj["dotenv_path"], environ)
    for line in lines:
        warn_once(line)


def node_settings_of(
    argv: list[str], environ: Mapping[str, str], cwd: Path
) -> tuple[click.Context, Effective]:
    """Parse ``peercrypt ARGV`` (a ``node``, ``start`` or ``config show``
    command) and resolve the node settings it would run with in ``environ``
    and ``cwd``, without running anything. Raises click.UsageError for a bad
    command line and a ClickException naming the variable for a bad setting.
    Container checks use this to read a compose file as the node would."""
    from peercrypt.cli.common import effective, given_flags
    from peercrypt.cli.node import NODE_OPTIONS

    top = main.make_context("peercrypt", list(argv))
    params = top.params
    obj = invocation(params["data_dir"], params["config_file"], False, environ, cwd)
    with warnings.catch_warnings():  # click 8.2+: protected_args is deprecated, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        remaining = [*top.protected_args, *top.args]
    name, command, rest = main.resolve_command(top, remaining)
    assert command is not None and name is not None
    while isinstance(command, click.Group):
        group_ctx = command.make_context(name, rest, parent=top)
        name, command, rest = command.resolve_command(group_ctx, list(group_ctx.args))
        assert command is not None and name is not None
    sub = command.make_context(name, rest, parent=top, obj=obj)
    return sub, effective(sub.obj, given_flags(sub, NODE_OPTIONS))


def run() -> None:
    """The ``peercrypt`` entry point."""
    sys.exit(execute(main, sys.argv[1:]))
