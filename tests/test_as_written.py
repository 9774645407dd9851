"""A part hashed from its chunks as they are written (actors/read_back.py,
:class:`AsWritten`), against a cut by name at any moment: real files on
the disk (written with ``O_DIRECT`` as the writer does, or through the page
cache) and on tmpfs, chunks in any order, some written again with other
bytes, a ``truncate(2)`` by name to anywhere between two writes and back to
the part's size. Whatever happens, a verdict the writer would take (not
tainted, the part whole) is the hash of the bytes stored."""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actors.file_writer import DIRECT_ALIGN, hash_file, open_direct
from actors.read_back import (
    AsWritten,
    Hashing,
    cut_unit,
    tail_start,
    tmpfs_huge_page,
    whole,
)

CHUNK = 16 * 1024
CHUNKS = 8
SIZE = CHUNKS * CHUNK - 1000  # (a last chunk short of a page)


@pytest.fixture(scope="module", params=["disk-direct", "disk-buffered", "tmpfs"])
def where(request: pytest.FixtureRequest) -> Iterator[tuple[Path, bool, int]]:
    """A directory, whether parts there are written with O_DIRECT, and what
    a cut leaves allocated there (:func:`cut_unit`)."""
    if request.param == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        base = "/dev/shm"
    else:
        base = None
    with tempfile.TemporaryDirectory(dir=base) as d:
        probe = os.open(Path(d) / "probe", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            direct = open_direct(probe) if request.param == "disk-direct" else None
            if request.param == "disk-direct" and direct is None:
                pytest.skip(f"{d} takes no O_DIRECT here")
            unit = cut_unit(probe, direct)
            if direct is not None:
                os.close(direct)
        finally:
            os.close(probe)
        if unit is None or CHUNK % unit:
            pytest.skip(f"{d}: a cut's unit {unit} does not divide {CHUNK}")
        yield Path(d), request.param == "disk-direct", unit


@contextlib.contextmanager
def _part(
    directory: Path, direct: bool, size: int = SIZE
) -> Iterator[tuple[Path, int, int | None]]:
    path = directory / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)  # sparse, as the receiver creates it
    dfd = open_direct(fd) if direct else None
    try:
        yield path, fd, dfd
    finally:
        if dfd is not None:
            os.close(dfd)
        os.close(fd)
        path.unlink()


def _write(
    fd: int,
    dfd: int | None,
    data: bytes,
    offset: int,
    between: Callable[[], None] | None = None,
    unit: int = DIRECT_ALIGN,
) -> None:
    """As the writer: where the part is written directly, the chunk's last
    block first, through the page cache, then the rest directly (from
    page-aligned memory; ``between`` the two writes); else all of it
    through the page cache."""
    if dfd is None:
        assert os.pwrite(fd, data, offset) == len(data)
        return
    split = tail_start(offset, offset + len(data), unit) - offset
    assert os.pwrite(fd, data[split:], offset + split) == len(data) - split
    if between is not None:
        between()
    if split:
        with mmap.mmap(-1, split) as aligned:
            aligned.write(data[:split])
            assert os.pwrite(dfd, aligned, offset) == split  # type: ignore[arg-type]


def _as_written(fd: int, dfd: int | None, size: int, unit: int) -> AsWritten:
    """As the writer opens one: reads of a tail through the page cache."""
    part = AsWritten(os.dup(dfd if dfd is not None else fd), dfd is not None, size, 0, unit)
    if dfd is not None:
        part.page_fd = os.dup(fd)
    return part


moments = st.integers(0, CHUNKS)
# Where to cut: anywhere, or just below a chunk's end (inside its last block).
cuts = st.one_of(
    st.integers(0, SIZE),
    st.tuples(st.integers(1, CHUNKS), st.integers(1, 2 * DIRECT_ALIGN)).map(
        lambda t: max(0, min(SIZE, t[0] * CHUNK) - t[1])
    ),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    order=st.permutations(range(CHUNKS)),
    cut=st.none() | st.tuples(moments, cuts, st.booleans()),
    again=st.none() | st.tuples(moments, st.integers(0, CHUNKS - 1)),
    seed=st.binary(min_size=16, max_size=16),
    stalled=st.sets(moments),
)
@example(
    order=list(range(CHUNKS)),
    cut=(3, 3 * CHUNK - 100, False),
    again=None,
    seed=bytes(16),
    stalled=set(),
)
@example(
    order=list(range(CHUNKS)),
    cut=(CHUNKS, SIZE - 1, False),
    again=None,
    seed=bytes(16),
    stalled=set(),
)
@example(order=list(range(CHUNKS)), cut=None, again=(4, 1), seed=bytes(16), stalled=set())
@example(
    order=list(range(CHUNKS)),
    cut=(3, 3 * CHUNK - 9, False),
    again=None,
    seed=bytes(16),
    stalled={3},
)
@example(  # between the last chunk's last block and the rest of it
    order=list(range(CHUNKS)),
    cut=(CHUNKS - 1, SIZE - SIZE % DIRECT_ALIGN - 100, True),
    again=None,
    seed=bytes(16),
    stalled=set(),
)
@example(  # between a chunk's last block and the rest: inside the rest's last block
    order=list(range(CHUNKS)),
    cut=(3, 4 * CHUNK - DIRECT_ALIGN - 100, True),
    again=None,
    seed=bytes(16),
    stalled=set(),
)
@example(  # between a chunk's last block and the rest: inside that last block
    order=list(range(CHUNKS)),
    cut=(3, 4 * CHUNK - 100, True),
    again=None,
    seed=bytes(16),
    stalled=set(),
)
@pytest.mark.parametrize(
    ("threaded", "hold"),
    [(False, None), (True, None), (True, CHUNK)],
    ids=["inline", "threaded", "threaded-one-held"],
)
def test_a_verdict_from_the_hash_as_written_is_the_hash_of_what_is_stored(
    where: tuple[Path, bool, int],
    threaded: bool,
    hold: int | None,
    order: list[int],
    cut: tuple[int, int, bool] | None,
    again: tuple[int, int] | None,
    seed: bytes,
    stalled: set[int],
) -> None:
    """``stalled``: the moments a final check is inside its fsync (nothing
    is read back then). ``cut``: when, where, and whether inside the write
    of that moment, between its two writes (a chunk of a part written
    directly: its last block through the page cache, then the rest).
    ``hold``: the hashing thread's bound (one chunk: a chunk written while
    the one before waits to be hashed is read back instead)."""
    _hash_as_written(
        where, CHUNK, SIZE, order, cut, again, seed, stalled, threaded=threaded, hold=hold
    )


# Shapes where what is hashed as written ends at a chunk's start: chunks of
# one block, a last chunk within a page, a last chunk whose pages written
# directly are one.
SHAPES = [(DIRECT_ALIGN, 7 * DIRECT_ALIGN + 100), (CHUNK, 7 * CHUNK + DIRECT_ALIGN + 17)]


@pytest.mark.parametrize(("chunk", "size"), SHAPES)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_verdict_from_the_hash_as_written_stands_where_what_is_hashed_ends_at_a_chunk(
    where: tuple[Path, bool, int], chunk: int, size: int, data: st.DataObject
) -> None:
    """As above, for parts whose chunks (or last chunk) leave what is hashed
    as written at a chunk's start: a cut just below it, then that chunk
    written again (it could fill back the hole the cut left)."""
    if chunk % where[2]:
        pytest.skip(f"a cut's unit {where[2]} does not divide {chunk}")
    chunks = -(-size // chunk)
    moment = st.integers(0, chunks)
    order = data.draw(st.just(list(range(chunks))) | st.permutations(range(chunks)))
    cut = again = None
    if data.draw(st.booleans()):
        when = data.draw(moment)
        # anywhere, or just below the end of the chunk written before that moment
        below = max(0, min(size, max(0, when - 1) * chunk))
        near = st.integers(1, 2 * DIRECT_ALIGN).map(lambda d: max(0, below - d))
        cut = (when, data.draw(st.integers(0, size) | near), data.draw(st.booleans()))
        if data.draw(st.booleans()):  # the chunk above the cut written again right then
            again = (when, min(chunks - 1, cut[1] // chunk + 1))
    if again is None:
        again = data.draw(st.none() | st.tuples(moment, st.integers(0, chunks - 1)))
    seed = data.draw(st.binary(min_size=16, max_size=16))
    stalled = data.draw(st.sets(moment))
    _hash_as_written(
        where,
        chunk,
        size,
        order,
        cut,
        again,
        seed,
        stalled,
        same=data.draw(st.booleans()),
        threaded=data.draw(st.booleans()),
    )


def _hash_as_written(
    where: tuple[Path, bool, int],
    chunk: int,
    size: int,
    order: list[int],
    cut: tuple[int, int, bool] | None,
    again: tuple[int, int] | None,
    seed: bytes,
    stalled: set[int],
    same: bool = False,
    threaded: bool = False,
    hold: int | None = None,
) -> None:
    """Chunks of ``chunk`` bytes of a part of ``size`` written in ``order``
    and hashed as written (``threaded``: on a hashing thread, as the
    writer does), ``cut`` by name at a moment, a chunk written ``again``
    (``same``: with the same bytes) at a moment: a verdict that stands is
    the hash of what is stored."""
    directory, direct, unit = where
    content = blake3.blake3(seed).digest(length=size)
    with (
        _part(directory, direct, size) as (path, fd, dfd),
        mmap.mmap(-1, 4 * DIRECT_ALIGN) as window,
    ):
        part = _as_written(fd, dfd, size, unit)
        jobs = Hashing(4 * DIRECT_ALIGN, hold=hold) if hold else Hashing(4 * DIRECT_ALIGN)
        part.jobs = jobs if threaded else None
        written: set[int] = set()
        contiguous = 0

        def cut_now() -> None:
            assert cut is not None
            os.truncate(path, cut[1])  # by name: no open
            os.truncate(path, size)

        def write(index: int, data: bytes, moment: int) -> None:
            nonlocal contiguous
            offset = index * chunk
            inside = cut is not None and cut[0] == moment and cut[2]
            _write(fd, dfd, data, offset, cut_now if inside else None, unit)
            with memoryview(window) as view:
                part.wrote(
                    offset, data, contiguous, view, moment not in stalled, None, index in written
                )
            written.add(index)
            while contiguous < size and contiguous // chunk in written:
                contiguous = min(size, contiguous + chunk)

        for moment, index in enumerate([*order, None]):
            if cut is not None and cut[0] == moment and not cut[2]:
                cut_now()
            if again is not None and again[0] == moment and again[1] in written:
                other = content[again[1] * chunk : (again[1] + 1) * chunk]
                if not same:
                    other = bytes(b ^ 0x5A for b in other)
                write(again[1], other, moment)
            if index is not None:
                write(index, content[index * chunk : (index + 1) * chunk], moment)
        os.fsync(fd)
        part.settle()
        digest = hash_file(fd, size, hasher=part.hasher, start=part.hashed)
        part.close()
        if part.jobs is not None:
            part.jobs.stop()
        stored = os.pread(fd, size + 1, 0)
        if not part.tainted and whole(fd, size):
            assert digest == blake3.blake3(stored).digest()
        if cut is None and again is None:  # nothing happened: the verdict stands
            assert not part.tainted and whole(fd, size) and stored == content
            assert digest == blake3.blake3(content).digest()
            # what was read back: each chunk's last block once a chunk above it is written,
            # and chunks that came early, never the chunks hashed from their buffers
            assert part.read_bytes < size or order != sorted(order) or chunk == unit


def test_a_hashing_thread_behind_holds_no_more_chunks_than_its_bound(
    where: tuple[Path, bool, int],
) -> None:
    """A hashing thread held up (its node's cores busy) holds at most its
    bound of written chunks in their buffers (here two; without the bound,
    every chunk written since): the others are read back from the part with
    the chunk above them, and the verdict is still the hash of the part."""
    directory, direct, unit = where
    content = os.urandom(SIZE)
    jobs = Hashing(4 * DIRECT_ALIGN, hold=2 * CHUNK)
    go = threading.Event()
    jobs.put(None, lambda window: go.wait(30))  # the thread is busy until told
    released: list[int] = []
    with _part(directory, direct) as (_, fd, dfd):
        part = _as_written(fd, dfd, SIZE, unit)
        part.jobs = jobs
        try:
            for index in range(CHUNKS):
                data = content[index * CHUNK : (index + 1) * CHUNK]
                _write(fd, dfd, data, index * CHUNK, unit=unit)
                part.wrote(
                    index * CHUNK, data, index * CHUNK, None,
                    release=functools.partial(released.append, index),
                )  # fmt: skip
                assert jobs.held <= 2 * CHUNK, (index, jobs.held)
            assert jobs.deferred == CHUNKS - 2
        finally:
            go.set()
        os.fsync(fd)
        part.settle()
        assert jobs.held == 0 and sorted(released) == [0, 1]
        assert part.read_bytes >= (CHUNKS - 3) * CHUNK  # the deferred ones, read back
        digest = hash_file(fd, SIZE, hasher=part.hasher, start=part.hashed)
        part.close()
        jobs.stop()
    assert not part.tainted and digest == blake3.blake3(content).digest()


def test_the_tail_start_is_the_last_block_a_write_touches() -> None:
    assert tail_start(0, 65536, 4096) == 61440
    assert tail_start(65536, 65536 + 100, 4096) == 65536  # (not below the write)
    assert tail_start(65536, 2 * 65536 - 1000, 4096) == 2 * 65536 - 4096
    assert tail_start(8192, 8193, 4096) == 8192


def test_chunks_in_order_read_back_only_each_chunk_s_last_block(
    where: tuple[Path, bool, int],
) -> None:
    """In order, what is read back as written is one block below each
    chunk but the last (the final check reads the last one after the
    fsync); the rest comes from the chunks as written."""
    directory, direct, unit = where
    content = os.urandom(SIZE)
    with _part(directory, direct) as (_, fd, dfd), mmap.mmap(-1, 4 * DIRECT_ALIGN) as window:
        part = _as_written(fd, dfd, SIZE, unit)
        for index in range(CHUNKS):
            data = content[index * CHUNK : (index + 1) * CHUNK]
            _write(fd, dfd, data, index * CHUNK, unit=unit)
            with memoryview(window) as view:
                part.wrote(index * CHUNK, data, index * CHUNK, view)
        assert part.read_bytes == (CHUNKS - 1) * unit
        assert part.hashed == tail_start((CHUNKS - 1) * CHUNK, SIZE, unit)
        assert hash_file(fd, SIZE, hasher=part.hasher, start=part.hashed) == (
            blake3.blake3(content).digest()
        )
        part.close()


def test_a_chunk_written_again_below_what_was_hashed_taints_the_part(
    where: tuple[Path, bool, int],
) -> None:
    directory, direct, unit = where
    content = os.urandom(2 * CHUNK)
    with _part(directory, direct) as (_, fd, dfd), mmap.mmap(-1, 4 * DIRECT_ALIGN) as window:
        part = _as_written(fd, dfd, SIZE, unit)
        with memoryview(window) as view:
            part.wrote(0, content[:CHUNK], 0, view)
            part.wrote(CHUNK, content[CHUNK:], CHUNK, view)
            assert part.hashed == 2 * CHUNK - unit  # (nothing tainted it yet)
            part.wrote(0, content[:CHUNK], 2 * CHUNK, view)
        assert part.tainted == "a chunk written again"
        part.close()


def test_a_chunk_written_again_above_what_was_hashed_taints_the_part_too(
    where: tuple[Path, bool, int],
) -> None:
    """A last chunk within a block: none of it is hashed as written (it is
    all the last block of what is written). Written again, it could fill
    back the hole a cut inside the block below left there: tainted."""
    directory, direct, unit = where
    content = os.urandom(CHUNK + 100)
    with _part(directory, direct) as (_, fd, dfd), mmap.mmap(-1, 4 * DIRECT_ALIGN) as window:
        part = _as_written(fd, dfd, SIZE, unit)
        with memoryview(window) as view:
            part.wrote(0, content[:CHUNK], 0, view)
            part.wrote(CHUNK, content[CHUNK:], CHUNK, view)
            assert part.hashed == CHUNK and not part.tainted  # (the last chunk: none of it)
            part.wrote(CHUNK, content[CHUNK:], 2 * CHUNK, view, again=True)
        assert part.tainted == "a chunk written again"
        part.close()


def test_a_part_that_cannot_be_read_back_is_tainted(where: tuple[Path, bool, int]) -> None:
    """A read back that fails (here: the part cut short under it, a read
    past its end) taints the part: the final check reads it all again."""
    directory, direct, unit = where
    content = os.urandom(2 * CHUNK)
    with _part(directory, direct) as (path, fd, dfd), mmap.mmap(-1, 4 * DIRECT_ALIGN) as window:
        part = _as_written(fd, dfd, SIZE, unit)
        _write(fd, dfd, content[:CHUNK], 0, unit=unit)
        with memoryview(window) as view:
            part.wrote(0, content[:CHUNK], 0, view)
            os.truncate(path, CHUNK - unit)
            part.wrote(CHUNK, content[CHUNK:], CHUNK, view)
        assert "cut short" in part.tainted
        part.close()


@pytest.mark.parametrize(
    ("policy", "options", "huge"),
    [
        ("always within_size advise [never] deny force", "rw,size=1024k", 0),
        ("always within_size advise [never] deny force", "rw,size=1024k,huge=always", 2 << 20),
        ("always within_size advise [never] deny force", "rw,huge=within_size", 2 << 20),
        ("always within_size advise [never] deny force", "rw,huge=never", 0),
        ("always within_size advise never deny [force]", "rw,size=1024k", 2 << 20),
        ("always within_size advise never [deny] force", "rw,huge=always", 0),
        ("always within_size advise [never] deny force", None, 2 << 20),  # (mount not found)
    ],
)
def test_a_tmpfs_that_may_keep_huge_pages_cuts_by_huge_pages(
    tmp_path: Path, policy: str, options: str | None, huge: int
) -> None:
    """tmpfs_huge_page reads the system's policy and the file's mount (here
    written out as the kernel shows them, for the file's own device)."""
    thp = tmp_path / "thp"
    thp.mkdir()
    (thp / "shmem_enabled").write_text(policy + "\n")
    (thp / "hpage_pmd_size").write_text(f"{2 << 20}\n")
    device = os.stat(tmp_path).st_dev
    here = f"{os.major(device)}:{os.minor(device)}"
    other = "0:999" if here != "0:999" else "0:998"
    lines = [f"25 24 {other} / /elsewhere rw,relatime - tmpfs tmpfs rw,huge=always"]
    if options is not None:
        lines.append(f"30 25 {here} / /mnt rw,relatime shared:1 - tmpfs tmpfs {options}")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert tmpfs_huge_page(fd, str(thp), str(tmp_path / "mountinfo")) == huge
        assert tmpfs_huge_page(fd, str(tmp_path / "none"), str(tmp_path / "mountinfo")) == 0
    finally:
        os.close(fd)
