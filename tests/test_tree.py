"""Folder transfers without a node: the manifest's rules (peercrypt/core/tree.py),
the sender's walk and stream (actors/tree_source.py), and the receiver's
unpacking into the inbox (actors/tree_store.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors.tree_store as tree_store
from actors.tree_source import build_tree
from actors.tree_store import TreeBuilder, hidden_name, stamp_tree, sweep_trees, unpack
from peercrypt.core.delivered import MAX_TREE_ENTRIES
from peercrypt.core.names import candidate_names
from peercrypt.core.tree import (
    MAX_DEPTH,
    Kind,
    Layout,
    TreeEntry,
    TreeError,
    check_component,
    decode_manifest,
    encode_manifest,
    manifest_limit,
    received_mode,
    sort_entries,
    unsendable,
)


@pytest.mark.parametrize(("name", "why"), [
    ("L" * 201, "201 bytes long, over 200"),
    ("é" * 101, "202 bytes long, over 200"),
    ("..", "not a name a receiver can store"),
    ("a\\b", "it holds / or \\"),
    (" lead", "it starts or ends with a space"),
    ("new\nline", "it holds an invisible or control character"),
    ("tab\there", "it holds an invisible or control character"),
    ("x\u200b", "it holds an invisible or control character"),
    ("caf\udce9", "it holds a byte that is not UTF-8"),
])  # fmt: skip
def test_a_name_a_folder_cannot_send_is_refused_with_its_reason(name: str, why: str) -> None:
    """A folder's member is sent under its own name or not at all (a name
    changed on the way could meet another); the user is told why."""
    with pytest.raises(TreeError):
        check_component(name)
    assert unsendable(name) == why


@given(st.text(max_size=60))
def test_a_name_refused_for_a_character_is_told_which(name: str) -> None:
    """Whatever the name: refused for a character, the reason names it."""
    with contextlib.suppress(TreeError):
        check_component(name)
        return
    if not name.isprintable() and len(name.encode("utf-8", "surrogateescape")) <= 200:
        assert unsendable(name) in (
            "it holds an invisible or control character",
            "it holds a byte that is not UTF-8",
        )


def f(*path: str, data: bytes = b"x", mode: int = 0o644) -> TreeEntry:
    return TreeEntry(Kind.FILE, path, len(data), mode, blake3.blake3(data).digest())


def d(*path: str) -> TreeEntry:
    return TreeEntry(Kind.DIR, path, 0, 0o755)


def stream_size(entries: list[TreeEntry]) -> int:
    return len(encode_manifest(entries)) + sum(e.size for e in entries)


def decode(entries: list[TreeEntry], max_files: int = 100) -> list[TreeEntry]:
    return decode_manifest(encode_manifest(entries), max_files, stream_size(entries))


GOOD = [d("top"), f("top", "a"), d("top", "empty"), d("top", "ünï 😀"), f("top", "ünï 😀", "b")]


def test_a_manifest_round_trips() -> None:
    assert decode(GOOD) == GOOD


names = st.text(
    st.characters(blacklist_categories=("C", "Zs"), blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(names, min_size=1, max_size=4), min_size=1, max_size=30))
def test_any_tree_of_safe_names_round_trips(paths: list[list[str]]) -> None:
    found: dict[tuple[str, ...], TreeEntry] = {}
    for path in paths:
        for depth in range(1, len(path)):
            found.setdefault(tuple(path[:depth]), d(*path[:depth]))
        if tuple(path) not in found:
            found[tuple(path)] = f(*path, data=os.urandom(3))
    entries = sort_entries(found.values())
    # A "file" that is also some path's parent is a directory here.
    entries = [d(*e.path) if any(o.path[:-1] == e.path for o in entries) else e for e in entries]
    assert decode(entries) == entries


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([f("..")], "unusable"),
        ([d("top"), f("top", "..")], "unusable"),
        ([f("")], "unusable"),  # an absolute path's first component
        ([d("top"), f("top", "")], "unusable"),
        ([f("a/b")], "unsafe"),
        ([f("a\\b")], "unsafe"),
        ([f("a\x00b")], "unsafe"),
        ([f("a\nb")], "unsafe"),
        ([f(" a")], "unsafe"),
        ([f("x" * 201)], "unsafe"),
        ([f("a"), f("a")], "duplicate"),
        ([d("a"), d("a")], "duplicate"),
        ([f("b"), f("a")], "out of order"),
        ([f("a"), f("a", "b")], "not under a listed directory"),  # a file as a parent
        ([f("a", "b")], "not under a listed directory"),
        ([d("a"), f("b", "c")], "not under a listed directory"),
        ([d(".photos.abc.tree")], "receiver's own files"),  # swept as a crash's leftover
        ([f(".n.x.part")], "receiver's own files"),  # a kept part to adopt or charge
        ([f(".n.x.part.manifest")], "receiver's own files"),
        ([f(".n.x.part.manifest.tmp")], "receiver's own files"),
        ([f(".s.abc.mc.part")], "receiver's own files"),
    ],
)
def test_hostile_manifests_are_refused(entries: list[TreeEntry], why: str) -> None:
    with pytest.raises(TreeError, match=why):
        decode(entries)


def test_limits_of_count_depth_size_and_total() -> None:
    many = [f(f"f{i:05}") for i in range(11)]
    with pytest.raises(TreeError, match="more than 10 entries"):
        decode(many, max_files=10)
    deep = [*(d(*["d"] * n) for n in range(1, MAX_DEPTH)), f(*["d"] * (MAX_DEPTH - 1), "x")]
    assert decode(deep, 1000) == deep
    too_deep = [d(*["d"] * n) for n in range(1, MAX_DEPTH + 2)]
    with pytest.raises(TreeError, match="components"):
        decode(too_deep, 1000)
    data = encode_manifest(GOOD)
    with pytest.raises(TreeError, match="add up"):
        decode_manifest(data, 100, stream_size(GOOD) + 1)
    with pytest.raises(TreeError, match="larger than"):
        decode_manifest(b"\0" * (manifest_limit(1) + 1), 1, 10**9)


@pytest.mark.parametrize(
    "doc",
    [
        [2, []],
        [1, {}],
        [1, [["x", ["a"], 1, 0, b"h" * 32]]],
        [1, [["f", "a", 1, 0, b"h" * 32]]],
        [1, [["f", [1], 1, 0, b"h" * 32]]],
        [1, [["f", ["a"], -1, 0, b"h" * 32]]],
        [1, [["f", ["a"], 1.5, 0, b"h" * 32]]],
        [1, [["f", ["a"], 1, 0, b"h" * 31]]],
        [1, [["d", ["a"], 5, 0, b""]]],
        [1, [["f", ["a"], 1, 0o70000, b"h" * 32]]],
        [1, [["f", ["a"], 1, 0]]],
    ],
)
def test_malformed_entries_are_refused(doc: list[object]) -> None:
    data = msgpack.packb(doc, use_bin_type=True)
    with pytest.raises(TreeError):
        decode_manifest(data, 100, len(data) + 1)


def test_an_array_claiming_billions_of_entries_costs_nothing() -> None:
    # msgpack array32 header for 2**32-1 entries, and no entries.
    data = b"\x92\x01\xdd\xff\xff\xff\xff"
    with pytest.raises(TreeError):
        decode_manifest(data, 100_000, len(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_raise_tree_error_only(data: bytes) -> None:
    with contextlib.suppress(TreeError):  # anything else fails the test
        decode_manifest(data, 50, len(data))


def test_layout_counts_files_done() -> None:
    entries = [d("t"), f("t", "a", data=b"12"), f("t", "b", data=b""), f("t", "c", data=b"345")]
    layout = Layout.of(entries, 10)
    assert layout.ends == (12, 12, 15)
    assert [layout.files_done(n) for n in (10, 11, 12, 14, 15)] == [0, 0, 2, 2, 3]


def test_received_modes_stay_within_the_receivers() -> None:
    assert received_mode(f("a", mode=0o4777), 0o644, 0o755) == 0o755
    assert received_mode(f("a", mode=0o777 & ~0o100), 0o600, 0o700) == 0o600
    assert received_mode(f("a", mode=0o700), 0o600, 0o700) == 0o700
    assert received_mode(d("a"), 0o600, 0o700) == 0o700


# -- the sender's walk and stream, the receiver's unpacking ----------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a/b/deep.txt": b"deep",
        "a/empty.txt": b"",
        "ünï 😀/f.bin": os.urandom(70_000),
        "top.txt": b"top",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty-dir").mkdir()
    return files


def stream_of(roots: list[Path]) -> tuple[bytes, int, int]:
    tree = build_tree(roots)
    data = tree.pread(tree.total_size + 10, 0)
    assert len(data) == tree.total_size
    # Any cut reads the same bytes.
    assert b"".join(tree.pread(7, o) for o in range(0, tree.total_size, 7)) == data
    return data, len(tree.manifest), tree.files


def sample(tmp: Path) -> tuple[Path, bytes, int, Path]:
    """A tree at ``tmp/src``: (it, its stream, its manifest's bytes, an empty inbox)."""
    src = tmp / "src"
    make_tree(src)
    data, manifest, _ = stream_of([src])
    inbox = tmp / "inbox"
    inbox.mkdir()
    return src, data, manifest, inbox


def store(inbox: Path, data: bytes, manifest: int, max_files: int = 100) -> list[str]:
    inbox.mkdir(exist_ok=True)
    part = ".src.0123.part"
    fd = os.open(inbox / part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        return unpack(TreeBuilder(inbox, part, manifest, len(data), max_files, 0o644, 0o755), fd)
    finally:
        os.close(fd)
        os.unlink(inbox / part)


def listing(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out


def test_a_folder_goes_through_the_stream_whole(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    (src / "a" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "a" / "run.sh", 0o755)
    data, manifest, count = stream_of([src])
    assert count == len(files) + 1
    inbox = tmp_path / "inbox"
    assert store(inbox, data, manifest) == ["src"]
    assert listing(inbox / "src") == listing(src)
    assert os.stat(inbox / "src" / "a" / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(inbox / "src" / "top.txt").st_mode & 0o777 == 0o644
    assert not (inbox / hidden_name(".src.0123.part")).exists()
    # Again: the clash renames the top folder, the first stays as it was.
    assert store(inbox, data, manifest) == ["src.1"]
    assert listing(inbox / "src.1") == listing(src)
    # An empty directory in the way is not replaced either.
    (inbox / "src.2").mkdir()
    assert store(inbox, data, manifest) == ["src.3"]
    assert sorted(os.listdir(inbox)) == ["src", "src.1", "src.2", "src.3"]


@pytest.mark.parametrize("rename", ["renameat2", "no renameat2"])
def test_a_tree_whose_second_top_finds_no_name_leaves_nothing_under_a_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rename: str
) -> None:
    """A file and a folder sent together (in the stream's order): the file
    is moved into the inbox, then every name the folder could take is
    taken. The file goes back (all or nothing: it stayed in the inbox, and
    a send again stored it a second time), and the error says why: the
    inbox's state, an OSError (the part is kept), not a bad tree. Where
    there is no renameat2 (names reserved by a link or a mkdir), the same."""
    if rename == "no renameat2":
        monkeypatch.setattr(tree_store, "_libc", None)
    src = tmp_path / "src"
    make_tree(src)
    note = tmp_path / "a-note.txt"
    note.write_bytes(b"a note")
    data, manifest, _ = stream_of([note, src])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for candidate in candidate_names("src"):
        (inbox / candidate).touch()
    before = sorted(os.listdir(inbox))
    with pytest.raises(FileExistsError, match="no free name in the inbox for 'src'"):
        store(inbox, data, manifest)
    assert sorted(os.listdir(inbox)) == before
    (inbox / "src.1").unlink()  # room for one
    assert store(inbox, data, manifest) == ["a-note.txt", "src.1"]
    assert listing(inbox / "src.1") == listing(src)
    assert (inbox / "a-note.txt").read_bytes() == b"a note"


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, 200_000), max_size=12))
def test_a_tree_fed_in_any_pieces_is_the_same_tree(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int]
) -> None:
    """The stream fed as it arrives (pieces of any size, splitting the
    manifest, files and empty files anywhere) builds the same tree, hidden
    until published."""
    src, data, manifest, inbox = sample(tmp_path_factory.mktemp("fed"))
    part = ".src.0123.part"
    b = TreeBuilder(inbox, part, manifest, len(data), 100, 0o644, 0o755)
    at = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        b.feed(data[at:cut])
        at = max(at, cut)
        assert b.error is None
        assert os.listdir(inbox) in ([], [hidden_name(part)])  # nothing under a final name
    assert b.complete
    assert listing(inbox / hidden_name(part) / "src") == listing(src)
    b.discard()  # (publishing: the tests of unpack, which feeds the same builder)
    assert os.listdir(inbox) == []


@pytest.mark.parametrize("where", ["manifest", "content", "extra"])
def test_a_stream_that_breaks_a_rule_builds_nothing(tmp_path: Path, where: str) -> None:
    """A wrong hash (found when the file's last byte is fed) or a rule broken
    in the manifest ends the build at once and removes what was built."""
    _, data, manifest, inbox = sample(tmp_path)
    size = len(data)
    if where == "manifest":
        data = data[:5] + b"\xc1" + data[6:]  # a byte msgpack never uses
    elif where == "content":
        data = data[:-1] + bytes([data[-1] ^ 1])  # the last file's last byte
    b = TreeBuilder(inbox, ".src.0123.part", manifest, size, 100, 0o644, 0o755)
    b.feed(data[: size // 2])
    b.feed(data[size // 2 :] + (b"more" if where == "extra" else b""))
    assert isinstance(b.error, TreeError), b.error
    assert os.listdir(inbox) == []
    with pytest.raises(TreeError):
        b.publish()
    b.discard()


class StopAfter(threading.Event):
    """Set once it has been asked ``n`` times: the node stopping mid-tree."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


@pytest.mark.parametrize("checks", [0, 3])
def test_a_stopping_node_ends_a_tree_mid_way_and_leaves_only_the_part(
    tmp_path: Path, checks: int
) -> None:
    _, data, manifest, inbox = sample(tmp_path)
    part = ".src.0123.part"
    (inbox / part).write_bytes(data)
    fd = os.open(inbox / part, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as stopped:
            stop = StopAfter(checks)
            unpack(TreeBuilder(inbox, part, manifest, len(data), 100, 0o644, 0o755, stop), fd)
    finally:
        os.close(fd)
    assert stopped.value.errno == errno.ECANCELED
    assert os.listdir(inbox) == [part]  # no tree, hidden or final; the part as it was
    assert (inbox / part).read_bytes() == data


def test_several_roots_arrive_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_bytes(b"1")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "two.txt").write_bytes(b"2")
    data, manifest, _ = stream_of([tmp_path / "one.txt", tmp_path / "dir"])
    inbox = tmp_path / "inbox"
    assert store(inbox, data, manifest) == ["dir", "one.txt"]
    assert (inbox / "one.txt").read_bytes() == b"1"
    assert (inbox / "dir" / "two.txt").read_bytes() == b"2"
    with pytest.raises(TreeError, match="two sources"):
        build_tree([tmp_path / "dir", tmp_path / "inbox" / "dir"])


def test_links_and_special_files_are_skipped_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the peer")
    (tmp_path / "outside").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"ok")
    (src / "to-secret").symlink_to(secret)
    (src / "to-dir").symlink_to(tmp_path / "outside")
    (src / "inside").symlink_to("ok")
    os.mkfifo(src / "fifo")
    tree = build_tree([src])
    assert sorted(Path(p).name for p in tree.skipped) == ["fifo", "inside", "to-dir", "to-secret"]
    data = tree.pread(tree.total_size, 0)
    assert b"not for the peer" not in data
    assert [e.text for e in tree.layout.entries] == ["src", "src/ok"]


def test_a_name_the_receiver_would_refuse_is_refused_by_the_sender(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad\nname").write_bytes(b"x")
    with pytest.raises(TreeError, match="cannot be sent"):
        build_tree([src])


def test_a_file_not_matching_its_hash_stores_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    data, manifest, _ = stream_of([src])
    tampered = data[:-1] + bytes([data[-1] ^ 1])  # the last file's last byte
    inbox = tmp_path / "inbox"
    with pytest.raises(TreeError, match="does not match its hash"):
        store(inbox, tampered, manifest)
    assert os.listdir(inbox) == []


def test_a_hostile_manifest_creates_nothing(tmp_path: Path) -> None:
    entries = [d("ok"), f("ok", "a"), f("..", data=b"x")]
    raw = msgpack.packb(
        [1, [[e.kind.value, list(e.path), e.size, e.mode, e.digest] for e in entries]]
    )
    inbox = tmp_path / "inbox"
    with pytest.raises(TreeError):
        store(inbox, raw + b"xx", len(raw))
    assert os.listdir(inbox) == []
    assert os.listdir(tmp_path) == ["inbox"]


def test_hidden_trees_a_crash_left_are_swept_once_their_part_is_gone(tmp_path: Path) -> None:
    (tmp_path / ".a.1.tree" / "a" / "b").mkdir(parents=True)
    (tmp_path / ".a.1.tree" / "a" / "b" / "f").write_bytes(b"x")
    (tmp_path / ".b.2.tree").mkdir()
    (tmp_path / ".b.2.part").write_bytes(b"")  # resumable: its tree stays
    (tmp_path / "c.tree").mkdir()  # not hidden: a received folder
    (tmp_path / ".d.3.tree").write_bytes(b"")  # not a folder
    assert sweep_trees(tmp_path) == [".a.1.tree"]
    assert sorted(os.listdir(tmp_path)) == [".b.2.part", ".b.2.tree", ".d.3.tree", "c.tree"]


def test_a_folder_taking_the_receivers_own_names_is_never_built(tmp_path: Path) -> None:
    # Delivered, it would be swept as a crash's leftover; inside a folder such names are fine.
    entries = [d(".photos.abc.tree"), f(".photos.abc.tree", ".x.1.part", data=b"x")]
    raw = msgpack.packb(
        [1, [[e.kind.value, list(e.path), e.size, e.mode, e.digest] for e in entries]]
    )
    inbox = tmp_path / "inbox"
    with pytest.raises(TreeError, match="own files"):
        store(inbox, raw + b"x", len(raw))
    assert os.listdir(inbox) == []
    ok = [d("photos"), f("photos", ".x.1.part", data=b"x")]
    assert decode(ok) == ok


def test_the_senders_walk_is_bounded_in_count_and_depth(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x")
    assert build_tree([src], max_files=4).files == 3
    with pytest.raises(TreeError, match="more than 3 files and folders"):
        build_tree([src], max_files=3)
    deep = tmp_path / "deep"
    deep.joinpath(*["d"] * MAX_DEPTH).mkdir(parents=True)
    with pytest.raises(TreeError, match=f"deeper than {MAX_DEPTH} levels"):
        build_tree([deep])


def test_a_deeply_nested_manifest_is_refused_in_bounded_memory() -> None:
    # Lists of lists, each under the old whole-document array limit: decoded
    # at once they cost about 1.8 GiB; streamed, the first row is refused.
    max_files = 100_000
    data = msgpack.packb([1, [[[]] * 99_999] * 255], use_bin_type=True)
    assert len(data) <= manifest_limit(max_files)  # within the byte limit, as a peer may send
    tracemalloc.start()
    try:
        with pytest.raises(TreeError):
            decode_manifest(data, max_files, len(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak


def test_a_valid_deep_manifest_is_held_in_a_few_times_its_bytes() -> None:
    """Every entry 63 folders deep (two-letter names: each row near the
    256-byte budget) is a valid manifest a member may send: the entries
    kept hold their parents' components, not a string per component of
    every path (17 times the manifest's bytes; 389 MiB for 100,000 entries,
    while the rest of the stream trickles in)."""
    depth, files = 63, 20_000
    dirs = tuple(f"a{i % 10}" for i in range(depth))
    empty = blake3.blake3(b"").digest()
    entries = [TreeEntry(Kind.DIR, dirs[:d]) for d in range(1, depth + 1)]
    entries += [TreeEntry(Kind.FILE, (*dirs, f"{i:05x}"), 0, 0o644, empty) for i in range(files)]
    data = encode_manifest(entries)
    del entries
    tracemalloc.start()
    try:
        decoded = decode_manifest(data, files + depth, len(data))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(decoded) == files + depth and decoded[-1].path == (*dirs, f"{files - 1:05x}")
    assert held < 4 * len(data), (held, len(data))


def test_bytes_after_the_entries_are_refused() -> None:
    data = encode_manifest(GOOD) + b"\x00"
    with pytest.raises(TreeError, match="after"):
        decode_manifest(data, 100, stream_size(GOOD) + 1)


def test_a_stored_folders_stamp_changes_with_any_entry_and_follows_no_link(
    tmp_path: Path,
) -> None:
    """What the table of delivered folders compares (actors/tree_store.py,
    stamp_tree): the same until an entry anywhere under the stored names is
    written, added, removed, renamed or has its mode changed; None once one
    of them is gone or the folder holds more than the table walks."""
    inbox = tmp_path / "inbox"
    (inbox / "album" / "sub").mkdir(parents=True)
    (inbox / "album" / "sub" / "a").write_bytes(b"a")
    (inbox / "album" / "b").write_bytes(b"b")
    (inbox / "note").write_bytes(b"n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x")
    (inbox / "album" / "link").symlink_to(outside)  # a link is an entry, not followed

    stamp = stamp_tree(inbox, ["album", "note"])
    assert stamp is not None and stamp.tops == ("album", "note") and stamp.entries == 6
    assert stamp_tree(inbox, ["album", "note"]) == stamp
    (outside / "more").write_bytes(b"beyond the link")
    assert stamp_tree(inbox, ["album", "note"]) == stamp
    assert stamp_tree(inbox, ["note", "album"]) != stamp  # other names, other order

    def changes(change: Callable[[], object]) -> None:
        before = stamp_tree(inbox, ["album", "note"])
        change()
        assert stamp_tree(inbox, ["album", "note"]) != before

    ns = 10**9
    changes(lambda: os.utime(inbox / "album" / "sub" / "a", ns=(5 * ns, 5 * ns)))
    changes(lambda: (inbox / "album" / "sub" / "c").write_bytes(b""))
    changes(lambda: (inbox / "album" / "sub" / "c").unlink())
    changes(lambda: os.rename(inbox / "album" / "b", inbox / "album" / "b2"))
    changes(lambda: os.chmod(inbox / "album" / "b2", 0o600))
    changes(lambda: (inbox / "note").write_bytes(b"m"))
    # Gone: none.
    os.unlink(inbox / "note")
    assert stamp_tree(inbox, ["album", "note"]) is None
    # More than the table walks: none (and the walk stops there).
    many = inbox / "many"
    many.mkdir()
    for i in range(MAX_TREE_ENTRIES - 1):
        (many / str(i)).write_bytes(b"")
    assert stamp_tree(inbox, ["many"]) is not None  # the folder and its files
    (many / "one more").write_bytes(b"")
    assert stamp_tree(inbox, ["many"]) is None


def test_a_stored_file_written_to_with_its_mtime_put_back_changes_the_stamp(
    tmp_path: Path,
) -> None:
    """Its ctime, which no one can set, is in the stamp: new bytes under the
    same size and mtime are not the folder stored."""
    inbox = tmp_path / "inbox"
    (inbox / "album").mkdir(parents=True)
    photo = inbox / "album" / "photo"
    photo.write_bytes(b"a" * 100)
    before = os.lstat(photo)
    stamp = stamp_tree(inbox, ["album"])
    assert stamp is not None
    with open(photo, "r+b") as f:
        f.write(b"b")
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.lstat(photo)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert stamp_tree(inbox, ["album"]) != stamp


def test_a_stored_folders_stamp_through_a_linked_inbox(tmp_path: Path) -> None:
    """The inbox itself may be a link (it is configured, not received): its
    folders are stamped as they are; a link inside it is still not followed."""
    inbox = tmp_path / "inbox"
    (inbox / "album").mkdir(parents=True)
    (inbox / "album" / "a").write_bytes(b"a")
    linked = tmp_path / "linked"
    linked.symlink_to(inbox)
    stamp = stamp_tree(linked, ["album"])
    assert stamp is not None and stamp == stamp_tree(inbox, ["album"]) and stamp.entries == 2
    (inbox / "alias").symlink_to(inbox / "album")
    alias = stamp_tree(linked, ["alias"])
    assert alias is not None and alias.entries == 1  # the link, not the folder behind it


def test_a_slow_walk_of_a_stored_folder_gives_no_stamp(tmp_path: Path) -> None:
    """Past its time (a slow disk), the walk stops: no stamp, so a re-offer
    is a fresh transfer rather than a wait in the receiver's loop."""
    inbox = tmp_path / "inbox"
    (inbox / "album").mkdir(parents=True)
    (inbox / "album" / "a").write_bytes(b"a")
    assert stamp_tree(inbox, ["album"]) is not None
    assert stamp_tree(inbox, ["album"], seconds=-1.0) is None


def test_a_grown_stored_folder_is_walked_in_bounded_memory(tmp_path: Path) -> None:
    """A stored folder grown deep, every level holding nearly the bound of
    names: the walk lists at most one name past the bound in all (not per
    folder), so it stops early, holding a few thousand names at most."""
    inbox = tmp_path / "inbox"
    level = inbox / "album"
    for _ in range(20):
        level.mkdir(parents=True)
        for i in range(MAX_TREE_ENTRIES - 24):
            (level / f"f{i:04}-{'x' * 40}").touch()
        level = level / "0"  # sorted first: the walk goes down before the files
    tracemalloc.start()
    try:
        assert stamp_tree(inbox, ["album"], seconds=60.0) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak
