"""Sends paced far below one chunk per ``--timeout``, with real node
processes on loopback (content checked by BLAKE3):

- ``send -r 10`` (its smallest chunk would take 410 s) is refused before any
  offer: one error line naming the rate to use, exit 2, the node running;
- a node cap (``max-rate``) that moves one chunk in longer than
  ``--timeout`` still delivers: the sender's stall clock does not run while
  it holds its own chunks back (it did, and such a send failed with "stopped
  acknowledging" as its first chunk left);
- at that rate a receiver frozen mid-send (SIGSTOP) is still reported, as
  silent, within ``--timeout`` of the chunk it left unanswered;
- a live ``max-rate`` or ``rate`` too low for any chunk to move within half
  the receiver's idle limit is refused (one error line, exit 2, nothing
  changed), and so is a send whose share of the cap, with the sends already
  running, would be that low.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercrypt import errors
from peercrypt.testing.nodes import NodeProcess, blake3_file, node_pair, start_cli, wait_until

pytestmark = pytest.mark.timeout(120)

CHUNK = 4096
TIMEOUT = 2.5  # seconds


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    # No retries: a failed send is the answer (a retry would offer again).
    with node_pair(tmp_path_factory.mktemp("lowrate"), "--max-retries", "0") as pair:
        yield pair


@contextlib.contextmanager
def node_cap(sender: NodeProcess, rate: int) -> Iterator[None]:
    """The sender's node rate capped at ``rate`` bytes/s (its bucket starts
    empty) for the block."""
    set_cap = sender.cli("max-rate", str(rate))
    assert set_cap.returncode == 0, set_cap.describe()
    try:
        yield
    finally:
        assert sender.cli("max-rate", "0").returncode == 0


def test_a_rate_below_one_chunk_in_time_is_refused_up_front(
    nodes: tuple[NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = nodes
    source = make_file(10 * CHUNK, name="too-slow.bin")
    done = sender.cli("send", source, receiver.host, str(receiver.port), "-r", "10")
    assert done.returncode == errors.USAGE, done.describe()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error: -r 10 is too low"), lines
    # The lowest rate a send without --timeout takes (its timeout grows to 30 s for it):
    # 820 was the lowest for 10 s, and -r 274 went.
    assert "takes 410 s at 10 B/s" in lines[0] and lines[0].endswith("use -r 274 or more"), lines
    assert done.seconds < 10.0  # not after a --timeout
    # No offer went out, and the node is still serving.
    assert json.loads(sender.cli("transfers", "--json").stdout) == []
    assert not [p for p in receiver.inbox.rglob("*") if "too-slow" in p.name]
    assert sender.status()


def test_a_node_capped_send_far_slower_than_its_timeout_delivers(
    nodes: tuple[NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    """At 1 KiB/s a chunk's grant takes 4 s: the second chunk leaves 4 s
    after the first was acked, longer than --timeout (while the bucket holds
    less than a chunk when the send starts: the command's start-up, well
    under 5 s)."""
    sender, receiver = nodes
    source = make_file(2 * CHUNK)
    with node_cap(sender, CHUNK // 4):
        code, result = sender.send_to(
            source, receiver, "--chunk-size", str(CHUNK), "--timeout", str(TIMEOUT)
        )
    assert code == 0, result
    assert result["blake3"] == blake3_file(source)
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(source)
    assert result["seconds"] > TIMEOUT, result  # the cap held it back


def test_a_frozen_receiver_at_a_low_rate_is_reported_within_the_timeout(
    nodes: tuple[NodeProcess, NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """A chunk a second (4 KiB/s), ten of them: the receiver stops after the
    first is written."""
    sender, key, rate = nodes[0], nodes[1].network_key, CHUNK
    frozen = NodeProcess(tmp_path / "frozen", network_key=key).start()
    source = make_file(10 * CHUNK)
    args = ["send", source, frozen.host, str(frozen.port), "--json",
            "--chunk-size", str(CHUNK), "--timeout", str(TIMEOUT)]  # fmt: skip
    try:
        with node_cap(sender, rate), start_cli(*args, data_dir=sender.data_dir) as cli:
            try:

                def written() -> bool | None:
                    if cli.poll() is not None:
                        return True
                    incoming = json.loads(frozen.status().get("incoming", "[]"))
                    return (bool(incoming) and int(incoming[0][2]) > 0) or None

                wait_until(written, 30.0, "the first chunk written")
                frozen.send_signal(signal.SIGSTOP)
                stopped = time.monotonic()
                try:
                    out, err = cli.communicate(timeout=60)
                finally:
                    frozen.send_signal(signal.SIGCONT)
                took = time.monotonic() - stopped
            finally:
                cli.kill()
    finally:
        frozen.stop()
    result = json.loads(out)
    assert cli.returncode == errors.FAILED, (out, err)
    assert "stopped acknowledging" in str(result["error"]), result
    # The next chunk leaves at most one chunk's time (1 s) after the stop; it
    # goes unanswered for --timeout. Slack for a loaded machine.
    assert took <= CHUNK / rate + TIMEOUT + 2.5, took


def test_a_live_cap_or_rate_too_low_for_any_chunk_is_refused_and_changes_nothing(
    nodes: tuple[NodeProcess, NodeProcess],
) -> None:
    sender = nodes[0]
    for command in ("max-rate", "rate"):
        done = sender.cli(command, "100")
        assert done.returncode == errors.USAGE, done.describe()
        assert done.stderr_lines == [
            f"peercrypt: error: {command} 100 is too low: the smallest chunk (4096 bytes) takes "
            "41 s at 100 B/s, and a paced chunk must move within 15 s (half of the receiver's "
            "30 s idle limit); use 274 or more (0: no limit)"
        ], done.describe()
    assert sender.status()["max_rate"] == "0"  # nothing changed; the node serves


def test_a_send_whose_share_of_the_cap_would_be_too_low_is_refused_up_front(
    nodes: tuple[NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    """500 B/s for the node: one send gets it all (a chunk in 8 s), but a
    second one alongside would get 250 B/s, 16 s a chunk: refused before any
    offer, naming the cap that would do; the first one is not disturbed."""
    sender, receiver = nodes
    first = make_file(3 * CHUNK)
    second = make_file(CHUNK, name="second.bin")
    args = ["send", first, receiver.host, str(receiver.port), "--json", "--chunk-size", str(CHUNK)]
    with node_cap(sender, 500), start_cli(*args, data_dir=sender.data_dir) as cli:
        try:
            wait_until(
                lambda: json.loads(sender.status().get("flows", "[]")) or cli.poll() is not None,
                30.0,
                "the first send to be paced",
            )
            assert cli.poll() is None, cli.communicate()
            done = sender.cli("send", second, receiver.host, str(receiver.port))
        finally:
            cli.send_signal(signal.SIGINT)  # Ctrl-C: the first send is cancelled
            try:
                cli.communicate(timeout=30)
            finally:
                cli.kill()
    assert done.returncode == errors.USAGE, done.describe()
    assert len(done.stderr_lines) == 1, done.describe()
    line = done.stderr_lines[0]
    assert line.startswith(
        "peercrypt: error: the node's rate cap of 500 B/s shared with 1 running send(s) "
        "leaves this send 250 B/s"
    ), line
    assert "use max-rate 548 or more" in line, line
    assert not (receiver.inbox / "second.bin").exists()


def test_the_old_tools_token_bucket_example_delivers_with_the_default_timeout(
    nodes: tuple[NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    """`send file.txt host port -b 1024 -r 512` (the old tool's README): a
    4 KiB chunk takes 8 s at 512 B/s, more than half the default 10 s
    timeout, and was refused; without --timeout the send's timeout is now
    long enough for its smallest chunk (up to the receiver's idle limit).
    A --timeout the user gives is kept (and the send refused as before)."""
    sender, receiver = nodes
    source = make_file(CHUNK + 1024, name="file.txt")
    given = sender.cli(
        "send", source, receiver.host, str(receiver.port), "-b", "1024", "-r", "512",
        "--timeout", "10",
    )  # fmt: skip
    assert given.returncode == errors.USAGE, given.describe()
    assert "-r 512 is too low" in given.stderr, given.describe()
    done = sender.cli(
        "send", source, receiver.host, str(receiver.port), "-b", "1024", "-r", "512", "--json"
    )
    assert done.returncode == 0, done.describe()
    stored = receiver.inbox / done.json["stored_as"]
    assert blake3_file(stored) == blake3_file(source)
    stored.unlink()
    # A folder the same (its size is its walk's: counted as a chunk at least).
    folder = source.parent / "notes"
    folder.mkdir()
    (folder / "file.txt").write_bytes(source.read_bytes())
    tree = sender.cli(
        "send", folder, receiver.host, str(receiver.port), "-b", "1024", "-r", "512", "--json"
    )
    assert tree.returncode == 0, tree.describe()
    copy = receiver.inbox / tree.json["stored_as"] / "file.txt"
    assert blake3_file(copy) == blake3_file(source)
