"""The fast path of ``status`` and ``send`` (peercrypt/cli/fast.py): it takes
only plain lines, and for each it takes, it prints and exits as the click
command does (real nodes); it loads neither click nor the node's messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peercrypt import errors
from peercrypt.cli import fast
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import (
    LOCALHOST,
    NodeProcess,
    blake3_file,
    cli_env,
    free_port,
    random_file,
)

# Run ``peercrypt ARGS`` through the entry point (the fast path first), or
# through the click group alone; report the exit code and the modules loaded.
PROBE = """
import json, sys
from peercrypt.cli import run
from peercrypt.cli.app import run as click_run
sys.argv[0] = "peercrypt"
click_only = sys.argv.pop(1) == "click"
try:
    click_run() if click_only else run()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def peercrypt(how: str, data_dir: Path, *argv: str) -> tuple[int, str, list[str], set[str]]:
    """(exit code, stdout, stderr lines, modules) of ``peercrypt --data-dir D ARGV``
    run ``how`` ("entry": the entry point; "click": the click group alone)."""
    if how == "click":  # the probe itself imports the click group
        code = PROBE
    else:
        code = PROBE.replace("from peercrypt.cli.app import run as click_run\n", "")
    proc = subprocess.run(
        [sys.executable, "-c", code, how, "--data-dir", str(data_dir), *argv],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env=cli_env(), cwd=data_dir.parent,
    )  # fmt: skip
    *lines, last = proc.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"] or 0, proc.stdout, lines, set(report["modules"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    base, key = tmp_path_factory.mktemp("fast"), new_network_key()
    nodes = [NodeProcess(base / n, network_key=key).start() for n in ("s", "r")]
    try:
        yield nodes[0], nodes[1]
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0, 0]


def normal(out: str) -> str:
    """Output without what differs from one send to the next (times, rates,
    the stored name's number)."""
    out = re.sub(
        r'"(seconds|mib_per_s|srtt|rttvar|rto|accept_seconds)": [0-9.e-]+', r'"\1": T', out
    )
    out = re.sub(r"in [0-9.]+ s \([0-9.]+ (K|M|G)?i?B/s\)", "in T s (R MiB/s)", out)
    return re.sub(r"(f\.bin|f\.\d+\.bin)", "STORED", out)


# -- which lines it takes -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--data-dir", "d", "status", "--json"],
        ["--data-dir=d", "send", "a", "b", "h", "1", "--json", "--timeout=5"],
        ["send", "--no-progress", "a", "h", "1", "--chunk-size", "4096", "--force"],
        ["send", "a", "h", "1", "--expect", "x", "--progress"],
        ["--data-dir", "d", "send", "a", "h", "1", "--data-dir=e"],
        ["send", "a", "h", "1", "-t", "4"],
        ["send", "-t", "8", "a", "h", "1", "--json"],
        ["send", "a", "h", "1", "--threads=2", "--no-progress"],
        ["send", "a", "h", "1", "--threads", "64"],
    ],
)
def test_plain_lines_are_taken(argv: list[str]) -> None:
    line = fast.parse(argv)
    assert line is not None and line.command in ("status", "send")
    if "--data-dir=e" in argv:  # after the command: it wins, as in the group
        assert line.data_dir == Path("e")
    if line.command == "send":
        assert line.args[-3:] == ["a", "h", "1"] or line.args == ["a", "b", "h", "1"]
    lanes = next((a.split("=")[-1] for a in argv if a.startswith("--threads=")), None)
    for flag in ("-t", "--threads"):
        if flag in argv:
            lanes = argv[argv.index(flag) + 1]
    assert line.values.get("--threads") == lanes


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-h", "status"],
        ["--debug", "status"],
        ["--version"],
        ["--config", "c.toml", "status"],
        ["--data-dir"],
        ["--data-dir", "--json", "status"],
        ["--data-dir", "a", "--data-dir", "b", "status"],
        ["status", "--help"],
        ["status", "--jsn"],
        ["status", "--json", "--json"],
        ["status", "--data-dir", "a", "--data-dir", "b"],
        ["status", "--data-dir="],
        ["send", "a", "h", "1", "-r", "1M"],
        ["send", "a", "h", "1", "--mode", "aimd"],
        ["send", "a", "h", "1", "-m"],
        ["send", "a", "h", "1", "-t=4"],  # click reads the value "=4"
        ["send", "a", "h", "1", "-t4"],
        ["send", "a", "h", "1", "-t"],
        ["send", "a", "h", "1", "-t", "-4"],
        ["send", "a", "h", "1", "-t", "4", "-t", "4"],
        ["send", "a", "h", "1", "-t", "4", "--threads", "4"],
        ["send", "a", "h", "1", "-t", "4", "--mode", "parallel"],
        ["send", "a", "h", "1", "-t", "4", "-r", "1M"],
        ["status", "-t", "4"],
        ["send", "a", "h", "1", "--network-key-file", "k"],
        ["send", "a", "h", "1", "--timeout"],
        ["send", "a", "h", "1", "--timeout", "-1"],
        ["send", "a", "h", "1", "--expect", "x", "--expect", "y"],
        ["send", "--", "a", "h", "1"],
        ["send", "-", "h", "1"],
        ["peers"],
    ],
)
def test_every_other_line_is_left_to_click(argv: list[str]) -> None:
    assert fast.parse(argv) is None
    assert fast.run(argv) is None


def test_values_click_refuses_are_left_to_it(tmp_path: Path) -> None:
    """Nothing runs: the command then says what is wrong, in its own words."""
    data = tmp_path / "data"
    data.mkdir()
    f = random_file(tmp_path / "f.bin", 10)
    base = ["--data-dir", str(data), "send"]
    for argv in (
        [*base, str(tmp_path / "missing"), LOCALHOST, "1", "--json"],
        [*base, str(f), LOCALHOST, "0", "--json"],
        [*base, str(f), LOCALHOST, "x", "--json"],
        [*base, str(f), LOCALHOST, "1", "--json", "--timeout", "0.01"],
        [*base, str(f), LOCALHOST, "1", "--json", "--chunk-size", "100"],
        [*base, str(f), LOCALHOST, "1", "--json", "--expect", "not-a-fingerprint"],
        [*base, str(f), "no-such-host.invalid", "1", "--json"],
        [*base, str(f), str(f), LOCALHOST, "1", "--json"],  # two files of one name
        [*base, str(f), LOCALHOST, "1", "--json"],  # no node runs for the data dir
        ["--data-dir", str(f), "status"],  # a file, not a directory
        ["--data-dir", str(data), "status"],  # no node runs
    ):
        assert fast.run(argv) is None, argv


# -- what it does: the same as the command -------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--json"],
        ["--no-progress"],
        ["--json", "--timeout", "5", "--chunk-size", "65536", "--force"],
        ["--json", "--chunk-size", "64K"],  # a size with a suffix, as click reads it
        ["--json", "-t", "4"],
        ["--no-progress", "--threads=3"],
    ],
)
def test_a_send_prints_and_exits_as_the_command(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path, extra: list[str]
) -> None:
    sender, receiver = pair
    outputs = []
    for how in ("entry", "click"):  # a file of its own each (not resumed from the other)
        (tmp_path / how).mkdir()
        f = random_file(tmp_path / how / "f.bin", 3000)
        argv = ["send", str(f), LOCALHOST, str(receiver.port), *extra]
        code, out, err, modules = peercrypt(how, sender.data_dir, *argv)
        out = out.replace(str(f.parent), "DIR").replace(blake3_file(f), "HASH")
        assert (code, err) == (0, []), (how, out, err)
        stored = re.search(r'(?:"stored_as": "|as )([^" ]+)', out)
        assert stored is not None, out
        assert blake3_file(receiver.inbox / stored.group(1)) == blake3_file(f)
        outputs.append(normal(out))
        assert ("click" in modules) == (how == "click")
        if "--json" in extra:  # -t names the mode; without it, the node's default
            assert json.loads(out)["mode"] == ("parallel" if "-t" in extra else "normal")
    assert outputs[0] == outputs[1]


def test_a_lanes_value_click_refuses_gets_the_commands_error(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """A ``-t`` out of range (or not a number) with a node running: the
    command's own usage error, exit 2, nothing sent."""
    sender, receiver = pair
    f = random_file(tmp_path / "refused.bin", 10)
    for lanes in (["-t", "0"], ["-t", "65"], ["-t", "x"], ["--threads="]):
        argv = ["send", str(f), LOCALHOST, str(receiver.port), "--json", *lanes]
        entry = peercrypt("entry", sender.data_dir, *argv)
        click = peercrypt("click", sender.data_dir, *argv)
        assert entry[:3] == click[:3], lanes
        assert entry[0] == errors.USAGE and entry[1] == "", entry
        assert "click" in entry[3]
    assert not list(receiver.inbox.glob("refused*"))


def test_a_refusal_reads_and_exits_as_the_command(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    sender, _ = pair
    f = random_file(tmp_path / "f.bin", 10)
    port = str(free_port())
    argv = ["send", str(f), LOCALHOST, port, "--no-progress", "--timeout", "1"]
    entry = peercrypt("entry", sender.data_dir, *argv)
    click = peercrypt("click", sender.data_dir, *argv)
    assert entry[:3] == click[:3]
    assert entry[0] == errors.UNREACHABLE
    assert entry[2] == [
        f"peercrypt: error: cannot connect to {LOCALHOST}:{port}: connection refused: "
        "nothing listens on that port; `send --force` tries anyway"
    ]


def test_status_prints_as_the_command(pair: tuple[NodeProcess, NodeProcess]) -> None:
    sender, _ = pair
    entry = peercrypt("entry", sender.data_dir, "status")
    click = peercrypt("click", sender.data_dir, "status")
    assert entry[0] == click[0] == 0 and entry[2] == click[2] == []
    # The same head (counters and facts may move between the two).
    head = [f"fingerprint {sender.fingerprint}", f"node: running (pid {sender.pid})"]
    assert entry[1].splitlines()[:2] == click[1].splitlines()[:2] == head
    as_json = [peercrypt(how, sender.data_dir, "status", "--json") for how in ("entry", "click")]
    for code, out, err, _ in as_json:
        assert (code, err) == (0, [])
        shown = json.loads(out)
        assert shown["running"] is True and shown["fingerprint"] == sender.fingerprint


def test_the_fast_path_loads_no_click_and_only_the_local_messages(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """A send and a status through a running node build the few messages of
    the control socket (wire/local_messages.py), not the node's seventy, and
    load neither click, the settings table, a key library nor pyzmq (the
    control socket is spoken by peercrypt/zmtp.py)."""
    sender, receiver = pair
    f = random_file(tmp_path / "f.bin", 1024)
    for argv in (
        ["status"],
        ["send", str(f), LOCALHOST, str(receiver.port), "--json"],
        ["send", str(f), LOCALHOST, str(receiver.port), "--json", "-t", "4"],
    ):
        code, out, err, modules = peercrypt("entry", sender.data_dir, *argv)
        assert (code, err) == (0, []), (out, err)
        heavy = {
            m
            for m in modules
            if m.startswith(
                ("click", "cryptography", "nacl", "peercrypt.cli.app", "tomllib", "zmq")
            )
            or m in ("peercrypt.wire.messages", "peercrypt.config", "peercrypt.settings")
        }
        assert heavy == set(), argv
        assert "peercrypt.wire.local_messages" in modules


def test_a_node_whose_default_is_multicast_gets_the_command(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """The node says so (``multicast-default``) without sending anything; the
    command then asks for the mode and sends a multicast, as it always did."""
    sender, receiver = pair
    f = random_file(tmp_path / "f.bin", 5000)
    argv = ["send", str(f), LOCALHOST, str(receiver.port), "--json"]
    assert sender.cli("set-mode", "multicast").returncode == 0
    try:
        code, out, err, modules = peercrypt("entry", sender.data_dir, *argv)
        # -t names its mode: a parallel send, as the command makes it, without click.
        parallel = peercrypt("entry", sender.data_dir, *argv, "-t", "2")
    finally:
        assert sender.cli("set-mode", "normal").returncode == 0
    assert code == 0, (out, err)
    result = json.loads(out)
    (row,) = result["receivers"]
    assert row["code"] == "ok"
    assert blake3_file(receiver.inbox / row["stored_as"]) == blake3_file(f)
    assert "click" in modules  # the command did it
    assert parallel[0] == 0, parallel[:3]
    result = json.loads(parallel[1])
    assert (result["mode"], result["code"]) == ("parallel", "ok")
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(f)
    assert "click" not in parallel[3]


def test_a_send_with_progress_draws_the_commands_bar(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """``--progress`` (or a terminal): the same bar as the command's, without click."""
    sender, receiver = pair
    f = random_file(tmp_path / "bar.bin", 3000)
    argv = ["send", str(f), LOCALHOST, str(receiver.port), "--progress"]
    code, out, err, modules = peercrypt("entry", sender.data_dir, *argv)
    assert code == 0, (out, err)
    assert out.startswith("sent bar.bin (3000 bytes)") and out.endswith("verified\n")
    assert re.search(r"bar\.bin: +\d+%", "\n".join(err)), err
    assert "tqdm" in modules and "click" not in modules


def test_an_empty_file_s_line_says_nothing_of_a_file_held(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    """An empty file has no chunk for the receiver to hold: its first send
    is not 'the receiver had it all' (a share of nothing held is none)."""
    sender, receiver = pair
    f = tmp_path / "nothing.txt"
    f.write_bytes(b"")
    code, out, err, _ = peercrypt(
        "entry", sender.data_dir, "send", str(f), LOCALHOST, str(receiver.port)
    )
    assert code == 0, (out, err)
    assert re.fullmatch(
        rf"sent {re.escape(f.name)} \(0 bytes\) to {LOCALHOST}:{receiver.port} as \S+ in [0-9.]+ s "
        rf"\(0 B/s\), blake3 {blake3_file(f)} verified\n",
        out,
    ), out
