"""Folders and many files in one transfer, between real nodes on loopback
(peercrypt/core/tree.py, actors/tree_source.py, actors/tree_store.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from actors.inbox import load_manifest, manifest_name, scan
from peercrypt.cli.app import main
from peercrypt.cli.shell import Shell
from peercrypt.core.tree import Kind, TreeEntry, encode_manifest
from peercrypt.crypto.identity import fingerprint
from peercrypt.sizes import readable
from peercrypt.testing.disk import StallingDisk
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import NodeProcess, cli_env, start_cli, wait_until
from peercrypt.testing.trees import contents, d, f, raw_manifest, row, sample_tree
from peercrypt.wire.messages import Ack, Failed, Refuse, Verified, Verifying

WAIT = 30.0
Nodes = Callable[..., NodeProcess]


def test_a_folder_arrives_whole_and_a_second_one_beside_it(
    tmp_path: Path, node_factory: Nodes
) -> None:
    receiver, sender = node_factory(), node_factory()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"must not leave the sender")
    src = tmp_path / "photos"
    (tmp_path / "photos").mkdir()
    (src / "leak").symlink_to(secret)
    expected = {k: v for k, v in sample_tree(src, tmp_path).items() if k != "leak"}

    result = sender.send_result(src, receiver.host, receiver.port)
    assert result.returncode == 0, result.describe()
    out = result.json
    assert out["stored_as"] == "photos" and out["files"] == 3 and out["skipped"] == 2

    # Its history says the files' own bytes beside the stream's size.
    def size_line() -> str | None:
        shown = sender.cli("stats", "show", "last")
        lines = [line for line in shown.stdout.splitlines() if line.startswith("size ")]
        return lines[0] if shown.returncode == 0 and "file(s)" in lines[0] else None

    size = wait_until(size_line, WAIT, "the send's history row")
    assert size.endswith(f"; 3 file(s) of {out['file_bytes']} bytes and their list)"), size
    assert f"({out['size']} bytes, " in size and out["size"] > out["file_bytes"], (size, out)
    inbox = receiver.inbox
    assert contents(inbox / "photos") == expected
    assert os.stat(inbox / "photos" / "run.sh").st_mode & 0o111
    assert not os.stat(inbox / "photos" / "2026" / "empty.txt").st_mode & 0o111
    assert b"must not leave" not in b"".join(
        p.read_bytes() for p in inbox.rglob("*") if p.is_file()
    )

    # The folder again with a file more (the same one again is had already,
    # tests/test_delivered_tree_e2e.py): the top folder is renamed, the first
    # untouched; the warning about the links is one line on stderr.
    (src / "more.txt").write_bytes(b"more")
    again = sender.cli("send", src, receiver.host, str(receiver.port), "--no-progress")
    assert again.returncode == 0, again.describe()
    assert "as photos.1 " in again.stdout and "4 files" in again.stdout
    assert again.stderr_lines == [
        "peercrypt: warning: 2 symbolic link(s) or special file(s) were not sent"
    ]
    assert contents(inbox / "photos.1") == {
        **expected,
        "more.txt": blake3.blake3(b"more").hexdigest(),
    }
    assert contents(inbox / "photos") == expected
    assert sorted(os.listdir(inbox)) == ["photos", "photos.1"]  # no part, no hidden tree left

    # Several files and a folder in one transfer arrive side by side.
    (tmp_path / "note.txt").write_bytes(b"note")
    several = sender.cli(
        "send", tmp_path / "note.txt", src / "2026", receiver.host, str(receiver.port), "--json"
    )
    assert several.returncode == 0, several.describe()
    assert several.json["stored_as"] == "2026, note.txt"
    assert (inbox / "note.txt").read_bytes() == b"note"
    assert contents(inbox / "2026") == contents(src / "2026")

    # The same from the shell (a script on stdin runs each line).
    (tmp_path / "viashell" / "sub").mkdir(parents=True)
    (tmp_path / "viashell" / "sub" / "s.txt").write_bytes(b"shell")
    line = f"send {tmp_path / 'viashell'} {receiver.host} {receiver.port} --json\n"
    shell = subprocess.run(
        [sys.executable, "-m", "peercrypt", "--data-dir", str(sender.data_dir), "shell"],
        input=line, capture_output=True, text=True, env=cli_env(), timeout=120, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert (inbox / "viashell" / "sub" / "s.txt").read_bytes() == b"shell"

    # Both sides' history records the file count.
    for node, side in ((sender, "send"), (receiver, "receive")):

        def counts(node: NodeProcess = node, side: str = side) -> list[str] | None:
            rows = json.loads(node.cli("stats", "list", "--json").stdout)
            done = [r for r in rows if r["side"] == side and r["result"] == "ok"]
            return sorted(r["params"].get("files") for r in done) if len(done) == 4 else None

        assert wait_until(counts, WAIT, f"4 {side} rows") == ["1", "3", "3", "4"]


def test_ten_thousand_files_in_one_transfer(tmp_path: Path, node_factory: Nodes) -> None:
    receiver, sender = node_factory(), node_factory()
    src = tmp_path / "many"
    for n in range(50):
        folder = src / f"d{n:02}"
        folder.mkdir(parents=True)
        for i in range(200):
            (folder / f"f{i:03}").write_bytes(os.urandom(16))
    sent = sender.cli("send", src, receiver.host, str(receiver.port), "--progress", timeout=120)
    assert sent.returncode == 0, sent.describe()
    assert "sent many (10000 files, " in sent.stdout
    assert "/10000 files" in sent.stderr  # the one bar counts files too
    assert contents(receiver.inbox / "many") == contents(src)


def test_a_folder_of_no_file_says_so_and_its_bytes(tmp_path: Path, node_factory: Nodes) -> None:
    """Its line counts the files' bytes, 0, not its listing's."""
    receiver, sender = node_factory(), node_factory()
    (tmp_path / "hollow" / "inner").mkdir(parents=True)
    out = sender.send_result(tmp_path / "hollow", receiver.host, receiver.port)
    assert out.returncode == 0, out.describe()
    assert (out.json["file_bytes"], out.json["stats"]["files"]) == (0, 0.0), out.json
    assert out.json["size"] > 0  # the listing of the folders crossed
    assert (receiver.inbox / "hollow" / "inner").is_dir()
    plain = sender.cli("send", tmp_path / "hollow", receiver.host, str(receiver.port))
    assert plain.returncode == 0, plain.describe()
    assert plain.stdout.startswith("sent hollow (0 files, 0 bytes) to "), plain.stdout


def test_cli_refuses_what_it_cannot_send_as_one(tmp_path: Path, node_factory: Nodes) -> None:
    sender = node_factory()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1")
    (tmp_path / "b" / "x").write_bytes(b"2")
    twice = (
        "peercrypt: error: two of the files to send have the same name, 'x': "
        "the receiver stores each under its name; send them one by one"
    )
    same = sender.cli("send", tmp_path / "a" / "x", tmp_path / "b" / "x", "127.0.0.1", "9")
    assert same.returncode == 2
    assert same.stderr_lines == [twice]
    multi = sender.cli("send", tmp_path / "a" / "x", tmp_path / "b" / "x", "127.0.0.1", "9", "-m")
    assert multi.returncode == 2  # by multicast too
    assert multi.stderr_lines == [twice]
    (tmp_path / "a" / "bad\nname").write_bytes(b"3")
    bad = sender.cli("send", tmp_path / "a", "127.0.0.1", str(sender.port), "--force")
    assert bad.returncode == 2, bad.describe()
    odd = str(tmp_path / "a" / "bad\nname")
    assert bad.stderr_lines == [
        f"peercrypt: error: cannot send {tmp_path / 'a'}: {odd!r}: "
        "the name cannot be sent as it is (it holds an invisible or control character): rename it"
    ], bad.describe()
    # Too deep, under a long path: the reason is kept, the path loses its middle.
    deep = tmp_path / "deep"
    deep.joinpath(*[f"level_directory_{n}" for n in range(1, 121)]).mkdir(parents=True)
    too_deep = sender.cli("send", deep, "127.0.0.1", str(sender.port), "--force")
    assert too_deep.returncode == 2, too_deep.describe()
    (line,) = too_deep.stderr_lines
    assert line.startswith(f"peercrypt: error: cannot send {deep}: {deep}/level_directory_1/")
    assert line.endswith("/level_directory_64: deeper than 64 levels"), line
    assert "…" in line and len(line) <= len("peercrypt: error: ") + 500


# -- a hostile sender (a member with the network key) ------------------------------------


def offer_tree(h: HostileSender, manifest: bytes, body: bytes, files: int) -> HostileTransfer:
    t = h.offer("evil", len(manifest) + len(body), 64 * 1024, tree=len(manifest), files=files)
    assert isinstance(t, HostileTransfer), t
    return t


def test_hostile_trees_store_nothing_and_the_node_goes_on(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    receiver = node_factory("--tree-max-files", "1000")
    inbox = receiver.inbox
    x = b"payload"
    cases: dict[str, tuple[bytes, bytes, int]] = {}

    def case(name: str, rows: list[list[Any]], body: bytes = x) -> None:
        cases[name] = (raw_manifest(rows), body, len(rows))

    case("dot-dot", [row(f("..", data=x))])
    case("dot-dot-below", [row(d("ok")), row(f("ok", "..", data=x))])
    case("absolute", [row(d("")), row(f("", "etc", data=x))])
    case("slash", [row(f("a/../../b", data=x))])
    case("nul", [row(f("a\x00b", data=x))])
    case("duplicate", [row(f("a", data=x)), row(f("a", data=b""))])
    case("file-as-parent", [row(f("a", data=x)), row(f("a", "b", data=b""))])
    case("undeclared-parent", [row(f("a", "b", data=x))])
    case("sizes-lie", [row(TreeEntry(Kind.FILE, ("a",), 3, 0o644, b"h" * 32))])
    case("hash-mismatch", [row(d("t")), row(f("t", "a", data=b"other!!"))])
    cases["garbage"] = (b"\xc1" * 20, x, 1)
    cases["billions"] = (b"\x92\x01\xdd\xff\xff\xff\xff", x, 1)  # an array of 2**32-1

    with HostileSender(network_key, receiver.host, receiver.port) as h:
        for name, (manifest, body, files) in cases.items():
            t = offer_tree(h, manifest, body, files)
            failed = t.send_stream(manifest + body)
            assert isinstance(failed, Failed) and failed.code == "bad-tree", (name, failed)
            assert os.listdir(inbox) == [], (name, os.listdir(inbox))
        # Beyond the receiver's limit: refused before any byte moves.
        too_many = h.offer("evil", 10**6, 64 * 1024, tree=1000, files=1001)
        assert isinstance(too_many, Refused) and isinstance(too_many.answer, Refuse)
        assert too_many.answer.code == "too-many-files"
        big = h.offer("evil", 10**9, 1 << 20, tree=10**8, files=10)
        assert isinstance(big, Refused) and big.answer.code == "too-many-files"  # type: ignore[attr-defined]
        lies = h.offer("evil", 10, 64 * 1024, tree=11, files=1)
        assert isinstance(lies, Refused) and lies.answer.code == "bad-offer"  # type: ignore[attr-defined]

        # The node goes on: a well-formed tree from the same member is stored.
        entries = [d("fine"), f("fine", "ok.txt", data=x)]
        good = encode_manifest(entries)
        t = offer_tree(h, good, x, 1)
        stored = t.send_stream(good + x)
        assert isinstance(stored, Verified) and stored.stored_as == "fine", stored
    assert (inbox / "fine" / "ok.txt").read_bytes() == x
    assert sorted(os.listdir(inbox)) == ["fine"]
    wait_until(
        lambda: receiver.counters().get("receiver.tree-bad-tree") == len(cases), WAIT, "the count"
    )


def test_an_interrupted_folder_resumes_where_it_stopped(
    tmp_path: Path, node_factory: Nodes
) -> None:
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    src = tmp_path / "tree"
    for i in range(8):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(2 << 20))
    chunk = ("--chunk-size", str(64 * 1024))
    proc = start_cli(
        "send", str(src), "127.0.0.1", str(receiver.port), "--json", *chunk,
        "-r", str(12 << 20), data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        wait_until(lambda: held(receiver.inbox) > 0 or proc.poll() is not None, WAIT, "a part")
        receiver.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)
    kept = held(receiver.inbox)
    assert kept > 0
    receiver.start()
    again = sender.send_result(src, "127.0.0.1", receiver.port, *chunk, timeout=120)
    assert again.returncode == 0, again.describe()
    assert again.json["stats"]["resumed_chunks"] == kept
    assert contents(receiver.inbox / "tree") == contents(src)
    assert sorted(os.listdir(receiver.inbox)) == ["tree"]


def held(inbox: Path) -> int:
    """Chunks the kept part's manifest lists (0 while there is none)."""
    found = scan(inbox)
    if not found.manifests:
        return 0
    (m,) = found.manifests
    return load_manifest(inbox, manifest_name(m.part)).held().count


def test_a_folder_is_admitted_only_with_room_for_its_part_and_its_tree(
    tmp_path: Path, node_factory: Nodes, small_disk: Callable[[str], Path]
) -> None:
    """A folder takes twice its size while its tree is built beside its
    part: one that fits only once is refused before a byte is written."""
    small = small_disk("2m")
    receiver = node_factory("--inbox", str(small), name="receiver")
    sender = node_factory(name="sender")
    src = tmp_path / "big"
    src.mkdir()
    for i in range(12):  # 1.2 MiB: its part fits, the part and the tree do not
        (src / f"f{i:02}").write_bytes(os.urandom(100 * 1024))
    code, out = sender.send_to(src, receiver)
    assert out["code"] == "refused" and code != 0, out
    assert "not enough space in the inbox" in out["error"], out
    assert os.listdir(small) == []  # refused up front: nothing written
    receiver.stop()


def open_files(pid: int) -> list[str]:
    """What the process's descriptors point to, sockets and anonymous inodes left out."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if not target.startswith(("socket:", "anon_inode:")):
            found.append(target)
    return sorted(found)


def _huge_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder "huge" holding one sparse file of 256 GiB: minutes of
    hashing before its offer, no disk. (The folder, the file.)"""
    src = tmp_path / "huge"
    src.mkdir()
    big = src / "sparse.bin"
    with open(big, "wb") as fh:
        fh.truncate(256 << 30)
    return src, big


def test_a_folder_send_cancelled_while_hashing_stops_its_walk(
    tmp_path: Path, node_factory: Nodes
) -> None:
    """Ctrl-C while the sender hashes a huge (sparse) file: the walk stops,
    its pipe is closed at both ends, and no traceback reaches the log."""
    receiver, sender = node_factory(), node_factory()
    src, big = _huge_folder(tmp_path)
    before = [t for t in open_files(sender.pid) if t.startswith("pipe:")]
    args = ["send", str(src), receiver.host, str(receiver.port), "--timeout", "30"]
    with start_cli(*args, data_dir=sender.data_dir) as cli:
        try:
            wait_until(lambda: str(big) in open_files(sender.pid), WAIT, "the walk hashing")
            cli.send_signal(signal.SIGINT)
            _, stderr = cli.communicate(timeout=WAIT)
        finally:
            cli.kill()
    assert cli.returncode == 130, stderr

    def walk_files() -> set[str]:  # the walk's pipe ends and the file it hashes
        now = {t for t in open_files(sender.pid) if t.startswith("pipe:") or t == str(big)}
        return now - set(before)  # a pipe the node had before may close meanwhile

    wait_until(lambda: not walk_files(), 15.0, "the walk's file and pipe closed")
    assert sender.status()["pid"] == str(sender.pid)  # the node carries on
    assert os.listdir(receiver.inbox) == []  # nothing was offered
    log = sender.log_text()
    assert "Traceback" not in log and "BrokenPipe" not in log, log[-2000:]


@pytest.mark.parametrize("multicast", [False, True], ids=["unicast", "multicast"])
def test_a_folder_being_hashed_is_listed_and_cancelled_by_its_id(
    tmp_path: Path, node_factory: Nodes, multicast: bool
) -> None:
    """While the sender reads and hashes a folder before its offer,
    `transfers` lists it (state walking, the bytes hashed so far growing, the
    size not known yet) and `peercrypt cancel ID` stops it: code cancelled,
    exit 1, the walk's file closed, nothing offered."""
    receiver, sender = node_factory(), node_factory()
    src, big = _huge_folder(tmp_path)
    args = ["send", str(src), receiver.host, str(receiver.port), "--json", "--timeout", "60"]
    if multicast:
        args.append("-m")
    with start_cli(*args, data_dir=sender.data_dir) as cli:
        try:

            def walking(past: int) -> dict[str, str] | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout or "[]")
                row = next((r for r in rows if r["state"] == "walking"), None)
                return row if row is not None and int(row["bytes"]) > past else None

            row = wait_until(lambda: walking(0), WAIT, "the folder listed as walking")
            assert (row["file"], row["size"]) == (str(src), None), row  # not known yet
            assert row["mode"] == ("multicast" if multicast else "normal"), row
            assert row["peer"] == f"{receiver.host}:{receiver.port}", row
            later = wait_until(lambda: walking(int(row["bytes"])), WAIT, "more bytes hashed")
            assert later["id"] == row["id"], (row, later)
            # The shell's line under its prompt, from these rows (its size unknown):
            shell = Shell(main, {"data_dir": sender.data_dir}, owns_node=False)
            shell.view.transfers = [later]
            assert shell.toolbar() == f"send huge {readable(int(later['bytes']))} (walking)"
            done = sender.cli("cancel", str(row["id"]))
            assert done.returncode == 0, done.describe()
            out, err = cli.communicate(timeout=WAIT)
        finally:
            cli.kill()
    result = json.loads(out)
    assert (cli.returncode, result["code"]) == (1, "cancelled"), (result, err)
    wait_until(lambda: str(big) not in open_files(sender.pid), 15.0, "the walk's file closed")
    assert json.loads(sender.cli("transfers", "--json").stdout) == []
    assert os.listdir(receiver.inbox) == []  # nothing was offered


def test_the_receiver_says_it_is_verifying_before_its_verdict(
    stalling_disk: Callable[..., StallingDisk], node_factory: Nodes, network_key: str
) -> None:
    """Each Done that finds the receiver checking gets a sealed verifying
    (what keeps a real sender waiting through a long check), then the
    verdict. The check is held in a disk that stopped answering: a check of
    a small folder on a fast disk can end before the first Done is read."""
    disk = stalling_disk(24 * 1024 * 1024)
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    x = b"verify me" * 1000
    manifest = encode_manifest([d("v"), f("v", "x.bin", data=x)])
    digest = blake3.blake3(manifest + x).digest()
    seen: list[Any] = []
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as h:
            t = offer_tree(h, manifest, x, 1)
            for index in range(t.total):
                t.send_chunk(index, (manifest + x)[index * 64 * 1024 : (index + 1) * 64 * 1024])
            t.acked(t.total)  # every chunk written: what is left is the check
            disk.stall()
            deadline = time.monotonic() + WAIT
            while sum(isinstance(m, Verifying) for m in seen) < 2:  # one per Done while held
                assert time.monotonic() < deadline, seen
                assert not any(isinstance(m, Verified | Failed) for m in seen), seen
                t.send_done(digest)
                seen += [m for m in t.replies(0.2) if not isinstance(m, Ack)]
            disk.resume()
            while not any(isinstance(m, Verified | Failed) for m in seen):
                assert time.monotonic() < deadline, seen
                t.send_done(digest)
                seen += [m for m in t.replies(0.2) if not isinstance(m, Ack)]
    finally:
        disk.resume()  # before the node stops: a hung disk holds it
    kinds = [type(m) for m in seen]
    assert Verifying in kinds and kinds[-1] is Verified, seen
    assert kinds.index(Verifying) < kinds.index(Verified)
    assert next(m for m in seen if isinstance(m, Verifying)).chunks == t.total
    checked = [m.done_bytes for m in seen if isinstance(m, Verifying)]
    assert checked == sorted(checked) and checked[-1] <= len(manifest + x), checked
    assert (disk.path / "v" / "x.bin").read_bytes() == x


def test_a_folder_verified_and_being_stored_cannot_be_cancelled_and_is_stored(
    stalling_disk: Callable[..., StallingDisk], node_factory: Nodes, network_key: str
) -> None:
    """The whole stream's hash matched and the folder is being made durable
    (its syncfs held in a disk that stopped answering): a cancel is refused
    as too late, one error line and exit 2, and the folder is stored whole
    once the disk answers again."""
    disk = stalling_disk(24 * 1024 * 1024)
    receiver = node_factory("--inbox", str(disk.path), name="receiver")
    x = os.urandom(3000)
    rows = [row(d("late")), row(f("late", "a", data=x))]
    manifest = raw_manifest(rows)
    stream = manifest + x
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as h:
            t = h.offer("late", len(stream), 64 * 1024, tree=len(manifest), files=len(rows))
            assert isinstance(t, HostileTransfer), t
            t.send_chunk(0, stream)
            rows_in = lambda: json.loads(receiver.status().get("incoming", "[]"))  # noqa: E731
            ident = wait_until(
                lambda: next((str(r[3]) for r in rows_in() if r[2] == r[1]), None),
                WAIT,
                "the stream written",
            )

            def built() -> bool | None:  # the build caught up: nothing left to write
                files = list(disk.path.glob(".late.*.tree/late/a"))
                return (bool(files) and files[0].stat().st_size == len(x)) or None

            wait_until(built, WAIT, "the folder built")
            disk.stall()
            t.send_done(blake3.blake3(stream).digest())
            receiver.wait_for_counter("receiver.trees-verified", 1, WAIT)
            late = receiver.cli("cancel", ident)
            assert late.returncode == 2, late.describe()
            assert late.stderr_lines == [
                f"peercrypt: error: incoming transfer {ident} (late from "
                f"{fingerprint(h.identity.public)}) is verified and being stored: "
                "too late to cancel"
            ], late.describe()
            disk.resume()
            verified = t.wait_for(Verified)
            assert verified.digest == blake3.blake3(stream).digest()
    finally:
        disk.resume()  # before the nodes stop: a hung disk holds them
    assert (disk.path / "late" / "a").read_bytes() == x
    assert receiver.counters_when("receiver.received", 1).get("receiver.cancelled", 0) == 0
