"""The old tool's examples work as written, between real nodes on loopback
(content checked by hash)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peercrypt import errors
from peercrypt.testing.nodes import NodeProcess, blake3_file, run_cli


def _delivered(code: int, result: dict[str, object], source: Path, receiver: NodeProcess) -> None:
    assert code == 0, result
    assert result["blake3"] == blake3_file(source)
    assert blake3_file(receiver.inbox / str(result["stored_as"])) == blake3_file(source)


def test_send_examples(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver, sender = node_factory(), node_factory()
    small = make_file(1024)
    code, result = sender.send_to(small, receiver, "-b", "1024", "-r", "512")
    _delivered(code, result, small, receiver)
    assert result["mode"] == "token-bucket"
    source = make_file(64 * 1024)
    for args, mode in (
        (["-t", "4"], "parallel"),
        (["-p", "high"], "qos"),
        (["-w", "32", "-min-w", "8", "-max-w", "128"], "aimd"),
        (["-w", "32"], "aimd"),
        (["-no-timeout"], "aimd"),
        (["-no-dupack"], "aimd"),
    ):
        code, result = sender.send_to(source, receiver, *args)
        _delivered(code, result, source, receiver)
        assert result["mode"] == mode, (args, result)


def test_aimd_window_alone_and_congestion_window_first(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory(env={"AIMD_WINDOW": "32", "DEFAULT_MODE": "aimd"})
    status = node.status()
    assert status["mode"] == "aimd"
    assert "w=32 min=32 max=16384" in status["aimd"]
    for line in (["congestion", "window", "16"], ["congestion", "min-window", "8"],
                 ["congestion", "max-window", "128"]):  # fmt: skip
        assert node.cli(*line).returncode == 0
    assert "w=16 min=8 max=128" in node.status()["aimd"]


def test_multicast_is_a_mode_of_node_and_of_the_environment(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b = node_factory(), node_factory()
    sender = node_factory(env={"DEFAULT_MODE": "multicast"})
    assert sender.status()["mode"] == "multicast"
    source = make_file(30 * 1024)
    code, result = sender.send_to(source, a, "--to", f"{b.host}:{b.port}")
    assert code == 0, result
    assert result["mode"] == "multicast" and len(result["receivers"]) == 2
    for node in (a, b):
        assert blake3_file(node.inbox / source.name) == blake3_file(source)
    # Without targets beyond HOST PORT the default mode still multicasts (to one).
    code, result = sender.send_to(source, a)
    assert code == 0 and result["mode"] == "multicast", result
    bad = run_cli("node", "--mode", "broadcast", "--open", data_dir=tmp_path / "x")
    assert bad.returncode == errors.USAGE and "multicast" in bad.stderr
