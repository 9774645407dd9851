"""token-bucket as a node's default mode (`node --mode token-bucket`,
DEFAULT_MODE, `set-mode token-bucket`: the old tool's interface): the node
starts and takes it (it refused to start, "needs -r"), each send in it
gives its own rate, and one that gives none is refused in one line naming
what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peercrypt import errors
from peercrypt.testing.nodes import NodeProcess, assert_sent


def test_token_bucket_as_the_default_mode_takes_each_sends_rate(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender = node_factory("--mode", "token-bucket")
    receiver = node_factory()
    assert sender.status()["mode"] == "token-bucket"
    path = make_file(256 * 1024)
    refused = sender.cli("send", path, receiver.host, str(receiver.port))
    assert refused.returncode == errors.USAGE, refused.describe()
    assert refused.stderr_lines == [
        "peercrypt: error: the node's default mode is token-bucket, which needs a rate: "
        "give -r BYTES_PER_SEC (or --mode normal)"
    ], refused.describe()
    assert_sent(receiver, sender.send(path, receiver.host, receiver.port, "-r", "4M"), path)
    # Chosen live, the same; and back.
    other = node_factory()
    assert other.cli("set-mode", "token-bucket").returncode == 0
    assert other.status()["mode"] == "token-bucket"
    assert other.cli("set-mode", "normal").returncode == 0
