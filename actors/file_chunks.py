"""The one way a file's chunk is read, by every actor that reads chunks.

The sender (inline and its lane workers), the multicast sender and the
receiver's writer (reading back what it wrote, for the in-order hash) read
chunk ``index`` of a file of ``size`` bytes cut in ``chunk_size`` pieces
with one positioned read; a short read means the file changed under us.
The source is a file descriptor or a :class:`Stream` (a folder sent as one
stream, :class:`~actors.tree_source.TreeSource`).
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from peercrypt.core.resume import SAMPLE_BYTES, sample_offsets, source_tag


class Stream(Protocol):
    """Something read like a file: ``pread(length, offset)``."""

    def pread(self, length: int, offset: int) -> bytes: ...


def open_source(path: str) -> tuple[int, os.stat_result]:
    """A file to send, opened for reading, and its ``fstat``. Opened without
    blocking (``O_NONBLOCK``: a FIFO's open would wait for a writer, holding
    the actor and every send behind it) and without becoming a terminal's;
    raises :class:`NotRegularFile` for anything
    but a regular file (a FIFO, a device, a socket), closed again."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file")
    if not_empty_as_it_says(fd, st):
        os.close(fd)
        raise NotRegularFile(f"{path} {SIZE_UNTOLD}")
    os.set_blocking(fd, True)
    return fd, st


SIZE_UNTOLD = "does not tell its size (a file of /proc?): copy it to a file and send that"


def not_empty_as_it_says(fd: int, st: os.stat_result) -> bool:
    """Whether a file whose ``fstat`` says it is empty holds bytes, or
    cannot be read to tell (the kernel's files in /proc: their size is 0,
    their text made when read; some refuse a read: EIO, EINVAL); sent as it
    says, it arrived empty and verified."""
    if st.st_size != 0:
        return False
    try:
        return bool(os.pread(fd, 1, 0))
    except OSError:
        return True


class NotRegularFile(Exception):
    """What :func:`open_source` opened is not a regular file."""


def chunk_length(index: int, chunk_size: int, size: int) -> int:
    """Bytes in chunk ``index`` (the last one may be short)."""
    return max(0, min(chunk_size, size - index * chunk_size))


def read_chunk(fd: int | Stream, index: int, chunk_size: int, size: int) -> bytes:
    """Chunk ``index`` of the file open as ``fd`` (or of a stream). Raises
    OSError if the file is shorter than ``size`` says (it shrank while being
    read)."""
    length = chunk_length(index, chunk_size, size)
    if isinstance(fd, int):
        data = os.pread(fd, length, index * chunk_size)
    else:
        data = fd.pread(length, index * chunk_size)
    if len(data) != length:
        raise OSError(f"file shrank while it was read (chunk {index})")
    return data


SOURCE_CHECK_EVERY = 1.0  # seconds between looks at a running send's file for a change


def changed_since(fd: int, size: int, mtime_ns: int) -> bool:
    """The file open as ``fd`` is no longer ``size`` bytes last written at
    ``mtime_ns`` (what its send began with): written to, cut or grown. A
    failed ``fstat`` says nothing (the reads will)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) != (size, mtime_ns)


def version_tag(fd: int, st: os.stat_result) -> bytes:
    """The source tag of the file version open as ``fd`` (``st``: its
    ``fstat``), as a unicast offer and a multicast announce carry it
    (:func:`peercrypt.core.resume.source_tag`). Raises OSError."""
    samples = [os.pread(fd, SAMPLE_BYTES, offset) for offset in sample_offsets(st.st_size)]
    return source_tag(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, samples)
