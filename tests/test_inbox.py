"""The inbox rules shared by the unicast and multicast receivers."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from actors.inbox import (
    Refusal,
    check_offer,
    create_part,
    discard_part,
    link_verified,
    load_manifest,
    manifest_name,
    remake,
    save_manifest,
    scan,
    sweep,
)
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.resume import Manifest, ManifestError, ResumeKey
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.settings import NodeSettings


def settings(inbox: Path) -> NodeSettings:
    return NodeSettings(
        data_dir=inbox.parent,
        inbox=inbox,
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
    )


def test_part_then_publish_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"already here")
    part, fd = create_part(tmp_path, "report.pdf", "abc123", 5)
    try:
        assert part.name == ".report.pdf.abc123.part"
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        assert part.stat().st_size == 5
        os.pwrite(fd, b"hello", 0)
        assert link_verified(part, fd, tmp_path, "report.pdf") == "report.1.pdf"
    finally:
        os.close(fd)
    assert (tmp_path / "report.pdf").read_bytes() == b"already here"
    assert (tmp_path / "report.1.pdf").read_bytes() == b"hello"
    assert stat.S_IMODE((tmp_path / "report.1.pdf").stat().st_mode) == 0o644


def test_create_part_refuses_an_existing_part_and_leaves_it(tmp_path: Path) -> None:
    part, fd = create_part(tmp_path, "x", "id", 1, kind="mc")
    assert part is not None
    os.pwrite(fd, b"A", 0)
    os.close(fd)
    with pytest.raises(Refusal) as refused:
        create_part(tmp_path, "x", "id", 3, kind="mc")
    assert refused.value.code == "io"
    assert part.read_bytes() == b"A"  # another session's part: never replaced


def test_unique_parts_get_unpredictable_names(tmp_path: Path) -> None:
    first, fd1 = create_part(tmp_path, "x", "sid", 1, kind="mc", unique=True)
    second, fd2 = create_part(tmp_path, "x", "sid", 1, kind="mc", unique=True)
    try:
        assert first != second
        assert first.name.startswith(".x.sid-") and first.name.endswith(".mc.part")
    finally:
        os.close(fd1)
        os.close(fd2)


def test_publish_links_the_verified_file_not_whatever_has_its_name(tmp_path: Path) -> None:
    """The part's name is given to another file between the write and the
    link_verified: the verified file is what appears under the final name."""
    part, fd = create_part(tmp_path, "x", "sid", 8)
    assert part is not None
    try:
        os.pwrite(fd, b"verified", 0)
        part.rename(tmp_path / ".moved")
        part.write_bytes(b"impostor")
        assert link_verified(part, fd, tmp_path, "x") == "x"
        assert (tmp_path / "x").read_bytes() == b"verified"
        discard_part(part, fd)
        assert part.read_bytes() == b"impostor"  # not this session's file: left alone
    finally:
        os.close(fd)


def test_a_removed_part_is_never_published(tmp_path: Path) -> None:
    part, fd = create_part(tmp_path, "x", "sid", 8)
    assert part is not None
    try:
        os.pwrite(fd, b"verified", 0)
        part.unlink()
        part.write_bytes(b"impostor")
        with pytest.raises(Refusal, match="cannot link"):
            link_verified(part, fd, tmp_path, "x")
        assert not (tmp_path / "x").exists()  # nothing under a final name
    finally:
        os.close(fd)


def test_create_part_in_a_missing_inbox_is_an_io_refusal(tmp_path: Path) -> None:
    with pytest.raises(Refusal, match="cannot create file in inbox") as refused:
        create_part(tmp_path / "missing", "x", "id", 1)
    assert refused.value.code == "io"


@pytest.mark.parametrize(
    ("name", "chunk", "size", "code"),
    [
        ("ok.bin", 100, 10, "bad-offer"),
        ("ok.bin", 64 * 1024 * 1024, 10, "bad-offer"),
        ("..", 65536, 10, "bad-name"),
        ("ok.bin", 4096, 4096 * 2**25 + 1, "bad-offer"),  # one chunk over the cap
    ],
)
def test_check_offer_refusals(tmp_path: Path, name: str, chunk: int, size: int, code: str) -> None:
    with pytest.raises(Refusal) as refused:
        check_offer(settings(tmp_path), name, chunk, size)
    assert refused.value.code == code


def test_check_offer_sanitises(tmp_path: Path) -> None:
    assert check_offer(settings(tmp_path), "../../etc/passwd", 65536, 10) == "passwd"


@pytest.mark.parametrize(
    "name",
    [".n.x.part", ".n.x.mc.part", ".n.x.part.manifest", ".part.manifest.tmp", ".photos.abc.tree"],
)
def test_received_names_never_take_the_nodes_own(tmp_path: Path, name: str) -> None:
    assert check_offer(settings(tmp_path), name, 65536, 10) == "_" + name
    assert check_offer(settings(tmp_path), "dir/" + name, 65536, 10) == "_" + name


def test_names_merely_like_the_nodes_own_are_kept(tmp_path: Path) -> None:
    for name in ("n.x.part", ".n.x.partial", ".tree.txt", "_.n.x.part"):
        assert check_offer(settings(tmp_path), name, 65536, 10) == name


# -- manifests and leftovers (resume) ------------------------------------------


def _manifest(part: str, held: list[int], updated: float = 1000.0) -> Manifest:
    key = ResumeKey(b"p" * 32, "f.bin", 10_000, 1000, b"s" * 32)
    bitmap = ChunkBitmap(key.total)
    for i in held:
        bitmap.add(i)
    return Manifest(key, b"t" * 16, part, bitmap.to_bytes(), updated)


def _kept_part(inbox: Path, name: str, held: list[int], updated: float = 1000.0) -> Manifest:
    part, fd = create_part(inbox, name, "abc123", 10_000)
    try:
        os.pwrite(fd, b"x" * 1000 * len(held), 0)
        m = _manifest(part.name, held, updated)
        save_manifest(inbox, fd, m)
    finally:
        os.close(fd)
    return m


def test_manifest_round_trip_through_the_inbox(tmp_path: Path) -> None:
    m = _kept_part(tmp_path, "f.bin", [0, 1, 2])
    path = tmp_path / manifest_name(m.part)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_manifest(tmp_path, path.name) == m
    assert not list(tmp_path.glob("*.tmp"))
    # Replaced atomically by the next checkpoint.
    fd = os.open(tmp_path / m.part, os.O_RDWR)
    try:
        save_manifest(tmp_path, fd, _manifest(m.part, [0, 1, 2, 3]))
    finally:
        os.close(fd)
    assert load_manifest(tmp_path, path.name).held().count == 4


def test_manifest_is_written_only_after_the_part_is_synced(tmp_path: Path) -> None:
    """The part's fdatasync comes first: when it fails, no manifest claims
    chunks that may not be on disk."""
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            save_manifest(tmp_path, r, _manifest(".f.bin.x.part", [0]))
    finally:
        os.close(r)
        os.close(w)
    assert not (tmp_path / manifest_name(".f.bin.x.part")).exists()


def test_manifests_are_not_read_through_symlinks(tmp_path: Path) -> None:
    m = _kept_part(tmp_path, "f.bin", [0])
    real = tmp_path / manifest_name(m.part)
    elsewhere = tmp_path / "elsewhere"
    real.rename(elsewhere)
    real.symlink_to(elsewhere)
    with pytest.raises(ManifestError, match="cannot open"):
        load_manifest(tmp_path, real.name)
    assert scan(tmp_path).manifests == []


def test_a_manifest_naming_another_part_is_refused(tmp_path: Path) -> None:
    m = _kept_part(tmp_path, "f.bin", [0])
    other = tmp_path / manifest_name(".g.bin.abc123.part")
    (tmp_path / manifest_name(m.part)).rename(other)
    (tmp_path / ".g.bin.abc123.part").write_bytes(b"")
    with pytest.raises(ManifestError, match="another part"):
        load_manifest(tmp_path, other.name)


def test_scan_finds_pairs_and_halves(tmp_path: Path) -> None:
    m = _kept_part(tmp_path, "f.bin", [0, 1])
    (tmp_path / ".orphan.bin.abc.part").write_bytes(b"x")
    (tmp_path / manifest_name(".lost.bin.abc.part")).write_bytes(b"garbage")
    (tmp_path / ".broken.bin.abc.part").write_bytes(b"x")
    (tmp_path / manifest_name(".broken.bin.abc.part")).write_bytes(b"garbage")
    (tmp_path / "visible.part").write_bytes(b"a finished file that ends in .part")
    os.symlink("/etc/passwd", tmp_path / ".link.part")
    found = scan(tmp_path)
    assert found.manifests == [m]
    kept = {k.part: k for k in found.kept}
    assert set(kept) == {
        m.part,
        ".orphan.bin.abc.part",
        ".lost.bin.abc.part",
        ".broken.bin.abc.part",
    }
    assert kept[m.part].manifest == manifest_name(m.part) and kept[m.part].updated == 1000.0
    assert kept[".broken.bin.abc.part"].manifest is None
    assert not kept[".lost.bin.abc.part"].has_part
    assert found.allocated[m.part] >= 2000


def test_sweep_reclaims_what_expired_and_spares_the_rest(tmp_path: Path) -> None:
    old = _kept_part(tmp_path, "old.bin", [0], updated=time.time() - 7200)
    recent = _kept_part(tmp_path, "recent.bin", [0], updated=time.time())
    running = _kept_part(tmp_path, "running.bin", [0], updated=time.time() - 7200)
    orphan = tmp_path / ".orphan.bin.abc.part"
    orphan.write_bytes(b"x")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    os.symlink(tmp_path / "visible", tmp_path / ".evil.part")
    (tmp_path / "visible").write_bytes(b"keep me")
    gone = sweep(tmp_path, time.time(), expiry=3600, in_use=[running.part])
    assert sorted(gone) == sorted([old.part, orphan.name])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            recent.part,
            manifest_name(recent.part),
            running.part,
            manifest_name(running.part),
            ".evil.part",
            "visible",
        ]
    )
    assert (tmp_path / "visible").read_bytes() == b"keep me"


def test_unicast_and_multicast_scans_and_sweeps_keep_to_their_own_parts(tmp_path: Path) -> None:
    """The unicast receiver never plans or sweeps a ``.mc.part`` (the
    mreceiver may be writing it), and the mreceiver sweeps only those."""
    old = time.time() - 7200
    uni = _kept_part(tmp_path, "f.bin", [0], updated=old)
    part, fd = create_part(tmp_path, "f.bin", "sid", 10_000, kind="mc", unique=True)
    try:
        mc = _manifest(part.name, [0, 1], updated=old)
        save_manifest(tmp_path, fd, mc)
    finally:
        os.close(fd)
    assert scan(tmp_path).manifests == sorted([uni, mc], key=lambda m: m.part)
    assert scan(tmp_path, prefix=".f.bin.", multicast=False).manifests == [uni]
    assert scan(tmp_path, prefix=".f.bin.", multicast=True).manifests == [mc]
    assert [k.part for k in scan(tmp_path, multicast=False).kept] == [uni.part]
    assert sweep(tmp_path, time.time(), expiry=3600, multicast=False) == [uni.part]
    assert sorted(p.name for p in tmp_path.iterdir()) == [mc.part, manifest_name(mc.part)]
    assert sweep(tmp_path, time.time(), expiry=3600, in_use=[mc.part], multicast=True) == []
    assert sweep(tmp_path, time.time(), expiry=3600, multicast=True) == [mc.part]
    assert list(tmp_path.iterdir()) == []


def test_an_inbox_removed_is_made_again_but_not_its_parent(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    assert remake(inbox, 0o750) == ""
    assert inbox.is_dir() and inbox.stat().st_mode & 0o777 == 0o750 & ~_umask()
    assert remake(inbox, 0o750) is None  # there: nothing to do
    inbox.rmdir()
    inbox.write_text("a file")  # not the node's to replace: what uses it says so
    assert remake(inbox, 0o750) is None and inbox.read_text() == "a file"
    assert remake(tmp_path / "gone" / "inbox", 0o750) == "No such file or directory"
    assert not (tmp_path / "gone").exists()
    # It cannot be looked at (here a file on the way): not made, no error
    # raised; the offer's own scan refuses it, saying why.
    assert remake(inbox / "inbox", 0o750) is None


def _umask() -> int:
    """This process's umask, read without setting it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line")
