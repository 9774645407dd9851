"""The in-order whole-file hash of parallel lanes (sender) and of the writer
thread (receiver), computed from chunks in memory instead of reading the
file a second time; the writer's resume checkpoints (the manifest follows
the written chunks, the part synced first; a final one on close; a disk that
fills, a small tmpfs the test mounts, keeps the part and its manifest)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import mmap
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

import actors.file_writer as file_writer
import actors.read_back as read_back
from actors.file_writer import (
    BufferPool,
    CheckSteps,
    Detached,
    FileWriter,
    Finished,
    TreeSpec,
    Unpacked,
    Unsaved,
    WriteFailed,
    WriterResult,
    Written,
    hash_file,
)
from actors.inbox import create_part, load_manifest, manifest_name
from actors.lanes import ChunkSealed, FileHashed, LaneCrew, ReadFailed, _OrderedHash, crew_size
from actors.multicast_receiver import writer_bounds as multicast_writer_bounds
from actors.receiver import writer_bounds
from actors.tree_source import build_tree
from actors.tree_store import hidden_name
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.incoming import Abandon, FinishFile, IncomingTransfer
from peercrypt.core.resume import CHECKPOINT_CHUNKS, Manifest, ResumeKey
from peercrypt.crypto.identity import KeyPair
from peercrypt.crypto.transfer import TransferKeys
from peercrypt.settings import NodeSettings
from peercrypt.testing.nodes import wait_until

CHUNK = 4096
TID = bytes(range(16))
KEY = bytes(32)
WAIT = 10.0  # s; every wait below is bounded


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path, data


def _run_crew(
    path: Path, lanes: int, indices: list[int], skip: ChunkBitmap | None
) -> tuple[bytes, dict[int, list[tuple[bytes, bytes, bool]]]]:
    """Submit ``indices``; (digest, index -> [(nonce, sealed, last)])."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    crew = LaneCrew(TransferKeys(TID, KEY, KEY), fd, size, CHUNK, lanes, skip=skip)
    try:
        for index in indices:
            crew.submit(index)
        chunks: dict[int, list[tuple[bytes, bytes, bool]]] = {}
        digest = b""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for result in crew.drain():
                if isinstance(result, ChunkSealed):
                    entry = (result.nonce, result.sealed, result.last)
                    chunks.setdefault(result.index, []).append(entry)
                elif isinstance(result, FileHashed):
                    assert not digest, "the digest was posted twice"
                    digest = result.digest
                else:
                    pytest.fail(f"crew error: {result}")
            if digest and sum(map(len, chunks.values())) == len(indices):
                break
            # the crew's wake-up pipe is readable once a result is posted
            select.select([crew.wake_fd], [], [], max(0.0, deadline - time.monotonic()))
        assert digest, "no digest within the timeout"
        return digest, chunks
    finally:
        crew.stop()
        os.close(fd)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_crew_hashes_what_it_sends_in_file_order(tmp_path: Path, lanes: int) -> None:
    path, data = _file(tmp_path, 37 * CHUNK + 123)
    total = 38
    # in order, with retransmissions of earlier chunks mixed in (as SendWindow does)
    indices = list(range(total))
    for at, again in ((10, 3), (20, 19), (30, 29), (31, 0)):
        indices.insert(at, again)
    digest, chunks = _run_crew(path, lanes, indices, None)
    assert digest == blake3.blake3(data).digest()
    receiver = TransferKeys(TID, KEY, KEY)
    nonces = set()
    for index in range(total):
        for nonce, sealed, last in chunks[index]:
            assert last == (index == total - 1)
            plain = receiver.open_chunk(index, last, nonce, sealed)
            assert plain == data[index * CHUNK : (index + 1) * CHUNK]
            nonces.add(nonce)
    assert len(nonces) == len(indices)  # never a nonce twice, lanes included


def test_crew_hashes_chunks_the_receiver_already_held(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 20 * CHUNK)
    skip = ChunkBitmap(20)
    skip.add_ranges([(0, 3), (7, 9), (17, 20)])  # leading, middle and trailing
    indices = [i for i in range(20) if i not in skip]
    digest, chunks = _run_crew(path, 2, indices, skip)
    assert digest == blake3.blake3(data).digest()
    assert sorted(chunks) == indices


def test_crew_hashes_a_file_the_receiver_held_completely(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 5 * CHUNK)
    skip = ChunkBitmap(5)
    skip.add_ranges([(0, 5)])
    digest, chunks = _run_crew(path, 2, [], skip)
    assert digest == blake3.blake3(data).digest()
    assert chunks == {}


def test_ordered_hash_holds_at_most_its_bound() -> None:
    """Fed in reverse order, it keeps at most ``max_held`` chunks (plus the
    one at the hash position) and reads the rest back."""
    total, max_held = 50, 4
    blocks = [os.urandom(100) for _ in range(total)]
    reads: list[int] = []

    def read(index: int) -> bytes:
        reads.append(index)
        return blocks[index]

    h = _OrderedHash(read, total, ChunkBitmap(total), max_held)
    digest = None
    for index in reversed(range(total)):
        assert len(h._held) <= max_held
        digest = h.offer(index, blocks[index]) or digest
    assert digest == blake3.blake3(b"".join(blocks)).digest()
    assert len(reads) == total - max_held - 1  # all but the held ones and chunk 0
    assert h.offer(3, blocks[3]) is None  # late duplicates change nothing
    assert h.start() is None  # the digest is given once


def test_ordered_hash_needs_no_read_in_order() -> None:
    blocks = [os.urandom(64) for _ in range(9)]
    h = _OrderedHash(lambda i: pytest.fail("read back"), 9, ChunkBitmap(9), 2)
    order = [1, 0, 3, 2, 5, 4, 7, 6, 8]  # two lanes, neighbours swapped
    results = [h.offer(i, blocks[i]) for i in order]
    assert results[:-1] == [None] * 8
    assert results[-1] == blake3.blake3(b"".join(blocks)).digest()


def test_ordered_hash_reads_back_no_further_once_stopped() -> None:
    """A resumed send's held prefix is read back and hashed chunk by chunk;
    once its send ended, the next chunk is not read (a prefix of many GiB
    would keep a worker, and the file, busy long after the send)."""
    total = 50
    skip = ChunkBitmap(total)
    skip.add_ranges([(0, total)])  # the receiver held all of it
    reads: list[int] = []
    stopped = threading.Event()

    def read(index: int) -> bytes:
        reads.append(index)
        if len(reads) == 3:
            stopped.set()  # the send ends while the third chunk is read
        return bytes(10)

    h = _OrderedHash(read, total, skip, 2, stopped.is_set)
    assert h.start() is None  # no digest: it stopped
    assert reads == [0, 1, 2]


def test_crew_reads_the_file_through_a_descriptor_of_its_own(tmp_path: Path) -> None:
    """The sender closes its descriptor of the file as a send ends, while a
    worker may still be reading: the crew reads through its own, so a
    descriptor number the process reuses meanwhile is never read in its
    place. Here the caller's is closed before a chunk is read at all."""
    path, data = _file(tmp_path, 3 * CHUNK)
    fd = os.open(path, os.O_RDONLY)
    crew = LaneCrew(TransferKeys(TID, KEY, KEY), fd, len(data), CHUNK, 2)
    os.close(fd)
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # (likely the number closed)
    os.write(other, os.urandom(3 * CHUNK))
    try:
        for index in range(3):
            crew.submit(index)
        sealed: dict[int, ChunkSealed] = {}
        digest = b""

        def done() -> bool:
            nonlocal digest
            for result in crew.drain():
                assert not isinstance(result, ReadFailed), result
                if isinstance(result, ChunkSealed):
                    sealed[result.index] = result
                elif isinstance(result, FileHashed):
                    digest = result.digest
            return len(sealed) == 3 and bool(digest)

        wait_until(done, WAIT, "three chunks sealed and the digest")
        keys = TransferKeys(TID, KEY, KEY)
        plain = [keys.open_chunk(i, c.last, c.nonce, c.sealed) for i, c in sorted(sealed.items())]
        assert b"".join(plain) == data
        assert digest == blake3.blake3(data).digest()
    finally:
        crew.stop()
        os.close(other)


class _GatedSource:
    """A source read like a file (a folder's stream is one) whose reads wait
    for ``gate``: a worker inside one is a read stuck in a disk."""

    def __init__(self, data: bytes) -> None:
        self.data, self.gate, self.inside = data, threading.Event(), threading.Event()

    def pread(self, length: int, offset: int) -> bytes:
        self.inside.set()
        assert self.gate.wait(WAIT), "the gate was never opened"
        return self.data[offset : offset + length]


def _pipe_at(fd: int) -> str:
    """What descriptor ``fd`` of this process is now ("" once closed)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return ""


def test_a_crew_stopped_while_a_worker_reads_neither_waits_nor_closes_under_it() -> None:
    """stop() returns at once while a worker is stuck in a read (it held the
    sender, and every send of the node, 5 s per worker), and it closes
    nothing that worker still uses: its wake-up pipe stays open until the
    worker ends after that read (closed under it, the worker's wake-up
    byte went to whatever took the number), then is closed."""
    source = _GatedSource(os.urandom(2 * CHUNK))
    crew = LaneCrew(TransferKeys(TID, KEY, KEY), source, 2 * CHUNK, CHUNK, 1)
    pipe = (crew._read_fd, _pipe_at(crew._read_fd)), (crew._wake_fd, _pipe_at(crew._wake_fd))
    try:
        crew.submit(0)
        assert source.inside.wait(WAIT), "the worker never read"
        crew.stop()
        [worker] = crew._threads
        assert worker.is_alive()  # still inside its read: stop() did not wait for it
        assert all(_pipe_at(fd) == what for fd, what in pipe)
    finally:
        source.gate.set()
    crew._threads[0].join(WAIT)
    assert not crew._threads[0].is_alive()
    assert all(_pipe_at(fd) != what for fd, what in pipe)  # closed by the worker as it ended


# -- the receiver's writer thread -------------------------------------------------


@contextlib.contextmanager
def _writer(queued: int, **kwargs: Any) -> Iterator[tuple[FileWriter, Results]]:
    """A writer with its actor's PAIR socket, not started (nothing drains
    until the test starts it); stopped and closed at the end."""
    ctx: zmq.Context[Any] = zmq.Context()
    address = f"inproc://test-writer-{os.getpid()}-{time.monotonic_ns()}"
    results = ctx.socket(zmq.PAIR)
    results.linger = 0
    results.bind(address)
    w = FileWriter(ctx, address, queued, **kwargs)
    try:
        yield w, Results(w, results)
    finally:
        w.stop()
        results.close(linger=0)
        ctx.term()


@contextlib.contextmanager
def _part(tmp_path: Path) -> Iterator[int]:
    """A part file open for the writer, closed at the end."""
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def writer() -> Iterator[tuple[FileWriter, Results]]:
    """(checkpoints every CHECKPOINT_CHUNKS chunks, however soon)"""
    with _writer(64 * 1024 * 1024, checkpoint_spacing=0.0) as (w, found):
        w.start()
        yield w, found


@dataclass
class Results:
    """The actor's side of a writer: its PAIR socket and its results."""

    writer: FileWriter
    sock: zmq.Socket[Any]


def _next(results: Results) -> WriterResult:
    """The next result, as the actor finds it: a frame announces one or more."""
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(queue.Empty):
            return results.writer.results.get_nowait()
        left = int((deadline - time.monotonic()) * 1000)
        assert left > 0 and results.sock.poll(left), "no result from the writer within the timeout"
        results.sock.recv()


def _index(result: WriterResult) -> int:
    assert isinstance(result, Written), result
    return result.index


def test_writer_verifies_out_of_order_chunks_holding_none(
    tmp_path: Path,
    writer: tuple[FileWriter, Results],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks in any order: no chunk is read back or kept while they arrive
    (the one hash is of the part after fsync), and that hash is the file's."""
    w, results = writer
    total = 24
    data = os.urandom(total * CHUNK - 7)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd_: int, n: int, offset: int) -> bytes:
        reads.append(offset // CHUNK)
        return real_pread(fd_, n, offset)

    monkeypatch.setattr("os.pread", counting_pread)  # the writer thread's read-backs
    try:
        w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(total))
        order = list(range(total))
        for i in range(0, total - 1, 2):  # two lanes: neighbours swapped
            order[i], order[i + 1] = order[i + 1], order[i]
        order[4:12] = reversed(order[4:12])  # and a longer reordering
        order = [*order[1:], order[0]]  # everything arrives before chunk 0
        for index in order:
            w.write(b"t", index, data[index * CHUNK : (index + 1) * CHUNK])
        written = {_index(_next(results)) for _ in order}
        assert written == set(range(total))
        assert reads == []
        w.finish(b"t")
        assert _next(results) == Finished(b"t", blake3.blake3(data).digest())
        with open(tmp_path / "part", "rb") as f:
            assert f.read() == data
    finally:
        os.close(fd)


def test_writer_builds_a_folder_as_its_chunks_come_in_any_order(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """A folder transfer: the tree is built under its hidden name while the
    chunks arrive (out of order: fed once the gap before them is filled),
    the verdict hash is of the stream in order, and the unpack only publishes."""
    w, results = writer
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i:02}").write_bytes(os.urandom(i * 1000))
    (src / "empty").mkdir()
    tree = build_tree([src])
    data = tree.pread(tree.total_size, 0)
    total = -(-len(data) // CHUNK)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    part = ".src.0123.part"
    fd = os.open(inbox / part, os.O_RDWR | os.O_CREAT, 0o600)
    spec = TreeSpec(inbox, part, len(tree.manifest), 100, 0o644, 0o755)
    try:
        w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(total), tree=spec)
        order = list(range(total))
        order[2:40] = reversed(order[2:40])
        for index in order:
            w.write(b"t", index, data[index * CHUNK : (index + 1) * CHUNK])
        assert {_index(_next(results)) for _ in order} == set(range(total))
        w.finish(b"t")  # waits for the build (in a thread of its own) to catch up
        assert _next(results) == Finished(b"t", blake3.blake3(data).digest())
        assert w.checked(b"t") == len(data)
        assert sorted(os.listdir(inbox)) == [part, hidden_name(part)]  # built, not published
        assert (inbox / hidden_name(part) / "src" / "d1" / "f28").read_bytes() == (
            src / "d1" / "f28"
        ).read_bytes()
        w.unpack(b"t", spec)
        assert _next(results) == Unpacked(b"t", ("src",))
        stored = {str(p.relative_to(inbox)): p.read_bytes() for p in inbox.rglob("f*")}
        assert stored == {str(p.relative_to(src.parent)): p.read_bytes() for p in src.rglob("f*")}
        assert sorted(os.listdir(inbox)) == [part, "src"]
    finally:
        w.close(b"t", keep=False)
        w.forget(b"t")


def test_writer_drops_a_folder_it_was_building_when_closed(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """A transfer closed mid-way (cancelled, the node stopping) leaves only
    its part: the hidden tree goes with the close."""
    w, results = writer
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(5 * CHUNK))
    tree = build_tree([src])
    data = tree.pread(tree.total_size, 0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    part = ".src.0123.part"
    fd = os.open(inbox / part, os.O_RDWR | os.O_CREAT, 0o600)
    spec = TreeSpec(inbox, part, len(tree.manifest), 100, 0o644, 0o755)
    w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(-(-len(data) // CHUNK)), tree=spec)
    w.write(b"t", 0, data[:CHUNK])
    w.write(b"t", 1, data[CHUNK : 2 * CHUNK])
    assert [_index(_next(results)) for _ in range(2)] == [0, 1]
    wait_until(lambda: hidden_name(part) in os.listdir(inbox), WAIT, "the build started")
    w.close(b"t", keep=False)  # closes fd too
    wait_until(lambda: os.listdir(inbox) == [part], WAIT, "the hidden tree removed")


def test_the_final_check_reports_the_bytes_it_covered(
    tmp_path: Path, writer: tuple[FileWriter, Results], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back hash says how far it got after each window (what the
    receiver's Verifying tells the sender's progress bar), and the writer
    keeps it per transfer until the close."""
    monkeypatch.setattr("actors.file_writer.HASH_WINDOW", 16 * CHUNK)
    w, results = writer
    data = os.urandom(40 * CHUNK + 5)
    path = tmp_path / "part"
    path.write_bytes(data)
    seen: list[int] = []
    with open(path, "rb") as f:
        assert hash_file(f.fileno(), len(data), seen.append) == blake3.blake3(data).digest()
    assert seen == [16 * CHUNK, 32 * CHUNK, len(data)]
    fd = os.open(path, os.O_RDWR)
    total = -(-len(data) // CHUNK)
    w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(total))
    assert w.checked(b"t") == 0
    for index in range(total):
        w.write(b"t", index, data[index * CHUNK : (index + 1) * CHUNK])
    assert {_index(_next(results)) for _ in range(total)} == set(range(total))
    w.finish(b"t")
    assert _next(results) == Finished(b"t", blake3.blake3(data).digest())
    assert w.checked(b"t") == len(data)
    w.close(b"t", keep=False)
    wait_until(lambda: w.checked(b"t") == 0, WAIT, "forgotten at the close")


def test_a_part_cut_short_underneath_fails_the_check_and_the_process_lives(
    tmp_path: Path,
) -> None:
    """Another process truncating the part while the read-back hash maps it
    would fault the mapping (SIGBUS kills the whole node): the check fails
    with an error instead, in a process of its own here so that a fault
    shows as this test's failure, not as a dead test worker."""
    data = os.urandom(3 * CHUNK)
    part = tmp_path / "part"
    part.write_bytes(data)
    script = (
        "import os, sys\n"
        "import actors.file_writer as fw\n"
        f"fw.HASH_WINDOW = {CHUNK}\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "seen = []\n"
        "def cut(done):\n"
        "    seen.append(done)\n"
        f"    os.truncate(sys.argv[1], {CHUNK + 100})\n"
        "try:\n"
        f"    fw.hash_file(fd, {len(data)}, cut)\n"
        "except OSError as exc:\n"
        "    print('failed:', exc.strerror, seen)\n"
    )
    assert _in_a_process(script, part) == (
        f"failed: the part was cut short while it was checked [{CHUNK}]"
    )


def _in_a_process(script: str, part: Path) -> str:
    """What ``script`` (given ``part``) prints, run in a process of its own
    that must live (a SIGBUS shows as the code -7)."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(part)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(file_writer.__file__).parent.parent,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    return done.stdout.strip()


def test_a_part_cut_short_while_a_window_is_hashed_fails_the_check_and_the_process_lives(
    tmp_path: Path,
) -> None:
    """The part truncated (by another process, a local ``truncate``) while
    the read-back hashes a window, not between windows: a window mapped
    from the file would fault (SIGBUS: the node and every transfer dead);
    read into the check's own buffer, it hashes what was read and the next
    read, short, fails the check. In a process of its own, as above."""
    window = 4 * CHUNK
    data = os.urandom(3 * window)
    part = tmp_path / "part"
    part.write_bytes(data)
    script = (
        "import os, sys, blake3\n"
        "import actors.file_writer as fw\n"
        f"fw.HASH_WINDOW = {window}\n"
        "Real = blake3.blake3\n"
        "class Cutting:\n"
        "    AUTO = Real.AUTO\n"
        "    def __init__(self, **kwargs):\n"
        "        self.real, self.updates = Real(**kwargs), 0\n"
        "    def update(self, data):\n"
        "        self.updates += 1\n"
        "        if self.updates == 1:\n"
        "            os.truncate(sys.argv[1], 100)  # while the first window is hashed\n"
        "        self.real.update(data)\n"
        "    def digest(self):\n"
        "        return self.real.digest()\n"
        "fw.blake3.blake3 = Cutting\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n"
        f"    fw.hash_file(fd, {len(data)})\n"
        "except OSError as exc:\n"
        "    print('failed:', exc.strerror)\n"
    )
    assert _in_a_process(script, part) == "failed: the part was cut short while it was checked"
    assert part.stat().st_size == 100


def test_writer_refuses_to_finish_an_incomplete_part(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    w, results = writer
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        w.open(b"t", fd, CHUNK, 3 * CHUNK, ChunkBitmap(3))
        for index in (0, 2):
            w.write(b"t", index, os.urandom(CHUNK))
            _next(results)
        w.finish(b"t")
        failed = _next(results)
        assert isinstance(failed, WriteFailed) and failed.tid == b"t" and not failed.no_space
        assert failed.text == "finish before all chunks were written"
    finally:
        os.close(fd)


def test_writer_fails_a_short_write(
    tmp_path: Path, writer: tuple[FileWriter, Results], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash is taken from the bytes handed to pwrite, so a short write
    (disk full) must fail the file rather than be hashed as written."""
    w, results = writer
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    monkeypatch.setattr("os.pwrite", lambda fd_, data, offset: len(data) - 1)
    try:
        w.open(b"t", fd, CHUNK, 2 * CHUNK, ChunkBitmap(2))
        w.write(b"t", 1, os.urandom(CHUNK))
        failed = _next(results)
        assert isinstance(failed, WriteFailed) and (failed.tid, failed.no_space) == (b"t", True)
        assert "short write" in failed.text
    finally:
        os.close(fd)


@pytest.mark.parametrize("announce_bytes", [2 * CHUNK, 2 * CHUNK - 1])
def test_the_writer_announces_written_chunks_once_they_cover_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announce_bytes: int
) -> None:
    """While more chunks wait to be written, the actor still hears of the
    ones written once they cover ``announce_bytes`` (the bytes its
    transfers ack at), not only after ANNOUNCE_EVERY of them: the third
    write is held, two more chunks are queued behind it, and a frame must
    come for the first two."""
    held, release = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def pwrite(fd_: int, data: Any, offset: int) -> int:
        if offset == 2 * CHUNK:
            held.set()
            release.wait(3 * WAIT)  # (past the wait for the frame below)
        return real_pwrite(fd_, data, offset)

    monkeypatch.setattr("os.pwrite", pwrite)
    kwargs = {"announce_bytes": announce_bytes, "direct": False, "as_written": False}
    with _writer(64 * CHUNK, **kwargs) as (w, results):
        assert file_writer.ANNOUNCE_EVERY > 2  # (else this is not what the frame shows)
        # (the writer's close closes fd: no _part, whose close would race it)
        fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
        w.open(TID, fd, CHUNK, 5 * CHUNK, ChunkBitmap(5))
        for index in range(5):
            assert w.write(TID, index, os.urandom(CHUNK))
        w.start()
        try:
            assert held.wait(WAIT)
            assert results.sock.poll(int(WAIT * 1000)), "no frame while chunks wait"
            results.sock.recv()
            assert [_index(_next(results)) for _ in range(2)] == [0, 1]
        finally:
            release.set()
        assert sorted(_index(_next(results)) for _ in range(3)) == [2, 3, 4]
        w.close(TID, keep=False)


def test_a_written_chunk_leaves_the_queue_before_the_actor_hears_of_it(tmp_path: Path) -> None:
    """The actor gives the sender more credit once it hears of a write, and
    queues the chunks that credit brings: a queue place still held by the
    chunk it heard of would let the writer's queue pass its bound (the
    receiver's credit budget: docs/architecture.md, "Bounds"). So the queue
    place comes back before the result is posted: with a queue of two chunks
    full, a third is taken the moment the first one's result is out."""
    with _writer(2 * CHUNK, direct=False, as_written=False) as (w, results):
        taken: list[tuple[int, bool]] = []

        class Posted(queue.SimpleQueue):  # type: ignore[type-arg]
            def put(self, item: WriterResult, *args: Any, **kwargs: Any) -> None:
                if isinstance(item, Written) and item.index == 0:  # as the actor would, at once
                    taken.append((item.index, w.write(TID, 2, os.urandom(CHUNK))))
                super().put(item, *args, **kwargs)

        w.results = Posted()  # (not started: nothing posted yet)
        fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
        w.open(TID, fd, CHUNK, 3 * CHUNK, ChunkBitmap(3))
        assert w.write(TID, 0, os.urandom(CHUNK)) and w.write(TID, 1, os.urandom(CHUNK))
        assert not w.write(TID, 2, os.urandom(CHUNK))  # (full: the bound holds)
        w.start()
        assert _index(_next(results)) == 0
        assert taken == [(0, True)]  # (False: the queue was still full)
        assert sorted(_index(_next(results)) for _ in range(2)) == [1, 2]
        w.close(TID, keep=False)


def test_crew_posts_the_digest_once(tmp_path: Path) -> None:
    """A one-chunk file: the lane that hashes it and the start-up job race
    for the digest; exactly one of them may post it."""
    path, data = _file(tmp_path, 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(20):
            crew = LaneCrew(TransferKeys(TID, KEY, KEY), fd, 100, CHUNK, 2)
            try:
                crew.submit(0)
                # Let every worker finish all its jobs and exit (stop() would
                # also suppress a late digest): whatever was posted is queued.
                for _ in crew._threads:
                    crew._jobs.put(None)
                for thread in crew._threads:
                    thread.join(WAIT)
                    assert not thread.is_alive(), "a lane did not finish"
                digests = [r.digest for r in crew.drain() if isinstance(r, FileHashed)]
                assert digests == [blake3.blake3(data).digest()]
            finally:
                crew.stop()
    finally:
        os.close(fd)


# -- resume checkpoints ---------------------------------------------------------


def _open(w: FileWriter, inbox: Path, size: int) -> tuple[int, Manifest]:
    key = ResumeKey(b"p" * 32, "f.bin", size, CHUNK, b"s" * 32)
    part, fd = create_part(inbox, "f.bin", "abc", size)
    template = Manifest(key, b"t" * 16, part.name, bytes((key.total + 7) // 8), 0.0)
    w.open(b"t", fd, CHUNK, size, ChunkBitmap(key.total), checkpoint=(inbox, template))
    return fd, template


def _is_open_on(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def _held(inbox: Path, m: Manifest) -> int:
    return load_manifest(inbox, manifest_name(m.part)).held().count


@pytest.mark.parametrize("spacing", [0.0, 3600.0])
def test_manifest_follows_the_writes_and_closes_with_them(tmp_path: Path, spacing: float) -> None:
    """A checkpoint every CHECKPOINT_CHUNKS chunks, but none sooner than
    ``spacing`` after the last one (the open's)."""
    with _writer(64 * 1024 * 1024, checkpoint_spacing=spacing) as (w, results):
        w.start()
        _manifest_follows_the_writes(tmp_path, w, results, spacing)


def _manifest_follows_the_writes(
    tmp_path: Path, w: FileWriter, results: Results, spacing: float
) -> None:
    total = 2 * CHECKPOINT_CHUNKS + 5
    fd, m = _open(w, tmp_path, total * CHUNK)
    before = time.time()
    for index in range(total):
        w.write(b"t", index, bytes([index % 256]) * CHUNK)
    assert [_next(results) for _ in range(total)] == [Written(b"t", i) for i in range(total)]
    assert _held(tmp_path, m) == (2 * CHECKPOINT_CHUNKS if spacing == 0 else 0)
    assert load_manifest(tmp_path, manifest_name(m.part)).updated >= before
    w.close(b"t", keep=True)
    # An op queued after the close has its result once the close is done.
    w.open(b"u", os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600), CHUNK, CHUNK,
           ChunkBitmap(1))  # fmt: skip
    w.write(b"u", 0, b"x" * CHUNK)
    assert _next(results) == Written(b"u", 0)
    assert _held(tmp_path, m) == total
    assert not _is_open_on(fd, tmp_path / m.part)  # the writer closed it


def test_close_without_keep_records_nothing_more(
    tmp_path: Path, writer: tuple[FileWriter, Results]
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
    assert _next(results) == Written(b"u", 0)
    assert _held(tmp_path, m) == 0


def test_disk_full_keeps_the_part_and_what_it_holds(
    small_disk: Callable[[str], Path], writer: tuple[FileWriter, Results]
) -> None:
    w, results = writer
    disk = small_disk("512k")
    total = 200  # 800 KiB into 512 KiB
    fd, m = _open(w, disk, total * CHUNK)
    data = [os.urandom(CHUNK) for _ in range(total)]
    for index in range(total):
        w.write(b"t", index, data[index])
    written = set()
    while True:
        result = _next(results)
        assert result.tid == b"t"
        if isinstance(result, Written):
            written.add(result.index)
        elif not isinstance(result, Unsaved):  # a checkpoint that did not fit: the last one stays
            break
    assert isinstance(result, WriteFailed) and result.no_space, result
    assert 0 < len(written) < total, written
    w.close(b"t", keep=True)
    w.open(b"u", os.open(disk / "x", os.O_RDWR | os.O_CREAT, 0o600), 1, 1, ChunkBitmap(1))
    w.write(b"u", 0, b"")
    while (reply := _next(results)).tid != b"u":
        assert isinstance(reply, Unsaved)  # the final checkpoint did not fit either
    assert not _is_open_on(fd, disk / m.part)
    # Whatever the manifest lists is really in the part (the part was synced first).
    held = load_manifest(disk, manifest_name(m.part)).held()
    assert set(held.ranges()) and all(i in written for a, b in held.ranges() for i in range(a, b))
    with open(disk / m.part, "rb") as part:
        for a, b in held.ranges():
            for i in range(a, b):
                assert os.pread(part.fileno(), CHUNK, i * CHUNK) == data[i]


def _pooled(w: FileWriter, data: bytes) -> memoryview:
    """``data`` in a buffer taken from the writer's pool, as a receiver decrypts into."""
    buffer = w.buffers.take(len(data))
    buffer[:] = data
    return buffer


def test_every_decrypt_buffer_comes_back_when_the_disk_fills_or_fails(
    small_disk: Callable[[str], Path],
    tmp_path: Path,
    writer: tuple[FileWriter, Results],
) -> None:
    """Each buffer a receiver takes from the writer's pool and queues comes
    back whatever becomes of its chunk: written, refused by a disk that
    fills (a real tmpfs), queued for a file that failed already, failed by
    an I/O error, or by a fault of ours (after which the writer still
    writes). One never given back would shrink the pool for good, and what
    is kept with it (held + out within the bound)."""
    w, results = writer
    disk = small_disk("512k")
    total = 200  # 800 KiB into 512 KiB
    _open(w, disk, total * CHUNK)
    for index in range(total):  # queued at once: those after the failure find it failed
        assert w.write(b"t", index, _pooled(w, os.urandom(CHUNK)))
    while not isinstance(result := _next(results), WriteFailed):
        assert isinstance(result, (Written, Unsaved)), result
    assert result.no_space, result
    wait_until(lambda: w.buffers.out_bytes == 0, WAIT, "every buffer back after a full disk")
    w.close(b"t", keep=False)

    faults: list[BaseException] = [OSError(errno.EIO, "Input/output error"), KeyError("ours")]

    def failing(fd: int, offset: int, length: int) -> bool:
        raise faults.pop(0)

    failed = {b"e": "Input/output error", b"k": "writing failed unexpectedly (KeyError)"}
    for tid, text in failed.items():
        w._allocate = failing  # what the writer calls before each chunk's write
        fd = os.open(tmp_path / tid.decode(), os.O_RDWR | os.O_CREAT, 0o600)
        w.open(tid, fd, CHUNK, 2 * CHUNK, ChunkBitmap(2))
        for index in range(2):
            assert w.write(tid, index, _pooled(w, os.urandom(CHUNK)))
        while (result := _next(results)).tid == b"t":
            assert isinstance(result, Unsaved)  # the full disk's last checkpoint did not fit
        assert result == WriteFailed(tid, text), text
        wait_until(lambda: w.buffers.out_bytes == 0, WAIT, f"every buffer back after {text}")
        w.close(tid, keep=False)
    w._allocate = lambda fd, offset, length: True  # the writer lives on: the next file is written
    fd = os.open(tmp_path / "ok", os.O_RDWR | os.O_CREAT, 0o600)
    data = os.urandom(CHUNK)
    w.open(b"ok", fd, CHUNK, CHUNK, ChunkBitmap(1))
    assert w.write(b"ok", 0, _pooled(w, data))
    assert _next(results) == Written(b"ok", 0)
    assert w.buffers.out_bytes == 0 and os.pread(fd, CHUNK, 0) == data
    w.close(b"ok", keep=False)


def test_a_buffer_the_pool_could_not_make_is_not_counted_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No memory for a new mapping (ENOMEM from mmap): take() raises, and
    the pool counts nothing out for it."""
    pool = BufferPool(4 * CHUNK)
    kept = pool.take(CHUNK)

    def no_memory(*args: Any, **kwargs: Any) -> mmap.mmap:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(file_writer.mmap, "mmap", no_memory)
    with pytest.raises(OSError):
        pool.take(2 * CHUNK)
    assert (pool.out_bytes, pool.mapped) == (CHUNK, 1)
    monkeypatch.undo()
    pool.give(kept)
    assert (pool.out_bytes, pool.held_bytes) == (0, CHUNK)


def test_each_chunk_gets_its_blocks_before_it_is_written_where_a_disk_has_blocks(
    tmp_path: Path, small_disk: Callable[[str], Path], writer: tuple[FileWriter, Results]
) -> None:
    """Right before its pwrite a chunk's range is allocated (fallocate): on a
    filesystem with blocks, each chunk's own range; on tmpfs none; where the
    filesystem cannot, asked once; a full disk there fails the file as a
    full disk does in the write, with nothing written."""
    w, results = writer
    asked: list[tuple[int, int, int]] = []
    answer: list[bool | OSError] = [True]

    def allocate(fd: int, offset: int, length: int) -> bool:
        asked.append((fd, offset, length))
        if isinstance(answer[0], OSError):
            raise answer[0]
        return answer[0]

    w._allocate = allocate  # what the writer calls (the real one: _block_allocator)
    data = os.urandom(3 * CHUNK - 100)
    for where, tid in ((tmp_path, b"d"), (small_disk("1m"), b"m")):
        asked.clear()  # (the last file's fd number may be reused: close() is queued)
        fd = os.open(where / "part", os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, len(data))
        w.open(tid, fd, CHUNK, len(data), ChunkBitmap(3))
        for index in (2, 0):
            w.write(tid, index, data[index * CHUNK : (index + 1) * CHUNK])
            assert _index(_next(results)) == index
        assert os.pread(fd, 3 * CHUNK, 0) == data[:CHUNK] + bytes(CHUNK) + data[2 * CHUNK :]
        has_blocks = file_writer._has_blocks(fd)
        assert tid == b"d" or not has_blocks, "tmpfs has no blocks to allocate"
        expected = [(fd, 2 * CHUNK, CHUNK - 100), (fd, 0, CHUNK)] if has_blocks else []
        assert asked == expected, (where, asked)
        w.close(tid, keep=False)
    fds = [os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o600) for name in ("n", "f")]
    for fd in fds:
        os.ftruncate(fd, len(data))
    if file_writer._has_blocks(fds[0]):  # the test's directory is on a disk
        asked.clear()
        answer[0] = False  # a filesystem that cannot: asked once, then written anyway
        w.open(b"n", fds[0], CHUNK, len(data), ChunkBitmap(3))
        for index in (0, 1):
            w.write(b"n", index, data[index * CHUNK : (index + 1) * CHUNK])
            assert _index(_next(results)) == index
        assert asked == [(fds[0], 0, CHUNK)]
        answer[0] = OSError(errno.ENOSPC, "No space left on device")
        w.open(b"f", fds[1], CHUNK, len(data), ChunkBitmap(3))
        w.write(b"f", 2, data[2 * CHUNK :])
        result = _next(results)
        assert isinstance(result, WriteFailed) and result.no_space, result
        assert os.pread(fds[1], CHUNK, 2 * CHUNK) == bytes(CHUNK - 100)  # nothing written
        w.close(b"n", keep=False)  # closes its fd
        w.close(b"f", keep=False)
    else:
        for fd in fds:
            os.close(fd)


def test_writer_refuses_chunks_beyond_its_queue_bound(tmp_path: Path) -> None:
    # not started yet: nothing drains
    with _part(tmp_path) as fd, _writer(3 * CHUNK) as (w, found):  # stopped before fd closes
        data = os.urandom(5 * CHUNK)
        w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(5))
        chunks = [data[i * CHUNK : (i + 1) * CHUNK] for i in range(5)]
        assert [w.write(b"t", i, chunks[i]) for i in range(4)] == [True, True, True, False]
        w.start()
        assert {_index(_next(found)) for _ in range(3)} == {0, 1, 2}
        assert w.write(b"t", 3, chunks[3]) and w.write(b"t", 4, chunks[4])
        assert {_index(_next(found)) for _ in range(2)} == {3, 4}
        assert os.pread(fd, len(data), 0) == data


def test_chunk_buffers_go_back_to_the_pool_and_not_beyond_its_bound() -> None:
    pool = BufferPool(3 * CHUNK)
    taken = [pool.take(CHUNK) for _ in range(4)]
    assert all(len(b) == CHUNK for b in taken) and len({id(b) for b in taken}) == 4
    for b in taken:
        pool.give(b)
    assert pool.held_bytes == 3 * CHUNK  # the fourth was dropped
    again = pool.take(CHUNK)
    assert any(again is b for b in taken)
    assert len(pool.take(CHUNK // 2)) == CHUNK // 2  # another size: a new one
    pool.clear()
    assert pool.held_bytes == 0


@pytest.mark.parametrize("bounds", [writer_bounds, multicast_writer_bounds])
def test_the_receivers_writer_keeps_what_its_pipeline_holds_of_4_mib_buffers(
    tmp_path: Path, bounds: Callable[[NodeSettings], tuple[int, int]]
) -> None:
    """The unicast and the multicast receiver's writer (their bounds from the
    node's own settings) take back every buffer of what their pipeline holds
    from decryption to the hash, the receive buffer's worth of 4 MiB chunks
    and the hash as written's (12 of them, queued at once), and decrypting
    the next 12 maps no new one: with the receive buffer alone kept (32 MiB,
    before), the chunks waiting for their hash pushed those in flight out
    (24-34 new mappings per GiB); with 16 MiB (the multicast receiver's
    before that), half were dropped and mapped again every time."""
    keys = KeyPair.generate()
    settings = NodeSettings(data_dir=tmp_path, inbox=tmp_path, identity=keys, server_keys=keys)
    queued, pooled = bounds(settings)
    chunk = 4 * 1024 * 1024
    # The chunks in flight under the credit, and those waiting for their
    # hash (the multicast receiver's HASH_HOLD, the unicast's half the
    # receive buffer: the same 16 MiB by default).
    count = (settings.receive_buffer + read_back.HASH_HOLD) // chunk
    assert count == 12
    # not started: nothing drains
    with _part(tmp_path) as fd, _writer(queued, pool_bytes=pooled) as (w, found):
        data = os.urandom(2 * count * chunk)
        w.open(b"t", fd, chunk, len(data), ChunkBitmap(2 * count))
        first: list[memoryview] = []
        for start in (0, count):  # a whole credit queued at once, twice
            for i in range(start, start + count):
                buffer = w.buffers.take(chunk)
                if start:  # the second credit's buffers are the first's
                    assert any(buffer is b for b in first), f"chunk {i}: a new buffer"
                else:
                    first.append(buffer)
                buffer[:] = data[i * chunk : (i + 1) * chunk]
                assert w.write(b"t", i, buffer)
            if not start:
                w.start()  # the whole first credit is queued before any is written
            assert {_index(_next(found)) for _ in range(count)} == set(range(start, start + count))
            wait_until(lambda: w.buffers.held_bytes == count * chunk, WAIT, "all given back")
        assert w.buffers.maps == count  # the first round's only
        assert blake3.blake3(os.pread(fd, len(data), 0)).digest() == blake3.blake3(data).digest()


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from([4096, 256 * 1024]),
    bound=st.integers(1, 12),
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 3), st.integers(0, 20)), max_size=80),
)
def test_what_the_pool_keeps_never_exceeds_its_bound(
    unit: int, bound: int, steps: list[tuple[bool, int, int]]
) -> None:
    """Whatever is taken and given back in any order and size: the pool
    keeps at most its bound, and what it keeps with what is out together
    stay within it (kept buffers never add to a peak of chunks in flight);
    every byte taken and given back is counted out and back; buffers out
    never overlap and keep their bytes (units of 4 KiB and of 256 KiB)."""
    pool = BufferPool(bound * unit)
    out: list[memoryview] = []
    marks: list[int] = []
    for n, (take, size, pick) in enumerate(steps):
        if take or not out:
            buffer = pool.take(size * unit)
            mark = n % 251 + 1
            buffer[:1], buffer[len(buffer) // 2 : len(buffer) // 2 + 1], buffer[-1:] = (
                bytes([mark]),
                bytes([mark]),
                bytes([mark]),
            )
            out.append(buffer)
            marks.append(mark)
        else:
            i = pick % len(out)
            pool.give(out.pop(i))
            marks.pop(i)
        held, taken = pool.held_bytes, pool.out_bytes
        assert taken == sum(len(b) for b in out)
        assert held <= bound * unit
        assert held == 0 or held + taken <= bound * unit, (held, taken)
        # Buffers out never overlap, and none is given back or zeroed while out.
        for b, mark in zip(out, marks, strict=True):
            middle = b[len(b) // 2 : len(b) // 2 + 1]
            assert (bytes(b[:1]), bytes(middle), bytes(b[-1:])) == (bytes([mark]),) * 3
        spans = sorted(
            (ctypes.addressof(ctypes.c_char.from_buffer(b)), len(b))
            for b in out
            if isinstance(b.obj, mmap.mmap)
        )
        assert all(a + n_ <= b_ for (a, n_), (b_, _) in itertools.pairwise(spans)), spans
    for b in out:
        pool.give(b)
    assert pool.out_bytes == 0 and pool.held_bytes <= bound * unit


def test_kept_buffers_and_those_in_flight_stay_within_the_pools_bound() -> None:
    """Buffers kept for reuse never add to chunks in flight beyond the
    pool's bound: one given back while others are out is kept only within
    it, and kept buffers of another size give way to new ones taken."""
    pool = BufferPool(4 * CHUNK)
    small = [pool.take(CHUNK) for _ in range(5)]  # more in flight than the bound
    pool.give(small.pop())  # 4 still out: not kept
    assert pool.held_bytes == 0
    for b in small:
        pool.give(b)
    assert pool.held_bytes == 4 * CHUNK  # nothing else out: all kept
    del small, b
    large = [pool.take(2 * CHUNK) for _ in range(2)]  # 4 chunks' worth in flight
    assert pool.held_bytes == 0  # the small ones gave way
    pool.give(large.pop())  # one still out: kept, 2 + 2 within 4
    assert pool.held_bytes == 2 * CHUNK
    out = [pool.take(CHUNK) for _ in range(2)]  # 2 + 2 in flight: the kept one gives way
    assert pool.held_bytes == 0
    pool.give(large.pop())  # 2 still out: kept
    assert pool.held_bytes == 2 * CHUNK
    for b in out:
        pool.give(b)
    assert pool.held_bytes == 4 * CHUNK


def test_the_writer_gives_written_buffers_back_and_keeps_none_when_idle(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """A pool buffer queued with write() returns to the pool once written (the
    receiver decrypts the next chunk into it); once the writer has no file
    open, it keeps no buffer."""
    w, results = writer
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    data = os.urandom(2 * CHUNK)
    w.open(b"t", fd, CHUNK, len(data), ChunkBitmap(2))
    first = w.buffers.take(CHUNK)
    first[:] = data[:CHUNK]
    assert w.write(b"t", 0, first)
    assert _index(_next(results)) == 0
    assert w.buffers.take(CHUNK) is first
    assert w.write(b"t", 1, data[CHUNK:])  # bytes (the multicast receiver's): not pooled
    assert _index(_next(results)) == 1
    assert w.buffers.held_bytes == 0
    assert os.pread(fd, len(data), 0) == data
    w.buffers.give(first)
    assert w.buffers.held_bytes == CHUNK
    w.close(b"t", keep=False)  # closes fd: the last open file
    wait_until(lambda: w.buffers.held_bytes == 0, WAIT, "the pool emptied")


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_the_read_back_hash_maps_the_file_a_window_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The verdict's read-back reads HASH_WINDOW bytes at a time into one
    buffer (its pages count in RSS); the windows hash to the whole file's
    BLAKE3."""
    import actors.file_writer as file_writer

    monkeypatch.setattr(file_writer, "HASH_WINDOW", 65536)  # a multiple of the page size
    data = os.urandom(size)
    (tmp_path / "part").write_bytes(data)
    fd = os.open(tmp_path / "part", os.O_RDONLY)
    try:
        assert file_writer.hash_file(fd, size) == blake3.blake3(data).digest()
    finally:
        os.close(fd)


def test_the_crew_has_a_worker_per_core_at_most_one_per_connection() -> None:
    assert crew_size(8, 2) == 2  # -t 8 on two cores: two sealing threads
    assert crew_size(2, 16) == 2
    assert crew_size(1, None) == 1  # the core count unknown: one
    assert crew_size(4, 0) == 1


def test_a_full_ext4_fails_the_chunks_allocation_before_its_write(
    small_ext4: Callable[[int], Path], writer: tuple[FileWriter, Results]
) -> None:
    """On a real ext4 (blocks are allocated ahead there, not on tmpfs) that
    someone else filled, the real ``fallocate`` of a chunk's range fails with
    ENOSPC: the file fails as on a full disk, nothing of the chunk written."""
    disk = small_ext4(4 * 1024 * 1024)
    w, results = writer
    data = os.urandom(2 * CHUNK)
    fd = os.open(disk / "part", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))  # sparse: no blocks yet
    assert file_writer._has_blocks(fd)
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for step in (256 * 1024, 4096):
            with contextlib.suppress(OSError):
                while os.write(filler, b"\1" * step) == step:  # until the disk is full
                    pass
        os.fsync(filler)
    finally:
        os.close(filler)
    with pytest.raises(OSError) as raised:
        file_writer._block_allocator()(fd, 0, CHUNK)
    assert raised.value.errno == errno.ENOSPC
    w.open(TID, fd, CHUNK, len(data), ChunkBitmap(2))
    w.write(TID, 1, data[CHUNK:])
    result = _next(results)
    assert isinstance(result, WriteFailed) and result.no_space, result
    assert os.pread(fd, CHUNK, CHUNK) == bytes(CHUNK)  # nothing written
    w.close(TID, keep=False)  # closes its fd


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["step", "enter", "leave", "read"]), max_size=40))
def test_check_steps_change_at_a_read_only_after_a_step_or_inside_a_sync(ops: list[str]) -> None:
    """The bound on a final check sees progress (a changed ``moved()``) at a
    read exactly when a step was made since the last read or an fsync is in
    progress (it reports nothing until it returns)."""
    steps = CheckSteps()
    syncs: list[contextlib.ExitStack] = []
    last, stepped = steps.moved(), False
    for op in ops:
        if op == "step":
            steps.step()
            stepped = True
        elif op == "enter":
            stack = contextlib.ExitStack()
            stack.enter_context(steps.syncing())
            syncs.append(stack)
            stepped = True
        elif op == "leave" and syncs:
            syncs.pop().close()
            stepped = True
        elif op == "read":
            now = steps.moved()
            assert (now != last) == (stepped or bool(syncs)), (ops, now, last)
            last, stepped = now, False


def test_a_final_check_inside_a_long_fsync_is_not_timed_out() -> None:
    """A receiver's transfer whose final check sits in one fsync longer than
    the idle bound (read once a second, as the receiver does) is alive; once
    the sync is over and nothing moves, the bound ends it as before."""
    steps = CheckSteps()
    t = IncomingTransfer(total=1, credit=1, idle_timeout=5.0, now=0.0)
    t.on_chunk(0, True, 1.0)
    t.on_written(0)
    t.on_done(b"d" * 32, 1, 2.0)
    assert t.poll() == [FinishFile()]
    with steps.syncing():
        for now in range(3, 60):  # 57 s inside one fsync
            t.on_checked(steps.moved(), float(now))
            t.on_timer(float(now))
            assert t.poll() == [], now
    t.on_checked(steps.moved(), 60.0)  # it returned: a step
    for now in range(61, 66):
        t.on_checked(steps.moved(), float(now))
        t.on_timer(float(now))
    assert t.poll() == []
    t.on_checked(steps.moved(), 66.0)
    t.on_timer(66.0)
    assert [type(out) for out in t.poll()] == [Abandon]


def test_the_writer_reports_its_final_fsync_as_moving(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """While the finish's fsync is in progress (held here until the test
    reads on), every read of ``checks_moved`` is a change; after the file's
    verdict, reads change no more."""
    w, results = writer
    entered, release = threading.Event(), threading.Event()

    def held_fsync(fd: int) -> None:
        entered.set()
        assert release.wait(WAIT), "the test never released the fsync"
        os.fsync(fd)  # the real one

    w._fsync = held_fsync  # what the finish calls (the real one: os.fsync)
    data = os.urandom(2 * CHUNK + 7)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    w.open(TID, fd, CHUNK, len(data), ChunkBitmap(3))
    for index in range(3):
        w.write(TID, index, data[index * CHUNK : (index + 1) * CHUNK])
        assert _index(_next(results)) == index
    before = w.checks_moved
    assert w.checks_moved == before  # nothing in progress: no change
    w.finish(TID)
    assert entered.wait(WAIT), "the finish never reached its fsync"
    seen = [w.checks_moved for _ in range(3)]
    assert len({before, *seen}) == 4, (before, seen)
    release.set()
    assert _next(results) == Finished(TID, blake3.blake3(data).digest())
    after = w.checks_moved
    assert w.checks_moved == after != seen[-1]
    w.close(TID, keep=False)  # closes its fd


def _held_fsync(w: FileWriter) -> tuple[threading.Event, threading.Event]:
    """Hold every final check's fsync until the returned ``release`` is set
    (``entered``: one is inside)."""
    entered, release = threading.Event(), threading.Event()

    def held_fsync(fd: int) -> None:
        entered.set()
        assert release.wait(WAIT), "the test never released the fsync"
        os.fsync(fd)

    w._fsync = held_fsync
    return entered, release


def _open_written(w: FileWriter, results: Results, path: Path, tid: bytes) -> tuple[int, bytes]:
    """A file of three chunks opened as ``tid`` and written."""
    data = os.urandom(2 * CHUNK + 11)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    w.open(tid, fd, CHUNK, len(data), ChunkBitmap(3))
    for index in range(3):
        w.write(tid, index, data[index * CHUNK : (index + 1) * CHUNK])
        assert _next(results) == Written(tid, index)
    return fd, data


def test_a_long_final_check_holds_up_no_other_files_writes(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """While one file's final check sits in its fsync, another file's chunks
    are written (and its own check, on a second thread, finishes); the held
    one's verdict comes once its fsync returns."""
    w, results = writer
    entered, release = _held_fsync(w)
    slow = bytes(16)
    _, slow_data = _open_written(w, results, tmp_path / "slow", slow)
    w.finish(slow)
    assert entered.wait(WAIT)
    w._fsync = os.fsync  # the next check's is the real one
    _, data = _open_written(w, results, tmp_path / "fast", TID)  # not behind the held check
    w.finish(TID)
    assert _next(results) == Finished(TID, blake3.blake3(data).digest())
    release.set()
    assert _next(results) == Finished(slow, blake3.blake3(slow_data).digest())
    w.close(TID, keep=False)
    w.close(slow, keep=False)


def _written_with_a_manifest(
    w: FileWriter, results: Results, tmp_path: Path
) -> tuple[Path, Manifest]:
    """A file of three chunks (fewer than CHECKPOINT_CHUNKS: its manifest
    lists none yet) opened as ``b"t"`` with a manifest in ``tmp_path/inbox``
    and written: (the inbox, the manifest's template)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = os.urandom(2 * CHUNK + 5)
    _, m = _open(w, inbox, len(data))
    for index in range(3):
        w.write(b"t", index, data[index * CHUNK : (index + 1) * CHUNK])
        assert _next(results) == Written(b"t", index)
    return inbox, m


@pytest.mark.parametrize("where", ["in its fsync", "reading the part back"])
def test_a_part_closed_in_its_final_check_is_kept_with_what_is_durable(
    tmp_path: Path, writer: tuple[FileWriter, Results], where: str
) -> None:
    """A file closed with keep while its final check runs (a cancel with
    --keep, the node's stop): inside the check's fsync the close syncs
    nothing (the disk may hang there), so the manifest keeps the last
    checkpoint's chunks (none here: fewer than CHECKPOINT_CHUNKS); past it,
    every chunk is durable and the manifest lists them all (it listed none:
    a resume sent the whole file again)."""
    w, results = writer
    inbox, m = _written_with_a_manifest(w, results, tmp_path)
    entered, release, synced = threading.Event(), threading.Event(), threading.Event()
    step = w.check_steps.step

    def held_fsync(fd: int) -> None:
        if where == "in its fsync":
            entered.set()
            assert release.wait(WAIT), "the test never released the fsync"
        os.fsync(fd)
        synced.set()

    def held_step() -> None:
        step()
        if where != "in its fsync" and synced.is_set() and not entered.is_set():
            entered.set()
            assert release.wait(WAIT), "the test never released the read-back"

    w._fsync = held_fsync
    w.check_steps.step = held_step  # type: ignore[method-assign]
    try:
        w.finish(b"t")
        assert entered.wait(WAIT), f"the check never got {where}"
        w.close(b"t", keep=True)
        # (the writer's ops run in order: this file's Written follows the close)
        _open_written(w, results, tmp_path / "other", TID)
        assert _held(inbox, m) == (0 if where == "in its fsync" else 3)
    finally:
        release.set()
    assert _next(results) == Detached(b"t")
    w.close(TID, keep=False)


def test_a_part_closed_while_its_check_waits_for_a_place_is_not_synced(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """MAX_CHECKS other files' checks sit in their fsync (a disk that
    hangs), so this file's check waits for a place; closed with keep then,
    its part is kept with the last checkpoint's manifest and no sync of its
    own (it would join the others in the disk and hold every write)."""
    w, results = writer
    entered, release = _held_fsync(w)
    others = [bytes([n]) * 16 for n in range(1, file_writer.MAX_CHECKS + 1)]
    try:
        held = {tid: _open_written(w, results, tmp_path / f"o{n}", tid)[1]
                for n, tid in enumerate(others)}  # fmt: skip
        for tid in others:
            w.finish(tid)
        assert entered.wait(WAIT)
        inbox, m = _written_with_a_manifest(w, results, tmp_path)
        w.finish(b"t")
        w.close(b"t", keep=True)
        _open_written(w, results, tmp_path / "after", TID)  # (the close ran before it)
        assert _held(inbox, m) == 0
    finally:
        release.set()
    verdicts = {_next(results) for _ in others}
    assert verdicts == {Finished(tid, blake3.blake3(held[tid]).digest()) for tid in others}
    for tid in [*others, TID]:
        w.close(tid, keep=False)


def test_a_check_of_a_closed_file_is_detached_and_checks_are_bounded(
    tmp_path: Path, writer: tuple[FileWriter, Results]
) -> None:
    """A file closed while its check is in fsync: the writer goes on at once
    (its next file's chunks are written), and the check, once it returns,
    gives no verdict (Detached). At most MAX_CHECKS run at once; a check of
    a closed file frees its place, up to MAX_DETACHED_CHECKS of them."""
    w, results = writer
    entered, release = _held_fsync(w)
    held = [bytes([n]) * 16 for n in range(file_writer.MAX_CHECKS + 1)]
    for n, tid in enumerate(held):
        _open_written(w, results, tmp_path / f"held{n}", tid)
        w.finish(tid)
    assert entered.wait(WAIT)
    wait_until(lambda: len(w._checks_waiting) == 1 or None, WAIT, "a check waiting")
    assert len(w._checks_running) == file_writer.MAX_CHECKS
    assert w._checks_waiting[0].tid == held[-1]  # in order
    w.close(held[0], keep=False)  # its check is left to its fsync
    _open_written(w, results, tmp_path / "next", TID)  # the writer did not wait for it
    wait_until(lambda: not w._checks_waiting or None, WAIT, "the waiting check started")
    assert len(w._checks_detached) == 1 and len(w._checks_running) == file_writer.MAX_CHECKS
    release.set()
    ended = [_next(results) for _ in held]
    assert Detached(held[0]) in ended
    assert sorted(r.tid for r in ended if isinstance(r, Finished)) == sorted(held[1:])
    for tid in (*held[1:], TID):
        w.close(tid, keep=False)


@pytest.mark.parametrize(("err", "full"), [(errno.ENOSPC, True), (errno.EIO, False)])
def test_a_final_check_that_fails_fails_its_file_as_a_write_would(
    tmp_path: Path, writer: tuple[FileWriter, Results], err: int, full: bool
) -> None:
    """The check's fsync fails: the file fails (a full disk as a full disk:
    its part is then kept for a resume), and its close still closes it."""
    w, results = writer

    def failing_fsync(fd: int) -> None:
        raise OSError(err, os.strerror(err))

    w._fsync = failing_fsync
    fd, _ = _open_written(w, results, tmp_path / "part", TID)
    opened = os.fstat(fd)
    w.finish(TID)
    result = _next(results)
    assert isinstance(result, WriteFailed) and result.no_space is full, result
    w.close(TID, keep=full)
    wait_until(lambda: _closed(fd, opened), WAIT, "its fd closed")


def _closed(fd: int, opened: os.stat_result) -> bool:
    """``fd`` no longer refers to the file it was (closed, or reused since)."""
    try:
        now = os.fstat(fd)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def test_a_final_check_that_cannot_start_fails_its_file_and_frees_its_place(
    tmp_path: Path, writer: tuple[FileWriter, Results], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process out of threads: a final check whose thread cannot start
    fails its file with that reason, its descriptor is closed and its place
    given back (it held one of MAX_CHECKS, and barred direct writes, for
    good); more of them than places, then a sound one still gets its
    verdict once threads start again."""
    w, results = writer
    real_start = threading.Thread.start

    def no_threads(thread: threading.Thread) -> None:
        if thread.name == "pc-check":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    tids = [bytes([n]) * 16 for n in range(file_writer.MAX_CHECKS + 2)]
    for n, tid in enumerate(tids):
        _open_written(w, results, tmp_path / f"f{n}", tid)
        w.finish(tid)
        result = _next(results)
        assert result == WriteFailed(tid, "cannot start the final check (can't start new thread)")
        w.close(tid, keep=False)
    wait_until(lambda: not (w._checks_running or w._in_fsync) or None, WAIT, "places given back")
    monkeypatch.setattr(threading.Thread, "start", real_start)
    _, data = _open_written(w, results, tmp_path / "sound", TID)
    w.finish(TID)
    assert _next(results) == Finished(TID, blake3.blake3(data).digest())
    w.close(TID, keep=False)


def test_a_final_check_that_breaks_unexpectedly_fails_its_file_and_frees_its_place(
    tmp_path: Path, writer: tuple[FileWriter, Results], caplog: pytest.LogCaptureFixture
) -> None:
    """An exception no check expects (as a folder's feeder dropped by a close
    on the writer thread meanwhile: AttributeError) fails its file, logged
    once without the file's bytes, and the check's place is given back: more
    such checks than there are places, then a sound one still gets its
    verdict."""
    w, results = writer

    def broken_fsync(fd: int) -> None:
        raise AttributeError("'NoneType' object has no attribute 'finish'")

    w._fsync = broken_fsync
    broken = [bytes([n]) * 16 for n in range(file_writer.MAX_CHECKS + 3)]
    for n, tid in enumerate(broken):
        _open_written(w, results, tmp_path / f"broken{n}", tid)
        w.finish(tid)
        result = _next(results)
        assert result == WriteFailed(tid, "the final check failed unexpectedly (AttributeError)")
        w.close(tid, keep=False)
    wait_until(lambda: not w._checks_running or None, WAIT, "every check's place given back")
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == len(broken)
    w._fsync = os.fsync
    _, data = _open_written(w, results, tmp_path / "sound", TID)
    w.finish(TID)
    assert _next(results) == Finished(TID, blake3.blake3(data).digest())
    w.close(TID, keep=False)
