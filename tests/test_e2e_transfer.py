"""End-to-end transfers between real node processes on 127.0.0.1.

Every successful send is checked on both ends: exit code 0, the JSON result's
BLAKE3 equals the source's, and the file in the receiver's inbox has the same
size and BLAKE3, with no ``.part``/manifest left behind.

Most tests share one sender/receiver pair (module scope) to keep node start-ups
few; each test uses file names of its own, so the shared inbox cannot mix them up.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, blake3_file, run_cli, wait_until

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """(sender, receiver): two running nodes on one network for this module."""
    base = tmp_path_factory.mktemp("pair")
    key = new_network_key()
    sender = NodeProcess(base / "sender", network_key=key)
    receiver = NodeProcess(base / "receiver", network_key=key)
    try:
        sender.start()
        receiver.start()
        yield sender, receiver
    finally:
        started = [n for n in (sender, receiver) if n.proc is not None]
        for n in started:
            n.send_signal()
        codes = {n.data_dir.name: n.stop() for n in started}
    assert codes == {"sender": 0, "receiver": 0}, (
        f"{codes}\n{sender.log_tail()}\n{receiver.log_tail()}"
    )


@pytest.fixture
def sender(pair: tuple[NodeProcess, NodeProcess]) -> NodeProcess:
    return pair[0]


@pytest.fixture
def receiver(pair: tuple[NodeProcess, NodeProcess]) -> NodeProcess:
    return pair[1]


def leftovers(inbox: Path) -> list[str]:
    """Hidden partial files, manifests, temporaries or trees in an inbox (the
    node's own names are all hidden; a received ``_.n.x.part`` is a file)."""
    return sorted(p.name for p in inbox.iterdir() if p.name.startswith("."))


def assert_delivered(
    outcome: tuple[int, dict[str, Any]],
    source: Path,
    receiver: NodeProcess,
    stored_as: str | None = None,
) -> Path:
    """Check one send end to end; return the stored file."""
    code, result = outcome
    expected = blake3_file(source)
    size = source.stat().st_size
    assert code == 0, f"send failed: {code} {result}\n{receiver.log_tail()}"
    assert result["ok"] is True and result["code"] == "ok" and result["error"] is None, result
    assert result["blake3"] == expected
    assert result["size"] == size
    if stored_as is not None:
        assert result["stored_as"] == stored_as
    stored: Path = receiver.inbox / result["stored_as"]
    assert stored.parent == receiver.inbox
    assert stored.is_file(), f"{stored} missing; inbox has {sorted(os.listdir(receiver.inbox))}"
    assert stored.stat().st_size == size
    assert blake3_file(stored) == expected
    assert leftovers(receiver.inbox) == []
    return stored


@pytest.mark.parametrize(
    "size",
    [0, 1, KiB, 100 * KiB],
    ids=["0B", "1B", "1KiB", "100KiB"],
)
def test_small_sizes_default_chunk(
    sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path], size: int
) -> None:
    source = make_file(size, name=f"small-{size}.bin")
    outcome = sender.send_to(source, receiver)
    assert_delivered(outcome, source, receiver, stored_as=f"small-{size}.bin")


@pytest.mark.parametrize(
    "size",
    [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK - 1, 3 * CHUNK, 3 * CHUNK + 1],
    ids=["1chunk-1", "1chunk", "1chunk+1", "3chunks-1", "3chunks", "3chunks+1"],
)
def test_chunk_boundaries(
    sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path], size: int
) -> None:
    source = make_file(size, name=f"boundary-{size}.bin")
    outcome = sender.send_to(source, receiver, "--chunk-size", str(CHUNK))
    assert_delivered(outcome, source, receiver, stored_as=f"boundary-{size}.bin")


def test_smallest_chunk_size_many_chunks(
    sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path]
) -> None:
    """4 KiB chunks (the minimum): 257 chunks, well past the credit window."""
    source = make_file(256 * 4 * KiB + 7, name="many-chunks.bin")
    outcome = sender.send_to(source, receiver, "--chunk-size", str(4 * KiB))
    assert_delivered(outcome, source, receiver, stored_as="many-chunks.bin")


def test_50_mib(sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path]) -> None:
    source = make_file(50 * MiB, name="big-50MiB.bin")
    outcome = sender.send_to(source, receiver, "--timeout", "30")
    stored = assert_delivered(outcome, source, receiver, stored_as="big-50MiB.bin")
    stored.unlink()  # keep the shared tmp dir small


def test_same_name_twice_never_overwrites(
    sender: NodeProcess,
    receiver: NodeProcess,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    first = make_file(10 * KiB, name="twice.bin", directory=tmp_path / "a")
    second = make_file(20 * KiB, name="twice.bin", directory=tmp_path / "b")
    third = make_file(5, name="twice.bin", directory=tmp_path / "c")
    a = assert_delivered(sender.send_to(first, receiver), first, receiver, stored_as="twice.bin")
    b = assert_delivered(sender.send_to(second, receiver), second, receiver, "twice.1.bin")
    c = assert_delivered(sender.send_to(third, receiver), third, receiver, "twice.2.bin")
    # The earlier files are untouched by the later sends.
    assert blake3_file(a) == blake3_file(first)
    assert blake3_file(b) == blake3_file(second)
    assert c.stat().st_size == 5


def test_existing_inbox_file_is_kept(
    sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path]
) -> None:
    mine = receiver.inbox / "precious.txt"
    mine.write_bytes(b"do not overwrite me")
    source = make_file(3 * KiB, name="precious.txt")
    assert_delivered(sender.send_to(source, receiver), source, receiver, "precious.1.txt")
    assert mine.read_bytes() == b"do not overwrite me"


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("résumé final ☃ 日本.txt", "résumé final ☃ 日本.txt"),
        ("  spaced   name.bin  ", "spaced   name.bin"),
        ("tab\there\nnewline.bin", "tabherenewline.bin"),
        ("not\\a\\dir.bin", "dir.bin"),
        ("x" * 230 + ".bin", "x" * 196 + ".bin"),
        (".n.x.part", "_.n.x.part"),  # never the node's own kept part
        (".photos.abc.tree", "_.photos.abc.tree"),  # never swept as a crash's leftover
    ],
    ids=["unicode", "spaces", "control-chars", "backslashes", "too-long", "part", "tree"],
)
def test_names_are_sanitised(
    sender: NodeProcess,
    receiver: NodeProcess,
    make_file: Callable[..., Path],
    tmp_path: Path,
    name: str,
    stored: str,
) -> None:
    source = make_file(2 * KiB + 3, name=name, directory=tmp_path / "odd")
    assert source.name == name
    outcome = sender.send_to(source, receiver)
    path = assert_delivered(outcome, source, receiver, stored_as=stored)
    assert path.name == stored
    assert len(stored.encode()) <= 200


def test_concurrent_sends_to_one_receiver(
    sender: NodeProcess,
    receiver: NodeProcess,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sizes = [3 * MiB + 11, 2 * MiB, MiB - 1, 2 * MiB + CHUNK]
    sources = [
        make_file(size, name=f"parallel-{i}.bin", directory=tmp_path / "par")
        for i, size in enumerate(sizes)
    ]
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        futures = [
            pool.submit(sender.send_to, src, receiver, "--chunk-size", str(CHUNK), timeout=60)
            for src in sources
        ]
        outcomes = [f.result(timeout=90) for f in futures]
    for source, outcome in zip(sources, outcomes, strict=True):
        assert_delivered(outcome, source, receiver, stored_as=source.name)


def test_concurrent_sends_of_one_name(
    sender: NodeProcess,
    receiver: NodeProcess,
    make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Racing transfers of the same name each get a name of their own."""
    sources = [
        make_file(256 * KiB + i, name="race.bin", directory=tmp_path / f"r{i}") for i in range(4)
    ]
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        outcomes = list(pool.map(lambda s: sender.send_to(s, receiver, timeout=60), sources))
    stored = [assert_delivered(o, s, receiver).name for s, o in zip(sources, outcomes, strict=True)]
    assert sorted(stored) == ["race.1.bin", "race.2.bin", "race.3.bin", "race.bin"]


def test_send_through_a_temporary_node(
    receiver: NodeProcess, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """No node runs for the sender's data dir: send starts a temporary one."""
    data_dir = tmp_path / "no-node"
    source = make_file(300 * KiB, name="via-temporary.bin")
    network_key = receiver.network_key
    assert network_key is not None
    result = run_cli(
        "send",
        source,
        receiver.host,
        str(receiver.port),
        "--json",
        "--network-key",
        network_key,
        data_dir=data_dir,
    )
    assert_delivered((result.returncode, result.json), source, receiver, "via-temporary.bin")
    assert "Traceback" not in result.stderr
    # The temporary node created an identity but left no control file behind.
    assert (data_dir / "identity.key").is_file()
    assert not (data_dir / "control.json").exists()
    # And the network key from the environment works the same way.
    again = run_cli(
        "send",
        source,
        receiver.host,
        str(receiver.port),
        "--json",
        data_dir=data_dir,
        env={"PEERCRYPT_NETWORK_KEY": network_key},
    )
    # (The same file from the same identity again: the earlier verdict, no second copy.)
    assert_delivered((again.returncode, again.json), source, receiver, "via-temporary.bin")
    assert again.json["stats"]["sent_chunks"] == 0, again.json
    assert not (receiver.inbox / "via-temporary.1.bin").exists()


def test_status_counters_reflect_transfers(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    inbox = tmp_path / "custom-inbox"
    receiver = node_factory("--inbox", str(inbox))
    sender = node_factory()
    assert receiver.inbox == inbox

    before = receiver.cli("status", "--json")
    assert before.returncode == 0, before.describe()
    facts = before.json
    assert facts["running"] is True
    # Numbers as numbers, the lists and maps a node keeps as themselves.
    assert facts["port"] == receiver.port and facts["data_port"] == receiver.data_port
    assert facts["fingerprint"] == receiver.fingerprint
    assert facts["pid"] == receiver.pid
    assert facts["incoming"] == [] and facts["congestion"] == {} and facts["mode"] == "normal"
    assert facts["counters"].get("receiver.received", 0) == 0

    sources = [make_file(40 * KiB), make_file(70 * KiB + 1)]
    for source in sources:
        assert_delivered(sender.send_to(source, receiver), source, receiver)
    total = sum(s.stat().st_size for s in sources)

    def settled() -> dict[str, Any] | None:
        status = receiver.cli("status", "--json")
        assert status.returncode == 0, status.describe()
        counters: dict[str, Any] = status.json["counters"]
        return counters if counters.get("receiver.received") == 2 else None

    counters = wait_until(settled, 10.0, "receiver.received == 2")
    assert counters["receiver.received-bytes"] == total
    last = receiver.cli("status", "--json").json["last_in"]
    assert last["ok"] is True and last["stored_as"] == sources[-1].name, last
    assert last["size"] == sources[-1].stat().st_size, last
    assert counters["receiver.accepted"] == 2
    # Another actor's report: the sender's connection admitted once (the
    # second send took the first one's kept link: no second admission).
    assert receiver.wait_for_counter("admission.admitted", 1) >= 1
    assert not any(k.startswith("receiver.refused") for k in counters), counters
    sent = sender.counters_when("sender.sent", 2)
    assert sent["sender.sent"] == 2
    assert sent.get("sender.offers") == 2
    assert sent.get("sender.links-reused") == 1


NOT_USED = (
    "peercrypt: note: sending through the running node, on its network "
    "(--network-key, --network-key-file and --open apply only when no node runs)"
)


def test_send_through_running_node_notes_that_the_key_flag_is_not_used(
    sender: NodeProcess, receiver: NodeProcess, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_file(10 * KiB)
    result = sender.send_result(
        source, receiver.host, receiver.port, "--network-key", new_network_key()
    )
    assert_delivered((result.returncode, result.json), source, receiver)
    assert result.stderr_lines == [
        "peercrypt: warning: --network-key puts the key in the command line, visible to every "
        "local user (ps); use --network-key-file or PEERCRYPT_NETWORK_KEY",
        NOT_USED,
    ]
    # A key file too (another network's key): it said nothing, and a
    # health-check with it said "alive" as if that key were right.
    other = tmp_path / "other.key"
    other.write_text(new_network_key() + "\n")
    other.chmod(0o600)
    result = sender.send_result(
        make_file(10 * KiB), receiver.host, receiver.port, "--network-key-file", str(other)
    )
    assert result.returncode == 0 and result.stderr_lines == [NOT_USED], result.describe()
    check = sender.cli(
        "health-check", receiver.host, str(receiver.port), "--network-key-file", other
    )
    assert check.returncode == 0 and check.stderr_lines == [NOT_USED], check.describe()


def test_a_forced_send_through_a_temporary_node_says_one_error_line(
    make_file: Callable[..., Path], tmp_path: Path, free_port: int
) -> None:
    """`send --force` to a closed port, no node running: the temporary
    node's choice to go ahead is its log's (info), not a warning line on the
    user's terminal before the error."""
    source = make_file(10 * KiB)
    result = run_cli(
        "send", source, "127.0.0.1", str(free_port), "--force", "--timeout", "2",
        data_dir=tmp_path / "no-node", env={"PEERCRYPT_NETWORK_KEY": new_network_key()},
    )  # fmt: skip
    assert result.returncode == errors.UNREACHABLE, result.describe()
    assert len(result.stderr_lines) == 1, result.describe()
    assert result.stderr_lines[0].startswith("peercrypt: error: "), result.describe()
