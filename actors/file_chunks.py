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
from typing import Protocol


class Stream(Protocol):
    """Something read like a file: ``pread(length, offset)``."""

    def pread(self, length: int, offset: int) -> bytes: ...


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
