"""The writer's direct path (``O_DIRECT``): on a filesystem with blocks, the
whole pages of each chunk go from the pool's page-aligned buffers straight
to the disk, the tail of a page through the page cache, and the verdict's
read-back reads the disk the same way. Content is checked by hash for files
of awkward sizes, for parts continued by the other path (resume), and on a
disk that fills; tmpfs keeps today's buffered path. A node turned off
(``--no-direct-writes``) writes nothing directly."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import queue
import random
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import zmq

import actors.file_writer as file_writer
import actors.inbox as inbox_module
from actors.file_writer import (
    DIRECT_ALIGN,
    FileWriter,
    Finished,
    Published,
    WriteFailed,
    WriterResult,
    Written,
    hash_direct,
)
from actors.inbox import stamp as inbox_stamp
from actors.read_back import cut_unit
from peercrypt.core.bitmap import ChunkBitmap
from peercrypt.core.names import candidate_names
from peercrypt.testing.disk import DiskUnavailable, small_tmpfs
from peercrypt.testing.nodes import NodeProcess, blake3_file, free_port

CHUNK = 64 * 1024
WAIT = 10.0  # s; every wait below is bounded


class Harness:
    """A started writer and the actor's side of it (its PAIR socket)."""

    def __init__(self, direct: bool = True) -> None:
        self.followed = False  # (set by _early_harness) fresh parts read back by the follower
        self.ctx: zmq.Context[Any] = zmq.Context()
        address = f"inproc://test-direct-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.linger = 0
        self.sock.bind(address)
        self.writer = FileWriter(self.ctx, address, 64 * 1024 * 1024, direct=direct)
        self.writer.start()

    def next(self) -> WriterResult:
        deadline = time.monotonic() + WAIT
        while True:
            with contextlib.suppress(queue.Empty):
                return self.writer.results.get_nowait()
            left = int((deadline - time.monotonic()) * 1000)
            assert left > 0 and self.sock.poll(left), "no result from the writer in time"
            self.sock.recv()

    def write(self, tid: bytes, index: int, data: bytes) -> WriterResult:
        """Chunk ``index`` through a pool buffer, as the receiver queues it."""
        buffer = self.writer.buffers.take(len(data))
        buffer[:] = data
        assert self.writer.write(tid, index, buffer)
        return self.next()

    def close(self) -> None:
        self.writer.stop()
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


@pytest.fixture
def pwrites(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int, int]]:
    """Every ``os.pwrite``: (through O_DIRECT, offset, length)."""
    seen: list[tuple[bool, int, int]] = []
    real = os.pwrite

    def spy(fd: int, data: Any, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        seen.append((direct, offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr("os.pwrite", spy)
    return seen


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def write_file(h: Harness, fd: int, data: bytes, indices: list[int], held: ChunkBitmap) -> None:
    pieces = chunks_of(data)
    h.writer.open(b"t", fd, CHUNK, len(data), held)
    for index in indices:
        assert h.write(b"t", index, pieces[index]) == Written(b"t", index)


def finish(h: Harness, fd: int, data: bytes) -> None:
    h.writer.finish(b"t")
    assert h.next() == Finished(b"t", blake3.blake3(data).digest())
    assert os.pread(fd, len(data) + 1, 0) == data


def new_part(directory: Path, size: int) -> int:
    fd = os.open(directory / "part", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)  # sparse, as the receiver creates it
    return fd


def fill(h: Harness, fd: int, data: bytes) -> tuple[WriteFailed, list[int]]:
    """Write ``data`` chunk by chunk, in order, into a part too large for its
    disk: the failure that ended it, and the chunks written before it."""
    pieces = chunks_of(data)
    h.writer.open(b"t", fd, CHUNK, len(data), ChunkBitmap(len(pieces)))
    written: list[int] = []
    for index, piece in enumerate(pieces):
        result = h.write(b"t", index, piece)
        if not isinstance(result, Written):
            assert isinstance(result, WriteFailed), result
            return result, written
        written.append(index)
    raise AssertionError("every chunk was written: the disk did not fill")


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A directory whose filesystem takes O_DIRECT (skipped where none does)."""
    probe = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        direct = file_writer.open_direct(probe)
    finally:
        os.close(probe)
    if direct is None:
        pytest.skip(f"{tmp_path} takes no O_DIRECT here")
    os.close(direct)
    return tmp_path


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 4096 * 3 + 17]
)
def test_files_of_awkward_sizes_go_to_the_disk_directly_but_their_tails(
    disk: Path,
    harness: Harness,
    pwrites: list[tuple[bool, int, int]],
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    """Whole pages direct, the last partial page through the page cache;
    the read-back (direct too, 16 KiB windows read ahead of the hash) hashes
    to the content, which the file holds."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    data = os.urandom(size)
    fd = new_part(disk, size)
    try:
        total = -(-size // CHUNK)
        order = list(range(total))[::-1]  # out of order: the tail first
        write_file(harness, fd, data, order, ChunkBitmap(total))
        finish(harness, fd, data)
        direct = sum(n for d, _, n in pwrites if d)
        assert direct == size - size % DIRECT_ALIGN
        assert sum(n for d, _, n in pwrites if not d) == size % DIRECT_ALIGN
    finally:
        harness.writer.close(b"t", keep=False)  # closes fd


@pytest.mark.parametrize("first_direct", [False, True])
def test_a_part_continued_by_the_other_path_verifies(
    disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    pwrites: list[tuple[bool, int, int]],
    first_direct: bool,
) -> None:
    """A part written in part through the page cache (a node where the
    direct path was off) and continued directly, or the other way round:
    the file and its verdict are the content's."""
    data = os.urandom(7 * CHUNK + 1234)
    total = -(-len(data) // CHUNK)
    first = [i for i in range(total) if i % 2 == 0]
    rest = [i for i in range(total) if i % 2 == 1]
    fd = new_part(disk, len(data))
    real_open_direct = file_writer.open_direct
    try:
        for leg, indices, direct in ((0, first, first_direct), (1, rest, not first_direct)):
            opener = real_open_direct if direct else (lambda fd: None)
            monkeypatch.setattr(file_writer, "open_direct", opener)
            h = Harness()
            try:
                held = ChunkBitmap(total)
                if leg == 1:
                    for i in first:
                        held.add(i)
                pwrites.clear()
                write_file(h, fd, data, indices, held)
                assert {d for d, _, n in pwrites if n >= DIRECT_ALIGN} == {direct}
                if leg == 1:
                    finish(h, fd, data)
                h.writer.close(b"t", keep=False)
                h.writer.forget(b"t")
            finally:
                h.close()
            fd = os.open(disk / "part", os.O_RDWR)  # the close closed it: as a resume
    finally:
        os.close(fd)


def test_the_direct_read_back_sees_what_another_writer_changed(disk: Path) -> None:
    """A byte changed through the page cache after the direct writes is in
    the verdict: the read-back reads what the disk holds once synced."""
    data = os.urandom(3 * CHUNK + 100)
    fd = new_part(disk, len(data))
    direct = file_writer.open_direct(fd)
    assert direct is not None
    try:
        h = Harness()
        try:
            write_file(h, fd, data, list(range(4)), ChunkBitmap(4))
            with open(disk / "part", "r+b") as other:
                other.seek(CHUNK + 5)
                other.write(bytes([data[CHUNK + 5] ^ 1]))
            os.fsync(fd)
            changed = bytearray(data)
            changed[CHUNK + 5] ^= 1
            assert hash_direct(direct, len(data)) == blake3.blake3(changed).digest()
            h.writer.finish(b"t")
            assert h.next() == Finished(b"t", blake3.blake3(changed).digest())
            h.writer.close(b"t", keep=False)
        finally:
            h.close()
    finally:
        os.close(direct)


def test_a_direct_read_back_of_a_part_cut_short_fails(disk: Path) -> None:
    data = os.urandom(2 * CHUNK)
    fd = new_part(disk, len(data))
    os.pwrite(fd, data, 0)
    direct = file_writer.open_direct(fd)
    assert direct is not None
    try:
        os.ftruncate(fd, CHUNK + 10)
        with pytest.raises(OSError, match="cut short"):
            hash_direct(direct, len(data))
    finally:
        os.close(direct)
        os.close(fd)


def _readers_alive() -> int:
    return sum(t.name == "pc-check" for t in threading.enumerate())


@pytest.mark.parametrize("slow", [0, 1, 2])
def test_the_direct_read_back_hashes_in_order_whichever_read_ends_first(
    disk: Path, monkeypatch: pytest.MonkeyPatch, slow: int
) -> None:
    """READS_IN_FLIGHT reads run at once, each into a window of its own:
    with every third read held back (so those after it end first), the
    verdict is still the content's, hashed in file order, and no window is
    read into while it is hashed. Its reader threads are gone after it."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    monkeypatch.setattr(file_writer, "READS_IN_FLIGHT", 3)
    data = os.urandom(40 * 4 * DIRECT_ALIGN + 123)
    fd = new_part(disk, len(data))
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    direct = file_writer.open_direct(fd)
    assert direct is not None
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if (offset // (4 * DIRECT_ALIGN)) % 3 == slow:
            time.sleep(0.01)  # (the later reads in flight end first)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(file_writer.os, "preadv", preadv)
    before = _readers_alive()
    try:
        assert hash_direct(direct, len(data)) == blake3.blake3(data).digest()
        assert _readers_alive() == before
    finally:
        os.close(direct)
        os.close(fd)


def small_direct_part(disk: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, int, int]:
    """A part of 12 read-back windows (made 16 KiB here) written with random
    content: the content, the part's descriptor and an O_DIRECT one of it."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    data = os.urandom(12 * 4 * DIRECT_ALIGN)
    fd = new_part(disk, len(data))
    os.pwrite(fd, data, 0)
    direct = file_writer.open_direct(fd)
    assert direct is not None
    return data, fd, direct


def test_a_failed_direct_read_back_leaves_no_reader_behind(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails (the part cut short) fails the hash, and its reader
    threads end with it: none is left for each check that failed."""
    data, fd, direct = small_direct_part(disk, monkeypatch)
    before = _readers_alive()
    try:
        os.ftruncate(fd, 5 * 4 * DIRECT_ALIGN + 10)
        with pytest.raises(OSError, match="cut short"):
            hash_direct(direct, len(data))
        assert _readers_alive() == before
    finally:
        os.close(direct)
        os.close(fd)


def test_tmpfs_keeps_the_page_cache_path(
    small_disk: Callable[[str], Path], harness: Harness, pwrites: list[tuple[bool, int, int]]
) -> None:
    where = small_disk("4m")
    data = os.urandom(3 * CHUNK + 7)
    fd = new_part(where, len(data))
    assert file_writer.open_direct(fd) is None
    try:
        write_file(harness, fd, data, [0, 1, 2, 3], ChunkBitmap(4))
        finish(harness, fd, data)
        assert pwrites and not any(d for d, _, _ in pwrites)
    finally:
        harness.writer.close(b"t", keep=False)


@pytest.mark.parametrize("allocate", [True, False])
def test_a_disk_that_fills_under_direct_writes_fails_as_full_keeping_what_was_written(
    small_ext4: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
    pwrites: list[tuple[bool, int, int]],
    allocate: bool,
) -> None:
    """A part larger than a small ext4: its chunks go direct until the disk
    is full, then the file fails as on a full disk (``no_space``: its part
    is kept), whether the allocation ahead or the direct write itself hits
    ENOSPC; every chunk reported written holds its content."""
    where = small_ext4(4 * 1024 * 1024)
    if not allocate:
        monkeypatch.setattr(file_writer, "_block_allocator", lambda: lambda fd, o, n: False)
    data = os.urandom(96 * CHUNK)  # 6 MiB on a 4 MiB disk
    fd = new_part(where, len(data))
    if file_writer.open_direct(fd) is None:
        pytest.skip("this ext4 takes no O_DIRECT")
    h = Harness()
    try:
        pieces = chunks_of(data)
        result, written = fill(h, fd, data)
        assert result.no_space, result
        assert "space" in result.text.lower(), result.text
        assert 0 < len(written) < len(pieces)
        assert all(d for d, _, _ in pwrites)  # (page multiples: all direct)
        for index in written:
            assert os.pread(fd, CHUNK, index * CHUNK) == pieces[index], index
        h.writer.close(b"t", keep=False)
    finally:
        h.close()


@pytest.mark.parametrize("how", ["on by default", "--no-direct-writes", "environment", "config"])
def test_a_node_writes_directly_unless_told_not_to(
    ext4_inbox: Path,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    tmp_path: Path,
    how: str,
) -> None:
    """Into an inbox on ext4 a node writes the chunks' whole pages with
    O_DIRECT (counter ``receiver.direct-bytes``), but for each chunk's last
    block; turned off (the flag, its
    variable or the config file key) it writes none so, and the received file
    holds the content either way."""
    config = tmp_path / "direct.toml"
    config.write_text("direct_writes = false\n")
    args, env = {
        "on by default": ((), None),
        "--no-direct-writes": (("--no-direct-writes",), None),
        "environment": ((), {"PEERCRYPT_DIRECT_WRITES": "false"}),
        "config": ((), {"PEERCRYPT_CONFIG": str(config)}),
    }[how]
    receiver = node_factory("--inbox", str(ext4_inbox), *args, env=env, name="receiver")
    sender = node_factory(name="sender")
    size = 4 * 1024 * 1024 + 3 * DIRECT_ALIGN + 17
    path = make_file(size, name="direct.bin")
    result = sender.send_result(path, "127.0.0.1", receiver.port, timeout=60)
    assert result.returncode == 0, result.describe()
    assert blake3_file(ext4_inbox / result.json["stored_as"]) == blake3_file(path)
    # The report that counts the file received has the writer's bytes too.
    receiver.wait_for_counter("receiver.received", 1)
    direct = receiver.counters().get("receiver.direct-bytes", 0)
    if how == "on by default":
        # every whole page but each chunk's last block (hashed as written: through the
        # page cache, read back from there) and the tail of a page
        chunks = result.json["stats"]["chunks"]
        assert direct == size - size % DIRECT_ALIGN - (chunks - 1) * DIRECT_ALIGN
    else:
        assert direct == 0


@pytest.mark.parametrize(
    "transport, direct", [("pub", True), ("udp", True), ("udp", False)], ids=["pub", "udp", "off"]
)
def test_the_multicast_receiver_reports_its_direct_writes(
    ext4_inbox: Path,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    transport: str,
    direct: bool,
) -> None:
    """A multicast session into an inbox on ext4 (over PUB/SUB or a UDP
    group) writes the whole pages of its chunks but their last blocks with
    O_DIRECT, counted as ``mreceiver.direct-bytes`` (the unicast receiver's
    ``receiver.direct-bytes``); with ``--no-direct-writes`` none. The file
    holds the content either way."""
    args = () if direct else ("--no-direct-writes",)
    receiver = node_factory("--inbox", str(ext4_inbox), *args, name="receiver")
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}:{free_port()}"
    udp = ("--multicast-group", group, "--multicast-ttl", "0") if transport == "udp" else ()
    sender = node_factory(*udp, name="sender")
    size = 3 * 1024 * 1024 + 5 * DIRECT_ALIGN + 17  # 4 chunks, the last ends mid-page
    path = make_file(size, name="direct-mc.bin")
    code, result = sender.send(
        path, receiver.host, receiver.port, "-m", "--chunk-size", str(1024 * 1024), timeout=60
    )
    assert code == 0, result
    assert result["stats"]["udp"] == (transport == "udp")
    stored = ext4_inbox / result["receivers"][0]["stored_as"]
    assert blake3_file(stored) == blake3_file(path)
    # The report that counts the session received has the writer's bytes too.
    receiver.wait_for_counter("mreceiver.received", 1)
    written = receiver.counters().get("mreceiver.direct-bytes", 0)
    # (each chunk's last block through the page cache: hashed as written)
    assert written == (size - size % DIRECT_ALIGN - 3 * DIRECT_ALIGN if direct else 0)


def test_a_failed_file_past_the_ones_kept_has_its_descriptors_closed(
    small_ext4: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FAILED_MEMORY failed files kept already, the next one's part and
    direct descriptors are closed when it fails, not left open for good."""
    monkeypatch.setattr(file_writer, "FAILED_MEMORY", 0)
    where = small_ext4(4 * 1024 * 1024)
    data = os.urandom(96 * CHUNK)  # 6 MiB on a 4 MiB disk
    fd = new_part(where, len(data))
    before = set(os.listdir("/proc/self/fd"))
    h = Harness()
    try:
        result, _ = fill(h, fd, data)
        assert result.no_space, result
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF
        # Nothing else of the file's left open (its direct descriptor).
        left = set(os.listdir("/proc/self/fd")) - before
        assert not any(
            os.readlink(f"/proc/self/fd/{n}").startswith(str(where))
            for n in left
            if os.path.exists(f"/proc/self/fd/{n}")
        ), left
        h.writer.close(b"t", keep=False)  # finds nothing: no second close
        h.writer.finish(b"x")  # (the writer still answers)
    finally:
        h.close()


def test_a_passing_failure_to_open_directly_leaves_the_filesystem_direct(
    disk: Path, harness: Harness
) -> None:
    """Out of descriptors (EMFILE) when the direct descriptor is opened: that
    file goes through the page cache, and the next file on the same
    filesystem is opened directly again (only EINVAL marks a filesystem)."""
    first = new_part(disk, CHUNK)
    second = os.open(disk / "second", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new one
        with pytest.raises(OSError) as full:
            file_writer.open_direct(first)
        assert full.value.errno == errno.EMFILE
        assert harness.writer._open_direct(first) is None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    direct = harness.writer._open_direct(second)
    try:
        assert direct is not None
        assert fcntl.fcntl(direct, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        for fd in (first, second, direct):
            if fd is not None:
                os.close(fd)


def test_chunk_buffers_beyond_the_mapped_ones_come_from_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most MAX_MAPPED buffers are mappings of their own at once (each
    takes a kernel map entry); beyond, a buffer is the heap's, and a mapping
    dropped makes room for the next."""
    monkeypatch.setattr(file_writer, "MAX_MAPPED", 3)
    pool = file_writer.BufferPool(0)  # keeps nothing given back
    held = [pool.take(DIRECT_ALIGN) for _ in range(3)]
    assert all(file_writer.aligned(b) for b in held) and pool.mapped == 3
    extra = pool.take(DIRECT_ALIGN)
    assert isinstance(extra.obj, bytearray) and not file_writer.aligned(extra)
    assert len(extra) == DIRECT_ALIGN
    pool.give(held.pop())  # dropped (the pool keeps nothing): its mapping goes
    assert pool.mapped == 2
    again = pool.take(DIRECT_ALIGN)
    assert file_writer.aligned(again) and pool.mapped == 3
    assert len(pool.take(0)) == 0 and pool.mapped == 3


def _vma_of(view: memoryview) -> dict[str, str]:
    """The fields of this process's mapping (``/proc/self/smaps``) that holds ``view``."""
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:  # a mapping's first line: its address range
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low <= address < high
        elif inside and ":" in head:
            fields[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


@pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    or "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(),
    reason="transparent huge pages off (or not Linux)",
)
def test_chunk_buffers_of_huge_page_size_are_laid_on_huge_pages() -> None:
    """A 4 MiB chunk buffer starts on a 2 MiB boundary, in a private mapping
    asked to be backed by huge pages (eligible in smaps: where the kernel
    gives them only if asked, only because it was); a 1 MiB one on a page,
    exactly as long as asked, and written directly all the same."""
    import ctypes

    MiB = 1024 * 1024
    pool = file_writer.BufferPool(64 * MiB)
    big = pool.take(4 * MiB)
    assert len(big) == 4 * MiB and file_writer.aligned(big)
    assert ctypes.addressof(ctypes.c_char.from_buffer(big)) % file_writer.HUGE_PAGE == 0
    big[:] = b"\x5a" * (4 * MiB)  # written whole, read back whole
    assert bytes(big[-3:]) == b"ZZZ" and bytes(big[:1]) == b"Z"
    vma = _vma_of(big)
    status = Path("/proc/self/status").read_text()
    if "THPeligible" not in vma or "THP_enabled:\t0" in status:
        pytest.skip("this kernel does not say, or huge pages are off for this process")
    assert vma["THPeligible"] == "1", vma
    assert "sh" not in vma.get("VmFlags", "").split(), vma  # private, not shared memory
    small = pool.take(MiB)
    assert len(small) == MiB and file_writer.aligned(small)
    pool.give(big)
    pool.give(small)
    assert pool.take(4 * MiB) is big  # kept and reused, not mapped again
    assert pool.maps == 2


def test_a_reader_that_cannot_start_leaves_none_of_the_others_behind(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of the read-back's reader threads cannot start (the
    process is out of threads): the hash fails with that error, and the
    reader started before it ends with it, not left waiting for jobs."""
    data, fd, direct = small_direct_part(disk, monkeypatch)
    started: list[threading.Thread] = []

    class OneThread(threading.Thread):
        def start(self) -> None:
            if started:
                raise RuntimeError("can't start new thread")
            started.append(self)
            super().start()

    monkeypatch.setattr(file_writer.threading, "Thread", OneThread)
    try:
        with pytest.raises(RuntimeError, match="can't start"):
            hash_direct(direct, len(data))
        assert started and not started[0].is_alive(), "a reader was left waiting"
    finally:
        os.close(direct)
        os.close(fd)


# -- the read-back taken as a fresh part is written (actors/read_back.py) -------------


@pytest.fixture(params=["disk", "disk-direct", "tmpfs", "disk-followed", "tmpfs-followed"])
def fresh_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on a disk (tmp_path: written through the page cache, or
    ``disk-direct``: with O_DIRECT) or on tmpfs; its parts hashed as
    written, or (``-followed``: where what a cut leaves cannot be told)
    read back as written by the follower."""
    if request.param.startswith("disk"):
        yield request.getfixturevalue("disk")
        return
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as d:
        yield Path(d)


def _direct(request: pytest.FixtureRequest) -> bool:
    """Whether the test's fresh_dir writes parts with O_DIRECT."""
    return bool(request.node.callspec.params.get("fresh_dir") == "disk-direct")


def _followed(request: pytest.FixtureRequest) -> bool:
    """Whether the test's fresh_dir has its parts read back by the follower."""
    return str(request.node.callspec.params.get("fresh_dir")).endswith("-followed")


@contextlib.contextmanager
def _early_harness(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    """A writer whose read-back windows are four pages (many per file),
    writing as the test's fresh_dir says: with O_DIRECT or through the page
    cache, hashed as written or followed (what a cut leaves allocated
    unknown, as where O_TMPFILE is refused, or on tmpfs a huge page that
    a chunk does not fill)."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    if _followed(request):  # unknown, or a huge page larger than a chunk (tmpfs)
        unit = None if _direct(request) or "disk" in str(request.node.callspec.id) else 2 << 20
        monkeypatch.setattr(file_writer, "cut_unit", lambda fd, direct: unit)
    h = Harness(direct=_direct(request))
    h.followed = _followed(request)
    try:
        yield h
    finally:
        h.close()


def _fresh(h: Harness, directory: Path, size: int) -> tuple[Path, int]:
    """A part created as the receivers create one, opened as fresh."""
    path = directory / "part"
    fd = new_part(directory, size)
    watched = h.writer.watch(fd)
    total = -(-size // CHUNK)
    h.writer.open(b"t", fd, CHUNK, size, ChunkBitmap(total), fresh=watched)
    return path, fd


def _reachable(h: Harness, written: int) -> int:
    """How far the follower reads a part written ``written`` bytes from its
    start: whole windows, never within its lag of the written end."""
    follower = h.writer._follower
    end = written - follower._lag
    return max(0, end - end % follower._window)


def _read_back_to(h: Harness, at_least: int) -> None:
    """Until the follower has read back ``at_least`` bytes (bounded); a
    part written directly is hashed as written, on the writer's thread."""
    if not h.followed:
        return
    follower = h.writer._follower
    with follower._cond:
        moved = follower._cond.wait_for(lambda: follower.read_bytes >= at_least, WAIT)
    assert moved, f"only {follower.read_bytes} of {at_least} bytes read back"


def _write(h: Harness, data: bytes, indices: list[int]) -> None:
    pieces = chunks_of(data)
    for index in indices:
        assert h.write(b"t", index, pieces[index]) == Written(b"t", index)


@pytest.mark.parametrize("caught_up", [True, False])
@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_a_fresh_part_read_back_as_written_gives_the_content_s_hash(
    fresh_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    order: str,
    caught_up: bool,
) -> None:
    """In order, out of order (parallel lanes): the verdict comes from the
    read-back (or hash) as written, none after the fsync, and is the
    content's hash, whether the read-back had caught up when the check
    began or the check read the rest."""
    data = os.urandom(9 * CHUNK + 4096 * 3 + 17)
    total = -(-len(data) // CHUNK)
    indices = list(range(total))
    if order == "reversed":
        indices.reverse()
    elif order == "shuffled":
        random.shuffle(indices)
    with _early_harness(monkeypatch, request) as h:
        _, fd = _fresh(h, fresh_dir, len(data))
        _write(h, data, indices)
        assert (h.writer.direct_bytes > 0) == _direct(request)
        if not h.followed:
            assert h.writer._follower.read_bytes == 0 and not h.writer._follower.running
            if order == "in-order":  # each chunk's last page once the next one was written
                assert h.writer.as_written_read == (total - 1) * DIRECT_ALIGN
        if caught_up:
            _read_back_to(h, _reachable(h, len(data)))
        follower = h.writer._follower._thread
        finish(h, fd, data)
        if follower is not None:  # its last part taken over by the check: it ends
            follower.join(WAIT)
            assert not follower.is_alive()
        assert (h.writer.early_checks, h.writer.full_checks) == (1, 0)
        h.writer.close(b"t", keep=False)


def _verdict_of_a_changed_part(h: Harness, fd: int, data: bytes) -> bytes:
    """Its final check asked for: the part holds other bytes than ``data``
    and the verdict is their hash (the bytes stored, returned)."""
    h.writer.finish(b"t")
    result = h.next()
    stored = os.pread(fd, len(data) + 1, 0)
    assert stored != data
    assert result == Finished(b"t", blake3.blake3(stored).digest())
    return stored


def _tampered(
    fresh_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tamper: Callable[..., None],
    early: int = 0,
) -> None:
    """Half the chunks written and read back (or hashed), ``tamper(h, path,
    fd, data)``, the rest written: the verdict is the hash of the part as
    changed, not the content's (from the whole read-back, or ``early``:
    1 if the read-back as written saw the change itself). No byte of the
    content is zero: a cut that zeroes a single byte always changes it."""
    data = os.urandom(12 * CHUNK).replace(b"\0", b"\1")
    with _early_harness(monkeypatch, request) as h:
        path, fd = _fresh(h, fresh_dir, len(data))
        _write(h, data, list(range(6)))
        _read_back_to(h, _reachable(h, 6 * CHUNK))
        tamper(h, path, fd, data)
        _write(h, data, list(range(6, 12)))
        _verdict_of_a_changed_part(h, fd, data)
        assert (h.writer.early_checks, h.writer.full_checks) == (early, 1 - early)
        h.writer.close(b"t", keep=False)


def test_a_part_opened_and_changed_after_it_was_read_back_is_read_back_whole(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    def change(h: Harness, path: Path, fd: int, data: bytes) -> None:
        with open(path, "r+b") as f:  # another process would open it just so
            f.write(bytes([data[0] ^ 0xFF]))

    _tampered(fresh_dir, monkeypatch, request, change)


def test_a_part_truncated_by_name_after_it_was_read_back_is_read_back_whole(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    def cut(h: Harness, path: Path, fd: int, data: bytes) -> None:
        os.truncate(path, CHUNK // 2)  # no open: no event
        os.truncate(path, len(data))  # its size again

    _tampered(fresh_dir, monkeypatch, request, cut)


def test_a_part_cut_inside_a_block_just_below_what_was_read_is_read_back_whole(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A cut one byte below what was read back zeroes the rest of its block
    without a hole there; the follower's lag leaves a written block above it
    that the cut frees for good (a hole), so the early hash does not stand.
    A part hashed as written: a cut inside the last block of the highest
    chunk written, which frees nothing written: that block is read back
    once a chunk above it is written, zeroes by then, in the verdict."""

    def cut(h: Harness, path: Path, fd: int, data: bytes) -> None:
        read = h.writer._follower.read_bytes if h.followed else 6 * CHUNK
        assert read > 0
        os.truncate(path, read - 1)  # no open: no event
        os.truncate(path, len(data))

    _tampered(fresh_dir, monkeypatch, request, cut, early=int(not _followed(request)))


def test_a_chunk_written_again_after_it_was_read_back_is_read_back_whole(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    def again(h: Harness, path: Path, fd: int, data: bytes) -> None:
        other = bytes([data[0] ^ 0xFF]) + data[1:CHUNK]
        assert h.write(b"t", 0, other) == Written(b"t", 0)

    _tampered(fresh_dir, monkeypatch, request, again)


@pytest.mark.parametrize("unit", [None, 3 * DIRECT_ALIGN])
def test_a_part_written_directly_where_a_cut_cannot_be_told_is_read_back_whole(
    disk: Path, monkeypatch: pytest.MonkeyPatch, unit: int | None
) -> None:
    """A fresh part written directly on a filesystem where what a cut
    leaves allocated cannot be told (no O_TMPFILE, no hole seen after a
    cut: None here), or does not divide the chunk: not watched, not hashed
    as written, read back whole after its fsync."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    monkeypatch.setattr(file_writer, "cut_unit", lambda fd, direct: unit)
    data = os.urandom(9 * CHUNK + 17)
    h = Harness()
    try:
        before = _fds()
        _, fd = _fresh(h, disk, len(data))
        _write(h, data, list(range(10)))
        assert h.writer.direct_bytes > 0  # (written directly indeed)
        finish(h, fd, data)
        assert (h.writer.early_checks, h.writer.full_checks) == (0, 1)
        assert h.writer._follower.read_bytes == 0 and not h.writer._follower.running
        assert h.writer.as_written_read == 0
        assert not any("inotify" in what for what in set(_fds().values()) - set(before.values()))
        h.writer.close(b"t", keep=False)
    finally:
        h.close()


def test_a_cut_s_unit_is_a_page_here_and_unknown_without_a_directory(disk: Path) -> None:
    """cut_unit: a cut inside a block of this disk's and tmpfs's files
    leaves that block (a page); a part whose directory is gone cannot be
    probed."""
    for directory in [disk, Path("/dev/shm")]:
        fd = new_part(directory, CHUNK)
        try:
            direct = file_writer.open_direct(fd)
            assert cut_unit(fd, direct) == DIRECT_ALIGN
            if direct is not None:
                os.close(direct)
        finally:
            os.close(fd)
            (directory / "part").unlink()
    gone = disk / "gone"
    gone.mkdir()
    fd = new_part(gone, CHUNK)
    try:
        (gone / "part").unlink()
        gone.rmdir()
        assert cut_unit(fd, None) is None
    finally:
        os.close(fd)


def test_a_part_whose_filesystem_shows_no_hole_is_not_watched(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A new part shows as the hole it is where SEEK_HOLE reports holes;
    where the filesystem calls it all data (the generic SEEK_HOLE: a file
    written out stands for one here), a truncate could not be seen, so it
    is not watched (its check reads it all after the fsync)."""
    with _early_harness(monkeypatch, request) as h:
        sparse = new_part(fresh_dir, 8 * CHUNK)
        try:
            fresh = h.writer.watch(sparse)
            assert fresh.wd is not None
            h.writer._watches.remove(fresh.wd)
        finally:
            os.close(sparse)
        written = os.open(fresh_dir / "written", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(written, os.urandom(8 * CHUNK))
            assert h.writer.watch(written).wd is None
        finally:
            os.close(written)


def test_a_part_not_fresh_is_read_back_whole_after_the_fsync(
    fresh_dir: Path, harness: Harness
) -> None:
    """A kept part (opened without watch()) keeps the whole read-back."""
    data = os.urandom(5 * CHUNK + 99)
    fd = new_part(fresh_dir, len(data))
    write_file(harness, fd, data, list(range(6)), ChunkBitmap(6))
    finish(harness, fd, data)
    assert (harness.writer.early_checks, harness.writer.full_checks) == (0, 1)
    assert not harness.writer._follower.running
    harness.writer.close(b"t", keep=False)


def _fds() -> dict[str, str]:
    """This process's open descriptors of files and inotify instances, and
    what each is (the listing's own descriptor, gone by then, and ZeroMQ's
    eventfds and sockets, made as it needs them, left out)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            what = os.readlink(f"/proc/self/fd/{fd}")
            if what.startswith("/") or "inotify" in what:
                found[fd] = what
    return found


def _checkers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pc-check"]


@pytest.mark.parametrize("checking", [False, True])
def test_a_part_closed_mid_read_back_leaves_no_descriptor_and_no_thread(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, checking: bool
) -> None:
    """Closed (a cancel) while it is read back (or hashed) as written, or
    while its final check waits for the read-back or reads the rest: its
    descriptors, its watch (and the inotify instance with it) and the
    follower's thread all go."""
    data = os.urandom(12 * CHUNK)
    with _early_harness(monkeypatch, request) as h:
        before, threads = _fds(), _checkers()
        _fresh(h, fresh_dir, len(data))
        _write(h, data, list(range(6)))
        _read_back_to(h, _reachable(h, 6 * CHUNK))
        follower = h.writer._follower._thread
        assert (follower is not None and follower.is_alive()) == h.followed
        if checking:  # a check cannot start before every chunk is written: all
            if h.followed:
                monkeypatch.setattr(h.writer._follower, "_next", lambda: None)  # (it stalls)
            _write(h, data, list(range(6, 12)))
            h.writer.finish(b"t")  # (it reads the rest itself)
        h.writer.close(b"t", keep=False)
        if checking:  # closed during the check, or right after it
            assert isinstance(h.next(), (file_writer.Detached, Finished))
        if follower is not None:
            follower.join(WAIT)
            assert not follower.is_alive()
        # The check's own thread ends after its verdict is queued: joined (one
        # that never ends stays, and fails the comparison).
        for thread in set(_checkers()) - set(threads):
            thread.join(WAIT)
        assert _checkers() == threads
        # Another file's chunk written: the close was applied before it.
        (fresh_dir / "part").unlink()
        other = new_part(fresh_dir, CHUNK)
        h.writer.open(b"u", other, CHUNK, CHUNK, ChunkBitmap(1))
        assert h.write(b"u", 0, data[:CHUNK]) == Written(b"u", 0)
        # t's descriptors close on the hashing thread, after its jobs queued before
        # (AsWritten.close): wait for those, then nothing of t may be left.
        drained = threading.Event()
        h.writer._hashing.put(None, lambda window: drained.set())
        assert drained.wait(WAIT)
        new = {fd: what for fd, what in _fds().items() if before.get(fd) != what}
        assert set(new.values()) == {str(fresh_dir / "part")}, new  # u's (and its direct one)
        h.writer.close(b"u", keep=False)


@pytest.mark.parametrize("where", ["inside-the-last-block", "below-it"])
@pytest.mark.parametrize("order", ["in-order", "last-first"])
def test_a_cut_between_the_two_writes_of_a_last_chunk_is_seen(
    disk: Path, monkeypatch: pytest.MonkeyPatch, order: str, where: str
) -> None:
    """The last chunk of a file whose size is not a whole number of pages,
    written directly, takes two writes: its last block (the rest of a page)
    through the page cache first, then its whole pages directly. A cut by
    name between the two (grown back to the part's size) inside that last
    block zeroes its rest, which the final check reads back after the
    fsync; one below it frees it (a hole: the whole read-back). Either way
    the verdict is the hash of the part as stored."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    data = os.urandom(5 * CHUNK + 3 * DIRECT_ALIGN + 17)
    last = len(data) // CHUNK * CHUNK  # the last chunk's offset
    pages = (len(data) - last) // DIRECT_ALIGN * DIRECT_ALIGN
    cut_at = last + pages + 5 if where == "inside-the-last-block" else last + pages - 100
    real = os.pwrite
    path = disk / "part"
    cuts: list[int] = []

    def pwrite(fd: int, what: Any, offset: int) -> int:
        done = real(fd, what, offset)
        if offset == last + pages and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            os.truncate(path, cut_at)  # another process, by name (no open): right then
            os.truncate(path, len(data))
            cuts.append(cut_at)
        return done

    h = Harness()
    try:
        _, fd = _fresh(h, disk, len(data))
        monkeypatch.setattr("os.pwrite", pwrite)
        total = -(-len(data) // CHUNK)
        _write(
            h, data, list(range(total)) if order == "in-order" else [total - 1, *range(total - 1)]
        )
        assert cuts == [cut_at] and h.writer.direct_bytes > 0
        assert len(_verdict_of_a_changed_part(h, fd, data)) == len(data)
        early = int(where == "inside-the-last-block")  # (else a hole: the whole read-back)
        assert (h.writer.early_checks, h.writer.full_checks) == (early, 1 - early)
        h.writer.close(b"t", keep=False)
    finally:
        h.close()


@pytest.mark.parametrize("where", ["disk-direct", "disk", "tmpfs"])
def test_a_chunk_written_again_that_fills_back_what_a_cut_freed_is_seen(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk written in order, the last one shorter than a page: all
    of it is the last block of what is written, so nothing of it is hashed
    as written, and writing it read back the block below it, the last of
    the chunk before. A cut by name inside that block zeroes the rest of it
    (read already) and frees the last chunk's block: a hole, unless that
    chunk is written again (a retransmission: none is hashed yet, so
    nothing taints the part), which fills it back. Then no hole and its
    size: the verdict must still be the hash of the part as stored."""
    monkeypatch.setattr(file_writer, "HASH_WINDOW", 4 * DIRECT_ALIGN)
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        directory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    else:
        directory = tmp_path
    data = os.urandom(5 * CHUNK + 100)
    total = -(-len(data) // CHUNK)
    h = Harness(direct=where == "disk-direct")
    try:
        path, fd = _fresh(h, directory, len(data))
        _write(h, data, list(range(total)))
        assert h.writer.as_written_read > 0  # (hashed as written indeed)
        os.truncate(path, (total - 1) * CHUNK - 50)  # by name, inside the block read back
        os.truncate(path, len(data))
        _write(h, data, [total - 1])  # again: the hole it left is filled
        _verdict_of_a_changed_part(h, fd, data)
        h.writer.close(b"t", keep=False)
    finally:
        h.close()
        if where == "tmpfs":
            with contextlib.suppress(FileNotFoundError):
                (directory / "part").unlink()
            directory.rmdir()


def test_the_cut_s_unit_is_probed_on_the_writer_s_thread_once_per_filesystem_and_way(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watch() runs on the receiver's thread, which must not wait for a
    disk: the probe (a MiB written and cut) runs on the writer's, once per
    filesystem and way of writing (directly or through the page cache)."""
    probes: list[tuple[str, bool]] = []
    real = file_writer.cut_unit

    def probe(fd: int, direct: int | None) -> int | None:
        probes.append((threading.current_thread().name, direct is not None))
        return real(fd, direct)

    monkeypatch.setattr(file_writer, "cut_unit", probe)
    data = os.urandom(3 * CHUNK + 17)
    for way in [True, False]:
        h = Harness(direct=way)
        try:
            for _ in range(2):
                path, fd = _fresh(h, disk, len(data))
                _write(h, data, list(range(4)))
                finish(h, fd, data)
                h.writer.close(b"t", keep=False)
                path.unlink()
            assert (h.writer.early_checks, h.writer.full_checks) == (2, 0)  # (hashed as written)
        finally:
            h.close()
    assert probes == [("pc-writer", True), ("pc-writer", False)]


def test_a_chunk_written_directly_has_its_last_block_written_first(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part hashed as written, written directly: each chunk's last block
    goes first (through the page cache), then the rest, so a cut by name
    right after the direct write, inside its last block, frees that last
    block (a hole): the verdict is the hash of what is stored. (The other
    way round, the last block written after the cut would fill back what
    it freed: the cut's zeroes, unseen, under the hash of the chunk's
    bytes.)"""
    data = os.urandom(12 * CHUNK)
    h = Harness(direct=True)
    try:
        path, fd = _fresh(h, disk, len(data))
        write_direct = h.writer._write_direct

        def then_cut(f: Any, chunk: Any, offset: int) -> int:
            done = write_direct(f, chunk, offset)
            if offset == 6 * CHUNK:
                os.truncate(path, 7 * CHUNK - DIRECT_ALIGN - 100)  # no open: no event
                os.truncate(path, len(data))
            return done

        monkeypatch.setattr(h.writer, "_write_direct", then_cut)
        _write(h, data, list(range(12)))
        assert h.writer.direct_bytes > 0
        _verdict_of_a_changed_part(h, fd, data)
        h.writer.close(b"t", keep=False)
    finally:
        h.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_chunks_hashed_on_the_hashing_thread_give_their_buffers_back(
    disk: Path, direct: bool
) -> None:
    """Chunks in the pool's buffers (as the receivers hand them over) of a
    part hashed as written: each buffer is the hashing thread's until its
    chunk is hashed, then back in the pool (none left out once the verdict
    is in); the verdict is the content's hash."""
    data = os.urandom(9 * CHUNK + 4096 + 17)
    h = Harness(direct=direct)
    try:
        _, fd = _fresh(h, disk, len(data))
        for index, piece in enumerate(chunks_of(data)):
            assert h.write(b"t", index, piece) == Written(b"t", index)  # (in a pool buffer)
        finish(h, fd, data)
        assert (h.writer.early_checks, h.writer.full_checks) == (1, 0)
        assert h.writer.buffers.out_bytes == 0
        assert [t.name for t in threading.enumerate()].count("pc-hash") == 1
        h.writer.close(b"t", keep=False)
    finally:
        h.close()
    assert "pc-hash" not in [t.name for t in threading.enumerate()]
    # After the stop, a job (a close, a check's mark) runs on its caller's
    # thread: none starts the hashing thread again.
    ran: list[str] = []
    h.writer._hashing.put(None, lambda window: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]
    assert "pc-hash" not in [t.name for t in threading.enumerate()]


def _verified_part(harness: Harness, inbox: Path) -> tuple[Path, bytes]:
    """A part of four chunks in ``inbox``, open in the writer as ``b"t"``,
    written and checked: its path and content."""
    data = os.urandom(3 * CHUNK + 5)
    part = inbox / ".f.bin.1.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    write_file(harness, fd, data, list(range(4)), ChunkBitmap(4))
    finish(harness, fd, data)
    return part, data


@pytest.mark.parametrize("proc", ["/proc", "no /proc"])
def test_a_verified_file_whose_link_finds_the_disk_full_keeps_its_part(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc: str
) -> None:
    """The inbox's disk fills between the file's check and its name: here a
    tmpfs whose every name is taken (the new name finds no room, as in a
    folder whose disk has no block left for it). The link fails as a full
    disk (``no-space``) and the verified part is kept (it was removed: a
    send again sent the whole file); once there is room, it is linked.
    Without /proc the part's name is linked, with the same outcome."""
    if proc == "no /proc":
        real_open = os.open

        def no_proc(path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path) == "/proc/self/fd":
                raise FileNotFoundError(errno.ENOENT, "no /proc here", path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(inbox_module.os, "open", no_proc)
    with contextlib.ExitStack() as mounted:
        try:
            inbox = mounted.enter_context(small_tmpfs(tmp_path / "disk", "4m", inodes=8))
        except DiskUnavailable as exc:
            pytest.skip(f"cannot mount a tmpfs: {exc}")
        try:
            part, data = _verified_part(harness, inbox)
            with pytest.raises(OSError) as no_room:
                for name in itertools.count():
                    (inbox / f"taken-{name}").touch()
            assert no_room.value.errno == errno.ENOSPC, no_room.value
            harness.writer.publish(b"t", part, inbox, "f.bin", 0o600)
            full = harness.next()
            assert isinstance(full, Published) and not full.stored and full.kept, full
            assert (full.code, full.text) == (
                "no-space",
                "cannot link the verified file: No space left on device",
            )
            assert part.read_bytes() == data  # (its name and content stay)
            (inbox / "taken-0").unlink()
            harness.writer.publish(b"t", part, inbox, "f.bin", 0o600)
            assert harness.next() == Published(b"t", "f.bin", inbox_stamp(inbox, "f.bin"))
            assert (inbox / "f.bin").read_bytes() == data
        finally:
            harness.writer.close(b"t", keep=False)


def test_the_writer_gives_a_verified_file_its_name_or_says_why_not(
    harness: Harness, tmp_path: Path
) -> None:
    """:meth:`FileWriter.publish` (the receivers' final step, off their
    threads): the file under its name with the mode asked for and its stamp;
    the next free name beside one taken; every candidate taken (the part is
    kept: ``kept``); a link refused (an inbox on another filesystem: the
    part is kept too, as after any failed link)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    try:
        part, data = _verified_part(harness, inbox)
        harness.writer.publish(b"t", part, inbox, "f.bin", 0o640)
        first = harness.next()
        assert isinstance(first, Published) and first.stored == "f.bin", first
        st = os.lstat(inbox / "f.bin")
        assert first.stamp is not None and (first.stamp.ino, first.stamp.size) == (
            st.st_ino,
            len(data),
        )
        assert st.st_mode & 0o777 == 0o640 and (inbox / "f.bin").read_bytes() == data
        harness.writer.publish(b"t", part, inbox, "f.bin", 0o600)
        assert harness.next() == Published(b"t", "f.1.bin", inbox_stamp(inbox, "f.1.bin"))
        taken = tmp_path / "taken"
        taken.mkdir()
        for candidate in candidate_names("g.bin"):
            (taken / candidate).touch()
        harness.writer.publish(b"t", part, taken, "g.bin", 0o600)
        assert harness.next() == Published(b"t", "", None, "no free name in the inbox", kept=True)
        elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            harness.writer.publish(b"t", part, elsewhere, "f.bin", 0o600)
            refused = harness.next()
            assert isinstance(refused, Published) and not refused.stored and refused.kept
            assert refused.code == "io", refused
            assert refused.text.startswith("cannot link the verified file: "), refused
            assert list(elsewhere.iterdir()) == []
        finally:
            shutil.rmtree(elsewhere)
    finally:
        harness.writer.close(b"t", keep=True)
        harness.writer.stop()  # (its close is done)
    # Linked under its name: its part is not kept for a resume.
    assert sorted(p.name for p in inbox.iterdir()) == ["f.1.bin", "f.bin"]
