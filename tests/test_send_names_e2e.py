"""What a send names on the receiver, with real node processes: a file or
folder named through a symbolic link arrives under the link's name (its
target's content), and `send --json` of several files lists each of them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from peercrypt.testing.nodes import NodeProcess, blake3_file, multicast_targets


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_link_named_to_send_arrives_under_its_own_name(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """`send link.bin` stores link.bin with its target's content, as `scp`
    does (it stored target.bin): unicast, multicast, and as one of several
    files or a folder named through a link; a link inside a folder is still
    not sent (counted as skipped)."""
    a, b, c = (node_factory() for _ in range(3))
    data = tmp_path / "data"
    data.mkdir()
    target = make_file(300_000, "target.bin", directory=data)
    link = tmp_path / "link.bin"
    link.symlink_to(os.path.join("data", "target.bin"))  # relative, as `ln -s` makes it
    digest, sha = blake3_file(target), sha256_file(target)

    code, one = a.send_to(link, b)
    assert code == 0, one
    assert one["stored_as"] == "link.bin" and one["file"] == str(link), one
    assert one["blake3"] == digest
    assert sha256_file(b.inbox / "link.bin") == sha
    assert not (b.inbox / "target.bin").exists()

    code, multi = a.send(link, "127.0.0.1", b.port, "-m", *multicast_targets(c), timeout=120)
    assert code == 0, multi
    for receiver in (b, c):
        row = next(r for r in multi["receivers"] if r["target"] == f"127.0.0.1:{receiver.port}")
        stored = "link.1.bin" if receiver is b else "link.bin"  # b holds one from unicast
        assert (row["code"], row["stored_as"]) == ("ok", stored), multi
        assert blake3_file(receiver.inbox / stored) == digest
        assert sha256_file(receiver.inbox / stored) == sha

    # Among several files, and a folder named through a link (its own link
    # inside is not followed: skipped, as docs/architecture.md says).
    other = make_file(5_000, "other.bin", directory=data)
    (data / "inner").symlink_to("target.bin")
    folder = tmp_path / "folder-link"
    folder.symlink_to("data")
    result = a.cli(
        "send", str(link), str(other), str(folder), "127.0.0.1", str(c.port), "--json",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.describe()
    tree = result.json
    assert tree["skipped"] == 1, tree
    shown = {s["name"]: s["stored_as"] for s in tree["sources"]}
    assert shown == {
        "link.bin": "link.1.bin",
        "other.bin": "other.bin",
        "folder-link": "folder-link",
    }
    assert sha256_file(c.inbox / "link.1.bin") == sha
    assert sha256_file(c.inbox / "folder-link" / "target.bin") == sha
    assert blake3_file(c.inbox / "other.bin") == blake3_file(other)
    assert sorted(os.listdir(c.inbox / "folder-link")) == ["other.bin", "target.bin"]


SINGLE_KEYS = {
    "ok", "code", "error", "file", "peer", "size", "blake3", "stored_as", "seconds",
    "mib_per_s", "held_share", "files", "file_bytes", "skipped", "retransmits", "mode", "stats",
    "window_history",
}  # fmt: skip


def test_send_json_of_several_files_lists_each(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """`send --json a b c` has `sources`: one object per file named, in
    that order, with its stored name (`file` and `stored_as` said the first
    name and one comma-joined string); one file's keys are as they were."""
    a, b = node_factory(), node_factory()
    first = make_file(70_000, "report.pdf")
    code, single = a.send_to(first, b)
    assert code == 0 and set(single) == SINGLE_KEYS, single
    folder = tmp_path / "album"
    (folder / "sub").mkdir(parents=True)
    photos = [make_file(n, f"p{n}.jpg", directory=folder / "sub") for n in (1_000, 2_000)]
    named = [make_file(123_456, "zeta.bin"), first, folder, make_file(0, "empty")]
    result = a.cli("send", *map(str, named), "127.0.0.1", str(b.port), "--json", timeout=120)
    assert result.returncode == 0, result.describe()
    sent = result.json
    assert set(sent) == SINGLE_KEYS | {"sources"}
    assert sent["files"] == 5 and sent["file_bytes"] == 123_456 + 70_000 + 3_000
    assert sent["sources"] == [
        {"name": "zeta.bin", "path": str(named[0]), "kind": "file", "bytes": 123_456,
         "stored_as": "zeta.bin", "verified": True, "held": False},
        {"name": "report.pdf", "path": str(first), "kind": "file", "bytes": 70_000,
         "stored_as": "report.1.pdf", "verified": True, "held": False},  # a clash
        {"name": "album", "path": str(folder), "kind": "folder", "bytes": 3_000,
         "stored_as": "album", "verified": True, "held": False},
        {"name": "empty", "path": str(named[3]), "kind": "file", "bytes": 0,
         "stored_as": "empty", "verified": True, "held": False},
    ]  # fmt: skip
    for source, path in zip(sent["sources"], named, strict=True):
        stored = b.inbox / source["stored_as"]
        if path.is_dir():
            for photo in photos:
                assert blake3_file(stored / "sub" / photo.name) == blake3_file(photo)
        else:
            assert blake3_file(stored) == blake3_file(path)
    # Sent again: the receiver had them all, each says so.
    again = a.cli("send", *map(str, named), "127.0.0.1", str(b.port), "--json", timeout=120)
    assert again.returncode == 0, again.describe()
    assert [(s["stored_as"], s["held"]) for s in again.json["sources"]] == [
        (s["stored_as"], True) for s in sent["sources"]
    ]
    # A source named that is no file nor folder (a FIFO) is not sent: said
    # so, and the others' stored names are still read.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    lone = make_file(5_000, "lone.bin")
    mixed = a.cli("send", str(lone), str(fifo), "127.0.0.1", str(b.port), "--json", timeout=120)
    assert mixed.returncode == 0, mixed.describe()
    assert mixed.json["sources"] == [
        {"name": "lone.bin", "path": str(lone), "kind": "file", "bytes": 5_000,
         "stored_as": "lone.bin", "verified": True, "held": False},
        {"name": "pipe", "path": str(fifo), "kind": "skipped", "bytes": None,
         "stored_as": None, "verified": False, "held": False},
    ]  # fmt: skip
    assert blake3_file(b.inbox / "lone.bin") == blake3_file(lone)
