"""The members a node last saw alive, kept in its data dir
(peercrypt/members_file.py): read back as written, bounded, and a file
that is not what this node wrote costs nothing but the lines it spoils."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt import members_file


def test_what_is_written_is_read_back_and_only_the_owner_may_read_it(tmp_path: Path) -> None:
    assert members_file.read(tmp_path) == []  # (none kept yet)
    members_file.write(tmp_path, ["10.0.0.5:7400", "[fd00::1]:7401", "node-b.lan:7402"])
    path = tmp_path / members_file.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert members_file.read(tmp_path) == [
        ("10.0.0.5", 7400),
        ("fd00::1", 7401),
        ("node-b.lan", 7402),
    ]
    members_file.write(tmp_path, ["10.0.0.6:7400"])  # replaced whole
    assert members_file.read(tmp_path) == [("10.0.0.6", 7400)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [members_file.FILE_NAME]  # no temp left


def test_a_spoiled_file_costs_only_its_spoiled_lines(tmp_path: Path) -> None:
    path = tmp_path / members_file.FILE_NAME
    path.write_bytes(
        b"10.0.0.5:7400\n\xff\xfe:1\nno-port\n10.0.0.5:0\n10.0.0.5:99999\n:7400\n"
        b"10.0.0.5:7400\n10.0.0.7: 7400\n10.0.0.8:7400"
    )
    assert members_file.read(tmp_path) == [("10.0.0.5", 7400), ("10.0.0.8", 7400)]
    # Past its bounds (lines, bytes): no more is read.
    path.write_text("".join(f"10.0.{i // 250}.{i % 250 + 1}:7400\n" for i in range(1000)))
    assert len(members_file.read(tmp_path)) == members_file.MAX_LINES
    path.write_bytes(b"x" * (10 * members_file.MAX_BYTES) + b"\n10.0.0.5:7400\n")
    assert members_file.read(tmp_path) == []
    path.unlink()
    path.mkdir()  # (not a file: unreadable as one)
    assert members_file.read(tmp_path) == []


def test_a_fifo_or_a_link_in_its_place_is_not_read_and_a_planted_temp_not_followed(
    tmp_path: Path,
) -> None:
    """A FIFO named `members` hung the node's start (its discovery actor
    blocked opening it); a symbolic link there, or at the temporary name
    the file is written under, is not followed."""
    path = tmp_path / members_file.FILE_NAME
    os.mkfifo(path)
    assert members_file.read(tmp_path) == []  # (at once: not opened for a writer to come)
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("10.0.0.5:7400\n")
    path.symlink_to(elsewhere)
    assert members_file.read(tmp_path) == []
    path.unlink()
    planted = tmp_path / f".{members_file.FILE_NAME}.{os.getpid()}.tmp"
    planted.symlink_to(elsewhere)
    members_file.write(tmp_path, ["10.0.0.6:7400"])
    assert elsewhere.read_text() == "10.0.0.5:7400\n"  # not written through the link
    assert members_file.read(tmp_path) == [("10.0.0.6", 7400)]


def test_a_file_that_cannot_be_written_is_said_and_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / members_file.FILE_NAME).mkdir()  # os.replace cannot put a file there
    with pytest.raises(OSError):
        members_file.write(tmp_path, ["10.0.0.5:7400"])
    assert sorted(os.listdir(tmp_path)) == [members_file.FILE_NAME]


@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
                          st.integers(1, 65535)), max_size=40, unique=True))  # fmt: skip
def test_any_set_of_addresses_reads_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, addresses: list[tuple[str, int]]
) -> None:
    folder = tmp_path_factory.mktemp("kept")
    members_file.write(folder, [f"{host}:{port}" for host, port in addresses])
    assert members_file.read(folder) == addresses


def test_the_keeper_writes_a_changed_set_never_none_and_not_twice_a_second() -> None:
    keeper = members_file.Keeper(["10.0.0.5:7400"])  # as read at the start
    assert keeper.update(["10.0.0.5:7400"], 0.0) is None  # (the same: no write)
    assert keeper.update(["10.0.0.6:7400", "10.0.0.5:7400"], 0.0) == [
        "10.0.0.5:7400",
        "10.0.0.6:7400",
    ]
    assert keeper.update(["10.0.0.7:7400"], 0.5) is None  # within the second
    assert keeper.update(["10.0.0.7:7400"], 1.0) == ["10.0.0.7:7400"]  # then, as it stayed
    assert keeper.update([], 5.0) is None  # alone: the last set stays


@given(st.lists(st.tuples(st.floats(0, 0.7), st.sets(st.sampled_from("abcd"), max_size=3)),
                max_size=30))  # fmt: skip
def test_the_keeper_never_writes_twice_within_its_interval_and_ends_on_the_last_set(
    steps: list[tuple[float, set[str]]],
) -> None:
    keeper = members_file.Keeper([], every=1.0)
    now, writes, last = 0.0, [], None
    for gap, alive in steps:
        now += gap
        kept = keeper.update([f"{a}:1" for a in alive], now)
        if kept is not None:
            assert kept and kept == sorted(f"{a}:1" for a in alive)
            writes.append(now)
        last = alive or last
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(writes))
    if last:  # a second on, the last set alive is the one kept
        now += 1.001  # (1.0 on: 0.2 + 1.0 - 0.2 < 1.0 in floats)
        keeper.update([f"{a}:1" for a in last], now)
        assert keeper.kept == sorted(f"{a}:1" for a in last)


def test_only_members_proven_at_the_address_their_record_names_are_chosen() -> None:
    """A record alone is a claim: a member kept must have answered at the
    address its record names now (one proven at its own port that signs a
    record of another address is not kept there); the best scored first,
    `most` of them."""
    a, b, c, d = b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32
    alive = [
        (a, "tcp://10.0.0.1:7400"),
        (b, "tcp://10.0.0.2:7400"),  # proven, its record moved since: not kept
        (c, "tcp://10.0.0.3:07400"),  # (spelt otherwise: the same endpoint)
        (d, "tcp://10.0.0.4:7400"),  # never proven (a fresh identity's record)
    ]
    proven = {a: "10.0.0.1:7400", b: "10.0.0.9:7400", c: "10.0.0.3:7400"}
    scores = {a: 0.2, c: 0.9}
    assert members_file.choose(alive, proven, scores, 32, 0.5) == [
        "10.0.0.3:7400",
        "10.0.0.1:7400",
    ]
    assert members_file.choose(alive, proven, scores, 1, 0.5) == ["10.0.0.3:7400"]
    assert members_file.choose(alive, {}, scores, 32, 0.5) == []


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3)), max_size=20),
       st.dictionaries(st.integers(0, 9), st.integers(0, 3)), st.integers(0, 5))  # fmt: skip
def test_what_is_chosen_is_proven_alive_and_bounded(
    alive: list[tuple[int, int]], proven: dict[int, int], most: int
) -> None:
    def url(port: int) -> str:
        return f"tcp://10.0.0.1:{7400 + port}"

    members = [(bytes([n]) * 32, url(p)) for n, p in alive]
    told = {bytes([n]) * 32: f"10.0.0.1:{7400 + p}" for n, p in proven.items()}
    chosen = members_file.choose(members, told, {}, most, 0.5)
    assert len(chosen) <= most
    for address in chosen:
        assert any(told.get(node) == address == url_.removeprefix("tcp://")
                   for node, url_ in members)  # fmt: skip
