"""``config show`` (the effective settings and where each came from) and
``config init`` (a commented config file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from peercrypt import config
from peercrypt.cli.common import UserError, effective, given_flags, table, terminal_width
from peercrypt.cli.node import NODE_OPTIONS, node_options
from peercrypt.cli.runner import NamedPath

# The flags this process's node started with, where it runs one with a
# prompt on it (`start`): that prompt's `config show` shows that node, whose
# flags count as given (it showed the defaults its flags had changed: host
# 0.0.0.0, port 7400, no network key).
STARTED_WITH: dict[str, Any] = {}


def node_flags(ctx: click.Context) -> dict[str, Any]:
    """The setting flags given to ``ctx``'s command (`node`, `start`,
    `config show`), the key of ``--network-key-file`` (or typed at its
    question) among them."""
    flags = given_flags(ctx, NODE_OPTIONS)
    # The key as the node read it (shown as set): from --network-key-file, or typed.
    key = ctx.meta.get("network_key_file") or ctx.meta.get("network_key_typed")
    if key:
        flags["network_key"] = key
    return flags


@click.group("config")
def config_group() -> None:
    """Show the effective settings, or write a commented config file."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: name -> value, source.")
@node_options
@click.pass_context
def show(ctx: click.Context, /, as_json: bool, **_: Any) -> None:
    """The settings a node would start with here, and where each came from.

    Takes the node's flags too, to show what they change; at the prompt of
    `start`, that node's flags count as given. Secrets are shown as (set) or
    (not set), never their value. (What was changed live, `max-rate`,
    `set-mode`, `congestion`: `status`.)
    """
    obj: dict[str, Any] = ctx.obj
    eff = effective(obj, {**STARTED_WITH, **node_flags(ctx)})
    try:
        config.check_ports(eff)  # (the node's words)
    except config.ConfigError as exc:
        raise UserError(str(exc)) from None
    if eff["network_key"]:  # one a node would refuse (a short passphrase, a damaged key)
        from peercrypt.crypto.identity import network_salt_and_secret

        try:
            network_salt_and_secret(eff["network_key"])
        except ValueError as exc:  # (its words never hold the key)
            raise UserError(f"network_key ({eff.sources['network_key']}): {exc}") from None
    if as_json:
        rows: dict[str, Any] = {
            s.name: {
                "value": eff.shown(s.name) if s.kind == "secret" else eff[s.name],
                "source": eff.sources[s.name],
                "variable": s.env,
            }
            for s in config.SETTINGS
        }
        rows["data_dir"] = {"value": str(obj["data_dir"]), "source": "", "variable": ""}
        click.echo(json.dumps(rows))
        return
    click.echo(f"data dir: {obj['data_dir']}")
    state = "" if obj["config_path"].exists() else " (not present)"
    click.echo(f"config file: {obj['config_path']}{state}")
    lines = [
        # "config file PATH" -> "config", ".env PATH" -> ".env"
        [s.name, eff.shown(s.name) or '""', eff.sources[s.name].split(" ", 1)[0], s.env]
        for s in config.SETTINGS
    ]
    headers = ["setting", "value", "source", "variable"]
    click.echo(table(headers, lines, width=terminal_width(), shrink={"value": 12}))


@config_group.command("init")
@click.argument("path", required=False, type=NamedPath(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj: dict[str, Any], path: Path | None, force: bool) -> None:
    """Write a commented config file (default: --config, else DATA_DIR/config.toml).

    Never over a file or link already there without --force; only the data
    dir's own file makes its missing folder. Written mode 0600 (it has a
    line for the network key)."""
    target: Path = path or obj["config_path"]
    # A link counts as there, dangling too (writing would create its target).
    if (target.is_symlink() or target.exists()) and not force:
        raise UserError(f"{target} exists (use --force to overwrite)")
    try:
        if target.parent == Path(obj["data_dir"]):  # a data dir not made yet: made here
            target.parent.mkdir(parents=True, exist_ok=True)
        # Without --force, created only: never written over one made meanwhile.
        # Readable by its owner only: its `# network_key = ""` waits for the key.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(fd, 0o600)  # (a file written over kept its mode)
            out.write(config.commented_config())
    except FileExistsError:
        raise UserError(f"{target} exists (use --force to overwrite)") from None
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from None
    click.echo(f"wrote {target}")
