"""``--debug`` before or after the subcommand, and the decisions it logs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.nodes import NodeProcess, run_cli, wait_until


def test_debug_after_the_subcommand_logs_every_actors_decisions(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory("--debug")  # after `node ...`: moved before it
    sender = node_factory()
    code, result = sender.send_to(make_file(20 * 1024), receiver)
    assert code == 0, result

    def logged() -> str | None:
        text = receiver.log_text()
        wanted = ("DEBUG", "receiver: accepted", "peercrypt.receiver DEBUG accepted",
                  "admission: admitted", "gateway: in-offer")  # fmt: skip
        return text if all(w in text for w in wanted) else None

    wait_until(logged, 10.0, "the receiver's debug lines")
    assert "DEBUG" not in sender.log_text()  # without --debug: no debug lines


def test_debug_on_a_one_shot_command_either_side(tmp_path: Path) -> None:
    for args in (["--debug", "status"], ["status", "--debug"]):
        result = run_cli(*args, data_dir=tmp_path / "dd")
        assert result.returncode == 1, result.describe()  # no node: status says so
        assert "node: not running" in result.stdout
    # `--version` is the group's alone (--data-dir and --config: test_global_options.py).
    wrong = run_cli("status", "--version", data_dir=tmp_path / "dd")
    assert wrong.returncode == 2 and "no such option '--version'" in wrong.stderr
