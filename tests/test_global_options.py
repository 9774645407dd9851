"""``--data-dir`` and ``--config`` work before and after the command's name
(``peercrypt --data-dir D send ...`` and ``peercrypt send ... --data-dir D``),
for every command, with the same errors; after the command they win."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from peercrypt import errors
from peercrypt.cli.app import command_tree
from peercrypt.cli.runner import GLOBAL_OPTIONS
from peercrypt.testing.nodes import NodeProcess, blake3_file, run_cli, wait_until


@pytest.mark.parametrize("name", sorted(command_tree()))
def test_every_command_takes_the_global_options(name: str) -> None:
    command = command_tree()[name]
    flags = {p.name: p.opts for p in command.params if isinstance(p, click.Option)}
    for param, flag in GLOBAL_OPTIONS.items():
        assert flags.get(param) == [flag], (name, flags)
    assert flags.get("debug") == ["--debug"], (name, flags)  # in its help: it works after it


def test_data_dir_after_the_command(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    receiver, sender = node_factory(), node_factory()
    env = sender.env
    before = run_cli("--data-dir", sender.data_dir, "status", "--json", env=env)
    after = run_cli("status", "--json", "--data-dir", sender.data_dir, env=env)
    assert before.returncode == after.returncode == 0, (before.describe(), after.describe())
    assert json.loads(after.stdout)["fingerprint"] == json.loads(before.stdout)["fingerprint"]
    # Given twice, the one after the command wins.
    other = run_cli(
        "--data-dir", tmp_path / "nobody", "status", "--json", "--data-dir", sender.data_dir,
        env=env,
    )  # fmt: skip
    assert other.returncode == 0, other.describe()
    assert json.loads(other.stdout)["fingerprint"] == json.loads(before.stdout)["fingerprint"]

    source = make_file(20 * 1024, name="after.bin")
    sent = run_cli(
        "send", source, receiver.host, str(receiver.port), "--json",
        "--data-dir", sender.data_dir, env=env,
    )  # fmt: skip
    assert sent.returncode == 0, sent.describe()
    stored = receiver.inbox / json.loads(sent.stdout)["stored_as"]
    assert blake3_file(stored) == blake3_file(source)
    # It went through the sender's node (its history has it), in both
    # positions of a group's subcommand.
    for args in (
        ["stats", "list", "--json", "--data-dir", sender.data_dir],
        ["stats", "--data-dir", sender.data_dir, "list", "--json"],
    ):
        listed = run_cli(*args, env=env)
        assert listed.returncode == 0, listed.describe()
        files = [Path(t["file"]).name for t in json.loads(listed.stdout)]
        assert files == ["after.bin"], (args, files)


def test_config_after_the_command(tmp_path: Path) -> None:
    config_file = tmp_path / "custom.toml"
    config_file.write_text('mode = "qos"\nparallel_threads = 7\n')
    data_dir = tmp_path / "d"
    for args in (
        ["--data-dir", data_dir, "--config", config_file, "config", "show", "--json"],
        ["config", "show", "--json", "--config", config_file, "--data-dir", data_dir],
        ["config", "--config", config_file, "show", "--json", "--data-dir", data_dir],
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.describe()
        shown = json.loads(result.stdout)
        assert shown["mode"] == {
            "value": "qos",
            "source": f"config file {config_file}",
            "variable": "DEFAULT_MODE",
        }
        assert shown["parallel_threads"]["value"] == 7, shown


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--data-dir", "{file}", "is a file"),
        ("--data-dir", "/dev/null", "'/dev/null' is not a directory (a device)"),
        ("--data-dir", "{under-file}", "is not a directory (a file is on its path)"),
        ("--data-dir", "", "an empty path: name a folder, or leave the option out"),
        ("--config", "{dir}", "is a directory"),
        ("--config", "{missing}", "does not exist"),
        ("--config", "", "an empty path: name a file, or leave the option out"),
    ],
)
def test_errors_read_the_same_in_both_places(
    tmp_path: Path, flag: str, value: str, words: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    places = {"{file}": str(a_file), "{dir}": str(tmp_path), "{missing}": str(tmp_path / "no"),
              "{under-file}": str(a_file / "dd")}  # fmt: skip
    option = [flag, places.get(value, value)]
    # `config show` reads the config file (a missing one given by name is an error).
    before = run_cli(*option, "config", "show", cwd=tmp_path)
    after = run_cli("config", "show", *option, cwd=tmp_path)
    for result in (before, after):
        assert result.returncode == errors.USAGE, result.describe()
        assert "Traceback" not in result.stderr
        assert len(result.stderr_lines) == 1, result.describe()
        assert result.stderr_lines[0].startswith("peercrypt: error: "), result.describe()
        assert words in result.stderr_lines[0], result.describe()
    assert before.stderr_lines == after.stderr_lines


@pytest.mark.parametrize("where", ["environment", ".env", "default"])
def test_a_data_dir_that_is_no_directory_is_refused_wherever_it_was_named(
    tmp_path: Path, where: str
) -> None:
    """PEERCRYPT_DATA_DIR=/dev/null (or the default's place taken by a
    file) said "cannot use data directory /dev/null: File exists"."""
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": ""}
    if where == "environment":
        env["PEERCRYPT_DATA_DIR"] = "/dev/null"
    elif where == ".env":
        (tmp_path / ".env").write_text("PEERCRYPT_DATA_DIR=/dev/null\n")
    else:
        (tmp_path / "home" / ".local" / "share").mkdir(parents=True)
        (tmp_path / "home" / ".local" / "share" / "peercrypt").write_text("x")
    result = run_cli("status", env=env, cwd=tmp_path)
    assert result.returncode == errors.USAGE, result.describe()
    if where == "default":
        line = f"{tmp_path}/home/.local/share/peercrypt is not a directory (a file)"
    else:
        line = "/dev/null (PEERCRYPT_DATA_DIR) is not a directory (a device)"
    assert result.stderr_lines == [f"peercrypt: error: the data dir {line}"], result.describe()
    # Help and keygen never use it: not refused for it.
    for args in (["help"], ["stats", "--help"], ["send", "-h"], ["keygen"]):
        result = run_cli(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout, result.describe()


def test_a_config_file_named_and_missing_stops_every_command(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """`status` and `send` through a running node take no setting, and ran
    as if a `--config`/`PEERCRYPT_CONFIG` that names no file were there (a
    slip in its path went unseen); `config init` is the one that writes it."""
    receiver, sender = node_factory(), node_factory()
    missing = tmp_path / "no.toml"
    path = make_file(1000)
    said = f"config file {missing} does not exist"
    send = ["send", path, receiver.host, str(receiver.port)]
    by_env = {**(sender.env or {}), "PEERCRYPT_CONFIG": str(missing)}
    for args, env in (
        (["--config", missing, "status"], sender.env),
        (["status", "--config", missing], sender.env),
        (["status"], by_env),  # the line `status` takes without click
        ([*send, "--config", missing], sender.env),
        (send, by_env),
        (["--config", missing, "keygen"], sender.env),
    ):
        result = run_cli(*args, data_dir=sender.data_dir, env=env)
        assert result.returncode == errors.USAGE, (args, result.describe())
        # The same line wherever it was named (before or after the command).
        assert result.stderr_lines == [f"peercrypt: error: {said}"], result.describe()
        assert result.stdout == "", result.describe()
    assert list(receiver.inbox.iterdir()) == []  # nothing was sent
    assert run_cli("status", data_dir=sender.data_dir, env=sender.env).returncode == 0
    # A --config after the command wins over one before it or the variable's;
    # help needs no config file.
    there = tmp_path / "there.toml"
    there.write_text("")
    for args, env in (
        (["--config", missing, "status", "--config", there], sender.env),
        (["status", "--config", there], by_env),
        (["send", "--help"], by_env),
        (["--config", missing, "send", "--config", there, "--help"], sender.env),
        (["help", "send"], by_env),
    ):
        result = run_cli(*args, data_dir=sender.data_dir, env=env)
        assert result.returncode == 0, (args, result.describe())
        assert result.stderr == "", result.describe()
    for args in (["--config", missing, "config", "init"], ["config", "init", "--config", missing]):
        made = run_cli(*args, data_dir=sender.data_dir)
        assert made.returncode == 0 and missing.is_file(), made.describe()
        missing.unlink()


def test_a_relative_data_dir_and_inbox_are_told_whole(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """A node started as `--data-dir . --inbox box` (its working directory
    the data dir) tells `status` run from elsewhere where its files are: it
    said `inbox: box` and `history: stats.sqlite`, which a script there read
    as its own directory's."""
    receiver = node_factory("--data-dir", ".", "--inbox", "box")
    said = f"inbox {receiver.data_dir / 'box'}\n"  # (the log is written as the node goes)
    wait_until(lambda: said in receiver.log_text(), 30, "the node's inbox line")
    status = run_cli("status", "--json", data_dir=receiver.data_dir, cwd=tmp_path)
    assert status.returncode == 0, status.describe()
    facts = json.loads(status.stdout)
    assert (facts["inbox"], facts["history"]) == (
        str(receiver.data_dir / "box"),
        str(receiver.data_dir / "stats.sqlite"),
    )
    text = run_cli("status", data_dir=receiver.data_dir, cwd=tmp_path).stdout.splitlines()
    assert f"  inbox: {receiver.data_dir / 'box'}" in text
    path = make_file(10_000)
    sender = node_factory()
    code, result = sender.send_to(path, receiver)
    assert code == 0, result
    assert blake3_file(receiver.data_dir / "box" / result["stored_as"]) == blake3_file(path)
