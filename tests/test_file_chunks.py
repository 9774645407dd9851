"""The one chunk reader: exact chunks, a short last one, a shrunk file refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.file_chunks import chunk_length, read_chunk, read_chunk_into


def test_chunks_of_a_file_and_a_shrunk_file(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [read_chunk(fd, i, 4096, len(data)) for i in range(3)]
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks] == [4096, 4096, 1808]
        assert chunk_length(3, 4096, len(data)) == 0
        os.truncate(path, 9000)  # the file shrank under the reader
        with pytest.raises(OSError, match="shrank"):
            read_chunk(fd, 2, 4096, len(data))
    finally:
        os.close(fd)


def test_chunks_read_into_one_reused_buffer(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    buf = bytearray(4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [bytes(read_chunk_into(fd, i, 4096, len(data), buf)) for i in range(3)]
        assert b"".join(chunks) == data
        view = read_chunk_into(fd, 2, 4096, len(data), buf)
        assert len(view) == 1808 and view.obj is buf  # the caller's buffer, no copy
        os.truncate(path, 9000)
        with pytest.raises(OSError, match="shrank"):
            read_chunk_into(fd, 2, 4096, len(data), buf)
    finally:
        os.close(fd)


class _Bytes:
    """A stream (as a folder is read): ``pread`` only."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, length: int, offset: int) -> bytes:
        return self.data[offset : offset + length]


def test_a_stream_read_into_a_buffer() -> None:
    data = os.urandom(5000)
    buf = bytearray(4096)
    chunks = [bytes(read_chunk_into(_Bytes(data), i, 4096, len(data), buf)) for i in range(2)]
    assert b"".join(chunks) == data
    with pytest.raises(OSError, match="shrank"):
        read_chunk_into(_Bytes(data[:4500]), 1, 4096, len(data), buf)
