"""A folder (or several files) by multicast, between real nodes on loopback
(docs/multicast.md, "Folders"; peercrypt/core/tree.py, actors/tree_store.py).

One node set for the module: a sender capped at 8 MiB/s (so a session of
a few MiB lasts long enough to kill a receiver in it), two receivers (the
second on a fixed port, so it can be restarted under the same address) and
a hostile sender with the same network key. Each test uses names of its own
in the shared inboxes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.inbox import load_manifest, manifest_name, scan
from peercrypt.core.tree import Kind, TreeEntry, encode_manifest
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess, cli_env, free_port, start_cli, wait_until
from peercrypt.testing.trees import (
    HostileTreeNode,
    contents,
    d,
    f,
    raw_manifest,
    row,
    sample_tree,
    write_spec,
)

WAIT = 30.0
MiB = 1 << 20


class Nodes:
    def __init__(self, base: Path) -> None:
        key = new_network_key()
        self.base = base
        self.sender = NodeProcess(base / "sender", key, extra_args=("--max-rate", str(8 * MiB)))
        self.one = NodeProcess(base / "one", key)
        self.port = free_port()
        self.two = NodeProcess(base / "two", key, extra_args=("--port", str(self.port)))
        self.hostile = HostileTreeNode(base / "hostile", key, spec=base / "spec.json")
        self.all = [self.sender, self.one, self.two, self.hostile]

    def targets(self) -> list[str]:
        """``send`` arguments: receiver one, then ``-m --to`` receiver two."""
        return [self.one.host, str(self.one.port), "-m", "--to", f"127.0.0.1:{self.port}"]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    n = Nodes(tmp_path_factory.mktemp("mtree"))
    try:
        for node in n.all:
            node.start()
        yield n
    finally:
        started = [node for node in n.all if node.proc is not None and node.running]
        for node in started:
            node.send_signal(signal.SIGTERM)
        codes = {node.data_dir.name: node.stop() for node in started}
    assert set(codes.values()) <= {0}, (codes, [x.log_tail() for x in started])


def hidden(inbox: Path) -> list[str]:
    """Parts, manifests and hidden trees left in ``inbox``."""
    return sorted(n for n in os.listdir(inbox) if n.startswith("."))


def stored(result: dict[str, Any], node: NodeProcess) -> str:
    where = f"{node.host}:{node.port}"
    row = next(r for r in result["receivers"] if r["target"] == where)
    assert row["code"] == "ok", row
    return str(row["stored_as"])


def test_a_folder_by_multicast_arrives_whole_at_both_receivers(
    nodes: Nodes, tmp_path: Path
) -> None:
    src = tmp_path / "album"
    expected = sample_tree(src, tmp_path)  # its link "up" is not followed, not sent
    receivers = (nodes.one, nodes.two)

    sent = nodes.sender.cli("send", src, *nodes.targets(), "--json", "--chunk-size", "65536")
    assert sent.returncode == 0, sent.describe()
    out = sent.json
    assert out["files"] == 3 and out["skipped"] == 1, out
    assert out["stats"]["files"] == 3 and type(out["stats"]["skipped"]) is int  # (read 3.0)
    in_files = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert out["file_bytes"] == in_files < out["size"], out
    for r in receivers:
        assert stored(out, r) == "album"
        assert contents(r.inbox / "album") == expected
        assert os.stat(r.inbox / "album" / "run.sh").st_mode & 0o111
        assert not os.stat(r.inbox / "album" / "2026" / "empty.txt").st_mode & 0o111
        assert hidden(r.inbox) == []

    # Again: the top folder is renamed on each receiver, the first untouched.
    again = nodes.sender.cli("send", src, *nodes.targets(), "--no-progress")
    assert again.returncode == 0, again.describe()
    assert "sent album (3 files, " in again.stdout, again.stdout
    assert "verified, stored as album.1" in again.stderr
    for r in receivers:
        assert contents(r.inbox / "album.1") == expected
        assert contents(r.inbox / "album") == expected

    # Several files and a folder in one session, side by side; from the shell.
    (tmp_path / "memo.txt").write_bytes(b"memo")
    line = " ".join(
        [
            "send", str(tmp_path / "memo.txt"), str(src / "2026"), *nodes.targets(), "--json",
        ]
    )  # fmt: skip
    shell = subprocess.run(
        [sys.executable, "-m", "peercrypt", "--data-dir", str(nodes.sender.data_dir), "shell"],
        input=line + "\n", capture_output=True, text=True, env=cli_env(), timeout=120, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    for r in receivers:
        assert (r.inbox / "memo.txt").read_bytes() == b"memo"
        assert contents(r.inbox / "2026") == contents(src / "2026")
        assert hidden(r.inbox) == []
    nodes.one.wait_for_counter("mreceiver.received", 3)

    # A folder of one file is "1 file" (it said "1 files").
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "only.txt").write_bytes(b"only")
    one = nodes.sender.cli("send", tmp_path / "single", *nodes.targets(), "--no-progress")
    assert one.returncode == 0, one.describe()
    assert one.stdout.startswith("sent single (1 file, 4 bytes) to 2 receivers by multicast in ")


def held(inbox: Path, prefix: str) -> int:
    """Chunks the kept multicast part of ``prefix`` lists (0 while there is none)."""
    found = [m for m in scan(inbox, multicast=True).manifests if m.part.startswith(prefix)]
    if not found:
        return 0
    return load_manifest(inbox, manifest_name(found[0].part)).held().count


def test_a_receiver_restarted_mid_folder_rejoins_and_ends_with_the_tree(
    nodes: Nodes, tmp_path: Path
) -> None:
    src = tmp_path / "big"
    for i in range(12):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i:02}.bin").write_bytes(os.urandom(2 * MiB))
    (src / "d0" / "nothing").mkdir()
    args = [
        "send",
        str(src),
        *nodes.targets(),
        "--json",
        "--timeout",
        "30",
        "--chunk-size",
        "262144",
    ]
    with start_cli(*args, data_dir=nodes.sender.data_dir) as proc:
        try:
            wait_until(lambda: held(nodes.two.inbox, ".big.") > 0, WAIT, "two holds chunks")
            nodes.two.kill()
            nodes.two.start()
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, (out, err, nodes.sender.log_tail())
    result = json.loads(out)
    for r in (nodes.one, nodes.two):
        assert stored(result, r) == "big"
        assert contents(r.inbox / "big") == contents(src)
        assert hidden(r.inbox) == []
    assert nodes.two.wait_for_counter("mreceiver.resumed", 1) >= 1


# -- a hostile sender (a member with the network key) ------------------------------------


def test_hostile_multicast_trees_store_nothing_and_the_receivers_go_on(
    nodes: Nodes, tmp_path: Path
) -> None:
    x = b"payload"
    cases: dict[str, tuple[bytes, bytes]] = {
        "dot-dot": (raw_manifest([row(f("..", data=x))]), x),
        "dot-dot-below": (raw_manifest([row(d("ok")), row(f("ok", "..", data=x))]), x),
        "absolute": (raw_manifest([row(d("")), row(f("", "etc", data=x))]), x),
        "slash": (raw_manifest([row(f("a/../../b", data=x))]), x),
        "reserved": (raw_manifest([row(f(".evil.0123.mc.part", data=x))]), x),
        "reserved-tree": (
            raw_manifest([row(d(".evil.0123.tree")), row(f(".evil.0123.tree", "a", data=x))]),
            x,
        ),
        "undeclared-parent": (raw_manifest([row(f("a", "b", data=x))]), x),
        "sizes-lie": (raw_manifest([row(TreeEntry(Kind.FILE, ("a",), 3, 0o644, b"h" * 32))]), x),
        "size-too-big": (
            raw_manifest(
                [row(d("t")), row(TreeEntry(Kind.FILE, ("t", "a"), 99, 0o644, b"h" * 32))]
            ),
            x,
        ),
        "hash-mismatch": (raw_manifest([row(d("t")), row(f("t", "a", data=b"other!!"))]), x),
        "garbage": (b"\xc1" * 20, x),
    }
    dummy = tmp_path / "evil"
    dummy.mkdir()  # the CLI wants a folder; the hostile node sends the spec instead
    receivers = (nodes.one, nodes.two)
    before = {r.data_dir.name: sorted(os.listdir(r.inbox)) for r in receivers}
    bad_before = {
        r.data_dir.name: r.counters().get("mreceiver.tree-bad-tree", 0) for r in receivers
    }
    for name, (manifest, body) in cases.items():
        write_spec(nodes.hostile.spec, manifest, body, 1)
        sent = nodes.hostile.cli("send", dummy, *nodes.targets(), "--json")
        assert sent.returncode != 0, (name, sent.describe())
        for r in receivers:
            where = f"{r.host}:{r.port}"
            mine = next(x for x in sent.json["receivers"] if x["target"] == where)
            assert mine["code"] != "ok" and "the folder was not stored" in mine["error"], (
                name,
                mine,
            )
            # Nothing new in the inbox, nothing outside it.
            assert sorted(os.listdir(r.inbox)) == before[r.data_dir.name], name
        assert sorted(os.listdir(tmp_path)) == ["evil"], name
    for r in receivers:
        r.wait_for_counter("mreceiver.tree-bad-tree", bad_before[r.data_dir.name] + len(cases))

    # Beyond the receiver's limit (100,000 files): refused at the announce.
    write_spec(nodes.hostile.spec, encode_manifest([f("a", data=x)]), x, 10**6)
    many = nodes.hostile.cli("send", dummy, *nodes.targets(), "--json")
    assert many.returncode != 0
    assert all("a folder of at most 100000 files" in r["error"] for r in many.json["receivers"])

    # The receivers go on: a well-formed tree from the same member is stored.
    write_spec(nodes.hostile.spec, encode_manifest([d("fine"), f("fine", "ok.txt", data=x)]), x, 1)
    good = nodes.hostile.cli("send", dummy, *nodes.targets(), "--json")
    assert good.returncode == 0, good.describe()
    for r in receivers:
        assert stored(good.json, r) == "fine"
        assert (r.inbox / "fine" / "ok.txt").read_bytes() == x
        assert sorted(os.listdir(r.inbox)) == sorted([*before[r.data_dir.name], "fine"])
