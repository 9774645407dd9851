"""``peercrypt actor KIND``'s options are the node's settings KIND reads,
derived from the settings table (peercrypt/config.py: each setting's
``actors``), from the same layers and with the same errors as ``node``
(docs/architecture.md, "Attached actors"). No process starts here: every
case ends while the options are read."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercrypt import config, errors
from peercrypt.cli.app import main
from peercrypt.cli.node import fields_made
from peercrypt.cli.runner import execute
from peercrypt.settings import ATTACHABLE_KINDS, NodeSettings

# The node's receiving settings a storage host's receiver must take.
RECEIVING = {"--window", "--receive-buffer", "--completed-memory", "--max-transfers",
             "--max-transfers-per-peer", "--max-transfers-per-host", "--part-expiry",
             "--data-port-memory", "--tree-max-files", "--inbox", "--data-port", "--host",
             "--direct-writes", "--check-as-written", "--peer-quota", "--part-quota",
             "--pending-quota"}  # fmt: skip
# ... and the sending settings an attached sender must take.
SENDING = {"--max-outgoing", "--max-retries", "--timeout", "--max-rate", "--receive-buffer",
           "--data-port-memory"}  # fmt: skip
# Settings of the node as a whole, no actor's to take (its ports, membership,
# admission, statistics, multicast).
NODE_WIDE = {"--port", "--advertise-host", "--allow", "--bootstrap-host", "--remote-actor",
             "--attach-allow", "--stats-keep-days", "--no-stats", "--multicast-group"}  # fmt: skip


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, list[str]]]]:
    """Run a command line in this process: exit code, stdout, stderr lines."""
    monkeypatch.chdir(tmp_path)  # no .env of the caller's
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
        with monkeypatch.context() as m:
            for name, value in (env or {}).items():
                m.setenv(name, value)
            code = execute(main, ["--data-dir", str(tmp_path / "dd"), *args])
        out = capsys.readouterr()
        return code, out.out, out.err.splitlines()

    yield run


def _flags(help_text: str) -> set[str]:
    """The long options a --help lists."""
    return set(re.findall(r"^\s+(--[a-z-]+)", help_text, flags=re.MULTILINE)) | set(
        re.findall(r" / (--[a-z-]+)", help_text)
    )


@pytest.mark.parametrize("kind", ATTACHABLE_KINDS)
def test_actor_help_lists_the_settings_its_kind_reads(
    cli: Callable[..., tuple[int, str, list[str]]], kind: str
) -> None:
    """Exactly the settings tagged for KIND in the table, besides its own
    options: a setting tagged for it later is listed with no other change."""
    code, out, _ = cli("actor", kind, "--help")
    assert code == 0
    tagged = {s.flag.split("/")[0] for s in config.SETTINGS if kind in s.actors}
    own = {"--attach", "--network-key-file", "--data-dir", "--config", "--debug"}
    own |= {"--advertise-data-host"} if kind == "receiver" else set()
    negated = {s.flag.split("/")[1] for s in config.SETTINGS if kind in s.actors and "/" in s.flag}
    assert _flags(out) == tagged | own | negated
    assert "--network-key" in tagged and not _flags(out) & NODE_WIDE
    if kind == "receiver":
        assert tagged >= RECEIVING, sorted(RECEIVING - tagged)
    if kind == "sender":
        assert tagged >= SENDING, sorted(SENDING - tagged)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--window", "0"], {}),
        (["--max-transfers-per-peer", "many"], {}),
        (["--data-port-memory", "1.5"], {}),
        ([], {"PEERCRYPT_WINDOW": "0"}),
        ([], {"PEERCRYPT_MAX_TRANSFERS": "-1"}),
    ],
    ids=["window-flag", "per-peer-flag", "memory-flag", "window-env", "max-transfers-env"],
)
def test_a_bad_value_is_the_nodes_one_line(
    cli: Callable[..., tuple[int, str, list[str]]], args: list[str], env: dict[str, str]
) -> None:
    """A bad receiving setting for the attached receiver: one line, exit 2,
    what ``node`` says for the same value (the command's name aside)."""
    code, _, lines = cli("actor", "receiver", "--attach", "127.0.0.1:1", *args, env=env)
    node_code, _, node_lines = cli("node", *args, env=env)
    assert (code, node_code) == (errors.USAGE, errors.USAGE), (lines, node_lines)
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error: "), lines
    assert lines == [line.replace("node: ", "actor receiver: ") for line in node_lines]


@pytest.mark.parametrize("host", ["a b", "x!y", "h;127.0.0.1", "*"])
def test_an_advertised_data_host_no_sender_could_dial_is_refused(
    cli: Callable[..., tuple[int, str, list[str]]], host: str
) -> None:
    """An attached receiver's --advertise-data-host goes in every accept,
    and a sender refuses an accept naming a host it cannot dial: every send
    would fail. One line, exit 2, before anything starts."""
    code, _, lines = cli(
        "actor", "receiver", "--attach", "127.0.0.1:1", "--advertise-data-host", host
    )
    assert code == errors.USAGE, lines
    assert lines == [
        f"peercrypt: error: --advertise-data-host {host!r}: not a host name or address"
    ], lines


def test_a_setting_of_another_kind_is_refused(
    cli: Callable[..., tuple[int, str, list[str]]],
) -> None:
    """The sender does not take the receiver's --window: one line, exit 2."""
    code, _, lines = cli("actor", "sender", "--attach", "127.0.0.1:1", "--window", "4")
    assert code == errors.USAGE and len(lines) == 1, lines
    assert "--window" in lines[0], lines


# The modules of each kind's actor (with what they import of actors/), and
# the companions it takes along (peercrypt/node.py, COMPANIONS).
ACTOR_MODULES = {
    "receiver": ("receiver", "space"),
    "sender": ("sender",),
    "scheduler": ("scheduler",),
    "discovery": ("discovery",),
    "health": ("health",),
}
# Settings an actor reads that are the node's as a whole, known and left out:
# the scheduler's whereabouts (a sender's fallback: the scheduler says),
# the node's membership address and bootstrap (discovery cannot be attached:
# it signs with the node's identity key; docs/architecture.md).
NODE_WIDE_READ = {
    "sender": {"remote_actors"},
    "discovery": {"host", "advertise_host", "bootstrap_host", "bootstrap_port"},
}
ACTORS = Path(__file__).resolve().parent.parent / "actors"


def _closure(modules: tuple[str, ...]) -> set[str]:
    """The modules and every actors/ module they import, transitively."""
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((ACTORS / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("actors."):
                todo.append(node.module.removeprefix("actors."))  # type: ignore[union-attr]
    return seen


def _settings_read(modules: set[str]) -> set[str]:
    """Attributes read of ``settings``, ``s`` or ``self.settings`` in the modules."""
    read = set()
    for name in modules:
        for node in ast.walk(ast.parse((ACTORS / f"{name}.py").read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            value = node.value
            if (isinstance(value, ast.Name) and value.id in ("settings", "s")) or (
                isinstance(value, ast.Attribute) and value.attr == "settings"
            ):
                read.add(node.attr)
    return read


@pytest.mark.parametrize("kind", ATTACHABLE_KINDS)
def test_every_setting_an_actor_reads_is_tagged_for_it(kind: str) -> None:
    """What the actor KIND (and what it takes along) reads of NodeSettings,
    read from its source: each field a node setting makes is tagged for
    KIND, so `actor KIND` takes it; a new one read and not tagged fails here."""
    fields = {f.name for f in dataclasses.fields(NodeSettings)}
    read = _settings_read(_closure(ACTOR_MODULES[kind])) & fields
    made_by = {made: name for name in config.BY_NAME for made in fields_made(name)}
    needed = {made_by[f] for f in read if f in made_by} - NODE_WIDE_READ.get(kind, set())
    assert needed <= set(config.actor_settings(kind)), sorted(
        needed - set(config.actor_settings(kind))
    )
    assert "receive_buffer" in needed or kind not in ("receiver", "sender")  # the scan sees
