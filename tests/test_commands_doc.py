"""docs/commands.md and the CLI agree: every command (and shell command) has
a section, every option of a command is in its table with the CLI's default,
nothing documented is missing from the CLI, and the settings table lists
every variable with its default."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from peercrypt import config
from peercrypt.cli.app import command_tree
from peercrypt.cli.node import NODE_OPTIONS
from peercrypt.cli.runner import GLOBAL_OPTIONS
from peercrypt.cli.shell import SHELL_COMMANDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
# Commands whose tables leave out the node's options (they point to `node`).
TAKES_NODE_OPTIONS = {"start", "config show"}


def sections() -> dict[str, str]:
    """``### `name` ...`` heading -> its text, up to the next heading."""
    text = DOC.read_text()
    parts = re.split(r"^### `([^`]+)`.*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def commands() -> dict[str, click.Command]:
    """Every command by its full name; a group's commands, not the group."""
    tree = command_tree()
    return {n: c for n, c in tree.items() if not isinstance(c, click.Group)}


def table(text: str) -> dict[str, str]:
    """Option flag -> its default column, from a section's table."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("| `-"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        for flag in re.findall(r"`(-[^`]+)`", cells[0]):
            rows[flag] = cells[-1]
    return rows


def default_of(param: click.Option) -> str:
    if param.is_flag:  # "on" for a setting on by default (its --no- flag turns it off)
        return param.show_default if isinstance(param.show_default, str) else "off"
    default = param.show_default if isinstance(param.show_default, str) else param.default
    return "-" if default is click.core.UNSET or default in (None, ()) else str(default)


def test_every_command_has_a_section_and_every_section_a_command() -> None:
    documented = sections()
    cli = commands()
    shell = {f"{name}" for name in SHELL_COMMANDS}
    assert set(cli) <= set(documented), sorted(set(cli) - set(documented))
    assert shell <= set(documented), sorted(shell - set(documented))
    assert set(documented) <= set(cli) | shell, sorted(set(documented) - set(cli) - shell)
    for name, text in documented.items():
        assert "Example: `" in text, f"{name}: no example"


@pytest.mark.parametrize("name", sorted(commands()))
def test_options_and_defaults_match(name: str) -> None:
    command = commands()[name]
    if command.hidden:
        return  # an alias: its section points to the command it stands for
    rows = table(sections()[name])
    # The global options every command takes (and names in its help: --debug)
    # are in the "Global options" table.
    options = [
        p
        for p in command.params
        if isinstance(p, click.Option) and p.name not in {*GLOBAL_OPTIONS, "debug"}
    ]
    if name in TAKES_NODE_OPTIONS:
        options = [p for p in options if p.name not in NODE_OPTIONS.values()]
        assert "every option of [`node`]" in sections()[name]
    if name.startswith("actor "):  # the node's options it takes: listed, not tabled
        taken = [p for p in options if p.name in NODE_OPTIONS.values()]
        listed = sections()[name].split("The options of [`node`](#node) it takes")[1]
        listed = listed.split("\n\n")[0]
        assert set(re.findall(r"`(-[^`]+)`", listed)) == {"/".join(p.opts + p.secondary_opts)
                                                         for p in taken}  # fmt: skip
        options = [p for p in options if p not in taken]
    expected = {flag: default_of(p) for p in options for flag in p.opts + p.secondary_opts}
    assert rows == expected


def test_every_setting_is_in_the_configuration_table() -> None:
    text = DOC.read_text()
    for s in config.SETTINGS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{s.env}` |")), "")
        assert row, f"{s.env} is not documented"
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[1] == f"`{s.name}`" and cells[2] == f"`{s.flag}`", row
        assert cells[4] == s.accepted(), row
        if s.kind != "secret":
            shown = config.Effective({s.name: s.default}, {}).shown(s.name) or '""'
            assert cells[5] == shown, row
