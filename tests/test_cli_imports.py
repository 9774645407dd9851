"""A command imports only what it needs: `peercrypt --help` none of the
commands, `status` neither the actors nor the live view's terminal library.
The listing `--help` shows without importing the commands is theirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from peercrypt.cli.app import COMMANDS, load_command, main

PROBE = """
import json, sys
from peercrypt.cli import run
sys.argv[0] = "peercrypt"
try:
    run()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "--data-dir", str(tmp_path / "data"), *argv],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), proc.stdout


def test_the_listing_is_each_commands_own_short_help() -> None:
    for name, (_module, _attr, line) in COMMANDS.items():
        command = load_command(name)
        assert command.get_short_help_str(limit=1000) == line, name
        assert command.name == name


def test_unknown_command_is_a_usage_error() -> None:
    ctx = click.Context(main)
    assert main.get_command(ctx, "no-such-command") is None
    with pytest.raises(click.UsageError):
        main.main(["no-such-command"], standalone_mode=False)


def test_help_imports_no_command(tmp_path: Path) -> None:
    code, modules, out = imported(tmp_path, "--help")
    assert code == 0
    for name, (_module, _attr, _line) in COMMANDS.items():
        assert f"  {name} " in out
    heavy = {m for m in modules if m.startswith(("actors", "zmq", "rich", "peercrypt.wire"))}
    assert heavy == set()
    cli_modules = {m for m in modules if m.startswith("peercrypt.cli.")}
    # the entry point: the fast path (which declines --help) and the click group
    assert cli_modules <= {"peercrypt.cli.fast", "peercrypt.cli.app", "peercrypt.cli.runner"}


def test_status_imports_no_actor(tmp_path: Path) -> None:
    code, modules, out = imported(tmp_path, "status")
    assert code == 1 and "node: not running" in out
    heavy = {
        m
        for m in modules
        if m.startswith(("actors", "rich", "sqlite3", "peercrypt.node", "peercrypt.runtime"))
    }
    assert heavy == set()


def test_send_loads_no_key_library_and_only_the_messages_it_uses() -> None:
    """Through a running node, a unicast send makes no key: cryptography and
    PyNaCl load only where one is made, the multicast half and the other
    message modules only when used (a tenth of a 1 KiB send's time)."""
    probe = "import json, sys\nimport peercrypt.cli.send\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout))
    heavy = {
        m
        for m in modules
        if m.startswith(("cryptography", "nacl", "actors", "peercrypt.cli.multicast"))
        or (m.startswith("peercrypt.wire.") and m.endswith("messages"))
    }
    # the click command's own (its live mode commands' messages come with its options)
    assert heavy == {"peercrypt.wire.local_messages", "peercrypt.wire.messages"}


def test_status_of_a_running_node_loads_no_key_library(tmp_path: Path) -> None:
    """With a node running, `status` shows the fingerprint the node reports
    (it loaded this data dir's identity); it derives no key of its own and
    loads neither the node command's options, the send/receive helpers nor the
    settings table (the data dir is resolved by ``config_sources``)."""
    from peercrypt.crypto.identity import fingerprint, load_or_create_identity
    from peercrypt.testing.nodes import NodeProcess

    node = NodeProcess(tmp_path / "data", open_network=True).start()  # imported()'s data dir
    try:
        code, modules, out = imported(tmp_path, "status")
    finally:
        node.stop()
    assert code in (0, None)
    assert f"fingerprint {fingerprint(load_or_create_identity(node.data_dir).public)}" in out
    heavy = {
        m
        for m in modules
        if m.startswith(("cryptography", "nacl", "peercrypt.cli.node", "peercrypt.cli.common"))
        or m.startswith(("click", "peercrypt.cli.app"))  # the fast path (peercrypt/cli/fast.py)
        or m in ("peercrypt.config", "peercrypt.settings", "peercrypt.wire.messages")
    }
    assert heavy == set()


def test_a_temporary_node_loads_no_receiving_actor(tmp_path: Path) -> None:
    """`send` with no node running starts a temporary send-only node in the
    process: it imports the sender and none of the actors of a node that
    listens (receiver, gateway, gossip, multicast receiver...: about a tenth of
    a one-off send's time), nor asyncio. Port 9 on loopback: nothing listens there, the
    send fails at its pre-send check, after the node started."""
    payload = tmp_path / "one.bin"
    payload.write_bytes(b"x" * 1024)
    code, modules, _out = imported(tmp_path, "send", str(payload), "127.0.0.1", "9", "--open")
    assert code not in (0, None)  # refused: nothing listens
    assert {"actors.sender", "actors.scheduler", "peercrypt.node"} <= modules
    receiving = {
        "actors.admission",
        "actors.attach",
        "actors.discovery",
        "actors.gateway",
        "actors.multicast_receiver",
        "actors.receiver",
        "actors.space",
    }
    assert receiving & modules == set()
    # pyzmq's zmq.utils.monitor imports asyncio: the actors parse monitor
    # events themselves (actors/port_watch.py)
    assert {m for m in modules if m.startswith(("asyncio", "zmq.asyncio", "ssl"))} == set()
