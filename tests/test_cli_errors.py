"""User-reachable error paths of the CLI, with real processes on 127.0.0.1.

Each error must end in exactly one line ``peercrypt: error: ...`` on stderr
(no traceback) and the exit code documented in :mod:`peercrypt.errors`.
Usage errors found by click (bad arguments) too, with exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercrypt import errors
from peercrypt.cli.common import UserError
from peercrypt.cli.node import DataDirLock
from peercrypt.crypto.identity import load_or_create_identity, new_network_key
from peercrypt.testing.nodes import (
    CliResult,
    NodeProcess,
    blake3_file,
    cli_env,
    cli_running,
    run_cli,
    start_cli,
    tcp_connected_to,
    wait_until,
)

NODE_CMD_TIMEOUT = 20.0  # a `node` command that should fail but runs is killed after this


KEY_IN_ARGV_WARNING = (
    "peercrypt: warning: --network-key puts the key in the command line, visible to every "
    "local user (ps); use --network-key-file or PEERCRYPT_NETWORK_KEY"
)


def assert_error(result: CliResult, exit_code: int, *words: str, warned: bool = False) -> str:
    """Exactly one ``peercrypt: error:`` line on stderr, containing ``words``
    (after the one warning about a network key in argv, if ``warned``)."""
    assert result.returncode == exit_code, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = result.stderr_lines
    if warned:
        assert lines[:1] == [KEY_IN_ARGV_WARNING], result.describe()
        lines = lines[1:]
    assert len(lines) == 1, result.describe()
    line = lines[0]
    assert line.startswith("peercrypt: error: "), result.describe()
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    return line


def assert_usage_error(result: CliResult, *words: str) -> None:
    """A usage error: exit 2 and one line naming the reason."""
    assert_error(result, errors.USAGE, *words)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that a listening socket holds for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def source(make_file: Callable[..., Path]) -> Path:
    return make_file(50 * 1024, name="payload.bin")


# -- argument and configuration errors ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["sned"], "no such command 'sned' (did you mean 'send'?); commands: actor, cancel, "),
        (["stats", "lst"], "no such command 'lst' (did you mean 'list'?); commands: export, list"),
        (["zzz"], "no such command 'zzz'; commands: actor, cancel, "),
    ],
)
def test_a_mistyped_command_suggests_the_nearest(
    tmp_path: Path, args: list[str], line: str
) -> None:
    result = run_cli(*args, data_dir=tmp_path / "dd")
    assert assert_error(result, errors.USAGE).startswith(f"peercrypt: error: {line}")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["start", "--bootstrap", "h:1"],
            "no such option '--bootstrap' (did you mean --bootstrap-host or --bootstrap-port?);"
            " `peercrypt start --help` lists them",
        ),
        (
            ["send", "f", "h", "1", "--chunk", "1M"],
            "no such option '--chunk' (did you mean --chunk-size?);"
            " `peercrypt send --help` lists them",
        ),
        (["send", "--zzzzzz"], "no such option '--zzzzzz'; `peercrypt send` takes --bucket, "),
    ],
)
def test_a_mistyped_option_suggests_the_nearest_not_all(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """Found by use: `start --bootstrap` listed all 50 of `start`'s options
    after click's suggestion; with a suggestion the line names the nearest
    and where the rest are, without one it lists them."""
    result = run_cli(*args, data_dir=tmp_path / "dd")
    told = assert_error(result, errors.USAGE)
    if "takes" in line:  # then every option follows
        assert told.startswith(f"peercrypt: error: {line}"), told
    else:
        assert told == f"peercrypt: error: {line}", told


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["send", "{missing}", "127.0.0.1", "7400", "--open"], ["does not exist"]),
        (["send", "{file}", "{file}", "127.0.0.1", "7400", "--open"], ["same name"]),
        (["send", "{file}", "127.0.0.1", "0", "--open"], ["PORT"]),
        (["send", "{file}", "127.0.0.1", "7400", "--open", "--chunk-size", "100"], ["chunk"]),
        (["send", "{file}", "127.0.0.1", "7400", "--open", "--timeout", "0"], ["timeout"]),
        (["node", "--port", "70000", "--open"], ["port"]),
        (["send", "{file}", "127.0.0.1", "x", "--open"], ["'PORT': 'x' is not a valid integer"]),
        (["send", "{file}", "h", "1", "--timeout", "soon"], ["'soon' is not a valid number"]),
        (["send", "{file}"], ["send: expected FILE... HOST PORT", "peercrypt send big.iso"]),
        (["send", "{file}", "127.0.0.1"], ["send: expected FILE... HOST PORT"]),
        (["send"], ["send: expected FILE... HOST PORT"]),
        (["set-mode"], ["set-mode: missing argument 'MODE'; choose from normal, token-bucket,"]),
        (["max-rate", "-5"], ["max-rate: -5: a negative number; no value here may be negative"]),
        (["gossip", "interval", "-1.5"], ["gossip: -1.5: a negative number; no value"]),
        (
            ["gossip", "interval", "10s"],
            ["gossip interval '10s': not a number of seconds; expected a number in 0.01..3600"],
        ),
        (["gossip", "interval", "abc"], ["gossip interval 'abc': not a number of seconds"]),
        (["send", "{file}", "h", "-7"], ["send: -7: a negative number; no value here may be"]),
    ],
    ids=[
        "missing-file",
        "same-name",
        "port-0",
        "chunk-too-small",
        "timeout-0",
        "port-range",
        "port-not-a-number",
        "timeout-not-a-number",
        "no-host-port",
        "no-port",
        "nothing",
        "choice-missing",
        "negative-rate",
        "negative-interval",
        "interval-with-a-unit",
        "interval-not-a-number",
        "negative-port",
    ],
)
def test_click_usage_errors(
    tmp_path: Path, source: Path, args: list[str], words: list[str]
) -> None:
    (tmp_path / "adir").mkdir()
    fill = {"missing": str(tmp_path / "nope.bin"), "dir": str(tmp_path / "adir"), "file": source}
    argv = [a.format(**fill) for a in args]
    result = run_cli(*argv, data_dir=tmp_path / "dd", timeout=NODE_CMD_TIMEOUT)
    assert_usage_error(result, *words)
    assert "valid integer range" not in result.stderr, result.stderr  # click's type name
    assert "valid float range" not in result.stderr, result.stderr


@pytest.mark.parametrize("group", [[], ["stats"], ["config"], ["actor"]])
def test_a_command_group_alone_prints_its_help(tmp_path: Path, group: list[str]) -> None:
    """`peercrypt` or `peercrypt stats` alone is asking for the commands:
    the help on stdout, exit 0 (it printed the whole help on stderr as one
    `peercrypt: error: usage: ...`, exit 2)."""
    result = run_cli(*group, data_dir=tmp_path / "dd" if group else None)
    assert result.returncode == 0, result.describe()
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: {' '.join(['peercrypt', *group])} [OPTIONS] COMMAND")
    assert "\nCommands:\n" in result.stdout


def test_options_and_no_command_say_where_the_commands_are(tmp_path: Path) -> None:
    bare = run_cli(data_dir=tmp_path / "dd")
    assert bare.returncode == errors.USAGE, bare.describe()
    assert bare.stderr == "peercrypt: error: missing command; `peercrypt --help` lists them\n"


@pytest.mark.parametrize("command", ["send", "node"])
def test_no_network_key_and_no_open(tmp_path: Path, source: Path, command: str) -> None:
    args = (
        ["send", str(source), "127.0.0.1", "7400"]
        if command == "send"
        else ["node", "--host", "127.0.0.1", "--port", "0"]
    )
    result = run_cli(*args, data_dir=tmp_path / "dd", timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, "no network key", "--open")
    # An empty key (e.g. an unset shell variable) is no key either.
    empty = run_cli(
        *args,
        data_dir=tmp_path / "dd",
        env={"PEERCRYPT_NETWORK_KEY": ""},
        timeout=NODE_CMD_TIMEOUT,
    )
    assert_error(empty, errors.USAGE, "no network key")


@pytest.mark.parametrize("command", ["node", "start"])
@pytest.mark.parametrize("how", ["option", "env", "data-dir"])
def test_an_inbox_that_is_a_file_is_one_error_line(tmp_path: Path, command: str, how: str) -> None:
    """A file where the inbox should be (named by --inbox, PEERCRYPT_INBOX,
    or DATA_DIR/inbox itself): one line naming it, exit 2, no node. (The
    receiver's start failed: a log line, then "actor receiver failed to
    start", exit 1.) A place that cannot be made is one line too."""
    data = tmp_path / "dd"
    data.mkdir()
    inbox = tmp_path / "f.txt" if how != "data-dir" else data / "inbox"
    inbox.write_text("not a folder\n")
    args = [command, "--host", "127.0.0.1", "--port", "0", "--open"]
    env = {"PEERCRYPT_INBOX": str(inbox)} if how == "env" else None
    if how == "option":
        args += ["--inbox", str(inbox)]
    result = run_cli(*args, data_dir=data, env=env, timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, f"inbox {inbox}: not a directory")
    below = run_cli(
        *args[:6], "--inbox", str(inbox / "sub"), data_dir=data, timeout=NODE_CMD_TIMEOUT
    )
    assert_error(below, errors.USAGE, f"cannot make the inbox {inbox / 'sub'}: Not a directory")


@pytest.mark.parametrize("command", ["send", "node"])
@pytest.mark.parametrize("key_from", ["option", "env"])
def test_open_and_a_network_key_exclude_each_other(
    tmp_path: Path, source: Path, network_key: str, command: str, key_from: str
) -> None:
    args = (
        ["send", str(source), "127.0.0.1", "7400", "--open"]
        if command == "send"
        else ["node", "--host", "127.0.0.1", "--port", "0", "--open"]
    )
    env = None
    if key_from == "option":
        args += ["--network-key", network_key]
    else:
        env = {"PEERCRYPT_NETWORK_KEY": network_key}
    result = run_cli(*args, data_dir=tmp_path / "dd", env=env, timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, "--open", "exclude", warned=key_from == "option")


@pytest.mark.parametrize("value", ["zzz", "abcd-efgh", "0000-0000-0000-0000-0000-0000-0000-0000"])
def test_invalid_allow_fingerprint(tmp_path: Path, network_key: str, value: str) -> None:
    result = run_cli(
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--allow",
        value,
        data_dir=tmp_path / "dd",
        env={"PEERCRYPT_NETWORK_KEY": network_key},
        timeout=NODE_CMD_TIMEOUT,
    )
    assert_error(result, errors.USAGE, "not a PeerCrypt fingerprint", value[:20])
    assert not (tmp_path / "dd" / "control.json").exists()


@pytest.mark.parametrize(
    ("content", "mode", "words"),
    [
        (os.urandom(32), 0o644, ["accessible by other users", "chmod 600"]),
        (b"short", 0o600, ["not a PeerCrypt identity"]),
    ],
    ids=["readable-by-others", "wrong-size"],
)
@pytest.mark.parametrize("command", ["send", "node", "status"])
def test_unusable_identity_file(
    tmp_path: Path, source: Path, content: bytes, mode: int, words: list[str], command: str
) -> None:
    data_dir = tmp_path / "dd"
    data_dir.mkdir(mode=0o700)
    identity = data_dir / "identity.key"
    identity.write_bytes(content)
    identity.chmod(mode)
    args = {
        "send": ["send", str(source), "127.0.0.1", "7400", "--open"],
        "node": ["node", "--host", "127.0.0.1", "--port", "0", "--open"],
        "status": ["status", "--json"],
    }[command]
    result = run_cli(*args, data_dir=data_dir, timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, "identity.key", *words)
    assert identity.read_bytes() == content  # never "repaired" behind the user's back


# -- status ----------------------------------------------------------------------------


def test_status_when_no_node_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "dd"
    as_json = run_cli("status", "--json", data_dir=data_dir)
    assert as_json.returncode == errors.FAILED, as_json.describe()
    assert as_json.stderr == ""
    facts = as_json.json
    assert facts["running"] is False
    assert facts["fingerprint"].count("-") == 7
    assert "no node is running" in facts["reason"]
    text = run_cli("status", data_dir=data_dir)
    assert text.returncode == errors.FAILED, text.describe()
    assert "not running" in text.stdout
    assert facts["fingerprint"] in text.stdout
    assert "Traceback" not in text.stderr


# -- nodes that cannot start ---------------------------------------------------------


def test_the_data_dir_lock_is_let_go_once_and_kept_after_a_stuck_stop(tmp_path: Path) -> None:
    """Held, a second taker is refused; let go (twice: the second time does
    nothing), it can be taken again; kept (a stop that found an actor
    stuck), a release lets nothing go until the process ends. A symlink in
    its place is not followed."""
    first = DataDirLock.take(tmp_path)
    with pytest.raises(UserError, match="a node is already running for"):
        DataDirLock.take(tmp_path)
    first.release()
    first.release()
    second = DataDirLock.take(tmp_path)
    second.keep()
    second.release()
    with pytest.raises(UserError, match="a node is already running for"):
        DataDirLock.take(tmp_path)
    os.close(second.fd)  # (as the process's end would)
    elsewhere = tmp_path / "elsewhere"
    link_dir = tmp_path / "linked"
    link_dir.mkdir()
    (link_dir / "node.lock").symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"cannot open .*node\.lock"):
        DataDirLock.take(link_dir)
    assert not elsewhere.exists()


@pytest.mark.parametrize("stopped", [False, True])
def test_second_node_on_the_same_data_dir(
    node_factory: Callable[..., NodeProcess], network_key: str, stopped: bool
) -> None:
    """Refused, one line; the first node is untouched: the same pid behind
    the same control file. Also while the first does not answer its status
    in time (stopped, Ctrl-Z): the data dir's lock refuses the second, which
    would otherwise start beside it and take over the control file."""
    first = node_factory()
    control = (first.data_dir / "control.json").read_bytes()
    if stopped:
        os.kill(first.pid, signal.SIGSTOP)
    try:
        result = run_cli(
            "node",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            data_dir=first.data_dir,
            env={"PEERCRYPT_NETWORK_KEY": network_key},
            timeout=NODE_CMD_TIMEOUT,
        )
    finally:
        if stopped:
            os.kill(first.pid, signal.SIGCONT)
    assert_error(result, errors.USAGE, "already running", str(first.data_dir))
    assert (first.data_dir / "control.json").read_bytes() == control
    status = first.status()
    assert status["pid"] == str(first.pid)
    assert status["port"] == str(first.port)


def test_port_in_use_fails_cleanly(tmp_path: Path, network_key: str, busy_port: int) -> None:
    """The node exits non-zero, without a traceback, and leaves no control file."""
    data_dir = tmp_path / "dd"
    result = run_cli(
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        str(busy_port),
        data_dir=data_dir,
        env={"PEERCRYPT_NETWORK_KEY": network_key},
        timeout=NODE_CMD_TIMEOUT,
    )
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr
    assert result.stderr_lines[-1].startswith("peercrypt: error: "), result.describe()
    assert not (data_dir / "control.json").exists()
    assert run_cli("status", "--json", data_dir=data_dir).json["running"] is False


@pytest.mark.parametrize("which", ["--port", "--data-port"])
def test_port_in_use_message(tmp_path: Path, network_key: str, busy_port: int, which: str) -> None:
    args = ["node", "--host", "127.0.0.1", "--port", "0", which, str(busy_port)]
    env = {"PEERCRYPT_NETWORK_KEY": network_key}
    result = run_cli(*args, data_dir=tmp_path / "dd", env=env, timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, "cannot listen", str(busy_port), "address already in use")


def test_one_port_for_both_the_public_and_the_data_port_is_a_usage_error(
    tmp_path: Path, network_key: str, free_port: int
) -> None:
    """The second bind failed, "Address already in use", as if another
    program held the port: the two settings are what is wrong, named as
    they were set (flag, variable, config key), in `config show` too."""
    dd, key, port = tmp_path / "dd", {"PEERCRYPT_NETWORK_KEY": network_key}, str(free_port)
    node = ["node", "--host", "127.0.0.1"]
    result = run_cli(*node, "--port", port, "--data-port", port, data_dir=dd, env=key,
                     timeout=NODE_CMD_TIMEOUT)  # fmt: skip
    line = assert_error(result, errors.USAGE, f"--port {port} and --data-port {port}: the node")
    assert line.endswith("public port and its data port must differ"), line
    assert not (dd / "control.json").exists()
    env = {**key, "PEERCRYPT_DATA_PORT": port}
    shown = run_cli("config", "show", "--port", port, data_dir=dd, env=env)
    assert_usage_error(shown, f"--port {port} and PEERCRYPT_DATA_PORT {port}: ")
    default = run_cli(*node, "--data-port", "7400", data_dir=dd, env=key, timeout=NODE_CMD_TIMEOUT)
    assert_usage_error(default, "--port (default) 7400 and --data-port 7400: ")
    assert run_cli("config", "show", "--port", port, data_dir=dd).returncode == 0
    # A node whose receiver is attached binds no data port: one config for
    # both (the attached receiver's data port on its own host) is valid.
    shared = run_cli("config", "show", "--remote-actor", "receiver", "--port", port,
                     "--data-port", port, data_dir=dd)  # fmt: skip
    assert shared.returncode == 0, shared.stderr


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("no-such-host.invalid", "the name does not resolve"),
        ("999.1.1.1", "the name does not resolve"),
        ("192.0.2.1", "not an address of this host"),  # (TEST-NET-1: no host has it)
    ],
)
def test_a_host_to_listen_on_that_is_not_here_says_why(
    tmp_path: Path, network_key: str, host: str, why: str
) -> None:
    """ZeroMQ said "No such device" (or "Cannot assign requested address")
    and named the data port: the host is what is wrong, whatever the port."""
    args = ["node", "--host", host, "--port", "0"]
    env = {"PEERCRYPT_NETWORK_KEY": network_key}
    result = run_cli(*args, data_dir=tmp_path / "dd", env=env, timeout=NODE_CMD_TIMEOUT)
    line = assert_error(result, errors.USAGE)
    assert line.startswith(f"peercrypt: error: cannot listen on {host}: {why}"), line


def test_an_empty_host_to_listen_on_is_refused_naming_where_it_was_set(
    tmp_path: Path, network_key: str
) -> None:
    """The documented rule (a host name or address, no blank) holds for
    an empty one too: no `cannot listen on  (...)`, before anything starts."""
    key, dd = {"PEERCRYPT_NETWORK_KEY": network_key}, tmp_path / "dd"
    flag = run_cli("node", "--port", "0", "--host", "", data_dir=dd, env=key, timeout=30)
    assert_usage_error(flag, "'--host'", "an empty host")
    for command in (["node", "--port", "0"], ["config", "show"]):
        env = {**key, "PEERCRYPT_HOST": ""}
        result = run_cli(*command, data_dir=dd, env=env, timeout=NODE_CMD_TIMEOUT)
        line = assert_error(result, errors.USAGE)
        assert line == (
            "peercrypt: error: PEERCRYPT_HOST='': expected a host name or address "
            "(visible ASCII, no blank)"
        ), line
    assert not (dd / "control.json").exists()


# -- sends that fail -----------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_unreachable_port(
    node_factory: Callable[..., NodeProcess], source: Path, free_port: int, as_json: bool
) -> None:
    sender = node_factory()
    args = ["--timeout", "2"] + (["--json"] if as_json else [])
    result = sender.cli("send", str(source), "127.0.0.1", str(free_port), *args, timeout=30)
    if as_json:
        assert result.returncode == errors.UNREACHABLE, result.describe()
        assert result.json["ok"] is False
        assert result.json["code"] == "unreachable"
        assert result.json["blake3"] is None and result.json["stored_as"] is None
        assert "Traceback" not in result.stderr
    else:
        assert_error(result, errors.UNREACHABLE, "cannot connect", f"127.0.0.1:{free_port}")
    assert result.seconds < 15


def test_wrong_network_key_then_a_good_transfer(
    node_factory: Callable[..., NodeProcess],
    network_key: str,
    tmp_path: Path,
    source: Path,
) -> None:
    receiver = node_factory()
    port = str(receiver.port)
    outsider = tmp_path / "outsider"
    wrong = run_cli(
        "send", source, "127.0.0.1", port, "--timeout", "5",
        data_dir=outsider, env={"PEERCRYPT_NETWORK_KEY": new_network_key()},
    )  # fmt: skip
    assert_error(wrong, errors.NOT_ADMITTED, "handshake", "wrong network key")
    wrong_json = run_cli(
        "send", source, "127.0.0.1", port, "--json", "--open", "--timeout", "5",
        data_dir=outsider,
    )  # fmt: skip
    assert wrong_json.returncode == errors.NOT_ADMITTED, wrong_json.describe()
    assert wrong_json.json["code"] == "handshake"
    assert wrong_json.json["ok"] is False
    # Nothing reached the inbox, and the receiver still serves members.
    assert sorted(os.listdir(receiver.inbox)) == []
    good = run_cli(
        "send", source, "127.0.0.1", port, "--json",
        data_dir=tmp_path / "member", env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    assert good.returncode == 0, good.describe()
    assert good.json["blake3"] == blake3_file(source)
    stored = receiver.inbox / good.json["stored_as"]
    assert stored.name == "payload.bin"
    assert blake3_file(stored) == blake3_file(source)
    assert sorted(os.listdir(receiver.inbox)) == ["payload.bin"]


def test_allow_list(
    node_factory: Callable[..., NodeProcess], network_key: str, tmp_path: Path, source: Path
) -> None:
    allowed_dir, stranger_dir = tmp_path / "allowed", tmp_path / "stranger"
    allowed_fp = run_cli("status", "--json", data_dir=allowed_dir).json["fingerprint"]
    # Fingerprints are accepted in any case and without dashes.
    receiver = node_factory("--allow", allowed_fp.replace("-", "").upper())
    assert receiver.status()["admission"] == "allow-list"
    port = str(receiver.port)

    denied = run_cli(
        "send", source, "127.0.0.1", port, "--timeout", "5",
        data_dir=stranger_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    assert_error(denied, errors.NOT_ADMITTED, "did not admit", "allow-list")
    denied_json = run_cli(
        "send", source, "127.0.0.1", port, "--json", "--timeout", "5",
        data_dir=stranger_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    assert denied_json.returncode == errors.NOT_ADMITTED, denied_json.describe()
    assert denied_json.json["code"] == "not-admitted"
    assert receiver.wait_for_counter("admission.denied-not-allowed", 2) >= 2
    assert os.listdir(receiver.inbox) == []

    ok = run_cli(
        "send", source, "127.0.0.1", port, "--json",
        data_dir=allowed_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    assert ok.returncode == 0, ok.describe()
    assert ok.json["blake3"] == blake3_file(source)
    assert blake3_file(receiver.inbox / ok.json["stored_as"]) == blake3_file(source)


def test_refused_name(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A name with nothing usable left after sanitising is refused (exit 5)."""
    receiver = node_factory()
    sender = node_factory()
    odd = make_file(100, name="\x01\x7f", directory=tmp_path / "odd")
    result = sender.cli("send", str(odd), "127.0.0.1", str(receiver.port), "--timeout", "5")
    assert_error(result, errors.REFUSED, "refused", "unusable file name")
    assert os.listdir(receiver.inbox) == []
    assert receiver.wait_for_counter("receiver.refused-bad-name", 1) == 1


# -- first use of a data dir ---------------------------------------------------------


def test_concurrent_first_use_of_a_data_dir(tmp_path: Path) -> None:
    """E.g. `peercrypt status` while `peercrypt node` starts on a fresh data dir."""
    failures: list[str] = []

    def first_use(data_dir: Path, barrier: threading.Barrier, keys: list[bytes]) -> None:
        barrier.wait(timeout=10)
        try:
            keys.append(load_or_create_identity(data_dir).public)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    for trial in range(30):
        barrier = threading.Barrier(6)
        keys: list[bytes] = []
        args = (tmp_path / f"dd{trial}", barrier, keys)
        threads = [threading.Thread(target=first_use, args=args) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        if len(set(keys)) > 1:
            failures.append("two identities")
    assert failures == []


# -- Ctrl-C ----------------------------------------------------------------------------


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("sig", "code", "words"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "SIGTERM"),  # a `kill`, a `timeout`
        (signal.SIGHUP, 129, "SIGHUP"),  # the terminal closed
    ],
)
def test_ctrl_c_or_the_end_of_the_command_cancels_the_send(
    node_factory: Callable[..., NodeProcess],
    source: Path,
    blackhole: int,
    sig: signal.Signals,
    code: int,
    words: str,
) -> None:
    """SIGINT to `send` cancels the transfer in the node (exit 130, one
    line); so do SIGTERM and SIGHUP (exit 128 + the signal), which ended
    the command and left the node sending what nobody followed."""
    sender = node_factory()
    args = ["send", str(source), "127.0.0.1", str(blackhole), "--timeout", "30"]
    with start_cli(*args, data_dir=sender.data_dir) as cli:
        try:
            # The send is in progress: no check answered, so its sender asks who is there.
            sender.wait_for_counter("sender.hellos", 1)
            cli.send_signal(sig)
            stdout, stderr = cli.communicate(timeout=15)
        finally:
            cli.kill()
    result = CliResult(tuple(args), cli.returncode, stdout, stderr, 0.0)
    assert_error(result, code, words, "cancelled")
    assert sender.wait_for_counter("sender.failed-cancelled", 1) == 1
    assert sender.status()["pid"] == str(sender.pid)  # the node itself carries on


def test_a_request_the_node_cannot_read_says_the_versions_differ() -> None:
    """A command of a newer PeerCrypt than the node it talks to (updated
    while the node ran) gets "bad-request" with a codec error: the line says
    what it means and what to do, not only the codec's words."""
    from peercrypt.cli.follow import refusal
    from peercrypt.wire.messages import ErrorReply

    reason = "fields: mc-send-request: missing [] extra ['more']"
    line = refusal(ErrorReply(code="bad-request", reason=reason))
    assert line == (
        "the local node cannot read this request: it runs another version of PeerCrypt "
        f"than this command (restart the node with this one) [{reason}]"
    )
    busy = refusal(ErrorReply(code="busy", reason="too many requests in progress"))
    assert busy == "the local node refused: too many requests in progress"


def _cli(
    args: list[str], data_dir: Path, ignore_hup: bool = False, stdin: int | None = None
) -> subprocess.Popen[str]:
    """``peercrypt ARGS`` as :func:`start_cli` starts it, SIGHUP ignored
    (as `nohup` starts a command) if asked, stdin a pipe if asked."""

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if ignore_hup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-m", "peercrypt", "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(None),
        preexec_fn=preexec,
    )


def test_a_send_under_nohup_goes_on_when_its_terminal_closes(
    node_factory: Callable[..., NodeProcess], source: Path, blackhole: int
) -> None:
    """SIGHUP ignored by whoever started `send` (`nohup`) stays ignored: the
    send goes on (the cancel on SIGHUP is for a command the terminal ends)."""
    sender = node_factory()
    args = ["send", str(source), "127.0.0.1", str(blackhole), "--timeout", "30"]
    cli = _cli(args, sender.data_dir, ignore_hup=True)
    try:
        sender.wait_for_counter("sender.hellos", 1)
        cli.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            cli.wait(timeout=2.0)  # still following its send
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=15)
    finally:
        cli.kill()
    line = assert_error(
        CliResult(tuple(args), cli.returncode, stdout, stderr, 0.0), 130, "interrupted"
    )
    assert "keeps" not in line  # it never reached a receiver: nothing kept to resume


def test_a_shell_whose_send_sigterm_cancelled_ends(
    node_factory: Callable[..., NodeProcess], source: Path, blackhole: int
) -> None:
    """SIGTERM while a shell's foreground send runs: the send is cancelled
    and the shell ends with 143 (it printed the line and went on with the
    next one, the signal swallowed)."""
    sender = node_factory()
    script = f"send {source} 127.0.0.1 {blackhole} --timeout 30\nstatus\n"
    cli = _cli(["shell"], sender.data_dir, stdin=subprocess.PIPE)
    try:
        assert cli.stdin is not None
        cli.stdin.write(script)
        cli.stdin.flush()  # (left open: communicate ends it)
        sender.wait_for_counter("sender.hellos", 1)
        cli.send_signal(signal.SIGTERM)
        stdout, stderr = cli.communicate(timeout=15)
    finally:
        cli.kill()
    assert cli.returncode == 143, (stdout, stderr)
    assert "SIGTERM: the transfer was cancelled" in stderr, stderr
    assert "node: running" not in stdout, stdout  # the next line did not run


def test_what_a_user_gets_wrong_in_a_send_line_is_named(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    """Two files of one name (which one), a path that is not UTF-8 (it was
    handed on with a '?' for its byte and said "No such file"), HOST:PORT as
    one word (the folder before it taken for the host), a .env that does not
    parse (exit 1 with no word of where)."""
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "same.txt").write_text(d)
    odd = os.fsencode(tmp_path) + b"/bad\xffdir"
    os.mkdir(odd)
    with open(odd + b"/ok.txt", "wb") as f:
        f.write(b"ok")
    data = tmp_path / "dd"
    twice = run_cli("send", tmp_path / "d1/same.txt", tmp_path / "d2/same.txt", "127.0.0.1", "9",
                    data_dir=data)  # fmt: skip
    assert_error(twice, errors.USAGE, "the same name, 'same.txt'")
    for where in (data, node_factory().data_dir):  # a temporary node's send, a running one's
        bad = run_cli("send", os.fsdecode(odd + b"/ok.txt"), "127.0.0.1", "9", data_dir=where)
        assert_error(bad, errors.USAGE, "bad\\xffdir/ok.txt is not UTF-8", "rename it")
    joined = run_cli("send", tmp_path / "d1/same.txt", tmp_path / "d2", "127.0.0.1:7400",
                     data_dir=data)  # fmt: skip
    assert_error(joined, errors.USAGE, "expected FILE... HOST PORT", "two words")
    # A bad line of the working directory's .env; a network key written as
    # in a compose file: the error names the line, never its words (it
    # showed the key).
    key = new_network_key()
    for text in ('MULTI="line1\nline2"\n', f"# ours\nPEERCRYPT_NETWORK_KEY: {key}\n"):
        (tmp_path / ".env").write_text(text)
        env = run_cli("status", data_dir=data, cwd=tmp_path)
        assert_error(env, errors.USAGE, ".env:2: expected KEY=VALUE (the line is not shown)")
        assert "working directory" in env.stderr, env.describe()
        assert key not in env.stderr and key.split(".")[1][:8] not in env.stderr, env.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["send", "SRC", "127.0.0.1", "7400", "--network-key-file", "MISSING"],
         "cannot read network key file MISSING: No such file or directory"),
        (["send", "SRC", "127.0.0.1", "7400", "--network-key-file", "EMPTY"],
         "network key file EMPTY is empty"),
        # (It advised `chmod 600 /dev/null`: as root, harm to every program.)
        (["health-check", "127.0.0.1", "7400", "--network-key-file", "/dev/null"],
         "network key file /dev/null is not a regular file (a device)"),
        (["send", "SRC", "127.0.0.1", "7400", "--network-key-file", ""],
         "send: Invalid value for '--network-key-file': an empty path: name a file, or leave "
         "the option out"),
        (["keygen", "-o", ""],
         "keygen: Invalid value for '-o' / '--output': an empty path: name a file, or leave "
         "the option out"),
        (["stats", "export", "-o", ""],
         "stats export: Invalid value for '-o' / '--output': an empty path: name a file, or "
         "leave the option out"),
        (["send", "SRC", "127.0.0.1", "7400", "--open", "--expect", "a" * 32, "--expect", "b" * 32],
         "--expect names one receiver; repeat it only with multicast (-m)"),
        (["send", "-m", "SRC", "127.0.0.1", "7400", "--open",
          *[w for p in range(1, 65) for w in ("--to", f"127.0.0.1:{p}")]],
         "at most 64 multicast targets"),
        (["node", "--port", "0", "--open", "--bootstrap-host", "127.0.0.1"],
         "--bootstrap-host and --bootstrap-port go together (PEERCRYPT_BOOTSTRAP_HOST, "
         "PEERCRYPT_BOOTSTRAP_PORT)"),
        (["node", "--port", "0", "--open", "--remote-actor", "recevier"],
         "--remote-actor recevier: not an attachable actor "
         "(choose from health, receiver, scheduler, sender)"),
        (["actor", "receiver", "--attach", "127.0.0.1", "--open"],
         "--attach: expected HOST:PORT, got '127.0.0.1'"),
        (["congestion", "window"],
         "congestion takes KEY VALUE pairs; 'window' has no value "
         "(keys: window, min-window, max-window, threshold, timeout, dupack)"),
    ],
    ids=["key-file-missing", "key-file-empty", "key-file-a-device", "key-file-empty-path",
         "keygen-empty-path", "export-empty-path", "expect-twice", "65-targets", "bootstrap-half",
         "remote-actor-typo", "attach-no-port", "congestion-no-value"],
)  # fmt: skip
def test_what_a_user_gets_wrong_in_an_option_is_one_line(
    tmp_path: Path, source: Path, args: list[str], line: str
) -> None:
    """Each before anything starts or goes out: one line, exit 2, and no
    node (for `node` and `actor`) left running."""
    (tmp_path / "empty.key").write_text("")
    (tmp_path / "empty.key").chmod(0o600)
    names = {"SRC": str(source), "MISSING": str(tmp_path / "typo.key"),
             "EMPTY": str(tmp_path / "empty.key")}  # fmt: skip
    result = run_cli(*[names.get(a, a) for a in args], data_dir=tmp_path / "dd",
                     timeout=NODE_CMD_TIMEOUT)  # fmt: skip
    assert_usage_error(result)
    for name, path in names.items():
        line = line.replace(name, path)
    assert result.stderr_lines == [f"peercrypt: error: {line}"], result.describe()


def test_a_setting_for_a_node_that_does_not_answer_or_died_says_which(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A node that runs but does not answer (stopped, Ctrl-Z): "did not
    answer", not a hint to start one; it answers the same request once it
    runs on. One killed while the command waits, or before (its control
    file left behind): "stopped", "not running (stale)", with the hint."""
    node, dying = node_factory(), node_factory()
    control = json.loads((dying.data_dir / "control.json").read_text())["endpoint"]
    port = int(control.rsplit(":", 1)[1])
    os.kill(dying.pid, signal.SIGSTOP)
    with cli_running("max-rate", "1M", data_dir=dying.data_dir) as waiting:
        # Connected (the kernel accepts for a stopped process), the command
        # waits for the answer (5 s): the node dies meanwhile.
        wait_until(lambda: tcp_connected_to(port), 30, "the command's connection")
        dying.kill()
        _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == errors.FAILED, err
    assert err.splitlines() == [
        "peercrypt: error: the node stopped (start one with `peercrypt node`)"
    ], err
    os.kill(node.pid, signal.SIGSTOP)
    try:
        stuck = node.cli("max-rate", "1M")
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert_error(stuck, errors.FAILED)
    assert stuck.stderr_lines == ["peercrypt: error: the node did not answer"], stuck.describe()
    answered = node.cli("max-rate", "1M")
    assert answered.returncode == 0 and "node rate cap is now 1.0 MiB/s" in answered.stdout
    node.kill()
    assert (node.data_dir / "control.json").exists()
    stale = node.cli("max-rate", "1M")
    assert stale.stderr_lines == [
        f"peercrypt: error: the node for {node.data_dir} is not running (stale) "
        "(start one with `peercrypt node`)"
    ], stale.describe()
    assert stale.returncode == errors.FAILED


def test_a_config_file_that_is_not_utf8_is_one_error_line_naming_it(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (a file saved in another encoding) in the
    --config file or DATA_DIR/config.toml: one line naming the file, exit 2,
    none of its bytes shown. (It went to the unexpected-error path: exit 1,
    "'utf-8' codec can't decode byte 0xff", no file named.)"""
    data = tmp_path / "dd"
    data.mkdir()
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"network_key = 'secr\xe9t'\n")
    shown = run_cli("--config", str(bad), "config", "show", data_dir=data)
    assert_error(shown, errors.USAGE, f"config file {bad} is not valid TOML: not UTF-8 text")
    assert "secr" not in shown.stderr
    (data / "config.toml").write_bytes(b"\xff\xfe")
    node = run_cli("node", "--port", "0", "--open", data_dir=data, timeout=NODE_CMD_TIMEOUT)
    assert_error(node, errors.USAGE, f"config file {data / 'config.toml'} is not valid TOML")


def test_a_file_the_node_may_not_read_is_one_line_naming_it(
    tmp_path: Path, network_key: str, node_factory: Callable[..., NodeProcess]
) -> None:
    """The node runs as another user than the command (here root without its
    override of file permissions, as a service account would): a file it
    may not read, alone or inside a folder, is named with the system's
    reason, exit 2, and nothing reaches the receiver."""
    sender = NodeProcess(
        data_dir=tmp_path / "sender",
        network_key=network_key,
        prefix=("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"),
    ).start()
    receiver = node_factory()
    try:
        private = tmp_path / "private.bin"
        private.write_bytes(os.urandom(4096))
        private.chmod(0o000)
        alone = sender.cli("send", private, receiver.host, str(receiver.port))
        assert_usage_error(alone, f"cannot read {private}: Permission denied")
        folder = tmp_path / "album"
        folder.mkdir()
        (folder / "ok.txt").write_text("ok")
        (folder / "secret.txt").write_text("no")
        (folder / "secret.txt").chmod(0o000)
        tree = sender.cli("send", folder, receiver.host, str(receiver.port))
        assert_usage_error(tree, f"cannot read {folder / 'secret.txt'}: Permission denied")
        assert list(receiver.inbox.iterdir()) == []
    finally:
        sender.stop()


def test_a_settings_file_that_cannot_be_read_or_holds_a_wrong_type_is_one_line(
    tmp_path: Path,
) -> None:
    """The working directory's .env not UTF-8 (none of its bytes shown: a
    line may hold the network key; it showed the decoder's words) or not a
    file; a config file whose value has the wrong type; --config naming a
    folder: one line naming the file, exit 2, before any node starts."""
    data = tmp_path / "dd"
    data.mkdir()
    env = tmp_path / ".env"
    env.write_bytes(b"PEERCRYPT_NETWORK_KEY=s\xe9cret\n")
    for command in (["status"], ["node", "--port", "0", "--open"]):
        result = run_cli(*command, data_dir=data, cwd=tmp_path, timeout=NODE_CMD_TIMEOUT)
        assert result.stderr_lines == [
            f"peercrypt: error: cannot read {env}: not UTF-8 text (the .env of the working "
            "directory)"
        ], result.describe()
        assert result.returncode == errors.USAGE and "cret" not in result.stderr
    env.unlink()
    env.mkdir()
    folder = run_cli("status", data_dir=data, cwd=tmp_path)
    assert_usage_error(folder, f"cannot read {env}: Is a directory")
    env.rmdir()
    (data / "config.toml").write_text("inbox = 5\n")
    for command in (["config", "show"], ["node", "--port", "0", "--open"]):
        typed = run_cli(*command, data_dir=data, cwd=tmp_path, timeout=NODE_CMD_TIMEOUT)
        assert typed.stderr_lines == [
            f"peercrypt: error: {data / 'config.toml'}: inbox=5: expected text"
        ], typed.describe()
        assert typed.returncode == errors.USAGE
    (data / "config.toml").unlink()
    named = run_cli("--config", str(tmp_path), "status", data_dir=data, cwd=tmp_path)
    assert_usage_error(named, "--config", f"File '{tmp_path}' is a directory")


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("command", [["status"], ["node", "--port", "0", "--open"]])
def test_an_empty_data_dir_is_refused_not_the_working_directory(
    tmp_path: Path, where: str, command: list[str]
) -> None:
    """``--data-dir "$UNSET"``: one error line, exit 2, and nothing made in
    the working directory (it became the data dir: an identity, an inbox
    and a history there)."""
    args = ["--data-dir", "", *command] if where == "before" else [*command, "--data-dir", ""]
    result = run_cli(*args, cwd=tmp_path, timeout=NODE_CMD_TIMEOUT)
    assert_error(result, errors.USAGE, "--data-dir", "an empty path")
    assert list(tmp_path.iterdir()) == []


def test_a_stats_limit_beyond_the_history_s_integers_is_a_range_error(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """2**63 passed to SQLite said "cannot read the statistics history:
    datatype mismatch" (exit 1), as if the history were damaged."""
    node = node_factory()
    result = node.cli("stats", "list", "--limit", str(2**63))
    assert_error(result, errors.USAGE, "--limit", "0<=x<=9223372036854775807")
    largest = node.cli("stats", "list", "--limit", str(2**63 - 1))
    assert largest.returncode == 0, largest.describe()


def test_help_as_a_command_is_the_help_option(tmp_path: Path) -> None:
    """`peercrypt help [COMMAND...]` prints what `--help` does (the old
    tool's users type `help`; it was "no such command 'help' (did you mean
    'shell'?)"); a command that does not exist is one usage line."""
    for words in ([], ["send"], ["stats", "list"]):
        asked = run_cli("help", *words, data_dir=tmp_path)
        assert asked.returncode == 0, asked.describe()
        assert asked.stdout == run_cli(*words, "--help", data_dir=tmp_path).stdout
        assert asked.stdout.startswith(f"Usage: peercrypt {' '.join([*words, ''])}")
    # Its own words: a help option among them, a global option after them.
    for words in (["send", "-h"], ["-h", "send"], ["send", "--data-dir", str(tmp_path)]):
        asked = run_cli("help", *words, data_dir=tmp_path)
        assert asked.returncode == 0, asked.describe()
        assert asked.stdout.startswith("Usage: peercrypt send [OPTIONS]"), asked.stdout
    own = run_cli("help", "help", data_dir=tmp_path)
    assert own.returncode == 0 and own.stdout.startswith("Usage: peercrypt help "), own.describe()
    assert_usage_error(run_cli("help", "sned", data_dir=tmp_path), "did you mean 'send'")
    assert_usage_error(run_cli("help", "send", "more", data_dir=tmp_path), "has no commands")
    # The version option, as after `peercrypt`; any other option is one usage line.
    version = run_cli("help", "--version", data_dir=tmp_path)
    assert version.returncode == 0, version.describe()
    assert version.stdout == run_cli("--version", data_dir=tmp_path).stdout
    assert version.stdout.startswith("peercrypt, version ")
    bogus = run_cli("help", "send", "--bogus", data_dir=tmp_path)
    assert_usage_error(bogus, "no such option '--bogus'; `peercrypt send` takes ")
    # After a command, --version is that command's option: it has none.
    assert_usage_error(run_cli("help", "send", "--version", data_dir=tmp_path), "'--version'")
