"""No second copy of a folder, with real node processes: a folder sent again,
unchanged, by the same sender to the receiver that stored it is answered
with the earlier verdict (nothing moves, nothing is written, the result
names the stored folder), also after the receiver was killed (-9) and
restarted. A folder that changed at the sender, or whose stored copy changed
or went away at the receiver, is a fresh transfer under a new name; another
identity offering the very same folder learns nothing (peercrypt/core/delivered.py,
TreeStamp; actors/tree_store.py, stamp_tree)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from actors.tree_source import TreeSource, build_tree
from peercrypt.core.delivered import MAX_TREE_ENTRIES
from peercrypt.core.tree import source_tag
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import NodeProcess, wait_until
from peercrypt.testing.trees import contents
from peercrypt.wire.messages import Failed, Verified

pytestmark = pytest.mark.timeout(240)

Nodes = Callable[..., NodeProcess]
CHUNK = 64 * 1024


def _album(root: Path) -> Path:
    """A folder of nested files, an empty file, an empty folder and an
    executable (about 150 KiB): three chunks of CHUNK."""
    album = root / "album"
    (album / "2026" / "ünï").mkdir(parents=True)
    (album / "empty folder").mkdir()
    (album / "2026" / "ünï" / "a.jpg").write_bytes(os.urandom(100_000))
    (album / "2026" / "b.raw").write_bytes(os.urandom(50_000))
    (album / "2026" / "empty.txt").write_bytes(b"")
    (album / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(album / "run.sh", 0o755)
    return album


def _offer(h: HostileSender, tree: TreeSource) -> HostileTransfer | Refused:
    """Offer ``tree`` as a real sender does (name, size, manifest, source tag)."""
    source = source_tag(tree.manifest)
    size, files = tree.total_size, tree.files
    return h.offer("album", size, CHUNK, source=source, tree=len(tree.manifest), files=files)


def _album_stream(root: Path) -> tuple[Path, TreeSource, bytes]:
    """:func:`_album`, the tree a sender builds of it and its whole stream."""
    album = _album(root)
    tree = build_tree([album])
    return album, tree, tree.pread(tree.total_size, 0)


def _store(h: HostileSender, tree: TreeSource, stream: bytes) -> None:
    """``tree`` (whose whole stream is ``stream``) stored as ``album``."""
    first = _offer(h, tree)
    assert isinstance(first, HostileTransfer), first
    verdict = first.send_stream(stream)
    assert isinstance(verdict, Verified) and verdict.stored_as == "album", verdict
    first.close()


def _listing(inbox: Path) -> list[str]:
    """Everything in the inbox, hidden parts and trees too."""
    return sorted(os.listdir(inbox))


def _send(node: NodeProcess, path: Path, receiver: NodeProcess) -> dict[str, Any]:
    result = node.send_result(
        path, receiver.host, receiver.port, "--chunk-size", str(CHUNK), timeout=60
    )
    assert result.returncode == 0, result.describe()
    out: dict[str, Any] = result.json
    return out


def _moved_all(out: dict[str, Any]) -> bool:
    stats = out["stats"]
    return bool(
        stats["resumed_chunks"] == 0
        and stats["sent_chunks"] - stats["retransmits"] == stats["chunks"]
    )


def _had_it(out: dict[str, Any], stored_as: str) -> None:
    stats = out["stats"]
    assert out["ok"] and out["stored_as"] == stored_as, out
    assert stats["sent_chunks"] == 0 and stats["resumed_chunks"] == stats["chunks"], stats


def test_a_folder_sent_again_unchanged_is_not_stored_twice(
    tmp_path: Path, node_factory: Nodes
) -> None:
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    album = _album(tmp_path)
    expected = contents(album)

    first = _send(sender, album, receiver)
    assert first["stored_as"] == "album" and first["files"] == 4, first
    # The files' bytes, not the stream's (its listing of names goes first).
    in_files = sum(p.stat().st_size for p in album.rglob("*") if p.is_file())
    assert first["file_bytes"] == in_files < first["size"], first
    assert _moved_all(first), first["stats"]
    inbox = receiver.inbox
    assert contents(inbox / "album") == expected
    stored_at = {p: os.lstat(p).st_ino for p in (inbox / "album").rglob("*")}

    # Again, as the user sees it: one line saying the receiver had it.
    plain = sender.cli("send", album, receiver.host, str(receiver.port), "--no-progress")
    assert plain.returncode == 0, plain.describe()
    assert re.fullmatch(
        rf"sent album \(4 files, {in_files} bytes\) to {receiver.host}:{receiver.port}"
        rf" as album in [0-9.]+ s \(the receiver had it all: nothing sent\),"
        rf" blake3 {first['blake3']} verified\n",
        plain.stdout,
    ), plain.stdout
    assert plain.stderr_lines == []
    # Nothing written: the same listing, the very same files, no album.1.
    assert _listing(inbox) == ["album"]
    assert contents(inbox / "album") == expected
    assert {p: os.lstat(p).st_ino for p in (inbox / "album").rglob("*")} == stored_at
    assert receiver.wait_for_counter("receiver.delivered-before-verified", 1) == 1

    # The receiver's history: a row of its own, nothing moved, the folder held.
    def echoed() -> list[dict[str, Any]]:
        rows = json.loads(receiver.cli("stats", "list", "--json").stdout)
        return [
            r
            for r in rows
            if r["side"] == "receive" and "delivered_before" in r["params"] and r["result"] == "ok"
        ]

    rows = wait_until(lambda: echoed() or None, 20, "the receiver's history row")
    assert [
        (r["file"], r["bytes"], r["params"]["delivered_before"], r["params"]["files"]) for r in rows
    ] == [("album", first["size"], "album", "4")], rows
    assert rows[0]["stats"]["held_bytes"] == first["size"], rows
    shown = receiver.cli("stats", "show", str(rows[0]["id"])).stdout
    assert re.search(r"^moved +0 B in [0-9.]+ s, had it \(", shown, re.M), shown

    # The table is kept across a kill -9 and a restart.
    receiver.kill()
    receiver.start()
    after = _send(sender, album, receiver)
    _had_it(after, "album")
    assert after["blake3"] == first["blake3"]
    # The sender's history row: nothing moved, the whole stream held already.
    sent = json.loads(sender.cli("stats", "list", "--json").stdout)
    last = max(r["id"] for r in sent if r["side"] == "send" and r["result"] == "ok")
    shown = sender.cli("stats", "show", str(last)).stdout
    kib = f"{first['size'] / 1024:.1f} KiB"
    assert re.search(rf"^moved +0 B in [0-9.]+ s, had it \({kib} held already\)$", shown, re.M), (
        shown
    )
    assert _listing(inbox) == ["album"]
    assert contents(inbox / "album") == expected

    # Several files and folders in one send: had too, under all their names.
    note = tmp_path / "note.txt"
    note.write_bytes(b"note")
    several: list[str | Path] = [album / "2026", note, receiver.host, str(receiver.port), "--json"]
    once = sender.cli("send", *several)
    assert once.returncode == 0 and once.json["stored_as"] == "2026, note.txt", once.describe()
    twice = sender.cli("send", *several)
    assert twice.returncode == 0, twice.describe()
    _had_it(twice.json, "2026, note.txt")
    assert _listing(inbox) == ["2026", "album", "note.txt"]
    assert contents(inbox / "2026") == contents(album / "2026")
    assert (inbox / "note.txt").read_bytes() == b"note"


def test_a_changed_folder_is_a_fresh_transfer(tmp_path: Path, node_factory: Nodes) -> None:
    """Changed at the sender (a file's content, a file added, one removed):
    every chunk moves again and it is stored beside the first, whole."""
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    album = _album(tmp_path)
    first_contents = contents(album)
    first = _send(sender, album, receiver)
    assert first["stored_as"] == "album", first

    # Same size, other bytes: the manifest's hash of it differs.
    target = album / "2026" / "b.raw"
    target.write_bytes(os.urandom(50_000))
    edited = _send(sender, album, receiver)
    assert edited["stored_as"] == "album.1" and _moved_all(edited), edited
    assert edited["blake3"] != first["blake3"]
    assert contents(receiver.inbox / "album.1") == contents(album)
    assert contents(receiver.inbox / "album") == first_contents

    (album / "new.txt").write_bytes(b"added")
    added = _send(sender, album, receiver)
    assert added["stored_as"] == "album.2" and _moved_all(added), added
    assert contents(receiver.inbox / "album.2") == contents(album)

    (album / "run.sh").unlink()
    removed = _send(sender, album, receiver)
    assert removed["stored_as"] == "album.3" and _moved_all(removed), removed
    assert contents(receiver.inbox / "album.3") == contents(album)
    assert _listing(receiver.inbox) == ["album", "album.1", "album.2", "album.3"]

    # And the last one, unchanged since, is had.
    again = _send(sender, album, receiver)
    _had_it(again, "album.3")
    assert _listing(receiver.inbox) == ["album", "album.1", "album.2", "album.3"]


def test_a_stored_folder_changed_or_removed_is_a_fresh_transfer(
    tmp_path: Path, node_factory: Nodes
) -> None:
    """The copy in the receiver's inbox was written to, had a file added or
    was removed since: the offer is a transfer of its own, stored whole
    under a free name; the changed copy is left as it is."""
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    album = _album(tmp_path)
    expected = contents(album)
    inbox = receiver.inbox
    assert _send(sender, album, receiver)["stored_as"] == "album"

    # A file of the stored folder written to (same size).
    with open(inbox / "album" / "2026" / "b.raw", "r+b") as f:
        f.write(b"changed")
    changed = contents(inbox / "album")
    written = _send(sender, album, receiver)
    assert written["stored_as"] == "album.1" and _moved_all(written), written
    assert contents(inbox / "album.1") == expected
    assert contents(inbox / "album") == changed

    # A file added to the stored copy (album.1 is the one remembered now).
    (inbox / "album.1" / "empty folder" / "x").write_bytes(b"")
    added = _send(sender, album, receiver)
    assert added["stored_as"] == "album.2" and _moved_all(added), added
    assert contents(inbox / "album.2") == expected

    # The stored copy removed: stored again, under its free name.
    shutil.rmtree(inbox / "album.2")
    gone = _send(sender, album, receiver)
    assert gone["stored_as"] == "album.2" and _moved_all(gone), gone
    assert contents(inbox / "album.2") == expected

    # That copy, unchanged since: had.
    again = _send(sender, album, receiver)
    _had_it(again, "album.2")
    assert _listing(inbox) == ["album", "album.1", "album.2"]
    assert receiver.wait_for_counter("receiver.delivered-before-verified", 1) == 1


def test_another_identity_offering_the_same_folder_gets_no_verdict(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    """A member with the network key and a fresh identity offers the very
    folder (same name, size, manifest and so source tag) the sender stored:
    its offer holds no chunk, and only the whole stream it sends is stored,
    under a name of its own."""
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    album = _album(tmp_path)
    first = _send(sender, album, receiver)
    assert first["stored_as"] == "album", first

    tree = build_tree([album])
    stream = tree.pread(tree.total_size, 0)
    assert blake3.blake3(stream).hexdigest() == first["blake3"]
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        offered = _offer(h, tree)
        assert isinstance(offered, HostileTransfer), offered
        assert offered.accept is not None and offered.accept.have == [], offered.accept
        verdict = offered.send_stream(stream)
        assert isinstance(verdict, Verified) and verdict.stored_as == "album.1", verdict
    assert receiver.counters().get("receiver.delivered-before", 0) == 0
    assert _listing(receiver.inbox) == ["album", "album.1"]
    assert contents(receiver.inbox / "album.1") == contents(album)


def test_a_folder_past_the_tables_bound_is_not_remembered(
    tmp_path: Path, node_factory: Nodes
) -> None:
    """More entries than the table walks: stored again as a second copy, as
    before, whole."""
    receiver, sender = node_factory(name="receiver"), node_factory(name="sender")
    album = tmp_path / "album"
    album.mkdir()
    for i in range(MAX_TREE_ENTRIES):  # and the folder itself: one past
        (album / f"f{i:04}").write_bytes(i.to_bytes(2, "big"))
    assert _send(sender, album, receiver)["stored_as"] == "album"
    assert receiver.wait_for_counter("receiver.trees-not-remembered", 1) == 1
    again = _send(sender, album, receiver)
    assert again["stored_as"] == "album.1" and _moved_all(again), again
    assert contents(receiver.inbox / "album.1") == contents(album)
    assert _listing(receiver.inbox) == ["album", "album.1"]


def test_a_stored_folder_changed_after_the_re_offer_is_not_vouched_for(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    """The re-offer was accepted as had (the stored folder unchanged then),
    and a file of it is written to before the sender's Done: the answer is
    checked against the folder as it is at the Done, so it is a mismatch
    (send again), never the earlier verdict."""
    receiver = node_factory(name="receiver")
    album = _album(tmp_path)
    tree = build_tree([album])
    stream = tree.pread(tree.total_size, 0)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        first = _offer(h, tree)
        assert isinstance(first, HostileTransfer), first
        verdict = first.send_stream(stream)
        assert isinstance(verdict, Verified) and verdict.stored_as == "album", verdict

        again = _offer(h, tree)
        assert isinstance(again, HostileTransfer), again
        assert again.accept is not None and again.accept.have == [0, again.total], again.accept
        with open(receiver.inbox / "album" / "run.sh", "r+b") as f:
            f.write(b"#!")  # the same bytes: only its mtime says it was written
        answer = again.done_until(blake3.blake3(stream).digest(), (Verified, Failed))
        assert isinstance(answer, Failed) and answer.code == "hash-mismatch", answer
        assert answer.reason == (
            "the folder differs from the one delivered as album, or that copy changed"
            " or could not be checked in time; sent again, it is stored as a second copy"
        )
    assert receiver.counters().get("receiver.delivered-before-verified", 0) == 0
    assert _listing(receiver.inbox) == ["album"]


def test_re_offers_of_a_folder_walk_it_within_a_share_of_the_receivers_time(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    """A member re-offering its own remembered folder again and again makes
    the receiver walk it each time (a stat per entry, in its loop): past the
    budget of walks (TREE_WALK_SHARE of its time, once the saved-up second is
    spent) a re-offer is not looked up, so it is a fresh transfer; the entry
    stays, and a re-offer is had again once the budget refilled."""
    receiver = node_factory(name="receiver")
    album = tmp_path / "album"
    album.mkdir()
    for i in range(MAX_TREE_ENTRIES - 1):  # and the folder: as many as remembered
        (album / f"f{i:04}").write_bytes(b"")
    tree = build_tree([album])
    stream = tree.pread(tree.total_size, 0)
    digest = blake3.blake3(stream).digest()
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        first = _offer(h, tree)
        assert isinstance(first, HostileTransfer), first
        verdict = first.send_stream(stream)
        assert isinstance(verdict, Verified) and verdict.stored_as == "album", verdict

        def re_offer() -> bool:
            """True if had, False if a fresh transfer (then left)."""
            again = _offer(h, tree)
            assert isinstance(again, HostileTransfer) and again.accept is not None, again
            if again.accept.have == []:
                again.abandon()
                again.close()
                return False
            assert again.accept.have == [0, again.total], again.accept
            try:
                answer = again.done_until(digest, (Verified, Failed))
            finally:
                again.close()  # the receiver holds only so many connections
            assert isinstance(answer, Verified) and answer.stored_as == "album", answer
            return True

        had = wait_until(lambda: None if re_offer() else True, 150, "a re-offer over budget", 0.0)
        assert had is True
        assert receiver.wait_for_counter("receiver.trees-walks-over-budget", 1) >= 1
        assert wait_until(lambda: re_offer() or None, 30, "a re-offer had again", 0.0) is True
    assert receiver.counters().get("receiver.delivered-before-mismatch", 0) == 0
    # The fresh transfer left keeps its part (to resume), no second copy.
    assert [n for n in _listing(receiver.inbox) if not n.startswith(".")] == ["album"]


def test_a_file_offered_under_a_stored_folders_key_is_a_file_of_its_own(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    """The sender of a folder offers a plain file under the folder's very key
    (name, size, source tag: a sender picks its tag): the folder's entry does
    not answer it (nor would a file's a folder's offer), so its bytes are
    stored as a file of their own: never a folder's verdict for a file."""
    receiver = node_factory(name="receiver")
    album, tree, stream = _album_stream(tmp_path)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        _store(h, tree, stream)
        # (a report that counts an event has what the actor counted before it)
        before = receiver.counters_when("receiver.received", 1)
        walked, accepted = before["receiver.trees-walked"], before["receiver.accepted"]

        plain = h.offer("album", tree.total_size, CHUNK, source=source_tag(tree.manifest))
        assert isinstance(plain, HostileTransfer) and plain.accept is not None, plain
        assert plain.accept.have == [], plain.accept
        # Nor is the folder walked for it (outside the budget of walks, at
        # every such re-offer: the budget's test above would not bind).
        after = receiver.counters_when("receiver.accepted", accepted + 1)
        assert after["receiver.trees-walked"] == walked, after
        verdict = plain.send_stream(stream)
        assert isinstance(verdict, Verified) and verdict.stored_as == "album.1", verdict
        plain.close()
    assert (receiver.inbox / "album.1").read_bytes() == stream
    assert contents(receiver.inbox / "album") == contents(album)
    assert _listing(receiver.inbox) == ["album", "album.1"]


def test_a_folders_re_offer_is_had_only_against_the_whole_streams_hash(
    tmp_path: Path, node_factory: Nodes, network_key: str
) -> None:
    """The stored copy unchanged is not enough: the Done of a re-offer must
    carry the hash of the whole stream (manifest and every file) verified
    when it was stored; another is hash-mismatch, and the entry is gone."""
    receiver = node_factory(name="receiver")
    album, tree, stream = _album_stream(tmp_path)
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        _store(h, tree, stream)

        lying = _offer(h, tree)
        assert isinstance(lying, HostileTransfer) and lying.accept is not None, lying
        assert lying.accept.have == [0, lying.total], lying.accept
        other = blake3.blake3(stream[:-1] + b"\x00").digest()
        answer = lying.done_until(other, (Verified, Failed))
        assert isinstance(answer, Failed) and answer.code == "hash-mismatch", answer
        lying.close()

        after = _offer(h, tree)  # forgotten: a fresh transfer
        assert isinstance(after, HostileTransfer) and after.accept is not None, after
        assert after.accept.have == [], after.accept
        after.abandon()
        after.close()
    assert receiver.counters().get("receiver.delivered-before-verified", 0) == 0
    assert contents(receiver.inbox / "album") == contents(album)
