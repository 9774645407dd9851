"""The writer's resume checkpoints: the manifest follows the written chunks
(part synced first), a final one on close, and a disk that fills keeps the
part and its manifest (a small tmpfs the test mounts)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from actors.file_writer import FileWriter
from actors.inbox import create_part, load_manifest, manifest_name
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.resume import CHECKPOINT_CHUNKS, Manifest, ResumeKey

CHUNK = 4096
WAIT = 10.0


@pytest.fixture
def writer() -> Iterator[tuple[FileWriter, zmq.Socket[Any]]]:
    ctx: zmq.Context[Any] = zmq.Context()
    address = f"inproc://test-checkpoints-{os.getpid()}-{time.monotonic_ns()}"
    results = ctx.socket(zmq.PAIR)
    results.linger = 0
    results.bind(address)
    w = FileWriter(ctx, address)
    w.start()
    yield w, results
    w.stop()
    results.close(linger=0)
    ctx.term()


def _next(sock: zmq.Socket[Any]) -> tuple[Any, ...]:
    assert sock.poll(int(WAIT * 1000)), "no result from the writer within the timeout"
    return tuple(msgpack.unpackb(sock.recv(), raw=False))


def _open(w: FileWriter, inbox: Path, size: int) -> tuple[int, Manifest]:
    key = ResumeKey(b"p" * 32, "f.bin", size, CHUNK, b"s" * 32)
    part, fd = create_part(inbox, "f.bin", "abc", size)
    template = Manifest(key, b"t" * 16, part.name, bytes((key.total + 7) // 8), 0.0)
    w.open(b"t", fd, CHUNK, size, ChunkBitmap(key.total), hold=4, checkpoint=(inbox, template))
    return fd, template


def _is_open_on(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def _held(inbox: Path, m: Manifest) -> int:
    return load_manifest(inbox, manifest_name(m.part)).held().count


def test_manifest_follows_the_writes_and_closes_with_them(
    tmp_path: Path, writer: tuple[FileWriter, zmq.Socket[Any]]
) -> None:
    w, results = writer
    total = 2 * CHECKPOINT_CHUNKS + 5
    fd, m = _open(w, tmp_path, total * CHUNK)
    before = time.time()
    for index in range(total):
        w.write(b"t", index, bytes([index % 256]) * CHUNK)
    assert [_next(results)[0] for _ in range(total)] == ["written"] * total
    assert _held(tmp_path, m) == 2 * CHECKPOINT_CHUNKS
    assert load_manifest(tmp_path, manifest_name(m.part)).updated >= before
    w.close(b"t", keep=True)
    # An op queued after the close has its result once the close is done.
    w.open(b"u", os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600), CHUNK, CHUNK,
           ChunkBitmap(1))  # fmt: skip
    w.write(b"u", 0, b"x" * CHUNK)
    assert _next(results) == ("written", b"u", 0)
    assert _held(tmp_path, m) == total
    assert not _is_open_on(fd, tmp_path / m.part)  # the writer closed it


def test_close_without_keep_records_nothing_more(
    tmp_path: Path, writer: tuple[FileWriter, zmq.Socket[Any]]
) -> None:
    w, results = writer
    _, m = _open(w, tmp_path, 10 * CHUNK)
    for index in range(3):
        w.write(b"t", index, b"y" * CHUNK)
    for _ in range(3):
        _next(results)
    assert _held(tmp_path, m) == 0  # the pair exists from the start
    w.close(b"t", keep=False)
    w.write(b"t", 4, b"y" * CHUNK)  # after close: ignored
    w.open(b"u", os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600), CHUNK, CHUNK,
           ChunkBitmap(1))  # fmt: skip
    w.write(b"u", 0, b"x" * CHUNK)
    assert _next(results) == ("written", b"u", 0)
    assert _held(tmp_path, m) == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, mounted for this test only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def test_disk_full_keeps_the_part_and_what_it_holds(
    small_disk: Path, writer: tuple[FileWriter, zmq.Socket[Any]]
) -> None:
    w, results = writer
    total = 200  # 800 KiB into 512 KiB
    fd, m = _open(w, small_disk, total * CHUNK)
    data = [os.urandom(CHUNK) for _ in range(total)]
    for index in range(total):
        w.write(b"t", index, data[index])
    written = set()
    while True:
        kind, tid, value = _next(results)
        assert tid == b"t"
        if kind == "written":
            written.add(value)
        elif kind != "unsaved":  # a checkpoint that did not fit: the last one stays
            break
    assert kind == "no-space" and 0 < len(written) < total, (kind, value, written)
    w.close(b"t", keep=True)
    w.open(b"u", os.open(small_disk / "x", os.O_RDWR | os.O_CREAT, 0o600), 1, 1, ChunkBitmap(1))
    w.write(b"u", 0, b"")
    while (reply := _next(results))[1] != b"u":
        assert reply[0] == "unsaved"  # the final checkpoint did not fit either
    assert not _is_open_on(fd, small_disk / m.part)
    # Whatever the manifest lists is really in the part (the part was synced first).
    held = load_manifest(small_disk, manifest_name(m.part)).held()
    assert set(held.ranges()) and all(i in written for a, b in held.ranges() for i in range(a, b))
    with open(small_disk / m.part, "rb") as part:
        for a, b in held.ranges():
            for i in range(a, b):
                assert os.pread(part.fileno(), CHUNK, i * CHUNK) == data[i]
